"""The ``random_subset`` policy: each group perturbed with probability p, with a std drawn per view."""

from __future__ import annotations

import torch

from .._util.checks import brief
from ..errors import ConfigError
from ..latents import check_normal_params
from .base import Policy, check_groups, check_keys


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
            check_groups(self.groups, model, "random_subset policy")

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
        check_keys(d, {"kind", "p", "std", "truncation", "mean", "groups"})
        for key in ("p", "std"):
            if key not in d:
                raise ConfigError(f"random_subset policy: missing {key!r}")
        return cls(p=d["p"], std=d["std"], truncation=d.get("truncation"), mean=d.get("mean", 0.0),
                   groups=d.get("groups"))
