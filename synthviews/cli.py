"""``synthviews <verb>``: a thin command line over the library.

User errors (bad paths, configs, policy or model files) print one line and
exit with status 2; there is no traceback for them.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from .errors import ConfigError
from .models import available_models, load_model
from .policies import resolve_policy

DEFAULT_MODEL = "toy"


def _model_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a Python-style key, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model family (default: {DEFAULT_MODEL}); see `synthviews info`")
    g.add_argument("--path", help="checkpoint file for models loaded from weights (e.g. stylegan2, bigbigan)")
    g.add_argument("--model-opt", metavar="KEY=VALUE", action="append", type=_model_option, default=[],
                   help="extra model option, repeatable; VALUE is parsed as YAML (e.g. --model-opt resolution=32)")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")


def _build_model(args):
    kwargs = dict(args.model_opt)
    if args.path is not None:
        kwargs["path"] = args.path
    return load_model(args.model, **kwargs)


def _cmd_preview(args) -> int:
    from .preview import preview
    from .views import ViewSampler

    model = _build_model(args)
    sampler = ViewSampler(model, args.policy, views=args.views, seed=args.seed, device=args.device, amp=args.amp)
    out = preview(sampler, args.out, samples=args.samples, start=args.start)
    print(f"wrote {out} ({args.samples} samples x {1 + args.views} images: anchor + {args.views} positives)")
    return 0


def _cmd_info(args) -> int:
    if args.model is None:
        print("available models: " + ", ".join(available_models()))
        print("use `synthviews info --model NAME` for its latent groups and default policy")
        return 0
    model = _build_model(args)
    d = model.describe()
    print(f"model: {d['model_id']}  (license: {d['license']})")
    print(f"image: {'x'.join(map(str, d['image_shape']))} (C x H x W), latent dim {d['latent_dim']}, "
          f"anchor prior {d['prior']}")
    print("latent groups:")
    for g in d["groups"]:
        print(f"  {g['name']:<10} size {g['size']:<4} {g['space']:<16} {g['description']}")
    print("default policy (a valid policy file):")
    print("  " + yaml.safe_dump(resolve_policy(None, model).to_dict(), sort_keys=False).replace("\n", "\n  ").rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthviews",
        description="Positive views for self-supervised learning from generators with several latent variables.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("preview", help="write a PNG grid: one row per sample, the anchor then its positives",
                         description="Write a PNG grid of anchors (first column) and their positive views.")
    _add_model_args(p)
    p.add_argument("--policy", help="policy file (YAML/JSON); default: the model's default policy")
    p.add_argument("--samples", type=int, default=8, help="rows: number of anchors (default: 8)")
    p.add_argument("--views", type=int, default=4, help="positives per anchor, K (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed, same images (default: 0)")
    p.add_argument("--start", type=int, default=0, help="first sample index (default: 0)")
    p.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none",
                   help="autocast precision for decoding (fp16 needs CUDA; default: none)")
    p.add_argument("--out", default="preview.png", help="output PNG path (default: preview.png)")
    p.set_defaults(run=_cmd_preview)

    p = verbs.add_parser("info", help="list models, or show a model's latent groups and default policy",
                         description="Without --model: list model families. With --model: its id, latent "
                                     "groups and default policy.")
    _add_model_args(p)
    p.set_defaults(model=None, run=_cmd_info)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as e:
        print(f"synthviews {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable output, full disk, unreadable input: the message names the path
        print(f"synthviews {args.verb}: error: {e.strerror or e} ({e.filename or 'no file name'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synthviews {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
