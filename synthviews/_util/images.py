"""Conversion of [0, 1] float images to uint8 arrays, grids and PNG bytes: the edge where pixels leave torch.

How a dataset's views are stored and read back is the format's (``store.format``)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., C, H, W) float in [0, 1] -> (..., H, W, C) uint8, rounding to nearest."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def grid(tiles: np.ndarray, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """(rows, cols, H, W, C) uint8 tiles -> one (H', W', C) image, ``pad`` pixels between tiles."""
    rows, cols, h, w, c = tiles.shape
    out = np.full((pad + rows * (h + pad), pad + cols * (w + pad), c), pad_value, dtype=np.uint8)
    for r in range(rows):
        for k in range(cols):
            y, x = pad + r * (h + pad), pad + k * (w + pad)
            out[y:y + h, x:x + w] = tiles[r, k]
    return out


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of an (H, W, C) uint8 array; deterministic (no timestamps or text chunks)."""
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()

