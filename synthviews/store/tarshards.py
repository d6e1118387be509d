"""The tar layer of shards: writing samples (:class:`TarSampleWriter`) and reading a shard back, its
samples in order, checked against the manifest, for ``verify``, the card's preview and training
(``data.ShardViews``).

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
    for name, data in tar_members(source):
        k, _, field = name.rsplit("/", 1)[-1].partition(".")
        if k != key:
            if key is not None:
                yield key, fields
            if k in seen:
                raise ValueError(f"sample {k} is split in non-contiguous parts")
            seen.add(k)
            key, fields = k, {}
        if field in fields:
            raise ValueError(f"sample {k} has {field} twice")
        fields[field] = data
    if key is not None:
        yield key, fields


_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular file (old and new flag), contiguous file: what tarfile reads as files
_DIRECTORY = b"5"


def tar_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of each regular file of a tar stream, in order, as ``tarfile`` in stream mode reads them.

    tarfile parses every 512-byte header in Python (~60 us a member: as much as decoding a 128 px
    JPEG), so the plain headers a writer like webdataset's produces (regular files and directories,
    octal sizes, no pax or GNU extension records) are read here; at the first other valid header the
    rest of the stream, from that header on, goes to tarfile. Like tarfile, a damaged or cut header
    after the first member, or the all-zero end block, ends the archive (the caller counts what it
    got); in the first header it raises ``tarfile.ReadError``, and so does a member or its padding cut short.
    """
    first = True
    while True:
        header = stream.read(_BLOCK)
        plain = _plain_header(header)
        if plain is _END:
            return
        if plain is _DAMAGED:
            if first:
                raise tarfile.ReadError("empty file" if not header else "bad or truncated header")
            return
        if plain is None:  # a valid header of another kind: tarfile reads the rest, from this header on
            yield from _tarfile_members(_Prepended(header, stream))
            return
        name, size, kind = plain
        padded = size + -size % _BLOCK
        data = stream.read(padded) if size else b""  # the member and its padding, in one read
        if len(data) < size:
            raise tarfile.ReadError(f"member {name} is truncated")
        if kind in _REGULAR:
            yield name, data[:size] if len(data) > size else data
        first = False
        if len(data) != padded:
            raise tarfile.ReadError("unexpected end of data")  # a cut in the padding: tarfile says so too


_END, _DAMAGED = object(), object()


def _plain_header(header: bytes):
    """``(name, size, type)`` of a plain header; ``_END`` for the end block, ``_DAMAGED`` for a short or
    invalid one (what tarfile takes for the end after the first member), None for another valid kind."""
    if len(header) != _BLOCK:
        return _DAMAGED
    if header == bytes(_BLOCK):
        return _END
    sum_field = header[148:156]
    try:
        stored_sum = int(sum_field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return _DAMAGED
    unsigned = sum(header) - sum(sum_field) + 8 * 32  # the checksum field counts as spaces
    if stored_sum != unsigned:
        signed = unsigned - 256 * sum(1 for byte in header[:148] + header[156:] if byte > 127)
        return None if stored_sum == signed else _DAMAGED  # tarfile accepts a signed sum too: let it read that
    kind, size_field = header[156:157], header[124:136]
    if (kind not in _REGULAR and kind != _DIRECTORY) or size_field[:1] in (b"\x80", b"\xff"):  # base-256 size
        return None
    try:
        size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return _DAMAGED
    if size < 0:  # int() reads "-5" too: a hand-made header; tarfile decides
        return None
    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    prefix = header[345:500].split(b"\0", 1)[0]
    if kind == b"\0" and name.endswith("/"):  # old V7 style directory
        kind = _DIRECTORY
    if kind == _DIRECTORY:
        size = 0  # tarfile does not skip data after a directory header either
    if prefix:
        name = prefix.decode("utf-8", "surrogateescape") + "/" + name
    return name, size, kind


def _tarfile_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """Regular files of a tar stream through tarfile (stream mode): the reference reader."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            if len(data) != member.size:
                raise tarfile.ReadError(f"member {member.name} is truncated")
            yield member.name, data


class _Prepended:
    """A read-only stream: ``head`` (bytes already read), then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO):
        self.head, self.raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if n is None or n < 0:
            data, self.head = self.head + self.raw.read(), b""
            return data
        data, self.head = self.head[:n], self.head[n:]
        return data + self.raw.read(n - len(data)) if len(data) < n else data


class TarSampleWriter:
    """Samples into a tar stream, byte for byte what ``webdataset.TarWriter(stream, encoder=False,
    mtime=, user=, group=)`` writes (tarfile, stream mode, PAX format).

    tarfile builds each 512-byte header in Python (~35 us a member, 4 members a sample), in the
    writing thread, holding the GIL the generator's and the encoders' threads need; the plain
    headers of our members (short ASCII names) are built here from one template. Any other
    member (a long or non-ASCII name, a huge size) gets tarfile's own header, pax records included.
    """

    _RECORD = 20 * _BLOCK  # tarfile pads an archive to whole records of 10240 bytes

    def __init__(self, stream: BinaryIO, mtime: int, user: str, group: str, mode: int = 0o444):
        self.stream, self.offset, self.mtime = stream, 0, mtime
        self.user, self.group, self.mode = user, group, mode
        plain = isinstance(mtime, int) and 0 <= mtime < 8 ** 11 and all(len(x) <= 32 and x.isascii() for x in (user, group))
        self._middle = (b"%07o\0" % (mode & 0o7777) + b"0000000\0" * 2) if plain else None
        self._tail = (b"0" + bytes(100) + tarfile.POSIX_MAGIC + user.encode().ljust(32, b"\0")
                      + group.encode().ljust(32, b"\0") + bytes(16 + 155 + 12))
        self._mtime = b"%011o\0" % mtime if plain else b""

    def write(self, sample: dict) -> None:
        """Members ``{__key__}.{field}`` in sorted field order; fields starting with ``_`` are left out."""
        key, members = sample["__key__"], []
        for field in sorted(sample):
            if field.startswith("_"):
                continue
            data = sample[field]
            if isinstance(data, str):
                data = data.encode("utf-8")
            if not isinstance(data, (bytes, bytearray)):
                raise ValueError(f"{field} doesn't map to bytes ({type(data)})")  # before anything is written
            members.append((f"{key}.{field}", data))
        for name, data in members:
            self._member(name, data)

    def _member(self, name: str, data) -> None:
        size = len(data)
        encoded = name.encode("ascii", "surrogateescape") if name.isascii() else b""
        if self._middle is not None and 0 < len(encoded) <= 100 and size < 8 ** 11:
            head = (encoded.ljust(100, b"\0") + self._middle + b"%011o\0" % size + self._mtime + b" " * 8
                    + self._tail)
            header = head[:148] + b"%06o\0 " % sum(head) + head[156:]  # the checksum, tarfile's way
        else:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = size, self.mtime, self.mode, self.user, \
                self.group
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        pad = -size % _BLOCK
        self.stream.write(header)
        self.stream.write(data)
        if pad:
            self.stream.write(bytes(pad))
        self.offset += len(header) + size + pad

    def close(self) -> None:
        """The end of the archive: two zero blocks, then zeros up to a whole record."""
        end = 2 * _BLOCK
        end += -(self.offset + end) % self._RECORD
        self.stream.write(bytes(end))
        self.offset += end


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
