"""Code-free reading of the official VDVAE checkpoints and of VDVAE config files.

``*-model-ema.th`` (use this one to sample) is the EMA model's ``state_dict()``:
``encoder.*`` then ``decoder.*``. ``*-model.th`` is the same for the
DistributedDataParallel-wrapped training model, so every key starts with
``module.``. Both are read with ``weights_only=True`` (through
:func:`synthviews.models.weights.read_tensors`); one leading ``module.`` is
stripped from every key that has one, as the original's restore does. The
encoder and the posterior heads (``decoder.dec_blocks.N.enc.*``) are dropped:
sampling does not use them. What remains must match the generator of the
config exactly (names and shapes). The checkpoints hold no hparams: they come
from a built-in release name or a config file.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..._util.checks import MAX_POLICY_BYTES, brief, load_json, load_yaml, read_text
from ..._util.files import sha256_file
from ...errors import ConfigError
from ..weights import check_names_shapes, first_names, flat_tensors, read_tensors
from .networks import RELEASES, BlockSpec, generator_shapes, resolve_hparams

WHAT = "VDVAE checkpoint"
POSTERIOR = re.compile(r"decoder\.dec_blocks\.\d+\.enc\.")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def load_config(config) -> tuple[dict, str]:
    """Decoder hparams and a label for errors, from a release name, a JSON/YAML file or a mapping.

    A file holds the original hparams at its top level or under ``hparams`` (the compat
    ``tiny_config.json`` works as it is); other top-level keys are then ignored.
    """
    if isinstance(config, str) and config in RELEASES:
        return resolve_hparams(RELEASES[config], f"VDVAE config {config}"), f"config {config!r}"
    if isinstance(config, Mapping):
        return resolve_hparams(config, "VDVAE config="), "the given config"
    if not isinstance(config, (str, Path)):
        raise ConfigError(f"VDVAE config must be a built-in name ({', '.join(RELEASES)}), a config file "
                          f"or a mapping of hparams, got {brief(config)}")
    path = Path(config)
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"VDVAE config {str(config)!r} is neither a built-in config ({', '.join(RELEASES)}) "
                          "nor a .json/.yaml/.yml config file")
    where = f"VDVAE config file {path}"
    if not path.exists():
        raise ConfigError(f"{where} does not exist; give a built-in name ({', '.join(RELEASES)}) or a config file")
    text = read_text(path, where, MAX_POLICY_BYTES)
    data = load_json(text, where) if path.suffix.lower() == ".json" else load_yaml(text, where)
    if isinstance(data, Mapping) and isinstance(data.get("hparams"), Mapping):
        data = data["hparams"]
    return resolve_hparams(data, where), f"config file {path}"


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], str]:
    """The generator's tensors of an official checkpoint file (see the module text) and the file's sha256."""
    state, _ = read_tensors(path, WHAT)
    return generator_state(state, f"{WHAT} {path}"), sha256_file(path)


def generator_state(state: Mapping, what: str) -> dict[str, torch.Tensor]:
    """``state`` without ``module.`` prefixes, the encoder and the posterior heads."""
    state = flat_tensors(state, what)
    stripped = {k.removeprefix("module."): v for k, v in state.items()}
    if len(stripped) != len(state):
        raise ConfigError(f"{what}: holds the same tensor with and without the 'module.' prefix; "
                          "save one state dict (the EMA file has no prefix)")
    if not any(k.startswith("decoder.") for k in stripped):
        prefix = next((k[: -len("decoder.gain")] for k in stripped if k.endswith(".decoder.gain")), None)
        hint = (f"its keys seem to carry the prefix {brief(prefix)}; strip it" if prefix  # brief: from the file
                else "is it another model family? (the official files are *-model-ema.th)")
        raise ConfigError(f"{what} is not a VDVAE state dict: none of its {len(stripped)} tensors is named "
                          f"decoder.* (it has e.g. {first_names(stripped) or 'none'}); {hint}")
    return {k: v for k, v in stripped.items() if not k.startswith("encoder.") and not POSTERIOR.match(k)}


def check_state(state: Mapping[str, torch.Tensor], cfg: dict, what: str, label: str,
                specs: Sequence[BlockSpec] | None = None) -> None:
    """ConfigError unless ``state`` has exactly the generator's names and shapes of ``cfg``, all float
    (``specs``: ``block_specs(cfg)`` where the caller has them)."""
    def hint() -> str:
        guess = infer_release(state)
        return (f"it matches the built-in config {guess!r}: use that" if guess else
                "is the config the one this checkpoint was trained with?")

    check_names_shapes(state, generator_shapes(cfg, specs), what, f"the VDVAE generator of {label}", hint=hint)


def infer_release(state: Mapping[str, torch.Tensor]) -> str | None:
    """The built-in release whose generator has exactly these names and shapes, if one does."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return next((name for name in RELEASES if dict(_release_shapes(name)) == shapes), None)


@functools.cache
def _release_shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """A built-in release's generator shapes, computed once per process (immutable, so safe to share)."""
    return tuple(generator_shapes(resolve_hparams(RELEASES[name], name)).items())
