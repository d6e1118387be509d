"""Training learned walkers (COP-Gen; the reference method's Table 1 mode) by a minimax game.

The walker T(z) starts near zero (x' = x). An InfoNCE critic minimises the
loss on (x, x'), the walker maximises it, i.e. looks for the perturbation
that lowers I(x; x') most. How far it has to move a group (delta) for how
much MI says whether the group carries the semantics. The walker network,
its checkpoint file and the ``walker`` policy live in
:mod:`synthviews.policies.walker`; this module only trains.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .._util.checks import MAX_WALKER_BYTES, MAX_WALKER_HIDDEN, MAX_WEIGHTS_BYTES
from .._util.device import resolve_device
from .._util.settings import setting
from ..errors import ConfigError
from ..latents import Streams, sample_prior
from ..models.base import MLVGM
from ..policies import check_groups, save_policy
from ..policies.walker import (
    FORMAT,
    Walker,
    WalkerPolicy,
    check_walker_size,
    read_checkpoint,
    save_walker,
    walker_policy,
    write_checkpoint,
)
from .critic import CRITICS, info_nce, make_critic, prepare
from .mi import EVAL_OFFSET, torch_threads

WALKER_POLICY_NOTE = """Learned-walker policy: each group's noise is T_g(anchor), written by synthviews.
T_g is deterministic: one positive per anchor (--views 1). For more, add a per-view step
scale, e.g. `scale: [0.5, 1.5]`: each positive gets scale * T_g(anchor), scale drawn per view."""


@dataclass(frozen=True)
class WalkerSettings:
    """Minimax training, Adam (0.5, 0.999) for both players. The reference method trains a ResNet-18
    critic with lr 5e-5 (critic) / 8e-5 (walker), batch 64; the defaults here are the small critic and
    larger learning rates, so that a run fits on a CPU."""

    steps: int = setting(600, "maximum training steps")
    batch: int = setting(64, "anchors per step, also N of the bound")
    # the walker needs a critic to play against
    warmup: int = setting(50, "critic-only steps first")
    eval_every: int = setting(25, "steps between held-out evaluations and checkpoints")
    patience: int = setting(4, "stop after this many evaluations without gain")
    min_gain: float = setting(0.02, "InfoNCE loss gain that counts, in nats")
    eval_pairs: int = setting(512, "held-out anchors per evaluation")
    hidden: int = setting(64, "walker hidden width")
    critic: str = setting("small", "small CNN or the reference ResNet-18", choices=CRITICS)
    resolution: int = setting(32, "critic input size in pixels", flag="--critic-resolution")
    lr_critic: float = setting(1e-3, "critic learning rate; the reference method uses 5e-5")
    lr_walker: float = setting(1e-3, "walker learning rate; the reference method uses 8e-5")
    temperature: float = 0.1
    seed: int = setting(0, "seed")

    def __post_init__(self):
        for name in ("steps", "batch", "eval_every", "patience", "eval_pairs", "hidden", "resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"walker {name} must be a positive integer, got {value!r}")
        if self.hidden > MAX_WALKER_HIDDEN:
            raise ConfigError(f"walker hidden must be at most {MAX_WALKER_HIDDEN:,} (real walkers: 64-512), "
                              f"got {self.hidden:,}")
        if self.warmup < 0 or self.seed < 0 or self.batch < 2:
            raise ConfigError("walker warmup and seed must be >= 0, batch >= 2")
        if self.eval_pairs < self.batch:
            raise ConfigError(f"walker eval_pairs ({self.eval_pairs}) must be >= batch ({self.batch})")
        if self.critic not in CRITICS:
            raise ConfigError(f"unknown critic {self.critic!r}; choose one of: {', '.join(CRITICS)}")
        if not (self.lr_critic > 0 and self.lr_walker > 0 and self.temperature > 0):
            raise ConfigError("walker learning rates and temperature must be > 0")


WALKER_META_BYTES = 1 << 20  # room left in a walker file for its metadata (settings, history: a few KB)


def _state_path(path: Path) -> Path:
    return path.with_name(path.stem + ".state.pt")


def _parse_groups(model: MLVGM, groups) -> list[str]:
    if isinstance(groups, str):
        groups = [g for g in groups.split(",") if g]
    groups = list(groups or [])
    check_groups(groups, model, "walker")
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
    sizes = {g: model.group(g).size for g in names}
    # before anything is built or trained: a walker load_walker would refuse is not worth training
    check_walker_size(model.latent_dim, s.hidden, sum(sizes.values()), f"walker for {model.family} {','.join(names)}",
                      MAX_WALKER_BYTES - WALKER_META_BYTES)
    device = resolve_device(device)
    model = model.to(device).eval()
    streams = Streams(s.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        walker = Walker(model.latent_dim, sizes, s.hidden).to(device)
        critic = make_critic(s.critic, model.image_shape[0]).to(device)
    opt_w = torch.optim.Adam(walker.parameters(), lr=s.lr_walker, betas=(0.5, 0.999))
    opt_c = torch.optim.Adam(critic.parameters(), lr=s.lr_critic, betas=(0.5, 0.999))
    meta = {"model_id": model.model_id, "family": model.family, "settings": asdict(s)}
    same_run = {**meta, "settings": {k: v for k, v in asdict(s).items() if k != "steps"}}  # more steps may resume
    state = {"step": 0, "history": [], "best": -math.inf, "best_step": None, "bad": 0, "done": False}

    state_file = _state_path(out)
    if resume and state_file.exists():
        saved = read_checkpoint(state_file, "walker training state", MAX_WEIGHTS_BYTES)
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
        write_checkpoint(state_file, {"format": FORMAT, "run": same_run, "groups": names, "state": state,
                           "walker": walker.state_dict(), "critic": critic.state_dict(),
                           "opt_w": opt_w.state_dict(), "opt_c": opt_c.state_dict()})
        write_walker_policy(out.with_suffix(".yaml"), [out])

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


def write_walker_policy(path: str | Path, checkpoints: list[str | Path]) -> WalkerPolicy:
    """Save a ``walker`` policy for ``checkpoints`` at ``path`` (paths relative to it), with a note on its use."""
    return save_policy(walker_policy(checkpoints, path), path, comments=WALKER_POLICY_NOTE)


__all__ = ["WalkerSettings", "train_walker", "write_walker_policy", "WALKER_POLICY_NOTE"]
