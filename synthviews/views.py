"""ViewSampler: sample index -> anchor latent, K positive latents, and their images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .device import amp_context, resolve_device
from .errors import ConfigError
from .latents import Streams, sample_prior
from .models.base import MLVGM
from .policies import Policy, resolve_policy


@dataclass
class ViewBatch:
    """Anchor + K positives for a batch of sample indices.

    ``images`` is float in [0, 1], (B, 1+K, C, H, W), view 0 the anchor, on
    the sampler's device. ``deltas[b, k-1, g]`` is the L2 distance between
    the anchor's and positive k's code of group g in the space the generator
    consumes (``model.group_code``), float64 on CPU, (B, K, G).
    """

    indices: np.ndarray
    anchor: torch.Tensor
    codes: torch.Tensor
    deltas: torch.Tensor
    images: torch.Tensor | None = None


class ViewSampler:
    """Makes views that are a pure function of (model, policy, seed, index).

    ``views`` is K, the number of positives per anchor (each sample has 1+K
    images). Anchors are drawn from the model's prior (overridable with
    ``prior``), noise from the policy; both on the CPU from keyed streams,
    then moved to ``device``, where the model is kept and decoding happens
    in one batched pass for anchors and positives together.
    """

    def __init__(self, model: MLVGM, policy: Policy | dict | str | None = None, views: int = 1, seed: int = 0,
                 device: str | torch.device | None = None, amp: str | None = None):
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"views (positives per anchor) must be an integer >= 1, got {views!r}")
        self.policy = resolve_policy(policy, model)
        self.streams = Streams(seed)
        self.seed, self.views = seed, views
        self.amp = None if amp in (None, "none") else amp
        self.device = model.device if device is None else resolve_device(device)
        self.model = model.to(self.device).eval()
        amp_context(self.device, amp)  # validate early

    def latents(self, indices) -> ViewBatch:
        """Anchors, composed codes (B, 1+K, ...) and deltas, without decoding."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        model = self.model
        anchor = sample_prior(model.prior, self.streams, idx, model.latent_dim)
        codes = [model.compose(anchor.to(self.device), {})]
        for view in range(1, self.views + 1):
            noise = self.policy.noise(model, anchor, self.streams, idx, view)
            codes.append(model.compose(anchor.to(self.device), {g: n.to(self.device) for g, n in noise.items()}))
        codes = torch.stack(codes, dim=1)  # (B, 1+K, ...)
        return ViewBatch(indices=idx, anchor=anchor, codes=codes, deltas=self._deltas(codes))

    def _deltas(self, codes: torch.Tensor) -> torch.Tensor:
        out = torch.empty(codes.shape[0], self.views, len(self.model.groups), dtype=torch.float64)
        for g, group in enumerate(self.model.groups):
            per_view = [self.model.group_code(codes[:, v], group.name).detach().to("cpu", torch.float64)
                        for v in range(self.views + 1)]
            for v in range(1, self.views + 1):
                out[:, v - 1, g] = (per_view[v] - per_view[0]).pow(2).sum(dim=1).sqrt()
        return out

    def sample(self, indices, inference: bool = True) -> ViewBatch:
        """Latents and images for ``indices``: images (B, 1+K, C, H, W) in [0, 1] on the device.

        Runs under ``torch.inference_mode``; ``inference=False`` uses ``no_grad`` instead,
        for views that later feed a model being trained (inference tensors cannot).
        """
        with torch.inference_mode() if inference else torch.no_grad():
            return self._sample(indices)

    def _sample(self, indices) -> ViewBatch:
        batch = self.latents(indices)
        flat = batch.codes.flatten(0, 1)  # (B*(1+K), ...)
        with amp_context(self.device, self.amp):
            images = self.model.decode(flat)
        images = images.float().clamp_(0, 1)
        batch.images = images.view(len(batch.indices), self.views + 1, *images.shape[1:])
        return batch

    def describe(self) -> dict:
        """What a manifest records about how views were made."""
        return {"model": self.model.describe(), "policy": self.policy.to_dict(), "policy_id": self.policy.policy_id,
                "seed": self.seed, "views": self.views, "amp": self.amp}
