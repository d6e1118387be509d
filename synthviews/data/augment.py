"""Image-space augmentations T_x: the presets of the reference method, per sample, on batched tensors.

    from synthviews.data.augment import Augment
    aug = Augment("simclr", size=112)          # an nn.Module without parameters
    x = aug(images)                            # (B, C, H, W) float in [0, 1], any device -> (B, C, 112, 112)
    x = aug(images, seed=7)                    # the same seed gives the same output

Presets (every random parameter is drawn per sample):

- ``simclr``: RandomResizedCrop(size, scale=(0.2, 1.0), ratio=(3/4, 4/3)), horizontal flip (p=0.5),
  ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1) with p=0.8, RandomGrayscale(p=0.2),
  then ImageNet normalisation.
- ``no_color``: the same crop and flip, then normalisation. Meant for latent perturbation, which
  already varies colour.
- ``no_crop``: the largest centred square of the image (the whole image when it is square) resized to
  ``size``, then the flip, colour jitter and grayscale of ``simclr``, then normalisation. The resize comes
  first because it is cheaper on ``size`` pixels; the colour operations act pixel by pixel, so the order
  changes nothing but rounding.
- ``none``: a centred square covering ``crop_fraction`` of the shorter side (default 112/128 = 0.875,
  the usual ImageNet evaluation ratio), resized to ``size``, then normalisation. A 128 px input with
  ``size=112`` gives exactly the centre 112 x 112 pixels; a 256 px input gives the centre 224 px resized
  to 112. ``crop_fraction=1.0`` only resizes.

Crops scale with the input: the random crop's ``scale`` is a fraction of the input's area, the
``none`` crop a fraction of its shorter side, so inputs of any size work. Inputs whose shorter side is
more than twice ``size`` are first shrunk with antialiasing to a shorter side of ``2 * size`` (a
uniform rescale, so the crop fractions are unchanged) to avoid aliasing when a large crop is resized.

Semantics of the operations (torchvision's, as kornia's ``ColorJitter`` implements them):

- crop: as torchvision's RandomResizedCrop: up to 10 tries of (area fraction ~ U(scale), log aspect
  ratio ~ U(log 3/4, log 4/3)) with integer width and height; the first try that fits in the image is
  used, placed uniformly; if none fits, the centred crop of the largest allowed aspect ratio. Resampling
  is bilinear with the half-pixel convention, and the horizontal flip is folded into the same warp.
- colour jitter (applied to a sample with probability 0.8): brightness multiplies by b ~ U(0.6, 1.4),
  contrast blends with the grey mean by c ~ U(0.6, 1.4), saturation blends with the grey image by
  s ~ U(0.6, 1.4), hue shifts by h ~ U(-0.1, 0.1) turns; the four are applied in a random order drawn
  per sample (torchvision draws one order per call), clamping to [0, 1] after each.
- grayscale (probability 0.2): ITU-R 601 luma, repeated to 3 channels.
- normalisation: (x - mean) / std per channel (ImageNet statistics by default; ``normalize=False``
  returns [0, 1] images).

Grayscale inputs (C = 1) stay 1-channel: brightness and contrast apply; saturation, hue and grayscale
are no-ops on grey images and are skipped; a 3-value mean/std (the ImageNet default) is averaged to one
value (0.449, 0.226). Only 1- and 3-channel images are accepted. ``uint8`` input is scaled to float32 in
[0, 1]; float16/bfloat16 inputs are processed in float32 and returned in their own dtype.

Randomness: every parameter of a batch comes from a (B, 33) matrix of uniform numbers drawn on the
CPU, one row per sample, and moved to the images' device, so

- with ``seed`` given, the parameters are a pure function of (seed, row, image size): the same seed gives
  the same output, the parameters of sample b do not depend on the batch size, presets that share an
  operation share its parameters, and the parameters are the same on every device (pixels may differ
  by float rounding between devices). The draw uses a private ``torch.Generator``: the caller's global
  RNG state is not touched.
- with ``seeds`` (one per sample), row b is the row a batch of one with ``seed=seeds[b]`` draws: a batch
  of keyed samples (ShardViews' batched path) gets the parameters its samples get one by one.
- with ``seed=None``, the rows are drawn from torch's global CPU generator, so ``torch.manual_seed``
  (and the per-worker seeds of a DataLoader) make a run reproducible.

Pixel work runs on the images' device through kornia's functional operations
(``warp_affine``, ``kornia.enhance.adjust_*``, ``rgb_to_grayscale``, ``normalize``). kornia's
augmentation modules are not used because they draw from the global RNG through
``torch.distributions`` (no generator argument), on a device that follows ``module.to()``, and draw one
jitter order per batch.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import Callable, NamedTuple, Sequence

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
    normalize,
)
from kornia.geometry.transform import resize, warp_affine
from torch import Tensor

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("simclr", "no_color", "no_crop", "none")

CROP_SCALE = (0.2, 1.0)             # RandomResizedCrop area fraction
CROP_RATIO = (3 / 4, 4 / 3)         # RandomResizedCrop aspect ratio (width / height)
CROP_TRIES = 10
FLIP_P = 0.5
JITTER = (0.4, 0.4, 0.4, 0.1)       # brightness, contrast, saturation, hue (hue in turns)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
CENTER_FRACTION = 112 / 128         # `none`: the centre square covers this fraction of the shorter side
MAX_DOWNSCALE = 2                   # inputs larger than this x size are shrunk (antialiased) first

# Columns of the per-sample uniform matrix: fixed, so every preset reads the same numbers for an operation.
_AREA = slice(0, CROP_TRIES)
_LOG_RATIO = slice(CROP_TRIES, 2 * CROP_TRIES)
_OFFSET_Y, _OFFSET_X = 2 * CROP_TRIES, 2 * CROP_TRIES + 1
_FLIP = 2 * CROP_TRIES + 2
_JITTER_GATE = _FLIP + 1
_FACTORS = slice(_JITTER_GATE + 1, _JITTER_GATE + 5)
_ORDER = slice(_JITTER_GATE + 5, _JITTER_GATE + 9)
_GRAY_GATE = _JITTER_GATE + 9
NUM_UNIFORMS = _GRAY_GATE + 1       # 33

_RANDOM_CROP = {"simclr", "no_color"}
_COLOR = {"simclr", "no_crop"}


class Params(NamedTuple):
    """The random parameters of one batch, on the CPU, one row per sample."""

    boxes: Tensor    # (B, 4) int64: x0, y0, width, height of the crop in the (possibly pre-shrunk) input
    flip: Tensor     # (B,) bool: mirror horizontally
    jitter: Tensor   # (B,) bool: apply the colour jitter
    factors: Tensor  # (B, 4) float64: brightness, contrast, saturation factors and hue shift in turns
    order: Tensor    # (B, 4) int64: per sample, a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue)
    gray: Tensor     # (B,) bool: convert to grayscale


class Augment(torch.nn.Module):
    """A T_x preset (see the module docstring) applied per sample to batched images on any device."""

    def __init__(self, preset: str = "simclr", size: int = 112, normalize: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *,
                 crop_fraction: float = CENTER_FRACTION):
        super().__init__()
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(PRESETS)} "
                              f"(or pass a callable, e.g. a torchvision transform)")
        if isinstance(size, bool) or not isinstance(size, Integral) or size < 1:
            raise ConfigError(f"augmentation size must be a positive integer (output side in pixels), got {size!r}")
        if isinstance(crop_fraction, bool) or not isinstance(crop_fraction, (int, float)) \
                or not 0 < crop_fraction <= 1:
            raise ConfigError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
        self.preset, self.size, self.normalize = preset, int(size), bool(normalize)
        self.crop_fraction = float(crop_fraction)
        self.mean, self.std = _stats(mean, "mean"), _stats(std, "std")
        if len(self.mean) != len(self.std):
            raise ConfigError(f"mean and std must have the same length, got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be > 0, got {self.std}")

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, size={self.size}, normalize={self.normalize}"

    def forward(self, images: Tensor, seed: int | None = None, *, seeds: Sequence[int] | None = None) -> Tensor:
        """images (B, C, H, W) float in [0, 1] (or uint8) on any device -> (B, C, size, size); each sample gets
        its own random parameters. With ``seed`` given, the random parameters are a pure function of the seed
        (same seed, same output), without disturbing the caller's global RNG state. With ``seeds`` (one per
        sample), sample b gets exactly the parameters that ``seed=seeds[b]`` gives a batch of one: a batch
        of keyed samples is augmented as its samples would be one by one, whatever the batch holds."""
        x, out_dtype = _as_float(images)
        batch, channels = x.shape[:2]
        if seeds is not None and len(seeds) != batch:
            raise ConfigError(f"augmentation seeds: {len(seeds)} for a batch of {batch} images; give one per image")
        if batch == 0:
            return x.new_empty((0, channels, self.size, self.size)).to(out_dtype)
        x = self._shrink(x)
        height, width = x.shape[-2:]
        params = None if self.preset == "none" else self.sample_params(batch, height, width, seed, seeds=seeds)

        x = self._crop(x, params)
        if self.preset in _COLOR:
            x = self._color(x, params)
        if self.normalize:
            mean, std = self._stats_for(channels)
            x = normalize(x, torch.tensor(mean, device=x.device, dtype=x.dtype),
                          torch.tensor(std, device=x.device, dtype=x.dtype))
        return x.to(out_dtype)

    def sample_params(self, batch: int, height: int, width: int, seed: int | None = None, *,
                      seeds: Sequence[int] | None = None) -> Params:
        """The random parameters for ``batch`` images of ``height`` x ``width`` (after any pre-shrink);
        ``seeds``: one seed per row, row b as ``seed=seeds[b]`` gives a batch of one."""
        if seeds is not None:
            if seed is not None:
                raise ConfigError("give an augmentation seed or per-sample seeds, not both")
            if len(seeds) != batch:
                raise ConfigError(f"augmentation seeds: {len(seeds)} for a batch of {batch}; give one per image")
            u = _keyed_uniforms(seeds)
        else:
            generator = None
            if seed is not None:
                generator = torch.Generator(device="cpu")
                generator.manual_seed(_check_seed(seed))
            u = torch.rand((batch, NUM_UNIFORMS), generator=generator, dtype=torch.float64)

        if self.preset in _RANDOM_CROP:
            boxes = _random_resized_crop(u, height, width)
        else:  # no_crop: the largest centred square
            side = min(height, width)
            boxes = torch.tensor([(width - side) // 2, (height - side) // 2, side, side]).expand(batch, 4)
        low = torch.tensor([1 - JITTER[0], 1 - JITTER[1], 1 - JITTER[2], -JITTER[3]], dtype=torch.float64)
        high = torch.tensor([1 + JITTER[0], 1 + JITTER[1], 1 + JITTER[2], JITTER[3]], dtype=torch.float64)
        return Params(boxes=boxes.clone(), flip=u[:, _FLIP] < FLIP_P, jitter=u[:, _JITTER_GATE] < JITTER_P,
                      factors=low + (high - low) * u[:, _FACTORS], order=u[:, _ORDER].argsort(dim=1),
                      gray=u[:, _GRAY_GATE] < GRAYSCALE_P)

    # -- steps ---------------------------------------------------------------------------------------------

    def _shrink(self, x: Tensor) -> Tensor:
        short = min(x.shape[-2:])
        if short <= MAX_DOWNSCALE * self.size:
            return x
        return resize(x, MAX_DOWNSCALE * self.size, side="short", antialias=True)

    def _crop(self, x: Tensor, params: Params | None) -> Tensor:
        """Crop every sample to its box, mirror it if asked, and resize to size x size: one affine warp."""
        batch, _, height, width = x.shape
        if params is None:  # none: the centred square covering crop_fraction of the shorter side
            side = max(1, round(min(height, width) * self.crop_fraction))
            if side == self.size:  # an exact pixel crop, no resampling
                y0, x0 = (height - side) // 2, (width - side) // 2
                return x[..., y0:y0 + side, x0:x0 + side].clone(memory_format=torch.contiguous_format)
            boxes = torch.tensor([(width - side) // 2, (height - side) // 2, side, side]).expand(batch, 4)
            flip = torch.zeros(batch, dtype=torch.bool)
        else:
            boxes, flip = params.boxes, params.flip
        matrix = _crop_matrix(boxes.double(), flip, self.size)
        return warp_affine(x, matrix.to(device=x.device, dtype=x.dtype), (self.size, self.size), mode="bilinear",
                           padding_mode="border", align_corners=True)

    def _color(self, x: Tensor, params: Params) -> Tensor:
        """Colour jitter in a per-sample random order, then random grayscale."""
        rgb = x.shape[1] == 3
        jitter = params.jitter
        ops = [_brightness, _contrast] + ([_saturation, _hue] if rgb else [])
        x = x.clamp(0, 1) if bool(jitter.any()) else x
        for slot in range(4):
            for op_index, op in enumerate(ops):
                rows = torch.nonzero(jitter & (params.order[:, slot] == op_index)).flatten()
                if rows.numel():
                    factor = params.factors[rows, op_index]
                    x = _on_rows(x, rows, lambda sub, f=factor, op=op: op(sub, f.to(sub.device, sub.dtype)))
        if rgb:
            rows = torch.nonzero(params.gray).flatten()
            if rows.numel():
                x = _on_rows(x, rows, lambda sub: rgb_to_grayscale(sub).expand_as(sub))
        return x

    def _stats_for(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if len(self.mean) == channels:
            return self.mean, self.std
        if len(self.mean) == 1:
            return self.mean * channels, self.std * channels
        if channels == 1:  # a 3-value default on grey images: one averaged value
            return (sum(self.mean) / len(self.mean),), (sum(self.std) / len(self.std),)
        raise ConfigError(f"normalisation mean/std have {len(self.mean)} values but the images have "
                          f"{channels} channels; pass {channels} values (or 1)")


def make_augment(t_x: str | Callable | None, **kwargs) -> Callable[[Tensor], Tensor]:
    """A preset name -> :class:`Augment` (``kwargs`` go to it); any callable (e.g. torchvision transforms v2)
    is returned as is; None -> identity (note: the preset ``"none"`` still center-crops and normalises)."""
    if isinstance(t_x, str):
        return Augment(t_x, **kwargs)
    if kwargs:
        raise ConfigError(f"augmentation options {sorted(kwargs)} only apply to a preset name "
                          f"({', '.join(PRESETS)}), not to {type(t_x).__name__}")
    if t_x is None:
        return identity
    if callable(t_x):
        return t_x
    raise ConfigError(f"T_x must be a preset name ({', '.join(PRESETS)}), a callable or None, got {t_x!r}")


def identity(images: Tensor, seed: int | None = None) -> Tensor:
    """The T_x used for ``t_x=None``: images unchanged."""
    return images


# -- helpers -------------------------------------------------------------------------------------------------

def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise ConfigError(f"augmentation seed must be an integer or None, got {seed!r}")
    return int(seed) % 2**64


def _keyed_uniforms(seeds: Sequence[int]) -> Tensor:
    """(B, NUM_UNIFORMS) float64: row b is the first row ``torch.rand`` draws from a generator seeded
    with ``seeds[b]``, i.e. what a batch of one with ``seed=seeds[b]`` draws."""
    generator = torch.Generator(device="cpu")
    u = torch.empty((len(seeds), NUM_UNIFORMS), dtype=torch.float64)
    for row, seed in enumerate(seeds):
        generator.manual_seed(_check_seed(seed))
        torch.rand((1, NUM_UNIFORMS), generator=generator, dtype=torch.float64, out=u[row:row + 1])
    return u


def _stats(values, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in (values if isinstance(values, Sequence) else list(values)))
    except (TypeError, ValueError):
        raise ConfigError(f"normalisation {what} must be a sequence of numbers, got {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"normalisation {what} must be finite numbers (one per channel), got {values!r}")
    return out


def _as_float(images: Tensor) -> tuple[Tensor, torch.dtype]:
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels in dimension 1 of (B, C, H, W), got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255, torch.float32
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1] (or uint8), got {images.dtype}")
    if images.dtype in (torch.float16, torch.bfloat16):
        return images.float(), images.dtype
    return images, images.dtype


def _random_resized_crop(u: Tensor, height: int, width: int) -> Tensor:
    """(B, 4) integer boxes x0, y0, w, h, as torchvision's RandomResizedCrop.get_params, vectorised."""
    area = height * width
    target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[:, _AREA])            # (B, tries)
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, _LOG_RATIO])
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)                      # index of the first try that fits
    ok = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)

    # fallback (no try fits): the centred crop of the closest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        fw, fh = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        fw, fh = round(height * CROP_RATIO[1]), height
    else:
        fw, fh = width, height
    w, h = torch.where(ok, w, fw), torch.where(ok, h, fh)
    y0 = torch.floor(u[:, _OFFSET_Y] * (height - h + 1)).long().clamp(max=height - h)
    x0 = torch.floor(u[:, _OFFSET_X] * (width - w + 1)).long().clamp(max=width - w)
    y0 = torch.where(ok, y0, (height - h) // 2)
    x0 = torch.where(ok, x0, (width - w) // 2)
    return torch.stack([x0, y0, w, h], dim=1)


def _crop_matrix(boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """(B, 2, 3) source -> destination pixel transforms (pixel centres at integers, as kornia's
    align_corners=True): the box [x0, x0 + w) x [y0, y0 + h) maps onto [0, size) x [0, size) with the
    half-pixel convention, mirrored horizontally where ``flip``."""
    x0, y0, w, h = boxes.unbind(1)
    sx, sy = size / w, size / h
    tx = (0.5 - x0) * sx - 0.5            # u = (x - x0 + 0.5) * size / w - 0.5
    ty = (0.5 - y0) * sy - 0.5
    sign = torch.where(flip, -1.0, 1.0).to(boxes.dtype)
    tx = torch.where(flip, size - 1 - tx, tx)  # u' = size - 1 - u
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sign * sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)


def _on_rows(x: Tensor, rows: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``x`` with ``fn`` applied to the samples ``rows`` (a CPU index tensor)."""
    if rows.numel() == x.shape[0]:
        return fn(x)
    index = rows.to(x.device, non_blocking=True)
    return x.index_copy(0, index, fn(x.index_select(0, index)))


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return adjust_brightness_accumulative(x, factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    return adjust_contrast_with_mean_subtraction(x, factor)


def _saturation(x: Tensor, factor: Tensor) -> Tensor:
    return adjust_saturation_with_gray_subtraction(x, factor)


def _hue(x: Tensor, turns: Tensor) -> Tensor:
    return adjust_hue(x, turns * (2 * math.pi)).clamp(0, 1)


__all__ = ["Augment", "make_augment", "identity", "Params", "PRESETS", "IMAGENET_MEAN", "IMAGENET_STD"]
