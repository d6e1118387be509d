"""What every policy shares: the Policy interface, per-group Gaussian noise, and the group-name check."""

from __future__ import annotations

import contextlib
import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np
import torch

from .._util.checks import brief, error
from ..errors import ConfigError
from ..latents import Streams, check_normal_params
from ..models.base import MLVGM


@dataclass(frozen=True)
class GroupNoise:
    """Gaussian noise for one group: N(mean, std) cut at mean +- truncation*std."""

    std: float
    mean: float = 0.0
    truncation: float | None = None

    def to_dict(self) -> dict:
        d = {"std": self.std}
        if self.mean:
            d["mean"] = self.mean
        if self.truncation is not None:
            d["truncation"] = self.truncation
        return d

    @classmethod
    def from_spec(cls, spec, where: str) -> "GroupNoise | None":
        """Parse ``fixed`` / a number (std) / a mapping; ``where`` names it in errors."""
        if spec is None or spec == "fixed":
            return None
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            spec = {"std": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected 'fixed', a std number or a mapping with std/mean/truncation, got {brief(spec)}")
        unknown = set(spec) - {"std", "mean", "truncation"}
        if unknown:
            raise error(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected std, mean, truncation")
        if "std" not in spec:
            raise ConfigError(f"{where}: missing 'std'")
        std, mean, truncation = spec["std"], spec.get("mean", 0.0), spec.get("truncation")
        check_normal_params(mean, std, truncation, where)
        return cls(std=float(std), mean=float(mean), truncation=None if truncation is None else float(truncation))


class Policy:
    """T_z interface: per-group noise for one positive view of a batch.

    Implementations (Gaussian, random subset, learned walkers) must draw
    randomness only from ``streams`` keyed by the sample indices, the view
    and the group, so every view stays reproducible.
    """

    kind: ClassVar[str]

    def validate(self, model: MLVGM) -> None:
        """Raise ConfigError if the policy names groups the model lacks."""

    def noise(self, model: MLVGM, anchor: torch.Tensor, streams: Streams, indices: np.ndarray,
              view: int) -> dict[str, torch.Tensor]:
        """``{group: noise (B, group.size)}`` for the perturbed groups, float32 on CPU."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @property
    def policy_id(self) -> str:
        """Stable id: kind plus a hash of the canonical policy dict."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"{self.kind}-{hashlib.sha256(blob).hexdigest()[:12]}"


def check_groups(names, model: MLVGM, what: str) -> None:
    """Raise a ConfigError naming ``what`` if any of ``names`` is not a latent group of ``model``."""
    unknown = [n for n in names if n not in model.group_names]
    if unknown:
        hint = ""
        if any(str(n).isdigit() for n in unknown) and any("_" in n for n in model.group_names):
            hint = " (YAML reads an unquoted 2_4 as the number 24: quote such names, e.g. '2_4': 0.5)"
        raise error(f"{what}: unknown latent group(s) {', '.join(brief(n, 40) for n in unknown[:5])} for model "
                    f"{model.family!r}; its groups are: {', '.join(model.group_names)}{hint}")


def check_keys(d: Mapping, allowed: set[str]) -> None:
    """Raise a ConfigError listing the keys of policy dict ``d`` outside ``allowed``."""
    unknown = set(d) - allowed
    if unknown:
        raise error(f"{brief(d.get('kind'), 40)} policy: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                    f"allowed: {', '.join(sorted(allowed))}")


_POLICY_DIR: ContextVar[Path | None] = ContextVar("synthviews_policy_dir", default=None)


def policy_file_dir() -> Path | None:
    """The folder of the policy file being loaded (paths inside a policy file are relative to it)."""
    return _POLICY_DIR.get()


@contextlib.contextmanager
def reading_policy_file(folder: Path):
    """While a policy file in ``folder`` is being parsed: what :func:`policy_file_dir` returns."""
    token = _POLICY_DIR.set(folder)
    try:
        yield
    finally:
        _POLICY_DIR.reset(token)
