"""``bigbigan``: the BigBiGAN generator (BigGAN-128 architecture) as an MLVGM.

The module tree, parameter names and shapes are those of ``BigBiGAN_x1.pth``
as packaged by pytorch-pretrained-gans, so that file loads as it is (strict
matching, no renaming). The forward pass is the original's eval mode:

- spectral norm recomputed on every call from the stored ``u0`` with one
  power-iteration step (eps 1e-4); nothing is written back, ``sv0`` unused;
- batch norm always with the stored statistics: eps 1e-4 in the conditional
  BNs of the blocks, 1e-5 in the final BN;
- the generator is unconditional: every sample uses the class-0 embedding.

z (120) is 6 chunks of 20: chunk 0 feeds the first linear layer (4x4 map),
chunks 1-5 feed the conditional batch norms of residual blocks 0-4. Each
chunk is one latent group; a perturbation adds noise to its chunk.

Weights licence: BigBiGAN was released by DeepMind on TF-Hub under
Apache-2.0; ``BigBiGAN_x1.pth`` is a conversion of those weights, so data
made from it is reported as ``apache-2.0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .._util.checks import brief
from .._util.device import amp_context, one_cpu_thread, resolve_device
from .._util.files import sha256_file
from ..errors import ConfigError
from ..latents import LatentGroup, TruncatedNormal
from ._registry import register_model
from .base import MLVGM, ChunkedLatents
from .weights import check_names_shapes, first_names, flat_tensors, read_tensors

SN_EPS = 1e-4  # spectral-norm vector normalisation
CCBN_EPS = 1e-4  # conditional batch norms (BN_eps of the original config)
OUT_BN_EPS = 1e-5  # final batch norm: the original builds it without BN_eps
NUM_CHUNKS = 6  # 1 for the linear layer + 1 per residual block

DEFAULT_CONFIG = {  # the real 128 px model (BigBiGAN_x1.pth)
    "resolution": 128,
    "ch": 96,
    "dim_z": 120,
    "shared_dim": 128,
    "n_classes": 1000,
    "class_index": 0,
}


# --- layers -----------------------------------------------------------------

class SpectralNormLayer(nn.Module):
    """A weight divided by its largest singular value, estimated as the original does.

    State: ``weight`` (raw), optional ``bias``, ``u0`` [1, out] (left singular
    vector estimate) and ``sv0`` [1] (kept only so checkpoints load; unused).
    """

    def __init__(self, weight_shape: tuple[int, ...], bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(weight_shape[0])) if bias else None
        self.register_buffer("u0", torch.empty(1, weight_shape[0]))
        self.register_buffer("sv0", torch.ones(1))
        self._cache = None

    def sigma(self) -> torch.Tensor:
        """One power step from ``u0``: v = nrm(u0 M), u = nrm(v M^T), sigma = v M^T u^T.

        Computed with one CPU thread: a multi-threaded GEMV splits its reduction by
        thread count, which would make the images depend on the machine's cores.
        """
        with one_cpu_thread(self.weight.device):
            return self._power_step()

    def _power_step(self) -> torch.Tensor:
        with torch.autocast(self.weight.device.type, enabled=False):
            m = self.weight.float().reshape(self.weight.shape[0], -1)  # (out, in*kh*kw)
            v = F.normalize(self.u0.float() @ m, dim=1, eps=SN_EPS)  # (1, rest)
            vm = v @ m.t()  # (1, out)
            u = F.normalize(vm, dim=1, eps=SN_EPS)
            return (vm @ u.t()).reshape(())

    def normalized_weight(self) -> torch.Tensor:
        """The weight over sigma, cached while weight and ``u0`` are unchanged (it is a constant at inference).

        Under ``torch.compile`` it is traced into the graph instead (a Python-side cache keyed by
        tensor versions and a thread-count switch would break the graph); the compiled CPU kernels'
        thread count is fixed when they are generated, and ViewSampler generates them on one thread.
        """
        if torch.compiler.is_compiling():
            return self.weight / self._power_step()
        key = (self.weight._version, self.u0._version, self.weight.device, self.weight.dtype, torch.is_grad_enabled())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.weight / self.sigma())
        return self._cache[1]

    def _apply(self, fn, *args, **kwargs):  # .to()/.half() etc.: the cached weight belongs to the old tensors
        self._cache = None
        return super()._apply(fn, *args, **kwargs)


class SNLinear(SpectralNormLayer):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__((out_features, in_features), bias)

    def forward(self, x):
        return F.linear(x, self.normalized_weight(), self.bias)


class SNConv2d(SpectralNormLayer):
    """Stride-1 convolution with zero 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), bias)
        self.padding = kernel_size // 2

    def forward(self, x):
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding)


class ConditionalBatchNorm(nn.Module):
    """Eval-mode BN whose per-channel gain (1 + .) and bias are linear in y (148-d)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))
        self.gain = SNLinear(cond_dim, channels, bias=False)
        self.bias = SNLinear(cond_dim, channels, bias=False)

    def forward(self, x, y):  # x (N, C, H, W), y (N, cond_dim)
        x = F.batch_norm(x, self.stored_mean, self.stored_var, training=False, eps=CCBN_EPS)
        return x * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class OutputBatchNorm(nn.Module):
    """The plain eval-mode BN before the output convolution (eps 1e-5)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x):
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias,
                            training=False, eps=OUT_BN_EPS)


class GBlock(nn.Module):
    """Residual up-block: BN-ReLU-up-conv3x3-BN-ReLU-conv3x3 plus up-conv1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.conv1 = SNConv2d(in_channels, out_channels, 3)
        self.conv2 = SNConv2d(out_channels, out_channels, 3)
        self.conv_sc = SNConv2d(in_channels, out_channels, 1)
        self.bn1 = ConditionalBatchNorm(in_channels, cond_dim)
        self.bn2 = ConditionalBatchNorm(out_channels, cond_dim)

    def forward(self, h, y):  # (N, in, R, R) -> (N, out, 2R, 2R)
        t = F.interpolate(F.relu(self.bn1(h, y)), scale_factor=2, mode="nearest")
        t = self.conv2(F.relu(self.bn2(self.conv1(t), y)))
        return t + self.conv_sc(F.interpolate(h, scale_factor=2, mode="nearest"))


class SelfAttention(nn.Module):
    """SAGAN attention; keys and values are 2x2 max-pooled, output scaled by ``gamma``."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(()))
        self.theta = SNConv2d(channels, channels // 8, 1, bias=False)
        self.phi = SNConv2d(channels, channels // 8, 1, bias=False)
        self.g = SNConv2d(channels, channels // 2, 1, bias=False)
        self.o = SNConv2d(channels // 2, channels, 1, bias=False)

    def forward(self, h):  # (N, C, H, W) -> same
        n, c, height, width = h.shape
        theta = self.theta(h).flatten(2)  # (N, C/8, HW)
        phi = F.max_pool2d(self.phi(h), 2).flatten(2)  # (N, C/8, HW/4)
        g = F.max_pool2d(self.g(h), 2).flatten(2)  # (N, C/2, HW/4)
        beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (N, HW, HW/4)
        o = (g @ beta.transpose(1, 2)).reshape(n, c // 2, height, width)
        return self.gamma * self.o(o) + h


# --- the model ----------------------------------------------------------------

@register_model("bigbigan")
class BigBiGAN(ChunkedLatents, MLVGM):
    """BigBiGAN generator, 128x128 RGB.

    ``path``: a ``BigBiGAN_x1.pth``-style state dict (``.pth``/``.pt`` read with
    ``weights_only=True``, or ``.safetensors``); ``weights``: the same dict
    already in memory. Random weights (seeded by ``seed``, for tests and
    benchmarks) only with ``random_weights=True``: without it, a missing
    ``path`` is an error, not a dataset of noise labelled BigBiGAN. ``ch`` and ``config`` override the
    architecture (``ch=8`` is the compat tiny model); with weights, sizes
    not given are read from them.
    ``device`` (None: stay on the CPU; else as ``resolve_device``), ``amp``
    (None, ``"bf16"`` or ``"fp16"`` autocast in ``decode``; ViewSampler's
    ``amp`` does the same), ``channels_last`` and ``compile``
    (``torch.compile``, opt-in) only change how it runs, not the model id.
    """

    family = "bigbigan"
    license = "apache-2.0"

    def __init__(self, path: str | Path | None = None, *, weights: Mapping | None = None,
                 config: Mapping | None = None, ch: int | None = None,
                 device: str | torch.device | None = None, amp: str | None = None, channels_last: bool = False,
                 compile: bool = False, seed: int = 0, random_weights: bool = False):
        super().__init__()
        device = torch.device("cpu") if device is None else resolve_device(device)
        amp_context(device, amp)  # validates amp for this device
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ConfigError(f"bigbigan: seed must be an integer in [0, 2**63), got {brief(seed)}")
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(f"bigbigan: config must be a mapping of sizes, got {brief(config)}")
        if path is not None and weights is not None:
            raise ConfigError("bigbigan: give either path= (a file) or weights= (a state dict), not both")
        if random_weights not in (True, False):
            raise ConfigError(f"bigbigan: random_weights must be true or false, got {random_weights!r}")
        if random_weights and (path is not None or weights is not None):
            raise ConfigError("bigbigan: random_weights=True and weights from path=/weights= exclude each other")
        if not random_weights and path is None and weights is None:
            raise ConfigError("bigbigan: no weights given; pass the generator file (CLI: --path BigBiGAN_x1.pth), "
                              "or random_weights=True (--model-opt random_weights=true) for tests and benchmarks")
        state_dict, what = None, "BigBiGAN weights="
        if path is not None:
            state_dict, sha256 = read_state_dict(path)
            self.source = {"path": str(path), "sha256": sha256}
            what = f"BigBiGAN generator file {path}"
        elif weights is not None:
            state_dict = flat_tensors(weights, what)
        overrides = dict(config or {})
        if ch is not None:
            overrides["ch"] = ch
        if state_dict is not None:
            overrides = {**_sizes_from_state_dict(state_dict), **overrides}
        cfg = _resolve_config(overrides)
        self.config = cfg
        self._build(cfg)
        if state_dict is None:
            self._init_random(seed)
            self.source = {"random_weights": True, "seed": seed}
        else:
            check_state_dict(self, state_dict, what, cfg)
            self.load_state_dict(state_dict, strict=True)
        self.requires_grad_(False)  # a fixed function; gradients still flow to z
        self.eval()

        chunk = cfg["dim_z"] // NUM_CHUNKS
        self.groups = tuple(
            LatentGroup(f"chunk{k}", chunk, f"z[{k * chunk}:{(k + 1) * chunk}]", _chunk_description(k))
            for k in range(NUM_CHUNKS))
        self.latent_dim = cfg["dim_z"]
        self.prior = TruncatedNormal(0.0, 1.0, 2.0)
        self.image_shape = (3, cfg["resolution"], cfg["resolution"])

        self.amp = None if amp == "none" else amp
        self.channels_last = bool(channels_last)
        self.to(device)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        self._compiled = torch.compile(self.forward) if compile else None

    def _build(self, cfg: dict) -> None:
        ch, chunk = cfg["ch"], cfg["dim_z"] // NUM_CHUNKS
        cond_dim = cfg["shared_dim"] + chunk
        ins, outs = [16 * ch, 16 * ch, 8 * ch, 4 * ch, 2 * ch], [16 * ch, 8 * ch, 4 * ch, 2 * ch, ch]
        # _weight: skip nn.Embedding's own init, which would draw from the global RNG.
        self.shared = nn.Embedding(cfg["n_classes"], cfg["shared_dim"],
                                   _weight=torch.empty(cfg["n_classes"], cfg["shared_dim"]))
        self.linear = SNLinear(chunk, 16 * ch * 4 * 4)
        self.blocks = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(ins, outs)):
            stage = [GBlock(cin, cout, cond_dim)]
            if 8 * 2**i == 64:  # attention after the block whose output is 64x64
                stage.append(SelfAttention(cout))
            self.blocks.append(nn.ModuleList(stage))
        self.output_layer = nn.Sequential(OutputBatchNorm(ch), nn.ReLU(), SNConv2d(ch, 3, 3))

    @torch.no_grad()
    def _init_random(self, seed: int) -> None:
        """Seeded random weights (same seed, same model id); BN stats 0/1, gamma 0."""
        gen = torch.Generator().manual_seed(seed)
        self.shared.weight.copy_(torch.randn(self.shared.weight.shape, generator=gen))
        for m in self.modules():
            if isinstance(m, SpectralNormLayer):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in**0.5)
                m.u0.copy_(torch.randn(m.u0.shape, generator=gen))
                if m.bias is not None:
                    m.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The original generator: z (N, dim_z) -> image (N, 3, 128, 128) in (-1, 1)."""
        n = z.shape[0]
        chunks = z.split(self.config["dim_z"] // NUM_CHUNKS, dim=1)
        y = self.shared.weight[self.config["class_index"]].expand(n, -1)  # (N, 128)
        h = self.linear(chunks[0]).reshape(n, -1, 4, 4)  # (N, 16ch, 4, 4)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for stage, z_k in zip(self.blocks, chunks[1:]):
            h = stage[0](h, torch.cat([y, z_k], dim=1))  # embedding first, then the chunk
            for layer in stage[1:]:
                h = layer(h)
        return torch.tanh(self.output_layer(h))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        if code.ndim != 2 or code.shape[1] != self.latent_dim:
            raise ValueError(f"bigbigan expects codes of shape (B, {self.latent_dim}), got {tuple(code.shape)}")
        z = code.to(self.device, torch.float32)
        with amp_context(z.device, self.amp):  # no-op without amp: an outer autocast still applies
            img = (self._compiled or self.forward)(z)
        return ((img.float() + 1) / 2).clamp(0, 1)

    def default_policy_spec(self) -> dict:
        """The paper's best: chunk 0 (global layout) fixed, chunks 1-5 std 1.0, truncation 2."""
        groups = {"chunk0": "fixed"}
        groups.update({f"chunk{k}": {"std": 1.0, "truncation": 2.0} for k in range(1, NUM_CHUNKS)})
        return {"kind": "gaussian", "groups": groups}

    def default_policy_origin(self) -> str:
        return "the paper's best BigBiGAN setting (chunk0 fixed, chunks 1-5 std 1.0)"


def _chunk_description(k: int) -> str:
    if k == 0:
        return "first linear layer: the 4x4 starting feature map (global layout)"
    r = 2 * 2**k  # block k-1 maps r x r to 2r x 2r
    extra = "; self-attention follows it" if 2 * r == 64 else ""
    return f"residual block {k - 1} ({r}->{2 * r} px), via the gains and biases of its conditional batch norms{extra}"


def _resolve_config(overrides: Mapping) -> dict:
    unknown = sorted(set(overrides) - set(DEFAULT_CONFIG))
    if unknown:
        raise ConfigError(f"bigbigan: unknown config key(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_CONFIG)}")
    cfg = {**DEFAULT_CONFIG, **overrides}
    for key, value in cfg.items():
        lo, hi = (0, MAX_CONFIG["n_classes"] - 1) if key == "class_index" else (1, MAX_CONFIG[key])
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            kind = "an integer >= 0" if lo == 0 else "a positive integer"
            raise ConfigError(f"bigbigan: config {key} must be {kind} up to {hi:,}, got {brief(value)}")
    if cfg["resolution"] != 128:
        raise ConfigError(f"bigbigan: only the 128 px architecture is implemented, got resolution {cfg['resolution']}")
    if cfg["ch"] % 4:
        raise ConfigError(f"bigbigan: ch must be a multiple of 4 (attention uses 2*ch/8 channels), got {cfg['ch']}")
    if cfg["dim_z"] % NUM_CHUNKS:
        raise ConfigError(f"bigbigan: dim_z must split into {NUM_CHUNKS} equal chunks, got {cfg['dim_z']}")
    if cfg["class_index"] >= cfg["n_classes"]:
        raise ConfigError(f"bigbigan: class_index {cfg['class_index']} is not below n_classes {cfg['n_classes']}")
    return cfg


# Upper bounds: the real model (ch 96, dim_z 120, 1000 classes, shared_dim 128) fits; the model is
# allocated from these sizes before the weights are compared, so they bound what a file can ask for.
MAX_CONFIG = {"resolution": 1 << 16, "ch": 128, "dim_z": 1200, "n_classes": 10_000, "shared_dim": 1024}


def _sizes_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict:
    """Architecture sizes a file implies (only those it shows unambiguously)."""
    sizes = {}
    out = sd.get("output_layer.2.weight")
    if out is not None and out.ndim == 4:
        sizes["ch"] = out.shape[1]
    lin = sd.get("linear.weight")
    if lin is not None and lin.ndim == 2:
        sizes["dim_z"] = lin.shape[1] * NUM_CHUNKS
    shared = sd.get("shared.weight")
    if shared is not None and shared.ndim == 2:
        sizes["n_classes"], sizes["shared_dim"] = shared.shape
    return sizes


# --- reading weight files (code-free) -------------------------------------------

def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """A flat name -> tensor dict read without running code from the file (see :mod:`..weights`); its sha256."""
    state, _ = read_tensors(path, "BigBiGAN weights")
    return state, sha256_file(path)


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str, config: dict) -> None:
    """Raise ConfigError unless ``sd`` has exactly the model's keys, shapes and float tensors."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not any(k in sd for k in expected):
        prefix = next((k[: -len("linear.weight")] for k in sd if k.endswith(".linear.weight")), None)
        hint = (f"its keys seem to carry the prefix {prefix!r}; strip it" if prefix
                else "is it another model family?")
        raise ConfigError(f"{what} is not a BigBiGAN generator state dict: none of its {len(sd)} keys "
                          f"(e.g. {first_names(list(sd))}) is one (e.g. {first_names(list(expected))}); {hint}")
    check_names_shapes(sd, expected, what, f"the BigBiGAN generator with config {config}", noun="key")
