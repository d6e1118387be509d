import collections
import json

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

import synthviews as sv
from synthviews.data import ContinuousViews, ShardError, ShardViews, loader
from synthviews.store.writer import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """200 samples (anchor + 3 positives, 16 px) in 8 shards of 25."""
    out = tmp_path_factory.mktemp("data") / "ds"
    generate(out, "toy", samples=200, views=3, shard_size=25, seed=1, save_latents=True, model_kwargs={"resolution": 16})
    return out


def _keys(ds):
    return [int(item[1]) for item in ds]


def _as(monkeypatch, rank, world, worker, workers):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("WORKER", str(worker))
    monkeypatch.setenv("NUM_WORKERS", str(workers))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")


def test_two_ranks_two_workers_see_disjoint_samples_covering_the_dataset(dataset, monkeypatch):
    seen = {}
    for rank in range(2):
        for worker in range(2):
            _as(monkeypatch, rank, 2, worker, 2)
            ds = ShardViews(dataset, num_workers=2, batch_size=10, seed=4)
            seen[rank, worker] = _keys(ds)
            assert len(ds) == 100  # per rank: 2 workers x 50
    counts = {slot: len(keys) for slot, keys in seen.items()}
    assert set(counts.values()) == {50}  # equal batches everywhere: no DDP hang
    everything = [k for keys in seen.values() for k in keys]
    assert sorted(everything) == list(range(200))


def test_unequal_shards_give_equal_counts_and_say_so_in_len(tmp_path, monkeypatch):
    out = tmp_path / "odd"
    generate(out, "toy", samples=130, views=1, shard_size=25, model_kwargs={"resolution": 8})  # 5 x 25 + 1 x 5
    counts, seen = [], []
    for rank in range(2):
        for worker in range(2):
            _as(monkeypatch, rank, 2, worker, 2)
            ds = ShardViews(out, num_workers=2)
            keys = _keys(ds)
            counts.append(len(keys))
            seen += keys
            assert len(ds) == 2 * 32
    assert counts == [32, 32, 32, 32]  # samples, not whole shards, are dealt out: 128 of 130 read
    assert len(set(seen)) == 128


def test_fewer_shards_than_readers_works_and_too_few_samples_is_a_clear_error(dataset, monkeypatch):
    _as(monkeypatch, 0, 4, 0, 3)
    assert len(ShardViews(dataset, num_workers=3)) == 3 * 16  # 8 shards, 12 readers: 16 samples each
    with pytest.raises(sv.ConfigError, match="200 samples for 12 readers .* batches of 32: each would get none"):
        ShardViews(dataset, num_workers=3, batch_size=32)
    assert len(ShardViews(dataset, num_workers=3, resampled=True, epoch_samples=120))
    with pytest.raises(sv.ConfigError, match="2 shard\\(s\\) for 12 readers"):  # plain URLs: whole shards
        ShardViews([str(dataset / "train-000000.tar"), str(dataset / "train-000001.tar")], num_workers=3,
                   epoch_samples=50)


def test_epoch_order_and_view_choice_are_seeded(dataset):
    a, b = ShardViews(dataset, seed=3), ShardViews(dataset, seed=3)
    first = [(i, [v.sum().item() for v in views]) for views, i in a]
    assert first == [(i, [v.sum().item() for v in views]) for views, i in b]
    b.set_epoch(1)
    second = [(i, [v.sum().item() for v in views]) for views, i in b]
    assert [i for i, _ in first] != [i for i, _ in second]
    assert sorted(i for i, _ in first) == sorted(i for i, _ in second) == list(range(200))
    # anchor+random: view 0 always first; the positive differs between epochs for some samples
    by_index = {i: v for i, v in first}
    assert sum(by_index[i][1] != v[1] for i, v in second) > 50


def test_view_choices(dataset):
    items = list(ShardViews(dataset, shuffle=0, output="dict", pairs="random", crops=4, return_meta=True))
    assert [it["index"] for it in items] == list(range(200))
    for it in items[:20]:
        sums = sorted(round(v.sum().item(), 4) for v in it["views"])
        assert len(set(sums)) == 4  # four distinct stored views
    explicit = next(iter(ShardViews(dataset, shuffle=0, pairs=[3, 0], output="dict")))
    anchor = next(iter(ShardViews(dataset, shuffle=0, pairs=[0], output="dict")))
    assert torch.equal(explicit["views"][1], anchor["views"][0])
    with pytest.raises(sv.ConfigError, match="stores 4 views"):
        ShardViews(dataset, pairs=[0, 4])
    with pytest.raises(sv.ConfigError, match="anchor\\+random' returns 2 crops"):
        ShardViews(dataset, crops=3)
    with pytest.raises(sv.ConfigError, match="crops=3 but pairs=\\[3, 0\\] lists 2"):
        ShardViews(dataset, pairs=[3, 0], crops=3)


@pytest.mark.parametrize("views", [1, 2, 3, 4])
def test_views_means_positives_per_anchor_and_the_old_meaning_is_refused(dataset, views):
    """views = K positives everywhere; the images an item yields are crops (views used to be that count here)."""
    with pytest.raises(sv.ConfigError, match=f"views means K.*K=3 here.*pass crops={views}"):
        ShardViews(dataset, views=views, pairs="random")
    with pytest.raises(sv.ConfigError, match=f"pass crops={views}"):
        loader(dataset, batch_size=8, views=views)
    assert len(next(iter(ShardViews(dataset, crops=views, pairs="random", shuffle=0)))[0]) == views
    if views >= 2:  # ContinuousViews: views=K generates K positives, i.e. 1+K images; crops must agree
        with pytest.raises(sv.ConfigError, match=f"views={views} .*makes {views + 1} images per item, but crops=2; "
                                                 f"pass crops={views + 1}, or crops={views} alone"):
            _continuous(views=views)
        assert len(_continuous(crops=views).batch(np.arange(2))[0]) == views
    item, _ = _continuous(views=views, crops=views + 1).batch(np.arange(2))
    assert len(item) == views + 1
    assert _continuous(crops=views + 1).views == views  # the attribute is K too


@pytest.mark.parametrize("output", ["tuple", "lightly", "solo", "dict", "stablerep"])
def test_output_formats_have_the_documented_shapes(dataset, output):
    ds = ShardViews(dataset, output=output, shuffle=0, **({"return_meta": True, "return_latents": True}
                                                          if output == "dict" else {}))
    batch = default_collate([item for item, _ in zip(ds, range(4))])
    if output == "tuple":
        views, index = batch
    elif output == "lightly":
        views, target, key = batch
        assert (target == -1).all() and list(key) == ["000000000", "000000001", "000000002", "000000003"]
        index = torch.tensor([int(k) for k in key])
    elif output == "solo":
        index, views, target = batch
        assert (target == -1).all()
    elif output == "dict":
        views, index = batch["views"], batch["index"]
        assert batch["json"]["index"].tolist() == [0, 1, 2, 3]
        assert batch["latents"].shape == (4, 4, 20)
    else:
        stacked, index = batch
        assert stacked.shape == (4, 6, 16, 16)
        return
    assert index.tolist() == [0, 1, 2, 3]
    assert isinstance(views, list) and len(views) == 2
    assert all(v.shape == (4, 3, 16, 16) and v.dtype == torch.float32 for v in views)
    assert 0 <= views[0].min() and views[0].max() <= 1


def test_loader_len_matches_the_batches(dataset):
    dl = loader(dataset, batch_size=16, num_workers=2, seed=0)
    batches = list(dl)
    assert len(dl) == len(batches) == 12  # 2 workers x floor(100 / 16) batches
    assert all(b[1].shape == (16,) for b in batches)
    assert len(set(torch.cat([b[1] for b in batches]).tolist())) == 192


def test_a_corrupted_shard_is_named_or_skipped_with_a_warning(dataset, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    data = bytearray((bad / "train-000002.tar").read_bytes())
    (bad / "train-000002.tar").write_bytes(bytes(data[: len(data) // 3]))  # truncated
    with pytest.raises(ShardError, match="train-000002.tar"):
        list(ShardViews(bad, shuffle=0))
    with pytest.warns(UserWarning, match="train-000002.tar"):
        items = list(ShardViews(bad, shuffle=0, on_error="skip"))
    assert len(items) == 200  # the unreadable samples are replaced: every reader yields its full count

    data = bytearray((dataset / "train-000001.tar").read_bytes())
    start = data.index(b"\xff\xd8\xff")  # first JPEG in the shard
    data[start:start + 400] = bytes(400)  # corrupt its header and tables
    (bad / "train-000001.tar").write_bytes(bytes(data))
    (bad / "train-000002.tar").write_bytes((dataset / "train-000002.tar").read_bytes())
    with pytest.raises(ShardError, match="train-000001.tar: sample 000000025"):
        list(ShardViews(bad, shuffle=0))


def test_brace_patterns_need_an_epoch_length(dataset):
    pattern = str(dataset / "train-{000000..000007}.tar")
    with pytest.raises(sv.ConfigError, match="epoch_samples"):
        ShardViews(pattern)
    assert sorted(_keys(ShardViews(pattern, epoch_samples=200))) == list(range(200))


def test_hub_sources_resolve_through_huggingface_hub(dataset, monkeypatch):
    import huggingface_hub

    class FakeFS:
        def open(self, path, mode="r"):
            assert path == "datasets/me/views/synthviews.json"
            return open(dataset / "synthviews.json", mode)

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeFS)
    from synthviews.data.shards import resolve_source

    urls, counts, config = resolve_source("hf://datasets/me/views")
    assert urls[0] == "hf://datasets/me/views/train-000000.tar" and len(urls) == 8
    assert counts == [25] * 8 and config["views"] == 3


# --- ContinuousViews ---------------------------------------------------------

def _continuous(**kw):
    kw.setdefault("t_x", None)
    return ContinuousViews(sv.load_model("toy", resolution=16), epoch_samples=96, batch_size=8, seed=2, **kw)


def test_continuous_streams_never_repeat_across_ranks_workers_and_epochs(monkeypatch):
    seen = collections.Counter()
    lengths = []
    for epoch in range(2):
        for rank in range(2):
            for worker in range(2):
                _as(monkeypatch, rank, 2, worker, 2)
                ds = _continuous(num_workers=2)
                ds.set_epoch(epoch)
                batches = list(ds)
                lengths.append((len(ds), len(batches)))
                seen.update(int(i) for _, index in batches for i in index)
    assert max(seen.values()) == 1 and len(seen) == 2 * 96
    assert {n for n, _ in lengths} == {6} and sum(b for _, b in lengths) == 2 * 12


def test_continuous_batches_are_reproducible_and_resume_mid_epoch():
    ds = _continuous(crops=3)
    full = list(ds)
    assert len(full) == 12 and len(full[0][0]) == 3 and full[0][0][0].shape == (8, 3, 16, 16)
    again = _continuous(crops=3)
    it = iter(again)
    for _ in range(5):
        next(it)
    state = again.state_dict()
    assert state["batch"] == 5
    resumed = _continuous(crops=3)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 7
    for (views_a, index_a), (views_b, index_b) in zip(full[5:], rest):
        assert torch.equal(index_a, index_b) and all(torch.equal(a, b) for a, b in zip(views_a, views_b))


def test_continuous_loader_with_workers_resumes_to_the_identical_next_batch():
    dl = loader(_continuous(num_workers=2), num_workers=2)
    reference = [index for _, index in dl]
    assert len(dl) == len(reference) == 12
    dl = loader(_continuous(num_workers=2), num_workers=2)
    for n, (_, index) in enumerate(dl):
        if n == 6:
            break
    state = dl.state_dict()
    assert state["batch"] == 7
    dl = loader(_continuous(num_workers=2), num_workers=2)
    dl.load_state_dict(state)
    rest = [index for _, index in dl]
    assert len(rest) == 5 and all(torch.equal(a, b) for a, b in zip(rest, reference[7:]))


def test_continuous_views_can_be_trained_on():
    views, _ = _continuous(t_x="none", t_x_size=12).batch(np.arange(8))
    weight = torch.ones(3, requires_grad=True)
    (views[0] * weight[:, None, None]).sum().backward()  # inference-mode tensors would refuse this
    assert weight.grad is not None and not views[0].is_inference()


def test_continuous_views_match_the_view_sampler_and_output_formats():
    from synthviews.views import ViewSampler

    ds = _continuous(output="dict")
    item = ds.batch(np.arange(8))
    sample = ViewSampler(sv.load_model("toy", resolution=16), views=1, seed=2).sample(np.arange(8))
    assert torch.equal(item["views"][0], sample.images[:, 0]) and torch.equal(item["views"][1], sample.images[:, 1])
    views, target, key = _continuous(output="lightly").batch(np.arange(8))
    assert (target == -1).all() and len(views) == 2
    stacked, index = _continuous(output="stablerep").batch(np.arange(8))
    assert stacked.shape == (8, 6, 16, 16)


def test_continuous_mixes_real_images_at_the_given_ratio():
    real = [torch.full((3, 32, 32), 0.5) for _ in range(10)]
    ds = _continuous(real=real, real_ratio=0.25, output="dict")
    item = ds.batch(np.arange(400))
    is_real = torch.stack([(v == 0.5).flatten(1).all(1) for v in item["views"]]).all(0)
    assert 0.18 < is_real.float().mean() < 0.32
    with pytest.raises(sv.ConfigError, match="map-style"):
        _continuous(real=iter(real), real_ratio=0.5)


def test_t_x_presets_apply_per_view_reproducibly(dataset):
    a = [views for views, _ in ShardViews(dataset, shuffle=0, t_x="simclr", t_x_size=12)][:5]
    b = [views for views, _ in ShardViews(dataset, shuffle=0, t_x="simclr", t_x_size=12)][:5]
    assert a[0][0].shape == (3, 12, 12)
    assert all(torch.equal(x, y) for va, vb in zip(a, b) for x, y in zip(va, vb))
    c = ContinuousViews(sv.load_model("toy", resolution=16), epoch_samples=32, batch_size=8, t_x="no_color",
                        t_x_size=12)
    first, again = next(iter(c)), next(iter(c))
    assert first[0][0].shape == (8, 3, 12, 12) and torch.equal(first[0][1], again[0][1])
    assert not torch.equal(first[0][0], first[0][1])


def test_the_anchor_twice_gives_two_different_t_x_views(dataset):
    """pairs=[0, 0] is the baseline with synthetic anchors only: two T_x views of one image."""
    for views, _ in list(ShardViews(dataset, pairs=[0, 0], shuffle=0, t_x="simclr", t_x_size=12))[:5]:
        assert not torch.equal(views[0], views[1])
    raw = [views for views, _ in ShardViews(dataset, pairs=[0, 0], shuffle=0)][:2]
    assert all(torch.equal(v[0], v[1]) for v in raw)


# --- epoch coverage: samples, not whole shards, are dealt to (rank, worker) slots ------------------

@pytest.fixture(scope="module")
def ten_shards(tmp_path_factory):
    """230 samples in 10 shards of 23: whole shards per slot would leave a quarter of them unread."""
    out = tmp_path_factory.mktemp("ten") / "ds"
    generate(out, "toy", None, samples=230, views=1, shard_size=23, model_kwargs={"resolution": 8})
    return out


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_an_epoch_with_4_workers_reads_all_but_less_than_a_batch_per_worker(ten_shards, monkeypatch):
    batch, per_slot = 8, {}
    for worker in range(4):
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", "4")
        per_slot[worker] = _keys(ShardViews(ten_shards, num_workers=4, batch_size=batch, seed=5))
    monkeypatch.delenv("WORKER")
    monkeypatch.delenv("NUM_WORKERS")
    assert {len(keys) for keys in per_slot.values()} == {56}  # 7 batches each
    seen = [k for keys in per_slot.values() for k in keys]
    assert len(set(seen)) == len(seen) >= 230 - 4 * batch
    dl = loader(ten_shards, batch_size=batch, num_workers=4, seed=5)
    for epoch in range(2):
        dl.set_epoch(epoch)
        indices = torch.cat([index for _, index in dl]).tolist()
        assert len(dl) == len(indices) // batch == 28
        assert len(set(indices)) == len(indices) >= 230 - 4 * batch
    assert sorted(indices) != sorted(seen)  # which few samples wait for the next epoch changes


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_two_ranks_of_three_workers_yield_equal_batches_covering_the_epoch(ten_shards):
    batch, seen, lengths = 8, [], []
    for rank in range(2):
        dl = loader(ten_shards, batch_size=batch, num_workers=3, rank=rank, world_size=2)
        batches = [index for _, index in dl]
        lengths.append((len(dl), len(batches)))
        seen += torch.cat(batches).tolist()
    assert lengths == [(12, 12), (12, 12)]  # 3 workers x 4 batches on each rank
    assert len(set(seen)) == len(seen) >= 230 - 6 * batch


def test_a_plain_dataloader_with_workers_works(dataset):
    """DataLoader(ShardViews(folder), num_workers=2): the worker count is read at iteration time."""
    dl = torch.utils.data.DataLoader(ShardViews(dataset), batch_size=16, num_workers=2)
    indices = torch.cat([index for _, index in dl]).tolist()
    assert sorted(indices) == list(range(200))


def test_a_hub_manifest_is_checked_as_a_local_one_is(dataset, monkeypatch, tmp_path):
    import huggingface_hub

    bad = json.loads((dataset / "synthviews.json").read_text())
    bad["splits"]["train"]["shards"][0]["count"] = "many"
    (tmp_path / "synthviews.json").write_text(json.dumps(bad))

    class FakeFS:
        def open(self, path, mode="r"):
            return open(tmp_path / "synthviews.json", mode)

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeFS)
    from synthviews.data.shards import resolve_source

    with pytest.raises(sv.ConfigError, match=r"hf://datasets/me/views/synthviews.json: splits.train.*count"):
        resolve_source("hf://datasets/me/views")
