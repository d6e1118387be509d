"""``vdvae``: the VDVAE decoder (openai/vdvae) as an MLVGM: its latents form a coarse-to-fine hierarchy.

The code (and the anchor) is the flat concatenation of every decoder block's
standard-normal eps, coarse to fine, followed (``output="sample"``) by the
``pixels`` part: H*W*(M + 3) normals that drive the output sampling. Block i
turns its eps into its latent as the original samples,
``z = prior mean + t_i * prior std * eps`` (prior from the state of the
blocks before it), so a group's code is its eps and delta is measured on eps.

The output head is a discretised mixture of M logistics per pixel. With
``output="sample"`` (default) it is sampled as the original does, with the
uniforms taken from the code: ``u = 1e-5 + (1 - 2e-5) * Phi(x)`` (Phi the
normal CDF), first M per pixel for the Gumbel-max component choice, then 3
for the logistic noise of R, G, B; so a view's bytes depend only on its code,
and ``pixels`` is a group a policy can perturb (or fix). ``output="mean"``
is a deterministic read-out instead: per pixel the component with the largest
mixture logit, its mean (the logistic's median), colour coupling and clipping
as in sampling; there is no ``pixels`` group then.

Images are the original's 8-bit levels, ``floor((x + 1) * 127.5)`` clipped to
0..255, divided by 255: the uint8 the writer stores is exactly the original's.

Weights licence: openai/vdvae (code and released checkpoints) is MIT, so data
made from them is reported as ``mit``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import torch

from ..._util.checks import brief, error, finite
from ..._util.device import resolve_device
from ...errors import ConfigError
from ...latents import LatentGroup, TruncatedNormal
from .._registry import register_model
from ..base import MLVGM, ChunkedLatents, parse_ranges
from ..weights import first_names
from .checkpoint import WHAT, check_state, generator_state, infer_release, load_config, read_checkpoint
from .networks import (
    LICENSE_URL,
    RELEASES,
    UNIFORM_EPS,
    Decoder,
    block_specs,
    dmol_mean,
    dmol_sample,
    uint8_levels,
)

OUTPUTS = ("sample", "mean")
MAX_TEMPERATURE = 100.0
PIXELS = "pixels"


def parse_groups(groups, specs) -> list[tuple[str, int, int]]:
    """(name, first block, end block) per latent group from ``groups``:

    ``"resolutions"`` (default: one group per resolution, named ``res{r}``), ``"blocks"``
    (one per block, ``block{i}``), a number n (n contiguous block ranges, as equal as
    possible) or explicit ranges ``"0_2,2_7,..."`` / ``[[0, 2], [2, 7], ...]`` that cover
    every block in order (named ``blocks{start}_{end}``).
    """
    n = len(specs)
    if groups == "resolutions":
        out, start = [], 0
        for i in range(1, n + 1):
            if i == n or specs[i].res != specs[start].res:
                out.append((f"res{specs[start].res}", start, i))
                start = i
        return out
    if groups == "blocks":
        return [(f"block{i}", i, i + 1) for i in range(n)]
    ranges = parse_ranges(groups, n, "VDVAE", "block", "'resolutions', 'blocks', a number of groups, a string like "
                          "'0_2,2_7,...' or a list of [start, end) block pairs", in_order=True)
    return [(f"blocks{s}_{e}", s, e) for s, e in ranges]


def parse_temperature(temperature, groups: list[tuple[str, int, int]], n: int) -> list[float]:
    """One temperature per block from a number, a per-block list or a {group name: t} mapping (others 1)."""
    def number(t, where):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not finite(t) or not 0 <= t <= MAX_TEMPERATURE:
            raise ConfigError(f"VDVAE temperature{where} must be a number in [0, {MAX_TEMPERATURE:g}], got {brief(t)}")
        return float(t)

    if isinstance(temperature, Mapping):
        names = {g[0]: g for g in groups}
        unknown = [k for k in temperature if k not in names]
        if unknown:
            raise error(f"VDVAE temperature: unknown group(s) {first_names(unknown, limit=40)}; groups: {', '.join(names)}")
        out = [1.0] * n
        for name, t in temperature.items():
            _, s, e = names[name]
            out[s:e] = [number(t, f" of group {name}")] * (e - s)
        return out
    if isinstance(temperature, (list, tuple)):
        if len(temperature) != n:
            raise ConfigError(f"VDVAE temperature: a list needs one value per latent block ({n}), "
                              f"got {len(temperature)}")
        return [number(t, f"[{i}]") for i, t in enumerate(temperature)]
    return [number(temperature, "")] * n


@register_model("vdvae")
class VDVAE(ChunkedLatents, MLVGM):
    """VDVAE decoder, RGB, with one latent group per resolution by default.

    Options:

    - ``path``: an official ``*-model-ema.th`` (or ``*-model.th``, ``module.`` keys) file, or
      any torch/safetensors state dict with those names; read without running code.
    - ``config``: a built-in release (``imagenet32``, ``imagenet64``, ``ffhq256``,
      ``ffhq1024``, ``cifar10``), a JSON/YAML file of the original hparams (top level or
      under ``hparams``), or a mapping. With ``path`` and no config, the release whose
      shapes the file has is used.
    - ``weights``: an in-memory state dict instead of ``path``; ``random_weights=True``
      (seeded by ``seed``) for tests and benchmarks.
    - ``groups``: ``"resolutions"`` (default), ``"blocks"``, a number or block ranges
      (see :func:`parse_groups`).
    - ``temperature``: prior std scale, a number (default 1), one per block, or
      ``{group: t}``.
    - ``output``: ``"sample"`` (default; the ``pixels`` group) or ``"mean"`` (see the module text).
    - ``device``: where the model runs (None: the CPU); not part of the model id.
    """

    family = "vdvae"
    license = "mit"
    license_link = LICENSE_URL

    def __init__(self, path: str | Path | None = None, config=None, *, weights: Mapping | None = None,
                 groups="resolutions", temperature=1.0, output: str = "sample",
                 device: str | torch.device | None = None, seed: int = 0, random_weights: bool = False):
        super().__init__()
        device = torch.device("cpu") if device is None else resolve_device(device)
        if output not in OUTPUTS:
            raise ConfigError(f"VDVAE output must be 'sample' (the original's random read-out, its own 'pixels' "
                              f"group) or 'mean' (deterministic), got {brief(output)}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ConfigError(f"VDVAE seed must be an integer in [0, 2**63), got {brief(seed)}")
        if not isinstance(random_weights, bool):
            raise ConfigError(f"VDVAE random_weights must be true or false, got {brief(random_weights)}")
        given = [k for k, v in (("path", path), ("weights", weights)) if v is not None] + \
            (["random_weights"] if random_weights else [])
        if len(given) > 1:
            raise ConfigError(f"VDVAE: {' and '.join(given)} exclude each other; give one source of weights")
        if not given:
            raise ConfigError("VDVAE: no weights given; pass the checkpoint (CLI: --path imagenet32-iter-1700000-"
                              "model-ema.th --config imagenet32), or random_weights=True "
                              "(--model-opt random_weights=true) for tests and benchmarks")

        # Cheap checks first, so that a typo in the config, groups or temperature costs no checkpoint read.
        cfg, label = load_config(config) if config is not None else (None, None)
        if cfg is not None:
            self._parse_latents(cfg, groups, temperature)
        state, what = None, "VDVAE weights="
        if path is not None:
            state, sha256 = read_checkpoint(path)
            what = f"{WHAT} {path}"
            self.source = {"path": str(path), "sha256": sha256}
        elif weights is not None:
            state = generator_state(weights, what)
        if cfg is None:  # the release whose generator has exactly these shapes
            release = infer_release(state) if state is not None else None
            if release is None:
                detail = "; the file's shapes match none of the built-in configs" if state is not None else ""
                raise ConfigError(f"{what if state is not None else 'VDVAE'}: give config= (CLI: --config), a "
                                  f"built-in name ({', '.join(RELEASES)}) or a hparams file{detail}")
            cfg, label = load_config(release)
            self._parse_latents(cfg, groups, temperature)
        if state is not None:
            check_state(state, cfg, what, label, self._specs)

        with torch.device("meta"):  # allocate nothing, draw nothing: the weights come next
            self.decoder = Decoder(cfg, self._specs)
        self.decoder.to_empty(device="cpu")
        if state is None:
            self._init_random(seed)
            self.source = {"random_weights": True, "seed": seed}
        else:
            self.decoder.load_state_dict({k.removeprefix("decoder."): v for k, v in state.items()}, strict=True)
        self.requires_grad_(False)
        self.eval()

        specs = self.decoder.specs
        self.hparams, self.output = cfg, output
        self.num_mixtures = cfg["num_mixtures"]
        self.block_shapes = [(cfg["zdim"], s.res, s.res) for s in specs]
        self.block_offsets = [0]
        for shape in self.block_shapes:
            self.block_offsets.append(self.block_offsets[-1] + math.prod(shape))
        latent = []
        for name, s, e in self.group_blocks:
            res = sorted({specs[i].res for i in range(s, e)})
            where = f"{res[0]}x{res[0]}" if len(res) == 1 else f"{res[0]}x{res[0]} to {res[-1]}x{res[-1]}"
            temps = sorted(set(self.temperatures[s:e]))
            latent.append(LatentGroup(
                name, self.block_offsets[e] - self.block_offsets[s], f"eps of blocks {s}-{e - 1}",
                f"{where} latents ({e - s} block{'s' * (e - s > 1)}, z = prior mean + t * std * eps, "
                f"t {'/'.join(f'{t:g}' for t in temps)})"))
        size = cfg["image_size"]
        if output == "sample":
            latent.append(LatentGroup(PIXELS, size * size * (self.num_mixtures + 3), "output uniforms via Phi",
                                      f"output sampling: per pixel {self.num_mixtures} Gumbel uniforms (mixture "
                                      "component) and 3 logistic ones (R, G, B)"))
        self.groups = tuple(latent)
        self.latent_dim = sum(g.size for g in self.groups)
        self.prior = TruncatedNormal(0.0, 1.0, None)
        self.image_shape = (3, size, size)
        uniform = all(t == self.temperatures[0] for t in self.temperatures)
        self.config = {"hparams": cfg, "groups": [[s, e] for _, s, e in self.group_blocks],
                       "group_names": [g[0] for g in self.group_blocks],
                       "temperature": self.temperatures[0] if uniform else self.temperatures, "output": output}
        self.to(device)

    def _parse_latents(self, cfg: dict, groups, temperature) -> None:
        self._specs = specs = block_specs(cfg)  # parsed once here, handed to the checks and the Decoder
        self.group_blocks = parse_groups(groups, specs)
        self.temperatures = parse_temperature(temperature, self.group_blocks, len(specs))

    @torch.no_grad()
    def _init_random(self, seed: int) -> None:
        """Seeded random weights (same seed, same model id) in the original's spirit: fan-in scaled
        convolutions, the last layers of each block scaled by sqrt(1 / blocks), zero biases and start tensors."""
        gen = torch.Generator().manual_seed(seed)
        scale = (1 / len(self.decoder.specs)) ** 0.5
        for name, p in self.decoder.named_parameters():
            if name == "gain":
                p.fill_(1.0)
            elif p.ndim == 4 and not name.startswith("bias_xs"):
                w = torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5
                p.copy_(w * scale if name.endswith(("z_proj.weight", "resnet.c4.weight", "prior.c4.weight")) else w)
            else:
                p.zero_()

    # --- MLVGM -------------------------------------------------------------------------

    def split(self, code: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Per-block eps (B, Z, r, r) and the pixels part (B, H, W, M + 3) or None, views of ``code``."""
        if code.ndim != 2 or code.shape[1] != self.latent_dim:
            raise ValueError(f"vdvae expects codes of shape (B, {self.latent_dim}), got {tuple(code.shape)}")
        b = code.shape[0]
        eps = [code[:, o:o + math.prod(s)].reshape(b, *s) for o, s in zip(self.block_offsets, self.block_shapes)]
        if self.output != "sample":
            return eps, None
        size = self.image_shape[1]
        return eps, code[:, self.block_offsets[-1]:].reshape(b, size, size, self.num_mixtures + 3)

    def dmol_params(self, eps, z=()) -> torch.Tensor:
        """Output-head parameters (B, H, W, 10M) from per-block eps (or the actual z of the first blocks)."""
        px_z = self.decoder(eps, self.temperatures, z)
        return self.decoder.out_net(px_z)

    def sample_pm1(self, params: torch.Tensor, pixels: torch.Tensor | None = None, *, gumbel_u=None,
                   logistic_u=None) -> torch.Tensor:
        """The read-out in [-1, 1], (B, H, W, 3): ``output="mean"``, else the sample from the uniforms,
        given directly (``gumbel_u``, ``logistic_u``) or mapped from the pixels code by Phi."""
        m = self.num_mixtures
        if self.output == "mean":
            return dmol_mean(params, m)
        if gumbel_u is None:
            u = UNIFORM_EPS + (1 - 2 * UNIFORM_EPS) * torch.special.ndtr(pixels)
            gumbel_u, logistic_u = u[..., :m], u[..., m:]
        return dmol_sample(params, gumbel_u, logistic_u, m)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        eps, pixels = self.split(code.to(self.device, torch.float32))
        params = self.dmol_params(eps)  # the network under the caller's autocast, if any
        with torch.autocast(self.device.type, enabled=False):  # the read-out always in float32
            x = self.sample_pm1(params.float(), pixels)
        return (uint8_levels(x) / 255).permute(0, 3, 1, 2)  # (B, 3, H, W), exact 8-bit levels
