"""Learned walkers (COP-Gen) as a policy: the Walker network, its checkpoint file, the ``walker`` kind.

A walker T(z) = Linear-ReLU-Linear maps the anchor z to noise for its
group(s); the positive is ``model.compose(z, T(z))``. Walkers are trained by
``synthviews.analysis.walkers.train_walker``; this module only reads, writes
and applies them, so using a walker policy needs nothing from the analysis.

A checkpoint is a plain dict of tensors, numbers and strings written with
``torch.save`` and read with ``torch.load(weights_only=True)``: loading one
never runs code from the file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._util.checks import (
    MAX_CODE,
    MAX_NOISE,
    MAX_WALKER_BYTES,
    MAX_WALKER_HIDDEN,
    Any,
    Int,
    List,
    Map,
    Obj,
    Str,
    brief,
    check_int,
    check_tensors,
    check_torch_file,
    error,
    finite,
    validate,
)
from .._util.files import sha256_file, write_atomic
from ..errors import ConfigError
from ..models.weights import read_torch
from .base import Policy, check_groups, check_keys, policy_file_dir

FORMAT = "synthviews-walker"  # the "format" entry of every walker checkpoint and training-state file


def walker_bytes(latent_dim: int, hidden: int, out: int) -> int:
    """Bytes of a walker's float32 parameters: Linear(latent_dim, hidden) and Linear(hidden, out)."""
    return 4 * (latent_dim * hidden + hidden + out * hidden + out)


def check_walker_size(latent_dim: int, hidden: int, out: int, where: str, limit: int = MAX_WALKER_BYTES) -> None:
    """Refuse a walker whose float32 parameters would take more than ``limit`` bytes (a walker file's limit)."""
    need = walker_bytes(latent_dim, hidden, out)
    if need > limit:
        raise error(f"{where}: {need / 2**20:,.0f} MiB of float32 parameters, over the {limit / 2**20:,.0f} MiB "
                    f"limit (latent_dim {latent_dim:,}, hidden {hidden:,}, {out:,} noise values); use a smaller "
                    "hidden width or fewer groups")


class Walker(nn.Module):
    """T(z) = Linear-ReLU-Linear; output split into one noise vector per group.

    The last layer starts at ``init_scale`` x its default initialisation, so
    training starts from positives almost equal to their anchors.
    """

    def __init__(self, latent_dim: int, groups: Mapping[str, int], hidden: int = 64, init_scale: float = 1e-2):
        super().__init__()
        self.latent_dim, self.hidden = int(latent_dim), int(hidden)
        self.groups = {str(k): int(v) for k, v in groups.items()}
        self.net = nn.Sequential(nn.Linear(self.latent_dim, self.hidden), nn.ReLU(),
                                 nn.Linear(self.hidden, sum(self.groups.values())))
        with torch.no_grad():
            self.net[2].weight.mul_(init_scale)
            self.net[2].bias.zero_()

    def split(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.groups, out.split(list(self.groups.values()), dim=1)))

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training path: batched, differentiable, on the walker's device."""
        return self.split(self.net(z))

    @torch.no_grad()
    def noise(self, anchor: torch.Tensor) -> dict[str, torch.Tensor]:
        """Policy path: float32 CPU noise computed one row at a time in float64.

        Row by row, a sample's noise cannot depend on the batch it is in
        (batched matrix products may sum in a batch-dependent order).
        """
        w1, b1, w2, b2 = (p.detach().to("cpu", torch.float64) for p in
                          (self.net[0].weight, self.net[0].bias, self.net[2].weight, self.net[2].bias))
        z = anchor.detach().to("cpu", torch.float64)
        out = z.new_zeros(len(z), len(b2))
        for i in range(len(z)):
            out[i:i + 1] = F.linear(F.relu(F.linear(z[i:i + 1], w1, b1)), w2, b2)
        return {k: v.float() for k, v in self.split(out).items()}


# --- checkpoints --------------------------------------------------------------

def write_checkpoint(path: Path, obj: dict) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically (a crash leaves the previous file)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def read_checkpoint(path: Path, what: str, max_bytes: int = MAX_WALKER_BYTES) -> dict:
    """A dict with ``format: FORMAT`` from ``path``, read without running code from the file."""
    obj = read_torch(path, what, max_bytes=max_bytes)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ConfigError(f"{what} {path} is not a synthviews walker checkpoint")
    return obj


MAX_WEIGHT = 1e4  # trained walkers have weights of order 1

_WALKER_SCHEMA = Obj({
    "latent_dim": Int(1, MAX_CODE),
    "hidden": Int(1, MAX_WALKER_HIDDEN),
    "groups": List(List(Any, 2, length=2), 64),
    "weights": Map(Any, 16),
})


def _check_walker(ckpt: dict, path) -> tuple[int, int, dict[str, int]]:
    """(latent_dim, hidden, groups) after checking the sizes and the weights' shapes.

    Checked before the Walker is built: its layers are allocated from these
    sizes, so a 1 KB file saying hidden=10**9 would otherwise take gigabytes.
    Order: the sizes, then the parameter count they imply (at most what a
    walker file may hold), then the shapes of the tensors really in the file;
    only then is anything allocated from the sizes.
    """
    where = f"walker checkpoint {path}"
    validate(ckpt, _WALKER_SCHEMA, where)
    groups = {}
    for i, (name, size) in enumerate(ckpt["groups"]):
        Str(100)(name, f"{where}: groups[{i}] name")
        groups[name] = check_int(size, f"{where}: groups[{i}] size", 1, MAX_CODE)
    if len(groups) != len(ckpt["groups"]) or sum(groups.values()) > MAX_CODE:
        raise error(f"{where}: groups must be distinct with sizes summing to at most {MAX_CODE:,}")
    d, h, o = ckpt["latent_dim"], ckpt["hidden"], sum(groups.values())
    check_walker_size(d, h, o, where)
    expected = {"net.0.weight": (h, d), "net.0.bias": (h,), "net.2.weight": (o, h), "net.2.bias": (o,)}
    weights = ckpt["weights"]
    for name, shape in expected.items():
        t = weights.get(name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or not t.is_floating_point():
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise error(f"{where}: weights {name} must be a float tensor of shape {list(shape)}, got {got}")
    if set(weights) != set(expected):
        raise error(f"{where}: weights hold unexpected entries {brief(sorted(map(str, set(weights) - set(expected))))}")
    check_tensors(weights, where)
    if max(float(weights[k].abs().max()) if weights[k].numel() else 0.0 for k in expected) > MAX_WEIGHT:
        raise error(f"{where}: weights over {MAX_WEIGHT:g} in magnitude; their noise would overflow float32")
    return d, h, groups


def save_walker(path: str | Path, walker: Walker, meta: dict) -> None:
    """Write a walker checkpoint (atomic): its shape, weights and ``meta`` (plain values only)."""
    state = {k: v.detach().to("cpu").clone() for k, v in walker.state_dict().items()}
    write_checkpoint(Path(path), {"format": FORMAT, "version": 1, "latent_dim": walker.latent_dim,
                                  "hidden": walker.hidden, "groups": [[k, v] for k, v in walker.groups.items()],
                                  "weights": state, **meta})


def load_walker(path: str | Path) -> tuple[Walker, dict]:
    """(walker, the checkpoint's other entries) from a file written by :func:`save_walker`."""
    ckpt = read_checkpoint(Path(path), "walker checkpoint")
    latent_dim, hidden, groups = _check_walker(ckpt, path)
    try:
        walker = Walker(latent_dim, groups, hidden)
        walker.load_state_dict(ckpt["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise error(f"walker checkpoint {path} is malformed: {e}") from None
    return walker.eval(), {k: v for k, v in ckpt.items() if k != "weights"}


# --- the walker policy ---------------------------------------------------------

class WalkerPolicy(Policy):
    """Noise from learned walkers: group g gets scale * T_g(anchor).

    T_g is a deterministic function of the anchor, so with the default
    ``scale: 1`` (the learned step, as COP-Gen uses it) an anchor has exactly
    one positive and asking for more views is refused. ``scale: [lo, hi]``
    makes K > 1 meaningful: each positive walks along the learned step by its
    own factor, drawn from U(lo, hi) per (sample, view, walker) from the keyed
    streams, so positives differ in how far they move and stay reproducible.
    Several walker checkpoints combine if their groups do not overlap;
    groups no walker covers stay fixed. Policy file::

        kind: walker
        walkers:                       # paths relative to this file
          - {path: color.pt, sha256: ...}   # sha256 optional; checked if given
          - pose.pt
        scale: [0.5, 1.5]              # optional; default 1 (one positive per anchor)
    """

    kind = "walker"

    def __init__(self, entries: list[dict], base: str | Path | None = None, scale=1.0):
        self.scale = _check_scale(scale)
        self.entries, self.walkers = [], []
        seen: dict[str, str] = {}
        for entry in entries:
            rel = entry["path"]
            if not 0 < len(rel) <= 4096 or "\0" in rel:
                raise error(f"walker policy: checkpoint path {brief(rel)} must be 1-4096 characters without NUL")
            path = Path(rel) if base is None or Path(rel).is_absolute() else Path(base) / rel
            check_torch_file(path, "walker checkpoint", MAX_WALKER_BYTES)  # before hashing: a FIFO never ends
            digest = sha256_file(path)
            if entry.get("sha256") is not None and digest is not None and digest != entry["sha256"]:
                raise ConfigError(f"walker checkpoint {path} has changed since the policy was written "
                                  f"(sha256 {digest[:12]}..., policy says {entry['sha256'][:12]}...)")
            walker, meta = load_walker(path)
            for g in walker.groups:
                if g in seen:
                    raise ConfigError(f"walker policy: group {g!r} is driven by both {seen[g]} and {rel}")
                seen[g] = rel
            self.entries.append({"path": str(rel), "sha256": digest})
            self.walkers.append((walker, meta))

    def validate(self, model):
        for (walker, _), entry in zip(self.walkers, self.entries):
            check_groups(list(walker.groups), model, f"walker {entry['path']}")
            if walker.latent_dim != model.latent_dim:
                raise ConfigError(f"walker {entry['path']} takes {walker.latent_dim}-d anchors, "
                                  f"model {model.family!r} has {model.latent_dim}-d ones")
            for g, size in walker.groups.items():
                if model.group(g).size != size:
                    raise ConfigError(f"walker {entry['path']}: group {g!r} has noise size {size} there, "
                                      f"{model.group(g).size} in the model")

    def noise(self, model, anchor, streams, indices, view):
        lo, hi = self.scale
        if view > 1 and lo == hi:
            raise ConfigError(f"walker policy ({', '.join(e['path'] for e in self.entries)}): a walker is a "
                              "deterministic function of the anchor, so every positive would be the same image; "
                              "use views=1 (--views 1) or give the policy a per-view step scale, e.g. "
                              "scale: [0.5, 1.5]")
        out = {}
        for walker, _ in self.walkers:
            if lo == hi:
                factor = torch.tensor(lo)
            else:  # one factor per sample and view, drawn independently for each walker
                u = streams.uniform(indices, view, "walker:" + ",".join(walker.groups), "scale", 1)
                factor = torch.from_numpy(lo + (hi - lo) * u).float()
            out.update({g: (factor * n).float() for g, n in walker.noise(anchor).items()})
        return out

    def to_dict(self):
        d = {"kind": self.kind, "walkers": [dict(e) for e in self.entries]}
        if self.scale != (1.0, 1.0):  # the default stays out: older walker policies keep their policy_id
            d["scale"] = self.scale[0] if self.scale[0] == self.scale[1] else list(self.scale)
        return d

    @classmethod
    def from_dict(cls, d: Mapping, base: str | Path | None = None) -> "WalkerPolicy":
        check_keys(d, {"kind", "walkers", "scale"})
        items = d.get("walkers")
        if not isinstance(items, list) or not items:
            raise ConfigError("walker policy: 'walkers' must be a non-empty list of checkpoint paths")
        entries = []
        for item in items:
            entry = {"path": item} if isinstance(item, str) else item
            if (not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str) or set(entry) - {"path", "sha256"}
                    or not (entry.get("sha256") is None or isinstance(entry["sha256"], str) and len(entry["sha256"]) == 64)):
                raise error(f"walker policy: each entry is a path or {{path: ..., sha256: 64 hex digits}}, "
                            f"got {brief(item)}")
            entries.append(dict(entry))
        scale = _check_scale(d.get("scale", 1.0))  # before loading any checkpoint: cheap errors first
        return cls(entries, base if base is not None else policy_file_dir(), scale)


def _check_scale(scale) -> tuple[float, float]:
    """``scale`` as (lo, hi): a number s is (s, s); a pair [lo, hi] needs 0 <= lo <= hi, hi > 0."""
    pair = list(scale) if isinstance(scale, (list, tuple)) else [scale, scale]
    if (len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and finite(v)
                                  for v in pair) or not 0 <= pair[0] <= pair[1] or pair[1] <= 0
            or pair[1] > MAX_NOISE):
        raise error(f"walker policy: scale must be a number in (0, {MAX_NOISE:g}] or a range [lo, hi] with "
                    f"0 <= lo <= hi <= {MAX_NOISE:g}, got {brief(scale)}")
    return float(pair[0]), float(pair[1])


def walker_policy(checkpoints: list[str | Path], policy_path: str | Path, scale=1.0) -> WalkerPolicy:
    """A walker policy for ``checkpoints`` that will be saved at ``policy_path``: its paths are relative
    to that file's folder, so the policy and its checkpoints can move together."""
    base = Path(policy_path).resolve().parent
    entries = [{"path": Path(os.path.relpath(Path(c).resolve(), base)).as_posix()} for c in checkpoints]
    return WalkerPolicy(entries, base, scale)


__all__ = ["FORMAT", "Walker", "WalkerPolicy", "check_walker_size", "load_walker", "save_walker", "walker_bytes",
           "walker_policy"]
