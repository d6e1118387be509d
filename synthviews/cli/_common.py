"""Parser pieces more than one verb group uses: the model options, the model they build, the seed help."""

from __future__ import annotations

import argparse

from .._util.checks import load_yaml
from ..errors import ConfigError

DEFAULT_MODEL = "digits"
SEED_HELP = "seed, an integer in [0, 2**63)"


def model_option(text: str) -> tuple[str, object]:
    """``--model-opt KEY=VALUE``: VALUE as YAML, or the plain string when it is not YAML at all."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a Python-style key, got {text!r}")
    if len(value) > 10_000:
        raise argparse.ArgumentTypeError(f"--model-opt {key}: the value is over 10,000 characters")
    try:
        return key, load_yaml(value, f"--model-opt {key}")
    except ConfigError as e:
        # YAML anchors/aliases (a bomb) and duplicate keys are refused, not passed on as a plain string.
        if "not valid YAML" in str(e) and "anchors and aliases" not in str(e) and "duplicate key" not in str(e):
            return key, value
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL) -> None:
    """The ``model`` group: --model, --path, --config, --model-opt, --device (``default=None``: the model is optional)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default,
                   help=f"model family (default: {default}); see `synthviews info`" if default else
                   "model family to describe (default: list the families)")
    g.add_argument("--path", help="checkpoint file for models loaded from weights (e.g. stylegan2, bigbigan, vdvae)")
    g.add_argument("--config", help="config file (JSON/YAML) or built-in config name, for families that take "
                   "one (vdvae: a release name or file; stylegan2: a file of generator kwargs)")
    g.add_argument("--model-opt", metavar="KEY=VALUE", action="append", type=model_option, default=[],
                   help="extra model option, repeatable; VALUE is parsed as YAML (e.g. --model-opt resolution=32)")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")


def build_model(args):
    """The model the ``model`` group names; torch and the model code load here, not at start-up."""
    kwargs = dict(args.model_opt)
    if args.path is not None:
        kwargs["path"] = args.path
    if getattr(args, "config", None) is not None:
        if "config" in kwargs:
            raise ConfigError("--config and --model-opt config=... both give the model's config; give one")
        kwargs["config"] = args.config
    from ..models import load_model

    return load_model(args.model, **kwargs)


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
