"""Train a small StyleGAN2 (the project's own :class:`Generator`) on scikit-learn's digits.

``synthviews train-gan --out runs/digits`` (or :func:`train`) trains on the
1,347 training images of the fixed split in :mod:`synthviews.train.digits`
(upsampled to 32x32, scaled to [-1, 1]) and writes to ``--out``:

- ``checkpoint.pt``: G, G_ema, D, both Adam states, step, image count, the
  training RNG state and the data order, as plain tensors/dicts
  (``torch.save``; read back with ``torch.load(weights_only=True)``).
  Written atomically every ``--checkpoint-minutes`` and at the end;
  ``--resume`` continues from it exactly (the next steps are bit-identical
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
  Twice the channels (0.95 M) trained twice slower per step on the shared
  2-core machine; the digits carry only 8x8 pixels of information. Trained with random per-pixel noise, as StyleGAN2 does; the
  shipped G_ema is used with its constant noise buffers.
- The training forward pass (:func:`synthesize`) is the synthesis network's
  own unfused modulated convolution (activations scaled around one shared
  kernel, demodulation from an (N, I) x (I, O) product; on CPU about 20x
  faster than one grouped convolution with per-sample kernels), with random
  noise drawn from the training generator. Tests check it equals the
  inference path and that both modulated-conv forms agree.
- Discriminator: a small residual conv net of our own (1x1 from-image conv,
  three residual blocks 32 -> 4 px with average-pool downsampling, minibatch
  standard deviation, a 3x3 conv and two dense layers), equalised learning
  rate and leaky ReLU * sqrt(2) like the generator, so one learning rate
  suits both.
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
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.stylegan2.networks import Generator, _bias_act, generator_config, modulated_conv2d, upsample2x

SQRT2 = math.sqrt(2.0)
CHECKPOINT = "checkpoint.pt"
EXPORT = "G_ema.safetensors"
FORMAT = "synthviews-train-gan/1"
DEFAULT_STEPS = 8000
TRAINED_LICENSE = "mit"


@dataclass
class TrainOptions:
    """Everything that defines a training run (stored in the checkpoint)."""

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
    batch: int = 32
    lr: float = 0.0025
    beta2: float = 0.99
    r1_gamma: float = 0.1
    r1_interval: int = 16
    ema_kimg: float = 10.0
    ema_rampup: float = 0.05
    w_avg_beta: float = 0.995
    mixing_prob: float = 0.9
    augment_p: float = 0.3
    augment_shift: int = 2
    seed: int = 0

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
    if name not in PRESETS:
        raise ConfigError(f"train-gan: unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"train-gan: unknown option(s) {', '.join(unknown)}")
    return TrainOptions(**{**PRESETS[name], **overrides}).validate()


# --- discriminator -------------------------------------------------------------

class EqConv2d(nn.Module):
    """Conv with equalised learning rate (weights ~ N(0, 1), scaled by 1/sqrt(fan_in) at run time)."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1 / math.sqrt(cin * kernel * kernel)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)


class EqLinear(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.gain = 1 / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.gain, self.bias)


def _lrelu(x):
    return F.leaky_relu(x, 0.2) * SQRT2


class DBlock(nn.Module):
    """Residual downsampling block: (conv3x3, conv3x3, avgpool) + (avgpool, conv1x1), scaled by 1/sqrt(2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = EqConv2d(cin, cin, 3)
        self.conv1 = EqConv2d(cin, cout, 3)
        self.skip = EqConv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        y = F.avg_pool2d(_lrelu(self.conv1(_lrelu(self.conv0(x)))), 2)
        return (y + self.skip(F.avg_pool2d(x, 2))) / SQRT2


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append one channel: the mean std of the features over groups of ``group`` samples."""
    n, c, h, w = x.shape
    g = min(group, n)
    while n % g:
        g -= 1
    y = x.reshape(g, n // g, c, h, w)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])  # (n // g,)
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # sample i belongs to group column i % (n // g)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """image (N, C, R, R) in [-1, 1] -> logits (N,)."""

    def __init__(self, img_resolution: int = 32, img_channels: int = 1, channel_base: int = 1024,
                 channel_max: int = 128, mbstd_group: int = 4):
        super().__init__()
        ch = lambda res: min(channel_base // res, channel_max)  # noqa: E731
        self.mbstd_group = mbstd_group
        self.from_img = EqConv2d(img_channels, ch(img_resolution), 1)
        blocks, res = [], img_resolution
        while res > 4:
            blocks.append(DBlock(ch(res), ch(res // 2)))
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        c = ch(4)
        self.conv = EqConv2d(c + 1, c, 3)
        self.fc = EqLinear(c * 16, c)
        self.out = EqLinear(c, 1)

    def forward(self, img):
        x = _lrelu(self.from_img(img))
        for block in self.blocks:
            x = block(x)
        x = _lrelu(self.conv(minibatch_stddev(x, self.mbstd_group)))
        return self.out(_lrelu(self.fc(x.flatten(1)))).squeeze(1)


# --- generator training forward ----------------------------------------------

def _layer(layer, x, w, rng):
    """SynthesisLayer maths with activation modulation (no per-sample kernels) and random noise."""
    x = modulated_conv2d(x, layer.weight, layer.affine(w), demodulate=True, up=layer.up, f=layer.resample_filter,
                         fused=False)
    if layer.use_noise:
        noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], generator=rng, device=x.device) if rng is not False \
            else layer.noise_const[None, None]
        x = x + noise * layer.noise_strength
    return _bias_act(x, layer.bias, lrelu=True, clamp=layer.conv_clamp)


def _torgb(torgb, x, w):
    x = modulated_conv2d(x, torgb.weight, torgb.affine(w) * torgb.weight_gain, demodulate=False, fused=False)
    return _bias_act(x, torgb.bias, lrelu=False, clamp=torgb.conv_clamp)


def synthesize(synthesis, ws: torch.Tensor, rng: torch.Generator | bool = False) -> torch.Tensor:
    """Image (N, C, R, R) of ``synthesis`` for ws (N, num_ws, w_dim), differentiable.

    ``rng``: a torch.Generator for random noise (training), or False for the
    constant noise buffers (then equal to ``synthesis(ws, noise_mode="const")``).
    """
    x = img = None
    row = 0
    for block in synthesis.blocks():
        w = ws[:, row:row + block.num_conv + 1]
        if block.resolution == 4:
            x = _layer(block.conv1, block.const[None].expand(ws.shape[0], -1, -1, -1), w[:, 0], rng)
        else:
            x = _layer(block.conv1, _layer(block.conv0, x, w[:, 0], rng), w[:, 1], rng)
        y = _torgb(block.torgb, x, w[:, -1])
        img = y if img is None else upsample2x(img, block.resample_filter) + y
        row += block.num_conv
    return img


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

class Trainer:
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
        self.rng = torch.Generator().manual_seed(o.seed + 1)
        self.step, self.nimg, self.elapsed = 0, 0, 0.0
        self.target_steps = DEFAULT_STEPS  # the run's goal, kept in checkpoints so --resume needs no --steps
        self.perm = torch.randperm(len(self.reals), generator=self.rng)
        self.pos = 0

    # data
    def next_reals(self) -> torch.Tensor:
        b = self.opts.batch
        if self.pos + b > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.reals), generator=self.rng), 0
        idx = self.perm[self.pos:self.pos + b]
        self.pos += b
        return self.reals[idx]

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
        return {"format": FORMAT, "options": asdict(self.opts), "step": self.step, "target_steps": self.target_steps,
                "nimg": self.nimg,
                "elapsed": self.elapsed, "G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(),
                "D": self.D.state_dict(), "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
                "rng": self.rng.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.rng.set_state(state["rng"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])
        self.step, self.nimg, self.elapsed = int(state["step"]), int(state["nimg"]), float(state["elapsed"])
        self.target_steps = int(state.get("target_steps", DEFAULT_STEPS))

    def save(self, path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

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
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"train-gan: checkpoint {path} does not exist; nothing to resume "
                          "(leave out --resume to start a new run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling/zip errors: damaged or foreign file
        raise ConfigError(f"train-gan: {path} is not a readable training checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"train-gan: {path} is not a train-gan checkpoint (format {FORMAT})")
    return state


def _prepare_out(out) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train-gan: output {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"train-gan: cannot create output directory {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"train-gan: output directory {out} is not writable")
    return out


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
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ConfigError(f"train-gan: steps must be an integer >= 0, got {steps!r}")
    if not checkpoint_minutes > 0:
        raise ConfigError(f"train-gan: checkpoint_minutes must be > 0, got {checkpoint_minutes!r}")
    out = Path(out)
    ckpt_path = None
    state = None
    if resume:
        ckpt_path = out / CHECKPOINT if resume is True else Path(resume)
        state = read_checkpoint(ckpt_path)
        stored = TrainOptions(**state["options"])
        if options is not None and options != stored:
            diff = [f.name for f in fields(TrainOptions) if getattr(options, f.name) != getattr(stored, f.name)]
            raise ConfigError(f"train-gan: options differ from the checkpoint's ({', '.join(diff)}); "
                              "a resumed run keeps its options, leave them out")
        options = stored
    export = _check_export(export)
    out = _prepare_out(out)
    if not resume and (out / CHECKPOINT).exists():
        raise ConfigError(f"train-gan: {out} already holds a checkpoint; pass --resume to continue it "
                          "or choose another --out")
    options = (options or TrainOptions()).validate()
    if reals is None:
        from .digits import load_digits_split

        reals, _ = load_digits_split("train", options.img_resolution)
        if options.img_channels != 1:
            reals = reals.expand(-1, options.img_channels, -1, -1)
    trainer = Trainer(options, reals)
    if state is not None:
        trainer.load_state_dict(state)
    if steps is None:
        steps = trainer.target_steps
    trainer.target_steps = steps
    _run(trainer, out, steps, checkpoint_minutes, max_minutes, log_every, progress)
    if trainer.step >= steps and export is not None:
        trainer.export(export)
    return trainer


def _checkpoint(trainer: Trainer, out: Path) -> None:
    from .._util.images import png_bytes

    trainer.save(out / CHECKPOINT)
    trainer.export(out / EXPORT)
    (out / f"samples-{trainer.step:06d}.png").write_bytes(png_bytes(trainer.sample_grid()))


def _run(trainer: Trainer, out: Path, steps: int, checkpoint_minutes: float, max_minutes, log_every: int,
         progress: bool) -> None:
    from tqdm import tqdm

    start = last_ckpt = time.monotonic()
    base_elapsed = trainer.elapsed
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    window_t, window_step = time.monotonic(), trainer.step
    with tqdm(total=steps, initial=min(trainer.step, steps), disable=not progress, unit="step",
              dynamic_ncols=True, desc="train-gan") as bar, open(out / "log.jsonl", "a") as log:
        if trainer.step >= steps:
            return
        while trainer.step < steps:
            stats = trainer.train_step()
            for k, v in stats.items():
                if not math.isfinite(v):
                    trainer.save(out / "checkpoint-nonfinite.pt")
                    raise RuntimeError(f"train-gan: {k} became {v} at step {trainer.step}; "
                                       f"the state is in {out / 'checkpoint-nonfinite.pt'}")
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            now = time.monotonic()
            trainer.elapsed = base_elapsed + now - start
            bar.update(1)
            if trainer.step % log_every == 0 or trainer.step == steps:
                means = {k: sums[k] / counts[k] for k in sums}
                rate = (trainer.step - window_step) / max(now - window_t, 1e-9)
                log.write(json.dumps({"step": trainer.step, "kimg": trainer.nimg / 1000,
                                      "elapsed_s": round(trainer.elapsed, 1), "steps_per_s": round(rate, 3),
                                      **{k: round(v, 5) for k, v in means.items()}}) + "\n")
                log.flush()
                bar.set_postfix(G=f"{means['loss_G']:.3f}", D=f"{means['loss_D']:.3f}", refresh=False)
                sums.clear(), counts.clear()
                window_t, window_step = now, trainer.step
            out_of_time = max_minutes is not None and now - start >= max_minutes * 60
            if now - last_ckpt >= checkpoint_minutes * 60 or trainer.step == steps or out_of_time:
                _checkpoint(trainer, out)
                last_ckpt = time.monotonic()
            if out_of_time:
                break


# --- command line ----------------------------------------------------------------

_CLI_OPTIONS = {  # flag -> (TrainOptions field, type, help)
    "--batch": ("batch", int, "images per step (default 32)"),
    "--lr": ("lr", float, "Adam learning rate of G and D (default 0.0025)"),
    "--r1-gamma": ("r1_gamma", float, "R1 weight gamma (default 0.1)"),
    "--mixing-prob": ("mixing_prob", float, "style-mixing probability (default 0.9)"),
    "--augment-p": ("augment_p", float, "probability of a random 2 px shift of D's inputs (default 0.3)"),
    "--ema-kimg": ("ema_kimg", float, "G_ema half-life in thousands of images (default 10)"),
    "--seed": ("seed", int, "seed of initialisation, data order and noise (default 0)"),
}


def add_train_gan_command(verbs):
    """Add ``synthviews train-gan`` to the CLI's subparsers."""
    p = verbs.add_parser("train-gan", help="train a small StyleGAN2 on scikit-learn's digits (CPU, ~1 hour)",
                         description="Train a small StyleGAN2 (32x32, 1 channel) on the training split of "
                                     "scikit-learn's digits. Writes OUT/checkpoint.pt every few minutes, "
                                     "OUT/G_ema.safetensors (load it with --model stylegan2 --path ...), sample "
                                     "grids and OUT/log.jsonl. --resume continues exactly where it stopped. "
                                     "Needs scikit-learn.")
    p.add_argument("--out", default="runs/digits_gan", help="run directory (default: runs/digits_gan)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"total training steps (default: {DEFAULT_STEPS}; --resume keeps the checkpoint's goal)")
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS),
                   help="option preset: digits (the shipped model) or tiny (smoke tests)")
    for flag, (_, typ, text) in _CLI_OPTIONS.items():
        p.add_argument(flag, type=typ, default=None, help=text)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue OUT/checkpoint.pt (or the given checkpoint); options come from it")
    p.add_argument("--export", metavar="PATH.safetensors", help="also write the final G_ema here")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="minutes between checkpoints (default: 5)")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this many minutes (resume later)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run=_cmd_train_gan)
    return p


def _cmd_train_gan(args) -> int:
    given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in _CLI_OPTIONS.items()}
    given = {k: v for k, v in given.items() if v is not None}
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.resume:
        ckpt = Path(args.out) / CHECKPOINT if args.resume is True else Path(args.resume)
        stored = TrainOptions(**read_checkpoint(ckpt)["options"])
        conflicts = [f"{k}={v!r} (checkpoint: {getattr(stored, k)!r})" for k, v in given.items()
                     if getattr(stored, k) != v]
        if conflicts:
            raise ConfigError(f"a resumed run keeps its options; conflicting: {', '.join(conflicts)}")
        options = None
    else:
        options = preset(args.preset, **given)
    trainer = train(args.out, options, steps=args.steps, resume=args.resume, export=args.export,
                    checkpoint_minutes=args.checkpoint_minutes, max_minutes=args.max_minutes,
                    progress=not args.no_progress)
    where = Path(args.out) / EXPORT
    if trainer.step < trainer.target_steps:
        print(f"stopped at step {trainer.step} of {trainer.target_steps}; continue with --resume")
    else:
        print(f"trained {trainer.step} steps ({trainer.nimg / 1000:.1f} kimg, {trainer.elapsed / 60:.1f} min); "
              f"G_ema in {where}" + (f" and {args.export}" if args.export else ""))
    print(f"  preview: synthviews preview --model stylegan2 --path {args.export or where} --out preview.png")
    return 0
