"""Learned walkers (COP-Gen, the reference method's Table 1 mode) and the ``walker`` policy.

A walker T(z) = Linear-ReLU-Linear maps the anchor z to noise for its
group(s); the positive is ``model.compose(z, T(z))``. It starts near zero
(x' = x) and is trained by a minimax game: an InfoNCE critic minimises the
loss on (x, x'), the walker maximises it, i.e. looks for the perturbation
that lowers I(x; x') most. How far it has to move a group (delta) for how
much MI says whether the group carries the semantics.

Checkpoints are plain dicts of tensors, numbers and strings written with
``torch.save`` and read with ``torch.load(weights_only=True)``: loading one
never runs code from the file.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import policies
from .._util.checks import (
    MAX_LATENT_DIM,
    MAX_NOISE,
    MAX_WALKER_BYTES,
    MAX_WEIGHTS_BYTES,
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
from .._util.device import resolve_device
from .._util.files import sha256_file, write_atomic
from ..errors import ConfigError
from ..latents import Streams, sample_prior
from ..models.base import MLVGM
from ..policies import Policy, register_policy
from .critic import CRITICS, info_nce, make_critic, prepare
from .mi import EVAL_OFFSET, torch_threads

FORMAT = "synthviews-walker"


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

def _save(path: Path, obj: dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())


def _load(path: Path, what: str, max_bytes: int = MAX_WALKER_BYTES) -> dict:
    check_torch_file(path, what, max_bytes)  # a FIFO would hang torch.load; a zip bomb would inflate
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles on stderr: the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except Exception as e:  # a truncated file, a pickle with code in it, not a torch file at all
        raise error(f"{what} {path} cannot be read as a plain tensor checkpoint: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ConfigError(f"{what} {path} is not a synthviews walker checkpoint")
    return obj


MAX_WEIGHT = 1e4  # trained walkers have weights of order 1

_WALKER_SCHEMA = Obj({
    "latent_dim": Int(1, MAX_LATENT_DIM),
    "hidden": Int(1, MAX_LATENT_DIM),
    "groups": List(List(Any, 2, length=2), 64),
    "weights": Map(Any, 16),
})


def _check_walker(ckpt: dict, path) -> tuple[int, int, dict[str, int]]:
    """(latent_dim, hidden, groups) after checking the sizes and the weights' shapes.

    Checked before the Walker is built: its layers are allocated from these
    sizes, so a 1 KB file saying hidden=10**9 would otherwise take gigabytes.
    """
    where = f"walker checkpoint {path}"
    validate(ckpt, _WALKER_SCHEMA, where)
    groups = {}
    for i, (name, size) in enumerate(ckpt["groups"]):
        Str(100)(name, f"{where}: groups[{i}] name")
        groups[name] = check_int(size, f"{where}: groups[{i}] size", 1, MAX_LATENT_DIM)
    if len(groups) != len(ckpt["groups"]) or sum(groups.values()) > MAX_LATENT_DIM:
        raise error(f"{where}: groups must be distinct with sizes summing to at most {MAX_LATENT_DIM}")
    d, h, o = ckpt["latent_dim"], ckpt["hidden"], sum(groups.values())
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
    _save(Path(path), {"format": FORMAT, "version": 1, "latent_dim": walker.latent_dim, "hidden": walker.hidden,
                       "groups": [[k, v] for k, v in walker.groups.items()], "weights": state, **meta})


def load_walker(path: str | Path) -> tuple[Walker, dict]:
    """(walker, the checkpoint's other entries) from a file written by :func:`save_walker`."""
    ckpt = _load(Path(path), "walker checkpoint")
    latent_dim, hidden, groups = _check_walker(ckpt, path)
    try:
        walker = Walker(latent_dim, groups, hidden)
        walker.load_state_dict(ckpt["weights"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise error(f"walker checkpoint {path} is malformed: {e}") from None
    return walker.eval(), {k: v for k, v in ckpt.items() if k != "weights"}


# --- training -----------------------------------------------------------------

@dataclass(frozen=True)
class WalkerSettings:
    """Minimax training. Reference: Adam (0.5, 0.999), lr 5e-5 critic / 8e-5 walker, batch 64,
    ResNet-18 critic; here larger lrs and the small critic so a CPU run takes a minute."""

    steps: int = 600              # at most this many steps
    batch: int = 64               # anchors per step; also N of the reported bound
    warmup: int = 50              # critic-only steps first: the walker needs a critic to play against
    eval_every: int = 25          # held-out evaluation, checkpoint and early-stopping check
    patience: int = 4             # stop after this many evaluations without the walker gaining ...
    min_gain: float = 0.02        # ... this much held-out InfoNCE loss (nats)
    eval_pairs: int = 512
    hidden: int = 64
    critic: str = "small"
    resolution: int = 32
    lr_critic: float = 1e-3
    lr_walker: float = 1e-3
    temperature: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch", "eval_every", "patience", "eval_pairs", "hidden", "resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"walker {name} must be a positive integer, got {value!r}")
        if self.warmup < 0 or self.seed < 0 or self.batch < 2:
            raise ConfigError("walker warmup and seed must be >= 0, batch >= 2")
        if self.eval_pairs < self.batch:
            raise ConfigError(f"walker eval_pairs ({self.eval_pairs}) must be >= batch ({self.batch})")
        if self.critic not in CRITICS:
            raise ConfigError(f"unknown critic {self.critic!r}; choose one of: {', '.join(CRITICS)}")
        if not (self.lr_critic > 0 and self.lr_walker > 0 and self.temperature > 0):
            raise ConfigError("walker learning rates and temperature must be > 0")


def _check_groups(names, model: MLVGM, what: str) -> None:
    unknown = [n for n in names if n not in model.group_names]
    if unknown:
        raise ConfigError(f"{what}: unknown latent group(s) {', '.join(map(repr, unknown))} for model "
                          f"{model.family!r}; its groups are: {', '.join(model.group_names)}")


def _state_path(path: Path) -> Path:
    return path.with_name(path.stem + ".state.pt")


def _parse_groups(model: MLVGM, groups) -> list[str]:
    if isinstance(groups, str):
        groups = [g for g in groups.split(",") if g]
    groups = list(groups or [])
    _check_groups(groups, model, "walker")
    if not groups or len(set(groups)) != len(groups):
        raise ConfigError(f"walker: give one or more distinct latent groups, got {groups!r}")
    return groups


def _evaluate(model, walker, critic, anchors, s: WalkerSettings) -> dict:
    """Held-out InfoNCE loss (batches of N = batch) and delta: the L2 distance of the walker's group codes."""
    losses, deltas = [], []
    critic.eval()
    with torch.no_grad():
        for k in range(0, len(anchors) - s.batch + 1, s.batch):
            z = anchors[k:k + s.batch]
            code_a, code_b = model.compose(z, {}), model.compose(z, walker(z))
            xa, xb = prepare(model.decode(code_a), s.resolution), prepare(model.decode(code_b), s.resolution)
            losses.append(info_nce(critic(xa), critic(xb), s.temperature).item())
            diff = [model.group_code(code_b, g) - model.group_code(code_a, g) for g in walker.groups]
            deltas.append(torch.cat(diff, 1).norm(dim=1).to("cpu", torch.float64))
    critic.train()
    d, loss = torch.cat(deltas), float(np.mean(losses))
    return {"loss": loss, "bound": math.log(s.batch) - loss, "delta_mean": float(d.mean()),
            "delta_std": float(d.std())}


def train_walker(model: MLVGM, groups, out: str | Path, settings: WalkerSettings | None = None, device="auto",
                 resume: bool = True, progress: bool = False, threads: int | None = 1) -> dict:
    """Train one walker for ``groups`` (a name, a comma list or a list: perturbed jointly).

    Writes ``out`` (the walker checkpoint a ``walker`` policy references),
    ``<out stem>.state.pt`` (walker, critic and optimiser states, to resume)
    at every evaluation, and ``<out stem>.yaml`` (a policy using the walker).
    Rerunning continues from the state file (``resume=False`` starts over).
    Early stopping: training ends at ``steps`` or when the held-out InfoNCE
    loss has not risen by ``min_gain`` for ``patience`` evaluations; the
    checkpoint keeps the walker of the best evaluation (the critic catches
    up afterwards and the walker only drifts further). Returns that
    evaluation's InfoNCE bound, delta mean/std, the steps run and the history.
    ``threads``: CPU threads while training (see ``mi.torch_threads``).
    """
    with torch_threads(threads):
        return _train_walker(model, groups, out, settings, device, resume, progress)


def _train_walker(model, groups, out, settings, device, resume, progress) -> dict:
    s = settings or WalkerSettings()
    names = _parse_groups(model, groups)
    out = Path(out)
    if out.suffix != ".pt":
        raise ConfigError(f"walker checkpoint {out} must end in .pt")
    device = resolve_device(device)
    model = model.to(device).eval()
    streams = Streams(s.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        walker = Walker(model.latent_dim, {g: model.group(g).size for g in names}, s.hidden).to(device)
        critic = make_critic(s.critic, model.image_shape[0]).to(device)
    opt_w = torch.optim.Adam(walker.parameters(), lr=s.lr_walker, betas=(0.5, 0.999))
    opt_c = torch.optim.Adam(critic.parameters(), lr=s.lr_critic, betas=(0.5, 0.999))
    meta = {"model_id": model.model_id, "family": model.family, "settings": asdict(s)}
    same_run = {**meta, "settings": {k: v for k, v in asdict(s).items() if k != "steps"}}  # more steps may resume
    state = {"step": 0, "history": [], "best": -math.inf, "best_step": None, "bad": 0, "done": False}

    state_file = _state_path(out)
    if resume and state_file.exists():
        saved = _load(state_file, "walker training state", MAX_WEIGHTS_BYTES)
        if saved.get("run") != same_run or saved.get("groups") != names:
            raise ConfigError(f"{state_file} was written for another model, groups or settings; "
                              "pass resume=False (CLI: --fresh) to start over")
        walker.load_state_dict(saved["walker"])
        critic.load_state_dict(saved["critic"])
        opt_w.load_state_dict(saved["opt_w"])
        opt_c.load_state_dict(saved["opt_c"])
        state = saved["state"]

    anchors = sample_prior(model.prior, streams, EVAL_OFFSET + np.arange(s.eval_pairs), model.latent_dim).to(device)

    def checkpoint(metrics: dict, keep_walker: bool) -> None:
        if keep_walker:
            save_walker(out, walker, {**meta, "step": state["step"], "metrics": metrics, "history": state["history"]})
        _save(state_file, {"format": FORMAT, "run": same_run, "groups": names, "state": state,
                           "walker": walker.state_dict(), "critic": critic.state_dict(),
                           "opt_w": opt_w.state_dict(), "opt_c": opt_c.state_dict()})
        write_atomic(out.with_suffix(".yaml"), walker_policy_yaml(out.with_suffix(".yaml"), [out]).encode())

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=s.steps, initial=state["step"], unit="step", desc=f"walker {','.join(names)}")
    start = time.perf_counter()
    critic.train()
    try:
        while not state["done"] and state["step"] < s.steps:
            t = state["step"]
            z = sample_prior(model.prior, streams, t * s.batch + np.arange(s.batch), model.latent_dim).to(device)
            with torch.no_grad():
                xa = prepare(model.decode(model.compose(z, {})), s.resolution)
            xb = prepare(model.decode(model.compose(z, walker(z))), s.resolution)
            loss_c = info_nce(critic(xa), critic(xb.detach()), s.temperature)  # critic: minimise
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
            if t >= s.warmup:  # walker: maximise the same loss against the updated critic
                loss_w = info_nce(critic(xa), critic(xb), s.temperature)
                params = list(walker.parameters())  # gradients for the walker only, not critic or generator
                for p, g in zip(params, torch.autograd.grad(-loss_w, params)):
                    p.grad = g
                opt_w.step()
            state["step"] = t + 1
            if bar is not None:
                bar.update(1)
            if state["step"] % s.eval_every == 0 or state["step"] == s.steps:
                metrics = {"step": state["step"], **_evaluate(model, walker, critic, anchors, s)}
                state["history"].append(metrics)
                improved = False
                if state["step"] > s.warmup:
                    improved = metrics["loss"] > state["best"] + s.min_gain
                    if improved:
                        state["best"], state["best_step"], state["bad"] = metrics["loss"], state["step"], 0
                    else:
                        state["bad"] += 1
                    state["done"] = state["bad"] >= s.patience
                checkpoint(metrics, keep_walker=improved or state["best_step"] is None)
    finally:
        if bar is not None:
            bar.close()
    final = next((h for h in state["history"] if h["step"] == state["best_step"]),
                 state["history"][-1] if state["history"] else {})
    return {"groups": names, "checkpoint": str(out), "policy": str(out.with_suffix(".yaml")),
            "steps": state["step"], "stopped_early": bool(state["done"]), "best_step": final.get("step"),
            "bound": final.get("bound"),
            "loss": final.get("loss"), "log_n": math.log(s.batch), "delta_mean": final.get("delta_mean"),
            "delta_std": final.get("delta_std"), "history": state["history"],
            "seconds": time.perf_counter() - start}


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
            _check_groups(list(walker.groups), model, f"walker {entry['path']}")
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
        unknown = set(d) - {"kind", "walkers", "scale"}
        if unknown:
            raise ConfigError(f"walker policy: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                              "allowed: kind, walkers, scale")
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
        return cls(entries, base if base is not None else policies.policy_file_dir(), scale)


def _check_scale(scale) -> tuple[float, float]:
    """``scale`` as (lo, hi): a number s is (s, s); a pair [lo, hi] needs 0 <= lo <= hi, hi > 0."""
    pair = list(scale) if isinstance(scale, (list, tuple)) else [scale, scale]
    if (len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and finite(v)
                                  for v in pair) or not 0 <= pair[0] <= pair[1] or pair[1] <= 0
            or pair[1] > MAX_NOISE):
        raise error(f"walker policy: scale must be a number in (0, {MAX_NOISE:g}] or a range [lo, hi] with "
                    f"0 <= lo <= hi <= {MAX_NOISE:g}, got {brief(scale)}")
    return float(pair[0]), float(pair[1])


def walker_policy_yaml(policy_path: str | Path, checkpoints: list[str | Path]) -> str:
    """A ``walker`` policy file's text for ``checkpoints``, with paths relative to ``policy_path``."""
    import os

    import yaml

    base = Path(policy_path).resolve().parent
    entries = [{"path": Path(os.path.relpath(Path(c).resolve(), base)).as_posix(), "sha256": sha256_file(c)}
               for c in checkpoints]
    return ("# Learned-walker policy: each group's noise is T_g(anchor), written by synthviews.\n"
            "# T_g is deterministic: one positive per anchor (--views 1). For more, add a per-view step\n"
            "# scale, e.g. `scale: [0.5, 1.5]`: each positive gets scale * T_g(anchor), scale drawn per view.\n"
            + yaml.safe_dump({"kind": "walker", "walkers": entries}, sort_keys=False))


register_policy(WalkerPolicy.kind, WalkerPolicy.from_dict)
