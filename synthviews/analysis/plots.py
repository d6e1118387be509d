"""Line plots as PNG with PIL alone, so the analysis needs no plotting library."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .._util.files import write_atomic
from .._util.images import png_bytes

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + k * step, 10) for k in range(int((hi - first) / step + 1e-9) + 1)]


def line_plot(path: str | Path, series: list[tuple[str, list, list, list | None]], title: str, xlabel: str,
              ylabel: str, hline: tuple[float, str] | None = None, logx: bool = False,
              size: tuple[int, int] = (760, 500)) -> Path:
    """Write a PNG of ``series`` = [(label, xs, ys, y error bars or None)], with an optional labelled
    horizontal line ``hline`` = (y, label) and a log-scaled x axis if ``logx``."""
    k = 2  # drawn at twice the size, then downsampled: smooth lines without an antialiasing renderer
    width, height = size[0] * k, size[1] * k
    left, right, top, bottom = 70 * k, 150 * k, 40 * k, 55 * k
    font = ImageFont.load_default(size=13 * k)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    fx = (lambda v: math.log10(v)) if logx else (lambda v: v)
    xs = [fx(x) for _, sx, _, _ in series for x in sx]
    ys = [y + s * (e or 0) for _, _, sy, se in series for y, e in zip(sy, se or [0] * len(sy)) for s in (-1, 1)]
    if hline is not None:
        ys.append(hline[0])
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad_x, pad_y = 0.05 * (x1 - x0 or 1), 0.08 * (y1 - y0 or 1)
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y

    def px(x, y):
        return (left + (fx(x) - x0) / (x1 - x0) * (width - left - right),
                top + (y1 - y) / (y1 - y0) * (height - top - bottom))

    # Axes, grid and ticks.
    draw.rectangle([left, top, width - right, height - bottom], outline="black", width=k)
    if logx:
        xticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 20) if x0 <= math.log10(t) <= x1]
    else:
        xticks = nice_ticks(x0, x1)
    for t in xticks:
        x, _ = px(t, y0)
        if left <= x <= width - right:
            draw.line([x, top, x, height - bottom], fill="#e6e6e6")
            draw.text((x, height - bottom + 6 * k), f"{t:g}", fill="black", font=font, anchor="mt")
    for t in nice_ticks(y0, y1):
        _, y = px(10 ** x0 if logx else x0, t)
        if top <= y <= height - bottom:
            draw.line([left, y, width - right, y], fill="#e6e6e6")
            draw.text((left - 6 * k, y), f"{t:g}", fill="black", font=font, anchor="rm")
    draw.text(((left + width - right) / 2, 12 * k), title, fill="black", font=font, anchor="mt")
    draw.text(((left + width - right) / 2, height - 18 * k), xlabel, fill="black", font=font, anchor="mt")
    draw.text((8 * k, top - 22 * k), ylabel, fill="black", font=font)

    if hline is not None:
        _, y = px(10 ** x0 if logx else x0, hline[0])
        for x in range(left, width - right, 12 * k):
            draw.line([x, y, min(x + 6 * k, width - right), y], fill="black", width=k)
        draw.text((left + 6 * k, y - 3 * k), hline[1], fill="black", font=font, anchor="lb")

    # Series: lines, markers, error bars, legend.
    for i, (label, sx, sy, se) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        points = [px(x, y) for x, y in zip(sx, sy)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2 * k, joint="curve")
        for (x, y), e in zip(points, se or [None] * len(points)):
            if e is not None and math.isfinite(e):
                _, ya = px(sx[0], sy[0] - e)  # error bar length in pixels does not depend on x
                _, yb = px(sx[0], sy[0] + e)
                half = (ya - yb) / 2
                draw.line([x, y - half, x, y + half], fill=color, width=k)
                draw.line([x - 3 * k, y - half, x + 3 * k, y - half], fill=color, width=k)
                draw.line([x - 3 * k, y + half, x + 3 * k, y + half], fill=color, width=k)
            draw.ellipse([x - 3 * k, y - 3 * k, x + 3 * k, y + 3 * k], fill=color)
        ly = top + (10 + 20 * i) * k
        draw.line([width - right + 8 * k, ly, width - right + 28 * k, ly], fill=color, width=3 * k)
        draw.text((width - right + 34 * k, ly), label, fill="black", font=font, anchor="lm")

    path = Path(path)
    write_atomic(path, png_bytes(np.asarray(img.resize(size, Image.LANCZOS))))
    return path
