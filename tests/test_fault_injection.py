"""Kill `generate` and `merge` at every file operation, rerun, and compare with an uninterrupted run.

The library has no test hooks: a server subprocess imports synthviews once, then forks a child
per case that patches os.replace / os.unlink / os.fsync / os.pwrite / os.ftruncate and the
`open` of synthviews.store.writer and synthviews._util.files (write calls) to signal itself, or to fail with
ENOSPC, at the N-th call on a file in the output folder, and runs the CLI's main(). Forking
skips torch's import, so a case takes a fraction of a second. Every point is enumerated from the
trace of an uninterrupted run; a representative subset runs by default, all under `-m slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthviews.cli import main
from synthviews.errors import ConfigError
from synthviews.store.writer import generate

SHARDS = 5  # first 0, middle 2, last 4
GEN = ["generate", "--model", "toy", "--model-opt", "resolution=16", "--samples", str(10 * SHARDS), "--shard-size",
       "10", "--views", "1", "--seed", "5", "--batch-size", "16", "--device", "cpu", "--workers", "1", "--no-progress"]
LIB = dict(model="toy", model_kwargs={"resolution": 16}, samples=10 * SHARDS, shard_size=10, views=1, seed=5,
           batch_size=16, device="cpu", workers=1)

SERVER = r'''
import errno, json, os, signal, sys
import synthviews._util.files, synthviews.cli.app, synthviews.store.writer

# A background job of a non-interactive shell (`pytest ... &`, `nohup .ci/run &`) inherits SIGINT ignored,
# and Python then installs no KeyboardInterrupt handler: give the cases the Ctrl-C a terminal user has.
signal.signal(signal.SIGINT, signal.default_int_handler)

def run(case):
    out = os.path.realpath(case["out"])
    log = os.open(case["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    trace = []

    def hit(kind, path):
        path = os.path.realpath(path)
        if not path.startswith(out + os.sep):
            return
        trace.append([kind, os.path.basename(path)])
        n = len(trace)
        if case["action"] == "enospc":
            if kind == "write" and n >= case["at"]:
                raise OSError(errno.ENOSPC, "No space left on device")
        elif n == case["at"]:
            os.kill(os.getpid(), getattr(signal, case["action"]))

    def by_fd(kind, real):
        def hooked(fd, *a):
            hit(kind, os.readlink(f"/proc/self/fd/{fd}"))
            return real(fd, *a)
        return hooked

    def by_path(kind, real, arg):
        def hooked(*a, **k):
            hit(kind, os.fspath(a[arg]))
            return real(*a, **k)
        return hooked

    class Writes:
        def __init__(self, f, path):
            self._f, self._path = f, path
        def write(self, data):
            hit("write", self._path)
            return self._f.write(data)
        def __getattr__(self, name):
            return getattr(self._f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    def hooked_open(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        return Writes(f, os.fspath(path)) if any(c in mode for c in "wxa") else f

    os.replace = by_path("replace", os.replace, 1)
    os.unlink = by_path("unlink", os.unlink, 0)
    os.fsync = by_fd("fsync", os.fsync)
    os.pwrite = by_fd("pwrite", os.pwrite)
    os.ftruncate = by_fd("ftruncate", os.ftruncate)
    synthviews.store.writer.open = synthviews._util.files.open = hooked_open
    if case["action"] == "SIGINT-at-startup":
        real_parser = synthviews.cli.app.build_parser
        def build_parser():
            os.kill(os.getpid(), signal.SIGINT)
            return real_parser()
        synthviews.cli.app.build_parser = build_parser
    try:
        rc = synthviews.cli.main(case["argv"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if case.get("trace"):
            with open(case["trace"], "w") as f:
                json.dump(trace, f)
    return rc

for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run(case)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
'''


class Forker:
    """Runs CLI cases in forks of one long-lived interpreter that has imported synthviews."""

    def __init__(self, tmp: Path):
        self.tmp, self.n = tmp, 0
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def run(self, argv: list[str], out: Path, action: str = "none", at: int = 0, trace: bool = False):
        """(exit code, stderr+stdout lines, trace or None); the exit code is -9 for SIGKILL."""
        self.n += 1
        log, trace_path = self.tmp / f"case{self.n}.log", self.tmp / f"case{self.n}.trace"
        case = {"argv": argv, "out": str(out), "action": action, "at": at, "log": str(log),
                "trace": str(trace_path) if trace else None}
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        lines = log.read_text().strip().splitlines()
        return json.loads(line), lines, (json.loads(trace_path.read_text()) if trace else None)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def files(folder: Path) -> dict[str, bytes]:
    """Every file, hidden ones included: a stray lock or temporary is a difference."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    f = Forker(tmp_path_factory.mktemp("forker"))
    yield f
    f.close()


@pytest.fixture(scope="module")
def runs(forker, tmp_path_factory):
    """The uninterrupted runs and their traces: single-process generate, and merge after two rank jobs."""
    base = tmp_path_factory.mktemp("reference")
    ref = base / "ref"
    rc, _, gen_trace = forker.run(GEN + ["--out", str(ref)], ref, trace=True)
    assert rc == 0
    premerge = base / "premerge"
    for rank in (1, 0):
        assert forker.run(GEN + ["--out", str(premerge), "--rank", str(rank), "--world-size", "2"], premerge)[0] == 0
    merged = base / "merged"
    shutil.copytree(premerge, merged)
    rc, _, merge_trace = forker.run(["merge", str(merged)], merged, trace=True)
    assert rc == 0 and files(merged) == files(ref)
    return {"ref": ref, "premerge": premerge, "generate": gen_trace, "merge": merge_trace}


def phases(trace: list) -> dict[str, list[int]]:
    """1-based call numbers of generate's trace by phase: start-up (before the first shard), each shard
    (its tar writes, fsync, rename and the manifest update after it), and the finish (card, lock)."""
    def shard_of(name):
        for s in range(SHARDS):
            if name.startswith((f".train-{s:06d}.tar.", f"train-{s:06d}.tar")):
                return s
        return None

    phase, out = "start", {}
    for n, (kind, name) in enumerate(trace, 1):
        s = shard_of(name)
        if s is not None:
            phase = f"shard{s}"
        elif name in ("README.md", "preview.png") or name.startswith((".README.md.", ".preview.png.")):
            phase = "finish"
        out.setdefault(phase, []).append(n)
    return out


def generate_points(trace: list) -> list[int]:
    p = phases(trace)
    return sum((p.get(ph, []) for ph in ("start", "shard0", f"shard{SHARDS // 2}", f"shard{SHARDS - 1}", "finish")), [])


def subset(points: list[int], trace: list) -> list[int]:
    """One point per (phase, kind of call): every kind of operation in every phase."""
    seen, keep = set(), []
    labels = {n: ph for ph, ns in phases(trace).items() for n in ns}
    for n in points:
        key = (labels.get(n), trace[n - 1][0])
        if key not in seen:
            seen.add(key)
            keep.append(n)
    return keep


def check_interrupted(rc: int, lines: list[str], action: str, out: Path, verb: str) -> None:
    if action == "SIGKILL":
        assert rc == -signal.SIGKILL
        return
    assert rc == 143, lines
    assert lines == [f"synthviews {verb}: terminated (SIGTERM); rerun the same command to resume"], lines
    assert not list(out.glob(".*.tmp")), "SIGTERM left temporaries"


def _kill_generate(forker, runs, tmp_path, at: int, action: str, resume: bool):
    out = tmp_path / f"gen-{at}-{action}"
    rc, lines, _ = forker.run(GEN + ["--out", str(out)], out, action=action, at=at)
    check_interrupted(rc, lines, action, out, "generate")
    rc, lines, _ = forker.run(GEN + ["--out", str(out)] + (["--resume"] if resume else []), out)
    assert rc == 0, lines
    assert files(out) == files(runs["ref"])


def _kill_merge(forker, runs, tmp_path, at: int, action: str):
    out = tmp_path / f"merge-{at}-{action}"
    shutil.copytree(runs["premerge"], out)
    rc, lines, _ = forker.run(["merge", str(out)], out, action=action, at=at)
    check_interrupted(rc, lines, action, out, "merge")
    rc, lines, _ = forker.run(["merge", str(out)], out)
    assert rc == 0, lines
    assert files(out) == files(runs["ref"])


def test_the_traces_cover_every_kind_of_point(runs):
    kinds = {k for k, _ in runs["generate"]}
    assert {"write", "fsync", "replace", "unlink", "pwrite"} <= kinds
    p = phases(runs["generate"])
    assert set(p) == {"start", "finish", *(f"shard{s}" for s in range(SHARDS))}
    assert p["start"] and all(runs["generate"][n - 1][1] != "synthviews.json" for n in p["start"][:2])
    assert {k for k, _ in runs["merge"]} >= {"write", "fsync", "replace", "unlink"}


def test_kill_generate_at_representative_points_then_rerun_is_identical(forker, runs, tmp_path):
    trace = runs["generate"]
    points = subset(generate_points(trace), trace)
    for i, at in enumerate(points):
        _kill_generate(forker, runs, tmp_path, at, ("SIGKILL", "SIGTERM")[i % 2], resume=bool(i // 2 % 2))


def test_kill_merge_at_every_point_then_rerun_is_identical(forker, runs, tmp_path):
    for i, at in enumerate(range(1, len(runs["merge"]) + 1)):
        _kill_merge(forker, runs, tmp_path, at, ("SIGKILL", "SIGTERM")[i % 2])


@pytest.mark.slow
def test_kill_generate_at_every_point_with_both_signals(forker, runs, tmp_path):
    trace = runs["generate"]
    cases = [(at, action) for at in generate_points(trace) for action in ("SIGKILL", "SIGTERM")]
    for i, (at, action) in enumerate(cases):
        _kill_generate(forker, runs, tmp_path, at, action, resume=bool(i % 3 == 0))


@pytest.mark.slow
def test_kill_merge_at_every_point_with_the_other_signal(forker, runs, tmp_path):
    for i, at in enumerate(range(1, len(runs["merge"]) + 1)):
        _kill_merge(forker, runs, tmp_path, at, ("SIGTERM", "SIGKILL")[i % 2])


def test_merge_on_a_merged_folder_succeeds_and_changes_nothing(forker, runs, tmp_path):
    out = tmp_path / "merged"
    shutil.copytree(runs["ref"], out)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    rc, lines, trace = forker.run(["merge", str(out)], out, trace=True)
    assert rc == 0, lines
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    assert {k for k, _ in trace} <= {"pwrite", "ftruncate", "unlink"}  # only its lock


def test_crash_before_the_first_manifest_resumes_with_and_without_resume(forker, runs, tmp_path):
    start = phases(runs["generate"])["start"]
    for at in (start[0], start[-1]):  # the lock's first byte; the zero-shard manifest's rename
        for resume in (False, True):
            out = tmp_path / f"early-{at}-{resume}"
            assert forker.run(GEN + ["--out", str(out)], out, action="SIGKILL", at=at)[0] == -signal.SIGKILL
            assert not list(out.glob("*.tar"))
            rc, lines, _ = forker.run(GEN + ["--out", str(out)] + (["--resume"] if resume else []), out)
            assert rc == 0, lines
            assert files(out) == files(runs["ref"])


def test_a_rerun_killed_while_removing_stale_temporaries_resumes(forker, runs, tmp_path):
    out, probe = tmp_path / "twice", tmp_path / "probe"
    first = phases(runs["generate"]).get("shard0") or [6]
    for folder in (out, probe):  # killed inside the first shard: a shard temporary to remove
        assert forker.run(GEN + ["--out", str(folder)], folder, action="SIGKILL", at=first[1])[0] == -signal.SIGKILL
    rc, _, trace = forker.run(GEN + ["--out", str(probe)], probe, trace=True)
    assert rc == 0 and files(probe) == files(runs["ref"])
    unlinks = [n for n, (kind, name) in enumerate(trace, 1) if kind == "unlink" and name.endswith(".tmp")]
    assert unlinks, "the rerun removed no stale temporary"
    assert forker.run(GEN + ["--out", str(out)], out, action="SIGKILL", at=unlinks[0])[0] == -signal.SIGKILL
    assert forker.run(GEN + ["--out", str(out), "--resume"], out)[0] == 0
    assert files(out) == files(runs["ref"])


def test_a_rank_job_joins_a_folder_where_another_rank_was_killed_before_its_first_shard(forker, runs, tmp_path):
    scratch, out = tmp_path / "scratch", tmp_path / "ranks"
    rank1 = GEN + ["--world-size", "2", "--rank", "1", "--out"]
    rc, _, trace = forker.run(rank1 + [str(scratch)], scratch, trace=True)
    # rank 1 dies inside its first shard: a stale lock, a zero-shard progress file and a shard temporary
    at = next(n for n, (kind, name) in enumerate(trace, 1) if kind == "write" and name.startswith(".train-"))
    rc, _, _ = forker.run(rank1 + [str(out)], out, action="SIGKILL", at=at)
    assert rc == -signal.SIGKILL and list(out.glob(".train-*.tmp")) and list(out.glob("synthviews.train.rank*"))
    for rank in ("0", "1"):
        rc, lines, _ = forker.run(GEN + ["--out", str(out), "--world-size", "2", "--rank", rank], out)
        assert rc == 0, lines
    assert forker.run(["merge", str(out)], out)[0] == 0
    assert files(out) == files(runs["ref"])


def test_a_full_disk_names_the_path_leaves_no_temporaries_and_resumes(forker, runs, tmp_path):
    """Injected ENOSPC (the disk stays full from the N-th write on): in a shard and in the manifest."""
    p = phases(runs["generate"])
    trace = runs["generate"]
    middle = [n for n in p[f"shard{SHARDS // 2}"] if trace[n - 1][0] == "write"]
    shard_write = middle[0]
    manifest_write = next(n for n in middle if trace[n - 1][1].startswith(".synthviews.json."))
    for at, named in ((shard_write, f"train-{SHARDS // 2:06d}.tar"), (manifest_write, "synthviews.json")):
        out = tmp_path / f"full-{at}"
        rc, lines, _ = forker.run(GEN + ["--out", str(out)], out, action="enospc", at=at)
        assert rc == 2
        assert lines == [f"synthviews generate: error: No space left on device ({out / named}); "
                         f"free some space, then rerun the same command to resume"], lines
        assert not list(out.glob(".*.tmp"))
        rc, lines, _ = forker.run(GEN + ["--out", str(out)], out)
        assert rc == 0, lines
        assert files(out) == files(runs["ref"])
    out = tmp_path / "full-merge"
    shutil.copytree(runs["premerge"], out)
    rc, lines, _ = forker.run(["merge", str(out)], out, action="enospc", at=1)
    assert rc == 2 and lines == [f"synthviews merge: error: No space left on device ({out / 'synthviews.json'}); "
                                 f"free some space, then rerun the same command to resume"], lines
    assert not list(out.glob(".*.tmp"))
    assert forker.run(["merge", str(out)], out)[0] == 0
    assert files(out) == files(runs["ref"])


def _mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return result.returncode == 0


def test_a_real_full_disk_on_a_small_tmpfs(forker, runs, tmp_path):
    total = sum(len(b) for b in files(runs["ref"]).values())
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, (total // 2) // 4096 * 4096):
        pytest.skip("cannot mount a tmpfs here (not root or no permission); the injected ENOSPC test covers it")
    try:
        out = disk / "ds"
        rc, lines, _ = forker.run(GEN + ["--out", str(out)], out)
        assert rc == 2 and len(lines) == 1, lines
        assert lines[0].startswith("synthviews generate: error: No space left on device (" + str(out)), lines
        assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.lock"))
        subprocess.run(["mount", "-o", f"remount,size={4 * total}", str(disk)], check=True)
        rc, lines, _ = forker.run(GEN + ["--out", str(out)], out)
        assert rc == 0, lines
        assert files(out) == files(runs["ref"])
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_ctrl_c_is_one_line_exit_130_and_resumable(forker, runs, tmp_path):
    p = phases(runs["generate"])
    for at in (p["start"][1], p["shard1"][2]):
        out = tmp_path / f"int-{at}"
        rc, lines, _ = forker.run(GEN + ["--out", str(out)], out, action="SIGINT", at=at)
        assert rc == 130
        assert lines == ["synthviews generate: interrupted; rerun the same command to resume"], lines
        assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.lock"))
        assert forker.run(GEN + ["--out", str(out)], out)[0] == 0
        assert files(out) == files(runs["ref"])
    out = tmp_path / "int-startup"
    rc, lines, _ = forker.run(GEN + ["--out", str(out)], out, action="SIGINT-at-startup")
    assert rc == 130 and lines == ["synthviews: interrupted"], lines
    assert not out.exists()


PAUSED = r'''
import os, sys, time
from pathlib import Path
import synthviews.cli

ready, real = Path(sys.argv[1]), os.fsync

def fsync(fd):  # hold the lock inside the first shard, after the zero-shard manifest is written
    if ".train-" in os.readlink(f"/proc/self/fd/{fd}"):
        ready.write_text(str(os.getpid()))
        time.sleep(600)
    return real(fd)

os.fsync = fsync
sys.exit(synthviews.cli.main(sys.argv[2:]))
'''


def _paused_writer(tmp_path: Path, argv: list[str]) -> subprocess.Popen:
    ready = tmp_path / f"ready-{len(list(tmp_path.glob('ready-*')))}"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, str(ready), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "the paused writer did not start"
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_second_writer_is_refused_naming_the_first(runs, tmp_path, capsys):
    import socket

    out = tmp_path / "busy"
    first = _paused_writer(tmp_path, GEN + ["--out", str(out)])
    try:
        for seed in ("5", "6"):  # the same run twice, and another seed
            argv = [a if a != "5" else seed for a in GEN] + ["--out", str(out)]
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"pid {first.pid} on {socket.gethostname()} since 20" in err[0], err
            assert "one writer per folder" in err[0]
        with pytest.raises(ConfigError, match=f"pid {first.pid}"):
            generate(out, **LIB, rank=0, world_size=2)
        assert main(["merge", str(out)]) == 2
        assert f"pid {first.pid}" in capsys.readouterr().err
    finally:
        _stop(first)
    generate(out, **LIB)  # the killed writer's lock died with it
    assert files(out) == files(runs["ref"])


def test_rank_jobs_share_a_folder_but_not_a_rank_or_a_world_size(runs, tmp_path, capsys):
    out = tmp_path / "ranks"
    first = _paused_writer(tmp_path, GEN + ["--out", str(out), "--rank", "0", "--world-size", "2"])
    try:
        generate(out, **LIB, rank=1, world_size=2)  # started after rank 0: accepted, runs alongside
        with pytest.raises(ConfigError, match=f"rank 0 of 2: pid {first.pid}"):
            generate(out, **LIB, rank=0, world_size=2)
        with pytest.raises(ConfigError, match=f"world size 2, not 3 .*pid {first.pid}"):
            generate(out, **LIB, rank=1, world_size=3)
        with pytest.raises(ConfigError, match=f"multi-rank run .*pid {first.pid}"):
            generate(out, **LIB)
        assert main(["merge", str(out)]) == 2
        assert f"pid {first.pid}" in capsys.readouterr().err
    finally:
        _stop(first)
    generate(out, **LIB, rank=0, world_size=2)
    assert main(["merge", str(out)]) == 0
    assert files(out) == files(runs["ref"])


def test_the_lock_is_invisible_to_verify_push_and_hugging_face_while_held(runs, tmp_path, monkeypatch):
    from synthviews.store.hub import upload_plan
    from synthviews.store.lock import DatasetLock
    from synthviews.store.verify import verify

    out = tmp_path / "ds"
    shutil.copytree(runs["ref"], out)
    with DatasetLock(out):
        assert (out / ".synthviews.lock").exists()
        assert verify(out) == []
        assert ".synthviews.lock" not in {name for name, _ in upload_plan(out)}
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        (out / "README.md").unlink()  # no card: datasets resolves the folder's files itself
        from datasets import load_dataset

        assert load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf")).num_rows == 10 * SHARDS
    assert not (out / ".synthviews.lock").exists()


def test_a_file_system_without_locks_warns_and_still_writes(runs, tmp_path, monkeypatch):
    import errno
    import fcntl

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)
    out = tmp_path / "nolocks"
    with pytest.warns(UserWarning, match="does not support locks"):
        generate(out, **LIB)
    assert files(out) == files(runs["ref"])
