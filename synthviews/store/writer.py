"""Offline generation: views -> WebDataset tar shards, a manifest, a dataset card.

The device only decodes: JPEG encoding runs in a thread pool (each batch split
into one chunk per thread; small views in worker processes behind the threads,
see ``encoding``) and tar writing in one writer thread, fed through a bounded
queue; decoded pixels go into a small ring of reused host buffers (pinned,
filled by a non-blocking copy on a side stream on CUDA: see
``_util.device.DeviceCopy``), so memory stays flat. A shard is written under a
hidden temporary name and renamed when complete, then the manifest is updated
atomically, so a killed run leaves only whole shards and rerunning the same
command continues where it stopped. The manifest (or a rank's progress file)
is written before the first shard, so even a run killed at once is recognised
as this run's; a writer lock (``lock.DatasetLock``) keeps a second writer out
of the folder while one runs.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .._util.checks import (
    MAX_BATCH_SIZE,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_SHARD_SIZE,
    MAX_SHARDS,
    MAX_VIEWS,
    MAX_WORKERS,
    check_int,
)
from .._util.device import DeviceCopy, resolve_device
from .._util.distributed import Ranks, barrier, destroy_process_group, detect_ranks, init_process_group
from .._util.files import sha256_file
from ..errors import ConfigError
from ..models import MLVGM, load_model
from ..views import DECODE_BLOCK, ViewSampler
from .card import write_card
from .encoding import EncoderProcesses, encode_chunk, sample_meta, use_processes
from .format import (
    PROGRESS_RE,
    SHARD_RE,
    check_format,
    check_split,
    encode_sample,
    is_own_hidden_file,
    progress_name,
    shard_name,
    shard_number,
    temporary_name,
    view_field,
)
from .lock import DatasetLock
from .manifest import (
    ENCODERS,
    FORMAT_VERSION,
    done_shards,
    fold_progress,
    merge,
    pending_splits,
    read_manifest,
    read_progress,
    remove_temporaries,
    shard_ranges,
    split_entry,
    write_manifest,
    write_progress,
)
from .tarshards import TarSampleWriter

TAR_MTIME = 0  # fixed member mtime: same command, same bytes
HOST_RING = 3  # decoded batches in flight: one being copied/filled, one being encoded, one spare


def generate(out: str | Path, model: str | MLVGM = "digits", policy=None, *, samples: int = 1000, views: int = 1,
             seed: int = 0, shard_size: int = 1000, format: str = "jpg", quality: int | None = None,
             batch_size: int = 64, device: str | None = "auto", amp: str | None = None, save_latents: bool = False,
             split: str = "train", resume: bool = False, rank: int | None = None, world_size: int | None = None,
             workers: int | None = None, progress: bool = False, model_kwargs: dict | None = None,
             decode_block: int = DECODE_BLOCK, encoder: str = "cpu", compile: bool = False) -> Path:
    """Write ``samples`` anchors with ``views`` positives each to ``out`` as WebDataset shards.

    Rerunning with the same arguments continues an interrupted run (``resume=True``
    additionally insists there is something to continue); different arguments on
    an existing split are refused. ``rank``/``world_size`` make this one of several
    independent jobs (merge with :func:`synthviews.store.manifest.merge`); under torchrun
    the ranks come from the environment. Returns ``out``.

    One writer per folder: while a run writes ``out`` (or, with ranks, while a job of the
    same rank or of another world size does) a second is refused with a ConfigError naming
    it (pid, host, since when). The CLI also turns SIGTERM into a clean exit (status 143).

    The generator decodes fixed blocks of ``decode_block`` samples (see
    :class:`~synthviews.views.ViewSampler`), so the bytes never depend on
    ``batch_size``, which only groups blocks (rounded to whole blocks).

    ``workers`` is the number of JPEG/PNG/WebP encoding threads (default: see
    :func:`default_encoders`); views of up to 64x64 pixels, in runs of 1,024 samples or
    more, are encoded by one worker process per thread (see ``encoding``: same bytes). On
    CPU, by default, the generator gets every core as long as encoding costs little next to
    decoding (measured on the first batches; the encoders then run in the gaps) and cores minus the encoders' share otherwise; with ``workers`` given it gets
    the other ``cores - workers``. Neither changes the bytes. ``encoder="nvjpeg"`` encodes the
    JPEGs on the CUDA device (torchvision needed); its bytes differ from the default CPU
    encoder's, so the manifest records the encoder and a resume with another one is refused.
    ``compile=True`` decodes through ``torch.compile`` (see :class:`~synthviews.views.ViewSampler`).
    """
    out = Path(out)
    samples = check_int(samples, "samples", 1, MAX_SAMPLES)
    shard_size = check_int(shard_size, "shard size", 1, MAX_SHARD_SIZE)
    batch_size = check_int(batch_size, "batch size", 1, MAX_BATCH_SIZE)
    check_int(views, "views (positives per anchor)", 1, MAX_VIEWS)
    check_int(seed, "seed", 0, MAX_SEED)
    if -(-samples // shard_size) > MAX_SHARDS:  # the shard list is built in memory: bound its length
        raise ConfigError(f"{samples} samples in shards of {shard_size} make {-(-samples // shard_size):,} shards; "
                          f"the limit is {MAX_SHARDS:,}: raise --shard-size")
    if workers is not None:
        workers = check_int(workers, "workers", 1, MAX_WORKERS)
    if world_size is not None:
        check_int(world_size, "--world-size", 1, MAX_SHARDS)
    quality = check_format(format, quality)
    if encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder {encoder!r}; use {' or '.join(ENCODERS)}")
    check_split(split)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder; choose a folder path for --out")
    ranks = detect_ranks(rank, world_size)
    # a foreign folder: refused untouched, before a model loads or compiles; the rest under the lock
    _check_out_folder(out, split, None, resume)

    if isinstance(model, str):
        model = load_model(model, **(model_kwargs or {}))
    dev = resolve_device(device)
    if ranks.use_torch_distributed and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", ranks.local_rank)
    if encoder == "nvjpeg":
        _check_nvjpeg(dev, format, model.image_shape)
    sampler = ViewSampler(model, policy, views=views, seed=seed, device=dev, amp=amp, block=decode_block,
                          compile=compile)
    config = {
        **sampler.describe(),
        "samples": samples, "shard_size": shard_size, "split": split, "save_latents": bool(save_latents),
        "image": {"format": format, "quality": quality, "shape": list(model.image_shape),
                  **({"encoder": encoder} if encoder != "cpu" else {})},  # absent: the CPU encoder, as before
    }

    meta = {"seed": seed, "model_id": config["model"]["model_id"], "policy_id": config["policy_id"], "views": views}
    ranges = shard_ranges(samples, shard_size)

    cpus = os.cpu_count() or 1
    torch_threads = torch.get_num_threads()
    cpu_split = CpuSplit(max(1, min(torch_threads, cpus)), workers, cpus=cpus) if dev.type == "cpu" else None
    if workers is None:
        workers = default_encoders(cpus, dev.type)
    try:
        init_process_group(ranks, dev)
        out.mkdir(parents=True, exist_ok=True)
        with DatasetLock(out, ranks.rank, ranks.world_size):
            _generate_locked(out, split, config, resume, ranks, sampler, meta, format, quality, save_latents, workers,
                             batch_size, ranges, progress, views, encoder, cpu_split)
    finally:
        destroy_process_group(ranks)
        torch.set_num_threads(torch_threads)
    return out


def _generate_locked(out: Path, split: str, config: dict, resume: bool, ranks: Ranks, sampler: ViewSampler, meta: dict,
                     format: str, quality, save_latents: bool, workers: int, batch_size: int, ranges: list,
                     progress: bool, views: int, encoder: str = "cpu", cpu_split: CpuSplit | None = None) -> None:
    """The part of :func:`generate` that runs as the folder's (or the rank's) only writer."""
    _remove_stale_temporaries(out, ranks)
    done = _check_out_folder(out, split, config, resume)
    todo = [s for s in range(len(ranges)) if ranks.owns(s) and s not in done]
    mine = {s: r for s, r in done.items() if ranks.owns(s)}
    _write_split_entry(out, split, config, mine, len(ranges), ranks)  # from now on the folder is this run's

    def shard_written(record: dict) -> None:
        mine[record["shard"]] = record
        _record_progress(out, split, config, mine, len(ranges), ranks)

    owned = sum(ranges[s][1] for s in range(len(ranges)) if ranks.owns(s))
    bar = tqdm(total=owned, initial=owned - sum(ranges[s][1] for s in todo), unit="sample", disable=not progress,
               desc=f"{split} rank {ranks.rank}/{ranks.world_size}" if ranks.world_size > 1 else split)
    processes = encoder == "cpu" and use_processes(sampler.model.image_shape, sum(ranges[s][1] for s in todo))
    with bar, _ShardPipeline(out, split, format, quality, workers, shard_written, processes) as pipeline:
        batches = _BatchEncoder(sampler, meta, format, quality, save_latents, pipeline, encoder, cpu_split,
                                rows=batch_rows(batch_size, sampler.block))
        for idx, parts, ended in shard_batches(ranges, todo, batch_size, sampler.block):
            job = batches.submit(idx)
            for s, lo, hi in parts:
                pipeline.submit(s, _Part(job, lo, hi))
                if s in ended:
                    pipeline.end_shard(s, *ranges[s])
            bar.update(len(idx))
            bar.set_postfix_str(f"{bar.format_dict['rate'] or 0:.0f} samples/s, "
                                f"{(bar.format_dict['rate'] or 0) * (1 + views):.0f} views/s", refresh=False)

    if ranks.world_size == 1 or ranks.use_torch_distributed:  # independent jobs end with `synthviews merge`
        barrier(ranks)
        if ranks.rank == 0:  # also folds in progress files of an earlier multi-rank run
            write_card(out, fold_progress(out, split))
        barrier(ranks)


def batch_rows(batch_size: int, block: int) -> int:
    """``batch_size`` rounded to whole decode blocks: the most samples a batch holds."""
    return max(1, round(batch_size / block)) * block


def block_aligned_batches(start: int, stop: int, batch_size: int, block: int):
    """Index ranges covering [start, stop) whose boundaries fall on global multiples of
    ``batch_size`` rounded to whole blocks: no decode block is split between two batches
    except where the range itself starts or ends inside one."""
    step = batch_rows(batch_size, block)
    while start < stop:
        end = min(stop, (start // step + 1) * step)
        yield np.arange(start, end)
        start = end


def shard_batches(ranges: list, todo: list[int], batch_size: int, block: int):
    """(indices, [(shard, lo, hi) of the indices' positions], shards that end in it) for the ``todo`` shards
    in order. A batch runs on across consecutive shards, so a decode block on a shard boundary (shards
    of 1,000 samples, blocks of 16) is decoded once, not once per shard."""
    runs: list[list] = []  # [start, stop, shards] of consecutive todo shards
    for s in todo:
        first, count = ranges[s]
        if runs and runs[-1][1] == first:
            runs[-1][1] += count
            runs[-1][2].append(s)
        else:
            runs.append([first, first + count, [s]])
    for start, stop, shards in runs:
        k = 0
        for idx in block_aligned_batches(start, stop, batch_size, block):
            lo, hi = int(idx[0]), int(idx[-1]) + 1
            parts, ended = [], set()
            while k < len(shards):
                first, count = ranges[shards[k]]
                parts.append((shards[k], max(first, lo) - lo, min(first + count, hi) - lo))
                if first + count > hi:
                    break
                ended.add(shards[k])
                k += 1
            yield idx, parts, ended


def _check_out_folder(out: Path, split: str, config: dict | None, resume: bool) -> dict[int, dict]:
    """Refuse a foreign or differently configured folder; return the shards already done
    (with ``config`` None, only whether the folder may be used, without reading its shards).

    A folder that is empty or holds only synthviews' own hidden files (a lock, temporaries)
    is a run killed before its first manifest: it is resumed, with or without --resume.
    """
    if not out.exists():
        if resume:
            raise ConfigError(f"nothing to resume: {out} does not exist")
        return {}
    manifest = read_manifest(out)
    has_split = bool(read_progress(out, split)) or bool(manifest and split in manifest["splits"])
    if not has_split:
        names = [p.name for p in out.iterdir()]
        if resume and names and not any(map(is_own_hidden_file, names)):
            raise ConfigError(f"nothing to resume: {out} holds no synthviews split {split!r}")
        if manifest is None and not pending_splits(out) and not all(map(is_own_hidden_file, names)):
            raise ConfigError(f"{out} is not empty and holds no synthviews dataset; choose a new or empty --out")
        return {}
    return {} if config is None else done_shards(out, split, config)


def _remove_stale_temporaries(out: Path, ranks: Ranks) -> None:
    """Temporary files a killed run left (never visible under a final name): removed.

    A single process holds the folder alone: all of them. A rank of a multi-rank run only
    those of files no other rank writes: shards it owns, its progress files and, on rank 0
    (the only writer of the manifest and the card), those too.
    """
    def others(name: str) -> bool:
        if SHARD_RE.match(name):
            return not ranks.owns(shard_number(name))
        if m := PROGRESS_RE.match(name):
            return name != progress_name(m.group("split"), ranks.rank, ranks.world_size)
        return ranks.rank != 0

    remove_temporaries(out, keep=others if ranks.world_size > 1 else lambda name: False)


def _record_progress(out: Path, split: str, config: dict, mine: dict, num_shards: int, ranks: Ranks) -> None:
    """After each shard: the shards done so far, into the manifest or this rank's progress file."""
    _write_split_entry(out, split, config, mine, num_shards, ranks)


def _write_split_entry(out: Path, split: str, config: dict, mine: dict, num_shards: int, ranks: Ranks) -> None:
    if ranks.world_size == 1:
        manifest = read_manifest(out) or {"format_version": FORMAT_VERSION, "splits": {}}
        manifest["splits"][split] = split_entry(config, mine, num_shards)
        write_manifest(out, manifest)
    else:
        write_progress(out, split, ranks.rank, ranks.world_size, split_entry(config, mine, num_shards))


def default_encoders(cpus: int, device_type: str) -> int:
    """Encoding threads when ``workers`` is not given (the CLI's --workers help states the same).

    With CUDA the cores do nothing but encode (and feed the device: one core): a 16-core box
    encodes 512 px JPEGs at ~300/s a core, which a few threads cannot keep up with. On CPU one
    thread per core: idle ones cost nothing, and the generator's share is chosen by :class:`CpuSplit`.
    """
    return max(1, cpus - 1) if device_type == "cuda" else max(1, cpus)


def split_threads(cores: int, decode_s: float, encode_s: float) -> int:
    """Generator threads out of ``cores`` for a measured decode and encode cost (CPU seconds per sample):
    the encoders' share of the cores, rounded (so every core while encoding is cheap), goes to them."""
    if decode_s <= 0 or encode_s <= 0:
        return cores
    encoders = round(cores * encode_s / (decode_s + encode_s))
    return max(1, cores - encoders)


class CpuSplit:
    """torch threads for the generator on CPU, chosen from the first batches' measured costs.

    ``cores`` is what the generator may use (torch's thread count, at most the CPUs). The first
    batch (warm-up) is not measured; once ``measure`` more are decoded and about a batch is
    encoded, :func:`split_threads` fixes the split for the rest of the run. With ``encoders``
    given the split is fixed from the start: the generator gets the other ``cpus - encoders``
    cores. The bytes never depend on it (decode blocks run single-threaded).
    """

    def __init__(self, cores: int, encoders: int | None = None, measure: int = 3, cpus: int | None = None):
        self.cores, self.measure = cores, measure
        self.threads = cores if encoders is None else max(1, min(cores, (cpus or cores) - encoders))
        self.decided = encoders is not None
        self.batches = 0
        self.decode_s = self.encode_s = 0.0
        self.decoded = self.encoded = 0
        self.lock = threading.Lock()

    def decoded_batch(self, cpu_s: float, samples: int) -> None:
        self.batches += 1
        if not self.decided and self.batches > 1:
            self.decode_s += cpu_s
            self.decoded += samples

    def encoded_chunk(self, cpu_s: float, samples: int) -> None:
        if not self.decided:
            with self.lock:
                self.encode_s += cpu_s
                self.encoded += samples

    def generator_threads(self) -> int:
        """The thread count for the next batch (decides once enough is measured)."""
        if not self.decided and self.batches > self.measure:
            with self.lock:
                encoded, encode_s = self.encoded, self.encode_s
            if encoded >= self.decoded / (self.batches - 1):  # about a batch encoded: its cost is known
                self.threads = split_threads(self.cores, self.decode_s / self.decoded, encode_s / encoded)
                self.decided = True
        return self.threads


def _check_nvjpeg(dev: torch.device, fmt: str, shape) -> None:
    """GPU JPEG encoding needs a CUDA device, torchvision, JPEG output and RGB views: one line otherwise."""
    if dev.type != "cuda":
        raise ConfigError(f"--encoder nvjpeg encodes on a CUDA device, but this run decodes on {dev.type}; "
                          "use --encoder cpu or --device cuda")
    if fmt != "jpg":
        raise ConfigError(f"--encoder nvjpeg writes JPEG only, not {fmt}; use --format jpg or --encoder cpu")
    if shape[0] != 3:
        raise ConfigError(f"--encoder nvjpeg encodes 3-channel images; this model's have {shape[0]}: "
                          "use --encoder cpu")
    try:
        from torchvision.io import encode_jpeg  # optional: only this encoder needs it
    except ImportError:
        raise ConfigError("--encoder nvjpeg needs torchvision (pip install torchvision, the build matching "
                          "your torch); or use --encoder cpu") from None
    try:  # a CPU-only or too old torchvision fails here, before the folder records this encoder
        encode_jpeg([torch.zeros(3, 8, 8, dtype=torch.uint8, device=dev)], quality=90)
    except Exception as e:  # noqa: BLE001 - its type and text vary between torchvision builds
        raise ConfigError(f"--encoder nvjpeg: this torchvision cannot encode JPEGs on {dev} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); use --encoder cpu") from None


class _HostRing:
    """A few preallocated host buffers for decoded batches, reused instead of allocated per batch: float
    on CPU (the blocks decode into them), uint8 on a device (the rounded batch is copied into them).

    A buffer is taken before a batch is decoded or copied into it and given back once its last encoding
    chunk is done, so at most ``size`` decoded batches are in flight (memory stays flat)."""

    def __init__(self, copier: DeviceCopy, shape: tuple, dtype: torch.dtype = torch.uint8, size: int = HOST_RING):
        self.free: queue.Queue = queue.Queue()
        for _ in range(size):
            self.free.put(copier.host_buffer(shape, dtype))

    def take(self, failed) -> torch.Tensor:
        while True:
            if (error := failed()) is not None:
                raise error
            try:
                return self.free.get(timeout=0.2)
            except queue.Empty:
                continue

    def give_back(self, buffer: torch.Tensor) -> None:
        self.free.put(buffer)


class _BatchJob:
    """The encoding chunks of one batch, in order; ``result()`` is its WebDataset samples."""

    def __init__(self, futures: list[Future], on_done=None):
        self.futures = futures
        self.left, self.lock, self.on_done = len(futures), threading.Lock(), on_done
        if on_done is not None:
            for f in futures:
                f.add_done_callback(self._one_done)
            if not futures:
                on_done()

    def _one_done(self, _future) -> None:
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            self.on_done()

    def result(self) -> list[dict]:
        return [sample for f in self.futures for sample in f.result()]


class _Part:
    """Samples ``lo:hi`` of a batch job: the share of one shard when a batch spans two."""

    def __init__(self, job: _BatchJob, lo: int, hi: int):
        self.job, self.lo, self.hi = job, lo, hi

    def result(self) -> list[dict]:
        return self.job.result()[self.lo:self.hi]


class _BatchEncoder:
    """Decode on the device now; encode in the pool, in chunks, later.

    The pixels go into the host ring (on CUDA by a non-blocking copy on a side stream: the
    device goes on with the next batch; the chunks wait for the copy's event). With
    ``encoder='nvjpeg'`` the device encodes the JPEGs and only their bytes come to the host.
    """

    def __init__(self, sampler: ViewSampler, base: dict, fmt: str, quality, save_latents: bool,
                 pipeline: _ShardPipeline, encoder: str, cpu_split: CpuSplit | None, rows: int):
        self.sampler, self.base, self.fmt, self.quality = sampler, base, fmt, quality
        self.save_latents, self.pipeline, self.encoder, self.split, self.rows = \
            save_latents, pipeline, encoder, cpu_split, rows
        self.copier = DeviceCopy(sampler.device)
        self.ring: _HostRing | None = None
        self.groups = sampler.model.group_names

    def submit(self, idx: np.ndarray) -> _BatchJob:
        if self.split is not None and torch.get_num_threads() != (threads := self.split.generator_threads()):
            torch.set_num_threads(threads)  # generate restores the caller's count at the end
        # On CPU the blocks decode straight into a float buffer of the ring (no batch-sized allocation
        # or copy per batch), rounded sample by sample where it is encoded (cache-hot); taken before the
        # decode, so the ring has one buffer more. On a device (nvjpeg too: it needs CUDA) the batch is
        # rounded there, then one non-blocking copy of a quarter of the bytes into a uint8 buffer.
        buffer = self._buffer((self.sampler.views + 1, *self.sampler.model.image_shape), torch.float32,
                              HOST_RING + 1) if self.sampler.device.type == "cpu" else None
        try:
            t0 = time.perf_counter()
            batch = self.sampler.sample(idx, out=None if buffer is None else buffer[:len(idx)])
            t1 = time.perf_counter()  # CPU: the decode's wall time
            deltas = batch.deltas.numpy()  # (B, K, G); the json is built in the encoding thread or process
            codes = batch.codes.float().cpu().numpy() if self.save_latents else None
            if self.encoder == "nvjpeg":
                return self._submit_encoded(idx, batch, deltas, codes)
            if buffer is not None:
                pixels, pending = buffer[:len(idx)].numpy(), None
            else:
                c, h, w = batch.images.shape[2:]
                buffer = self._buffer((batch.images.shape[1], h, w, c), torch.uint8, HOST_RING)
                pending = self.copier.start(_rounded_uint8_hwc(batch.images), buffer[:len(idx)])
                pixels = buffer[:len(idx)].numpy()
        except BaseException:
            if buffer is not None:
                self.ring.give_back(buffer)
            raise
        if self.split is not None:  # CPU seconds of the decode: its blocks ran on min(threads, blocks) cores
            threads, blocks = torch.get_num_threads(), len(np.unique(idx // self.sampler.block))
            self.split.decoded_batch((t1 - t0) * min(threads, blocks), len(idx))
        processes = self.pipeline.processes

        def encode(lo: int, hi: int) -> list[dict]:
            if pending is not None:
                pending.wait()
            args = (idx[lo:hi], pixels[lo:hi], deltas[lo:hi], self.base, self.groups, self.fmt, self.quality,
                    None if codes is None else codes[lo:hi])
            # in a worker process this thread only waits for the answer (GIL released)
            out, cpu_s = encode_chunk(*args) if processes is None else processes.encode(*args)
            if self.split is not None:
                self.split.encoded_chunk(cpu_s, hi - lo)
            return out

        return _BatchJob(self._chunks(encode, len(idx)), on_done=lambda: self.ring.give_back(buffer))

    def _buffer(self, shape: tuple, dtype: torch.dtype, size: int) -> torch.Tensor:
        """A free (rows, *shape) buffer of the ring of ``size``, made on first use; waiting for one bounds
        the batches in flight."""
        if self.ring is None:
            self.ring = _HostRing(self.copier, (self.rows, *shape), dtype, size)
        return self.ring.take(lambda: self.pipeline.error)

    def _submit_encoded(self, idx: np.ndarray, batch, deltas: np.ndarray, codes: np.ndarray | None) -> _BatchJob:
        from torchvision.io import encode_jpeg

        with torch.inference_mode():
            u8 = batch.images.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8)  # (B, 1+K, C, H, W), device
            # Older torchvision encodes on its own stream without waiting for ours: make the pixels final first.
            if u8.is_cuda:
                torch.cuda.current_stream(u8.device).synchronize()
            encoded = encode_jpeg(list(u8.flatten(0, 1)), quality=self.quality)
            sizes = [int(e.numel()) for e in encoded]
            blob = torch.cat(encoded)
        host = self.copier.host_buffer(blob.shape)  # pinned (cached by torch's host allocator)
        pending = self.copier.start(blob, host)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        views = u8.shape[1]

        def encode(lo: int, hi: int) -> list[dict]:
            pending.wait()
            data = host.numpy()
            out = []
            for b in range(lo, hi):
                meta = sample_meta(self.base, idx[b], deltas[b], self.groups)
                sample = encode_sample(int(idx[b]), np.empty((0,), np.uint8), meta, self.fmt, self.quality,
                                       None if codes is None else codes[b])
                for v in range(views):
                    j = b * views + v
                    sample[view_field(v, self.fmt)] = data[offsets[j]:offsets[j + 1]].tobytes()
                out.append(sample)
            return out

        return _BatchJob(self._chunks(encode, len(idx)))

    def _chunks(self, encode, n: int) -> list[Future]:
        """One chunk of consecutive samples per encoder thread (and its process), so all work on the same batch."""
        pieces = max(1, min(self.pipeline.workers, n))
        bounds = [n * p // pieces for p in range(pieces + 1)]
        return [self.pipeline.pool.submit(encode, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _rounded_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) float in [0, 1] on a device -> (..., H, W, C) uint8 there, rounded as ``to_uint8``
    rounds (in place on ``images``, the batch's own tensor), laid out as the host buffer."""
    with torch.inference_mode():
        x = images.detach().float().clamp_(0, 1).mul_(255).round_()
        return x.movedim(-3, -1).to(torch.uint8, memory_format=torch.contiguous_format)


def _start_processes(workers: int) -> EncoderProcesses | None:
    """Encoder processes, or None (encode in threads: same bytes, slower) where they cannot start,
    e.g. an embedded interpreter whose ``sys.executable`` is not a Python with synthviews."""
    try:
        return EncoderProcesses(workers)
    except (OSError, RuntimeError) as e:
        warnings.warn(f"synthviews generate: encoding in threads, worker processes did not start ({e})", stacklevel=3)
        return None


class _ShardPipeline:
    """Encoding pool (threads; with ``processes``, each thread hands its chunks to a worker process of its
    own) + one tar-writing thread behind a bounded queue of futures (kept in order)."""

    def __init__(self, out: Path, split: str, fmt: str, quality, workers: int, on_shard_done,
                 processes: bool = False):
        self.out, self.split, self.on_shard_done, self.workers = out, split, on_shard_done, workers
        self.processes = _start_processes(workers) if processes else None
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="synthviews-encode")
        self.queue: queue.Queue = queue.Queue(maxsize=2 * workers)
        self.error: BaseException | None = None
        self.abort = threading.Event()
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._write_loop, name="synthviews-writer", daemon=True)
        self.thread.start()

    def submit(self, shard: int, job: Future) -> None:
        self._put(("batch", shard, job))

    def end_shard(self, shard: int, first: int, count: int) -> None:
        self._put(("end", shard, (first, count)))

    def _put(self, item) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort.set()
        try:
            self._put_final()
            self.finished.wait()
        except BaseException:  # Ctrl-C or SIGTERM while waiting: stop the writer, but let it clean up first
            self.abort.set()
            self._put_final()
            self.finished.wait()  # not Thread.join: an interrupted join marks a running thread stopped (bpo-45274)
            raise
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            if self.processes is not None:
                self.processes.close()
        if exc_type is None and self.error is not None:
            raise self.error

    def _put_final(self) -> None:
        while not self.finished.is_set():
            try:
                self.queue.put(None, timeout=0.2)
                return
            except queue.Full:
                if self.abort.is_set() or self.error is not None:
                    self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass

    def _write_loop(self) -> None:
        tmp, stream, writer, written, final = None, None, None, 0, None
        try:
            while (item := self.queue.get()) is not None:
                if self.abort.is_set():
                    continue
                kind, shard, payload = item
                if writer is None:
                    final = self.out / shard_name(self.split, shard)
                    tmp = final.with_name(temporary_name(final.name))
                    stream = open(tmp, "wb")
                    writer = TarSampleWriter(stream, mtime=TAR_MTIME, user="synthviews", group="synthviews")
                    written = 0
                if kind == "batch":
                    for sample in payload.result():
                        writer.write(sample)
                        written += 1
                    continue
                first, count = payload
                if written != count:
                    raise RuntimeError(f"shard {shard}: wrote {written} samples, expected {count}")
                writer.close()
                stream.flush()
                os.fsync(stream.fileno())
                stream.close()
                record = {"shard": shard, "name": final.name, "first_index": first, "count": count,
                          "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
                os.replace(tmp, final)
                writer = stream = tmp = None
                self.on_shard_done(record)
        except BaseException as e:  # handed to the main thread, which re-raises it
            if isinstance(e, OSError) and e.filename is None and final is not None:
                e.filename = str(final)  # e.g. a full disk: say which file could not be written
            self.error = e
            self.abort.set()
            self._drain()
        finally:  # an abandoned shard: close quietly (a full disk fails again here), remove the temporary
            for close in (writer and writer.close, stream and stream.close, tmp and tmp.unlink):
                try:
                    if close:
                        close()
                except Exception:  # a temporary left here is removed by the next run
                    pass
            self.finished.set()


__all__ = ["generate", "merge"]
