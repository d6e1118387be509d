"""The dataset manifest ``OUT/synthviews.json`` and the per-rank progress files.

Layout of ``synthviews.json``::

    {"format_version": 1,
     "splits": {"train": {"config": {...}, "num_shards": 10, "complete": true,
                          "shards": [{"shard": 0, "name": "train-000000.tar", "first_index": 0,
                                      "count": 1000, "bytes": ..., "sha256": ...}, ...]}}}

A single process writes it before its first shard and updates it after every
shard. With several ranks each rank instead does so with its own
``synthviews.{split}.rank{r}-of-{n}.json`` (one writer per file); :func:`merge`
folds them into the manifest once every shard exists.
Shards hold consecutive indices: shard s has [s*shard_size, (s+1)*shard_size).
"""

from __future__ import annotations

import json
from pathlib import Path

from .._util.checks import (
    MAX_IMAGE_SIDE,
    MAX_JSON_BYTES,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_SHARD_SIZE,
    MAX_SHARDS,
    MAX_VIEWS,
    Any,
    Bool,
    Choice,
    Int,
    List,
    Map,
    Obj,
    Opt,
    Str,
    _join,
    brief,
    error,
    load_json,
    read_text,
)
from .._util.files import write_atomic
from ..errors import ConfigError
from .format import (
    MANIFEST_NAME,
    PROGRESS_GLOB,
    PROGRESS_RE,
    SPLIT_PATTERN,
    SPLIT_RE,
    TEMPORARY_GLOB,
    TEMPORARY_RE,
    is_dataset_file,
    progress_glob,
    progress_name,
    shard_name,
)
from .lock import DatasetLock

FORMAT_VERSION = 1
ENCODERS = ("cpu", "nvjpeg")  # config.image.encoder: who encoded the views; absent means "cpu" (the default)


def shard_ranges(samples: int, shard_size: int) -> list[tuple[int, int]]:
    """(first_index, count) of every shard."""
    return [(first, min(shard_size, samples - first)) for first in range(0, samples, shard_size)]


def _read_json(path: Path) -> dict:
    """A JSON object from a regular file of at most 64 MB: strict JSON (no NaN, no duplicate keys)."""
    return _parse_json(read_text(path, "file", MAX_JSON_BYTES), str(path))


def _parse_json(text: str, where: str) -> dict:
    data = load_json(text, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is not a synthviews manifest (expected a JSON object)")
    return data


_SHA256 = Str(64, r"[0-9a-f]{64}")
_CONFIG = Obj({
    "samples": Int(1, MAX_SAMPLES), "shard_size": Int(1, MAX_SHARD_SIZE), "views": Int(1, MAX_VIEWS),
    "seed": Int(0, MAX_SEED), "save_latents": Bool,
    "image": Obj({"format": Choice("jpg", "png", "webp"), "quality": Opt(Int(1, 100)),
                  "shape": List(Int(1, MAX_IMAGE_SIDE), 3, length=3)}, {"encoder": Choice(*ENCODERS)}),
    "model": Obj({"model_id": Str(200), "family": Str(100), "weights_sha256": Opt(Str(200))},
                 {"license": Opt(Str(200)), "license_link": Opt(Str(2000))}),
    "policy": Map(Any, 10_000), "policy_id": Str(200), "amp": Opt(Str(20)),
}, {"split": Str(100, SPLIT_PATTERN), "decode": Map(Any, 100)})
_RECORD = Obj({"shard": Int(0, MAX_SHARDS - 1), "name": Str(100), "first_index": Int(0, MAX_SAMPLES),
               "count": Int(1, MAX_SHARD_SIZE), "bytes": Int(0, 1 << 50), "sha256": _SHA256})
_ENTRY = Obj({"config": _CONFIG, "shards": List(_RECORD, MAX_SHARDS)},
             {"num_shards": Int(1, MAX_SHARDS), "complete": Bool})


def _check_entry(entry: dict, split: str, where: str) -> dict:
    """A split entry (manifest) or progress entry checked field by field, then for consistency:
    the shard count follows from samples and shard_size, records name their own shard."""
    _ENTRY(entry, where)  # where = "FILE: splits.NAME": fields are named below it
    config = entry["config"]
    if config.get("split", split) != split:
        raise error(f"{_join(where, 'config.split')} is {brief(config['split'])}, not {split!r}")
    num_shards = -(-config["samples"] // config["shard_size"])
    if num_shards > MAX_SHARDS:
        raise error(f"{_join(where, 'config')}: {config['samples']} samples in shards of {config['shard_size']} make "
                    f"{num_shards:,} shards; the limit is {MAX_SHARDS:,}")
    if entry.get("num_shards", num_shards) != num_shards:
        raise error(f"{_join(where, 'num_shards')} is {entry['num_shards']}, but samples and shard_size give {num_shards}")
    seen = set()
    for i, record in enumerate(entry["shards"]):
        shard = record["shard"]
        if shard >= num_shards or shard in seen or record["name"] != shard_name(split, shard):
            raise error(f"{_join(where, f'shards[{i}]')}: shard {shard} named {brief(record['name'], 40)} is out of range, "
                        f"repeated or misnamed (expected {shard_name(split, min(shard, num_shards - 1))})")
        seen.add(shard)
    return entry


def read_manifest(out: Path) -> dict | None:
    """The manifest of ``out``, or None if there is none; a foreign or corrupt file raises ConfigError.

    Every field the library reads is checked against a schema of types and ranges first, so a
    hand-edited or hostile manifest gives one line naming the file and the field.
    """
    path = Path(out) / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        return None
    return _check_manifest(_read_json(path), str(path))


def parse_manifest(text: str, where: str) -> dict:
    """A manifest read elsewhere (e.g. from the Hub), checked as :func:`read_manifest` checks a file."""
    if len(text) > MAX_JSON_BYTES:
        raise error(f"{where} is larger than {MAX_JSON_BYTES:,} bytes: not a synthviews manifest")
    return _check_manifest(_parse_json(text, where), where)


def _check_manifest(data: dict, path: str) -> dict:
    if data.get("format_version") != FORMAT_VERSION or not isinstance(data.get("splits"), dict):
        raise ConfigError(f"{path} is not a synthviews manifest of format version {FORMAT_VERSION}")
    if len(data["splits"]) > 1000:
        raise error(f"{path}: splits holds {len(data['splits'])} entries; the limit is 1000")
    for split, entry in data["splits"].items():
        if not isinstance(split, str) or not SPLIT_RE.match(split):
            raise error(f"{path}: split name {brief(split, 40)} must be lower-case letters, digits or _")
        _check_entry(entry, split, f"{path}: splits.{split}")
    return data


def write_manifest(out: Path, manifest: dict) -> None:
    write_atomic(Path(out) / MANIFEST_NAME, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def read_progress(out: Path, split: str) -> list[dict]:
    """Every rank progress file of ``split`` in ``out`` (entries with ``config`` and ``shards``)."""
    found = []
    for path in sorted(Path(out).glob(progress_glob(split))):
        if PROGRESS_RE.match(path.name):
            entry = _check_entry(_read_json(path), split, f"{path}:")
            entry["_path"] = path
            found.append(entry)
    return found


def write_progress(out: Path, split: str, rank: int, world_size: int, entry: dict) -> None:
    path = Path(out) / progress_name(split, rank, world_size)
    write_atomic(path, (json.dumps(entry, indent=1, sort_keys=True) + "\n").encode())


def config_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """A readable description of the first difference between two configs, or None."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diff = config_difference(a, b, f"{prefix}{key}.")
            if diff:
                return diff
        elif a != b:
            return f"{prefix}{key} is {json.dumps(a)[:80]} there but {json.dumps(b)[:80]} now"
    return None


def with_encoder(config: dict) -> dict:
    """``config`` with ``image.encoder`` filled in ("cpu" where absent: the default is not written,
    so manifests of CPU-encoded datasets, old or new, are unchanged), for comparing configs."""
    image = config.get("image")
    if not isinstance(image, dict) or "encoder" in image:
        return config
    return {**config, "image": {**image, "encoder": "cpu"}}


def done_shards(out: Path, split: str, config: dict) -> dict[int, dict]:
    """Shard records already written for ``split`` (from the manifest and every progress file),
    after checking they were made with ``config``; records whose file is gone or has another
    size are dropped so the shard is made again."""
    out = Path(out)
    entries = read_progress(out, split)
    manifest = read_manifest(out)
    if manifest and split in manifest["splits"]:
        entries.append(manifest["splits"][split])
    done = {}
    for entry in entries:
        diff = config_difference(with_encoder(entry.get("config", {})), with_encoder(config))
        if diff:
            raise ConfigError(f"{out} already holds split {split!r} made with a different configuration ({diff}); "
                              f"rerun with the same options to resume it, or choose a new --out")
        for record in entry.get("shards", []):
            path = out / record["name"]
            if path.is_file() and path.stat().st_size == record["bytes"]:
                done[record["shard"]] = record
    return done


def split_entry(config: dict, shards: dict[int, dict], num_shards: int) -> dict:
    return {"config": config, "num_shards": num_shards, "complete": len(shards) == num_shards,
            "shards": [shards[s] for s in sorted(shards)]}


def merge(out: Path, split: str) -> dict:
    """Fold the progress files of ``split`` into the manifest once all its shards exist.

    Takes the folder's writer lock (a running writer makes it refuse) and removes the
    temporaries a killed run left; see :func:`fold_progress`.
    """
    if not Path(out).is_dir():
        raise ConfigError(f"{out} is not a folder; nothing to merge")
    with DatasetLock(out):
        remove_temporaries(out)
        return fold_progress(out, split)


def fold_progress(out: Path, split: str) -> dict:
    """:func:`merge` for a caller that holds the folder's lock.

    Idempotent and crash-safe: the manifest is written before the progress files are
    removed, and a complete split in the manifest merges again to the same bytes.
    Returns the updated manifest; raises ConfigError naming the missing shards otherwise.
    """
    out = Path(out)
    entries = read_progress(out, split)
    manifest = read_manifest(out) or {"format_version": FORMAT_VERSION, "splits": {}}
    if split in manifest["splits"]:
        entries.append(manifest["splits"][split])
    if not entries:
        raise ConfigError(f"{out} holds no shards of split {split!r} to merge")
    config = entries[0]["config"]
    done = done_shards(out, split, config)
    num_shards = len(shard_ranges(config["samples"], config["shard_size"]))
    missing = [s for s in range(num_shards) if s not in done]
    if missing:
        names = ", ".join(shard_name(split, s) for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ConfigError(f"{out}: split {split!r} is missing {len(missing)} of {num_shards} shards ({names}); "
                          f"finish (or rerun) the ranks that own them, then merge again")
    manifest["splits"][split] = split_entry(config, done, num_shards)
    write_manifest(out, manifest)
    for entry in entries:
        if "_path" in entry:
            entry["_path"].unlink(missing_ok=True)
    return manifest


def temporaries(out: Path) -> list[tuple[Path, str]]:
    """(path, final name) of every temporary a synthviews writer left in ``out``."""
    found = []
    for path in sorted(Path(out).glob(TEMPORARY_GLOB)):
        m = TEMPORARY_RE.match(path.name)
        if m and is_dataset_file(m.group("name")):
            found.append((path, m.group("name")))
    return found


def remove_temporaries(out: Path, keep=lambda name: False) -> None:
    """Remove the temporaries of killed writers, except those whose final name ``keep`` claims.

    Only for a caller holding the lock that makes it the sole writer of those files."""
    for path, name in temporaries(out):
        if not keep(name):
            path.unlink(missing_ok=True)


def pending_splits(out: Path) -> list[str]:
    """Splits that have rank progress files waiting to be merged."""
    return sorted({m.group("split") for p in Path(out).glob(PROGRESS_GLOB) if (m := PROGRESS_RE.match(p.name))})
