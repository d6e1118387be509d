"""Train a small DDPM (a diffusers ``UNet2DModel``) on scikit-learn's digits: the built-in ``digits-ddpm``.

``synthviews train-ddpm --out runs/digits_ddpm`` (or :func:`train`) trains on
the 1,347 training images of the fixed split in :mod:`synthviews.train.digits`
(32x32, one channel) and writes to ``--out``:

- ``checkpoint.pt``: UNet, its EMA, the Adam state, step, image count, the
  training RNG state and the data order, as plain tensors/dicts, written
  atomically every ``--checkpoint-minutes`` and at the end (shared loop:
  :mod:`synthviews.train.loop`); ``--resume`` continues exactly.
- ``pipeline/``: the EMA UNet as a diffusers ``DDPMPipeline`` folder
  (``model_index.json``, ``unet/`` safetensors + config,
  ``scheduler/scheduler_config.json``); ``--export DIR`` writes a second
  copy when the run is complete. Both are built beside the target and
  swapped in by two renames (a crash between them is repaired by the next
  export); a non-empty folder is only replaced if it is a previous export
  of this trainer, and never one that is, holds or lies inside the run.
- ``samples-NNNNNN.png`` (32 EMA samples, 100 ancestral steps, fixed seed)
  and ``log.jsonl`` (loss, gradient norm, speed).

Pixel convention (the one of diffusers' ``DDPMPipeline``): the UNet works on
images in [-1, 1] (training images x in [0, 1] enter as ``2 x - 1``); a
sample ``s`` becomes an image in [0, 1] as ``(s / 2 + 0.5).clamp(0, 1)``.
``model_index.json`` repeats this under ``_synthviews`` (diffusers ignores
keys that start with ``_``).

Choices (numbers in :class:`DDPMOptions`):

- Epsilon prediction with the plain MSE loss, 1000 training timesteps, the
  ``squaredcos_cap_v2`` (cosine) schedule: at 32x32 the linear schedule
  turns images into almost pure noise over the last few hundred steps, so
  those steps would decide nothing; the cosine schedule spreads the
  destruction of information over all timesteps, so more of the sampler's
  step ranges carry something a latent group can control.
- UNet: four levels (32, 16, 8, 4 px) of 16, 32, 64, 64 channels, one
  ResNet layer per block, self-attention only at 8x8 and in the 4x4 middle
  block (cheap there), GroupNorm with 8 groups: 1.09 M parameters (4.4 MB
  of float32).
  The digits hold 8x8 pixels of information, so a narrow network suffices,
  and one step of batch 64 takes about 0.6 s on one CPU thread.
- Adam (lr 5e-4, linear warm-up over 100 steps, betas (0.9, 0.999)),
  gradients clipped to norm 1, batch 64, no augmentation (a flipped digit is
  not a digit). EMA of the weights with decay min(0.999, (1 + k) / (10 + k))
  after k steps; the EMA is what is exported.
- One seeded ``torch.Generator`` draws the data order, the timesteps and the
  noise, so the same seed and steps give the same weights (on one thread).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._util.settings import setting
from ..errors import ConfigError
from ..models.diffusion.folder import diffusers_module
from . import loop
from .loop import CHECKPOINT

VERB = "train-ddpm"
EXPORT = "pipeline"
FORMAT = "synthviews-train-ddpm/1"
DEFAULT_STEPS = 4000
TRAINED_LICENSE = "mit"
SCHEDULES = ("squaredcos_cap_v2", "linear")
PIXEL_CONVENTION = {"model_range": [-1.0, 1.0], "input": "2 * x - 1 for images x in [0, 1]",
                    "output": "(sample / 2 + 0.5).clamp(0, 1)"}


@dataclass
class DDPMOptions:
    """Everything that defines a training run (stored in the checkpoint); ``setting`` fields are CLI flags."""

    # network
    resolution: int = 32
    channels: int = 1
    block_out_channels: tuple = (16, 32, 64, 64)
    attention: tuple = (False, False, True, False)  # self-attention at each level
    layers_per_block: int = 1
    norm_num_groups: int = 8
    # noise schedule
    num_train_timesteps: int = 1000
    beta_schedule: str = setting("squaredcos_cap_v2", "noise schedule of the 1000 training timesteps",
                                 choices=SCHEDULES)
    # optimisation
    batch: int = setting(64, "images per step")
    lr: float = setting(5e-4, "Adam learning rate (after the warm-up)")
    warmup_steps: int = setting(100, "steps of linear learning-rate warm-up")
    grad_clip: float = setting(1.0, "gradient norm clip (0: none)")
    ema_decay: float = setting(0.999, "EMA decay of the exported weights")
    seed: int = setting(0, "seed of initialisation, data order, timesteps and noise")

    def unet_config(self) -> dict:
        down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in self.attention]
        up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention)]
        return {"sample_size": self.resolution, "in_channels": self.channels, "out_channels": self.channels,
                "block_out_channels": list(self.block_out_channels), "layers_per_block": self.layers_per_block,
                "down_block_types": down, "up_block_types": up, "norm_num_groups": self.norm_num_groups}

    def scheduler_config(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "prediction_type": "epsilon", "variance_type": "fixed_small", "clip_sample": True,
                "clip_sample_range": 1.0}

    def validate(self) -> "DDPMOptions":
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"{VERB}: {f.name} must be an integer, got {v!r}")
            if f.type == "float" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ConfigError(f"{VERB}: {f.name} must be a number, got {v!r}")
        for name in ("resolution", "channels", "layers_per_block", "norm_num_groups", "num_train_timesteps", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{VERB}: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"{VERB}: lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ConfigError(f"{VERB}: warmup_steps and grad_clip must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"{VERB}: ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.beta_schedule not in SCHEDULES:
            raise ConfigError(f"{VERB}: beta_schedule must be one of {', '.join(SCHEDULES)}, got {self.beta_schedule!r}")
        chans = tuple(self.block_out_channels)
        if not chans or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in chans):
            raise ConfigError(f"{VERB}: block_out_channels must be positive integers, got {self.block_out_channels!r}")
        if len(tuple(self.attention)) != len(chans):
            raise ConfigError(f"{VERB}: attention needs one entry per level ({len(chans)}), got {self.attention!r}")
        if any(c % self.norm_num_groups for c in chans):
            raise ConfigError(f"{VERB}: every entry of block_out_channels {chans} must be divisible by "
                              f"norm_num_groups {self.norm_num_groups}")
        if self.resolution % 2 ** (len(chans) - 1):
            raise ConfigError(f"{VERB}: resolution {self.resolution} must be divisible by 2^{len(chans) - 1} "
                              f"for {len(chans)} levels")
        return self


PRESETS = {
    "digits": {},
    # For tests and smoke runs: a fraction of a second per step.
    "tiny": {"resolution": 8, "block_out_channels": (8, 8), "attention": (False, True), "norm_num_groups": 4,
             "num_train_timesteps": 50, "batch": 4, "warmup_steps": 2, "ema_decay": 0.9},
}


def preset(name: str = "digits", **overrides) -> DDPMOptions:
    return loop.preset_options(VERB, DDPMOptions, PRESETS, name, overrides)


# --- sampling (checkpoint grids and quality checks) --------------------------------

@torch.no_grad()
def sample(unet, scheduler, n: int, steps: int = 100, seed: int = 0, batch: int = 256) -> torch.Tensor:
    """``n`` images in [0, 1] by DDPM ancestral sampling with ``steps`` of the scheduler's timesteps.

    ``scheduler``: a ``DDPMScheduler`` (its config is copied; the caller's is not
    changed). The initial and per-step noises come from one generator seeded
    with ``seed``, batch by batch, so the images depend on ``batch``.
    """
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps)
    cfg = unet.config
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        x = torch.randn(min(batch, n - start), cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=g).prev_sample
        out.append((x / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


# --- the trainer -----------------------------------------------------------------

class Trainer(loop.RunState):
    """UNet, its EMA, optimiser, data order and RNG: one object whose state_dict() is a checkpoint."""

    def __init__(self, options: DDPMOptions, reals: torch.Tensor):
        """``reals``: training images (N, C, R, R) in [0, 1]."""
        diffusers = diffusers_module()
        self.opts = o = options.validate()
        if reals.ndim != 4 or tuple(reals.shape[1:]) != (o.channels, o.resolution, o.resolution):
            raise ConfigError(f"{VERB}: training images must be (N, {o.channels}, {o.resolution}, {o.resolution}), "
                              f"got {tuple(reals.shape)}")
        self.reals = reals.to(torch.float32) * 2 - 1  # the [-1, 1] convention
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(o.seed)
            self.unet = diffusers.UNet2DModel(**o.unet_config())
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.scheduler = diffusers.DDPMScheduler(**o.scheduler_config())
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=o.lr, betas=(0.9, 0.999), eps=1e-8)
        self.start_run(o.seed + 1, DEFAULT_STEPS)

    def train_step(self) -> dict:
        """One step: noise a batch at random timesteps, regress the noise (MSE), Adam, then EMA."""
        o = self.opts
        self.unet.train()
        x0 = self.next_reals()
        n = len(x0)
        noise = torch.randn(x0.shape, generator=self.rng)
        t = torch.randint(0, o.num_train_timesteps, (n,), generator=self.rng)
        xt = self.scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(self.unet(xt, t).sample, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.unet.parameters())
        grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else math.inf)
        lr = o.lr * min(1.0, (self.step + 1) / o.warmup_steps) if o.warmup_steps else o.lr
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        decay = min(o.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), params):
                p_ema.lerp_(p, 1 - decay)
            for b_ema, b in zip(self.ema.buffers(), self.unet.buffers()):
                b_ema.copy_(b)
        self.step += 1
        self.nimg += n
        return {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": lr}

    # checkpoints
    def state_dict(self) -> dict:
        return self.run_state(FORMAT, {"unet": self.unet.state_dict(), "ema": self.ema.state_dict(),
                                       "opt": self.opt.state_dict()})

    def load_state_dict(self, state: dict) -> None:
        self.unet.load_state_dict(state["unet"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.load_run_state(state, DEFAULT_STEPS)

    def export(self, folder, out=None) -> None:
        """The EMA UNet and the scheduler as a diffusers DDPMPipeline folder that replaces ``folder``.

        The licence is this project's (MIT): our code trained on scikit-learn's
        BSD-licensed digits. The folder is built in ``.NAME.tmp`` beside
        ``folder``; the old one is renamed to ``.NAME.old``, the new one into
        place, and only then is the old one deleted. A crash leaves the old or
        the new export under ``folder``, or (between the renames) the old one
        under ``.NAME.old``, which the next export renames back first.
        ``folder`` is checked here too (see :func:`check_export`), with ``out``
        the run directory it must stay clear of (None: not checked).
        """
        diffusers = diffusers_module()
        folder = Path(folder)
        tmp, old = _siblings(folder)
        if not _exists(folder) and old.is_dir() and not old.is_symlink():
            old.rename(folder)  # the previous export, left there by a crash between the two renames
        check_export(folder, out)
        for leftover in (tmp, old):
            _remove(leftover)
        tmp.mkdir(parents=True)
        self.ema.save_pretrained(tmp / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(tmp / "scheduler")
        index = {"_class_name": "DDPMPipeline", "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"],
                 "_synthviews": {"trainer": FORMAT, "license": TRAINED_LICENSE, "data": "scikit-learn digits, "
                                 "train split of synthviews.train.digits (1347 images), 32x32",
                                 "pixels": PIXEL_CONVENTION, "steps": self.step, "images_seen": self.nimg}}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        for f in tmp.rglob("*"):  # safetensors writes 0600; a shipped file must be readable by every user
            f.chmod(0o755 if f.is_dir() else 0o644)
        if _exists(folder):
            folder.rename(old)
            tmp.rename(folder)
            _remove(old)
        else:
            tmp.rename(folder)

    def sample_grid(self, rows: int = 4, cols: int = 8, steps: int = 100, seed: int = 0) -> np.ndarray:
        """(H, W, C) uint8 grid of EMA samples for a fixed seed."""
        from .._util.images import grid, to_uint8

        tiles = to_uint8(sample(self.ema, self.scheduler, rows * cols, steps=steps, seed=seed))
        return grid(tiles.reshape(rows, cols, *tiles.shape[1:]))


def read_checkpoint(path) -> dict:
    """The state of a train-ddpm checkpoint, read without running code from the file."""
    return loop.read_checkpoint(path, FORMAT, VERB)


def _bad_checkpoint(path, e: Exception) -> ConfigError:
    problem = " ".join(str(e).split())  # one line: load_state_dict's message spans several
    problem = problem if len(problem) <= 300 else problem[:297] + "..."
    return ConfigError(f"{VERB}: checkpoint {path} has the train-ddpm format but not its contents "
                       f"({type(e).__name__}: {problem}); it may come from another synthviews or diffusers version: "
                       "start a new run")


def stored_options(state: dict, path="the checkpoint") -> DDPMOptions:
    """The options stored in a checkpoint (``path``: named in the error if they are not valid options)."""
    try:
        options = dict(state["options"])
        for name in ("block_out_channels", "attention"):
            options[name] = tuple(options[name])
        return DDPMOptions(**options).validate()
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise _bad_checkpoint(path, e) from None


def load_checkpoint(trainer: Trainer, state: dict, path="the checkpoint") -> None:
    """``trainer.load_state_dict(state)``, a ConfigError naming ``path`` if the state does not fit the trainer."""
    try:
        trainer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise _bad_checkpoint(path, e) from None


# --- where an export may go ------------------------------------------------------

def _siblings(folder: Path) -> tuple[Path, Path]:
    """The temporary and the previous export beside ``folder`` (names this trainer owns)."""
    return folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    """Delete a leftover by its type: a link or file is unlinked (never followed), a folder removed whole."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _is_previous_export(folder: Path) -> bool:
    """Whether ``folder``'s model_index.json says this trainer wrote it."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    mark = index.get("_synthviews") if isinstance(index, dict) else None
    return isinstance(mark, dict) and mark.get("trainer") == FORMAT


def _within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_export(path, out=None) -> Path | None:
    """A folder an export may replace whole: new, empty or a previous export of this trainer; clear of the run.

    With ``out`` (the run directory): refused if it is ``out``, contains it or
    lies inside it (``out/pipeline`` itself excepted), all compared resolved,
    or if ``out`` lies in its ``.NAME.tmp`` / ``.NAME.old`` (deleted by an export).
    """
    if path is None:
        return None
    path = Path(path)
    if out is not None:
        where, run_dir = path.resolve(), Path(out).resolve()
        if _within(run_dir, where):
            raise ConfigError(f"{VERB}: export folder {path} is the run directory {out} or contains it; an export "
                              "replaces the whole folder: choose a folder outside the run")
        if _within(where, run_dir) and where != run_dir / EXPORT:
            raise ConfigError(f"{VERB}: export folder {path} lies inside the run directory {out}; "
                              f"the run already writes {Path(out) / EXPORT}: choose a folder outside the run")
        if any(_within(run_dir, s) for s in _siblings(where)):
            raise ConfigError(f"{VERB}: the run directory {out} is named like a temporary of export folder {path}; "
                              "choose another --out or --export")
    if _exists(path) and not path.is_dir():
        raise ConfigError(f"{VERB}: export folder {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not _is_previous_export(path):
        what = "is not an export of train-ddpm" if (path / "model_index.json").exists() else "holds no model_index.json"
        raise ConfigError(f"{VERB}: export folder {path} is not empty and {what} (model_index.json "
                          f"_synthviews.trainer {FORMAT}); choose a new or empty folder (an export replaces the "
                          "whole folder)")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{VERB}: export folder {path}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{VERB}: cannot create the parent of export folder {path}: {e.strerror or e}") from None
    return path


def _check_exports(export, out: Path) -> Path | None:
    """``export`` checked against the run in ``out``, and the run's own: it replaces out/pipeline whole too."""
    export = check_export(export, out)
    check_export(out / EXPORT)
    return export


def train(out, options: DDPMOptions | None = None, steps: int | None = None, resume=False, export=None,
          checkpoint_minutes: float = 5.0, max_minutes: float | None = None, log_every: int = 20,
          progress: bool = True, reals: torch.Tensor | None = None, sample_steps: int = 100) -> Trainer:
    """Train (or continue) a run in ``out`` up to ``steps`` total steps; returns the trainer.

    As :func:`synthviews.train.gan.train`: ``steps`` None is the run's own goal
    (DEFAULT_STEPS, or the checkpoint's); ``resume`` False, True or a checkpoint
    path (options then come from it); ``max_minutes`` stops with a checkpoint;
    ``export`` (a folder) is written once the run reaches ``steps``.
    ``sample_steps``: ancestral steps of the sample grid at each checkpoint.
    """
    loop.check_run_args(VERB, steps, checkpoint_minutes, log_every=log_every, max_minutes=max_minutes)
    diffusers_module()
    out, options, state, export = loop.open_run(VERB, FORMAT, out, options, resume, stored_options,
                                                lambda run: _check_exports(export, run))
    options = (options or DDPMOptions()).validate()
    if reals is None:
        from .digits import train_images

        reals = train_images(options.resolution, options.channels)
    trainer = Trainer(options, reals)
    if state is not None:
        load_checkpoint(trainer, state, loop.checkpoint_path(out, resume))
    if steps is None:
        steps = trainer.target_steps
    trainer.target_steps = steps

    def checkpoint():
        from .._util.images import png_bytes

        trainer.save(out / CHECKPOINT)
        trainer.export(out / EXPORT, out)
        if sample_steps:
            grid = trainer.sample_grid(steps=min(sample_steps, options.num_train_timesteps))
            (out / f"samples-{trainer.step:06d}.png").write_bytes(png_bytes(grid))

    loop.run(trainer, out, steps, checkpoint, verb=VERB, postfix={"loss": "loss"},
             checkpoint_minutes=checkpoint_minutes, max_minutes=max_minutes, log_every=log_every, progress=progress)
    if trainer.step >= steps and export is not None:
        trainer.export(export, out)
    return trainer
