"""The batched reader (issue 14): workers decode to uint8 and collate uint8; float conversion,
normalisation and T_x run per batch (T_x in the workers, or on the training device; the plain
conversion in the main process), and every batch
equals what the per-sample path gives, collated: same pixels, same keyed T_x parameters per sample."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

import synthviews as sv
from synthviews.data import ContinuousViews, ShardError, ShardViews, ViewsLoader, loader
from synthviews.data import shards as shards_module
from synthviews.data.augment import Augment
from synthviews.data.formats import map_tensors
from synthviews.errors import ConfigError
from synthviews.store.format import decode_view
from synthviews.store.writer import generate

BATCH = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """64 samples (anchor + 2 positives, 16 px RGB) in 4 shards, with latents."""
    out = tmp_path_factory.mktemp("batched") / "ds"
    generate(out, "toy", samples=64, views=2, shard_size=16, seed=3, save_latents=True,
             model_kwargs={"resolution": 16})
    return out


def _per_sample(dataset, **kw):
    """Batches the way a plain DataLoader builds them: per-sample items, default-collated."""
    items = list(ShardViews(dataset, batch_size=BATCH, **kw))
    return [default_collate(items[i:i + BATCH]) for i in range(0, len(items) - BATCH + 1, BATCH)]


def _assert_same(a, b):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("t_x", [None, "simclr", "no_color", "no_crop", "none"])
def test_batches_equal_the_per_sample_path_for_every_preset(dataset, t_x):
    kw = dict(t_x=t_x, t_x_size=12, seed=5)
    batches = list(loader(dataset, batch_size=BATCH, **kw))
    assert len(batches) == 8
    for ours, reference in zip(batches, _per_sample(dataset, **kw)):
        _assert_same(ours, reference)


@pytest.mark.parametrize("output", ["tuple", "lightly", "solo", "dict", "stablerep"])
def test_every_output_layout_is_kept(dataset, output):
    kw = dict(output=output, t_x="simclr", t_x_size=12, pairs="random", crops=3, shuffle=0)
    if output == "dict":
        kw.update(return_meta=True, return_latents=True)
    batches = list(loader(dataset, batch_size=BATCH, **kw))
    for ours, reference in zip(batches, _per_sample(dataset, **kw)):
        _assert_same(ours, reference)
    if output == "dict":
        assert batches[0]["latents"].shape == (BATCH, 3, 20) and batches[0]["json"]["index"].tolist() == list(range(8))
    if output == "stablerep":
        assert batches[0][0].shape == (BATCH, 9, 12, 12)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_workers_give_the_same_batches_and_the_t_x_of_a_sample_does_not_depend_on_its_batch(dataset):
    kw = dict(t_x="simclr", t_x_size=12, seed=2, shuffle=0)
    ref = {int(i): [v[b] for v in views] for views, index in loader(dataset, batch_size=BATCH, **kw)
           for b, i in enumerate(index)}
    for batch_size, workers in ((4, 2), (16, 0), (8, 2)):
        dl = loader(dataset, batch_size=batch_size, num_workers=workers, **kw)
        seen = 0
        for views, index in dl:
            for b, i in enumerate(index.tolist()):
                for v, x in zip(views, ref[i]):
                    torch.testing.assert_close(v[b], x, rtol=0, atol=1e-6)
                seen += 1
        assert seen == len(dl) * batch_size


def test_epochs_redraw_the_t_x_and_set_epoch_reaches_the_workers(dataset):
    dl = loader(dataset, batch_size=BATCH, num_workers=2, t_x="no_color", t_x_size=12, shuffle=0)
    first = {int(i): v[b] for views, index in dl for b, (i, v) in enumerate(zip(index, [views[1]] * len(index)))}
    dl.set_epoch(1)
    assert dl.views.epoch == 1 and dl.state_dict()["epoch"] == 1
    second = {int(i): v[b] for views, index in dl for b, (i, v) in enumerate(zip(index, [views[1]] * len(index)))}
    assert first.keys() == second.keys()
    assert sum(not torch.equal(first[i], second[i]) for i in first) > len(first) // 2


def test_custom_callables_still_run_per_sample_on_float_views(dataset):
    shapes = []

    def t_x(x):
        shapes.append((tuple(x.shape), x.dtype))
        return x.flip(-1)

    batches = list(loader(dataset, batch_size=BATCH, t_x=t_x, shuffle=0))
    assert set(shapes) == {((3, 16, 16), torch.float32)}
    raw = list(loader(dataset, batch_size=BATCH, shuffle=0))
    assert torch.equal(batches[0][0][0], raw[0][0][0].flip(-1))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_device_side_finishing_gives_the_same_batches(dataset):
    """The device path (uint8 batches to the main process, finished there) checked on the CPU."""
    kw = dict(t_x="simclr", t_x_size=12, output="lightly", shuffle=0)
    reference = list(loader(dataset, batch_size=BATCH, num_workers=2, **kw))
    views = ShardViews(dataset, batch_size=BATCH, num_workers=2, **kw)
    batched = views.batched(torch.device("cpu"))
    dl = ViewsLoader(batched, batch_size=BATCH, num_workers=2, drop_last=True, collate_fn=batched.collate)
    got = list(dl)
    assert len(got) == len(reference) == len(dl)
    for a, b in zip(got, reference):
        _assert_same(a, b)
    records = list(iter(batched))[:BATCH]
    raw = views.collate(records, device=torch.device("cpu"))
    assert isinstance(raw, shards_module.RawBatch) and raw.pixels.dtype == torch.uint8
    assert raw.pixels.shape == (BATCH, 2, 3, 16, 16) and raw.seeds.shape == (BATCH, 2)
    assert loader(dataset, batch_size=BATCH, device="cpu", **kw).dataset.device is None  # CPU: the workers do it
    if torch.cuda.is_available():
        on_gpu = list(loader(dataset, batch_size=BATCH, device="cuda", **kw))
        assert on_gpu[0][0][0].device.type == "cuda"
        for a, b in zip(on_gpu, reference):
            torch.testing.assert_close(a[0][0].cpu(), b[0][0], rtol=0, atol=1e-4)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("output, latents", [("tuple", False), ("dict", True)])
def test_without_t_x_workers_send_uint8_and_the_main_process_converts(dataset, output, latents):
    """Float views made in a worker's fresh shared memory cost it as much CPU in page faults as the
    decode: without T_x the worker sends the uint8 batch (a quarter of the bytes) and the main process
    converts it, to exactly what the in-process path gives."""
    kw = dict(shuffle=0, pairs=[0, 1], return_latents=latents, output=output)
    first = lambda batch: batch["key"][0] if output == "dict" else int(batch[-1][0])  # noqa: E731
    reference = {first(b): b for b in loader(dataset, batch_size=BATCH, **kw)}
    got = {first(b): b for b in loader(dataset, batch_size=BATCH, num_workers=2, **kw)}
    assert got.keys() == reference.keys() and len(got) == 64 // BATCH
    for k in got:
        _assert_same(got[k], reference[k])

    def sent_by_a_worker(views):
        batched = views.batched()
        return next(iter(torch.utils.data.DataLoader(batched, batch_size=BATCH, num_workers=1,
                                                     collate_fn=batched.collate)))

    sent = sent_by_a_worker(ShardViews(dataset, batch_size=BATCH, num_workers=1, **kw))
    assert isinstance(sent, shards_module.RawBatch) and sent.pixels.dtype == torch.uint8
    sent = sent_by_a_worker(ShardViews(dataset, batch_size=BATCH, num_workers=1, t_x="simclr", t_x_size=12, shuffle=0))
    assert not isinstance(sent, shards_module.RawBatch)  # a CPU T_x runs in the workers, where the cores are


@pytest.mark.parametrize("output, latents", [("tuple", False), ("dict", True), ("solo", False), ("stablerep", False)])
def test_pinned_pixels_give_an_item_all_in_pinned_memory(dataset, monkeypatch, output, latents):
    """With pin_memory=True the DataLoader pins the uint8 batch a worker sends; the item made from it in the
    main process is pinned as a whole (views, index, latents, a concatenation), as the DataLoader pins a
    finished batch, so ``.cuda(non_blocking=True)`` stays asynchronous. Checked with a stand-in for CUDA's
    host allocator: a storage counts as pinned once made by ``empty(pin_memory=True)`` or ``pin_memory()``."""
    views = ShardViews(dataset, batch_size=BATCH, shuffle=0, pairs=[0, 1], output=output, return_latents=latents)
    records = list(iter(views.batched()))[:BATCH]
    raw = views.collate(records, device=torch.device("cpu"))
    plain = views.finish(raw)
    pinned, real_empty, copies = set(), torch.empty, []

    def empty(*args, pin_memory=False, **kwargs):
        x = real_empty(*args, **kwargs)
        if pin_memory:
            pinned.add(x.untyped_storage().data_ptr())
        return x

    def pin(self):
        copies.append(tuple(self.shape))
        x = self.clone()
        pinned.add(x.untyped_storage().data_ptr())
        return x

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: self.untyped_storage().data_ptr() in pinned)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    raw = raw.pin_memory()
    got = views.finish(raw)
    _assert_same(got, plain)
    tensors = []
    map_tensors(tensors.append, got)
    assert tensors and all(t.is_pinned() for t in tensors)
    assert (BATCH, 3, 16, 16) not in copies  # the float views were made pinned, not copied there after


def test_augment_seeds_give_each_row_its_own_batch_of_one_draw():
    aug = Augment("simclr", size=12)
    x = torch.rand(5, 3, 16, 16)
    seeds = [3, 2**62 + 1, 3, 0, 77]
    out = aug(x, seeds=seeds)
    for b, s in enumerate(seeds):
        torch.testing.assert_close(out[b:b + 1], aug(x[b:b + 1], seed=s), rtol=0, atol=1e-6)
    p = aug.sample_params(5, 16, 16, seeds=seeds)
    q = aug.sample_params(3, 16, 16, seeds=seeds[2:])
    assert torch.equal(p.factors[2:], q.factors) and torch.equal(p.boxes[2:], q.boxes)
    with pytest.raises(ConfigError, match="one per image"):
        aug(x, seeds=seeds[:2])
    with pytest.raises(ConfigError, match="not both"):
        aug.sample_params(5, 16, 16, 1, seeds=seeds)


def _jpeg(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
def test_the_direct_jpeg_decode_matches_decode_view_and_falls_back_on_anything_else(channels):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (24, 40, channels), dtype=np.uint8)
    for data in (_jpeg(array), _jpeg(array, progressive=True), _jpeg(array, subsampling=0)):
        assert shards_module._jpeg_shape(data) == (24, 40, channels)
        fast = shards_module._decode(data, "view0.jpg", (24, 40, channels), channels)
        assert np.array_equal(fast, decode_view(data, "view0.jpg", (24, 40, channels), channels))
    data = _jpeg(array)
    with pytest.raises(ValueError, match="manifest says 20x24"):  # another size: decode_view's error
        shards_module._decode(data, "view0.jpg", (24, 20, channels), channels)
    with pytest.raises(ValueError, match="view0.jpg"):  # truncated
        shards_module._decode(data[: len(data) // 2], "view0.jpg", (24, 40, channels), channels)
    with pytest.raises(ValueError, match="view0.jpg"):  # damaged header
        shards_module._decode(b"\xff\xd8" + bytes(200), "view0.jpg", (24, 40, channels), channels)


def test_a_corrupted_view_is_still_named_in_the_batched_path(dataset, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    data = bytearray((dataset / "train-000001.tar").read_bytes())
    scan = data.index(b"\xff\xda", data.index(b"\xff\xd8\xff"))  # first JPEG of sample 16: its scan
    data[scan + 2:scan + 4] = bytes(2)  # frame header intact (the direct decode runs), the scan header broken
    (bad / "train-000001.tar").write_bytes(bytes(data))
    with pytest.raises(ShardError, match="train-000001.tar: sample 000000016"):
        list(loader(bad, batch_size=BATCH, shuffle=0, pairs=[0, 1]))


def test_state_dict_counts_batches_and_shard_views_still_restart_their_epoch(dataset):
    dl = loader(dataset, batch_size=BATCH, seed=4)
    dl.set_epoch(2)
    for n, _ in enumerate(dl):
        if n == 2:
            break
    assert dl.state_dict() == {"epoch": 2, "batch": 3, "seed": 4}
    with pytest.raises(ConfigError, match="set_epoch\\(epoch\\) and restart that epoch"):
        dl.load_state_dict(dl.state_dict())
    ds = ShardViews(dataset, batch_size=BATCH, seed=4)
    dl = loader(ds, batch_size=BATCH)
    ds.set_epoch(3)  # on the ShardViews itself: the loader reads it
    assert dl.state_dict()["epoch"] == 3 and dl.views is ds
    with pytest.raises(ConfigError, match="device= to ContinuousViews"):
        loader(ContinuousViews(sv.load_model("toy", resolution=8), epoch_samples=8, batch_size=4), device="cpu")


def test_custom_callable_batches_still_reach_the_requested_device(dataset):
    """The per-sample path collates in the workers; the loader then moves every tensor to ``device``."""
    batches = list(loader(dataset, batch_size=BATCH, t_x=lambda x: x.flip(-1), shuffle=0, device="meta"))
    (views, index) = batches[0]
    assert all(v.device.type == "meta" for v in views) and index.device.type == "meta"
