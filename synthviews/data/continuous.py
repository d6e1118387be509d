"""ContinuousViews: the paper's continuous sampling, fresh views generated on the fly.

Yields whole batches (use ``DataLoader(ds, batch_size=None)`` or
:func:`synthviews.data.loader`): the generator decodes a batch of anchors and
their positives in one pass on its device and T_x runs there too.

Batch ``b`` of epoch ``e`` always holds sample indices
``(e * batches_per_epoch + b) * batch_size + [0, batch_size)``, so no two
ranks, workers or epochs ever produce the same sample, and the stream is a
pure function of (model, policy, seed). Rank ``r`` of ``R`` takes batches
``b = l * R + r``; its DataLoader worker ``w`` of ``W`` takes local batches
``l = s + w, s + w + W, ...`` from the start batch ``s`` (0, or where a resumed
run stopped), which is the order a DataLoader hands them out.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._util.distributed import training_ranks, worker_slot
from ..errors import ConfigError
from ..latents import Streams
from ..views import ViewSampler
from .augment import Augment, make_augment
from .formats import check_output, format_item


class ContinuousViews(torch.utils.data.IterableDataset):
    """Anchor + positives generated per batch from ``model`` and ``policy``.

    - ``crops``: images per item, >= 2 (default 2): the anchor and ``crops - 1`` positives.
    - ``views``: K, positives per anchor, as in ``ViewSampler`` and ``generate``; optional,
      it must equal ``crops - 1`` (every generated image is returned); a mismatch is an error
      rather than a silently different count.
    - ``epoch_samples``: samples per epoch over all ranks (e.g. a real dataset's size);
      each rank yields ``epoch_samples // (batch_size * ranks)`` batches.
    - ``t_x``: preset name (``simclr``, ``no_color``, ``no_crop``, ``none``), a callable
      on (B, C, H, W), or None; applied on the generator's device, per sample.
    - ``real`` / ``real_ratio``: a map-style dataset of real images ((C, H, W) tensors in
      [0, 1], PIL images, or tuples whose first item is one) and the fraction of samples
      taken from it instead of the generator (chosen per sample index, reproducibly).
    - ``num_workers``: DataLoader workers reading this dataset (0 for a GPU generator).
    - :meth:`state_dict` / :meth:`load_state_dict` resume the stream mid-epoch.
    """

    def __init__(self, model, policy=None, views: int | None = None, epoch_samples: int = 10_000,
                 batch_size: int = 64, seed: int = 0, device=None, amp: str | None = None,
                 t_x: str | Callable | None = "no_color", t_x_size: int = 112, output: str = "tuple", real=None,
                 real_ratio: float = 0.0, num_workers: int = 0, crops: int = 2):
        super().__init__()
        if isinstance(crops, bool) or not isinstance(crops, int) or crops < 2:
            raise ConfigError(f"ContinuousViews: crops (images per item) must be an integer >= 2, the anchor and "
                              f"at least one positive; got {crops!r}")
        if views is not None and (isinstance(views, bool) or not isinstance(views, int) or views < 1):
            raise ConfigError(f"ContinuousViews: views (positives per anchor) must be an integer >= 1, got {views!r}")
        if views is not None and views != crops - 1:
            old = f", or crops={views} alone for {views} images (views used to count images)" if views >= 2 else ""
            raise ConfigError(f"ContinuousViews: views={views} (positives per anchor, as in generate) makes "
                              f"{views + 1} images per item, but crops={crops}; pass crops={views + 1}{old}")
        for name, value in (("epoch_samples", epoch_samples), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= real_ratio <= 1.0:
            raise ConfigError(f"real_ratio must be in [0, 1], got {real_ratio!r}")
        if real_ratio > 0 and (real is None or not hasattr(real, "__getitem__") or not hasattr(real, "__len__")):
            raise ConfigError("real_ratio > 0 needs real=, a map-style dataset (with __len__ and __getitem__)")
        self.sampler = ViewSampler(model, policy, views=crops - 1, seed=seed, device=device, amp=amp)
        self.output = check_output(output)
        if isinstance(t_x, str):
            t_x = make_augment(t_x, size=t_x_size)
        elif t_x is not None and not callable(t_x):
            raise ConfigError(f"t_x must be a preset name, a callable or None, got {type(t_x).__name__}")
        self.t_x_seeded = isinstance(t_x, Augment)  # presets take a seed: reproducible per-sample parameters
        self.t_x, self.views, self.crops, self.seed = t_x, crops - 1, crops, seed
        self.epoch_samples, self.batch_size, self.num_workers = epoch_samples, batch_size, int(num_workers)
        self.real, self.real_ratio = real, float(real_ratio)
        self.streams = Streams(seed)
        self.epoch, self._start, self._consumed = 0, 0, 0
        training_ranks()  # a bad RANK/WORLD_SIZE fails here, in one line

    # --- epochs and resume --------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._start, self._consumed = int(epoch), 0, 0

    def state_dict(self) -> dict:
        """Position in the stream (valid when iterated in this process, i.e. num_workers=0;
        with workers use the loader's state_dict, which counts batches it handed out)."""
        return {"epoch": self.epoch, "batch": self._start + self._consumed, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ConfigError(f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}")
        self.epoch, self._start, self._consumed = int(state["epoch"]), int(state["batch"]), 0

    def _batches_per_rank(self, world: int) -> int:
        return self.epoch_samples // self.batch_size // world

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        _, world = training_ranks()
        return self._batches_per_rank(world)

    # --- generation ------------------------------------------------------------

    def __iter__(self):
        rank, world = training_ranks()
        worker, workers = worker_slot()
        per_rank = self._batches_per_rank(world)
        first = self._start + worker  # DataLoader asks workers 0, 1, ... in turn: batches stay in order
        self._consumed = 0
        for local in range(first, per_rank, workers):
            b = local * world + rank
            start = (self.epoch * (self.epoch_samples // self.batch_size) + b) * self.batch_size
            item = self.batch(np.arange(start, start + self.batch_size))
            self._consumed = local + 1 - self._start
            yield item
        self._start, self._consumed = 0, 0

    @torch.no_grad()  # not inference_mode: the views feed a model that is trained on them
    def batch(self, indices: np.ndarray):
        """The item for a batch of sample indices: views on the device, T_x applied."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.real_ratio == 0:
            images = self.sampler.sample(indices, inference=False).images  # (B, V, C, H, W)
        else:
            images = self._mixed(indices)
        views = []
        for v in range(self.crops):
            x = images[:, v]
            if self.t_x is not None:
                seed = int(self.streams.keys(indices[:1], v, "*", "t_x")[0] >> np.uint64(1))
                x = self.t_x(x, seed=seed) if self.t_x_seeded else self.t_x(x)
            views.append(x)
        return format_item(self.output, views, torch.from_numpy(indices), None)

    def _mixed(self, indices: np.ndarray) -> torch.Tensor:
        """Images where a ``real_ratio`` share of the samples (chosen per index) are real images."""
        c, h, w = self.sampler.model.image_shape
        device = self.sampler.device
        images = torch.empty(len(indices), self.crops, c, h, w, device=device)
        real = self.streams.uniform(indices, 0, "*", "real", 1)[:, 0] < self.real_ratio
        picks = (self.streams.uniform(indices[real], 0, "*", "real-index", 1)[:, 0] * len(self.real)).astype(int)
        for row, j in zip(np.flatnonzero(real), picks):
            images[row] = _real_image(self.real[int(j)], (c, h, w)).to(device)
        if (~real).any():
            images[torch.from_numpy(~real).to(device)] = self.sampler.sample(indices[~real], inference=False).images
        return images


def _real_image(item, shape: tuple[int, int, int]) -> torch.Tensor:
    """A real sample as float (C, H, W) in [0, 1] at the generator's image size."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if not torch.is_tensor(item):
        array = np.asarray(item, dtype=np.float32) / 255.0  # PIL image or uint8 array (H, W[, C])
        item = torch.from_numpy(array if array.ndim == 3 else array[..., None]).permute(2, 0, 1)
    x = item.float() / 255.0 if item.dtype == torch.uint8 else item.float()
    c, h, w = shape
    if x.shape[0] != c:
        x = x.expand(c, -1, -1) if x.shape[0] == 1 else x[:c]
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(0, 1)
