"""The MLVGM protocol: what synthviews needs from any multi-latent generator."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Mapping

import torch
from torch import nn

from .._util.checks import brief
from ..errors import ConfigError
from ..latents import LatentGroup, TruncatedNormal

GENERIC_POLICY_ORIGIN = ("generic (GenRep-like: std 0.25 on every group), not tuned for this model; "
                         "`synthviews analyze` measures the groups and chooses one")
RANGE = re.compile(r"(\d{1,6})_(\d{1,6})", re.ASCII)  # one "start_end" of explicit groups: ASCII digits, bounded


def parse_ranges(spec, n: int, what: str, unit: str, usage: str, *, in_order: bool = False) -> list[tuple[int, int]]:
    """[start, end) ranges covering ``0..n-1`` from a ``groups=`` option: a count (an int, or up to 6 ASCII
    digits: n ranges, as equal as possible), ``"0_2,2_8,..."`` or ``[[0, 2], [2, 8], ...]``, sorted unless
    ``in_order`` (then they must be given in order). A family handles its own words (``"layers"``) first.

    Errors read ``{what} groups: ...``, count ``{unit}s`` and end in ``usage`` (what to write instead)."""
    if isinstance(spec, str) and (s := spec.strip()).isascii() and s.isdecimal() and len(s) <= 6:
        spec = int(s)  # isdigit() alone lets '²' through, which int() refuses
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not 1 <= spec <= n:
            raise ConfigError(f"{what} groups: cannot split {n} {unit}s into {spec} groups (use 1..{n})")
        bounds = [k * n // spec for k in range(spec + 1)]
        return list(zip(bounds[:-1], bounds[1:]))
    ranges: list = [()]
    if isinstance(spec, str):
        matches = [RANGE.fullmatch(part.strip()) for part in spec.split(",")]
        if all(matches):
            ranges = [(int(m[1]), int(m[2])) for m in matches]
    elif isinstance(spec, (list, tuple)):
        ranges = [tuple(r) if isinstance(r, (list, tuple)) else () for r in spec]
    if not ranges or any(len(r) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in r)
                         for r in ranges):
        raise ConfigError(f"{what} groups: {brief(spec)} is not understood; use {usage}")
    pos, cover = 0, f"the ranges must cover {unit}s 0..{n - 1}" + (" in order" if in_order else "")
    for start, end in ranges if in_order else sorted(ranges):
        if not 0 <= start < end <= n:
            raise ConfigError(f"{what} groups: range {start}_{end} is out of bounds (need 0 <= start < end <= {n}, "
                              f"the number of {unit}s)")
        if start != pos:
            raise ConfigError(f"{what} groups: range {start}_{end} does not continue at {unit} {pos}: " + (
                "it overlaps the previous range" if start < pos else f"{unit}s {pos}..{start - 1} are in no group")
                + f"; {cover}")
        pos = end
    if pos != n:
        raise ConfigError(f"{what} groups: {unit}s {pos}..{n - 1} are in no group; {cover}")
    return sorted(ranges)


class MLVGM(nn.Module):
    """A generator whose latent code is split into named groups.

    A subclass sets, in ``__init__``:

    - ``groups``: ordered :class:`LatentGroup` tuple; a policy draws a noise
      vector of ``group.size`` for each group it perturbs;
    - ``prior``: the :class:`TruncatedNormal` anchors are drawn from, and
      ``latent_dim``, the anchor's length;
    - ``config``: JSON-able constructor arguments (part of the model id);
    - ``image_shape``: ``(C, H, W)`` of decoded images;

    and implements :meth:`compose`, :meth:`group_code` and :meth:`decode`.
    A model loaded from a file also sets ``source = {"path": ..., "sha256":
    <sha256 of the file>}`` so manifests pin exactly what made the data.
    Class attributes ``family`` (registry name), ``license`` (a Hugging Face
    licence id, or ``other``) and ``license_link`` describe it in manifests
    and dataset cards.

    Perturbation goes through :meth:`compose` so that each family says how
    group noise reaches its generator: BigBiGAN-like models add it to a z
    chunk (see :class:`ChunkedLatents`); StyleGAN2 adds it to z, maps z +
    noise to W and keeps that W only on the group's layers. A zero noise
    vector must give the anchor's code for that group.
    """

    family: str = "mlvgm"
    license: str = "unknown"
    license_link: str | None = None
    compile_refusal: str | None = None  # why ViewSampler(compile=True) cannot compile this family's decode, if so

    groups: tuple[LatentGroup, ...]
    prior: TruncatedNormal
    latent_dim: int
    config: dict
    image_shape: tuple[int, int, int]
    source: dict | None = None

    def compose(self, anchor: torch.Tensor, noise: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The code the generator consumes: anchor (B, latent_dim) plus
        ``noise[name]`` (B, size) for the perturbed groups (absent = unperturbed)."""
        raise NotImplementedError

    def group_code(self, code: torch.Tensor, name: str) -> torch.Tensor:
        """The part of ``code`` that group ``name`` controls, flattened to (B, n).

        Perturbation sizes (delta) are L2 distances between these, as in the
        paper's analysis: the z chunk for BigBiGAN, the W layers for StyleGAN2.
        """
        raise NotImplementedError

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Images for a batch of codes: float in [0, 1], shape (B, C, H, W)."""
        raise NotImplementedError

    def decode_views(self, codes: torch.Tensor) -> torch.Tensor:
        """Images of anchors and their positives: codes (S, 1+K, ...) -> (S, 1+K, C, H, W), view 0 the anchor.

        ViewSampler decodes through this (eagerly), so a family whose positives share work with their anchor
        (a diffusion trajectory up to the first perturbed step) can do it once; the result must equal
        :meth:`decode` of every view to the last bit. The default is exactly that: one decode of all views.
        """
        images = self.decode(codes.flatten(0, 1))
        return images.reshape(codes.shape[0], codes.shape[1], *images.shape[1:])

    def default_policy_spec(self) -> dict:
        """The policy (as a plain dict, the policy-file format) used when none is given."""
        return {"kind": "gaussian", "default": {"std": 0.25}}

    def default_policy_origin(self) -> str:
        """Where :meth:`default_policy_spec` comes from, for ``info`` and ``preview`` to say."""
        if type(self).default_policy_spec is MLVGM.default_policy_spec:
            return GENERIC_POLICY_ORIGIN
        return f"the {self.family} family's default"

    # --- shared behaviour ------------------------------------------------

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def group(self, name: str) -> LatentGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def weights_sha256(self) -> str:
        """sha256 of every parameter and buffer (name, dtype, shape, bytes), in name order."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            shape = t.shape
            t = t.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{name}|{t.dtype}|{tuple(shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def config_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()

    @property
    def model_id(self) -> str:
        """Stable id for manifests: family, config hash and weights hash (hashes every weight: not for hot loops)."""
        return self._model_id(self.weights_sha256())

    def _model_id(self, weights_sha256: str) -> str:
        return f"{self.family}-{self.config_sha256()[:8]}-{weights_sha256[:12]}"

    def describe(self) -> dict:
        """Everything a manifest needs to say which generator made a dataset."""
        weights_sha256 = self.weights_sha256()
        return {
            "family": self.family,
            "model_id": self._model_id(weights_sha256),
            "config": self.config,
            "weights_sha256": weights_sha256,
            "license": self.license,
            "license_link": self.license_link,
            "source": self.source,
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "prior": self.prior.to_dict(),
            "groups": [{"name": g.name, "size": g.size, "space": g.space, "description": g.description}
                       for g in self.groups],
        }


class ChunkedLatents:
    """Mixin for models whose groups are consecutive chunks of one latent z.

    Noise is added to the group's chunk; the code is z itself (BigBiGAN, toy).
    """

    def _chunk(self, name: str) -> slice:
        start = 0
        for g in self.groups:
            if g.name == name:
                return slice(start, start + g.size)
            start += g.size
        raise KeyError(name)

    def compose(self, anchor, noise):
        code = anchor.clone()
        for name, n in noise.items():
            code[:, self._chunk(name)] += n.to(code)
        return code

    def group_code(self, code, name):
        return code[:, self._chunk(name)]
