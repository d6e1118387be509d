"""The on-disk format's facts, in one place: what a dataset folder holds and how a sample is stored.

A dataset folder ``OUT/`` holds::

    {split}-{shard:06d}.tar             WebDataset shards (consecutive sample indices)
    synthviews.json                     the manifest (see ``manifest``)
    README.md, preview.png              the Hugging Face dataset card (see ``card``)
    synthviews.{split}.rankRRR-of-NNN.json   a rank's progress, until ``merge`` folds it in
    .synthviews.lock, .synthviews.rankRRR-of-NNN.lock   writer locks, while a writer runs
    .NAME.PID[.HEX].tmp                 a file being written (renamed to NAME when complete)

A sample is keyed ``{index:09d}``; its members are ``view0.{ext}`` (the anchor) ...
``view{K}.{ext}`` (the positives), ``json`` (the sample's metadata) and, optionally,
``latents.npy``. This is the layout ``webdataset`` and Hugging Face ``datasets`` read as it is.

Image bytes are encoded here rather than by webdataset (whose default JPEG quality is 100),
so the bytes are a pure function of the pixels.
"""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .jpeg import SAVE_OPTIONS, encode_jpeg

# --- file names --------------------------------------------------------------------------------------------

MANIFEST_NAME = "synthviews.json"
CARD_NAME, PREVIEW_NAME = "README.md", "preview.png"
CARD_FILES = (CARD_NAME, PREVIEW_NAME)

SPLIT_PATTERN = "[a-z0-9_]+"  # no '-': it separates the split from the shard number
SPLIT_RE = re.compile(rf"^{SPLIT_PATTERN}$")
SHARD_RE = re.compile(rf"^{SPLIT_PATTERN}-\d{{6,}}\.tar$")
PROGRESS_RE = re.compile(rf"^synthviews\.(?P<split>{SPLIT_PATTERN})\.rank(?P<rank>\d+)-of-(?P<world>\d+)\.json$")
PROGRESS_GLOB = "synthviews.*.rank*-of-*.json"
LOCK_NAME = ".synthviews.lock"
LOCK_RE = re.compile(r"^\.synthviews(\.rank(?P<rank>\d+)-of-(?P<world>\d+))?\.lock$")
RANK_LOCK_GLOB = ".synthviews.rank*-of-*.lock"
# `.NAME.PID.tmp` (shards, see temporary_name) and `.NAME.PID.HEX.tmp` (_util.files.write_atomic):
# hidden, so never mistaken for a final name.
TEMPORARY_RE = re.compile(r"^\.(?P<name>.+?)\.\d+(\.[0-9a-f]{8})?\.tmp$")
TEMPORARY_GLOB = ".*.tmp"


def check_split(split: str) -> str:
    if not isinstance(split, str) or not SPLIT_RE.match(split):
        raise ConfigError(f"split name {split!r} must be lower-case letters, digits or _ (e.g. train, test)")
    return split


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:06d}.tar"


def shard_number(name: str) -> int:
    """The shard number in a shard file name (``train-000012.tar`` -> 12)."""
    return int(name[:-len(".tar")].rsplit("-", 1)[1])


def shard_glob(split: str) -> str:
    """Files that look like shards of ``split``: what the card's ``data_files`` names, and what
    ``verify`` compares with the manifest (so a stray ``train-x.tar`` is reported, not ignored)."""
    return f"{split}-*.tar"


def shard_pattern(split: str) -> str:
    """The glob (fnmatch) pattern matching exactly the shard files of ``split``: ``{split}-NNNNNN.tar``."""
    return f"{split}-{'[0-9]' * 6}.tar"


def shard_braces(split: str, num_shards: int) -> str:
    """Every shard of ``split`` in webdataset's brace notation: ``train-{000000..000009}.tar``."""
    return f"{split}-{{{0:06d}..{num_shards - 1:06d}}}.tar"


def progress_name(split: str, rank: int, world_size: int) -> str:
    return f"synthviews.{split}.rank{rank:03d}-of-{world_size:03d}.json"


def progress_glob(split: str) -> str:
    return f"synthviews.{split}.rank*-of-*.json"


def rank_lock_name(rank: int, world_size: int) -> str:
    return f".synthviews.rank{rank:03d}-of-{world_size:03d}.lock"


def temporary_name(name: str) -> str:
    """The hidden name a file is written under (by this process) before it is renamed to ``name``."""
    return f".{name}.{os.getpid()}.tmp"


def is_dataset_file(name: str) -> bool:
    """A final name synthviews writes into a dataset folder (shards, manifest, progress files, card)."""
    return bool(name in (MANIFEST_NAME, *CARD_FILES) or PROGRESS_RE.match(name) or SHARD_RE.match(name))


def is_own_hidden_file(name: str) -> bool:
    """A lock file or a temporary of a dataset file: what a run killed at once leaves."""
    m = TEMPORARY_RE.match(name)
    return bool(LOCK_RE.match(name) or (m and is_dataset_file(m.group("name"))))


# --- Hub upload: which files of a folder are the dataset --------------------------------------------------

# Defence in depth: the allow patterns already select only dataset files.
IGNORE_PATTERNS = (".*", "*/.*", "*.tmp", PROGRESS_GLOB)


def dataset_patterns(splits) -> list[str]:
    """Patterns selecting the files of ``splits`` (and nothing else): shards, manifest and card."""
    return [shard_pattern(split) for split in sorted(splits)] + [MANIFEST_NAME, *CARD_FILES]


# --- sample members ----------------------------------------------------------------------------------------

JSON_FIELD, LATENTS_FIELD = "json", "latents.npy"


def sample_key(index: int) -> str:
    return f"{index:09d}"


def view_field(view: int, fmt: str) -> str:
    return f"view{view}.{fmt}"


def view_number(field: str) -> int | None:
    """``view3.jpg`` -> 3; None for a member that is not a view."""
    stem = field.split(".")[0]
    return int(stem[4:]) if stem.startswith("view") and stem[4:].isdigit() else None


def view_fields(fmt: str, views: int) -> list[str]:
    """The stored views' member names in order: the anchor, then the ``views`` positives."""
    return [view_field(v, fmt) for v in range(views + 1)]


def sample_fields(fmt: str, views: int, save_latents: bool) -> set[str]:
    """Every member a sample of a split with this configuration holds, exactly."""
    return set(view_fields(fmt, views)) | {JSON_FIELD} | ({LATENTS_FIELD} if save_latents else set())


def split_fields(config: dict) -> set[str]:
    """:func:`sample_fields` of a manifest split config."""
    return sample_fields(config["image"]["format"], config["views"], bool(config.get("save_latents")))


def stored_hwc(config: dict) -> tuple[int, int, int]:
    """(height, width, channels) of a stored view of a manifest split config, as the file holds it."""
    c, h, w = config["image"]["shape"]
    return h, w, stored_channels(config["image"]["format"], c)


# --- image encoding ----------------------------------------------------------------------------------------

# Image suffix -> the PIL encoder and the options that fix its bytes (no optimise pass, no progressive JPEG).
FORMATS = {"jpg": ("JPEG", SAVE_OPTIONS), "png": ("PNG", {"compress_level": 6}),
           "webp": ("WEBP", {"method": 4})}
DEFAULT_QUALITY = {"jpg": 95, "webp": 90, "png": None}


def check_format(fmt: str, quality: int | None) -> int | None:
    """Validate (format, quality); return the quality to use (None for PNG, which is lossless)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown image format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "png":
        if quality is not None:
            raise ConfigError("--quality does not apply to png (lossless); leave it out")
        return None
    if quality is None:
        return DEFAULT_QUALITY[fmt]
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"quality must be an integer in [1, 100], got {quality!r}")
    return quality


def stored_channels(fmt: str, channels: int) -> int:
    """Channels an image of ``channels`` has once stored as ``fmt``.

    WebP has no grey mode, so 1-channel views are stored as RGB with R = G = B;
    :func:`decode_view` turns them back into one channel.
    """
    return 3 if fmt == "webp" and channels == 1 else channels


def encode_image(array: np.ndarray, fmt: str, quality: int | None) -> bytes:
    """(H, W, C) uint8 -> image file bytes; same pixels, same bytes (grey WebP: see :func:`stored_channels`).
    JPEGs go through :mod:`.jpeg` (Pillow's bytes, less Python a view, the GIL released)."""
    if fmt == "jpg" and (data := encode_jpeg(array, quality)) is not None:
        return data
    if fmt == "webp" and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    encoder, options = FORMATS[fmt]
    options = {**options, **({} if quality is None else {"quality": quality})}
    buf = io.BytesIO()
    image.save(buf, format=encoder, **options)
    return buf.getvalue()


class ViewMismatch(ValueError):
    """A stored view of another size or channel count than the manifest declares."""


def decode_view(data: bytes, name: str, hwc: tuple[int, int, int] | None = None,
                channels: int | None = None) -> np.ndarray:
    """Stored view bytes -> (H, W, C) uint8 with ``channels`` (1 or 3), in one open of the file.

    With ``hwc`` (see :func:`stored_hwc`) the stored size and channels are checked first
    (:class:`ViewMismatch`). ``channels=None`` keeps what the file holds (grey stays 1 channel,
    anything else becomes RGB): for shards read without a manifest. Bytes that are not a
    readable image raise ValueError naming ``name``.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            shape = (im.height, im.width, len(im.getbands()))
            if hwc is not None and shape != tuple(hwc):
                h, w, c = hwc
                raise ViewMismatch(f"{name} is {shape[1]}x{shape[0]} with {shape[2]} channels, the manifest says "
                                   f"{w}x{h} with {c}")
            mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if im.mode == "L" else "RGB")
            array = np.asarray(im if im.mode == mode else im.convert(mode))
    except ViewMismatch:
        raise
    except Image.UnidentifiedImageError:
        raise ValueError(f"{name} is not a readable image (damaged header)") from None
    except Exception as e:  # noqa: BLE001 (PIL raises many types for corrupt data)
        raise ValueError(f"{name} does not decode ({type(e).__name__}: {e})") from None
    return array[..., None] if array.ndim == 2 else array


def npy_bytes(array: np.ndarray) -> bytes:
    """.npy bytes (no pickle), readable with ``np.load(..., allow_pickle=False)``."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_sample(index: int, views: np.ndarray, meta: dict, fmt: str, quality: int | None,
                  latents: np.ndarray | None = None) -> dict:
    """The WebDataset sample for one anchor: ``view0.{fmt}`` (anchor) ... ``view{K}.{fmt}``, ``json``,
    and ``latents.npy`` if given. ``views`` is (1+K, H, W, C) uint8."""
    sample = {"__key__": sample_key(index)}
    for v, array in enumerate(views):
        sample[view_field(v, fmt)] = encode_image(array, fmt, quality)
    try:  # a huge delta (finite weights, huge outputs) must not become invalid JSON
        sample[JSON_FIELD] = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        raise ConfigError(f"sample {index}: a perturbation size is not finite (NaN or infinite delta); "
                          "check the model's outputs and the policy's stds") from None
    if latents is not None:
        sample[LATENTS_FIELD] = npy_bytes(latents)
    return sample

