"""Loader workers write their uint8 batches into reused shared-memory slots (synthviews.data.pixel_ring)
and send only the slot's number; the main process gives a slot back once it has converted (or pinned)
the batch. Checked: the slots are used, a slot is never refilled while the main process still reads it,
a worker without a free slot falls back to fresh shared memory, and the batches are the in-process ones."""

import pickle
import time
import types

import numpy as np
import pytest
import torch
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from synthviews.data import ShardViews, ViewsLoader, loader
from synthviews.data import pixel_ring as ring_module
from synthviews.data import shards as shards_module
from synthviews.data.pixel_ring import PixelRing
from synthviews.store.writer import generate

BATCH = 8

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:This DataLoader will create")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """96 samples (anchor + 1 positive, 16 px RGB) in 4 shards."""
    out = tmp_path_factory.mktemp("ring") / "ds"
    generate(out, "toy", samples=96, views=1, shard_size=24, seed=5, model_kwargs={"resolution": 16})
    return out


def _same(got, reference):
    """The same batches, in any order (workers deal the samples among themselves)."""
    by_first = {int(index[0]): (views, index) for views, index in reference}
    assert len(got) == len(reference) and {int(index[0]) for _, index in got} == by_first.keys()
    for views, index in got:
        ref_views, ref_index = by_first[int(index[0])]
        assert torch.equal(index, ref_index) and len(views) == len(ref_views) == 2
        for a, b in zip(views, ref_views):
            assert torch.equal(a, b)


@pytest.fixture
def finished(monkeypatch):
    """Every RawBatch the main process finishes, as (pixels in a ring?, its pixels' first bytes)."""
    seen, real = [], shards_module.ShardViews.finish

    def finish(self, batch, device=None):
        seen.append(batch.ring is not None)
        return real(self, batch, device)

    monkeypatch.setattr(shards_module.ShardViews, "finish", finish)
    return seen


def test_a_worker_takes_its_free_slots_and_gets_back_what_is_given_back():
    ring = PixelRing(workers=2, slots=2, slot_bytes=100)
    try:
        a, b = ring.take(1, 100), ring.take(1, 60)
        assert {a[0], b[0]} == {0, 1} and a[1].numel() == 100 and b[1].numel() == 60
        assert ring.take(1, 10) is None  # none free: the caller uses fresh shared memory
        assert ring.take(1, 101) is None and ring.take(2, 1) is None  # too large; no such worker
        a[1].fill_(7)
        assert torch.equal(ring.view(1, a[0], (10, 10)), torch.full((10, 10), 7, dtype=torch.uint8))
        ring.give_back(1, b[0])
        again = ring.take(1, 10)
        assert again[0] == b[0] and ring.take(1, 10) is None
        ring.untake(again[0])  # its batch failed before it was sent
        assert ring.take(1, 10)[0] == again[0]
    finally:
        ring.close()
    ring.give_back(1, 0)  # after the end of the iteration: nothing to do, no error


def test_a_batch_in_a_slot_travels_as_its_number_and_pinning_gives_the_slot_back(monkeypatch):
    ring = PixelRing(workers=1, slots=1, slot_bytes=2 * 3 * 4 * 4)
    try:
        slot, flat = ring.take(0, flat_bytes := 2 * 3 * 4 * 4)
        pixels = flat.view(2, 1, 3, 4, 4)
        pixels.copy_(torch.arange(flat_bytes, dtype=torch.uint8).view(2, 1, 3, 4, 4))
        batch = shards_module.RawBatch(pixels, torch.tensor([4, 9]), ["000004", "000009"], None, {}, (ring, 0, slot))
        sent = pickle.dumps(batch)
        assert len(sent) < flat_bytes + 300 and bytes(range(flat_bytes)) not in sent  # no pixel in the message
        arrived = pickle.loads(sent)
        assert torch.equal(arrived.pixels, pixels) and torch.equal(arrived.index, torch.tensor([4, 9]))
        assert arrived.pixels.data_ptr() == pixels.data_ptr() and arrived.ring[1:] == (0, slot)
        monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self.clone())  # no CUDA here
        pinned = arrived.pin_memory()
        assert pinned.ring is None and torch.equal(pinned.pixels, pixels)
        assert ring.take(0, 1)[0] == slot  # pinning copied the pixels out and gave the slot back
    finally:
        ring.close()
    with pytest.raises(RuntimeError, match="no longer has open"):
        pickle.loads(sent)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_workers_send_their_batches_in_slots_and_the_batches_are_the_in_process_ones(dataset, finished, workers):
    kw = dict(shuffle=0, pairs=[0, 1])
    reference = list(loader(dataset, batch_size=BATCH, **kw))
    finished.clear()
    got = list(loader(dataset, batch_size=BATCH, num_workers=workers, **kw))
    _same(got, reference)
    assert len(finished) == len(got) and all(finished)  # every batch came in a slot: no fresh shared memory
    assert not ring_module._OPEN  # the ring is closed with the iteration


def test_a_slot_is_not_refilled_while_the_main_process_reads_it(dataset, monkeypatch):
    """A slow main process: with the slot given back before the conversion, a worker would overwrite
    pixels still being read and the batches would differ from the in-process ones."""
    kw = dict(shuffle=0, pairs=[0, 1])
    reference = list(loader(dataset, batch_size=BATCH, **kw))
    real = shards_module.ShardViews.finish

    def slow_finish(self, batch, device=None):
        time.sleep(0.05)  # the worker, far ahead, waits for a slot (or takes fresh memory) meanwhile
        return real(self, batch, device)

    monkeypatch.setattr(shards_module.ShardViews, "finish", slow_finish)
    _same(list(loader(dataset, batch_size=BATCH, num_workers=1, **kw)), reference)


def test_a_worker_without_a_free_slot_uses_fresh_shared_memory(dataset, finished, monkeypatch):
    kw = dict(shuffle=0, pairs=[0, 1])
    reference = list(loader(dataset, batch_size=BATCH, **kw))
    real = shards_module.BatchedViews.open_ring
    monkeypatch.setattr(shards_module.BatchedViews, "open_ring", lambda self, workers, slots: real(self, workers, 1))
    recording = shards_module.ShardViews.finish

    def slow_finish(self, batch, device=None):
        time.sleep(0.05)  # the worker makes the next batch meanwhile: its one slot is still out
        return recording(self, batch, device)

    monkeypatch.setattr(shards_module.ShardViews, "finish", slow_finish)
    finished.clear()
    _same(list(loader(dataset, batch_size=BATCH, num_workers=1, **kw)), reference)
    assert any(finished) and not all(finished)  # one slot for 12 batches, prefetched two at a time


def test_no_ring_where_the_workers_send_finished_batches_or_the_size_is_unknown(dataset):
    views = ShardViews(dataset, batch_size=BATCH, num_workers=1, t_x="simclr", t_x_size=12)
    assert views.batched().open_ring(1, 3) is None  # a CPU T_x: the workers send float views
    ring = views.batched(torch.device("cpu")).open_ring(1, 3)  # the device path: uint8 again
    assert ring is not None and ring.slot_bytes == BATCH * 2 * 3 * 16 * 16
    ring.close()
    urls = sorted(str(p) for p in dataset.glob("train-*.tar"))
    assert ShardViews(urls, epoch_samples=64, batch_size=BATCH, num_workers=1).batched().open_ring(1, 3) is None


def test_breaking_out_of_an_epoch_closes_the_ring(dataset):
    dl = loader(dataset, batch_size=BATCH, num_workers=2, shuffle=0, pairs=[0, 1])
    it = iter(dl)
    next(it)
    assert len(ring_module._OPEN) == 1
    it.close()
    assert not ring_module._OPEN and dl.dataset.ring is None


def test_spawned_workers_get_the_ring_with_the_dataset(dataset, finished):
    """Spawn (macOS) and forkserver (Python 3.14's Linux default) pickle the dataset to the workers."""
    kw = dict(shuffle=0, pairs=[0, 1])
    reference = list(loader(dataset, batch_size=BATCH, **kw))
    finished.clear()
    views = ShardViews(dataset, batch_size=BATCH, num_workers=1, **kw)
    batched = views.batched()
    dl = ViewsLoader(batched, batch_size=BATCH, num_workers=1, drop_last=True, collate_fn=batched.collate,
                     multiprocessing_context="spawn")
    _same(list(dl), reference)
    assert finished and all(finished)


def test_pinning_copies_the_pixels_out_before_it_gives_the_slot_back(monkeypatch):
    """The DataLoader's pinning thread: a slot given back before the copy could be refilled under it."""
    ring = PixelRing(workers=1, slots=1, slot_bytes=48)
    try:
        slot, flat = ring.take(0, 48)
        batch = shards_module.RawBatch(flat.view(1, 1, 3, 4, 4), torch.tensor([0]), ["000000"], None, {}, (ring, 0, slot))
        given_back_during_copy = []

        def pin_memory(tensor):
            given_back_during_copy.append(ring._returned[0].poll())
            return tensor.clone()

        monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)  # no CUDA here
        batch.pin_memory()
        assert given_back_during_copy == [False] and ring._returned[0].poll()  # after the copy, not before
    finally:
        ring.close()


def test_a_batch_that_fails_in_collate_puts_its_slot_back(dataset, monkeypatch):
    views = ShardViews(dataset, batch_size=2)
    ring = views.batched().open_ring(1, 1)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(id=0))  # as in worker 0
    floats = [shards_module._Record([np.zeros((16, 16, 3))], i, f"{i:06d}", [0], {}) for i in range(2)]
    try:
        with pytest.raises(TypeError):  # float pixels do not copy into uint8
            views.collate(floats, ring=ring)
        assert ring.take(0, 1) is not None  # the one slot is free again
    finally:
        ring.close()


def test_a_worker_error_stops_the_workers_before_their_ring_closes(dataset, monkeypatch):
    """The error's traceback holds the DataLoader's iterator: the workers must be stopped, not left to
    the garbage collector (the pinning thread would read batches from a closed ring)."""
    events = []
    real_collate, real_stop = shards_module.ShardViews.collate, _MultiProcessingDataLoaderIter._shutdown_workers
    real_close = shards_module.BatchedViews.close_ring

    def collate(self, records, device=None, ring=None):
        if records[0].index >= 4 * BATCH:
            raise ValueError("a broken batch")
        return real_collate(self, records, device, ring)

    def stop(self):
        events.append("workers stopped")
        real_stop(self)

    def close_ring(self, ring):
        events.append("ring closed")
        real_close(self, ring)

    monkeypatch.setattr(shards_module.ShardViews, "collate", collate)  # the forked worker has it too
    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", stop)
    monkeypatch.setattr(shards_module.BatchedViews, "close_ring", close_ring)
    with pytest.raises(ValueError, match="a broken batch"):
        list(loader(dataset, batch_size=BATCH, num_workers=1, shuffle=0, pairs=[0, 1]))
    assert events[:2] == ["workers stopped", "ring closed"] and not ring_module._OPEN


def test_persistent_workers_get_no_ring_and_read_every_epoch(dataset, finished):
    """Workers that outlive an iteration would hold the ring it closed."""
    kw = dict(shuffle=0, pairs=[0, 1])
    reference = list(loader(dataset, batch_size=BATCH, **kw))
    batched = ShardViews(dataset, batch_size=BATCH, num_workers=1, **kw).batched()
    dl = ViewsLoader(batched, batch_size=BATCH, num_workers=1, drop_last=True, collate_fn=batched.collate,
                     persistent_workers=True)
    finished.clear()
    for _ in range(2):
        _same(list(dl), reference)
    assert len(finished) == 2 * len(reference) and not any(finished)


def _no_space(*args, **kwargs):
    raise RuntimeError("unable to write to file </torch_1_2_3>: No space left on device (28)")


def _no_descriptors(*args, **kwargs):
    raise OSError(24, "Too many open files")


@pytest.mark.parametrize("patch, message", [
    (("shared_empty", _no_space), "No space left"),
    (("multiprocessing", types.SimpleNamespace(Pipe=_no_descriptors)), "Too many open files"),
], ids=["no space in /dev/shm", "no descriptors"])
def test_a_ring_that_cannot_be_made_leaves_each_batch_in_fresh_shared_memory(dataset, finished, monkeypatch,
                                                                             patch, message):
    """A container's small /dev/shm: the ring is a speed-up, a failure to make it is not an error (one
    warning, not one an epoch)."""
    kw = dict(shuffle=0, pairs=[0, 1])
    reference = list(loader(dataset, batch_size=BATCH, **kw))
    monkeypatch.setattr(ring_module, *patch)
    dl = loader(dataset, batch_size=BATCH, num_workers=1, **kw)
    finished.clear()
    with pytest.warns(UserWarning, match=f"fresh shared memory.*{message}") as caught:
        for _ in range(2):
            _same(list(dl), reference)
    assert len([w for w in caught if "fresh shared memory" in str(w.message)]) == 1
    assert len(finished) == 2 * len(reference) and not any(finished)


def test_a_prefetch_beyond_the_ring_s_slots_still_loads(dataset, finished):
    kw = dict(shuffle=0, pairs=[0, 1])
    reference = list(loader(dataset, batch_size=BATCH, **kw))
    batched = ShardViews(dataset, batch_size=BATCH, num_workers=1, **kw).batched()
    dl = ViewsLoader(batched, batch_size=BATCH, num_workers=1, drop_last=True, collate_fn=batched.collate,
                     prefetch_factor=300)
    finished.clear()
    _same(list(dl), reference)
    assert all(finished)


def test_the_ring_closes_even_when_stopping_the_workers_fails(dataset, monkeypatch):
    calls = []

    def interrupted(self):
        real_stop(self)
        calls.append(1)
        if len(calls) == 1:  # (not again from the iterator's __del__)
            raise KeyboardInterrupt  # e.g. Ctrl-C while the pinning thread is joined

    real_stop = _MultiProcessingDataLoaderIter._shutdown_workers
    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", interrupted)
    it = iter(loader(dataset, batch_size=BATCH, num_workers=1, shuffle=0, pairs=[0, 1]))
    next(it)
    with pytest.raises(KeyboardInterrupt):
        it.close()
    assert not ring_module._OPEN
