"""Device and precision choice, kept as parameters so GPU paths stay testable on CPU."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..errors import ConfigError

_AMP = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:i``; unusable ones raise ConfigError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def amp_context(device: torch.device, amp: str | None):
    """Autocast for ``amp`` in {None, 'fp16', 'bf16'}; fp16 only on CUDA (CPU has no fast fp16)."""
    if amp is None or amp == "none":
        return contextlib.nullcontext()
    if amp not in _AMP:
        raise ConfigError(f"unknown precision {amp!r}; use none, fp16 or bf16")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 autocast needs a CUDA device; use bf16 or none on CPU")
    return torch.autocast(device_type=device.type, dtype=_AMP[amp])


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device):
    """cuDNN's deterministic kernels (no autotuning) while decoding on CUDA; CPU kernels already are.

    Autotuned or non-deterministic algorithms may round differently from run to run, which
    would break "same config + seed = same bytes". The previous settings are restored.
    """
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """torch at one intra-op thread on CPU (the count is process-wide), restored after.

    A multi-threaded CPU kernel may split a reduction by thread count, so results
    that must not depend on the machine's cores are computed single-threaded.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DeviceCopy:
    """Device -> host copies that let the device go on: the one place for streams, events and pinned memory.

    On CPU :meth:`start` is a plain synchronous copy and :meth:`host_buffer` plain memory. On CUDA the
    copy runs with ``non_blocking=True`` on a side stream (ordered after the work queued so far on the
    current stream) and an event marks its end, so the caller queues the next block while the last one
    is copied; :meth:`Pending.wait` blocks only the thread that needs the host bytes. Host buffers are
    pinned there (a pageable buffer would make the copy synchronous).

    ``backend`` replaces the CUDA calls (:class:`_CudaCalls`), for tests of this logic on a machine
    without a GPU: see ``tests/test_device_copy.py``.
    """

    def __init__(self, device: torch.device, backend=None):
        self.device = torch.device(device)
        self.backend = backend if backend is not None else (_CudaCalls(self.device) if self.device.type == "cuda"
                                                           else None)
        self.stream = self.backend.new_stream() if self.backend is not None else None

    def host_buffer(self, shape, dtype=torch.uint8) -> torch.Tensor:
        """A host tensor to copy into (pinned on CUDA); allocate once and reuse."""
        if self.backend is None:
            return torch.empty(tuple(shape), dtype=dtype)
        return self.backend.pinned_empty(tuple(shape), dtype)

    def start(self, src: torch.Tensor, dst: torch.Tensor) -> Pending:
        """Copy ``src`` (on the device) into the host tensor ``dst``; returns what to wait on before reading it."""
        if self.backend is None:
            dst.copy_(src)
            return Pending(None)
        calls = self.backend
        calls.wait_stream(self.stream, calls.current_stream())  # src is complete when the copy starts
        with calls.use(self.stream):
            dst.copy_(src, non_blocking=True)
            calls.record_stream(src, self.stream)  # the allocator keeps src until the side stream is past the copy
            event = calls.new_event()
            event.record(self.stream)
        return Pending(event)


class Pending:
    """The end of a :class:`DeviceCopy`: :meth:`wait` returns once the host bytes are there."""

    def __init__(self, event):
        self.event = event

    def wait(self) -> None:
        """Safe from several threads at once (each chunk of a batch waits on the same copy)."""
        event = self.event
        if event is not None:
            event.synchronize()
            self.event = None

    def done(self) -> bool:
        event = self.event
        return event is None or event.query()


class StreamHandoff:
    """Items made in one thread and used in another, on the device's streams (continuous sampling).

    On CUDA the producer works on its own stream; :meth:`ready` records an event
    after an item is made, and :meth:`receive` (in the consumer) makes the
    consumer's current stream wait for it and marks the item's tensors as used
    there, so the caching allocator does not hand their memory out again while
    the consumer still reads it. On CPU there are no streams and every call is
    free. ``backend`` replaces the CUDA calls (:class:`_CudaCalls`), so tests
    drive this logic on CPU with a stand-in (``tests/test_continuous_overlap.py``).
    """

    def __init__(self, device: torch.device, backend=None):
        device = torch.device(device)
        if backend is None and device.type == "cuda":
            backend = _CudaCalls(device)
        self.backend, self._stream = backend, None

    @contextlib.contextmanager
    def producing(self):
        """In the producer thread, around all its work: its own stream as the current one."""
        if self.backend is None:
            yield
            return
        self._stream = self.backend.new_stream()  # torch hands out streams from a fixed pool: nothing is created
        with self.backend.use(self._stream):
            yield

    def ready(self, item):
        """In the producer, after making ``item``: the ticket :meth:`receive` waits on."""
        if self.backend is None:
            return None
        event = self.backend.new_event()
        event.record(self._stream)
        return event

    def receive(self, item, ticket):
        """In the consumer, before using ``item``: its stream waits until the item is made."""
        if self.backend is not None:
            consumer = self.backend.current_stream()
            self.backend.wait_event(consumer, ticket)
            for tensor in _tensors(item):
                self.backend.record_stream(tensor, consumer)
        return item


def _tensors(item) -> Iterator[torch.Tensor]:
    """Every tensor in an item (tuples, lists and dicts of them)."""
    if torch.is_tensor(item):
        yield item
    elif isinstance(item, (tuple, list)):
        for part in item:
            yield from _tensors(part)
    elif isinstance(item, dict):
        for part in item.values():
            yield from _tensors(part)


class _CudaCalls:
    """Every CUDA call of :class:`DeviceCopy` and :class:`StreamHandoff`; a test passes an object with
    the same methods instead (not reachable without a CUDA device)."""

    def __init__(self, device: torch.device):
        self.device = device

    def new_stream(self):
        return torch.cuda.Stream(self.device)

    def current_stream(self):
        return torch.cuda.current_stream(self.device)

    def wait_stream(self, stream, other) -> None:
        stream.wait_stream(other)

    def wait_event(self, stream, event) -> None:
        stream.wait_event(event)

    @contextlib.contextmanager
    def use(self, stream):
        with torch.cuda.device(self.device), torch.cuda.stream(stream):  # both are per thread
            yield

    def new_event(self):
        return torch.cuda.Event(blocking=True)  # waiters sleep instead of spinning on the encoders' cores

    def record_stream(self, tensor: torch.Tensor, stream) -> None:
        if tensor.device.type == "cuda":  # an item may hold host tensors too
            tensor.record_stream(stream)

    def pinned_empty(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)


def keep_freed_host_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the OS after every batch.

    A decoding loop frees and reallocates the same large tensors (activations, images) each
    batch; glibc maps blocks above its mmap threshold fresh and trims freed heap tops, so each
    batch page-faults its memory in again (measured: ~1 M minor faults and ~20 % system time
    for 1,000 digits samples). Raising both thresholds (mmap to glibc's 32 MB maximum) keeps
    that memory in the heap: the process's peak RSS is unchanged, it is just not given back.
    Process-wide and one-way (glibc has no "restore"): for long generation runs. Returns whether
    it applied (False off glibc).
    """
    global _KEPT
    if _KEPT is not None:
        return _KEPT
    _KEPT = False
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
            m_trim_threshold, m_mmap_threshold = -1, -3
            ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1  # first: setting trim alone is worse
            _KEPT = ok and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc, or no C library to load
        pass
    return _KEPT


_KEPT: bool | None = None
