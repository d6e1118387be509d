"""The shard reader's own tar header parsing reads exactly what tarfile reads.

``tar_members`` parses plain headers itself (tarfile's Python header parsing cost as much as
decoding the views) and hands anything else to tarfile. The reference here is tarfile in
stream mode, the reader before: on tars of every format tarfile writes, with long names,
directories, links and empty files, cut, flipped and padded, both must yield the same members
and fail (or end) at the same place.
"""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from synthviews.store import tarshards
from synthviews.store.tarshards import iter_tar_samples, tar_members


def _reference(data: bytes):
    """What tarfile in stream mode yields: the members read before it stopped, and how it stopped."""
    return _outcome(lambda: tarshards._tarfile_members(io.BytesIO(data)))


def _ours(data: bytes):
    return _outcome(lambda: tar_members(io.BytesIO(data)))


def _outcome(members):
    got = []
    try:
        for name, payload in members():
            got.append((name, payload))
    except (tarfile.TarError, ValueError, EOFError, OSError) as e:
        return got, type(e).__name__
    return got, None


def _random_tar(rng: random.Random) -> bytes:
    fmt = rng.choice([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i in range(rng.randint(0, 6)):
            kind = rng.choices(["file", "dir", "link"], weights=[8, 1, 1])[0]
            stem = f"{i:09d}"
            if rng.random() < 0.2:  # long names: ustar prefix, GNU long-name records or pax records
                stem = "d" * rng.randint(60, 120) + "/" + stem
            info = tarfile.TarInfo(f"{stem}.{rng.choice(['view0.jpg', 'json', 'latents.npy'])}")
            info.mtime = rng.choice([0, 1_700_000_000])
            if kind == "dir":
                info.type, info.name = tarfile.DIRTYPE, stem + "dir"
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "target"
                tar.addfile(info)
            else:
                payload = rng.randbytes(rng.choice([0, 1, 511, 512, 513, rng.randint(0, 3000)]))
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _damaged(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(0, 2)):
        what = rng.choice(["cut", "flip", "append", "zero"])
        if what == "cut" and data:
            del data[rng.randrange(len(data)):]
        elif what == "flip" and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif what == "append":
            data += rng.choice([bytes(512), rng.randbytes(rng.randint(1, 700))])
        elif what == "zero" and data:
            at = rng.randrange(0, len(data), 512)
            data[at:at + 512] = bytes(len(data[at:at + 512]))
    return bytes(data)


def test_same_members_and_stops_as_tarfile_on_fuzzed_tars():
    rng = random.Random(0)
    for _ in range(1500):
        data = _damaged(_random_tar(rng), rng)
        assert _ours(data) == _reference(data)


@pytest.mark.parametrize("data", [b"", b"x" * 100, bytes(512), bytes(1024), b"\xff" * 512])
def test_degenerate_streams_as_tarfile(data):
    assert _ours(data) == _reference(data)


def test_shards_written_by_the_writer_never_need_tarfile(tmp_path, monkeypatch):
    from synthviews.store.writer import generate

    generate(tmp_path / "ds", "toy", samples=12, views=2, shard_size=5, save_latents=True)

    def refuse(*args, **kwargs):
        raise AssertionError("a header of our own shards went to tarfile")

    monkeypatch.setattr(tarshards, "_tarfile_members", refuse)
    shards = sorted((tmp_path / "ds").glob("train-*.tar"))
    samples = [s for shard in shards for s in iter_tar_samples(shard)]
    assert [k for k, _ in samples] == [f"{i:09d}" for i in range(12)]
    assert set(samples[0][1]) == {"view0.jpg", "view1.jpg", "view2.jpg", "json", "latents.npy"}


def test_writer_bytes_equal_webdataset_tarwriter():
    """Same bytes as webdataset's TarWriter (tarfile, PAX format), also for names that need pax records."""
    import webdataset as wds

    from synthviews.store.tarshards import TarSampleWriter

    rng = random.Random(3)
    for trial in range(60):
        samples = []
        for i in range(rng.randint(0, 5)):
            key = f"{i:09d}" if rng.random() < 0.8 else "k" * rng.randint(90, 130) + f"{i}"
            if rng.random() < 0.1:
                key += "\u00e9"  # non-ASCII: a pax record
            fields = {f: rng.randbytes(rng.choice([0, 1, 511, 512, 513, rng.randint(0, 5000)]))
                      for f in rng.sample(["view0.jpg", "view1.jpg", "json", "latents.npy", "_meta"], 3)}
            samples.append({"__key__": key, **fields})
        user = rng.choice(["synthviews", "u" * 40, "\u00fcser"])
        ours, theirs = io.BytesIO(), io.BytesIO()
        writer = TarSampleWriter(ours, mtime=rng.choice([0, 1_700_000_000]), user=user, group="synthviews")
        reference = wds.TarWriter(theirs, encoder=False, mtime=writer.mtime, user=user, group="synthviews")
        for sample in samples:
            writer.write(sample)
            reference.write(sample)
        writer.close()
        reference.close()
        assert ours.getvalue() == theirs.getvalue(), trial


def test_writer_refuses_a_non_bytes_field_before_writing_any():
    from synthviews.store.tarshards import TarSampleWriter

    out = io.BytesIO()
    with pytest.raises(ValueError, match="json"):
        TarSampleWriter(out, mtime=0, user="u", group="g").write({"__key__": "0", "a.jpg": b"x", "json": 3})
    assert out.getvalue() == b""


def test_a_hand_made_negative_size_goes_to_tarfile():
    info = tarfile.TarInfo("000000000.json")
    info.size = 3
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    header[124:136] = b"-0000000005\0"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data = bytes(header) + b"abc".ljust(512, b"\0") + bytes(1024)
    assert _ours(data) == _reference(data)
