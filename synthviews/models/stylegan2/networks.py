"""The StyleGAN2 generator in plain PyTorch: mapping, synthesis, and the config both are built from.

The network follows the stylegan2-ada-pytorch layout (config-f, architecture
'skip'): every parameter and buffer has the official name and shape, so the
official weights load strictly. The forward pass is written with plain torch
ops instead of the original's custom CUDA kernels (upfirdn2d, bias_act), so
the same code runs on CPU and CUDA.

One forward serves inference and training, as in the original: ``noise_mode``
"const" or "none" for images that depend on the input only, "random" with a
``generator`` for training; ``fused_modconv`` picks one of two equal forms of
the modulated convolution.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..._util.checks import brief, check_int, check_number
from ...errors import ConfigError
from ..weights import check_names_shapes, first_names

SQRT2 = math.sqrt(2.0)
# The pretrained StyleGAN2 weights are under the NVIDIA Source Code License (non-commercial use only).
LICENSE_URL = "https://nvlabs.github.io/stylegan2/license.html"


# --- configuration -----------------------------------------------------------

_MAPPING_DEFAULTS = {
    "num_layers": 8, "embed_features": None, "layer_features": None,
    "activation": "lrelu", "lr_multiplier": 0.01, "w_avg_beta": 0.995,
}
_SYNTHESIS_DEFAULTS = {
    "channel_base": 32768, "channel_max": 512, "num_fp16_res": 0, "conv_clamp": None,
    "architecture": "skip", "resample_filter": [1, 3, 3, 1], "use_noise": True, "activation": "lrelu",
}
# Options of the original that only change memory layout: accepted, then dropped.
_IGNORED_SYNTHESIS = {"fp16_channels_last", "channels_last"}
CONFIG = "StyleGAN2 config: "  # how errors name the config


def _positive_number(what: str, value) -> None:
    """A number in (0, 1e6]: check_number's range is closed, and 0 is no learning rate or clamp."""
    if check_number(value, CONFIG + what, 0, 1e6) == 0:
        raise ConfigError(f"{CONFIG}{what} must be a positive number up to 1e6, got {brief(value)}")


def generator_config(kwargs: Mapping) -> dict:
    """Validate generator constructor kwargs and return them in full (defaults filled in).

    The accepted shape is the stylegan2-ada-pytorch ``Generator`` one:
    ``z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs,
    synthesis_kwargs`` (``constructor_kwargs`` in the compat ``*_config.json``).
    Only what this implementation computes exactly is accepted.
    """
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"StyleGAN2 config must be a mapping of constructor kwargs, got {type(kwargs).__name__}")
    known = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"StyleGAN2 config: unknown generator option(s) {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(sorted(known))}); is this a StyleGAN2 (not StyleGAN3) config?")
    for key in ("z_dim", "w_dim", "img_resolution"):
        if key not in kwargs:
            raise ConfigError(f"StyleGAN2 config: missing {key!r}")
    cfg = {
        "z_dim": check_int(kwargs["z_dim"], CONFIG + "z_dim", 1, MAX_DIM),
        "c_dim": kwargs.get("c_dim", 0),
        "w_dim": check_int(kwargs["w_dim"], CONFIG + "w_dim", 1, MAX_DIM),
        "img_resolution": check_int(kwargs["img_resolution"], CONFIG + "img_resolution", 1, MAX_RESOLUTION),
        "img_channels": check_int(kwargs.get("img_channels", 3), CONFIG + "img_channels", 1, 4),
    }
    if cfg["c_dim"] != 0:
        raise ConfigError(f"StyleGAN2 config: conditional generators (c_dim={brief(cfg['c_dim'])}) are not supported; c_dim must be 0")
    res = cfg["img_resolution"]
    if res < 4 or res & (res - 1):
        raise ConfigError(f"StyleGAN2 config: img_resolution must be a power of two >= 4, got {res}")

    mk = kwargs.get("mapping_kwargs") or {}
    sk = kwargs.get("synthesis_kwargs") or {}
    for what, given, defaults, ignored in (("mapping_kwargs", mk, _MAPPING_DEFAULTS, set()),
                                           ("synthesis_kwargs", sk, _SYNTHESIS_DEFAULTS, _IGNORED_SYNTHESIS)):
        if not isinstance(given, Mapping):
            raise ConfigError(f"StyleGAN2 config: {what} must be a mapping, got {type(given).__name__}")
        unknown = sorted(set(given) - set(defaults) - ignored)
        if unknown:
            raise ConfigError(f"StyleGAN2 config: unknown {what} option(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(sorted(defaults))})")
    m = {k: mk.get(k, v) for k, v in _MAPPING_DEFAULTS.items()}
    s = {k: sk.get(k, v) for k, v in _SYNTHESIS_DEFAULTS.items()}

    check_int(m["num_layers"], CONFIG + "mapping_kwargs.num_layers", 1, 32)
    if m["layer_features"] is not None:
        check_int(m["layer_features"], CONFIG + "mapping_kwargs.layer_features", 1, MAX_DIM)
    _positive_number("mapping_kwargs.lr_multiplier", m["lr_multiplier"])
    check_int(s["channel_base"], CONFIG + "synthesis_kwargs.channel_base", 1, 1 << 20)
    check_int(s["channel_max"], CONFIG + "synthesis_kwargs.channel_max", 1, MAX_DIM)
    check_int(s["num_fp16_res"], CONFIG + "synthesis_kwargs.num_fp16_res", 0, 16)
    if s["conv_clamp"] is not None:
        _positive_number("synthesis_kwargs.conv_clamp", s["conv_clamp"])
    if not isinstance(s["use_noise"], bool):
        raise ConfigError(f"StyleGAN2 config: synthesis_kwargs.use_noise must be true or false, got {brief(s['use_noise'])}")
    s["resample_filter"] = list(s["resample_filter"]) if isinstance(s["resample_filter"], (list, tuple)) else s["resample_filter"]
    unsupported = [
        ("mapping_kwargs.activation", m["activation"], "lrelu"),
        ("synthesis_kwargs.activation", s["activation"], "lrelu"),
        ("synthesis_kwargs.architecture", s["architecture"], "skip"),
        ("synthesis_kwargs.resample_filter", s["resample_filter"], [1, 3, 3, 1]),
    ]
    for what, value, supported in unsupported:
        if value != supported:
            raise ConfigError(f"StyleGAN2 config: {what}={brief(value)} is not supported (only {supported!r}, as in config-f)")
    n = _parameter_count(cfg, m, s)
    if n > MAX_PARAMETERS:
        raise ConfigError(f"StyleGAN2 config: the generator would have {n:,} parameters, over the limit of "
                          f"{MAX_PARAMETERS:,} (config-f at 1024 px has about 30 million); check z_dim, w_dim, "
                          "img_resolution, channel_base and channel_max")
    return {**cfg, "mapping_kwargs": m, "synthesis_kwargs": s}


# Bounds that fit every real checkpoint (config-f at 1024 px: z_dim = w_dim = 512, channel_base
# 32768, channel_max 512, ~30 M parameters) and stop a small file from asking for gigabytes:
# the generator is allocated from its config before the weights are compared with it.
MAX_DIM = 4096
MAX_RESOLUTION = 4096
MAX_PARAMETERS = 100_000_000


def _parameter_count(cfg: dict, m: dict, s: dict) -> int:
    """Parameters plus noise buffers of the generator ``cfg`` describes, counted without building it."""
    w, feats = cfg["w_dim"], m["layer_features"] or cfg["w_dim"]
    dims = [cfg["z_dim"]] + [feats] * (m["num_layers"] - 1) + [w]
    n = sum(a * b + b for a, b in zip(dims, dims[1:])) + w
    res, cin = 4, 0
    while res <= cfg["img_resolution"]:
        c = min(s["channel_base"] // res, s["channel_max"])
        layers = [(c, c)] if res == 4 else [(cin, c), (c, c)]
        n += sum(w * i + i + o * i * 9 + o + res * res for i, o in layers)
        n += w * c + c + cfg["img_channels"] * (c + 1) + (c * 16 if res == 4 else 0)
        res, cin = res * 2, c
    return n


# --- building blocks ---------------------------------------------------------

def fir_filter() -> torch.Tensor:
    """The value of every ``resample_filter`` buffer: outer([1,3,3,1]) normalised to sum 1."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(taps, taps)
    return f / f.sum()


def _fir(x: torch.Tensor, f: torch.Tensor, gain: float, pad: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (before, after) on both spatial axes, then depthwise-convolve with f * gain."""
    c = x.shape[1]
    k = (f * gain).flip([0, 1]).to(x.dtype)  # flip: true convolution (F is symmetric anyway)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), groups=c)


def upsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, 2H, 2W): zero insertion, pad 2 before / 1 after, FIR with gain 4."""
    n, c, h, w = x.shape
    u = x.new_zeros(n, c, 2 * h, 2 * w)
    u[:, :, ::2, ::2] = x
    return _fir(u, f, 4.0, (2, 1))


def _conv(x: torch.Tensor, w: torch.Tensor, up: int, f: torch.Tensor, groups: int) -> torch.Tensor:
    """Ordinary (grouped) conv, 'same' padding; with up=2 a stride-2 transposed conv then FIR."""
    if up == 1:
        return F.conv2d(x, w, padding=w.shape[-1] // 2, groups=groups)
    o, i, k = w.shape[0] // groups, w.shape[1], w.shape[-1]
    # conv_transpose2d wants (in, out/groups, k, k): swap the two channel axes per group.
    w = w.reshape(groups, o, i, k, k).transpose(1, 2).reshape(groups * i, o, k, k)
    x = F.conv_transpose2d(x, w, stride=2, groups=groups)  # (2H+1) x (2W+1)
    return _fir(x, f, 4.0, (1, 1))  # -> 2H x 2W


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
                     up: int = 1, f: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """Per-sample conv with ``weight`` (O, I, k, k) scaled by ``styles`` (N, I) over input channels.

    ``fused``: one grouped conv over the batch with per-sample kernels; otherwise
    scale the input, convolve with the shared kernel, scale the output (the
    original's choice for fp16 batches). Both are the same maths.
    """
    n, i, h, w = x.shape
    o, _, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        # Keep fp16 intermediates in range; demodulation cancels these scales exactly.
        weight = weight * (1 / math.sqrt(i * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    if fused:
        wn = weight[None] * styles[:, None, :, None, None]  # (N, O, I, k, k)
        if demodulate:
            wn = wn * (wn.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
        y = _conv(x.reshape(1, n * i, h, w), wn.reshape(n * o, i, kh, kw).to(x.dtype), up, f, groups=n)
        return y.reshape(n, o, y.shape[2], y.shape[3])
    # sum over (i, k, k) of (w s_i)^2 = sum_i s_i^2 sum_kk w^2: an (N, I) x (I, O) product, no per-sample kernels.
    dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt() if demodulate else None  # (N, O)
    y = _conv(x * styles.to(x.dtype)[:, :, None, None], weight.to(x.dtype), up, f, groups=1)
    return y * dcoefs.to(x.dtype)[:, :, None, None] if demodulate else y


def _bias_act(x: torch.Tensor, bias: torch.Tensor, lrelu: bool, clamp: float | None) -> torch.Tensor:
    """x + bias, then (optionally) lrelu(0.2) * sqrt(2), then clamp to +-clamp."""
    x = x + bias.to(x.dtype)[None, :, None, None]
    if lrelu:
        x = F.leaky_relu(x, 0.2) * SQRT2
    return x if clamp is None else x.clamp(-clamp, clamp)


class FullyConnected(nn.Module):
    """Dense layer with equalised learning rate: gains are applied at run time, never stored."""

    def __init__(self, in_features: int, out_features: int, lrelu: bool = False,
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.lrelu = lrelu
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.lrelu else x


class MappingNetwork(nn.Module):
    """z (N, z_dim) -> ws (N, num_ws, w_dim), optionally truncated toward ``w_avg``."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 layer_features: int | None = None, lr_multiplier: float = 0.01):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        features = [z_dim] + [layer_features or w_dim] * (num_layers - 1) + [w_dim]
        self.register_buffer("w_avg", torch.zeros(w_dim))  # registered first: official state-dict order
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnected(features[idx], features[idx + 1], lrelu=True,
                                                     lr_multiplier=lr_multiplier))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"StyleGAN2 mapping expects z of shape (N, {self.z_dim}), got {tuple(z.shape)}")
        x = z.to(torch.float32)
        x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        ws = x[:, None, :].repeat(1, self.num_ws, 1)
        if truncation_psi != 1:  # never updates w_avg: this is inference only
            rows = slice(None) if truncation_cutoff is None else slice(0, truncation_cutoff)
            ws[:, rows] = self.w_avg.lerp(ws[:, rows], truncation_psi)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (2x upsampling when up=2), then noise, bias, lrelu * sqrt(2), clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: int = 1, use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        if use_noise:
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", fir_filter())
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", fused_modconv: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x (N, in, R/up, R/up), w (N, w_dim) -> (N, out, R, R). ``noise_mode``: "const" (the stored
        ``noise_const``), "random" (fresh N(0, 1) per sample, drawn from ``generator``: training) or "none"."""
        styles = self.affine(w)  # (N, in_channels)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up, f=self.resample_filter,
                             fused=fused_modconv)
        if self.use_noise and noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        elif self.use_noise and noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, generator=generator, device=x.device)
            x = x + (noise * self.noise_strength).to(x.dtype)
        return _bias_act(x, self.bias, lrelu=True, clamp=self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated (not demodulated) 1x1 conv to image channels, plus bias; no activation."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return _bias_act(x, self.bias, lrelu=False, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: [const at 4x4 | conv0 with 2x upsampling], conv1, and a ToRGB skip."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 use_fp16: bool = False, use_noise: bool = True, conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.use_fp16 = resolution, use_fp16
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        self.register_buffer("resample_filter", fir_filter())
        layer = dict(w_dim=w_dim, resolution=resolution, use_noise=use_noise, conv_clamp=conv_clamp)
        if resolution > 4:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2, **layer)
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if resolution == 4 else 2  # ws rows used by the convs; torgb uses one more

    def forward(self, x, img, ws, noise_mode: str = "const", force_fp32: bool = True,
                fused_modconv: bool | None = None, generator: torch.Generator | None = None):
        """ws: (N, num_conv + 1, w_dim). Returns features x and the accumulated float32 img.

        ``fused_modconv``: None chooses. One grouped conv with per-sample kernels (the original's
        fp32 choice) pays off on GPUs; on CPU scaling the activations around one shared conv is
        faster. Both are the same maths, equal to float rounding.
        """
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        if fused_modconv is None:
            fused_modconv = ws.shape[0] == 1 or (dtype == torch.float32 and ws.device.type != "cpu")
        layer = dict(noise_mode=noise_mode, fused_modconv=fused_modconv, generator=generator)
        if self.resolution == 4:
            x = self.const.to(dtype)[None].repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0], **layer)
        else:
            x = self.conv0(x.to(dtype), ws[:, 0], **layer)
            x = self.conv1(x, ws[:, 1], **layer)
        y = self.torgb(x, ws[:, -1], fused_modconv).to(torch.float32)
        img = y if img is None else upsample2x(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> image (N, C, R, R), float32, not squashed (nominally [-1, 1])."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, conv_clamp: float | None = None,
                 use_noise: bool = True):
        super().__init__()
        self.w_dim, self.img_resolution = w_dim, img_resolution
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** k for k in range(2, log2 + 1)]
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res, img_channels,
                                   use_fp16=res >= fp16_resolution, use_noise=use_noise, conv_clamp=conv_clamp)
            setattr(self, f"b{res}", block)
        self.num_ws = 2 * log2 - 2

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", force_fp32: bool = True,
                fused_modconv: bool | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The one forward of training and inference. Inference uses noise_mode "const" or "none";
        training "random" with its own ``generator``, so a run is reproducible and resumable."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"StyleGAN2 synthesis expects ws of shape (N, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}")
        if noise_mode not in ("const", "none", "random"):
            raise ValueError(f"noise_mode must be 'const', 'none' or 'random', got {noise_mode!r}")
        x = img = None
        row = 0
        for block in self.blocks():
            # The ToRGB row of one block is the conv0 row of the next one.
            x, img = block(x, img, ws[:, row:row + block.num_conv + 1], noise_mode, force_fp32, fused_modconv,
                           generator)
            row += block.num_conv
        return img


class Generator(nn.Module):
    """mapping + synthesis, built from stylegan2-ada-pytorch constructor kwargs."""

    def __init__(self, **kwargs):
        super().__init__()
        cfg = generator_config(kwargs)
        m, s = cfg["mapping_kwargs"], cfg["synthesis_kwargs"]
        self.config = cfg
        self.z_dim, self.w_dim = cfg["z_dim"], cfg["w_dim"]
        self.img_resolution, self.img_channels = cfg["img_resolution"], cfg["img_channels"]
        self.synthesis = SynthesisNetwork(cfg["w_dim"], cfg["img_resolution"], cfg["img_channels"],
                                          s["channel_base"], s["channel_max"], s["num_fp16_res"],
                                          s["conv_clamp"], s["use_noise"])
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg["z_dim"], cfg["w_dim"], self.num_ws, m["num_layers"],
                                      m["layer_features"], m["lr_multiplier"])

    def forward(self, z, truncation_psi=1.0, truncation_cutoff=None, noise_mode="const", force_fp32=True,
                fused_modconv=None, generator=None):
        ws = self.mapping(z, truncation_psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32, fused_modconv=fused_modconv,
                              generator=generator)


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Strictly load an official-layout state dict into ``module``; ConfigError names any mismatch.

    Missing ``*.resample_filter`` buffers are tolerated (they are the constant
    FIR filter; TF-converted checkpoints do not store them).
    """
    expected = module.state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ConfigError(f"{what}: not a state dict (a mapping of names to tensors)")
    if state and not any(k in expected for k in state):
        raise ConfigError(f"{what}: not a StyleGAN2 generator: none of its {len(state)} tensor names is a StyleGAN2 "
                          f"name (it has e.g. {first_names(state)}; expected e.g. synthesis.b4.const, mapping.fc0.weight)")
    check_names_shapes(state, {k: tuple(v.shape) for k, v in expected.items()}, what,
                       "the StyleGAN2 generator of this config", optional=("resample_filter",), missing_first=True,
                       hint=lambda: "is the config the one this checkpoint was trained with?")
    full = {k: (state[k] if k in state else v) for k, v in expected.items()}
    module.load_state_dict(full, strict=True)
