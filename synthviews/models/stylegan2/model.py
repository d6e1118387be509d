"""``stylegan2``: a StyleGAN2 generator as an MLVGM: W+ layer ranges are its latent groups.

Licence: the pretrained StyleGAN2 weights are distributed under the NVIDIA
Source Code License (non-commercial use only),
https://nvlabs.github.io/stylegan2/license.html. Data made from them should
say ``license: other`` with that link, which is what :class:`StyleGAN2`
reports.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F

from ..._util.files import sha256_file
from ...errors import ConfigError
from ...latents import LatentGroup, TruncatedNormal
from .._registry import register_model
from ..base import GENERIC_POLICY_ORIGIN, MLVGM, parse_ranges
from .checkpoint import load_checkpoint, load_config
from .networks import LICENSE_URL, Generator, load_weights


def parse_groups(groups, num_ws: int) -> list[tuple[int, int]]:
    """W+ layer ranges [start, end) from ``groups``: an int n or "n" (n contiguous ranges,
    as equal as possible), "layers" (one per layer), "0_2,2_8,..." or [[0, 2], [2, 8], ...]."""
    if groups == "layers":
        return [(k, k + 1) for k in range(num_ws)]
    return parse_ranges(groups, num_ws, "StyleGAN2", "W+ layer", "a number of groups (e.g. 4), 'layers', a string "
                        "like '0_4,4_8,...' or a list of [start, end) pairs")


def _row_resolutions(row: int, img_resolution: int) -> tuple[int, int]:
    """Lowest and highest resolution whose layers read W+ row ``row``.

    Even rows feed conv1 of one block; an odd row feeds a block's ToRGB and the
    next block's conv0 (the synthesis network hands that row on).
    """
    if row == 0:
        return 4, 4
    if row % 2:  # ToRGB of 2^k and conv0 of 2^(k+1), k = (row + 3) / 2
        lo = 2 ** ((row + 3) // 2)
        return lo, min(2 * lo, img_resolution)
    res = 2 ** ((row + 4) // 2)  # conv1 of 2^k, k = (row + 4) / 2
    return res, res


class PostProcess:
    """Synthesis output (N, C, H, W), nominally [-1, 1] -> float32 [0, 1]: optional crop,
    optional bilinear resize, then the reference code's ``(x * 127.5 + 128).clamp(0, 255) / 255``.

    ``crop``: an int (centre square) or [top, left, height, width]. ``resolution``:
    an int (square) or [height, width]. The resize is bilinear with
    align_corners=True and no antialiasing (kornia's Resize defaults, which the
    reference code used). ``PostProcess.cars()`` is the LSUN Cars recipe:
    centre crop 384 of the padded 512 image, resize to 128.
    """

    def __init__(self, crop=None, resolution=None):
        self.crop, self.resolution = crop, resolution

    @classmethod
    def cars(cls) -> "PostProcess":
        return cls(crop=384, resolution=128)

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """Validate against the synthesis size and return the (C, H, W) of the result."""
        if self.crop is not None:
            top, left, height2, width2 = self._box(height, width)
            if top < 0 or left < 0 or top + height2 > height or left + width2 > width:
                raise ConfigError(f"StyleGAN2 crop {self.crop!r} does not fit in the {height}x{width} image")
            height, width = height2, width2
        if self.resolution is not None:
            height, width = self._size()
        return channels, height, width

    def _box(self, height: int, width: int) -> tuple[int, int, int, int]:
        c = self.crop
        if isinstance(c, int) and not isinstance(c, bool) and c > 0:
            return (height - c) // 2, (width - c) // 2, c, c
        if isinstance(c, (list, tuple)) and len(c) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in c) \
                and c[2] > 0 and c[3] > 0:
            return tuple(c)
        raise ConfigError(f"StyleGAN2 crop must be a positive int (centre square) or [top, left, height, width], got {c!r}")

    def _size(self) -> tuple[int, int]:
        r = self.resolution
        if isinstance(r, int) and not isinstance(r, bool) and r > 0:
            return r, r
        if isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in r):
            return tuple(r)
        raise ConfigError(f"StyleGAN2 resolution must be a positive int or [height, width], got {r!r}")

    def crop_resize(self, img: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:
            top, left, h, w = self._box(img.shape[2], img.shape[3])
            img = img[:, :, top:top + h, left:left + w]
        if self.resolution is not None:
            img = F.interpolate(img, size=self._size(), mode="bilinear", align_corners=True, antialias=False)
        return img

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return (self.crop_resize(img.to(torch.float32)) * 127.5 + 128).clamp(0, 255) / 255


@register_model("stylegan2")
class StyleGAN2(MLVGM):
    """StyleGAN2 as an MLVGM: latent groups are contiguous ranges of W+ layers.

    The anchor is z (z_dim); a group is perturbed by mapping z + noise to W
    and using that W only on the group's layers (``compose``). Codes are
    ws (B, num_ws, w_dim); delta is measured in W (``group_code``).

    Options:

    - ``path``: a stylegan2-ada-pytorch snapshot ``.pkl``, a legacy TensorFlow
      StyleGAN2 ``.pkl`` (read without running any code from the file), a
      state dict ``.pt``/``.pth`` or a ``.safetensors`` file (both read by
      :func:`synthviews.models.weights.read_tensors`). ``.pt``/``.safetensors`` need ``config``: given
      here, else a ``stylegan2_config`` JSON entry in the safetensors
      metadata, else a sibling file with the same name and suffix ``.json``,
      ``.yaml`` or ``.yml`` (``car.pt`` -> ``car.json``).
    - ``config``: generator constructor kwargs (dict or JSON/YAML path; a
      compat ``*_config.json`` with ``constructor_kwargs`` works as is).
      With ``path=None`` and ``weights=None`` the weights are random (seed 0),
      for tests.
    - ``weights``: an in-memory state dict instead of ``path``.
    - ``groups``: number of equal W+ ranges (default 4: ``0_4, 4_8, 8_12,
      12_16`` at 512 px), ``"layers"``, ``"0_2,2_8,..."`` or ``[[0, 2], ...]``.
    - ``truncation_psi`` / ``truncation_cutoff``: W truncation toward w_avg.
    - ``noise_mode``: ``"const"`` (default, as the paper) or ``"none"``;
      ``"random"`` is refused (views must be a pure function of the seed).
    - ``prior_truncation``: anchors z ~ N(0, 1) cut at +-t. None by default;
      the paper uses 0.9 for LSUN Cars.
    - ``postprocess="cars"``: the paper's LSUN Cars recipe (512 px model
      only): centre crop 384, resize 128. Generic: ``crop``, ``resolution``.
    - ``force_fp32``: run the fp16 blocks of ADA-trained models in fp32
      (default True; fp16 only pays off on CUDA).
    """

    family = "stylegan2"
    license = "other"
    license_link = LICENSE_URL

    def __init__(self, path=None, config=None, weights=None, groups="4", truncation_psi: float = 1.0,
                 truncation_cutoff: int | None = None, noise_mode: str = "const", prior_truncation=None,
                 postprocess: str | None = None, resolution=None, crop=None, force_fp32: bool = True,
                 device=None):
        super().__init__()

        # Cheap checks first, so a typo does not cost a checkpoint load.
        if isinstance(truncation_psi, bool) or not isinstance(truncation_psi, (int, float)) or not math.isfinite(truncation_psi):
            raise ConfigError(f"StyleGAN2: truncation_psi must be a number, got {truncation_psi!r}")
        if noise_mode not in ("const", "none"):
            raise ConfigError(f"StyleGAN2: noise_mode must be 'const' or 'none', got {noise_mode!r} "
                              "('random' would make views depend on more than the seed)")
        if postprocess not in (None, "cars"):
            raise ConfigError(f"StyleGAN2: postprocess must be None or 'cars', got {postprocess!r}")
        if postprocess == "cars" and (crop is not None or resolution is not None):
            raise ConfigError("StyleGAN2: postprocess='cars' fixes crop and resolution; do not also give crop= or resolution=")
        self.prior = TruncatedNormal(0.0, 1.0, prior_truncation)
        if path is not None and weights is not None:
            raise ConfigError("StyleGAN2: give either path= or weights=, not both")

        state, self.source, self._file_policy = None, None, None
        if path is not None:
            ckpt = load_checkpoint(path, config)
            state, kwargs, what = ckpt.state_dict, ckpt.config, f"StyleGAN2 checkpoint {path}"
            self.source = {"path": str(path), "sha256": sha256_file(path)}
            if ckpt.license is not None:  # a file synthviews wrote says whose weights they are
                self.license, self.license_link = ckpt.license, ckpt.license_link
            self._file_policy = ckpt.policy
        elif config is None:
            raise ConfigError("StyleGAN2: give path= (a .pkl, .pt or .safetensors file) or config= (for random weights)")
        else:
            kwargs, state, what = load_config(config), weights, "StyleGAN2 weights="
        with torch.random.fork_rng(devices=[]):  # construction draws random init: keep the caller's RNG intact
            torch.manual_seed(0)
            g = Generator(**kwargs)
        self.synthesis, self.mapping = g.synthesis, g.mapping  # official names and order, no prefix
        if state is not None:
            load_weights(self, state, what)
        self.requires_grad_(False)
        self.eval()

        self.z_dim, self.w_dim, self.num_ws = g.z_dim, g.w_dim, g.num_ws
        if truncation_cutoff is not None and (isinstance(truncation_cutoff, bool) or not isinstance(truncation_cutoff, int)
                                              or not 1 <= truncation_cutoff <= self.num_ws):
            raise ConfigError(f"StyleGAN2: truncation_cutoff must be None or an integer in 1..{self.num_ws}, got {truncation_cutoff!r}")
        self.truncation_psi, self.truncation_cutoff = float(truncation_psi), truncation_cutoff
        self.noise_mode, self.force_fp32 = noise_mode, bool(force_fp32)

        self.ranges = parse_groups(groups, self.num_ws)
        self._range = {f"{s}_{e}": (s, e) for s, e in self.ranges}
        described = []
        for name, (s, e) in self._range.items():
            lo, hi = _row_resolutions(s, g.img_resolution)[0], _row_resolutions(e - 1, g.img_resolution)[1]
            described.append(LatentGroup(name, self.z_dim, f"z -> w layers {s}-{e - 1}",
                                         f"styles of the layers at {lo}x{lo} to {hi}x{hi}"))
        self.groups = tuple(described)
        self.latent_dim = self.z_dim

        if postprocess == "cars" and g.img_resolution != 512:
            raise ConfigError(f"StyleGAN2: postprocess='cars' is the LSUN Cars recipe for the 512 px model, "
                              f"this model is {g.img_resolution} px; use crop= and resolution= instead")
        self.post = PostProcess.cars() if postprocess == "cars" else PostProcess(crop, resolution)
        self.image_shape = self.post.output_shape(g.img_channels, g.img_resolution, g.img_resolution)

        self.config = {
            "config": g.config, "groups": [list(r) for r in self.ranges],
            "truncation_psi": self.truncation_psi, "truncation_cutoff": truncation_cutoff,
            "noise_mode": noise_mode, "prior_truncation": prior_truncation, "postprocess": postprocess,
            "resolution": list(resolution) if isinstance(resolution, tuple) else resolution,
            "crop": list(crop) if isinstance(crop, tuple) else crop, "force_fp32": self.force_fp32,
        }
        if device is not None:
            self.to(device)

    def ws_of(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim) -> truncated ws (B, num_ws, w_dim)."""
        return self.mapping(z.to(self.device, torch.float32), self.truncation_psi, self.truncation_cutoff)

    def compose(self, anchor: torch.Tensor, noise: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """ws of the anchor, with each perturbed group's rows taken from mapping(anchor + noise)."""
        anchor = anchor.to(self.device, torch.float32)
        ws = self.ws_of(anchor)  # (B, num_ws, w_dim)
        for name, n in noise.items():
            if name not in self._range:
                raise KeyError(f"unknown StyleGAN2 latent group {name!r}; groups: {', '.join(self._range)}")
            start, end = self._range[name]
            ws[:, start:end] = self.ws_of(anchor + n.to(anchor))[:, start:end]
        return ws

    def group_code(self, code: torch.Tensor, name: str) -> torch.Tensor:
        start, end = self._range[name]
        return code[:, start:end].flatten(1)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        img = self.synthesis(code.to(self.device, torch.float32), noise_mode=self.noise_mode, force_fp32=self.force_fp32)
        return self.post(img)

    def default_policy_spec(self) -> dict:
        """The policy the checkpoint carries, else the paper's LSUN Cars setting where it was tuned, else generic.

        The paper's stds (0.2/0.1/0.8/0.8, truncation 1) belong to the LSUN Cars
        generator (``postprocess="cars"``) split into 4 groups; for any other
        checkpoint they are a guess, so the generic GenRep-like baseline (std 0.25
        on every group) is used until ``synthviews analyze`` chooses one.
        """
        return self._default_policy()[0]

    def default_policy_origin(self) -> str:
        return self._default_policy()[1]

    def _default_policy(self) -> tuple[dict, str]:
        names = set(self.group_names)
        file_policy = self._file_policy
        if file_policy is not None and set(file_policy.get("groups", {})) <= names:
            return file_policy, "stored in the checkpoint's metadata (chosen by synthviews analyze)"
        if self.config["postprocess"] == "cars" and self.ranges == parse_groups(4, self.num_ws):
            stds = (0.2, 0.1, 0.8, 0.8)
            return ({"kind": "gaussian",
                     "groups": {g.name: {"std": s, "truncation": 1.0} for g, s in zip(self.groups, stds)}},
                    "the paper's setting for the LSUN Cars generator (postprocess=cars, 4 groups)")
        return {"kind": "gaussian", "default": {"std": 0.25}}, GENERIC_POLICY_ORIGIN
