"""The dataset manifest ``OUT/synthviews.json`` and the per-rank progress files.

Layout of ``synthviews.json``::

    {"format_version": 1,
     "splits": {"train": {"config": {...}, "num_shards": 10, "complete": true,
                          "shards": [{"shard": 0, "name": "train-000000.tar", "first_index": 0,
                                      "count": 1000, "bytes": ..., "sha256": ...}, ...]}}}

A single process updates it after every shard. With several ranks each rank
instead updates its own ``synthviews.{split}.rank{r}-of-{n}.json`` (one writer
per file); :func:`merge` folds them into the manifest once every shard exists.
Shards hold consecutive indices: shard s has [s*shard_size, (s+1)*shard_size).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import ConfigError
from .files import write_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "synthviews.json"
_SPLIT_RE = re.compile(r"^[a-z0-9_]+$")
_PROGRESS_RE = re.compile(r"^synthviews\.(?P<split>[a-z0-9_]+)\.rank(?P<rank>\d+)-of-(?P<world>\d+)\.json$")


def check_split(split: str) -> str:
    if not isinstance(split, str) or not _SPLIT_RE.match(split):
        raise ConfigError(f"split name {split!r} must be lower-case letters, digits or _ (e.g. train, test)")
    return split


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:06d}.tar"


def shard_ranges(samples: int, shard_size: int) -> list[tuple[int, int]]:
    """(first_index, count) of every shard."""
    return [(first, min(shard_size, samples - first)) for first in range(0, samples, shard_size)]


def progress_name(split: str, rank: int, world_size: int) -> str:
    return f"synthviews.{split}.rank{rank:03d}-of-{world_size:03d}.json"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is unreadable or not valid JSON ({e}); it is not a synthviews manifest") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a synthviews manifest (expected a JSON object)")
    return data


def read_manifest(out: Path) -> dict | None:
    """The manifest of ``out``, or None if there is none; a foreign or corrupt file raises ConfigError."""
    path = Path(out) / MANIFEST_NAME
    if not path.exists():
        return None
    data = _read_json(path)
    if data.get("format_version") != FORMAT_VERSION or not isinstance(data.get("splits"), dict):
        raise ConfigError(f"{path} is not a synthviews manifest of format version {FORMAT_VERSION}")
    return data


def write_manifest(out: Path, manifest: dict) -> None:
    write_atomic(Path(out) / MANIFEST_NAME, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def read_progress(out: Path, split: str) -> list[dict]:
    """Every rank progress file of ``split`` in ``out`` (entries with ``config`` and ``shards``)."""
    found = []
    for path in sorted(Path(out).glob(f"synthviews.{split}.rank*-of-*.json")):
        if _PROGRESS_RE.match(path.name):
            entry = _read_json(path)
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
        diff = config_difference(entry.get("config", {}), config)
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


def pending_splits(out: Path) -> list[str]:
    """Splits that have rank progress files waiting to be merged."""
    return sorted({m.group("split") for p in Path(out).glob("synthviews.*.json") if (m := _PROGRESS_RE.match(p.name))})
