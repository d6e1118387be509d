"""ShardViews: a synthviews dataset (folder, shard URLs or Hub repo) as an IterableDataset.

With a manifest, samples (not whole shards) are dealt to the (rank, worker)
slots: each epoch the shards are put in a seeded order and rotated, and slot
s takes a contiguous range of that sample order, so an epoch covers all
samples but less than one batch per slot, and every slot yields the same
number of samples (no DDP hang). A slot reads the shards its range overlaps,
checks each against its manifest record while streaming (count, keys,
fields; see :func:`synthviews.store.tarshards.checked_samples`), shuffles in a
seeded buffer and decodes its samples. Without a manifest (plain shard URLs)
slots read whole shards through webdataset's stages, unchecked.

Iterating a ShardViews yields finished items one by one. :func:`synthviews.data.loader`
reads :meth:`ShardViews.batched` instead: uint8 records that :meth:`ShardViews.collate`
stacks into a :class:`RawBatch` and :meth:`ShardViews.finish` converts, normalises and
augments per batch, giving exactly what default collate of the items gives.
"""

from __future__ import annotations

import bisect
import io
import itertools
import random
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import default_collate

from .._util.checks import MAX_JSON_BYTES
from .._util.distributed import training_ranks, worker_slot
from ..errors import ConfigError
from ..latents import Streams
from ..store.format import (
    JSON_FIELD,
    LATENTS_FIELD,
    MANIFEST_NAME,
    decode_view,
    split_fields,
    stored_hwc,
    view_fields,
    view_number,
)
from ..store.manifest import parse_manifest, read_manifest
from ..store.tarshards import ShardError, check_meta, checked_samples
from .augment import Augment, make_augment
from .formats import ViewChoice, check_output, format_item, map_tensors
from .pixel_ring import PixelRing, shared_empty


def _manifest_split(manifest: dict, split: str, where: str) -> dict:
    if split not in manifest.get("splits", {}):
        raise ConfigError(f"{where} has no split {split!r}; it has: {', '.join(sorted(manifest.get('splits', {})))}")
    entry = manifest["splits"][split]
    if not entry.get("complete"):
        raise ConfigError(f"{where}: split {split!r} is incomplete; finish it with the same generate command first")
    return entry


def _resolve(source, split: str) -> tuple[list[str], list[dict] | None, dict | None]:
    """Shard URLs, their manifest records (if there is a manifest) and the split's config."""
    if isinstance(source, (list, tuple)):
        return [str(u) for u in source], None, None
    text = str(source)
    if text.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        root = text[len("hf://"):].rstrip("/")
        try:
            with HfFileSystem().open(f"{root}/{MANIFEST_NAME}", "r") as f:
                manifest_text = f.read(MAX_JSON_BYTES + 1)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {MANIFEST_NAME} of {text}: {e}") from None
        entry = _manifest_split(parse_manifest(manifest_text, f"{text}/{MANIFEST_NAME}"), split, text)
        return [f"hf://{root}/{r['name']}" for r in entry["shards"]], entry["shards"], entry["config"]
    path = Path(text)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise ConfigError(f"{path} holds no {MANIFEST_NAME}: not a synthviews dataset folder "
                              f"(pass shard paths or a brace pattern instead)")
        entry = _manifest_split(read_manifest(path), split, str(path))
        return [str(path / r["name"]) for r in entry["shards"]], entry["shards"], entry["config"]
    urls = wds.shardlists.expand_urls(text)
    if not urls:
        raise ConfigError(f"no shards match {text!r}")
    return urls, None, None


def resolve_source(source, split: str = "train") -> tuple[list[str], list[int] | None, dict | None]:
    """Shard URLs, their sample counts (if a manifest says) and the split's config.

    ``source``: a dataset folder, ``hf://datasets/USER/NAME`` (read through
    huggingface_hub), a brace pattern / single shard URL, or a list of URLs.
    """
    urls, records, config = _resolve(source, split)
    return urls, None if records is None else [r["count"] for r in records], config


class ShardViews(torch.utils.data.IterableDataset):
    """Samples of a synthviews dataset, ``crops`` images each, in an SSL framework's layout.

    The dataset fixes K (``views``: positives per anchor, 1+K stored images);
    an item returns ``crops`` of them, chosen by ``pairs``:

    - ``crops``: images per item (default 2), each (C, H, W) float in [0, 1] with the channels
      the manifest declares; ``views=`` is refused, since K comes from the manifest.
    - ``pairs``: ``"anchor+random"`` (default: 2 crops), ``"random"`` (``crops`` distinct
      stored views) or explicit view indices; the choice is a pure function of
      (seed, epoch, sample index).
    - ``output``: ``tuple``/``lightly``/``solo``/``dict``/``stablerep`` (see ``formats``).
    - ``t_x``: an augmentation preset name (``simclr``, ``no_color``, ``no_crop``, ``none``),
      an ``Augment`` (both seeded per sample and epoch) or any callable on a (C, H, W)
      float tensor; views are float in [0, 1] before it. Read through :func:`synthviews.data.loader`,
      the workers decode to uint8 and collate uint8, and presets run on whole batches (in the
      workers, or on the loader's ``device``) with each sample's own keyed parameters: the same
      parameters it gets when read one by one, whatever batch it is in. A custom callable runs
      per sample, in the workers.
    - ``shuffle``: shuffle-buffer size (0: read in order); the sample order is also shuffled
      (shards) and rotated per epoch. ``seed`` fixes both. Call :meth:`set_epoch` before each epoch.
    - ``resampled``: sample shards with replacement forever; each slot yields
      ``epoch_samples / slots`` samples per "epoch".
    - ``verify``: ``None`` (every shard's sample count, keys, fields and bytes are checked while
      reading, and each decoded view's size and channels and each json's index) or ``"sha256"``
      (also hash every shard as it streams: catches a flipped byte that still decodes, or one in
      a view this epoch does not decode; the mismatch is known at the shard's end).
    - ``on_error``: ``"raise"`` (a :class:`ShardError` naming the shard and sample) or ``"skip"``
      (warn and go on; with a manifest, skipped samples are replaced by the next readable
      ones of the epoch's order, so every slot still yields its full count).
    - ``num_workers``: the DataLoader's worker count, for ``__len__`` only (iteration reads the
      real one); ``batch_size``: round each slot's share down to whole batches.
      :func:`synthviews.data.loader` passes both, so its ``len()`` is exact.
    - ``rank`` / ``world_size``: this reader's rank (default: torch.distributed, else the
      checked ``RANK``/``WORLD_SIZE`` environment, else a single process).
    - ``return_meta`` / ``return_latents``: add ``json`` / ``latents`` to ``dict`` items.
    """

    def __init__(self, source, crops: int | None = None, pairs: str | Sequence[int] = "anchor+random",
                 output: str = "tuple", t_x: str | Callable | None = None, shuffle: int = 1000, seed: int = 0,
                 resampled: bool = False, epoch_samples: int | None = None, on_error: str = "raise",
                 num_workers: int = 0, batch_size: int | None = None, split: str = "train",
                 return_meta: bool = False, return_latents: bool = False, t_x_size: int = 112, views=None,
                 verify: str | None = None, rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self.urls, self.records, self.config = _resolve(source, split)
        self.counts = None if self.records is None else [int(r["count"]) for r in self.records]
        if views is not None:
            k = f"K={self.config['views']} here" if self.config is not None else "K is fixed when it is generated"
            raise ConfigError(f"ShardViews got views={views!r}: views means K, positives per anchor, which the "
                              f"dataset fixes ({k}); for {views!r} images per item pass crops={views!r}")
        self.choice = ViewChoice(pairs, crops, seed)
        self.channels = None if self.config is None else self.config["image"]["shape"][0]
        self.view_names = self.fields = self.stored_hwc = None
        if self.config is not None:
            self.choice.check_stored(self.config["views"] + 1)
            self.view_names = view_fields(self.config["image"]["format"], self.config["views"])
            self.fields, self.stored_hwc = split_fields(self.config), stored_hwc(self.config)
        self.output = check_output(output)
        if (return_meta or return_latents) and output != "dict":
            raise ConfigError("return_meta/return_latents need output='dict'")
        if return_latents and self.config is not None and not self.config.get("save_latents"):
            raise ConfigError("this dataset was generated without --save-latents; it has no latents to return")
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if verify not in (None, "sha256"):
            raise ConfigError(f"verify must be None or 'sha256', got {verify!r}")
        if verify and self.records is None:
            raise ConfigError("verify='sha256' needs a synthviews manifest (a dataset folder or hf:// repo)")
        if self.counts is None and epoch_samples is None:
            raise ConfigError("shard URLs without a synthviews manifest: give epoch_samples (samples per epoch)")
        self.t_x = _make_t_x(t_x, t_x_size)
        self.shuffle, self.seed, self.resampled, self.on_error = int(shuffle), int(seed), bool(resampled), on_error
        self.epoch_samples, self.num_workers, self.batch_size = epoch_samples, int(num_workers), batch_size
        self.return_meta, self.return_latents, self.verify = return_meta, return_latents, verify
        self.epoch = 0
        self._ranks = (rank, world_size)
        _, world = training_ranks(rank, world_size)  # a bad RANK/WORLD_SIZE fails here, in one line
        self._check_quota(world * max(1, self.num_workers))

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the sample order and buffer and redraw the view choice for ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    def _quota(self, slots: int) -> int:
        """Samples every (rank, worker) slot yields per epoch."""
        if self.records is not None and not self.resampled:
            quota = sum(self.counts) // slots
            if self.epoch_samples is not None:
                quota = min(quota, self.epoch_samples // slots)
        else:
            total = self.epoch_samples if self.epoch_samples is not None else sum(self.counts)
            quota = total // slots
        if self.batch_size:
            quota -= quota % self.batch_size
        return quota

    def _check_quota(self, slots: int) -> int:
        if self.records is None and not self.resampled and len(self.urls) < slots:
            raise ConfigError(f"{len(self.urls)} shard(s) for {slots} readers (ranks x workers): some would get "
                              f"no data; use fewer DataLoader workers, more shards (a smaller --shard-size) or "
                              f"resampled=True")
        quota = self._quota(slots)
        if quota < 1:
            total = sum(self.counts) if self.epoch_samples is None else self.epoch_samples
            batch = f" in whole batches of {self.batch_size}" if self.batch_size else ""
            raise ConfigError(f"{total} samples for {slots} readers (ranks x workers){batch}: each would get none; "
                              f"use fewer DataLoader workers or ranks, or a smaller batch_size")
        return quota

    def __len__(self) -> int:
        """Samples this rank yields per epoch (all its workers together), for ``num_workers`` workers."""
        _, world = training_ranks(*self._ranks)
        workers = max(1, self.num_workers)
        return self._quota(world * workers) * workers

    def __iter__(self):
        """Items one by one, each finished (float, T_x, output layout) on its own: what a plain
        ``DataLoader(ShardViews(...), batch_size=...)`` collates. :func:`synthviews.data.loader` reads
        :meth:`batched` instead: uint8 from the workers, converted and augmented per batch."""
        return map(self._finish, self._records())

    def _records(self) -> Iterator["_Record"]:
        """This (rank, worker) slot's samples of the epoch, checked and decoded to uint8."""
        rank, world = training_ranks(*self._ranks)
        worker, workers = worker_slot()  # the DataLoader's real worker count, whatever num_workers said
        slots = world * workers
        quota = self._check_quota(slots)
        if self.records is None:
            return self._iter_urls(rank * workers + worker, slots, quota)
        return self._iter_checked(rank * workers + worker, slots, quota)

    # --- with a manifest: samples dealt to slots, every shard checked --------------

    def _epoch_order(self) -> tuple[list[int], int]:
        """This epoch's shard order and the rotation of the sample order (both seeded; none if shuffle=0)."""
        if not self.shuffle:
            return list(range(len(self.records))), 0
        rng = np.random.default_rng(int(Streams(self.seed).keys([0], self.epoch, "*", "shard-order")[0]))
        return [int(k) for k in rng.permutation(len(self.records))], int(rng.integers(sum(self.counts)))

    def _segments(self, order: list[int], a: int, b: int) -> Iterator[tuple[int, int, int]]:
        """``(shard, lo, hi)`` pieces of positions ``[a, b)`` of the sample order (wrapping around)."""
        counts = [self.counts[k] for k in order]
        starts = list(itertools.accumulate(counts, initial=0))
        pos = a
        while pos < b:
            p = pos % starts[-1]
            j = bisect.bisect_right(starts, p) - 1
            lo = p - starts[j]
            take = min(counts[j] - lo, b - pos)
            yield order[j], lo, lo + take
            pos += take

    def _resampled_segments(self, slot: int) -> Iterator[tuple[int, int, int]]:
        rng = random.Random(int(Streams(self.seed).keys([slot], self.epoch, "*", "resample")[0]))
        while True:
            k = rng.randrange(len(self.records))
            yield k, 0, self.counts[k]

    def _read(self, segments) -> Iterator[dict]:
        """Raw samples of ``segments``, each shard checked against its record while it streams."""
        empty = 0  # shards in a row that gave nothing: with on_error="skip", a dataset with no readable shard
        for k, lo, hi in segments:
            record, url = self.records[k], self.urls[k]
            name, got = record["name"], 0
            if empty > 2 * len(self.records) + 10:
                raise ShardError(f"no readable sample in the last {empty} shards read (the last: {name}); "
                                 f"run `synthviews verify` on the dataset")
            try:
                try:
                    stream = wds.gopen(url)
                except Exception as e:  # noqa: BLE001 (gopen raises what the backend raises)
                    raise ShardError(f"shard {name}: cannot open {url} ({type(e).__name__}: {e})") from None
                try:
                    for _, key, fields in checked_samples(
                            stream, name, int(record["first_index"]), int(record["count"]), self.fields,
                            record.get("bytes"), record.get("sha256") if self.verify else None, lo, hi):
                        got += 1
                        yield {"__key__": key, "__shard__": name, **fields}
                finally:
                    stream.close()
            except ShardError as e:
                self._fail(e)
            empty = 0 if got else empty + 1

    def _iter_checked(self, slot: int, slots: int, quota: int):
        total = sum(self.counts)
        if self.resampled:
            primary = self._read(self._resampled_segments(slot))
        else:
            order, start = self._epoch_order()
            a = start + slot * quota
            primary = self._read(self._segments(order, a, a + quota))
        if self.shuffle > 1:
            seed = int(Streams(self.seed).keys([slot], self.epoch, "*", "shuffle")[0])
            primary = wds.filters._shuffle(primary, self.shuffle, initial=min(self.shuffle, 100), seed=seed)
        n = 0
        for sample in primary:  # pulled once more after the last item: the last shard's end checks run then
            if n == quota:
                break
            item = self._safe_item(sample)
            if item is not None:
                n += 1
                yield item
        replaced, lap = 0, 0
        while n < quota:  # on_error="skip" only: fill up with the next readable samples of the order, in laps
            found = 0
            for sample in self._read(self._segments(order, a + quota + lap * total, a + quota + (lap + 1) * total)):
                item = self._safe_item(sample)
                if item is not None:
                    n, replaced, found = n + 1, replaced + 1, found + 1
                    yield item
                    if n == quota:
                        break
            if not found:
                raise ShardError(f"reader {slot} of {slots}: no sample of the dataset is readable; "
                                 f"run `synthviews verify` on it")
            lap += 1
        if replaced:
            warnings.warn(f"reader {slot} of {slots}: replaced {replaced} unreadable sample(s) with the next "
                          f"readable ones of this epoch's order", stacklevel=2)

    def _fail(self, exn: ShardError) -> None:
        if self.on_error == "raise":
            raise exn
        warnings.warn(f"skipping: {exn}", stacklevel=2)

    def _safe_item(self, sample: dict):
        try:
            return self._item(sample)
        except ShardError as e:
            self._fail(e)
            return None

    # --- without a manifest: whole shards through webdataset, as before ------------

    def _iter_urls(self, slot: int, slots: int, quota: int):
        if self.resampled:
            stages = [wds.ResampledShards(self.urls, seed=self.seed * 1_000_003 + self.epoch, deterministic=True)]
        else:
            urls = list(self.urls)
            if self.shuffle:
                random.Random(int(Streams(self.seed).keys([0], self.epoch, "*", "shard-order")[0])).shuffle(urls)
            stages = [wds.SimpleShardList(urls[slot::slots])]
        stages.append(wds.tarfile_to_samples(handler=self._handle))
        if self.shuffle > 1:
            seed = int(Streams(self.seed).keys([slot], self.epoch, "*", "shuffle")[0])
            stages.append(wds.shuffle(self.shuffle, initial=min(self.shuffle, 100), seed=seed))
        stages += [wds.slice(quota), wds.map(self._item, handler=self._handle)]
        return iter(wds.DataPipeline(*stages))

    def _handle(self, exn: BaseException) -> bool:
        """webdataset error handler: raise a ShardError naming the shard, or warn and go on."""
        if not isinstance(exn, ShardError):
            url = next((a for a in reversed(exn.args) if isinstance(a, str) and ".tar" in a), None)
            exn = ShardError(f"cannot read shard {url or '?'}: {str(exn.args[0]) if exn.args else exn!r}")
        self._fail(exn)
        return True

    # --- one sample -------------------------------------------------------------

    def _stored(self, sample: dict, where: str) -> list[str]:
        """The stored views' field names in order; without a manifest they must be view0..viewN."""
        if self.view_names is not None:
            return self.view_names
        found = {view_number(f): f for f in sample if view_number(f) is not None}
        if sorted(found) != list(range(len(found))) or not found:
            raise ShardError(f"{where}: stored views {sorted(found)} are not view0..viewN (a view is missing)")
        return [found[v] for v in range(len(found))]

    def _item(self, sample: dict) -> "_Record":
        """A raw sample -> its checked, decoded record: uint8 (H, W, C) views, not yet converted or augmented."""
        key = sample["__key__"]
        shard = sample.get("__shard__") or str(sample.get("__url__", "?")).rsplit("/", 1)[-1]
        where = f"shard {shard}: sample {key}"
        try:
            index = int(key)
            stored = self._stored(sample, where)
            chosen = self.choice(index, self.epoch, len(stored))
            images = [_decode(sample[stored[v]], stored[v], self.stored_hwc, self.channels) for v in chosen]
            extra = {}
            if self.config is not None or self.return_meta:
                meta = check_meta(sample[JSON_FIELD], index if self.config is not None else None)
                if self.return_meta:
                    extra["json"] = meta
            if self.return_latents:
                extra["latents"] = torch.from_numpy(np.load(io.BytesIO(sample[LATENTS_FIELD]), allow_pickle=False))
        except ShardError:
            raise
        except Exception as e:  # noqa: BLE001 (PIL, json and numpy raise many types for corrupt bytes)
            reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            raise ShardError(f"{where} is unusable ({reason})") from None
        return _Record(images, index, key, chosen, extra)

    def _seed(self, index: int, view: int, slot: int) -> int:
        """The T_x seed of stored view ``view`` in crop ``slot`` of sample ``index`` this epoch."""
        return int(Streams(self.seed).keys([index], self.epoch, f"view{view}/{slot}", "t_x")[0] >> np.uint64(1))

    def _finish(self, record: "_Record"):
        """A record -> the item: each view float (C, H, W) in [0, 1], then T_x seeded by (index, epoch, view,
        slot) (``pairs=[0, 0]`` gives two different T_x views of the anchor: the baseline with synthetic
        anchors only), in the output layout."""
        views = []
        for slot, (v, array) in enumerate(zip(record.chosen, record.images)):
            x = torch.from_numpy(array.copy()).float().div_(255).permute(2, 0, 1)  # (C, H, W)
            if self.t_x is not None:
                x = self.t_x(x, self._seed(record.index, v, slot))
            views.append(x)
        return format_item(self.output, views, record.index, record.key, record.extra)

    # --- whole batches: uint8 from the workers, converted and augmented per batch ----------------------------

    @property
    def batchable(self) -> bool:
        """Whether T_x runs on whole batches (a preset, an ``Augment`` or no T_x); a custom callable runs
        per sample, in the workers."""
        return self.t_x is None or isinstance(self.t_x, _Preset)

    def batched(self, device=None) -> "BatchedViews":
        """This dataset yielding uint8 records for :meth:`collate` (what :func:`synthviews.data.loader` reads)."""
        return BatchedViews(self, device)

    def collate(self, records: list, device=None, ring: PixelRing | None = None):
        """Records of one batch -> a :class:`RawBatch` of uint8 pixels, finished here (:meth:`finish`) into the
        output layout in the main process (``num_workers=0``) or, in a worker, with a T_x preset on the CPU.
        Otherwise the worker sends the uint8 batch and :meth:`finish` runs in the main process (on ``device``,
        the training device, if given): a uint8 batch is a quarter of the float bytes to put in shared memory,
        which cost a worker as much CPU (page faults) as the JPEG decode; with a ``ring`` (what the loader
        makes) the pixels go into one of the worker's reused slots instead of fresh shared memory.
        Custom T_x callables: the records are finished items already, default-collated."""
        if not self.batchable:
            return default_collate(records)
        first = records[0].images
        crops = len(first)
        shapes = {a.shape for r in records for a in r.images}
        if len(shapes) != 1:
            raise ShardError(f"samples {records[0].key}..{records[-1].key} hold views of different sizes or "
                             f"channels {sorted(shapes)}: they cannot be batched")
        h, w, c = first[0].shape
        chosen = np.array([r.chosen for r in records], dtype=np.int64).reshape(len(records), crops)
        index = np.array([r.index for r in records], dtype=np.int64)
        seeds = None
        if self.t_x is not None:
            seeds = np.empty((len(records), crops), dtype=np.int64)
            streams = Streams(self.seed)
            for slot in range(crops):
                for v in np.unique(chosen[:, slot]):
                    rows = np.flatnonzero(chosen[:, slot] == v)
                    keys = streams.keys(index[rows], self.epoch, f"view{int(v)}/{slot}", "t_x") >> np.uint64(1)
                    seeds[rows, slot] = keys.astype(np.int64)
        extra = default_collate([r.extra for r in records]) if records[0].extra else {}
        worker = torch.utils.data.get_worker_info()
        send_raw = device is not None or (worker is not None and self.t_x is None)
        # in a worker, what goes to the main process is made in shared memory (a ring slot, else fresh)
        shape = (len(records), crops, c, h, w)
        taken = ring.take(worker.id, int(np.prod(shape))) if ring is not None and worker and send_raw else None
        if taken is not None:
            pixels, in_ring = taken[1].view(shape), (ring, worker.id, taken[0])
        else:
            pixels = shared_empty(shape, torch.uint8) if worker and send_raw else torch.empty(shape, dtype=torch.uint8)
            in_ring = None
        target = pixels.numpy()
        try:
            for b, record in enumerate(records):
                for slot, array in enumerate(record.images):
                    np.copyto(target[b, slot], array.transpose(2, 0, 1))
        except BaseException:
            if in_ring is not None:
                ring.untake(in_ring[2])  # not sent: the worker may fill it again
            raise
        batch = RawBatch(pixels, torch.from_numpy(index), [r.key for r in records], seeds, extra, in_ring)
        return batch if send_raw else self.finish(batch)

    def finish(self, batch: "RawBatch", device=None):
        """A uint8 batch -> the item layout: float in [0, 1] (on ``device`` if given), T_x per batch with each
        sample's own keyed parameters (the same as the per-sample path draws), one tensor (B, C, h, w) per crop.
        Pinned pixels (``pin_memory=True``: the DataLoader pinned the uint8 batch a worker sent) give an item
        whose tensors are all pinned, as the DataLoader pins a finished batch."""
        pixels = batch.pixels
        if device is not None:
            pixels = pixels.to(device, non_blocking=True)
        pinned = pixels.device.type == "cpu" and pixels.is_pinned()
        views = []
        for slot in range(pixels.shape[1]):
            if pinned:  # from torch's caching host allocator: recycled, no fresh pages
                x = torch.empty(pixels[:, slot].shape, dtype=torch.float32, pin_memory=True)
                x = x.copy_(pixels[:, slot]).div_(255)
            else:
                x = pixels[:, slot].float().div_(255)  # exactly the per-sample conversion
            if self.t_x is not None:
                x = self.t_x.augment(x, seeds=batch.seeds[:, slot].tolist())
            views.append(x)
        # the containers default_collate gives: a batch of tuples is a list, their strings a tuple
        keys = tuple(batch.keys) if self.output != "dict" else list(batch.keys)
        item = format_item(self.output, views, batch.index, keys, batch.extra)
        item = list(item) if isinstance(item, tuple) else item
        # the rest of the item (index, latents, a concatenation) pinned too; the views already are
        return map_tensors(lambda t: t if t.is_pinned() else t.pin_memory(), item) if pinned else item


class _Record:
    """One sample, decoded: the chosen views as uint8 (H, W, C) arrays, its index, key, view numbers, extras."""

    __slots__ = ("images", "index", "key", "chosen", "extra")

    def __init__(self, images: list, index: int, key: str, chosen: list[int], extra: dict):
        self.images, self.index, self.key, self.chosen, self.extra = images, index, key, chosen, extra


class RawBatch:
    """A collated batch before conversion: ``pixels`` uint8 (B, crops, C, H, W), ``index`` (B,) int64,
    ``keys``, ``seeds`` (B, crops) T_x seeds (None without T_x) and the collated extras. ``pin_memory()``
    pins the pixels (the DataLoader calls it with ``pin_memory=True``). ``ring``: ``(PixelRing, worker,
    slot)`` when the pixels are a ring slot; a worker then sends the slot's number, not its pages, and the
    main process calls :meth:`release` once it has read them."""

    __slots__ = ("pixels", "index", "keys", "seeds", "extra", "ring")

    def __init__(self, pixels, index, keys, seeds, extra, ring=None):
        self.pixels, self.index, self.keys, self.seeds, self.extra = pixels, index, keys, seeds, extra
        self.ring = ring

    def pin_memory(self) -> "RawBatch":
        pinned = RawBatch(self.pixels.pin_memory(), self.index, self.keys, self.seeds, self.extra)
        self.release()
        return pinned

    def release(self) -> None:
        """The pixels are read (main process): a ring slot goes back to its worker to be filled again."""
        if self.ring is not None:
            ring, worker, slot = self.ring
            self.ring = None
            ring.give_back(worker, slot)

    def __reduce__(self):
        # the index goes as a numpy array: a tensor would get a shared-memory file (and a socket hand-over) of its own
        if self.ring is None:
            return _raw_batch, (None, 0, 0, self.pixels, self.index.numpy(), self.keys, self.seeds, self.extra)
        ring, worker, slot = self.ring
        return _raw_batch, (ring.id, worker, slot, tuple(self.pixels.shape), self.index.numpy(), self.keys,
                            self.seeds, self.extra)


def _raw_batch(ring_id, worker, slot, pixels, index, keys, seeds, extra) -> RawBatch:
    """A RawBatch as it arrives from a worker: with ``ring_id``, ``pixels`` is the shape of its ring slot."""
    if ring_id is None:
        return RawBatch(pixels, torch.from_numpy(index), keys, seeds, extra)
    ring = PixelRing.lookup(ring_id)
    return RawBatch(ring.view(worker, slot, pixels), torch.from_numpy(index), keys, seeds, extra, (ring, worker, slot))


class BatchedViews(torch.utils.data.IterableDataset):
    """A ShardViews read for batches: the same samples in the same order, as uint8 records (finished items
    for a custom T_x callable) that ``collate`` batches. Everything else (epoch, seed, len) is the
    dataset's; it is read when iteration starts, so ``set_epoch`` on the ShardViews applies."""

    def __init__(self, views: ShardViews, device=None):
        super().__init__()
        self.views, self.device = views, device
        self.ring: PixelRing | None = None
        self.ring_failed = False  # a ring could not be made (warned once)

    def __iter__(self):
        records = iter(self.views._records())
        return records if self.views.batchable else map(self.views._finish, records)

    def __len__(self) -> int:
        return len(self.views)

    def collate(self, records: list):
        return self.views.collate(records, self.device, self.ring)

    def open_ring(self, workers: int, slots: int) -> PixelRing | None:
        """Before ``workers`` start (main process): ``slots`` reused shared-memory slots each for the uint8
        batches they send, if they send any and their size is known (a manifest); None otherwise."""
        views = self.views
        if not views.batchable or (self.device is None and views.t_x is not None) or views.config is None \
                or not views.batch_size:
            return None
        h, w, _ = views.stored_hwc
        try:
            self.ring = PixelRing(workers, slots, views.batch_size * views.choice.crops * views.channels * h * w)
        except (RuntimeError, OSError) as e:  # e.g. a container's 64 MB /dev/shm: each batch in fresh memory
            if not self.ring_failed:  # once, not every epoch (torch's message names a new file each time)
                warnings.warn(f"synthviews loader: the workers' batches go into fresh shared memory each, "
                              f"their reused slots could not be made ({e})", stacklevel=3)
            self.ring_failed = True
            return None
        return self.ring

    def close_ring(self, ring: PixelRing) -> None:
        ring.close()
        if self.ring is ring:
            self.ring = None

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.views.epoch

    @property
    def seed(self) -> int:
        return self.views.seed


class _Preset:
    """A seeded T_x (a preset name or an ``Augment``): per sample ``f(x (C, H, W), seed)``, per batch
    ``augment(x (B, C, H, W), seeds=...)``."""

    def __init__(self, augment: Augment):
        self.augment = augment

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return self.augment(x[None], seed=seed)[0]


class _Callable:
    """A custom T_x: ``f(x (C, H, W))``, per sample (the seed is not passed)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        return self.fn(x)


def _make_t_x(t_x, size: int):
    """A per-view transform ``f(x (C, H, W), seed) -> tensor`` from a preset name or a callable."""
    if t_x is None:
        return None
    if isinstance(t_x, (str, Augment)):
        return _Preset(make_augment(t_x, size=size) if isinstance(t_x, str) else t_x)
    if callable(t_x):
        return _Callable(t_x)
    raise ConfigError(f"t_x must be a preset name or a callable, got {type(t_x).__name__}")


# --- JPEG decoding straight through Pillow's decoder -----------------------------------------------------------

_SOF = (0xC0, 0xC1, 0xC2)   # baseline, extended, progressive Huffman JPEG
_FAST_JPEG = [hasattr(Image, "_getdecoder") and hasattr(Image, "_getencoder") and hasattr(Image.core, "new")]
_CHECKED_FAST = [False]     # the first fast decode of each process is compared with decode_view


def _jpeg_shape(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) from the frame header of a plain JPEG (SOF0/1/2, no Adobe segment,
    before the first scan); None for anything else, which then goes through :func:`decode_view`."""
    if data[:2] != b"\xff\xd8":
        return None
    i, end = 2, len(data) - 4
    while i < end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xEE or marker == 0xDA or 0xD0 <= marker <= 0xD9:  # Adobe, start of scan, RST/SOI/EOI
            return None
        if marker in _SOF:
            if i + 10 > len(data):
                return None
            return (data[i + 5] << 8 | data[i + 6]), (data[i + 7] << 8 | data[i + 8]), data[i + 9]
        i += 2 + (data[i + 2] << 8 | data[i + 3])
    return None


def _decode(data: bytes, name: str, hwc: tuple[int, int, int] | None, channels: int | None) -> np.ndarray:
    """:func:`decode_view` (same pixels, same checks, same errors), with plain JPEGs of the manifest's size
    decoded by Pillow's JPEG decoder directly: Image.open's marker parsing and tile machinery in Python cost
    as much as the decode itself at 128 px. Anything unusual (another format, size or layout, a decoder
    error, a truncated file) goes through decode_view, which raises its error."""
    if hwc is None or not _FAST_JPEG[0] or not name.endswith(".jpg") or channels != hwc[2] \
            or channels not in (1, 3):
        return decode_view(data, name, hwc, channels)
    shape = _jpeg_shape(data)
    if shape != tuple(hwc):
        return decode_view(data, name, hwc, channels)
    h, w, c = shape
    mode = "L" if c == 1 else "RGB"
    try:
        im = Image.core.new(mode, (w, h))
        decoder = Image._getdecoder(mode, "jpeg", (mode, ""))
        try:
            decoder.setimage(im, (0, 0, w, h))
            consumed, err = decoder.decode(data)
        finally:
            decoder.cleanup()
        if consumed >= 0 or err < 0:  # needs more data (truncated) or failed: decode_view says why
            return decode_view(data, name, hwc, channels)
        encoder = Image._getencoder(mode, "raw", mode)
        try:
            encoder.setimage(im, (0, 0, w, h))
            _, err, raw = encoder.encode(h * w * c + 1)
        finally:
            encoder.cleanup()
    except Exception:  # noqa: BLE001 (an internal Pillow API that changed: fall back for good)
        _FAST_JPEG[0] = False
        return decode_view(data, name, hwc, channels)
    array = np.frombuffer(raw, dtype=np.uint8)
    if err <= 0 or array.size != h * w * c:
        _FAST_JPEG[0] = False
        return decode_view(data, name, hwc, channels)
    array = array.reshape(h, w, c)
    if not _CHECKED_FAST[0]:
        _CHECKED_FAST[0] = True
        if not np.array_equal(array, decode_view(data, name, hwc, channels)):  # never seen; be safe
            _FAST_JPEG[0] = False
            return decode_view(data, name, hwc, channels)
    return array


__all__ = ["ShardViews", "ShardError", "RawBatch", "BatchedViews", "resolve_source"]
