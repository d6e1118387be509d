"""ContinuousViews' producer thread: same stream as without it, exact resume, clean stops, streams on CPU."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

import synthviews as sv
from synthviews._util.device import _tensors
from synthviews.data import ContinuousViews, loader
from synthviews.data import continuous as cont


def _ds(**kw):
    kw.setdefault("t_x", "no_color")
    kw.setdefault("t_x_size", 12)
    return ContinuousViews(sv.load_model("toy", resolution=16), epoch_samples=96, batch_size=8, seed=3, **kw)


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "synthviews-continuous" and t.is_alive()]


def _same(a, b) -> bool:
    (views_a, index_a), (views_b, index_b) = a, b
    return torch.equal(index_a, index_b) and len(views_a) == len(views_b) and all(
        torch.equal(x, y) for x, y in zip(views_a, views_b))


@pytest.fixture(autouse=True)
def no_producer_left():
    yield
    deadline = time.monotonic() + 10
    while _producers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _producers(), "a producer thread outlived its test"


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_prefetched_stream_is_the_synchronous_one_byte_for_byte(two_threads):
    sync = list(_ds(crops=3, prefetch=0))
    for prefetch, threads in ((1, 1), (2, 2), (2, None)):
        ahead = list(_ds(crops=3, prefetch=prefetch, decode_threads=threads))
        assert len(ahead) == len(sync) == 12 and all(_same(a, b) for a, b in zip(ahead, sync))


def test_resume_is_exact_while_the_producer_is_ahead():
    full = list(_ds())
    ds = _ds(prefetch=2)
    it = iter(ds)
    for _ in range(5):
        next(it)
    time.sleep(0.2)  # let the producer run ahead: the position counts what was yielded, not what was made
    state = ds.state_dict()
    assert state["batch"] == 5
    it.close()
    assert not _producers()
    resumed = _ds(prefetch=2)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 7 and all(_same(a, b) for a, b in zip(rest, full[5:]))
    dl = loader(_ds(prefetch=2))  # the loader's count too
    for n, _ in enumerate(dl):
        if n == 3:
            break
    assert dl.state_dict()["batch"] == 4


def test_ranks_and_workers_stay_disjoint_with_the_producer(monkeypatch):
    seen, lengths = {}, set()
    for epoch in range(2):
        for rank in range(2):
            for worker in range(2):
                for name, value in (("RANK", rank), ("WORLD_SIZE", 2), ("WORKER", worker), ("NUM_WORKERS", 2),
                                    ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", 29500)):
                    monkeypatch.setenv(name, str(value))
                ds = _ds(t_x=None, prefetch=2)
                ds.set_epoch(epoch)
                batches = list(ds)
                lengths.add(len(batches))
                for _, index in batches:
                    for i in index.tolist():
                        assert i not in seen, f"sample {i} twice"
                        seen[i] = (epoch, rank, worker)
    assert len(seen) == 2 * 96 and lengths == {3}


def test_the_producer_keeps_one_to_two_batches_ready_and_no_more():
    ds = _ds(t_x=None, prefetch=2)
    made, real = [], ds.batch

    def counted(indices):
        made.append(int(indices[0]) // 8)
        return real(indices)

    ds.batch = counted
    it = iter(ds)
    next(it)
    deadline = time.monotonic() + 10
    while len(made) < 4 and time.monotonic() < deadline:  # batch 0 yielded, 1 and 2 queued, 3 made, waiting
        time.sleep(0.01)
    time.sleep(0.3)
    assert made == [0, 1, 2, 3]  # ready while the consumer "trains", bounded by prefetch (+ the one waiting)
    assert [int(next(it)[1][0]) // 8 for _ in range(3)] == [1, 2, 3]
    it.close()


def test_stopping_early_stops_the_producer():
    ds = _ds(prefetch=2)
    for n, _ in enumerate(ds):
        if n == 1:
            break
    assert not _producers()  # the for loop dropped the iterator: closed at once, thread joined
    first, again = next(iter(ds)), next(iter(ds))  # two throwaway iterators, one after the other
    assert _same(first, again) and not _producers()
    it = iter(ds)
    next(it)
    del it  # dropped without close()
    assert not _producers()


def test_an_error_in_the_producer_reaches_the_consumer_with_its_message():
    ds = _ds(prefetch=2)
    real = ds.sampler.sample

    def failing(indices, **kw):
        if int(indices[0]) >= 16:
            raise ValueError(f"decoder blew up at sample {int(indices[0])}")
        return real(indices, **kw)

    ds.sampler.sample = failing
    got = []
    with pytest.raises(ValueError, match="decoder blew up at sample 16") as info:
        for item in ds:
            got.append(item)
    assert len(got) == 2 and any("producer thread, making batch 2" in n for n in info.value.__notes__)
    assert not _producers()
    with pytest.raises(sv.ConfigError, match="prefetch must be an integer >= 0"):
        _ds(prefetch=-1)
    with pytest.raises(sv.ConfigError, match="decode_threads must be an integer >= 1"):
        _ds(decode_threads=0)


def test_a_consumer_error_mid_epoch_stops_the_producer():
    ds = _ds(prefetch=2)
    with pytest.raises(RuntimeError, match="training step failed"):
        for n, _ in enumerate(ds):
            if n == 2:
                raise RuntimeError("training step failed")
    assert not _producers()


def test_the_producer_decodes_with_its_own_thread_count_and_leaves_the_consumers(two_threads):
    ds = _ds(prefetch=2, decode_threads=1, share_cores=False)
    counts, real = [], ds.batch

    def counted(indices):
        counts.append((threading.current_thread().name, torch.get_num_threads()))
        return real(indices)

    ds.batch = counted
    for _ in ds:
        assert torch.get_num_threads() == 2  # the training thread keeps its count while the producer runs
    assert set(counts) == {("synthviews-continuous", 1)}
    assert ds.sampler._pool[0][1] == 1  # one decode block at a time
    assert torch.get_num_threads() == 2


def test_the_training_thread_shares_the_cores_while_it_iterates(monkeypatch, two_threads):
    monkeypatch.setattr(cont.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _ds(prefetch=2)._cpu_split() == (1, 1)  # 2 cores: one each
    assert _ds(prefetch=2, share_cores=False)._cpu_split() == (1, None)
    assert _ds(prefetch=2, decode_threads=2)._cpu_split() == (2, 1)
    monkeypatch.setattr(cont.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert _ds(prefetch=2)._cpu_split() == (4, None)  # 2 training threads fit beside 4 decode threads
    torch.set_num_threads(8)
    assert _ds(prefetch=2)._cpu_split() == (4, 4)
    torch.set_num_threads(2)
    monkeypatch.setattr(cont.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    ds, inside = _ds(prefetch=2), []
    for n, _ in enumerate(ds):
        inside.append(torch.get_num_threads())
        if n == 3:
            break
    assert inside == [1] * 4 and torch.get_num_threads() == 2  # given back when the loop stops
    assert len(list(ds)) == 12 and torch.get_num_threads() == 2
    list(_ds(prefetch=0))
    assert torch.get_num_threads() == 2


class FakeStreams:
    """Stand-in for the CUDA calls of StreamHandoff: logs them, with a per-thread current stream."""

    def __init__(self):
        self.log, self.local, self.count = [], threading.local(), 0
        self.lock = threading.Lock()

    def new_stream(self):
        with self.lock:
            self.count += 1
            return f"side{self.count}"

    def use(self, stream):
        fake = self

        class Use:
            def __enter__(self):
                fake.local.stream = stream

            def __exit__(self, *exc):
                fake.local.stream = None
        return Use()

    def current_stream(self):
        return getattr(self.local, "stream", None) or "default"

    def new_event(self):
        fake = self

        class Event:
            def record(self, stream):
                with fake.lock:
                    fake.log.append(("record", stream, threading.current_thread().name))
                    self.ticket = ("event", len(fake.log))

            def __eq__(self, other):
                return getattr(self, "ticket", None) == other

            __hash__ = object.__hash__
        return Event()

    def wait_event(self, stream, event):
        with self.lock:
            self.log.append(("wait", stream, event, threading.current_thread().name))

    def record_stream(self, tensor, stream):
        with self.lock:
            self.log.append(("keep", stream, tensor.data_ptr()))


def test_stream_handoff_logic_on_cpu(monkeypatch):
    fake = FakeStreams()
    real_handoff = cont.StreamHandoff
    monkeypatch.setattr(cont, "StreamHandoff", lambda device: real_handoff(device, backend=fake))
    ds = _ds(prefetch=2, output="dict")
    streams, real = [], ds.batch

    def on_stream(indices):
        streams.append(fake.current_stream())
        return real(indices)

    ds.batch = on_stream
    for n, item in enumerate(ds):
        with fake.lock:
            log = list(fake.log)
        event = ("event", [i for i, e in enumerate(log) if e[0] == "record"][n] + 1)
        waits = [e for e in log if e[0] == "wait" and e[2] == event]
        assert waits == [("wait", "default", event, threading.current_thread().name)]  # before the item is used
        kept = {e[2] for e in log if e[0] == "keep"}
        assert {v.data_ptr() for v in item["views"]} | {item["index"].data_ptr()} <= kept
    assert set(streams) == {"side1"}  # every batch made on the producer's own stream
    assert {e[1:] for e in fake.log if e[0] == "record"} == {("side1", "synthviews-continuous")}
    cpu = cont.StreamHandoff(torch.device("cpu"))  # no backend on CPU: every call is free
    with cpu.producing():
        x = torch.ones(2)
        assert cpu.receive(x, cpu.ready(x)) is x
    nested = {"a": [torch.ones(1), (torch.zeros(1), "key")], "b": 3}
    assert len(list(_tensors(nested))) == 2


def test_a_pickled_dataset_iterates_with_its_own_lock():
    ds = pickle.loads(pickle.dumps(_ds(prefetch=2)))
    assert len(list(ds)) == 12 and not _producers()


def _run_script(body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import time, threading, numpy as np
        import synthviews as sv
        from synthviews.data import ContinuousViews
        ds = ContinuousViews(sv.load_model("toy", resolution=16), epoch_samples=96, batch_size=8, t_x=None,
                             prefetch=2)
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["queue full", "mid batch"])
def test_no_hung_threads_at_interpreter_exit(case):
    body = {
        "queue full": """
            it = iter(ds)
            next(it)
            time.sleep(0.5)  # the producer fills its queue and waits
            print("exiting", flush=True)
        """,
        "mid batch": """
            real = ds.batch
            def slow(indices):
                time.sleep(0.3)
                return real(indices)
            ds.batch = slow
            it = iter(ds)
            next(it)
            print("exiting", flush=True)
        """,
    }[case]
    t = time.monotonic()
    done = _run_script(body)
    assert done.returncode == 0 and "exiting" in done.stdout, done.stderr
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr, done.stderr
    assert time.monotonic() - t < 60


def test_a_custom_t_x_or_real_data_keeps_the_producer_off_by_default():
    """They may draw from torch's global RNG, like the training step: a producer thread would reorder the draws."""
    model = sv.load_model("toy", resolution=16)
    assert ContinuousViews(model, views=1, epoch_samples=8, batch_size=4, t_x=lambda x: x)._prefetch_depth() == 0
    assert ContinuousViews(model, views=1, epoch_samples=8, batch_size=4, t_x_size=16)._prefetch_depth() == 2
    assert ContinuousViews(model, views=1, epoch_samples=8, batch_size=4, t_x=lambda x: x,
                           prefetch=1)._prefetch_depth() == 1  # asked for: the caller vouches for its T_x
