"""``toy``: a procedural MLVGM whose latent groups have known meanings.

It draws one soft-edged, striped superellipse on a plain background. Every
operation is elementwise per sample, so it is differentiable, fast on CPU
and bit-identical whatever the batch size. Its ground truth (what each group
does) is the test bench for the MI analysis:

===========  ====  ============================================================
group        size  effect on the image
===========  ====  ============================================================
``shape``       3  the "class": roundness (diamond .. circle .. square),
                   aspect ratio and size of the object, and with them its
                   base position and base palette. The semantic group.
``pose``        3  a bounded offset of the position (x, y), and the
                   in-plane rotation of the object.
``color``       6  bounded shifts of the object RGB (3) and background
                   RGB (3) around the shape's palette.
``texture``     4  fine stripes on the object: frequency, direction, phase,
                   contrast. Small pixel change, mostly high frequency.
``inert``       4  nothing: no pixel depends on it (MI stays at its ceiling).
===========  ====  ============================================================

Each group is a consecutive chunk of z (20-d, prior N(0, 1) cut at +-2 std);
a perturbation adds noise to the chunk, as for BigBiGAN.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..latents import LatentGroup, TruncatedNormal
from ._registry import register_model
from .base import MLVGM, ChunkedLatents

_GROUPS = (
    ("shape", 3, "the class: form, aspect, size, base position and palette"),
    ("pose", 3, "offset of the position (x, y) and rotation"),
    ("color", 6, "shifts of the object and background RGB"),
    ("texture", 4, "stripe frequency, direction, phase and contrast on the object"),
    ("inert", 4, "no effect on any pixel"),
)


@register_model("toy")
class ToyModel(ChunkedLatents, MLVGM):
    """Procedural test generator; ``resolution`` is the square image size."""

    family = "toy"
    license = "mit"
    VERSION = 2  # bump when the rendering changes: it is part of the model id

    def __init__(self, resolution: int = 64, edge_sharpness: float = 12.0):
        super().__init__()
        if isinstance(resolution, bool) or not isinstance(resolution, int) or not 8 <= resolution <= 4096:
            raise ConfigError(f"toy model: resolution must be an integer in [8, 4096], got {resolution!r}")
        if not isinstance(edge_sharpness, (int, float)) or not edge_sharpness > 0:
            raise ConfigError(f"toy model: edge_sharpness must be > 0, got {edge_sharpness!r}")
        start = 0
        groups = []
        for name, size, description in _GROUPS:
            groups.append(LatentGroup(name, size, f"z[{start}:{start + size}]", description))
            start += size
        self.groups = tuple(groups)
        self.latent_dim = start
        self.prior = TruncatedNormal(0.0, 1.0, 2.0)
        self.image_shape = (3, resolution, resolution)
        self.edge_sharpness = float(edge_sharpness)
        self.config = {"resolution": resolution, "edge_sharpness": self.edge_sharpness, "version": self.VERSION}
        # Pixel-centre coordinates in [-1, 1]; a buffer so .to(device) moves it.
        axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
        self.register_buffer("grid_y", axis.view(1, 1, resolution, 1), persistent=False)
        self.register_buffer("grid_x", axis.view(1, 1, 1, resolution), persistent=False)

    def default_policy_origin(self) -> str:
        return "set by hand from the toy's known ground truth (shape is the class)"

    def default_policy_spec(self) -> dict:
        """Keep the semantic ``shape`` fixed; vary every nuisance group."""
        return {
            "kind": "gaussian",
            "groups": {
                "shape": "fixed",
                "pose": {"std": 0.5, "truncation": 2.0},
                "color": {"std": 0.5, "truncation": 2.0},
                "texture": {"std": 1.0, "truncation": 2.0},
                "inert": {"std": 1.0, "truncation": 2.0},
            },
        }

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        if code.ndim != 2 or code.shape[1] != self.latent_dim:
            raise ValueError(f"toy model expects codes of shape (B, {self.latent_dim}), got {tuple(code.shape)}")
        z = code.to(self.grid_x.device, torch.float32)[:, :, None, None]  # (B, 20, 1, 1)
        shape, pose, color, texture = z[:, 0:3], z[:, 3:6], z[:, 6:12], z[:, 12:16]  # z[:, 16:20] is inert

        # Position: a base set by the shape ("class") plus a bounded pose offset; rotation by 2*atan(t).
        s0, s1, s2 = shape[:, 0:1], shape[:, 1:2], shape[:, 2:3]
        cx = 0.3 * _squash(s0 + s2) + 0.3 * _squash(pose[:, 0:1])
        cy = 0.3 * _squash(s1 - s0) + 0.3 * _squash(pose[:, 1:2])
        cos, sin = _rotation(_squash(pose[:, 2:3]))
        dx, dy = self.grid_x - cx, self.grid_y - cy  # (B, 1, H, W)

        # Shape: aspect ratio, size, and a blend diamond (L1) .. circle (L2) .. square (Linf).
        a = 0.4 * _squash(shape[:, 1:2])
        aspect = (1 + a) / (1 - a)
        size = 0.45 + 0.2 * _squash(shape[:, 2:3])
        u = (cos * dx + sin * dy) / (size * aspect)
        v = (cos * dy - sin * dx) * aspect / size
        l1, l2, linf = u.abs() + v.abs(), (u * u + v * v).sqrt(), torch.maximum(u.abs(), v.abs())
        r = _squash(2 * shape[:, 0:1])
        radius = l2 + (-r).clamp(min=0) * (l1 - l2) + r.clamp(min=0) * (linf - l2)
        edge = ((1 - radius) * self.edge_sharpness + 0.5).clamp(0, 1)
        mask = edge * edge * (3 - 2 * edge)  # smoothstep: soft, differentiable edge

        # Texture: periodic C1 stripes 16 s^2 (1-s)^2 in the object's own frame.
        freq = 3 + 2.5 * (1 + _squash(texture[:, 0:1]))
        dcos, dsin = _rotation(_squash(texture[:, 1:2]))
        w = freq * (dcos * u + dsin * v) / 2 + _squash(texture[:, 2:3])
        s = w - w.floor()
        wave = 16 * (s * s) * ((1 - s) * (1 - s))
        stripes = 1 - 0.2 * (1 + _squash(texture[:, 3:4])) * wave  # in (0.6, 1]

        # Colours: a base palette set by the shape, shifted within bounds by the colour group.
        foreground_base = torch.cat([s0, s1, s2], dim=1)
        background_base = 0.7 * torch.cat([s2 - s1, s0 + s1, -s2], dim=1)
        foreground = (0.5 + 0.5 * _squash(1.5 * (foreground_base + 0.4 * _squash(color[:, 0:3])))) * stripes
        background = 0.5 + 0.5 * _squash(1.5 * (background_base + 0.4 * _squash(color[:, 3:6])))  # (B, 3, 1, 1)
        return background + (foreground - background) * mask


# Only correctly rounded operations (+ - * / sqrt, abs, floor, clamp) appear in
# decode: unlike exp/sin/tanh, their SIMD and scalar code paths agree bit for
# bit, so an image never depends on its position in the batch or the batch size.

def _squash(x: torch.Tensor) -> torch.Tensor:
    """Softsign: R -> (-1, 1), smooth and monotone."""
    return x / (1 + x.abs())


def _rotation(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of the angle 2*atan(t), by the rational parametrisation."""
    t2 = t * t
    return (1 - t2) / (1 + t2), (2 * t) / (1 + t2)
