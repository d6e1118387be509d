"""Shared-memory slots that the loader's workers reuse for their uint8 batches.

A tensor a DataLoader worker sends goes into fresh shared memory every batch: the worker
faults each page in, hands a file descriptor to the main process through a socket, and the
main process maps the pages and faults them in again. At 128 px that is a fifth of a worker's
CPU time, in the kernel (``benchmarks/bench_loader.py``). Instead, the main process makes a few
slots per worker before the workers start (a forked worker inherits them, a spawned one gets
them with the dataset), a worker writes its batch into a free slot of its own and sends the
slot's number, and the main process gives the slot back through a pipe once the batch is
converted or pinned. A worker with no free slot falls back to fresh shared memory: the ring
never blocks, and a slot that is never given back only costs its reuse.
"""

from __future__ import annotations

import itertools
import multiprocessing

import numpy as np
import torch

_OPEN: dict[int, "PixelRing"] = {}  # the main process's open rings, by id: what an arriving batch names
_IDS = itertools.count()


def shared_empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor in shared memory (as default_collate makes batches in workers:
    the DataLoader then sends it without copying)."""
    numel = int(np.prod(shape))
    if not numel:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty((), dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty((), dtype=dtype).new(storage).view(*shape)


class PixelRing:
    """``slots`` uint8 slots of ``slot_bytes`` for each of ``workers`` workers, in shared memory.

    A worker calls :meth:`take` (its own slots only, so workers never contend); the main process
    finds the slot with :meth:`lookup` / :meth:`view` and calls :meth:`give_back` when no longer
    reading it. Made in the main process before the workers start; :meth:`close` there at the end.
    """

    MAX_SLOTS = 255  # a slot's number goes back as one byte

    def __init__(self, workers: int, slots: int, slot_bytes: int):
        if not (0 < slots <= self.MAX_SLOTS):
            raise ValueError(f"slots must be in 1..{self.MAX_SLOTS}, got {slots}")
        self.workers, self.slots, self.slot_bytes = int(workers), int(slots), int(slot_bytes)
        self.buffer = shared_empty((self.workers, self.slots, self.slot_bytes), torch.uint8)
        pipes = [multiprocessing.Pipe(duplex=False) for _ in range(self.workers)]
        self._returned = [reader for reader, _ in pipes]  # read in worker w: slot numbers given back
        self._give = [writer for _, writer in pipes]
        self._free: list[int] | None = None  # this worker's free slots, made on its first take
        self.id = next(_IDS)
        _OPEN[self.id] = self

    @staticmethod
    def lookup(ring_id: int) -> "PixelRing":
        ring = _OPEN.get(ring_id)
        if ring is None:
            raise RuntimeError("a loader worker sent a batch in a pixel ring this process no longer has open")
        return ring

    def take(self, worker: int, nbytes: int) -> tuple[int, torch.Tensor] | None:
        """A free slot of ``worker`` as ``(slot, flat uint8 view of nbytes)``; None if it has none
        free or the batch does not fit (the caller then uses fresh shared memory)."""
        if not (0 <= worker < self.workers) or nbytes > self.slot_bytes:
            return None
        if self._free is None:
            self._free = list(range(self.slots))
        returned = self._returned[worker]
        while returned.poll():
            self._free.extend(returned.recv_bytes())
        if not self._free:
            return None
        slot = self._free.pop()
        return slot, self.buffer[worker, slot, :nbytes]

    def untake(self, slot: int) -> None:
        """Put back a slot this worker took but will not send (its batch failed)."""
        self._free.append(slot)

    def view(self, worker: int, slot: int, shape) -> torch.Tensor:
        """The slot's bytes as a uint8 tensor of ``shape`` (main process)."""
        return self.buffer[worker, slot, :int(np.prod(shape))].view(*shape)

    def give_back(self, worker: int, slot: int) -> None:
        """The main process reads the slot no more: the worker may fill it again."""
        try:
            self._give[worker].send_bytes(bytes([slot]))
        except (OSError, ValueError):  # closed: the iteration that used the ring has ended
            pass

    def close(self) -> None:
        """End of the iteration (main process): batches that still name this ring are refused."""
        if _OPEN.get(self.id) is self:
            del _OPEN[self.id]
        for conn in self._returned + self._give:
            conn.close()

    def __getstate__(self):
        # to a spawned worker: the buffer (shared through its file descriptor) and the pipes; no free list yet
        return {**self.__dict__, "_free": None}
