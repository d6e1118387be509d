"""The ``gaussian`` policy: independent Gaussian noise per latent group, or none (the group is fixed)."""

from __future__ import annotations

from typing import Mapping

from .._util.checks import brief
from ..errors import ConfigError
from .base import GroupNoise, Policy, check_groups, check_keys


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
        check_groups(self.groups, model, "policy")

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
        check_keys(d, {"kind", "default", "groups"})
        groups = d.get("groups") or {}
        if not isinstance(groups, Mapping):
            raise ConfigError(f"policy 'groups' must be a mapping of group name -> noise, got {brief(groups)}")
        return cls(groups={str(k): GroupNoise.from_spec(v, f"policy group {brief(k, 40)}") for k, v in groups.items()},
                   default=GroupNoise.from_spec(d.get("default", "fixed"), "policy 'default'"))
