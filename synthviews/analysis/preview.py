"""A PNG grid of anchors and their positives: one row per sample, the anchor first."""

from __future__ import annotations

from pathlib import Path

from .._util.checks import MAX_INDEX, MAX_PREVIEW_SAMPLES, MAX_VIEWS, check_int
from .._util.files import write_atomic
from .._util.images import grid, png_bytes, to_uint8
from ..errors import ConfigError
from ..views import ViewSampler


def preview(sampler: ViewSampler, out: str | Path, samples: int = 8, start: int = 0) -> Path:
    """Write the grid for sample indices ``start .. start+samples-1`` to ``out`` (atomically)."""
    # One grid is held in memory: samples x (1 + views) images; bound both.
    check_int(samples, "preview samples", 1, MAX_PREVIEW_SAMPLES)
    check_int(start, "preview start index", 0, MAX_INDEX)
    check_int(sampler.views, "preview views (positives per anchor)", 1, MAX_VIEWS)
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"preview output {out} must end in .png")
    if out.is_dir():
        raise ConfigError(f"preview output {out} is a directory; give a file name ending in .png")
    batch = sampler.sample(range(start, start + samples))
    write_atomic(out, png_bytes(grid(to_uint8(batch.images))))
    return out

