"""Any user model as an MLVGM: declare its latent groups, synthviews does the rest.

A hierarchical VAE decoder (NVAE-like) that takes one latent per level, or a
GAN whose single z is read in chunks, becomes a multi-latent generator once
its groups are named::

    model = from_module(decoder, groups=[("top", 16), ("mid", (8, 4, 4)), ("fine", 64)],
                        input="list", output_range=(-1, 1), family="mynvae")

The code is the concatenation of all group latents, flattened, in the
declared order; a perturbation adds noise to the group's slice (like a
BigBiGAN chunk). ``decode`` splits the code, reshapes each part to its
declared shape, calls the module and maps its output range to [0, 1].
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from ..latents import LatentGroup, TruncatedNormal
from .base import MLVGM, ChunkedLatents

INPUT_KINDS = {
    "list": "module([z_group0, z_group1, ...]), each z of shape (B, *group shape)",
    "dict": "module({name: z_group}), each z of shape (B, *group shape)",
    "chunks": "module(z) with one z of shape (B, sum of group sizes), groups read in order",
}


class ModuleMLVGM(ChunkedLatents, MLVGM):
    """A user's torch module plus a declaration of its latent groups.

    ``groups``: ``[(name, size or shape[, description]), ...]`` or a
    ``{name: size or shape}`` mapping, in the order the module reads them.
    ``input``: how the module takes its latents, one of ``INPUT_KINDS``.
    ``output_range``: the (low, high) of the module's images; mapped to [0, 1].
    ``prior``: the anchors' distribution (default standard normal, no cut).
    ``family``/``license`` name the model in manifests; the model id hashes
    the module's state dict, so different weights get different ids.

    The module must return images (B, C, H, W). It is probed once here with
    the prior mean, so a wrong declaration fails now, not mid-generation.
    A generator is a fixed function: the module is put in eval mode (batch
    norm and dropout stay deterministic) and its parameters are frozen.
    """

    def __init__(self, module: nn.Module, groups, *, input: str = "list", output_range=(-1.0, 1.0),
                 prior: TruncatedNormal | None = None, family: str = "custom", license: str = "unknown"):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise ConfigError(f"from_module needs a torch.nn.Module, got {type(module).__name__}")
        if input not in INPUT_KINDS:
            raise ConfigError(f"input must be one of {', '.join(INPUT_KINDS)} ({'; '.join(f'{k}: {v}' for k, v in INPUT_KINDS.items())}), got {input!r}")
        if not isinstance(family, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", family):
            raise ConfigError(f"family must be a non-empty name of letters, digits, '_' or '-', got {family!r}")
        if not isinstance(license, str) or not license:
            raise ConfigError(f"license must be a non-empty string (an SPDX id, or 'other'), got {license!r}")
        prior = TruncatedNormal() if prior is None else prior
        if not isinstance(prior, TruncatedNormal):
            raise ConfigError(f"prior must be a synthviews.TruncatedNormal, got {type(prior).__name__}")
        self.output_range = _check_range(output_range)
        self.input = input
        self.family = family
        self.license = license
        self.prior = prior

        declared = _parse_groups(groups, chunks=input == "chunks")
        self.shapes = [shape for _, shape, _ in declared]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        start, built = 0, []
        for i, ((name, shape, description), size) in enumerate(zip(declared, self.sizes)):
            space = {"list": f"input[{i}], shape {list(shape)}", "dict": f"input[{name!r}], shape {list(shape)}",
                     "chunks": f"z[{start}:{start + size}]"}[input]
            built.append(LatentGroup(name, size, space, description or f"latent {i} of {family}"))
            start += size
        self.groups = tuple(built)
        self.latent_dim = start

        self.module = module.requires_grad_(False)
        self.eval()
        cls = type(module)
        self.config = {"module": f"{cls.__module__}.{cls.__qualname__}", "input": input,
                       "groups": [[name, list(shape)] for name, shape, _ in declared],
                       "output_range": list(self.output_range)}
        self.image_shape = self._probe()

    def train(self, mode: bool = True):
        """Stay in eval mode whatever is asked: views must not depend on batch statistics."""
        return super().train(False)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        if code.ndim != 2 or code.shape[1] != self.latent_dim:
            raise ValueError(f"{self.family} expects codes of shape (B, {self.latent_dim}), got {tuple(code.shape)}")
        code = code.to(self.device, self._dtype())
        if self.input == "chunks":
            out = self.module(code)
        else:
            parts = [c.reshape(code.shape[0], *shape) for c, shape in zip(code.split(self.sizes, dim=1), self.shapes)]
            out = self.module(parts if self.input == "list" else dict(zip(self.group_names, parts)))
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != code.shape[0]:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{self.family}: the module must return images of shape ({code.shape[0]}, C, H, W), got {got}")
        low, high = self.output_range
        return ((out.float() - low) / (high - low)).clamp(0, 1)

    def _dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def _probe(self) -> tuple[int, int, int]:
        """Decode two prior-mean codes: checks the declaration, returns (C, H, W)."""
        code = torch.full((2, self.latent_dim), float(self.prior.mean))
        try:
            with torch.no_grad():
                img = self.decode(code)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's module rejected our inputs
            raise ConfigError(
                f"{self.family}: the module failed on the declared latents ({self.input}: {INPUT_KINDS[self.input]}; "
                f"groups {self.config['groups']}): {type(e).__name__}: {e}. Check the group sizes/shapes and `input`"
            ) from None
        return tuple(img.shape[1:])


from_module = ModuleMLVGM  # the documented entry point: from_module(module, groups=..., ...)


def _parse_groups(groups, chunks: bool) -> list[tuple[str, tuple[int, ...], str]]:
    """[(name, shape, description)] from the user's declaration; ConfigError names the bad entry."""
    if isinstance(groups, Mapping):
        groups = list(groups.items())
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Iterable):
        raise ConfigError(f"groups must be a list of (name, size) pairs or a {{name: size}} dict, got {groups!r}")
    parsed, seen = [], set()
    for entry in groups:
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ConfigError(f"latent group {entry!r} must be (name, size) or (name, size, description)")
        name, size = entry[0], entry[1]
        description = entry[2] if len(entry) == 3 else ""
        if not isinstance(name, str):
            raise ConfigError(f"latent group name {name!r} must be a string")
        if name in seen:
            raise ConfigError(f"latent group {name!r} is declared twice; names must be unique")
        seen.add(name)
        shape = (size,) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else None
        if (not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)):
            raise ConfigError(f"latent group {name!r}: size must be a positive integer or a shape of "
                              f"positive integers, got {size!r}")
        if chunks and len(shape) != 1:
            raise ConfigError(f"latent group {name!r}: input='chunks' slices one z vector, so the size must be "
                              f"an integer, got shape {size!r}")
        if not isinstance(description, str):
            raise ConfigError(f"latent group {name!r}: description must be a string")
        LatentGroup(name, math.prod(shape), "", description)  # validates the name
        parsed.append((name, shape, description))
    if not parsed:
        raise ConfigError("groups is empty: declare at least one latent group, e.g. [('z', 128)]")
    return parsed


def _check_range(output_range) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in output_range)
    except (TypeError, ValueError):
        raise ConfigError(f"output_range must be a (low, high) pair such as (-1, 1) or (0, 1), got {output_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"output_range must be finite with low < high, got {output_range!r}")
    return low, high
