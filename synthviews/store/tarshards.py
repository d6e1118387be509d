"""Reading a shard back: its samples in order, checked against the manifest, for ``verify``,
the card's preview and training (``data.ShardViews``).

tarfile reads a tar cut at a member boundary, or one whose next header is
damaged, as a clean end of archive. :func:`checked_samples` therefore checks
a shard against its manifest record while it streams (count, keys, fields,
bytes, optionally sha256), so a short or wrong shard is an error, never a
silently smaller epoch. :func:`check_meta` and :func:`sample_problems` check
what is inside a sample. ``verify`` (which lists every problem of a folder) and
``ShardViews`` (which raises or skips) both use these checks, so the two agree
on what a good shard is.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

from .._util.checks import load_json, short
from ..errors import ConfigError
from .format import JSON_FIELD, LATENTS_FIELD, decode_view, sample_key


class ShardError(ConfigError):
    """A shard cannot be read, or does not match its manifest record; the message names the shard and sample."""


def iter_tar_samples(source: str | Path | BinaryIO) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {field: bytes})`` per sample of a tar file path or a readable stream, in one pass.

    Members of a sample must be contiguous. Raises ``tarfile.TarError``/``ValueError``
    for a truncated member or a key seen twice.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            yield from iter_tar_samples(f)
        return
    seen: set[str] = set()
    key, fields = None, {}
    with tarfile.open(fileobj=source, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            k, _, field = base.partition(".")
            if k != key:
                if key is not None:
                    yield key, fields
                if k in seen:
                    raise ValueError(f"sample {k} is split in non-contiguous parts")
                seen.add(k)
                key, fields = k, {}
            data = tar.extractfile(member).read()
            if len(data) != member.size:
                raise tarfile.ReadError(f"member {member.name} is truncated")
            if field in fields:
                raise ValueError(f"sample {k} has {field} twice")
            fields[field] = data
    if key is not None:
        yield key, fields


class _Tap:
    """A read-only stream that counts (and, if asked, hashes) the bytes read through it."""

    def __init__(self, raw: BinaryIO, sha256: bool):
        self.raw, self.bytes, self.hash = raw, 0, hashlib.sha256() if sha256 else None

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.bytes += len(data)
        if self.hash is not None:
            self.hash.update(data)
        return data

    def drain(self) -> None:
        """Read to the end: the tar end marker, padding, and anything appended after it."""
        while self.read(1 << 20):
            pass


def checked_samples(stream: BinaryIO, name: str, first: int, count: int, fields: set[str],
                    size: int | None = None, sha256: str | None = None,
                    lo: int = 0, hi: int | None = None,
                    on_problem: Callable[[str], None] | None = None) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """``(index, key, fields)`` of samples ``lo`` to ``hi`` (positions in the shard) of shard ``name``.

    The whole shard is read and checked against its record while streaming:
    exactly ``count`` samples keyed ``first``, ``first + 1``, ... (``format.sample_key``)
    in order, exactly ``fields`` in each, ``size`` bytes and, if given, ``sha256``.
    A mismatch raises :class:`ShardError` naming the shard and the sample; the
    size and hash can only be known at the end, after the samples were yielded.
    With ``on_problem``, a sample with the wrong key or members is reported to it
    and skipped instead, so a checker can list every bad sample of a shard.
    """
    hi = count if hi is None else hi
    tap = _Tap(stream, sha256 is not None)
    seen, key = 0, None
    after = lambda: f"after sample {key}" if key else "before its first sample"  # noqa: E731
    try:
        for key, sample in iter_tar_samples(tap):
            index = first + seen
            if seen >= count:
                raise ShardError(f"shard {name}: sample {key} is more than the {count} the manifest lists")
            wrong = None
            if key != sample_key(index):
                wrong = (f"shard {name}: sample {key} where {sample_key(index)} was expected (shard index "
                         f"range {first}-{first + count - 1}: a swapped, renamed or foreign shard?)")
            elif set(sample) != fields:
                missing, extra = sorted(fields - set(sample)), sorted(set(sample) - fields)
                wrong = f"shard {name}: sample {key} " + "; ".join(
                    part for part in (f"lacks {', '.join(missing)}" if missing else "",
                                      f"has unexpected {', '.join(extra)}" if extra else "") if part)
            if wrong is not None and on_problem is None:
                raise ShardError(wrong)
            if wrong is not None:
                on_problem(wrong)  # e.g. verify: note it, go on with the next sample
            elif lo <= seen < hi:
                yield index, key, sample
            seen += 1
        tap.drain()
    except ShardError:
        raise
    except (tarfile.TarError, OSError, ValueError, EOFError) as e:
        raise ShardError(f"shard {name}: unreadable {after()} ({type(e).__name__}: {e})") from None
    if seen != count:
        raise ShardError(f"shard {name}: ends {after()}, {seen} of the {count} samples the manifest lists "
                         f"(truncated, or a damaged tar header)")
    if size is not None and tap.bytes != size:
        raise ShardError(f"shard {name}: {tap.bytes} bytes, the manifest says {size} (truncated, or data appended)")
    if sha256 is not None and tap.hash.hexdigest() != sha256:
        raise ShardError(f"shard {name}: sha256 does not match the manifest (corrupted or modified)")


def check_meta(data: bytes, index: int | None = None) -> dict:
    """A sample's ``json`` member as a dict, checked to name ``index`` (if given); ValueError otherwise."""
    meta = load_json(data, "json")  # strict: the writer never writes NaN or a key twice
    if not isinstance(meta, dict):
        raise ValueError(f"json is a {type(meta).__name__}, not an object")
    if index is not None and meta.get("index") != index:
        raise ValueError(f"its json says index {short(repr(meta.get('index')), 40)}, not {index}")
    return meta


def sample_problems(where: str, sample: dict[str, bytes], index: int, view_names: Sequence[str],
                    hwc: tuple[int, int, int]) -> list[str]:
    """Every problem inside one sample whose members :func:`checked_samples` already checked:
    each view decodes at the stored size ``hwc``, the json is an object naming ``index``, the
    latents (if any) load. Each problem is one line starting with ``where``."""
    problems = []
    for name in view_names:
        try:
            decode_view(sample[name], name, hwc)
        except ValueError as e:
            problems.append(f"{where}: {e}")
    try:
        check_meta(sample[JSON_FIELD], index)
    except ValueError as e:
        problems.append(f"{where}: {e}")
    if LATENTS_FIELD in sample:
        try:
            np.load(io.BytesIO(sample[LATENTS_FIELD]), allow_pickle=False)
        except (ValueError, OSError) as e:
            problems.append(f"{where}: {LATENTS_FIELD} does not load ({e})")
    return problems
