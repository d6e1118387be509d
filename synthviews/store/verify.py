"""Checking a dataset folder against its manifest, and summarising it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from .._util.checks import load_json, short
from .._util.files import sha256_file
from .._util.images import stored_channels
from ..errors import ConfigError
from .manifest import MANIFEST_NAME, pending_splits, read_manifest, shard_name, shard_ranges
from .tarshards import iter_tar_samples


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
        for path in sorted(out.glob(f"{split}-*.tar")):
            if path.name not in listed and entry.get("complete"):
                problems.append(f"{path.name}: not listed in the manifest")
    return problems


def _check_shard(out: Path, record: dict, first: int, count: int, config: dict) -> list[str]:
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
    fmt, k = config["image"]["format"], config["views"]
    c, h, w = config["image"]["shape"]
    c = stored_channels(fmt, c)  # a grey WebP view is stored as RGB
    fields = {f"view{v}.{fmt}" for v in range(k + 1)} | {"json"} | ({"latents.npy"} if config["save_latents"] else set())
    seen = 0
    try:
        for key, sample in iter_tar_samples(path):
            index = first + seen
            seen += 1
            if key != f"{index:09d}":
                problems.append(f"{name}: sample {seen} has key {key}, expected {index:09d}")
                continue
            if set(sample) != fields:
                problems.append(f"{name}/{key}: fields {sorted(sample)}, expected {sorted(fields)}")
                continue
            problems += _check_fields(f"{name}/{key}", sample, index, fmt, k, (h, w, c))
    except (tarfile.TarError, ValueError, OSError) as e:
        problems.append(f"{name}: unreadable tar after {seen} samples ({e})")
        return problems
    if seen != count:
        problems.append(f"{name}: {seen} samples, manifest says {count}")
    return problems


def _check_fields(where: str, sample: dict, index: int, fmt: str, k: int, hwc: tuple) -> list[str]:
    problems = []
    for v in range(k + 1):
        try:
            with Image.open(io.BytesIO(sample[f"view{v}.{fmt}"])) as im:
                im.load()
                shape = (im.height, im.width, len(im.getbands()))
        except Exception as e:  # PIL raises many types for corrupt data
            problems.append(f"{where}: view{v}.{fmt} does not decode ({e})")
            continue
        if shape != hwc:
            problems.append(f"{where}: view{v} is {shape[1]}x{shape[0]} with {shape[2]} channels, expected "
                            f"{hwc[1]}x{hwc[0]} with {hwc[2]}")
    try:
        meta = load_json(sample["json"], f"{where}: json")
        if not isinstance(meta, dict):
            problems.append(f"{where}: json is a {type(meta).__name__}, not an object")
        elif meta.get("index") != index:
            problems.append(f"{where}: json index {short(repr(meta.get('index')), 40)} != {index}")
    except ConfigError as e:
        problems.append(str(e))
    if "latents.npy" in sample:
        try:
            np.load(io.BytesIO(sample["latents.npy"]), allow_pickle=False)
        except (ValueError, OSError) as e:
            problems.append(f"{where}: latents.npy does not load ({e})")
    return problems


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
