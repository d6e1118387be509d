"""The VDVAE generator (Child, ICLR 2021): hyperparameters, the top-down decoder and its output head.

Only what sampling needs is built: per decoder block the prior head, the latent
projection and the residual block, then the final gain/bias and the output
convolution. The encoder and the posterior heads (``dec_blocks.N.enc``) of the
official checkpoints are not modules here; the loader drops them.

Names and shapes follow the official ``*-model-ema.th`` state dicts, under the
``decoder.`` prefix of the original ``VAE``. Tensors are NCHW, float32.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..._util.checks import MAX_CODE, brief, error
from ...errors import ConfigError
from ..weights import first_names

LICENSE_URL = "https://github.com/openai/vdvae/blob/ea35b490313bc33e7f8ac63dd8132f3cc1a729b4/LICENSE.md"  # MIT
UNIFORM_EPS = 1e-5  # the original draws its output uniforms from U(1e-5, 1 - 1e-5)
MIN_LOG_SCALE = -7.0  # logistic log-scales are clamped here, after the component is chosen

# --- hyperparameters --------------------------------------------------------------

# The decoder-relevant hparams of the five releases (the original's names; real_configs.json of the compat data).
RELEASES: dict[str, dict] = {
    "imagenet32": {"image_size": 32, "width": 512, "zdim": 16, "bottleneck_multiple": 0.25, "num_mixtures": 10,
                   "no_bias_above": 64, "custom_width_str": "",
                   "dec_blocks": "1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40"},
    "imagenet64": {"image_size": 64, "width": 512, "zdim": 16, "bottleneck_multiple": 0.25, "num_mixtures": 10,
                   "no_bias_above": 64, "custom_width_str": "",
                   "dec_blocks": "1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12"},
    "ffhq256": {"image_size": 256, "width": 512, "zdim": 16, "bottleneck_multiple": 0.25, "num_mixtures": 10,
                "no_bias_above": 64, "custom_width_str": "",
                "dec_blocks": "1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128"},
    "ffhq1024": {"image_size": 1024, "width": 16, "zdim": 16, "bottleneck_multiple": 0.25, "num_mixtures": 2,
                 "no_bias_above": 64,
                 "custom_width_str": "512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,1:512",
                 "dec_blocks": "1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,128x7,256m128,"
                               "256x2,512m256,1024m512"},
    "cifar10": {"image_size": 32, "width": 384, "zdim": 16, "bottleneck_multiple": 0.25, "num_mixtures": 10,
                "no_bias_above": 64, "custom_width_str": "",
                "dec_blocks": "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21"},
}

DEFAULTS = {"zdim": 16, "bottleneck_multiple": 0.25, "no_bias_above": 64, "num_mixtures": 10,
            "custom_width_str": "", "image_channels": 3}
REQUIRED = ("image_size", "width", "dec_blocks")
# Original hparams that shape only the encoder or the training loss: accepted in a config file, not used.
IGNORED = ("dataset", "enc_blocks")
MAX_BLOCKS, MAX_RES, MAX_WIDTH, MAX_ZDIM, MAX_MIXTURES = 1000, 4096, 4096, 1024, 100
MAX_PARAMS = 1_000_000_000  # the releases' generators have 21-67 M; the model is allocated from the config
# One dec_blocks item (R, RxK or RmS) and one custom_width_str item (res:width): ASCII digits, bounded length,
# so that neither int() of a 5000-digit number nor a unicode digit that str.isdigit() accepts gets through.
BLOCK_ITEM = re.compile(r"(\d{1,5})(?:x(\d{1,5})|m(\d{1,5}))?", re.ASCII)
WIDTH_ITEM = re.compile(r"(\d{1,5}):(\d{1,5})", re.ASCII)


@dataclass(frozen=True)
class BlockSpec:
    """One decoder block: its resolution, channel width and mixin source resolution (or None)."""

    index: int
    res: int
    width: int
    mixin: int | None

    @property
    def use_3x3(self) -> bool:  # the 1x1 and 2x2 blocks use 1x1 convolutions throughout
        return self.res > 2


def resolve_hparams(hparams: Mapping, where: str) -> dict:
    """The decoder hparams of ``hparams`` (original names), validated, defaults filled in."""
    if not isinstance(hparams, Mapping):
        raise ConfigError(f"{where}: VDVAE hparams must be a mapping, got {brief(hparams)}")
    known = (*REQUIRED, *DEFAULTS)  # a fixed order: the filled-in cfg must not depend on PYTHONHASHSEED
    unknown = [k for k in hparams if k not in known and k not in IGNORED]
    if unknown:
        raise error(f"{where}: unknown VDVAE hparam(s) {first_names(unknown, limit=40)}; "
                    f"known: {', '.join(sorted((*known, *IGNORED)))}")
    missing = [k for k in REQUIRED if k not in hparams]
    if missing:
        raise ConfigError(f"{where}: VDVAE hparam(s) {', '.join(missing)} missing (e.g. imagenet32 has "
                          f"image_size 32, width 512, dec_blocks {RELEASES['imagenet32']['dec_blocks']!r})")
    cfg = {**DEFAULTS, **{k: hparams[k] for k in known if k in hparams}}
    for key, hi in (("image_size", MAX_RES), ("width", MAX_WIDTH), ("zdim", MAX_ZDIM),
                    ("num_mixtures", MAX_MIXTURES), ("no_bias_above", 1 << 20), ("image_channels", 3)):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ConfigError(f"{where}: VDVAE hparam {key} must be an integer in 1..{hi}, got {brief(v)}")
    if cfg["image_channels"] != 3:
        raise ConfigError(f"{where}: VDVAE image_channels must be 3 (the output mixture is RGB), got {cfg['image_channels']}")
    bm = cfg["bottleneck_multiple"]
    if isinstance(bm, bool) or not isinstance(bm, (int, float)) or not 0 < bm <= 16:
        raise ConfigError(f"{where}: VDVAE hparam bottleneck_multiple must be a number in (0, 16], got {brief(bm)}")
    cfg["bottleneck_multiple"] = float(bm)
    for key in ("dec_blocks", "custom_width_str"):
        if not isinstance(cfg[key], str) or len(cfg[key]) > 10_000:
            raise ConfigError(f"{where}: VDVAE hparam {key} must be a string, got {brief(cfg[key])}")
    specs = block_specs(cfg, where)  # parses and checks the block string and the widths
    code = sum(cfg["zdim"] * s.res**2 for s in specs) + cfg["image_size"] ** 2 * (cfg["num_mixtures"] + 3)
    if code > MAX_CODE:
        raise ConfigError(f"{where}: these VDVAE hparams make a latent code of {code:,} values (every block's "
                          f"zdim * res^2 plus image_size^2 * (num_mixtures + 3)), over the limit of {MAX_CODE:,}")
    params = sum(math.prod(s) for s in generator_shapes(cfg, specs).values())
    if params > MAX_PARAMS:
        raise ConfigError(f"{where}: these VDVAE hparams make a generator of {params:,} parameters, "
                          f"over the limit of {MAX_PARAMS:,}")
    return cfg


def _widths(cfg: dict, where: str) -> dict[int, int]:
    out = {}
    for item in filter(None, (s.strip() for s in cfg["custom_width_str"].split(","))):
        match = WIDTH_ITEM.fullmatch(item)
        if not (match and 0 < int(match[2]) <= MAX_WIDTH):
            raise error(f"{where}: VDVAE custom_width_str item {brief(item, 40)} is not 'resolution:width' "
                        f"(e.g. '8:40'; widths 1..{MAX_WIDTH})")
        out[int(match[1])] = int(match[2])
    return out


def block_specs(cfg: dict, where: str = "VDVAE config") -> list[BlockSpec]:
    """The decoder blocks of ``dec_blocks``, coarse to fine: ``RxK`` (K blocks at R), ``RmS``
    (one block at R that mixes in the state at S) or ``R`` (one block)."""
    overrides = _widths(cfg, where)
    items: list[tuple[int, int | None]] = []
    for item in (s.strip() for s in cfg["dec_blocks"].split(",")):
        match = BLOCK_ITEM.fullmatch(item)
        if not match:
            raise error(f"{where}: VDVAE dec_blocks item {brief(item, 40)} is not RxK, RmS or R (e.g. '4x4', '8m4')")
        r, k, mixin = int(match[1]), int(match[2] or 1), None if match[3] is None else int(match[3])
        if not 1 <= r <= MAX_RES or k < 1 or len(items) + k > MAX_BLOCKS:
            raise ConfigError(f"{where}: VDVAE dec_blocks item {item!r}: resolutions 1..{MAX_RES}, "
                              f"at least 1 and at most {MAX_BLOCKS} blocks in all")
        items += [(r, mixin)] if mixin is not None else [(r, None)] * k
    width = lambda r: overrides.get(r, cfg["width"])  # noqa: E731
    resolutions = {r for r, _ in items}
    seen: set[int] = {r for r in resolutions if r <= cfg["no_bias_above"]}  # states that exist before any block
    specs = []
    for i, (r, s) in enumerate(items):
        if s is not None:
            if not (1 <= s < r and r % s == 0):  # s = 0 would divide by zero
                raise ConfigError(f"{where}: VDVAE dec_blocks block {i} ({r}m{s}): the mixin source must be a "
                                  "lower resolution that divides it")
            if s not in seen:
                raise ConfigError(f"{where}: VDVAE dec_blocks block {i} ({r}m{s}) mixes in resolution {s}, "
                                  "which has no state yet (no block and no start tensor there)")
            if width(s) < width(r):
                raise ConfigError(f"{where}: VDVAE block {i} ({r}m{s}) needs {width(r)} channels from resolution "
                                  f"{s}, which has only {width(s)}")
        specs.append(BlockSpec(i, r, width(r), s))
        seen.add(r)
    if cfg["image_size"] not in resolutions:
        raise ConfigError(f"{where}: VDVAE dec_blocks has no block at image_size {cfg['image_size']}")
    if width(cfg["image_size"]) != cfg["width"]:
        raise ConfigError(f"{where}: VDVAE resolution {cfg['image_size']} has width {width(cfg['image_size'])}, "
                          f"but the output head takes width {cfg['width']}; they must be equal")
    for spec in specs:
        if int(spec.width * cfg["bottleneck_multiple"]) < 1:
            raise ConfigError(f"{where}: VDVAE bottleneck width int({spec.width} * {cfg['bottleneck_multiple']}) is 0")
    return specs


def bias_resolutions(cfg: dict, specs: Sequence[BlockSpec] | None = None) -> list[int]:
    """Resolutions with a learned start tensor ``decoder.bias_xs.j`` (ascending).
    ``specs``: ``block_specs(cfg)`` where the caller has them already."""
    specs = block_specs(cfg) if specs is None else specs
    return sorted({s.res for s in specs} & set(range(1, cfg["no_bias_above"] + 1)))


def generator_shapes(cfg: dict, specs: Sequence[BlockSpec] | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the generator uses, in the official state-dict order
    (``specs`` as for :func:`bias_resolutions`)."""
    specs = block_specs(cfg) if specs is None else specs
    width, zdim, m = cfg["width"], cfg["zdim"], cfg["num_mixtures"]
    shapes: dict[str, tuple[int, ...]] = {"decoder.gain": (1, width, 1, 1), "decoder.bias": (1, width, 1, 1)}

    def bottleneck(prefix, cin, mid, cout, k):
        for name, o, i, kk in (("c1", mid, cin, 1), ("c2", mid, mid, k), ("c3", mid, mid, k), ("c4", cout, mid, 1)):
            shapes[f"{prefix}.{name}.weight"], shapes[f"{prefix}.{name}.bias"] = (o, i, kk, kk), (o,)

    for spec in specs:
        c, mid, k, p = spec.width, int(spec.width * cfg["bottleneck_multiple"]), 3 if spec.use_3x3 else 1, \
            f"decoder.dec_blocks.{spec.index}"
        bottleneck(f"{p}.prior", c, mid, 2 * zdim + c, k)
        shapes[f"{p}.z_proj.weight"], shapes[f"{p}.z_proj.bias"] = (c, zdim, 1, 1), (c,)
        bottleneck(f"{p}.resnet", c, mid, c, k)
    for j, r in enumerate(bias_resolutions(cfg, specs)):
        shapes[f"decoder.bias_xs.{j}"] = (1, next(s.width for s in specs if s.res == r), r, r)
    shapes["decoder.out_net.out_conv.weight"], shapes["decoder.out_net.out_conv.bias"] = (10 * m, width, 1, 1), (10 * m,)
    return shapes


# --- the decoder --------------------------------------------------------------------

class Bottleneck(nn.Module):
    """Pre-activation bottleneck: gelu before each of c1 (1x1), c2, c3 (3x3 or 1x1), c4 (1x1); no norm layers."""

    def __init__(self, cin: int, mid: int, cout: int, residual: bool, use_3x3: bool):
        super().__init__()
        k = 3 if use_3x3 else 1
        self.c1 = nn.Conv2d(cin, mid, 1)
        self.c2 = nn.Conv2d(mid, mid, k, padding=k // 2)
        self.c3 = nn.Conv2d(mid, mid, k, padding=k // 2)
        self.c4 = nn.Conv2d(mid, cout, 1)
        self.residual = residual

    def forward(self, x):  # (N, cin, r, r) -> (N, cout, r, r)
        h = self.c4(F.gelu(self.c3(F.gelu(self.c2(F.gelu(self.c1(F.gelu(x))))))))
        return x + h if self.residual else h


class DecoderBlock(nn.Module):
    """One top-down block: prior head p(z | state), latent injection, residual block."""

    def __init__(self, spec: BlockSpec, zdim: int, bottleneck_multiple: float):
        super().__init__()
        c, mid = spec.width, int(spec.width * bottleneck_multiple)
        self.spec, self.zdim = spec, zdim
        self.prior = Bottleneck(c, mid, 2 * zdim + c, residual=False, use_3x3=spec.use_3x3)
        self.z_proj = nn.Conv2d(zdim, c, 1)
        self.resnet = Bottleneck(c, mid, c, residual=True, use_3x3=spec.use_3x3)

    def forward(self, x, source, eps, t: float, z=None, trace: dict | None = None):
        """x: state at this resolution (N, C, r, r); source: state at the mixin resolution or None;
        eps (N, Z, r, r) standard normal, used when ``z`` (the actual latent) is not given.
        Returns (new state, the z used)."""
        c, zdim = self.spec.width, self.zdim
        if source is not None:  # the only resolution change: nearest-neighbour repeat, extra channels dropped
            x = x + F.interpolate(source[:, :c], scale_factor=self.spec.res // source.shape[-1])
        f = self.prior(x)  # (N, 2Z + C, r, r)
        pm, pv, xpp = f[:, :zdim], f[:, zdim:2 * zdim], f[:, 2 * zdim:]  # mean, log std, residual feature
        if trace is not None:
            trace.update(x_in=x, prior_mean=pm, prior_logstd=pv, prior_xpp=xpp)
        x = x + xpp
        if z is None:  # the temperature scales the std only, as exp(log std + log t); t = 0 gives the mean
            logstd = pv if t == 1 else pv + (math.log(t) if t > 0 else -math.inf)
            z = torch.exp(logstd) * eps + pm
        proj = self.z_proj(z)
        x = self.resnet(x + proj)
        if trace is not None:
            trace.update(z_proj_out=proj, out=x)
        return x, z


class OutNet(nn.Module):
    """The output head's 1x1 convolution: width -> 10 * num_mixtures mixture parameters."""

    def __init__(self, width: int, num_mixtures: int):
        super().__init__()
        self.out_conv = nn.Conv2d(width, 10 * num_mixtures, 1)

    def forward(self, px_z):  # (N, width, H, W) -> (N, H, W, 10M): NHWC as the original
        return self.out_conv(px_z).permute(0, 2, 3, 1)


class Decoder(nn.Module):
    """The top-down generator: start tensors, blocks coarse to fine, final gain/bias, output head.

    Build it on the ``meta`` device and ``to_empty`` it before loading weights:
    nothing is initialised (or drawn from the global RNG) here.
    """

    def __init__(self, cfg: dict, specs: Sequence[BlockSpec] | None = None):
        super().__init__()
        self.cfg = dict(cfg)
        width = cfg["width"]
        self.gain = nn.Parameter(torch.empty(1, width, 1, 1))  # registered first: the official order
        self.bias = nn.Parameter(torch.empty(1, width, 1, 1))
        self.specs = list(block_specs(cfg) if specs is None else specs)
        self.dec_blocks = nn.ModuleList(DecoderBlock(s, cfg["zdim"], cfg["bottleneck_multiple"]) for s in self.specs)
        self.bias_res = bias_resolutions(cfg, self.specs)
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.empty(1, next(s.width for s in self.specs if s.res == r), r, r)) for r in self.bias_res)
        self.out_net = OutNet(width, cfg["num_mixtures"])

    def forward(self, eps: Sequence[torch.Tensor | None], temperatures: Sequence[float],
                z: Sequence[torch.Tensor] = (), traces: dict | None = None, zs: list | None = None) -> torch.Tensor:
        """The final activation px_z (N, width, H, W).

        Block i uses ``z[i]`` as its latent where given (the first ``len(z)`` blocks), else
        ``prior mean + temperatures[i] * prior std * eps[i]``. ``traces`` (a dict) receives
        per-block intermediates, ``zs`` (a list) the latent each block used.
        """
        ref = next(t for t in (*z, *eps) if t is not None)
        n = ref.shape[0]
        xs = {r: b.expand(n, -1, -1, -1) for r, b in zip(self.bias_res, self.bias_xs)}  # (N, C_r, r, r)
        for i, block in enumerate(self.dec_blocks):
            spec = block.spec
            x = xs.get(spec.res)
            if x is None:  # above no_bias_above the first block of a resolution starts from zeros
                x = ref.new_zeros(n, spec.width, spec.res, spec.res)
            trace = {} if traces is not None else None
            source = xs[spec.mixin] if spec.mixin is not None else None
            xs[spec.res], z_used = block(x, source, eps[i] if i >= len(z) else None, temperatures[i],
                                         z[i] if i < len(z) else None, trace)
            if traces is not None:
                traces[i] = trace
            if zs is not None:
                zs.append(z_used)
        return xs[self.cfg["image_size"]] * self.gain + self.bias


# --- the output distribution: discretised mixture of logistics ---------------------------

def _split_params(params: torch.Tensor, m: int):
    """Mixture logits (N, H, W, M) and means, log-scales, tanh'd coefficients (N, H, W, 3, M)."""
    n, h, w, _ = params.shape
    logits = params[..., :m]
    rest = params[..., m:].reshape(n, h, w, 3, 3 * m)
    return logits, rest[..., :m], rest[..., m:2 * m], torch.tanh(rest[..., 2 * m:3 * m])


def _couple(mu: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colour mixing with clipping after each step: R, then G on R, then B on R and G. (N, H, W, 3)."""
    r = mu[..., 0].clamp(-1, 1)
    g = (mu[..., 1] + coeffs[..., 0] * r).clamp(-1, 1)
    b = (mu[..., 2] + coeffs[..., 1] * r + coeffs[..., 2] * g).clamp(-1, 1)
    return torch.stack([r, g, b], dim=-1)


def dmol_component(params: torch.Tensor, gumbel_u: torch.Tensor, m: int) -> torch.Tensor:
    """The mixture component each pixel samples, by Gumbel-max over its logits: (N, H, W) indices."""
    return torch.argmax(params[..., :m] - torch.log(-torch.log(gumbel_u)), dim=-1)


def dmol_sample(params: torch.Tensor, gumbel_u: torch.Tensor, logistic_u: torch.Tensor, m: int) -> torch.Tensor:
    """The original's random read-out, given its uniforms: sample in [-1, 1], (N, H, W, 3).

    ``gumbel_u`` (N, H, W, M) chooses the component by Gumbel-max; ``logistic_u`` (N, H, W, 3)
    draws from the chosen logistic by its inverse CDF. Both in (0, 1).
    """
    _, means, log_scales, coeffs = _split_params(params, m)
    k = dmol_component(params, gumbel_u, m)  # (N, H, W)
    pick = lambda t: t.gather(-1, k[..., None, None].expand(*k.shape, 3, 1)).squeeze(-1)  # noqa: E731
    mu, s, a = pick(means), pick(log_scales).clamp(min=MIN_LOG_SCALE), pick(coeffs)
    y = mu + torch.exp(s) * (torch.log(logistic_u) - torch.log(1 - logistic_u))
    return _couple(y, a)


def dmol_mean(params: torch.Tensor, m: int) -> torch.Tensor:
    """A deterministic read-out (not in the original): the most likely component's median
    (its mean ``mu``), with the same colour coupling and clipping; (N, H, W, 3) in [-1, 1]."""
    logits, means, _, coeffs = _split_params(params, m)
    k = torch.argmax(logits, dim=-1)
    pick = lambda t: t.gather(-1, k[..., None, None].expand(*k.shape, 3, 1)).squeeze(-1)  # noqa: E731
    return _couple(pick(means), pick(coeffs))


def uint8_levels(sample_pm1: torch.Tensor) -> torch.Tensor:
    """The original's image: floor((x + 1) * 127.5) clipped to 0..255, as float levels (same shape)."""
    return torch.floor(((sample_pm1 + 1) * 127.5).clamp(0, 255))
