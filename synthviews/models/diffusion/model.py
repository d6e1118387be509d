"""``diffusion``: a diffusers UNet with a stochastic sampler, as an MLVGM whose latents are its noises.

A stochastic sampler (DDPM ancestral, DDIM with eta > 0, Euler ancestral) turns
the initial noise x_T and the fresh noise of every step into an image, so the
noises are the latent code, and contiguous step ranges are latent groups:

- ``init``: x_T, the whole trajectory's start (expected to fix layout and
  class more than any one step; not yet measured);
- ``steps{a}_{b}``: the fresh noise of sampling steps a..b-1 (0 = the first,
  noisiest step). Early ranges act while the image is mostly noise, so they
  can change coarse structure; late ranges act when the image is nearly
  made, so they can only change detail. That is the expectation from the
  noise level, not a measurement: what each range controls on a given model
  is measured by ``synthviews analyze`` (the delta that lowers the views'
  mutual information).

Code layout (flat, float32): ``[x_T (C*H*W) | eps of each noisy step (C*H*W
each, in sampling order) | class slot (1, only with class_label="sample")]``.
Steps that add no noise (the last step of DDPM and DDIM, Euler's last) have no
slot. The prior is N(0, 1) on every entry. A row holds (1 + noisy steps) * C*H*W
values (at most 2**26; digits-ddpm at 50 steps: 51,200, 200 KiB as float32).

compose: a group's code is its noise; a policy's noise n for it is added and
the sum rescaled per row, ``(eps + n) / sqrt(1 + mean(n^2))``, so the positive's
noise is again (about) unit-variance: the sampler then sees a plausible noise,
correlated with the anchor's by 1 / sqrt(1 + std^2), instead of an over-noisy one
that would only blur or speckle the image (``unit_noise=False`` adds n as it is).
A zero noise gives the anchor's code exactly. Delta is measured on the noise.

decode is a pure function of each code row: every random number is in the
code; the UNet is run on fixed chunks of ``unet_batch`` rows (the last one
padded), because a conv's rounding depends on the batch shape but, for a fixed
shape, not on a row's position or its neighbours (tested). That makes
:meth:`decode_views` exact: a positive equal to its anchor on every slot
before step s shares the anchor's trajectory up to s and is computed from
there, giving the same bits as decoding it alone. The fixed chunks have a cost:
a decode of fewer rows than ``unet_batch`` (e.g. one image) still pays a whole
chunk per step, so small calls are up to ``unet_batch`` times slower per row.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch
from torch.utils.checkpoint import checkpoint

from ..._util.checks import MAX_CODE, MAX_IMAGE_SIDE, brief, check_int, check_number, error
from ..._util.files import sha256_file
from ...errors import ConfigError
from ...latents import LatentGroup, TruncatedNormal
from .._registry import register_model
from ..base import MLVGM, parse_ranges
from .folder import (
    DECODERS,
    SCHEDULERS,
    UNETS,
    build_meta,
    check_folder,
    check_sizes,
    decoder_role,
    load_weights,
    read_component,
    read_model_index,
)
from .sampler import DEFAULT_SAMPLER, SAMPLERS, Plan

DEFAULT_STEPS = 50  # 50 UNet calls per image: CPU-affordable, and DDPM respaced to 50 steps still samples well
DEFAULT_GROUPS = 4
MAX_STEPS = 1000
MAX_UNET_BATCH = 4096
MAX_ATTENTION_TOKENS = 64 * 64  # pixels of a level with self-attention (LDM's largest: 32 x 32; DDPM's: 16 x 16)


def check_cost(cfg, where: str, height: int, width: int, noisy: int) -> None:
    """Refuse a config whose code rows or attention maps would be huge: the weights do not bound them
    (a conv's weights do not depend on the sample size), so a 57 kB UNet could ask for gigabytes per row."""
    values = (1 + noisy) * cfg.in_channels * height * width
    if values > MAX_CODE:
        fit = MAX_CODE // (cfg.in_channels * height * width) - 1
        raise error(f"{where}: sample_size {height} x {width} x {cfg.in_channels} channels with {noisy} noisy steps "
                    f"gives codes of {values:,} values a row, over the limit of {MAX_CODE:,}; "
                    + (f"use fewer steps (at most {fit} noisy ones)" if fit >= 1 else "the sample is too large"))
    attn_levels = [i for i, name in enumerate(cfg.down_block_types) if "Attn" in name]
    attn_levels += [len(cfg.up_block_types) - 1 - i for i, name in enumerate(cfg.up_block_types) if "Attn" in name]
    if cfg.get("add_attention", True):
        attn_levels.append(len(cfg.block_out_channels) - 1)  # the mid block
    tokens = max(((height >> i) * (width >> i) for i in attn_levels), default=0)
    if tokens > MAX_ATTENTION_TOKENS:
        raise error(f"{where}: self-attention over {tokens:,} pixels (sample_size {height} x {width}) is over the "
                    f"limit of {MAX_ATTENTION_TOKENS:,}: each attention map would take {tokens**2 * 4:,} bytes a row")


def parse_step_groups(groups, n: int) -> list[tuple[int, int]]:
    """``groups`` -> [start, end) ranges over the ``n`` noisy steps: a count, ``"steps"`` (one per step),
    ``"0_10,10_49"`` or ``[[0, 10], [10, 49]]``; the ranges must cover 0..n-1 without overlap."""
    if groups == "steps":
        return [(k, k + 1) for k in range(n)]
    return parse_ranges(groups, n, "diffusion", "noisy step", "a number of step ranges (e.g. 4), 'steps', a string "
                        "like '0_10,10_49' or a list of [start, end) pairs")


@register_model("diffusion")
class Diffusion(MLVGM):
    """A local diffusers UNet2DModel folder (pixel or latent space) sampled stochastically.

    Options:

    - ``path``: the folder (``unet/``, ``scheduler/``, optional ``vqvae/`` or ``vae/``
      decoder for latent diffusion, optional ``model_index.json``); safetensors only.
    - ``steps``: inference steps (default 50).
    - ``sampler``: ``ddpm``, ``ddim`` or ``euler_a``; default: the folder's scheduler
      class. ``eta``: DDIM's noise scale, in (0, 1] (default 1).
    - ``groups``: step ranges besides ``init`` (default 4, or one per noisy step if fewer; see
      :func:`parse_step_groups`).
    - ``class_label``: class-conditional UNets only: an integer (every sample that
      class) or ``"sample"`` (default: each anchor's class drawn from the code's
      class slot, which no group covers, so positives keep it).
    - ``unit_noise``: rescale perturbed noise to unit variance (default true).
    - ``unet_batch``: rows per UNet call (default 16). Part of the model id: it
      sets the rounding.
    """

    family = "diffusion"
    compile_refusal = ("the diffusion sampler runs the UNet once per step in a Python loop (and shares "
                       "trajectories between views); run it without compile")

    def __init__(self, path=None, steps: int = DEFAULT_STEPS, sampler: str | None = None, eta: float = 1.0,
                 groups=None, class_label=None, unit_noise: bool = True, unet_batch: int = 16,
                 device=None):
        super().__init__()
        steps = check_int(steps, "diffusion: steps", 1, MAX_STEPS)
        self.unet_batch = check_int(unet_batch, "diffusion: unet_batch", 1, MAX_UNET_BATCH)
        if sampler is not None and sampler not in SAMPLERS:
            raise ConfigError(f"diffusion: sampler must be one of {', '.join(SAMPLERS)}, got {brief(sampler)}")
        eta = check_number(eta, "diffusion: eta (DDIM noise scale)", 0.0, 1.0)
        if not isinstance(unit_noise, bool):
            raise ConfigError(f"diffusion: unit_noise must be true or false, got {brief(unit_noise)}")
        if path is None:
            raise ConfigError("diffusion: give path= (CLI: --path), a local diffusers model folder with "
                              "unet/ and scheduler/")
        folder = check_folder(path)

        index, license = read_model_index(folder)
        if license is not None:  # a folder synthviews' trainer exported says whose weights they are
            self.license = license
        unet_c = read_component(folder, "unet", UNETS)
        sched_c = read_component(folder, "scheduler", SCHEDULERS, "scheduler_config.json", weights=False)
        role = decoder_role(folder, index)
        dec_c = read_component(folder, role, DECODERS) if role else None
        for comp in (unet_c, dec_c):  # bounded, well-typed sizes before any arithmetic on them
            if comp is not None:
                check_sizes(comp)
        sched_where = f"diffusion scheduler config {sched_c.folder / 'scheduler_config.json'}"
        sampler = sampler or DEFAULT_SAMPLER[sched_c.class_name]
        if sampler == "ddim" and eta == 0:
            raise ConfigError("diffusion: DDIM with eta 0 adds no noise after x_T, so the steps would be no latent "
                              "groups; use eta > 0 (1 = DDPM-like), or sampler=ddpm")
        self.plan = Plan(sched_c.config, sampler, steps, eta, sched_where)

        time_embedding = unet_c.config.get("time_embedding_type", "positional")  # diffusers' default
        if time_embedding != "positional":
            raise error(f"diffusion unet config {unet_c.folder / 'config.json'}: time_embedding_type "
                        f"{brief(time_embedding)} is not supported (only positional: the sampler gives the UNet "
                        "the scheduler's timesteps, which learned and fourier embeddings read differently)")
        # sizes from the configs diffusers resolves (its defaults filled in), on meta networks: nothing allocated yet
        unet_meta = build_meta(unet_c)
        dec_meta = build_meta(dec_c) if dec_c is not None else None
        unet_cfg, unet_where = unet_meta.config, f"diffusion unet config {unet_c.folder / 'config.json'}"
        in_ch, out_ch = unet_cfg.in_channels, unet_cfg.out_channels
        if in_ch != out_ch:
            raise error(f"{unet_where}: out_channels {brief(out_ch)} differs from in_channels {brief(in_ch)}; "
                        "only UNets that predict noise, x0 or v of the same shape are supported (no learned variance)")
        size = unet_cfg.sample_size
        if size is None:
            raise error(f"{unet_where}: sample_size is missing; the sampler needs the UNet's input size")
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        levels = len(unet_cfg.block_out_channels) - 1
        if height % 2**levels or width % 2**levels:
            raise error(f"{unet_where}: sample_size {brief(size)} is not divisible by 2**{levels} (the UNet "
                        f"halves it {levels} times)")
        check_cost(unet_cfg, unet_where, height, width, len(self.plan.noisy))
        self.n_classes = unet_cfg.num_class_embeds
        if unet_cfg.class_embed_type is not None:
            raise error(f"{unet_where}: class_embed_type {brief(unet_cfg['class_embed_type'])} is not supported "
                        "(only num_class_embeds class labels)")
        if self.n_classes is None:
            if class_label is not None:
                raise ConfigError(f"diffusion: class_label is for class-conditional UNets; {unet_c.folder} "
                                  "has no num_class_embeds")
        else:
            class_label = "sample" if class_label is None else class_label
            if class_label != "sample":
                class_label = check_int(class_label, "diffusion: class_label (or 'sample')", 0, self.n_classes - 1)
        self.class_label = class_label

        if dec_c is None and in_ch not in (1, 3):
            raise error(f"{unet_where}: in_channels {brief(in_ch)} is not an image (1 or 3 channels); a "
                        "latent-diffusion UNet needs its decoder in the folder (vqvae/ or vae/)")
        self.decoder, self.scaling = None, 1.0
        if dec_c is not None:
            dec_cfg = dec_meta.config
            dec_where = f"diffusion {dec_c.role} config {dec_c.folder / 'config.json'}"
            latent = (dec_cfg.vq_embed_dim or dec_cfg.latent_channels) if dec_c.class_name == "VQModel" \
                else dec_cfg.latent_channels
            if latent != in_ch:
                raise error(f"{dec_where}: the decoder takes {latent}-channel latents but the UNet makes {in_ch}")
            if dec_c.class_name == "AutoencoderKL" and any(dec_cfg.get(k) is not None for k in
                                                           ("shift_factor", "latents_mean", "latents_std")):
                raise error(f"{dec_where}: shift_factor, latents_mean and latents_std must be null (latents "
                            "normalised by more than scaling_factor are not supported)")
            if dec_cfg.get("mid_block_add_attention", True) and height * width > MAX_ATTENTION_TOKENS:
                raise error(f"{dec_where}: its mid-block self-attention over the {height} x {width} latents is over "
                            f"the limit of {MAX_ATTENTION_TOKENS:,} pixels (sample_size of the UNet config)")
            self.scaling = check_number(dec_cfg.get("scaling_factor", 0.18215), f"{dec_where}: scaling_factor",
                                        1e-6, 1e6)
            factor = 2 ** (len(dec_cfg.block_out_channels) - 1)
            out_channels = dec_cfg.out_channels
            if out_channels not in (1, 3) or max(height, width) * factor > MAX_IMAGE_SIDE:
                raise error(f"{dec_where}: the decoder makes {out_channels} x {height * factor} x {width * factor} "
                            f"images; synthviews stores 1- or 3-channel images up to {MAX_IMAGE_SIDE} px a side")
            self.image_shape = (out_channels, height * factor, width * factor)
        else:
            self.image_shape = (in_ch, height, width)
        self.latent_shape = (in_ch, height, width)
        self.unet = load_weights(unet_c, unet_meta)
        if dec_c is not None:
            self.decoder = load_weights(dec_c, dec_meta)

        # latent layout
        self.pixels = in_ch * height * width
        noisy = self.plan.noisy
        self._slot = {step: 1 + k for k, step in enumerate(noisy)}  # step -> slot (0 is x_T)
        groups = min(DEFAULT_GROUPS, len(noisy)) if groups is None else groups  # fewer steps than 4: one range each
        self.ranges = parse_step_groups(groups, len(noisy)) if noisy else []
        self._groups = {"init": (0, 1)}
        described = [LatentGroup("init", self.pixels, "x_T", "the initial noise: the whole trajectory's start")]
        for a, b in self.ranges:
            name = f"steps{a}_{b}"
            self._groups[name] = (1 + a, 1 + b)
            first, last = noisy[a], noisy[b - 1]
            t0, t1 = self.plan.steps[first].t, self.plan.steps[last].t
            described.append(LatentGroup(name, (b - a) * self.pixels, f"eps of steps {first}-{last}",
                                         f"fresh noise of sampling steps {first}-{last} (t {t0:g} to {t1:g}; "
                                         f"{'the first' if a == 0 else 'a later'} range)"))
        self.groups = tuple(described)
        self.n_slots = 1 + len(noisy)
        self.latent_dim = self.n_slots * self.pixels + (1 if self.class_label == "sample" else 0)
        self.prior = TruncatedNormal(0.0, 1.0, None)
        self.unit_noise = unit_noise

        files = [unet_c.folder / "config.json", unet_c.weights, sched_c.folder / "scheduler_config.json"]
        if dec_c is not None:
            files += [dec_c.folder / "config.json", dec_c.weights]
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(folder)}|{sha256_file(f)}\n".encode())
        self.source = {"path": str(folder), "sha256": h.hexdigest()}
        self.config = {
            "unet": {k: v for k, v in unet_c.config.items() if k != "_diffusers_version"},
            "scheduler": {k: v for k, v in sched_c.config.items() if k != "_diffusers_version"},
            "decoder": None if dec_c is None else {k: v for k, v in dec_c.config.items() if k != "_diffusers_version"},
            "sampler": sampler, "steps": steps, "eta": eta if sampler == "ddim" else None,
            "groups": [list(r) for r in self.ranges], "class_label": self.class_label,
            "unit_noise": unit_noise, "unet_batch": self.unet_batch,
        }
        if device is not None:
            self.to(device)

    # --- latent code ---------------------------------------------------------------

    def _span(self, name: str) -> slice:
        if name not in self._groups:
            raise KeyError(f"unknown diffusion latent group {name!r}; groups: {', '.join(self._groups)}")
        a, b = self._groups[name]
        return slice(a * self.pixels, b * self.pixels)

    def compose(self, anchor: torch.Tensor, noise: Mapping[str, torch.Tensor]) -> torch.Tensor:
        code = anchor.to(self.device, torch.float32).clone()
        for name, n in noise.items():
            span = self._span(name)
            n = n.to(code)
            mixed = code[:, span] + n
            if self.unit_noise:
                mixed = mixed / torch.sqrt(1 + n.pow(2).mean(dim=1, keepdim=True))
            code[:, span] = mixed
        return code

    def group_code(self, code: torch.Tensor, name: str) -> torch.Tensor:
        return code[:, self._span(name)]

    def _noise(self, code: torch.Tensor, slot: int) -> torch.Tensor:
        return code[:, slot * self.pixels:(slot + 1) * self.pixels].reshape(-1, *self.latent_shape)

    def _classes(self, code: torch.Tensor) -> torch.Tensor | None:
        if self.n_classes is None:
            return None
        if self.class_label != "sample":
            return torch.full((code.shape[0],), self.class_label, dtype=torch.long, device=code.device)
        u = torch.special.ndtr(code[:, -1].double())  # N(0, 1) -> uniform (0, 1) -> a class, per row
        return (u * self.n_classes).long().clamp_(0, self.n_classes - 1)

    # --- sampling ------------------------------------------------------------------

    def _unet(self, x: torch.Tensor, i: int, classes: torch.Tensor | None) -> torch.Tensor:
        """UNet output for rows ``x`` at step ``i``, always in chunks of exactly ``unet_batch`` rows."""
        step, m, rows = self.plan.steps[i], self.unet_batch, x.shape[0]
        xin = x * step.in_scale if step.in_scale != 1.0 else x
        outs = []
        for start in range(0, rows, m):
            chunk = xin[start:start + m]
            cls = None if classes is None else classes[start:start + m]
            pad = m - chunk.shape[0]
            if pad:  # repeat the last row: the padding's values never reach the real rows
                chunk = torch.cat([chunk, chunk[-1:].expand(pad, *chunk.shape[1:])])
                cls = None if cls is None else torch.cat([cls, cls[-1:].expand(pad)])
            t = torch.full((m,), step.t, dtype=torch.float32, device=x.device)
            if torch.is_grad_enabled() and chunk.requires_grad:  # e.g. training a walker through the sampler
                # keep no activations of the UNet calls (recomputed in backward): ~2 GB an image at 50 steps otherwise
                out = checkpoint(self._unet_call, chunk, t, cls, use_reentrant=False)
            else:
                out = self._unet_call(chunk, t, cls)
            outs.append(out[:m - pad].float())
        return torch.cat(outs) if len(outs) != 1 else outs[0]

    def _unet_call(self, chunk: torch.Tensor, t: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        return self.unet(chunk, t, class_labels=cls).sample

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """Final state -> image in [0, 1]; a latent goes through the decoder in fixed chunks, as the UNet does."""
        if self.decoder is None:
            return ((x.clamp(-1, 1) + 1) / 2).clamp(0, 1)
        m, outs = self.unet_batch, []
        z = x / self.scaling
        for start in range(0, z.shape[0], m):
            chunk = z[start:start + m]
            pad = m - chunk.shape[0]
            if pad:
                chunk = torch.cat([chunk, chunk[-1:].expand(pad, *chunk.shape[1:])])
            outs.append(self.decoder.decode(chunk).sample[:m - pad].float())
        img = torch.cat(outs) if len(outs) != 1 else outs[0]
        return ((img.clamp(-1, 1) + 1) / 2).clamp(0, 1)

    def _check_code(self, code: torch.Tensor) -> torch.Tensor:
        if code.ndim != 2 or code.shape[1] != self.latent_dim:
            raise ValueError(f"diffusion expects codes of shape (B, {self.latent_dim}), got {tuple(code.shape)}")
        return code.to(self.device, torch.float32)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Every row sampled from its own x_T with its own step noises."""
        code = self._check_code(code)
        if code.shape[0] == 0:
            return torch.empty(0, *self.image_shape, device=code.device)
        return self._sample(code, torch.zeros(code.shape[0], dtype=torch.long, device=code.device),
                            torch.arange(code.shape[0], device=code.device))

    def decode_views(self, codes: torch.Tensor) -> torch.Tensor:
        """(S, 1+K, D) -> (S, 1+K, C, H, W), sharing each anchor's trajectory with the positives that
        follow it: positive rows start computing at the step after the first slot where they differ."""
        s, v = codes.shape[:2]
        flat = self._check_code(codes.flatten(0, 1))
        if flat.shape[0] == 0:
            return torch.empty(s, v, *self.image_shape, device=flat.device)
        rows = flat.view(s, v, -1)
        # own_from[row] = first step the row needs its own UNet call for; leader[row] = the row it follows until then
        same = torch.stack([(rows[:, :, k * self.pixels:(k + 1) * self.pixels] == rows[:, :1, k * self.pixels:
                            (k + 1) * self.pixels]).all(dim=2) for k in range(self.n_slots)], dim=2)  # (S, V, slots)
        if self.class_label == "sample":
            same[:, :, 0] &= rows[:, :, -1] == rows[:, :1, -1]  # another class: a trajectory of its own
        n = len(self.plan.steps)
        slot_step = torch.tensor([-1] + self.plan.noisy, device=flat.device)  # slot -> the step whose noise it is
        differs = ~same
        first = torch.where(differs.any(dim=2), differs.int().argmax(dim=2), torch.full_like(differs[..., 0], -1,
                            dtype=torch.long))
        own_from = torch.where(first >= 0, slot_step[first.clamp(min=0)] + 1, torch.full_like(first, n))
        own_from[:, 0] = 0  # anchors
        leader = (torch.arange(s, device=flat.device) * v)[:, None].expand(s, v)
        return self._sample(flat, own_from.reshape(-1), leader.reshape(-1)).view(s, v, *self.image_shape)

    def _sample(self, code: torch.Tensor, own_from: torch.Tensor, leader: torch.Tensor) -> torch.Tensor:
        """Run the sampler for all rows; a row with ``own_from[r] > i`` takes step i's noise-free part from
        ``leader[r]`` (whose state it equals so far) instead of calling the UNet itself."""
        b = code.shape[0]
        classes = self._classes(code)
        x = self._noise(code, 0) * self.plan.init_scale if self.plan.init_scale != 1.0 else self._noise(code, 0)
        own_from, leader = own_from.tolist(), leader.tolist()
        everyone = all(f == 0 for f in own_from)
        for i, step in enumerate(self.plan.steps):
            if everyone:
                det = self.plan.det(i, x, self._unet(x, i, classes))
            else:
                active = [r for r in range(b) if own_from[r] <= i]
                pos = {r: k for k, r in enumerate(active)}
                idx = torch.tensor(active, device=x.device)
                xa = x[idx]
                det_a = self.plan.det(i, xa, self._unet(xa, i, None if classes is None else classes[idx]))
                det = det_a[torch.tensor([pos[r] if own_from[r] <= i else pos[leader[r]] for r in range(b)],
                                         device=x.device)]
            if step.noise_coef > 0:
                x = det + self._noise(code, self._slot[i]) * step.noise_coef
            else:
                x = det
        return self._finish(x)

    def extra_repr(self) -> str:
        return (f"sampler={self.plan.sampler}, steps={len(self.plan.steps)}, groups={list(self._groups)}, "
                f"image={self.image_shape}")


__all__ = ["Diffusion", "parse_step_groups"]
