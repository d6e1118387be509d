"""The MI sweep: I(x; x') per latent group and perturbation std, with confidence intervals.

One cell = one group perturbed with one std, every other group fixed. For
each seed, anchor/positive pairs are drawn with :class:`ViewSampler`, a
fresh critic is trained on ``pairs`` of them and the InfoNCE bound
``log N - L_NCE`` is evaluated on ``eval_pairs`` held-out pairs (anchors
with other sample indices) in batches of N = ``eval_batch`` candidates.
The reference cell perturbs nothing (x' = x): its bound is the ceiling the
critic reaches, below the theoretical ``log N``.

Every cell of one seed uses the same anchors, the same critic
initialisation and the same minibatch order, so cells differ only by the
perturbation (common random numbers: differences between cells are not
seed noise). A cell whose positives are bit-identical to their anchors
(a group that changes no pixel) has exactly the reference's data, hence
exactly its critic and bound; it reuses them instead of training again.

With ``critic_t_x`` set to a T_x preset (:class:`synthviews.data.augment.Augment`),
both images of every pair are augmented independently, at the critic's input
resolution, before the critic sees them, in training and in the held-out
bounds alike: the bound is then on I(T(x); T'(x')), what survives the SSL
augmentations (the reference cell becomes I(T(x); T'(x))). The augmentation
seeds are a function of (seed, phase, step or held-out chunk, side) only, the
same for every cell of one seed, so the common random numbers and the reuse
of identical cells still hold. ``none`` (the default) augments nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .._util.device import resolve_device
from .._util.settings import parse_floats, parse_truncation, setting
from ..data.augment import PRESETS as T_X_PRESETS
from ..data.augment import Augment
from ..errors import ConfigError
from ..models.base import MLVGM
from ..policies import GaussianPolicy, GroupNoise, Policy, check_groups
from ..views import ViewSampler
from .critic import CRITICS, bounds, make_critic, prepare, train_critic

EVAL_OFFSET = 10**9  # held-out anchors are sample indices EVAL_OFFSET, EVAL_OFFSET + 1, ...
REFERENCE = "reference"  # group name of the x' = x cell


@dataclass(frozen=True)
class Settings:
    """How the sweep measures; ``quick()`` is a smaller setting for tests and a first look."""

    stds: tuple[float, ...] = setting((0.1, 0.25, 0.5, 1.0, 2.0), "comma-separated perturbation stds",
                                      type=parse_floats)
    # perturbation noise ~ N(0, std) cut at +-truncation std
    truncation: float | None = setting(2.0, "noise cut at +-T std, or 'none'", type=parse_truncation)
    pairs: int = setting(2048, "critic training pairs per cell and seed")
    eval_pairs: int = setting(1024, "held-out pairs per cell and seed")
    batch: int = setting(64, "critic training batch")  # the reference method's 64
    eval_batch: int = setting(256, "N candidates per held-out bound; ceiling log N")
    steps: int = setting(200, "critic training steps per cell and seed")
    seeds: int = setting(2, "repetitions with other anchors and critics")
    seed: int = setting(0, "first seed")  # the others are seed+1, seed+2, ...
    critic: str = setting("small", "small CNN or the reference ResNet-18", choices=CRITICS)
    resolution: int = setting(32, "critic input size in pixels", flag="--critic-resolution")
    # Adam; the reference method uses 5e-5 for a long ResNet-18 run
    lr: float = setting(1e-3, "critic learning rate")
    # COP-Gen trains its critic on T_x views: the MI then measures what survives the SSL augmentations
    critic_t_x: str = setting("none", "T_x preset applied independently to both images of every critic pair, "
                              "in training and evaluation ('none': no augmentation)", choices=T_X_PRESETS)
    temperature: float = 0.1
    gen_batch: int = 128            # anchors decoded per generator call

    @classmethod
    def quick(cls, **overrides) -> "Settings":
        """Fewer stds, pairs and steps: for tests and a first look."""
        base = dict(stds=(0.5, 2.0), pairs=1024, eval_pairs=512, steps=100, seeds=2)
        return cls(**{**base, **overrides})

    def __post_init__(self):
        stds = tuple(float(s) for s in self.stds)
        object.__setattr__(self, "stds", stds)
        if not stds or any(not math.isfinite(s) or s <= 0 for s in stds) or len(set(stds)) != len(stds):
            raise ConfigError(f"stds must be distinct positive numbers, got {list(self.stds)}")
        object.__setattr__(self, "stds", tuple(sorted(stds)))
        for name in ("pairs", "eval_pairs", "batch", "eval_batch", "steps", "seeds", "resolution", "gen_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.batch < 2 or self.eval_batch < 2:
            raise ConfigError("batch and eval_batch need at least 2 candidates for InfoNCE")
        if self.batch > self.pairs:
            raise ConfigError(f"batch ({self.batch}) cannot exceed the training pairs ({self.pairs})")
        if self.seeds * (self.eval_pairs // self.eval_batch) < 2:
            raise ConfigError(f"a confidence interval needs >= 2 held-out batches: seeds x (eval_pairs // eval_batch) "
                              f"= {self.seeds} x ({self.eval_pairs} // {self.eval_batch}) is less")
        if self.critic not in CRITICS:
            raise ConfigError(f"unknown critic {self.critic!r}; choose one of: {', '.join(CRITICS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.truncation is not None and not self.truncation > 0:
            raise ConfigError(f"truncation must be > 0 or None, got {self.truncation!r}")
        if not isinstance(self.critic_t_x, str) or self.critic_t_x not in T_X_PRESETS:
            raise ConfigError(f"unknown critic_t_x preset {self.critic_t_x!r}; choose one of: {', '.join(T_X_PRESETS)}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ConfigError("lr and temperature must be > 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stds"] = list(self.stds)
        return d


@dataclass
class Cell:
    """The measurements of one (group, std) cell, pooled over seeds."""

    group: str
    std: float
    mi: float                  # mean InfoNCE bound (nats) over held-out batches and seeds
    ci: float                  # half-width of its 95% confidence interval
    per_seed: list[float]      # mean bound of each seed
    batches: list[float]       # every held-out batch bound (seed-major)
    delta_mean: float          # L2 distance of the group's code, anchor vs positive (model.group_code)
    delta_std: float
    pixel_change: float        # mean over pairs and pixels of the RGB L2 difference, images in [0, 1]
    train_loss: float          # last-10-step mean training loss (0 = the critic separates its batch)
    identical: bool = False    # positives bit-identical to anchors: the reference's numbers are reused
    seconds: float = 0.0


def confidence(values) -> tuple[float, float]:
    """(mean, 95% half-width) of i.i.d.-treated values, Student t for small samples."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    df = len(v) - 1
    table = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
             15: 2.13, 20: 2.09, 30: 2.04, 60: 2.00}
    t = next((table[k] for k in sorted(table, reverse=True) if k <= df), 12.71) if df <= 60 else 1.96
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(len(v)))


@dataclass
class _Pairs:
    xa: torch.Tensor         # critic inputs of the anchors (n, C, r, r), on the device
    xb: torch.Tensor         # ... of the positives
    delta: torch.Tensor      # (n, G) float64: per-group code distance
    pixel: torch.Tensor      # (n,) float64: per-pair pixel change
    identical: bool


def draw_pairs(model: MLVGM, policy: Policy, seed: int, indices: np.ndarray, settings: Settings,
               device: torch.device) -> _Pairs:
    """Anchor/positive pairs for ``indices`` under ``policy`` (one positive view), ready for the critic."""
    sampler = ViewSampler(model, policy, views=1, seed=seed, device=device)
    xa, xb, deltas, pixels, identical = [], [], [], [], True
    for k in range(0, len(indices), settings.gen_batch):
        batch = sampler.sample(indices[k:k + settings.gen_batch])
        a, b = batch.images[:, 0], batch.images[:, 1]
        identical = identical and torch.equal(a, b)
        pixels.append((a - b).pow(2).sum(dim=1).sqrt().mean(dim=(1, 2)).to("cpu", torch.float64))
        deltas.append(batch.deltas[:, 0])
        xa.append(prepare(a, settings.resolution))
        xb.append(prepare(b, settings.resolution))
    return _Pairs(torch.cat(xa), torch.cat(xb), torch.cat(deltas), torch.cat(pixels), identical)


def augment_seed(seed: int, phase: str, index: int, side: int) -> int:
    """The T_x seed of one side (0 anchor, 1 positive) of one training step or held-out chunk (``phase``
    ``train`` or ``eval``) of sweep seed ``seed``: a fixed hash, the same for every cell of that seed."""
    digest = hashlib.sha256(f"critic_t_x/{seed}/{phase}/{index}/{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def critic_transform(settings: Settings, seed: int, phase: str):
    """The transform ``train_critic``/``bounds`` apply to critic inputs, or None when ``critic_t_x`` is none.

    Inputs are the critic's ([-1, 1], ``resolution`` px); the preset runs on
    them as [0, 1] images at that same size and maps back to [-1, 1].
    """
    if settings.critic_t_x == "none":
        return None
    aug = Augment(settings.critic_t_x, size=settings.resolution, normalize=False)

    def transform(x: torch.Tensor, index: int, side: int) -> torch.Tensor:
        return aug((x + 1) / 2, seed=augment_seed(seed, phase, index, side)) * 2 - 1

    return transform


def estimate(model: MLVGM, policy: Policy, settings: Settings, seed: int, device: torch.device,
             reference: dict | None = None) -> dict:
    """Train a critic on one seed's training pairs and bound I(x; x') on its held-out pairs.

    Returns plain numbers (bounds per held-out batch, deltas, pixel change).
    With ``reference`` (this seed's x' = x result) a cell whose positives
    equal their anchors reuses it: its training would be the very same.
    """
    start = time.perf_counter()
    train = draw_pairs(model, policy, seed, np.arange(settings.pairs), settings, device)
    held = draw_pairs(model, policy, seed, EVAL_OFFSET + np.arange(settings.eval_pairs), settings, device)
    out = {"delta": torch.cat([train.delta, held.delta]), "pixel": torch.cat([train.pixel, held.pixel]),
           "identical": train.identical and held.identical}
    if out["identical"] and reference is not None:
        out.update(bounds=reference["bounds"], train_loss=reference["train_loss"])
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            critic = make_critic(settings.critic, train.xa.shape[1]).to(device)
        order = torch.Generator().manual_seed(seed)
        losses = train_critic(critic, train.xa, train.xb, settings.steps, settings.batch, settings.lr,
                              settings.temperature, order, transform=critic_transform(settings, seed, "train"))
        out.update(bounds=bounds(critic, held.xa, held.xb, settings.eval_batch, settings.temperature,
                                 transform=critic_transform(settings, seed, "eval")),
                   train_loss=float(np.mean(losses[-10:])))
    out["seconds"] = time.perf_counter() - start
    return out


def pool(group: str, std: float, per_seed: list[dict], index: int | None) -> Cell:
    """Pool the per-seed results of one cell; ``index`` picks the group's delta column."""
    batches = [b for r in per_seed for b in r["bounds"]]
    mi, ci = confidence(batches)
    delta = torch.cat([r["delta"][:, index] for r in per_seed]) if index is not None else torch.zeros(1)
    pixel = torch.cat([r["pixel"] for r in per_seed])
    return Cell(group=group, std=std, mi=mi, ci=ci, per_seed=[float(np.mean(r["bounds"])) for r in per_seed],
                batches=batches, delta_mean=float(delta.mean()), delta_std=float(delta.std()) if len(delta) > 1 else 0.0,
                pixel_change=float(pixel.mean()), train_loss=float(np.mean([r["train_loss"] for r in per_seed])),
                identical=all(r["identical"] for r in per_seed), seconds=sum(r["seconds"] for r in per_seed))


def cell_policy(group: str, std: float, truncation: float | None) -> GaussianPolicy:
    """Only ``group`` perturbed, with N(0, std) noise cut at +-truncation std."""
    return GaussianPolicy({group: GroupNoise(std=std, truncation=truncation)})


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op CPU threads, then restore (None: leave torch's setting).

    The critics are small: on a CPU shared with other jobs one thread can be
    several times faster than two that keep waiting for each other.
    """
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"threads must be a positive integer, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def sweep(model: MLVGM, groups=None, settings: Settings | None = None, device="auto",
          progress: bool = False, threads: int | None = 1) -> dict:
    """Measure the reference cell and every (group, std) cell; returns a JSON-able dict.

    Keys: ``settings``, ``model``, ``log_n`` (the theoretical ceiling),
    ``reference`` (the x' = x cell) and ``cells`` (group-major, stds
    ascending), plus ``seconds``. ``threads``: see :func:`torch_threads`;
    results are reproducible for a given device and thread count.
    """
    with torch_threads(threads):
        return _sweep(model, groups, settings, device, progress)


def _sweep(model, groups, settings, device, progress) -> dict:
    settings = settings or Settings()
    groups = list(model.group_names if groups is None else groups)
    check_groups(groups, model, "MI sweep")
    if not groups:
        raise ConfigError(f"MI sweep: no latent group given; the groups of model {model.family!r} are: "
                          f"{', '.join(model.group_names)}")
    device = resolve_device(device)
    seeds = [settings.seed + k for k in range(settings.seeds)]
    total = len(seeds) * (1 + len(groups) * len(settings.stds))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="cell", desc="MI sweep")
    start = time.perf_counter()

    def run(policy, seed, ref=None):
        r = estimate(model, policy, settings, seed, device, ref)
        if bar is not None:
            bar.update(1)
        return r

    try:
        refs = [run(GaussianPolicy(), s) for s in seeds]
        reference = pool(REFERENCE, 0.0, refs, None)
        cells = []
        for g in groups:
            index = model.group_names.index(g)
            for std in settings.stds:
                per_seed = [run(cell_policy(g, std, settings.truncation), s, ref) for s, ref in zip(seeds, refs)]
                cells.append(pool(g, std, per_seed, index))
    finally:
        if bar is not None:
            bar.close()
    return {"model": {"family": model.family, "model_id": model.model_id, "config": model.config},
            "groups": groups, "model_groups": list(model.group_names), "settings": settings.to_dict(), "device": str(device),
            "log_n": math.log(settings.eval_batch), "reference": asdict(reference),
            "cells": [asdict(c) for c in cells], "seconds": time.perf_counter() - start}


__all__ = ["Settings", "Cell", "sweep", "estimate", "draw_pairs", "confidence", "cell_policy", "REFERENCE",
           "T_X_PRESETS", "augment_seed", "critic_transform"]
