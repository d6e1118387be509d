"""``loader(...)``: a ready DataLoader for ShardViews or ContinuousViews, with a resumable position.

ShardViews are read in whole batches: the workers decode JPEG to uint8 and collate uint8;
converting to float, normalising and T_x (a preset or ``Augment``) run once per batch: on
``device`` (the training device) when it is given, where the uint8 batch is copied (pinned,
``non_blocking``) and finished; otherwise T_x runs in the workers (or in the main process with
``num_workers=0``), and without T_x the main process converts the uint8 batch (from workers: a
quarter of the bytes through shared memory, written into slots each worker reuses: see
``pixel_ring``). Every sample keeps the T_x parameters it gets
when read one by one (its keyed seed), so the batch a sample lands in changes nothing. A custom
T_x callable still runs per sample in the workers.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .continuous import ContinuousViews
from .formats import map_tensors
from .pixel_ring import PixelRing
from .shards import BatchedViews, RawBatch, ShardViews


class ViewsLoader(DataLoader):
    """A DataLoader that counts the batches it hands out, so training can resume mid-epoch.

    ``state_dict()`` -> ``{"epoch", "batch", "seed"}``; ``load_state_dict`` makes the
    next iteration start at that batch (ContinuousViews; ShardViews restarts its epoch).
    ``views``: the ShardViews or ContinuousViews it reads (``dataset`` is the batched reader
    of a ShardViews).
    """

    def __iter__(self):
        start = getattr(self.dataset, "_start", 0)
        self._handed_out = start
        batched = self.dataset if isinstance(self.dataset, BatchedViews) else None
        # the workers' uint8 batches go into reused slots; one more per worker than it may have in flight
        # (workers that outlive the iteration would keep a closed ring: the loader never makes persistent ones)
        fresh_workers = self.num_workers and not self.persistent_workers
        ring = None
        if batched is not None and fresh_workers:  # (a prefetch beyond the most slots a ring has: fresh memory for the rest)
            ring = batched.open_ring(self.num_workers, min(self.prefetch_factor + 1, PixelRing.MAX_SLOTS))
        batches = None
        try:
            batches = super().__iter__()  # (inside: workers that fail to start leave no ring open)
            for batch in batches:
                if batched is not None and isinstance(batch, RawBatch):
                    raw = batch
                    try:
                        batch = batched.views.finish(raw, batched.device)
                    finally:
                        raw.release()
                elif batched is not None and batched.device is not None:  # a custom T_x ran per sample in the workers
                    batch = map_tensors(lambda t: t.to(batched.device, non_blocking=t.is_pinned()), batch)
                self._handed_out += 1
                yield batch
        finally:
            if ring is not None:
                # the workers (and the pinning thread) stop before their ring closes, also when an error's
                # traceback still holds the iterator (deleting it would not stop them then)
                try:
                    stop = getattr(batches, "_shutdown_workers", None)
                    if stop is not None:
                        stop()
                finally:
                    del batches
                    batched.close_ring(ring)

    @property
    def views(self):
        return self.dataset.views if isinstance(self.dataset, BatchedViews) else self.dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.dataset.epoch, "batch": getattr(self, "_handed_out", 0), "seed": self.dataset.seed}

    def load_state_dict(self, state: dict) -> None:
        if not hasattr(self.dataset, "load_state_dict"):
            raise ConfigError("mid-epoch resume is supported for ContinuousViews; for ShardViews call "
                              "set_epoch(epoch) and restart that epoch")
        self.dataset.load_state_dict(state)


def loader(source, batch_size: int = 256, num_workers: int = 0, pin_memory: bool | None = None,
           device=None, **dataset_kwargs) -> ViewsLoader:
    """A DataLoader over ``source``: a dataset folder / shard URLs / ``hf://`` repo (built into a
    ShardViews with ``dataset_kwargs``), or a ShardViews / ContinuousViews instance.

    ShardViews batches are collated here (every worker yields whole batches, so
    ``len(loader)`` is exact and equal on every rank) from uint8 pixels; ``device``
    (e.g. ``"cuda"``): convert, normalise and augment each batch there instead of in the
    workers. ContinuousViews already yields batches of its own ``batch_size`` on its own
    device (pass ``device=`` to it, not here).
    """
    if isinstance(source, ContinuousViews):
        if dataset_kwargs:
            raise ConfigError("dataset options go to ContinuousViews itself, not to loader()")
        if device is not None:
            raise ConfigError("ContinuousViews generates on its own device: pass device= to ContinuousViews, "
                              "not to loader()")
        if source.num_workers != num_workers:
            raise ConfigError(f"ContinuousViews was built with num_workers={source.num_workers}, loader got {num_workers}")
        return ViewsLoader(source, batch_size=None, num_workers=num_workers, pin_memory=False)
    if isinstance(source, ShardViews):
        if dataset_kwargs:
            raise ConfigError("dataset options go to ShardViews itself, not to loader()")
        if source.num_workers != num_workers or source.batch_size != batch_size:
            raise ConfigError(f"ShardViews was built with num_workers={source.num_workers}, "
                              f"batch_size={source.batch_size}; loader got {num_workers}, {batch_size}: pass the same")
        dataset = source
    else:
        dataset = ShardViews(source, num_workers=num_workers, batch_size=batch_size, **dataset_kwargs)
    if device is not None:
        device = torch.device(device)
        if device.type == "cpu":
            device = None  # the workers finish the batches: on the CPU that is where the cores are
    if pin_memory is None:
        pin_memory = torch.cuda.is_available() and (device is None or device.type == "cuda")
    batched = dataset.batched(device)
    return ViewsLoader(batched, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                       drop_last=True, persistent_workers=False, collate_fn=batched.collate)
