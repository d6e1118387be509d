"""Latent groups, the truncated-normal prior, and keyed random streams.

Everything random in synthviews is drawn through :class:`Streams`, so that a
view is a pure function of ``(model, policy, seed, sample index)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ._util.checks import MAX_NOISE, MAX_SEED, brief, finite
from .errors import ConfigError


@dataclass(frozen=True)
class LatentGroup:
    """One independently perturbable part of a model's latent code.

    ``size`` is the length of the noise vector a policy draws for the group;
    ``space`` says where that noise is added (e.g. ``"z[0:20]"`` for a
    BigBiGAN chunk, ``"z -> w layers 0-3"`` for a StyleGAN2 layer group).
    """

    name: str
    size: int
    space: str
    description: str = ""

    def __post_init__(self):
        if not self.name or any(c in self.name for c in " .,/"):
            raise ConfigError(f"latent group name {self.name!r} must be non-empty without spaces, dots, commas or slashes")
        if self.size < 1:
            raise ConfigError(f"latent group {self.name!r} must have size >= 1, got {self.size}")


@dataclass(frozen=True)
class TruncatedNormal:
    """Normal(mean, std) cut at mean +- truncation * std (``None`` = no cut)."""

    mean: float = 0.0
    std: float = 1.0
    truncation: float | None = None

    def __post_init__(self):
        check_normal_params(self.mean, self.std, self.truncation, what="distribution")

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "truncation": self.truncation}


def check_normal_params(mean, std, truncation, what: str) -> None:
    """Raise ConfigError naming ``what`` if (mean, std, truncation) is unusable.

    |mean|, std and truncation are capped at MAX_NOISE: a std of 1e300 is finite
    but its noise overflows float32 and writes Infinity into every sample's json.
    """
    for name, value in (("mean", mean), ("std", std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not finite(value):
            raise ConfigError(f"{what}: {name} must be a finite number, got {brief(value)}")
        if abs(value) > MAX_NOISE:
            raise ConfigError(f"{what}: {name} must be within +-{MAX_NOISE:g}, got {brief(value)}")
    if std < 0:
        raise ConfigError(f"{what}: std must be >= 0, got {std}")
    if truncation is not None:
        if (isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not finite(truncation)
                or not 0 < truncation <= MAX_NOISE):
            raise ConfigError(f"{what}: truncation must be a positive number of stds up to {MAX_NOISE:g} "
                              f"(or null for none), got {brief(truncation)}")


# --- keyed random streams -------------------------------------------------

_M64 = (1 << 64) - 1
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised over a uint64 array (wraps mod 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def name_key(name: str) -> int:
    """A stable 64-bit number for a name (group or purpose); never Python's salted hash()."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


class Streams:
    """Counter-based random streams, one per (seed, index, view, group, purpose).

    The scheme: the five fields are absorbed one at a time into a 64-bit key,
    ``h = mix64(h ^ field)`` starting from ``mix64(seed)``, where ``group``
    and ``purpose`` are names turned into numbers by a blake2b hash and
    ``mix64`` is the SplitMix64 finaliser. Value ``j`` of a stream is
    ``mix64(key + (j + 1) * 0x9E3779B97F4A7C15)`` (the SplitMix64 sequence
    started at the key), turned into a uniform in (0, 1) from its top 53
    bits, and into a (truncated) normal through the inverse normal CDF.

    Nothing is stateful, so a draw depends only on its five fields: never on
    batch size, order, device, workers, ranks or the other samples drawn.
    Draws are made in float64 on the CPU and vectorised over indices.
    """

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
            # above 2**63 the key would wrap (2**64 gives seed 0's images) or break int64 readers
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {brief(seed)}")
        self.seed = int(seed)

    def keys(self, indices, view: int, group: str, purpose: str) -> np.ndarray:
        """The 64-bit stream keys for a batch of sample indices, shape (B,)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        if (idx < 0).any():
            raise ValueError("sample indices must be >= 0")
        with np.errstate(over="ignore"):
            h = _mix64(np.full(idx.shape, self.seed & _M64, dtype=np.uint64))
            for field in (idx.astype(np.uint64), view & _M64, name_key(group), name_key(purpose)):
                h = _mix64(h ^ np.asarray(field, dtype=np.uint64))
        return h

    def uniform(self, indices, view: int, group: str, purpose: str, size: int) -> np.ndarray:
        """Uniforms in the open interval (0, 1), float64, shape (B, size)."""
        keys = self.keys(indices, view, group, purpose)
        counters = np.arange(1, size + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            bits = _mix64(keys[:, None] + counters[None, :] * _GAMMA)
        return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def normal(self, indices, view: int, group: str, purpose: str, size: int,
               mean: float = 0.0, std: float = 1.0, truncation: float | None = None) -> torch.Tensor:
        """Normal(mean, std) draws cut at +- truncation stds, float64 tensor (B, size)."""
        u = torch.from_numpy(self.uniform(indices, view, group, purpose, size))
        if truncation is not None:
            # Inverse-CDF sampling restricted to [Phi(-t), Phi(t)]: exact, no rejection loop.
            lo = 0.5 * math.erfc(truncation / math.sqrt(2.0))
            u = lo + u * (1.0 - 2.0 * lo)
        return mean + std * torch.special.ndtri(u)


def sample_prior(prior: TruncatedNormal, streams: Streams, indices, size: int) -> torch.Tensor:
    """Anchor latents for a batch of indices, float32 (B, size): view 0, purpose 'anchor'."""
    z = streams.normal(indices, 0, "*", "anchor", size, prior.mean, prior.std, prior.truncation)
    return z.float()
