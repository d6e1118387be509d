"""A PNG grid of anchors and their positives: one row per sample, the anchor first."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .files import write_atomic
from .images import grid, png_bytes, to_uint8
from .views import ViewSampler


def preview(sampler: ViewSampler, out: str | Path, samples: int = 8, start: int = 0) -> Path:
    """Write the grid for sample indices ``start .. start+samples-1`` to ``out`` (atomically)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"samples must be an integer >= 1, got {samples!r}")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"preview output {out} must end in .png")
    if out.is_dir():
        raise ConfigError(f"preview output {out} is a directory; give a file name ending in .png")
    batch = sampler.sample(range(start, start + samples))
    write_atomic(out, png_bytes(grid(to_uint8(batch.images))))
    return out

