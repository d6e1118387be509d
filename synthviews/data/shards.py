"""ShardViews: a synthviews dataset (folder, shard URLs or Hub repo) as an IterableDataset.

Built from webdataset's stages: shard list -> split_by_node -> split_by_worker
-> tarfile_to_samples -> shuffle -> slice -> map(decode the chosen views).
Every (rank, worker) slot reads whole shards and yields the same number of
samples, so every rank has the same number of batches (no DDP hang).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import webdataset as wds

from ..errors import ConfigError
from ..images import decode_image
from ..latents import Streams
from ..manifest import MANIFEST_NAME
from .augment import Augment, make_augment
from .formats import ViewChoice, check_output, format_item


class ShardError(ConfigError):
    """A shard cannot be read or a sample in it does not decode; the message names the shard."""


def _manifest_split(manifest: dict, split: str, where: str) -> dict:
    if split not in manifest.get("splits", {}):
        raise ConfigError(f"{where} has no split {split!r}; it has: {', '.join(sorted(manifest.get('splits', {})))}")
    entry = manifest["splits"][split]
    if not entry.get("complete"):
        raise ConfigError(f"{where}: split {split!r} is incomplete; finish it with the same generate command first")
    return entry


def resolve_source(source, split: str = "train") -> tuple[list[str], list[int] | None, dict | None]:
    """Shard URLs, their sample counts (if a manifest says) and the split's config.

    ``source``: a dataset folder, ``hf://datasets/USER/NAME`` (read through
    huggingface_hub), a brace pattern / single shard URL, or a list of URLs.
    """
    if isinstance(source, (list, tuple)):
        return [str(u) for u in source], None, None
    text = str(source)
    if text.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        root = text[len("hf://"):].rstrip("/")
        try:
            with HfFileSystem().open(f"{root}/{MANIFEST_NAME}", "r") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {MANIFEST_NAME} of {text}: {e}") from None
        entry = _manifest_split(manifest, split, text)
        return ([f"hf://{root}/{r['name']}" for r in entry["shards"]], [r["count"] for r in entry["shards"]],
                entry["config"])
    path = Path(text)
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise ConfigError(f"{path} holds no {MANIFEST_NAME}: not a synthviews dataset folder "
                              f"(pass shard paths or a brace pattern instead)")
        from ..manifest import read_manifest

        entry = _manifest_split(read_manifest(path), split, str(path))
        return [str(path / r["name"]) for r in entry["shards"]], [r["count"] for r in entry["shards"]], entry["config"]
    urls = wds.shardlists.expand_urls(text)
    if not urls:
        raise ConfigError(f"no shards match {text!r}")
    return urls, None, None


def slot_quota(counts: list[int], slots: int) -> int:
    """Samples every (rank, worker) slot yields per epoch: what the poorest slot surely has.

    Slots take every ``slots``-th shard of a per-epoch permutation, so the
    poorest slot holds at least the ``len(counts) // slots`` smallest shards.
    """
    return sum(sorted(counts)[: len(counts) // slots])


class ShardViews(torch.utils.data.IterableDataset):
    """Samples of a synthviews dataset, ``crops`` images each, in an SSL framework's layout.

    The dataset fixes K (``views``: positives per anchor, 1+K stored images);
    an item returns ``crops`` of them, chosen by ``pairs``:

    - ``crops``: images per item (default 2), each (C, H, W) float in [0, 1] with the channels
      the manifest declares; ``views=`` is refused, since K comes from the manifest
      (``views`` used to mean this count here).
    - ``pairs``: ``"anchor+random"`` (default: 2 crops), ``"random"`` (``crops`` distinct
      stored views) or explicit view indices; the choice is a pure function of
      (seed, epoch, sample index).
    - ``output``: ``tuple``/``lightly``/``solo``/``dict``/``stablerep`` (see ``formats``).
    - ``t_x``: an augmentation preset name (``simclr``, ``no_color``, ``no_crop``, ``none``),
      an ``Augment`` (both seeded per sample and epoch) or any callable on a (C, H, W)
      float tensor; views are float in [0, 1] before it.
    - ``shuffle``: shuffle-buffer size (0: read in order); shard order is also shuffled
      per epoch. ``seed`` fixes both. Call :meth:`set_epoch` before each epoch.
    - ``resampled``: sample shards with replacement forever; each slot yields
      ``epoch_samples / slots`` samples per "epoch".
    - ``on_error``: ``"raise"`` (a :class:`ShardError` naming the shard) or ``"skip"``
      (warn with the shard name and go on; a slot may then yield fewer samples).
    - ``num_workers``: the DataLoader's worker count (it sets the per-slot quota and
      ``__len__``); ``batch_size``: round each slot's quota down to whole batches.
    - ``return_meta`` / ``return_latents``: add ``json`` / ``latents`` to ``dict`` items.
    """

    def __init__(self, source, crops: int | None = None, pairs: str | Sequence[int] = "anchor+random",
                 output: str = "tuple", t_x: str | Callable | None = None, shuffle: int = 1000, seed: int = 0,
                 resampled: bool = False, epoch_samples: int | None = None, on_error: str = "raise",
                 num_workers: int = 0, batch_size: int | None = None, split: str = "train",
                 return_meta: bool = False, return_latents: bool = False, t_x_size: int = 112, views=None):
        super().__init__()
        self.urls, self.counts, self.config = resolve_source(source, split)
        if views is not None:
            k = f"K={self.config['views']} here" if self.config is not None else "K is fixed when it is generated"
            raise ConfigError(f"ShardViews got views={views!r}: views means K, positives per anchor, which the "
                              f"dataset fixes ({k}); for {views!r} images per item pass crops={views!r}")
        self.choice = ViewChoice(pairs, crops, seed)
        self.channels = None if self.config is None else self.config["image"]["shape"][0]
        if self.config is not None:
            self.choice.check_stored(self.config["views"] + 1)
        self.output = check_output(output)
        if (return_meta or return_latents) and output != "dict":
            raise ConfigError("return_meta/return_latents need output='dict'")
        if return_latents and self.config is not None and not self.config.get("save_latents"):
            raise ConfigError("this dataset was generated without --save-latents; it has no latents to return")
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if self.counts is None and epoch_samples is None:
            raise ConfigError("shard URLs without a synthviews manifest: give epoch_samples (samples per epoch)")
        self.t_x = _make_t_x(t_x, t_x_size)
        self.shuffle, self.seed, self.resampled, self.on_error = int(shuffle), int(seed), bool(resampled), on_error
        self.epoch_samples, self.num_workers, self.batch_size = epoch_samples, int(num_workers), batch_size
        self.return_meta, self.return_latents = return_meta, return_latents
        self.epoch = 0
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        self._check_slots(world * max(1, self.num_workers))

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle shards and buffer and redraw the view choice for ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    def _check_slots(self, slots: int) -> None:
        if not self.resampled and len(self.urls) < slots:
            raise ConfigError(f"{len(self.urls)} shard(s) for {slots} readers (ranks x workers): some would get "
                              f"no data; use fewer DataLoader workers, more shards (a smaller --shard-size) or "
                              f"resampled=True")

    def _quota(self, slots: int) -> int:
        if self.resampled or self.counts is None:
            total = self.epoch_samples if self.epoch_samples is not None else sum(self.counts)
            quota = total // slots
        else:
            quota = slot_quota(self.counts, slots)
            if self.epoch_samples is not None:
                quota = min(quota, self.epoch_samples // slots)
        if self.batch_size:
            quota -= quota % self.batch_size
        return quota

    def __len__(self) -> int:
        """Samples this rank yields per epoch (all its workers together)."""
        _, world, _, _ = wds.utils.pytorch_worker_info()
        workers = max(1, self.num_workers)
        return self._quota(world * workers) * workers

    def __iter__(self):
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if workers != max(1, self.num_workers):
            raise ConfigError(f"ShardViews was built for num_workers={self.num_workers} but runs in {workers} "
                              f"DataLoader workers; pass the same num_workers to both (synthviews.data.loader does)")
        slots = world * workers
        self._check_slots(slots)
        buffer_seed = int(Streams(self.seed).keys([rank * workers + worker], self.epoch, "*", "shuffle")[0])
        if self.resampled:
            stages = [wds.ResampledShards(self.urls, seed=self.seed * 1_000_003 + self.epoch, deterministic=True)]
        else:
            order_seed = int(Streams(self.seed).keys([0], self.epoch, "*", "shard-order")[0]) if self.shuffle else None
            stages = [wds.SimpleShardList(self.urls, seed=order_seed), wds.split_by_node, wds.split_by_worker]
        stages.append(wds.tarfile_to_samples(handler=self._handle))
        if self.shuffle > 1:
            stages.append(wds.shuffle(self.shuffle, initial=min(self.shuffle, 100), seed=buffer_seed))
        stages += [wds.slice(self._quota(slots)), wds.map(self._item, handler=self._handle)]
        return iter(wds.DataPipeline(*stages))

    def _handle(self, exn: BaseException) -> bool:
        """webdataset error handler: raise a ShardError naming the shard, or warn and go on."""
        if not isinstance(exn, ShardError):
            url = next((a for a in reversed(exn.args) if isinstance(a, str) and ".tar" in a), None)
            exn = ShardError(f"cannot read shard {url or '?'}: {str(exn.args[0]) if exn.args else exn!r}")
        if self.on_error == "raise":
            raise exn
        warnings.warn(f"skipping: {exn}", stacklevel=2)
        return True

    def _item(self, sample: dict):
        key, url = sample["__key__"], sample.get("__url__", "?")
        try:
            index = int(key)
            stored = sorted((f for f in sample if f.startswith("view")), key=lambda f: int(f[4:].split(".")[0]))
            chosen = self.choice(index, self.epoch, len(stored))
            views = [self._view(sample[stored[v]], index, v, slot) for slot, v in enumerate(chosen)]
            extra = {}
            if self.return_meta:
                extra["json"] = json.loads(sample["json"])
            if self.return_latents:
                extra["latents"] = torch.from_numpy(np.load(io.BytesIO(sample["latents.npy"]), allow_pickle=False))
        except (KeyError, IndexError, ValueError, OSError) as e:
            raise ShardError(f"shard {url}: sample {key} is unusable ({type(e).__name__}: {e})") from None
        return format_item(self.output, views, index, key, extra)

    def _view(self, data: bytes, index: int, view: int, slot: int) -> torch.Tensor:
        """Stored view ``view`` decoded, then T_x seeded by (index, epoch, view, slot): ``pairs=[0, 0]``
        gives two different T_x views of the anchor (the baseline with synthetic anchors only)."""
        array = decode_image(data, self.channels)  # the manifest's channels (grey WebP is stored as RGB)
        x = torch.from_numpy(array.copy()).float().div_(255).permute(2, 0, 1)  # (C, H, W)
        if self.t_x is None:
            return x
        seed = int(Streams(self.seed).keys([index], self.epoch, f"view{view}/{slot}", "t_x")[0] >> np.uint64(1))
        return self.t_x(x, seed)


def _make_t_x(t_x, size: int):
    """A per-view transform ``f(x (C, H, W), seed) -> tensor`` from a preset name or a callable."""
    if t_x is None:
        return None
    if isinstance(t_x, (str, Augment)):
        augment = make_augment(t_x, size=size) if isinstance(t_x, str) else t_x
        return lambda x, seed: augment(x[None], seed=seed)[0]
    if callable(t_x):
        return lambda x, seed: t_x(x)
    raise ConfigError(f"t_x must be a preset name or a callable, got {type(t_x).__name__}")


__all__ = ["ShardViews", "ShardError", "resolve_source", "slot_quota"]
