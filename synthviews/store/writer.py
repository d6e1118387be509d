"""Offline generation: views -> WebDataset tar shards, a manifest, a dataset card.

The device only decodes: JPEG encoding runs in a thread pool and tar writing
in one writer thread, fed through a bounded queue (memory stays flat). A
shard is written under a hidden temporary name and renamed when complete,
then the manifest is updated atomically, so a killed run leaves only whole
shards and rerunning the same command continues where it stopped. The manifest
(or a rank's progress file) is written before the first shard, so even a run
killed at once is recognised as this run's; a writer lock (``lock.DatasetLock``)
keeps a second writer out of the folder while one runs.
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
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
from .._util.device import resolve_device
from .._util.distributed import Ranks, barrier, destroy_process_group, detect_ranks, init_process_group
from .._util.files import sha256_file
from .._util.images import to_uint8
from ..errors import ConfigError
from ..models import MLVGM, load_model
from ..views import DECODE_BLOCK, ViewSampler
from .card import write_card
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
)
from .lock import DatasetLock
from .manifest import (
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

TAR_MTIME = 0  # fixed member mtime: same command, same bytes


def generate(out: str | Path, model: str | MLVGM = "digits", policy=None, *, samples: int = 1000, views: int = 1,
             seed: int = 0, shard_size: int = 1000, format: str = "jpg", quality: int | None = None,
             batch_size: int = 64, device: str | None = "auto", amp: str | None = None, save_latents: bool = False,
             split: str = "train", resume: bool = False, rank: int | None = None, world_size: int | None = None,
             workers: int | None = None, progress: bool = False, model_kwargs: dict | None = None,
             decode_block: int = DECODE_BLOCK) -> Path:
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
    check_split(split)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder; choose a folder path for --out")
    ranks = detect_ranks(rank, world_size)

    if isinstance(model, str):
        model = load_model(model, **(model_kwargs or {}))
    dev = resolve_device(device)
    if ranks.use_torch_distributed and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", ranks.local_rank)
    sampler = ViewSampler(model, policy, views=views, seed=seed, device=dev, amp=amp, block=decode_block)
    config = {
        **sampler.describe(),
        "samples": samples, "shard_size": shard_size, "split": split, "save_latents": bool(save_latents),
        "image": {"format": format, "quality": quality, "shape": list(model.image_shape)},
    }

    meta = {"seed": seed, "model_id": config["model"]["model_id"], "policy_id": config["policy_id"], "views": views}
    ranges = shard_ranges(samples, shard_size)
    _check_out_folder(out, split, None, resume)  # a foreign folder: refused untouched; the rest under the lock

    cpus = os.cpu_count() or 1
    if workers is None:  # on CPU the encoders share the cores with the generator
        workers = min(4, cpus) if dev.type == "cuda" else max(1, min(4, cpus // 2))
    torch_threads = torch.get_num_threads()
    try:
        if dev.type == "cpu":  # oversubscribed OpenMP threads spin and stall: leave the encoders their cores
            torch.set_num_threads(max(1, min(torch_threads, cpus - workers)))
        init_process_group(ranks, dev)
        out.mkdir(parents=True, exist_ok=True)
        with DatasetLock(out, ranks.rank, ranks.world_size):
            _generate_locked(out, split, config, resume, ranks, sampler, meta, format, quality, save_latents, workers,
                             batch_size, ranges, progress, views)
    finally:
        destroy_process_group(ranks)
        torch.set_num_threads(torch_threads)
    return out


def _generate_locked(out: Path, split: str, config: dict, resume: bool, ranks: Ranks, sampler: ViewSampler, meta: dict,
                     format: str, quality, save_latents: bool, workers: int, batch_size: int, ranges: list,
                     progress: bool, views: int) -> None:
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
    with bar, _ShardPipeline(out, split, format, quality, workers, shard_written) as pipeline:
        for s in todo:
            first, count = ranges[s]
            for idx in block_aligned_batches(first, first + count, batch_size, sampler.block):
                pipeline.submit(s, _encode_job(sampler, idx, meta, format, quality, save_latents, pipeline.pool))
                bar.update(len(idx))
                bar.set_postfix_str(f"{bar.format_dict['rate'] or 0:.0f} samples/s, "
                                    f"{(bar.format_dict['rate'] or 0) * (1 + views):.0f} views/s", refresh=False)
            pipeline.end_shard(s, first, count)

    if ranks.world_size == 1 or ranks.use_torch_distributed:  # independent jobs end with `synthviews merge`
        barrier(ranks)
        if ranks.rank == 0:  # also folds in progress files of an earlier multi-rank run
            write_card(out, fold_progress(out, split))
        barrier(ranks)


def block_aligned_batches(start: int, stop: int, batch_size: int, block: int):
    """Index ranges covering [start, stop) whose boundaries fall on global multiples of
    ``batch_size`` rounded to whole blocks: no decode block is split between two batches
    except where the range itself starts or ends inside one."""
    step = max(1, round(batch_size / block)) * block
    while start < stop:
        end = min(stop, (start // step + 1) * step)
        yield np.arange(start, end)
        start = end


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


def _encode_job(sampler: ViewSampler, idx: np.ndarray, base: dict, fmt: str, quality, save_latents: bool,
                pool: ThreadPoolExecutor) -> Future:
    """Decode on the device now; encode in the pool later. Returns a future of WebDataset samples.

    ``base`` is the json metadata every sample shares (seed, model id, policy id, views)."""
    batch = sampler.sample(idx)
    pixels = to_uint8(batch.images)  # (B, 1+K, H, W, C) uint8, on the CPU
    latents = batch.codes.float().cpu().numpy() if save_latents else None
    deltas = batch.deltas.numpy()  # (B, K, G)
    groups = sampler.model.group_names

    def encode() -> list[dict]:
        return [encode_sample(int(i), pixels[b], {**base, "index": int(i),
                                                   "delta": {g: deltas[b, :, k].tolist() for k, g in enumerate(groups)}},
                              fmt, quality, None if latents is None else latents[b])
                for b, i in enumerate(idx)]

    return pool.submit(encode)


class _ShardPipeline:
    """Encoding pool + one tar-writing thread behind a bounded queue of futures (kept in order)."""

    def __init__(self, out: Path, split: str, fmt: str, quality, workers: int, on_shard_done):
        self.out, self.split, self.on_shard_done = out, split, on_shard_done
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
                    writer = wds.TarWriter(stream, encoder=False, mtime=TAR_MTIME, user="synthviews",
                                           group="synthviews")
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
