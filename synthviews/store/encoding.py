"""Encoding samples: the per-sample work of the shard writer, in its threads or in worker processes.

Encoding a sample of 32x32 views is about half Python (rounding, json, the tar fields,
the calls into libjpeg), which holds the GIL that the generator's threads need to
dispatch their many small ops. Digits (32 px) runs at ~0.8-0.9 of a bare decode with the encoding in
worker processes and ~0.7 in threads (benchmarks/bench_generate.py, section 1). Large
views spend their time in libjpeg with the GIL released (see ``jpeg``) and would push
megabytes a sample through the pipes (toy 128 px: 0.55 in processes against 0.67 in
threads), so they stay in threads. Either way the bytes are the same (same numpy
rounding, same Pillow encoder).

The workers are plain ``python -c`` children fed pickles over their stdin and
answering on their stdout (not ``multiprocessing``: its spawn re-runs a user's
unguarded script in every worker, and fork copies a process whose other threads
may hold locks). This module imports no torch, so a worker starts in a fraction
of a second. A worker ignores Ctrl-C (the parent handles it: one line, exit 130)
and exits when its stdin closes, also when the parent is killed.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .format import encode_sample

PROCESS_MAX_PIXELS = 64 * 64   # views up to this many pixels encode in worker processes ...
PROCESS_MIN_SAMPLES = 1024     # ... in runs of at least this many samples (starting workers costs ~0.3 s of CPU)
_HEADER = struct.Struct("<Q")  # the length of each pickle on the pipes


def use_processes(image_shape, samples: int) -> bool:
    """Whether a CPU-encoded run of ``samples`` views of ``image_shape`` (C, H, W) encodes in processes."""
    return image_shape[1] * image_shape[2] <= PROCESS_MAX_PIXELS and samples >= PROCESS_MIN_SAMPLES


def round_into(views: np.ndarray, out: np.ndarray) -> None:
    """(V, C, H, W) float32 in [0, 1] -> ``out`` (V, H, W, C) uint8, exactly as ``to_uint8`` rounds
    (float32 x * 255, round half to even); in place on ``views``. numpy, not torch: it runs in
    the encoding threads without starting OpenMP teams, on one sample at a time (in cache)."""
    np.clip(views, 0, 1, out=views)
    np.multiply(views, np.float32(255), out=views)
    np.rint(views, out=views)
    with np.errstate(invalid="ignore"):  # NaN pixels (a broken model): whatever the cast gives, as in torch
        for c in range(views.shape[-3]):  # a channel at a time: 4x faster than one transposing copy
            np.copyto(out[..., c], views[:, c], casting="unsafe")


def sample_meta(base: dict, index: int, deltas: np.ndarray, groups) -> dict:
    """A sample's json metadata: ``base`` + its index + per group the K positives' deltas ((K, G) array)."""
    return {**base, "index": int(index), "delta": {g: deltas[:, k].tolist() for k, g in enumerate(groups)}}


def encode_chunk(indices: np.ndarray, pixels: np.ndarray, deltas: np.ndarray, base: dict, groups, fmt: str,
                 quality, latents: np.ndarray | None) -> tuple[list[dict], float]:
    """Consecutive samples -> (their WebDataset samples, CPU seconds spent). ``pixels`` is float32
    (n, V, C, H, W) in [0, 1] (rounded here, in place) or uint8 (n, V, H, W, C) already rounded."""
    start = time.thread_time()  # in a worker process: its only thread
    rounded = np.empty((pixels.shape[1], *pixels.shape[3:], pixels.shape[2]), np.uint8) \
        if pixels.dtype != np.uint8 else None
    out = []
    for b, index in enumerate(indices):
        views = pixels[b]
        if rounded is not None:
            round_into(views, rounded)
            views = rounded
        out.append(encode_sample(int(index), views, sample_meta(base, index, deltas[b], groups), fmt, quality,
                                 None if latents is None else latents[b]))
    return out, time.thread_time() - start


# --- worker processes ---------------------------------------------------------------------------

def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream):
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 - our own child or parent, never a file


def serve() -> None:
    """A worker's loop: ``encode_chunk`` arguments in on stdin, ``(ok, result)`` out on stdout, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot corrupt the replies
    requests = sys.stdin.buffer
    _send(replies, (True, "ready"))  # imports done: the parent may count on this worker
    while True:
        try:
            args = _receive(requests)
        except EOFError:
            return
        try:
            reply = (True, encode_chunk(*args))
        except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it (e.g. ConfigError)
            reply = (False, e)
        _send(replies, reply)


class _Worker:
    def __init__(self):
        self.log = tempfile.TemporaryFile()
        root = str(Path(__file__).resolve().parents[2])  # the folder holding this synthviews, for the child
        code = f"import sys; sys.path.insert(0, {root!r}); from synthviews.store.encoding import serve; serve()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)

    def ready(self) -> None:
        """Wait for the worker's first message (its imports are done); RuntimeError if it never comes."""
        try:
            ok, result = _receive(self.proc.stdout)
        except (EOFError, OSError):
            ok, result = False, None
        if not ok or result != "ready":
            try:  # its pipe closed as it exits: wait a moment for the exit code the message names
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise RuntimeError(f"an encoding process (pid {self.proc.pid}) did not start (exit code "
                               f"{self.proc.poll()}): {self._last_line()}")

    def call(self, args: tuple):
        try:
            _send(self.proc.stdin, args)
            ok, result = _receive(self.proc.stdout)
        except (EOFError, OSError):
            raise RuntimeError(f"an encoding process (pid {self.proc.pid}) stopped (exit code {self.proc.poll()}): "
                               f"{self._last_line()}") from None
        if not ok:
            raise result
        return result

    def _last_line(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return lines[-1][-300:] if lines else "no message"

    def stop(self) -> None:
        """Close the worker's stdin: its loop ends at EOF (without waiting for it to exit)."""
        try:
            self.proc.stdin.close()
        except OSError:  # a dead worker's pipe: close() below reaps it
            pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the worker's loop ends at EOF (no-op after stop)
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            self.proc.stdout.close()
            self.log.close()


class EncoderProcesses:
    """``n`` worker processes; :meth:`encode` runs :func:`encode_chunk` on a free one and waits (GIL released)."""

    def __init__(self, n: int):
        self.workers: list[_Worker] = []
        self.free: queue.Queue = queue.Queue()
        try:
            for _ in range(n):
                self.workers.append(_Worker())
                self.free.put(self.workers[-1])
            for worker in self.workers:  # started together, so their imports overlap
                worker.ready()
        except BaseException:
            self.close()
            raise

    def encode(self, *args) -> tuple[list[dict], float]:
        worker = self.free.get()
        try:
            return worker.call(args)
        finally:
            self.free.put(worker)

    def close(self) -> None:
        for worker in self.workers:  # all told first, so they exit together
            worker.stop()
        for worker in self.workers:
            worker.close()
        self.workers = []


__all__ = ["EncoderProcesses", "encode_chunk", "round_into", "sample_meta", "serve", "use_processes"]
