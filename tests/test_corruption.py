"""A short or wrong shard is an error, never a silent drop: a corruption matrix read by verify and ShardViews."""

import io
import shutil
import tarfile
import warnings

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from synthviews.data import ShardError, ShardViews
from synthviews.errors import ConfigError
from synthviews.store.verify import verify
from synthviews.store.writer import generate

SHARD = "train-000001.tar"  # samples 20..39


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """60 samples (anchor + 2 positives, 16 px) in 3 shards of 20."""
    out = tmp_path_factory.mktemp("corruption") / "ds"
    generate(out, "toy", None, samples=60, views=2, shard_size=20, seed=3, model_kwargs={"resolution": 16})
    return out


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def _edit(path, fn):
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(fn(data)))


def _flip(data, offset):
    data[offset] ^= 0xFF
    return data


def truncate_mid_member(ds):
    m = _members(ds / SHARD)["000000025.view1.jpg"]
    _edit(ds / SHARD, lambda d: d[: m.offset_data + m.size // 2])


def truncate_at_header(ds):
    m = _members(ds / SHARD)["000000030.view0.jpg"]
    _edit(ds / SHARD, lambda d: d[: m.offset])  # tarfile sees a clean end here


def truncate_to_zero(ds):
    (ds / SHARD).write_bytes(b"")


def flip_jpeg_header(ds):
    m = _members(ds / SHARD)["000000027.view0.jpg"]
    _edit(ds / SHARD, lambda d: _flip(d, m.offset_data + 1))  # the SOI marker


def flip_jpeg_body(ds):
    m = _members(ds / SHARD)["000000027.view2.jpg"]
    _edit(ds / SHARD, lambda d: _flip(d, m.offset_data + m.size - 40))  # entropy-coded data: may still decode


def flip_tar_header(ds):
    m = _members(ds / SHARD)["000000033.json"]
    _edit(ds / SHARD, lambda d: _flip(d, m.offset + 3))  # bad checksum: tarfile sees end-of-archive


def flip_json(ds):
    m = _members(ds / SHARD)["000000022.json"]
    _edit(ds / SHARD, lambda d: _flip(d, m.offset_data))


def zero_page(ds):
    def zero(d):
        d[8192:12288] = bytes(4096)
        return d
    _edit(ds / SHARD, zero)


def delete_shard(ds):
    (ds / SHARD).unlink()


def remove_manifest(ds):
    (ds / "synthviews.json").unlink()


def append_garbage(ds):
    _edit(ds / SHARD, lambda d: d + b"\x17garbage" * 300)


def swap_shards(ds):
    a, b = (ds / "train-000000.tar").read_bytes(), (ds / SHARD).read_bytes()
    (ds / "train-000000.tar").write_bytes(b)
    (ds / SHARD).write_bytes(a)


def _rewrite(ds, member, data):
    """The shard with ``member`` replaced by ``data`` (None: left out)."""
    src = (ds / SHARD).read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(src)) as tin, tarfile.open(fileobj=buf, mode="w") as tout:
        for m in tin.getmembers():
            if m.name != member:
                tout.addfile(m, tin.extractfile(m))
            elif data is not None:
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
    (ds / SHARD).write_bytes(buf.getvalue())


def drop_view(ds):
    _rewrite(ds, "000000024.view0.jpg", None)


def resize_view(ds):
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    _rewrite(ds, "000000024.view0.jpg", jpeg.getvalue())


CASES = [truncate_mid_member, truncate_at_header, truncate_to_zero, flip_jpeg_header, flip_jpeg_body,
         flip_tar_header, flip_json, zero_page, delete_shard, remove_manifest, append_garbage, swap_shards, drop_view,
         resize_view]
SHA256_ONLY = {flip_jpeg_body}  # a flipped byte that still decodes: only the hash sees it


@pytest.fixture(params=CASES, ids=lambda f: f.__name__)
def broken(request, clean, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    request.param(ds)
    return request.param, ds


def _read(ds, num_workers, **kw):
    """Every index ShardViews yields, through a DataLoader with ``num_workers`` workers."""
    it = iter(DataLoader(ShardViews(ds, **kw), batch_size=5, num_workers=num_workers))
    try:
        return [int(i) for _, index in it for i in index]
    finally:
        if num_workers:
            it._shutdown_workers()  # now: torch's own clean-up via the traceback takes 10 s


def test_the_clean_dataset_reads_fully(clean):
    assert verify(clean) == []
    for workers in (0, 2):
        assert sorted(_read(clean, workers, verify="sha256")) == list(range(60))


def test_verify_names_the_shard(broken):
    case, ds = broken
    if case is remove_manifest:
        with pytest.raises(ConfigError, match="synthviews.json"):
            verify(ds)
        return
    problems = verify(ds)
    assert problems and any(SHARD in p for p in problems), problems


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shard_views_raise_naming_the_shard(broken, num_workers):
    case, ds = broken
    name = "synthviews.json" if case is remove_manifest else SHARD
    checks = [{"verify": "sha256"}] if case in SHA256_ONLY else [{}]
    if num_workers == 0 and case not in SHA256_ONLY:
        checks.append({"verify": "sha256"})
    for kw in checks:
        with pytest.raises(ConfigError, match=name) as info:
            _read(ds, num_workers, **kw)
        assert case is remove_manifest or info.type is ShardError or "ShardError" in str(info.value)


def test_skipping_replaces_what_it_skips_so_the_count_never_drops(broken):
    case, ds = broken
    if case is remove_manifest:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        indices = _read(ds, 0, on_error="skip", verify="sha256")
    assert len(indices) == 60  # every reader yields its full count: no DDP rank runs short
    assert any(SHARD in str(w.message) for w in caught)


def test_skipping_keeps_every_simulated_rank_and_worker_at_the_same_count(clean, tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    truncate_at_header(ds)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    counts = []
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "2")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                counts.append(len(list(ShardViews(ds, on_error="skip", rank=rank, world_size=2, batch_size=5))))
    assert counts == [15, 15, 15, 15]  # same batches on every rank: no DDP hang


def test_a_missing_view_is_an_error_without_a_manifest_too(clean, tmp_path):
    """Plain shard URLs: a sample without view0 must not make view1 the anchor."""
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    drop_view(ds)
    with pytest.raises(ShardError, match=f"{SHARD}: sample 000000024: stored views \\[1, 2\\] are not view0"):
        list(ShardViews([str(ds / SHARD)], epoch_samples=20, shuffle=0))


def test_verify_lists_every_bad_sample_of_a_shard_not_only_the_first(clean, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    _rewrite(ds, "000000022.view1.jpg", None)  # a missing member ...
    _rewrite(ds, "000000030.view0.jpg", b"\xff\xd8 not a jpeg")  # ... and, further on, a broken image
    problems = verify(ds)
    assert any(p.startswith(f"{SHARD}: sample 000000022 lacks view1.jpg") for p in problems), problems
    assert any(p.startswith(f"{SHARD}/000000030: view0.jpg") for p in problems), problems
    assert not any(p.startswith("shard ") for p in problems)  # one prefix style: the shard's name
