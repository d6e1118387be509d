"""Small views encode in worker processes (synthviews.store.encoding): the same bytes as the threads, errors
raised as in the threads, a dead worker named in one line, no worker outliving its run (also on Ctrl-C)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import synthviews.store.encoding as encoding
from synthviews.errors import ConfigError
from synthviews.store.encoding import EncoderProcesses, encode_chunk, use_processes
from synthviews.store.writer import generate

SERVE = "from synthviews.store.encoding import serve; serve()"


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _worker_pids(session: int | None = None) -> set[int]:
    """Live encoding workers (of one session when given)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and SERVE in (entry / "cmdline").read_bytes().decode(errors="replace"):
                if session is None or os.getsid(int(entry.name)) == session:
                    pids.add(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


def test_which_runs_use_processes():
    assert use_processes((1, 32, 32), 10_000)       # the README's main job
    assert use_processes((3, 64, 64), 1024)
    assert not use_processes((3, 128, 128), 10_000)  # large views: C-bound, megabytes through the pipes
    assert not use_processes((1, 32, 32), 1023)      # short runs: not worth starting workers


@pytest.mark.parametrize("fmt, latents", [("jpg", False), ("png", True)])
def test_processes_write_the_bytes_of_the_threads(tmp_path, monkeypatch, fmt, latents):
    calls = []
    real = EncoderProcesses.encode
    monkeypatch.setattr(EncoderProcesses, "encode", lambda self, *a: calls.append(len(a[0])) or real(self, *a))
    kwargs = dict(samples=120, views=2, shard_size=50, batch_size=32, format=fmt, save_latents=latents,
                  device="cpu", progress=False)
    monkeypatch.setattr(encoding, "PROCESS_MIN_SAMPLES", 10**9)
    generate(tmp_path / "threads", "digits", **kwargs)
    assert calls == []
    monkeypatch.setattr(encoding, "PROCESS_MIN_SAMPLES", 0)
    generate(tmp_path / "processes", "digits", **kwargs)
    assert sum(calls) == 120
    assert _shard_bytes(tmp_path / "threads") == _shard_bytes(tmp_path / "processes")
    assert not [p for p in _worker_pids() if _parent(p) == os.getpid() and _alive(p)]  # closed with the run


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _chunk(deltas=None, n=3):
    rng = np.random.default_rng(0)
    pixels = rng.random((n, 2, 1, 8, 8), dtype=np.float32)
    deltas = rng.random((n, 1, 2)) if deltas is None else deltas
    return (np.arange(n) + 40, pixels, deltas, {"seed": 0}, ["a", "b"], "jpg", 95, None)


def test_a_worker_returns_what_the_thread_computes_and_raises_its_errors():
    procs = EncoderProcesses(1)
    try:
        args = _chunk()
        there, _ = procs.encode(*args)
        here, _ = encode_chunk(*_chunk())  # fresh arrays: encode_chunk rounds its pixels in place
        assert there == here and [s["__key__"] for s in there] == ["000000040", "000000041", "000000042"]
        bad = np.full((3, 1, 2), np.nan)
        with pytest.raises(ConfigError, match="sample 40: a perturbation size is not finite"):
            procs.encode(*_chunk(bad))
        assert procs.encode(*_chunk())[0] == here  # the worker goes on after an error
    finally:
        procs.close()


def test_a_dead_worker_is_one_line_naming_it():
    procs = EncoderProcesses(1)
    worker = procs.workers[0]
    try:
        worker.proc.kill()
        worker.proc.wait()
        with pytest.raises(RuntimeError, match=rf"encoding process \(pid {worker.proc.pid}\) stopped \(exit code -9\)"):
            procs.encode(*_chunk())
    finally:
        procs.close()


def test_workers_exit_when_closed_and_when_their_parent_is_killed(tmp_path):
    procs = EncoderProcesses(2)
    workers = list(procs.workers)
    procs.close()
    assert all(w.proc.returncode == 0 for w in workers)  # each ended its loop at EOF (and was reaped)

    code = ("import sys, time; from synthviews.store.encoding import EncoderProcesses; "
            "p = EncoderProcesses(2); print(' '.join(str(w.proc.pid) for w in p.workers), flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(Path(f"/proc/{p}").exists() for p in pids)
    parent.kill()
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "a worker outlived its killed parent"


def _alive(pid: int) -> bool:
    """Running and not a zombie (an exited worker of a killed parent is reaped by init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


CHILD = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "import synthviews.store.encoding as e; e.PROCESS_MIN_SAMPLES = 0; "
         "from synthviews.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.mark.slow  # three 1,200-sample runs: ~30 s
def test_ctrl_c_with_worker_processes_is_one_line_leaves_no_worker_and_resumes(tmp_path):
    out = tmp_path / "ds"
    argv = ["generate", "--model", "digits", "--samples", "1200", "--shard-size", "100", "--out", str(out),
            "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own group: a terminal's Ctrl-C reaches all of it
    deadline = time.time() + 120
    while not list(out.glob("train-*.tar")) or not _worker_pids(proc.pid):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["synthviews generate: interrupted; rerun the same command to resume"], err
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.lock"))
    deadline = time.time() + 20
    while _worker_pids(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _worker_pids(proc.pid), "a worker outlived the interrupted run"
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ref = tmp_path / "ref"
    refargv = [a if a != str(out) else str(ref) for a in argv]
    threads = CHILD.replace("PROCESS_MIN_SAMPLES = 0", "PROCESS_MIN_SAMPLES = 10**9")  # the reference: threads
    subprocess.run([sys.executable, "-c", threads, *refargv], check=True, capture_output=True, timeout=300)
    assert {k: v for k, v in _shard_bytes(out).items() if k.endswith(".tar")} == \
        {k: v for k, v in _shard_bytes(ref).items() if k.endswith(".tar")}


def test_pixels_rounded_on_the_device_encode_as_the_floats_do():
    """The CUDA path hands uint8 (n, V, H, W, C) pixels, already rounded; the CPU path float32 (n, V, C, H, W)."""
    from synthviews._util.images import to_uint8

    args = _chunk()
    rounded = to_uint8(torch.from_numpy(args[1].copy()))  # (n, V, H, W, C) uint8
    assert encode_chunk(*args)[0] == encode_chunk(args[0], rounded, *args[2:])[0]


def test_workers_that_cannot_start_leave_the_run_to_the_threads(tmp_path, monkeypatch):
    """E.g. an embedded interpreter whose sys.executable is no Python with synthviews: a warning, same bytes."""
    monkeypatch.setattr(encoding, "PROCESS_MIN_SAMPLES", 0)
    kwargs = dict(samples=40, views=2, shard_size=20, device="cpu", progress=False)
    generate(tmp_path / "ok", "digits", **kwargs)
    monkeypatch.setattr(encoding.sys, "executable", sys.executable + "-missing")
    with pytest.warns(UserWarning, match="encoding in threads, worker processes did not start"):
        generate(tmp_path / "fallback", "digits", **kwargs)
    monkeypatch.setattr(encoding.sys, "executable", "/bin/false")  # starts, exits before it is ready
    with pytest.raises(RuntimeError, match=r"did not start \(exit code 1\)"):
        EncoderProcesses(2)
    assert _shard_bytes(tmp_path / "ok") == _shard_bytes(tmp_path / "fallback")
