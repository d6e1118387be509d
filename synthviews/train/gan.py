"""Train a small StyleGAN2 (the project's own :class:`Generator`) on scikit-learn's digits.

``synthviews train-gan --out runs/digits`` (or :func:`train`) trains on the
1,347 training images of the fixed split in :mod:`synthviews.train.digits`
(upsampled to 32x32, scaled to [-1, 1]) and writes to ``--out``:

- ``checkpoint.pt``: G, G_ema, D, both Adam states, step, image count, the
  training RNG state and the data order, as plain tensors/dicts
  (``torch.save``; read back by :func:`synthviews.models.weights.read_torch`).
  Written atomically every ``--checkpoint-minutes`` and at the end (the
  loop, checkpoint files and resume are shared with the DDPM trainer:
  :mod:`synthviews.train.loop`); ``--resume`` continues from it exactly (the next steps are bit-identical
  to an uninterrupted run on the same machine and thread count).
- ``G_ema.safetensors``: the EMA generator with its constructor config in
  the metadata (:func:`synthviews.models.stylegan2.checkpoint.save_safetensors`), loadable with
  ``load_model("stylegan2", path=...)``; ``--export`` writes a second copy.
- ``samples-NNNNNN.png``: an 8x8 grid of G_ema images for fixed z at every
  checkpoint; ``log.jsonl``: losses, D outputs and speed every few steps.

Choices (see :class:`TrainOptions` for the numbers):

- Generator: the project's StyleGAN2 ``Generator`` (config-f layout, skip
  architecture) at 32x32 with one channel (digits are grey; the rest of the
  package handles C = 1), z_dim = w_dim = 64, 4 mapping layers at the
  official lr multiplier 0.01, channel_base 1024 / channel_max 64 (64
  channels at 4..16 px, 32 at 32 px): 0.27 M parameters, 1.1 MB in float32.
  The digits carry only 8x8 pixels of information, so a narrow network suffices.
- The training forward is the model's own synthesis (:func:`synthesize`):
  random per-pixel noise drawn from the training generator, as StyleGAN2
  trains, and the unfused modulated convolution (activations scaled around
  one shared kernel, the faster form on CPU). The shipped G_ema is used with
  its constant noise buffers.
- Discriminator: :mod:`synthviews.train.discriminator`.
- Loss: non-saturating logistic loss, with lazy R1 on the real images every
  16 steps (gamma 0.1; Adam's lr and beta2 of D scaled by 16/17 for the lazy
  steps, as in StyleGAN2). No path-length regularisation.
- Style mixing with probability 0.9: each sample's W+ rows from a random
  cutoff on come from a second z. This is what makes the W+ layer groups
  meaningful for views (coarse rows: which digit and its layout; fine rows:
  stroke thickness and style).
- Adam(lr 0.0025, betas (0, 0.99), eps 1e-8), batch 32; G_ema with a
  half-life of 10k images, ramped up over the first images (half-life at
  most 5 % of the images seen); the mapping network's ``w_avg`` is tracked
  (beta 0.995) so truncation works on the result.
- Light augmentation against D overfitting the 1,347 images: with
  probability 0.3 a sample (real or fake, also inside R1) is shifted by up
  to 2 px (edge pixels repeated). Below p ~ 0.8 such augmentations do not
  leak into the generated images.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._util.settings import setting
from ..errors import ConfigError
from ..models.stylegan2.networks import Generator, generator_config
from . import loop
from .discriminator import Discriminator
from .loop import CHECKPOINT

VERB = "train-gan"
EXPORT = "G_ema.safetensors"
FORMAT = "synthviews-train-gan/1"
DEFAULT_STEPS = 8000
TRAINED_LICENSE = "mit"


@dataclass
class TrainOptions:
    """Everything that defines a training run (stored in the checkpoint); ``setting`` fields are CLI flags."""

    # generator
    z_dim: int = 64
    w_dim: int = 64
    mapping_layers: int = 4
    channel_base: int = 1024
    channel_max: int = 64
    img_resolution: int = 32
    img_channels: int = 1
    # discriminator: channels min(d_channel_base // res, d_channel_max) at each resolution
    d_channel_base: int = 512
    d_channel_max: int = 64
    mbstd_group: int = 4
    # optimisation
    batch: int = setting(32, "images per step")
    lr: float = setting(0.0025, "Adam learning rate of G and D")
    beta2: float = 0.99
    r1_gamma: float = setting(0.1, "R1 weight gamma")
    r1_interval: int = 16
    ema_kimg: float = setting(10.0, "G_ema half-life in thousands of images")
    ema_rampup: float = 0.05
    w_avg_beta: float = 0.995
    mixing_prob: float = setting(0.9, "style-mixing probability")
    augment_p: float = setting(0.3, "probability of a random 2 px shift of D's inputs")
    augment_shift: int = 2
    seed: int = setting(0, "seed of initialisation, data order and noise")

    def generator_config(self) -> dict:
        return generator_config({
            "z_dim": self.z_dim, "w_dim": self.w_dim, "img_resolution": self.img_resolution,
            "img_channels": self.img_channels,
            "mapping_kwargs": {"num_layers": self.mapping_layers},
            "synthesis_kwargs": {"channel_base": self.channel_base, "channel_max": self.channel_max},
        })

    def validate(self) -> "TrainOptions":
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConfigError(f"train-gan: {f.name} must be an integer, got {v!r}")
            if f.type == "float" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ConfigError(f"train-gan: {f.name} must be a number, got {v!r}")
        for name in ("batch", "r1_interval", "mbstd_group", "d_channel_base", "d_channel_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train-gan: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "ema_kimg"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train-gan: {name} must be > 0, got {getattr(self, name)}")
        for name in ("beta2", "mixing_prob", "augment_p", "w_avg_beta", "ema_rampup"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"train-gan: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.r1_gamma < 0 or self.augment_shift < 0:
            raise ConfigError("train-gan: r1_gamma and augment_shift must be >= 0")
        self.generator_config()  # raises ConfigError for a bad generator
        return self


PRESETS = {
    "digits": {},
    # For tests and smoke runs: seconds per hundred steps.
    "tiny": {"z_dim": 8, "w_dim": 8, "mapping_layers": 2, "channel_base": 128, "channel_max": 8,
             "d_channel_base": 128, "d_channel_max": 8, "batch": 4, "r1_interval": 2, "ema_kimg": 0.01},
}


def preset(name: str = "digits", **overrides) -> TrainOptions:
    return loop.preset_options(VERB, TrainOptions, PRESETS, name, overrides)


# --- generator forward and D's input augmentation --------------------------------

def synthesize(synthesis, ws: torch.Tensor, rng: torch.Generator | bool = False) -> torch.Tensor:
    """The training forward: ``synthesis`` itself with the unfused modulated conv, random noise from ``rng``.

    ``rng``: a torch.Generator (training), or False for the constant noise buffers.
    """
    if rng is False:
        return synthesis(ws, noise_mode="const", fused_modconv=False)
    return synthesis(ws, noise_mode="random", fused_modconv=False, generator=rng)


def augment(x: torch.Tensor, p: float, shift: int, rng: torch.Generator) -> torch.Tensor:
    """With probability p per sample, translate by an integer in [-shift, shift] on each axis (edges repeated)."""
    if p <= 0 or shift <= 0:
        return x
    n, _, h, w = x.shape
    on = (torch.rand(n, generator=rng) < p).to(torch.int64)
    dy = torch.randint(-shift, shift + 1, (n,), generator=rng) * on
    dx = torch.randint(-shift, shift + 1, (n,), generator=rng) * on
    iy = (torch.arange(h)[None] - dy[:, None]).clamp(0, h - 1)
    ix = (torch.arange(w)[None] - dx[:, None]).clamp(0, w - 1)
    out = x[torch.arange(n)[:, None, None], :, iy[:, :, None], ix[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2)


# --- the trainer -----------------------------------------------------------------

class Trainer(loop.RunState):
    """G, G_ema, D, optimisers, data order and RNG: one object whose state_dict() is a checkpoint."""

    def __init__(self, options: TrainOptions, reals: torch.Tensor):
        """``reals``: training images (N, C, R, R) in [0, 1]."""
        self.opts = o = options.validate()
        if reals.ndim != 4 or tuple(reals.shape[1:]) != (o.img_channels, o.img_resolution, o.img_resolution):
            raise ConfigError(f"train-gan: training images must be (N, {o.img_channels}, {o.img_resolution}, "
                              f"{o.img_resolution}), got {tuple(reals.shape)}")
        self.reals = reals.to(torch.float32) * 2 - 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(o.seed)
            self.G = Generator(**o.generator_config())
            self.D = Discriminator(o.img_resolution, o.img_channels, o.d_channel_base, o.d_channel_max, o.mbstd_group)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=o.lr, betas=(0.0, o.beta2), eps=1e-8)
        ratio = o.r1_interval / (o.r1_interval + 1) if o.r1_gamma > 0 else 1.0  # lazy R1
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=o.lr * ratio, betas=(0.0, o.beta2 ** ratio), eps=1e-8)
        self.start_run(o.seed + 1, DEFAULT_STEPS)

    # generator with style mixing
    def fakes(self, n: int) -> torch.Tensor:
        o, G = self.opts, self.G
        z = torch.randn(n, o.z_dim, generator=self.rng)
        z2 = torch.randn(n, o.z_dim, generator=self.rng)
        ws = G.mapping(torch.cat([z, z2]))
        ws, ws2 = ws[:n], ws[n:]
        cutoff = torch.randint(1, G.num_ws, (n,), generator=self.rng)
        cutoff = torch.where(torch.rand(n, generator=self.rng) < o.mixing_prob, cutoff, torch.full_like(cutoff, G.num_ws))
        later = torch.arange(G.num_ws)[None, :, None] >= cutoff[:, None, None]
        ws = torch.where(later, ws2, ws)
        if torch.is_grad_enabled():  # once per step (the G phase): track the mean W for truncation
            with torch.no_grad():
                G.mapping.w_avg.copy_(ws[:, 0].mean(0).lerp(G.mapping.w_avg, o.w_avg_beta))
        return synthesize(G.synthesis, ws, self.rng)

    def aug(self, x):
        return augment(x, self.opts.augment_p, self.opts.augment_shift, self.rng)

    def train_step(self) -> dict:
        """One step: G (non-saturating), D (logistic), R1 every r1_interval steps, then EMA."""
        o, G, D = self.opts, self.G, self.D
        G.train()
        reals = self.next_reals()
        n = len(reals)
        stats = {}

        G.requires_grad_(True)
        D.requires_grad_(False)
        logits = D(self.aug(self.fakes(n)))
        loss_g = F.softplus(-logits).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_G.step()
        stats["loss_G"] = loss_g.item()

        G.requires_grad_(False)
        D.requires_grad_(True)
        with torch.no_grad():
            fake = self.fakes(n)
        d_fake, d_real = D(self.aug(fake)), D(self.aug(reals))
        loss_d = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        self.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_D.step()
        stats.update(loss_D=loss_d.item(), D_real=d_real.mean().item(), D_fake=d_fake.mean().item(),
                     real_sign=d_real.sign().mean().item())

        if o.r1_gamma > 0 and self.step % o.r1_interval == 0:
            x = reals.detach().requires_grad_(True)
            grad, = torch.autograd.grad(D(self.aug(x)).sum(), x, create_graph=True)
            r1 = grad.square().sum(dim=[1, 2, 3]).mean()
            self.opt_D.zero_grad(set_to_none=True)
            (r1 * (o.r1_gamma / 2) * o.r1_interval).backward()
            self.opt_D.step()
            stats["R1"] = r1.item()
        D.requires_grad_(False)

        self.nimg += n
        self.step += 1
        half_life = o.ema_kimg * 1000
        if o.ema_rampup > 0:
            half_life = min(half_life, self.nimg * o.ema_rampup)
        beta = 0.5 ** (n / max(half_life, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(self.G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        return stats

    # checkpoints
    def state_dict(self) -> dict:
        return self.run_state(FORMAT, {"G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(),
                                       "D": self.D.state_dict(), "opt_G": self.opt_G.state_dict(),
                                       "opt_D": self.opt_D.state_dict()})

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.load_run_state(state, DEFAULT_STEPS)

    def export(self, path) -> None:
        """G_ema as .safetensors with its generator config and licence in the metadata.

        The licence is this project's (MIT), as for the shipped digits model: our code
        trained on scikit-learn's BSD-licensed digits, no NVIDIA weights involved.
        Loaded with ``--model stylegan2 --path``, the file is labelled with it.
        """
        from ..models.stylegan2.checkpoint import save_safetensors

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        save_safetensors(tmp, self.G_ema.state_dict(), self.G_ema.config, license=TRAINED_LICENSE)
        os.replace(tmp, path)

    @torch.no_grad()
    def sample_grid(self, rows: int = 8, cols: int = 8, seed: int = 0) -> np.ndarray:
        """(H, W, C) uint8 grid of G_ema images for fixed z (constant noise, as the shipped model)."""
        from .._util.images import grid, to_uint8

        z = torch.randn(rows * cols, self.opts.z_dim, generator=torch.Generator().manual_seed(seed))
        img = self.G_ema(z, noise_mode="const")
        tiles = to_uint8((img * 127.5 + 128).clamp(0, 255) / 255)  # the StyleGAN2 wrapper's postprocessing
        return grid(tiles.reshape(rows, cols, *tiles.shape[1:]))


def read_checkpoint(path) -> dict:
    """The state of a train-gan checkpoint, read without running code from the file."""
    return loop.read_checkpoint(path, FORMAT, VERB)


def _check_export(path) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"train-gan: export path {path} must end in .safetensors")
    if path.is_dir():
        raise ConfigError(f"train-gan: export path {path} is a directory")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"train-gan: export path {path}: {parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"train-gan: cannot create the directory of export path {path}: {e.strerror or e}") from None
    return path


def train(out, options: TrainOptions | None = None, steps: int | None = None, resume=False, export=None,
          checkpoint_minutes: float = 5.0, max_minutes: float | None = None, log_every: int = 20,
          progress: bool = True, reals: torch.Tensor | None = None) -> Trainer:
    """Train (or continue) a run in ``out`` up to ``steps`` total steps; returns the trainer.

    ``steps``: None means the run's own goal: DEFAULT_STEPS for a new run, the
    checkpoint's for a resumed one (a resume never silently changes it).

    ``resume``: False (new run; refuses an ``out`` that already has a
    checkpoint), True (``out/checkpoint.pt``) or a checkpoint path. A resumed
    run takes its options from the checkpoint; ``options`` must then be None
    or equal. ``max_minutes``: stop (with a checkpoint) after this much wall
    time in this call, to be resumed later. ``reals``: training images
    (default: the digits train split at the options' resolution).
    """
    loop.check_run_args(VERB, steps, checkpoint_minutes, log_every=log_every, max_minutes=max_minutes)
    out, options, state, export = loop.open_run(VERB, FORMAT, out, options, resume,
                                                lambda state, _: TrainOptions(**state["options"]),
                                                lambda _: _check_export(export))
    options = (options or TrainOptions()).validate()
    if reals is None:
        from .digits import train_images

        reals = train_images(options.img_resolution, options.img_channels)
    trainer = Trainer(options, reals)
    if state is not None:
        trainer.load_state_dict(state)
    if steps is None:
        steps = trainer.target_steps
    trainer.target_steps = steps
    loop.run(trainer, out, steps, lambda: _checkpoint(trainer, out), verb=VERB, postfix={"G": "loss_G", "D": "loss_D"},
             checkpoint_minutes=checkpoint_minutes, max_minutes=max_minutes, log_every=log_every, progress=progress)
    if trainer.step >= steps and export is not None:
        trainer.export(export)
    return trainer


def _checkpoint(trainer: Trainer, out: Path) -> None:
    from .._util.images import png_bytes

    trainer.save(out / CHECKPOINT)
    trainer.export(out / EXPORT)
    (out / f"samples-{trainer.step:06d}.png").write_bytes(png_bytes(trainer.sample_grid()))

