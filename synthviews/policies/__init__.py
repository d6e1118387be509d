"""Perturbation policies T_z: how positive latents are made from an anchor.

A policy file is plain YAML or JSON; the same dicts round-trip through
:func:`policy_from_dict` / :meth:`Policy.to_dict`::

    kind: gaussian            # per-group Gaussian noise
    default: fixed            # groups not listed below ("fixed" = never perturbed)
    groups:
      shape: fixed
      pose: {std: 0.5, truncation: 2}   # noise ~ N(0, 0.5) cut at +-2 std
      color: 0.5                         # shorthand for {std: 0.5}

    kind: random_subset       # each group perturbed with probability p,
    p: 0.5                    # its std drawn from U(lo, hi) per sample and view
    std: [0.2, 1.0]
    truncation: 2
    groups: [pose, color]     # optional; default: every group

    kind: walker              # learned walkers: see synthviews.analysis.walkers.WalkerPolicy
    walkers: [shape.pt]       # checkpoints, relative to this file
    scale: [0.5, 1.5]         # optional per-view step factor; default 1: one positive per anchor

GenRep-style "perturb every latent with std s" is ``{kind: gaussian,
default: {std: s}}``. Noise of different groups comes from independent
streams (the reference code reused one seed for all groups; we do not).
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Mapping

import numpy as np
import torch
import yaml

from .._util.checks import MAX_POLICY_BYTES, brief, error, load_json, load_yaml, read_text
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

    Implementations (Gaussian, random subset, and the learned walkers of the
    analysis) must draw randomness only from ``streams`` keyed by the sample
    indices, the view and the group, so every view stays reproducible.
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


def _check_group_names(names, model: MLVGM, what: str) -> None:
    unknown = [n for n in names if n not in model.group_names]
    if unknown:
        hint = ""
        if any(n.isdigit() for n in unknown) and any("_" in n for n in model.group_names):
            hint = " (YAML reads an unquoted 2_4 as the number 24: quote such names, e.g. '2_4': 0.5)"
        raise error(f"{what}: unknown latent group(s) {', '.join(brief(n, 40) for n in unknown[:5])} for model "
                          f"{model.family!r}; its groups are: {', '.join(model.group_names)}{hint}")


class GaussianPolicy(Policy):
    """Independent Gaussian noise per group; ``None`` means the group is fixed."""

    kind = "gaussian"

    def __init__(self, groups: Mapping[str, GroupNoise | None] | None = None, default: GroupNoise | None = None):
        self.groups = dict(groups or {})
        self.default = default

    @classmethod
    def all_groups(cls, std: float, truncation: float | None = None) -> "GaussianPolicy":
        """GenRep-like baseline: every group perturbed with the same std."""
        return cls(default=GroupNoise(std=std, truncation=truncation))

    def spec_for(self, name: str) -> GroupNoise | None:
        return self.groups.get(name, self.default)

    def validate(self, model):
        _check_group_names(self.groups, model, "policy")

    def noise(self, model, anchor, streams, indices, view):
        out = {}
        for g in model.groups:
            spec = self.spec_for(g.name)
            if spec is None or (spec.std == 0 and spec.mean == 0):
                continue
            out[g.name] = streams.normal(indices, view, g.name, "noise", g.size,
                                         spec.mean, spec.std, spec.truncation).float()
        return out

    def to_dict(self):
        def spec(s):
            return "fixed" if s is None else s.to_dict()

        return {"kind": self.kind, "default": spec(self.default),
                "groups": {name: spec(s) for name, s in self.groups.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GaussianPolicy":
        _check_keys(d, {"kind", "default", "groups"})
        groups = d.get("groups") or {}
        if not isinstance(groups, Mapping):
            raise ConfigError(f"policy 'groups' must be a mapping of group name -> noise, got {brief(groups)}")
        return cls(groups={str(k): GroupNoise.from_spec(v, f"policy group {brief(k, 40)}") for k, v in groups.items()},
                   default=GroupNoise.from_spec(d.get("default", "fixed"), "policy 'default'"))


class RandomSubsetPolicy(Policy):
    """Each group perturbed with probability ``p``, its std drawn from U(lo, hi).

    Draws per (sample, view, group): a coin ("subset"), a std ("std") and the
    noise ("noise"), each from its own stream.
    """

    kind = "random_subset"

    def __init__(self, p: float, std: tuple[float, float], truncation: float | None = None,
                 mean: float = 0.0, groups: list[str] | None = None):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigError(f"random_subset policy: p must be a probability in [0, 1], got {brief(p)}")
        if (not isinstance(std, (list, tuple)) or len(std) != 2
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in std)):
            raise ConfigError(f"random_subset policy: std must be a pair [lo, hi], got {brief(std)}")
        lo, hi = float(std[0]), float(std[1])
        check_normal_params(mean, lo, truncation, "random_subset policy (std lo)")
        check_normal_params(mean, hi, truncation, "random_subset policy (std hi)")
        if lo > hi:
            raise ConfigError(f"random_subset policy: std range [{lo}, {hi}] has lo > hi")
        if groups is not None and (not isinstance(groups, (list, tuple)) or not all(isinstance(g, str) for g in groups)):
            raise ConfigError(f"random_subset policy: groups must be a list of group names, got {brief(groups)}")
        self.p, self.std, self.truncation, self.mean = float(p), (lo, hi), truncation, float(mean)
        self.groups = None if groups is None else list(groups)

    def validate(self, model):
        if self.groups is not None:
            _check_group_names(self.groups, model, "random_subset policy")

    def noise(self, model, anchor, streams, indices, view):
        out = {}
        lo, hi = self.std
        for g in model.groups:
            if self.groups is not None and g.name not in self.groups:
                continue
            chosen = torch.from_numpy(streams.uniform(indices, view, g.name, "subset", 1) < self.p)
            std = lo + (hi - lo) * torch.from_numpy(streams.uniform(indices, view, g.name, "std", 1))
            unit = streams.normal(indices, view, g.name, "noise", g.size, 0.0, 1.0, self.truncation)
            out[g.name] = torch.where(chosen, self.mean + std * unit, 0.0).float()
        return out

    def to_dict(self):
        return {"kind": self.kind, "p": self.p, "std": list(self.std), "truncation": self.truncation,
                "mean": self.mean, "groups": self.groups}

    @classmethod
    def from_dict(cls, d):
        _check_keys(d, {"kind", "p", "std", "truncation", "mean", "groups"})
        for key in ("p", "std"):
            if key not in d:
                raise ConfigError(f"random_subset policy: missing {key!r}")
        return cls(p=d["p"], std=d["std"], truncation=d.get("truncation"), mean=d.get("mean", 0.0),
                   groups=d.get("groups"))


_KINDS: dict[str, Callable[[Mapping], Policy]] = {
    GaussianPolicy.kind: GaussianPolicy.from_dict,
    RandomSubsetPolicy.kind: RandomSubsetPolicy.from_dict,
}


def register_policy(kind: str, from_dict: Callable[[Mapping], Policy]) -> None:
    """Make ``kind:`` in policy files build a new policy type (e.g. learned walkers)."""
    _KINDS[kind] = from_dict


def _check_keys(d: Mapping, allowed: set[str]) -> None:
    unknown = set(d) - allowed
    if unknown:
        raise error(f"{brief(d.get('kind'), 40)} policy: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


_POLICY_DIR: ContextVar[Path | None] = ContextVar("synthviews_policy_dir", default=None)


def policy_file_dir() -> Path | None:
    """The folder of the policy file being loaded (paths inside a policy file are relative to it)."""
    return _POLICY_DIR.get()


def policy_from_dict(d) -> Policy:
    if not isinstance(d, Mapping):
        raise ConfigError(f"a policy must be a mapping with a 'kind' key, got {type(d).__name__}")
    kind = d.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"a policy needs a 'kind' name; known kinds: {', '.join(sorted(_KINDS))}; got {brief(kind)}")
    if kind == "walker" and kind not in _KINDS:
        import synthviews.analysis  # noqa: F401  (registers the learned-walker policy)
    if kind not in _KINDS:
        raise ConfigError(f"unknown policy kind {brief(kind, 40)}; known kinds: {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](d)


def load_policy(path: str | Path) -> Policy:
    """Read a YAML or JSON policy file; errors name the file and the problem.

    Only a regular file of at most 1 MB is read; YAML anchors/aliases and
    duplicate keys are refused (an alias bomb expands 1 KB to gigabytes).
    """
    path = Path(path)
    text = read_text(path, "policy file", MAX_POLICY_BYTES)
    where = f"policy file {path}"
    data = load_json(text, where) if path.suffix == ".json" else load_yaml(text, where)
    token = _POLICY_DIR.set(path.parent)
    try:
        return policy_from_dict(data)
    except ConfigError as e:
        raise error(f"policy file {path}: {e}") from None
    finally:
        _POLICY_DIR.reset(token)


def save_policy(policy: Policy, path: str | Path) -> None:
    """Write ``policy`` as YAML (or JSON for a .json path)."""
    path = Path(path)
    d = policy.to_dict()
    path.write_text(json.dumps(d, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False))


def resolve_policy(policy, model: MLVGM) -> Policy:
    """A Policy from None (the model's default), a dict, a path or a Policy; validated for ``model``."""
    if policy is None:
        policy = policy_from_dict(model.default_policy_spec())
    elif isinstance(policy, (str, Path)):
        policy = load_policy(policy)
    elif isinstance(policy, Mapping):
        policy = policy_from_dict(policy)
    elif not isinstance(policy, Policy):
        raise ConfigError(f"policy must be a Policy, a dict or a file path, got {type(policy).__name__}")
    policy.validate(model)
    return policy


__all__ = ["GroupNoise", "Policy", "GaussianPolicy", "RandomSubsetPolicy", "register_policy",
           "policy_from_dict", "policy_file_dir", "load_policy", "save_policy", "resolve_policy"]
