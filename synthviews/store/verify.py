"""Checking a dataset folder against its manifest, and summarising it."""

from __future__ import annotations

from pathlib import Path

from .._util.files import sha256_file
from ..errors import ConfigError
from .format import MANIFEST_NAME, shard_glob, shard_name, split_fields, stored_hwc, view_fields
from .manifest import pending_splits, read_manifest, shard_ranges
from .tarshards import ShardError, checked_samples, sample_problems


def _load(out: Path) -> dict:
    out = Path(out)
    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder")
    manifest = read_manifest(out)
    if manifest is None:
        raise ConfigError(f"{out} holds no {MANIFEST_NAME}: it is not a synthviews dataset"
                          + (" (rank progress files found: run `synthviews merge`)" if pending_splits(out) else ""))
    return manifest


def verify(out: str | Path) -> list[str]:
    """Every problem found (empty list = the dataset matches its manifest).

    Checks per shard: present, size, sha256, sample count, keys in the shard's
    index range, every field present and decodable, views of the declared size.
    """
    out = Path(out)
    manifest = _load(out)
    problems = []
    for split, entry in sorted(manifest["splits"].items()):
        config = entry["config"]
        expected = shard_ranges(config["samples"], config["shard_size"])
        records = {r["shard"]: r for r in entry["shards"]}
        if not entry.get("complete"):
            problems.append(f"split {split!r} is incomplete ({len(records)} of {len(expected)} shards recorded); "
                            f"rerun the same generate command to finish it")
        for shard, (first, count) in enumerate(expected):
            if shard in records:
                problems += _check_shard(out, records[shard], first, count, config)
            elif entry.get("complete"):
                problems.append(f"{shard_name(split, shard)}: missing from the manifest")
        listed = {r["name"] for r in entry["shards"]}
        for path in sorted(out.glob(shard_glob(split))):
            if path.name not in listed and entry.get("complete"):
                problems.append(f"{path.name}: not listed in the manifest")
    return problems


def _check_shard(out: Path, record: dict, first: int, count: int, config: dict) -> list[str]:
    """The problems of one shard: its file against the record (size and sha256 are reported on their
    own, before reading), then the samples, read as ``ShardViews`` reads them."""
    name, path = record["name"], out / record["name"]
    if not path.is_file():
        return [f"{name}: missing"]
    problems = []
    size = path.stat().st_size
    if size != record["bytes"]:
        problems.append(f"{name}: {size} bytes, manifest says {record['bytes']} (truncated or replaced)")
    if sha256_file(path) != record["sha256"]:
        problems.append(f"{name}: sha256 does not match the manifest (corrupted or modified)")
    if (record["first_index"], record["count"]) != (first, count):
        problems.append(f"{name}: manifest range {record['first_index']}+{record['count']} should be {first}+{count}")
    views, hwc = view_fields(config["image"]["format"], config["views"]), stored_hwc(config)
    try:
        with open(path, "rb") as f:
            for index, key, sample in checked_samples(f, name, first, count, split_fields(config),
                                                      on_problem=lambda text: problems.append(_line(text))):
                problems += sample_problems(f"{name}/{key}", sample, index, views, hwc)
    except ShardError as e:
        problems.append(_line(str(e)))
    except OSError as e:
        problems.append(f"{name}: unreadable ({e})")
    return problems


def _line(text: str) -> str:
    """The reader's ``shard NAME: ...`` as verify's ``NAME: ...``, like every other line it prints."""
    return text.removeprefix("shard ")


def summary(out: str | Path) -> str:
    """A few lines describing the dataset in ``out``."""
    out = Path(out)
    manifest = _load(out)
    lines = [f"{out}: synthviews dataset (manifest format {manifest['format_version']})"]
    for split, entry in sorted(manifest["splits"].items()):
        c = entry["config"]
        total = sum(r["bytes"] for r in entry["shards"])
        done = sum(r["count"] for r in entry["shards"])
        lines += [
            f"split {split}: {done}/{c['samples']} samples in {len(entry['shards'])}/{entry['num_shards']} shards, "
            f"{total / 2**20:.1f} MiB" + ("" if entry.get("complete") else "  (INCOMPLETE)"),
            f"  views: anchor + {c['views']} positives, {c['image']['format']}"
            + (f" q{c['image']['quality']}" if c["image"]["quality"] else "")
            + f", {'x'.join(map(str, c['image']['shape']))}",
            f"  model: {c['model']['model_id']}   policy: {c['policy_id']}   seed: {c['seed']}",
        ]
    pending = pending_splits(out)
    if pending:
        lines.append(f"rank progress files waiting for `synthviews merge`: {', '.join(pending)}")
    return "\n".join(lines)
