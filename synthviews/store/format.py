"""Deterministic encoding of one sample's views and metadata into WebDataset fields.

We encode image bytes ourselves: webdataset's default JPEG quality is 100,
and doing it here keeps the bytes a pure function of the pixels.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from ..errors import ConfigError

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
DEFAULT_QUALITY = {"jpg": 95, "webp": 90, "png": None}


def check_format(fmt: str, quality: int | None) -> int | None:
    """Validate (format, quality); return the quality to use (None for PNG, which is lossless)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "png":
        if quality is not None:
            raise ConfigError("--quality does not apply to png (lossless); leave it out")
        return None
    if quality is None:
        return DEFAULT_QUALITY[fmt]
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"quality must be an integer in [1, 100], got {quality!r}")
    return quality


def encode_image(array: np.ndarray, fmt: str, quality: int | None) -> bytes:
    """(H, W, C) uint8 -> image file bytes; same pixels, same bytes.

    WebP cannot store grey: a 1-channel view is written as RGB with R = G = B
    (see ``images.stored_channels``; readers convert it back).
    """
    if fmt == "webp" and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buf = io.BytesIO()
    if fmt == "jpg":
        image.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=quality, method=4)
    else:
        image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """.npy bytes (no pickle), readable with ``np.load(..., allow_pickle=False)``."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def sample_key(index: int) -> str:
    return f"{index:09d}"


def encode_sample(index: int, views: np.ndarray, meta: dict, fmt: str, quality: int | None,
                  latents: np.ndarray | None = None) -> dict:
    """The WebDataset sample for one anchor: ``view0.{fmt}`` (anchor) ... ``view{K}.{fmt}``, ``json``,
    and ``latents.npy`` if given. ``views`` is (1+K, H, W, C) uint8."""
    sample = {"__key__": sample_key(index)}
    for v, array in enumerate(views):
        sample[f"view{v}.{fmt}"] = encode_image(array, fmt, quality)
    try:  # a huge delta (finite weights, huge outputs) must not become invalid JSON
        sample["json"] = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise ConfigError(f"sample {index}: a perturbation size is not finite (NaN or infinite delta); "
                          "check the model's outputs and the policy's stds") from None
    if latents is not None:
        sample["latents.npy"] = npy_bytes(latents)
    return sample
