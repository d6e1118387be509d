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

Iterated in the training process, a producer thread makes the next batches
(``prefetch``, default 2) while the training step runs: on CUDA on its own
stream, handed over with an event (:class:`StreamHandoff`); on CPU with its own
torch thread count (``decode_threads``; torch's intra-op count is per OS thread
once a thread has started, so the training thread keeps its own). The plan of
batches is fixed before the producer starts, so what is yielded, resumed and
dealt to ranks and workers is the same as without it. Stopping early (``break``,
an exception, dropping the iterator, interpreter exit) stops the producer;
an exception raised in it is raised in the consumer.

On CPU the overlap can only share the cores: where generation and training
both scale with threads (an idle machine) the loop costs about what
generating then training costs; it pays where they do not (a loaded machine,
small models) and on a GPU, where the two run side by side.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import weakref
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._util.device import StreamHandoff
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
    - ``prefetch``: batches a producer thread keeps ready while training runs (default: 2 when
      iterated in the training process, 0 in DataLoader workers, which already run ahead, and 0
      with a custom T_x callable or ``real=``: those may draw from torch's global RNG, whose
      order a second thread would make depend on timing); 0 generates each batch when it is
      asked for, in the consumer's thread.
    - ``decode_threads``: torch threads of the producer on CPU: decode blocks at once (each on one
      thread) and T_x. Default: half the cores (on 2 cores one each: in 8 of 8 paired rounds of
      ``benchmarks/bench_continuous.py`` that loop was ~12 % faster than the producer on both cores
      beside a one-thread training step, which time-slices them). The bytes do not depend on it.
    - ``share_cores``: on CPU with a producer, the training thread (the one iterating) runs at
      most ``cores - decode_threads`` torch threads (at least 1) while it iterates, and gets its
      own count back when the iteration ends or stops. On 2 cores a 2-thread training step beside
      the producer ran the loop 1.3x (idle machine) to 1.9x (loaded) slower than a 1-thread one
      (``benchmarks/bench_continuous.py``). ``False`` leaves the training thread's count alone.
    - ``compile``: decode through ``torch.compile`` (see :class:`~synthviews.views.ViewSampler`).
    - :meth:`state_dict` / :meth:`load_state_dict` resume the stream mid-epoch.
    """

    def __init__(self, model, policy=None, views: int | None = None, epoch_samples: int = 10_000,
                 batch_size: int = 64, seed: int = 0, device=None, amp: str | None = None,
                 t_x: str | Callable | None = "no_color", t_x_size: int = 112, output: str = "tuple", real=None,
                 real_ratio: float = 0.0, num_workers: int = 0, crops: int = 2, prefetch: int | None = None,
                 decode_threads: int | None = None, share_cores: bool = True, compile: bool = False):
        super().__init__()
        for name, value in (("prefetch", prefetch), ("decode_threads", decode_threads)):
            low = 0 if name == "prefetch" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"ContinuousViews: {name} must be an integer >= {low} or None, got {value!r}")
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
        self.sampler = ViewSampler(model, policy, views=crops - 1, seed=seed, device=device, amp=amp, compile=compile,
                                   compile_inference=False)  # warmed for the no_grad decode batch() uses
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
        self.prefetch, self.decode_threads, self.share_cores = prefetch, decode_threads, bool(share_cores)
        self._lock = (os.getpid(), threading.Lock())
        training_ranks()  # a bad RANK/WORLD_SIZE fails here, in one line

    def __getstate__(self):  # picklable for spawned DataLoader workers: the lock is made again there
        return {**self.__dict__, "_lock": None}

    def _guard(self) -> threading.Lock:
        """One batch at a time per dataset (in this process): producers share one sampler and its pool."""
        if self._lock is None or self._lock[0] != os.getpid():  # unpickled, or copied by a fork
            self._lock = (os.getpid(), threading.Lock())
        return self._lock[1]

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
        plan = range(first, per_rank, workers)
        offset = self.epoch * (self.epoch_samples // self.batch_size)  # fixed here: the producer runs ahead

        def indices(local: int) -> np.ndarray:
            start = (offset + local * world + rank) * self.batch_size
            return np.arange(start, start + self.batch_size)

        depth, restore, producer = self._prefetch_depth(), None, None
        ident, set_threads = threading.get_ident, torch.set_num_threads  # kept: interpreter exit clears modules
        try:
            if depth == 0:
                items = ((local, self.batch(indices(local))) for local in plan)
            else:
                decode, train = self._cpu_split()
                if train is not None:  # this (the training) thread's own count, until the iteration ends
                    restore = (ident(), torch.get_num_threads())
                    set_threads(train)
                items = producer = _Producer(((local, indices(local)) for local in plan), self.batch, depth,
                                             StreamHandoff(self.sampler.device), decode)
            for local, item in items:
                self._consumed = local + 1 - self._start
                yield item
        finally:
            if producer is not None:
                producer.close()
            if restore is not None and restore[0] == ident():
                set_threads(restore[1])
        self._start, self._consumed = 0, 0

    def _prefetch_depth(self) -> int:
        if self.prefetch is not None:
            return self.prefetch
        if not self.t_x_seeded or self.real_ratio > 0:
            # A custom T_x or the real dataset's transforms draw from torch's global RNG, as the training step
            # does: in a producer thread the order of those draws would follow thread timing.
            return 0
        return 0 if torch.utils.data.get_worker_info() is not None else 2

    def _cpu_split(self) -> tuple[int | None, int | None]:
        """``(producer threads, training threads)`` on CPU; None where a count stays as it is."""
        consumer = torch.get_num_threads()  # first: fixes this thread's own count before the producer sets its
        if self.sampler.device.type != "cpu":
            return None, None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.decode_threads is not None:
            decode, train = self.decode_threads, max(1, cores - self.decode_threads)
        else:
            decode = max(1, cores // 2)
            train = max(1, cores - decode)
        return decode, (train if self.share_cores and consumer > train else None)

    @torch.no_grad()  # not inference_mode: the views feed a model that is trained on them
    def batch(self, indices: np.ndarray):
        """The item for a batch of sample indices: views on the device, T_x applied."""
        indices = np.asarray(indices, dtype=np.int64)
        with self._guard():
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


# --- the producer thread ---------------------------------------------------------


_LIVE: "weakref.WeakSet[_Producer]" = weakref.WeakSet()


class _Producer:
    """``make(job)`` for each ``(key, job)`` of ``jobs`` in a thread, at most ``depth`` results ahead.

    Iterate it for ``(key, result)`` in order; an exception raised by ``make`` (or by ``jobs``)
    is raised by the iteration, with a note saying where. :meth:`close` stops the thread after
    the batch it is making and waits for it; interpreter exit closes every live producer.
    """

    _POLL = 0.05  # seconds between checks of the stop flag while the queue is full
    _EMPTY = queue.Empty  # close() may run while the interpreter clears module globals
    _ident = staticmethod(threading.get_ident)

    def __init__(self, jobs, make: Callable, depth: int, handoff: StreamHandoff, threads: int | None = None):
        self._jobs, self._make, self._handoff, self._threads = jobs, make, handoff, threads
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = self._closed = False
        self._thread = threading.Thread(target=self._run, name="synthviews-continuous", daemon=True)
        _LIVE.add(self)
        self._thread.start()

    def _run(self) -> None:
        key = None
        try:
            with self._torch_threads(), self._handoff.producing():
                for key, job in self._jobs:
                    if self._stop.is_set():
                        return
                    item = self._make(job)
                    if not self._put(("item", key, (item, self._handoff.ready(item)))):
                        return
            self._put(("end", None, None))
        except BaseException as exc:  # noqa: BLE001 - everything goes to the consumer
            where = "making the first batch" if key is None else f"making batch {key}"
            exc.add_note(f"(raised in the ContinuousViews producer thread, {where})")
            self._put(("error", key, exc))
        finally:
            self._jobs = self._make = None  # nothing of the dataset stays alive through a finished thread

    @contextlib.contextmanager
    def _torch_threads(self):
        """This thread's torch intra-op count (set per thread; restored for threads started later)."""
        if self._threads is None:
            yield
            return
        saved = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            yield
        finally:
            torch.set_num_threads(saved)

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=self._POLL)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        while True:
            try:
                kind, key, payload = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("the ContinuousViews producer thread stopped without a result "
                                       "(closed at interpreter exit?)") from None
        if kind == "item":
            item, ticket = payload
            return key, self._handoff.receive(item, ticket)
        self._done = True
        self.close()
        if kind == "error":
            try:
                raise payload
            finally:
                payload = None  # no cycle through the traceback
        raise StopIteration

    def close(self, timeout: float | None = None) -> None:
        """Stop after the current batch and wait for the thread (not from the thread itself)."""
        if self._closed:
            return
        self._done = True
        self._stop.set()
        while True:  # free the slots: a full queue holds batches nobody will read
            try:
                self._queue.get_nowait()
            except self._EMPTY:
                break
        if self._thread.ident != self._ident():
            self._thread.join(timeout)
        self._closed = not self._thread.is_alive()
        _LIVE.discard(self)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _close_all() -> None:
    """At interpreter exit, before non-daemon threads are joined: stop every producer."""
    for producer in list(_LIVE):
        producer.close(timeout=60)


if hasattr(threading, "_register_atexit"):  # runs before threading joins threads (as concurrent.futures does)
    threading._register_atexit(_close_all)
else:  # pragma: no cover
    import atexit

    atexit.register(_close_all)
