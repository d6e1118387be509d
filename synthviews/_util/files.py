"""File helpers: atomic writes (a reader never sees a half-written file), file hashes, and
the folder locks that keep a second writer out of a dataset folder."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import socket
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError

# `.NAME.PID.tmp` (shards) and `.NAME.PID.HEX.tmp` (write_atomic): hidden, never a final name.
TEMPORARY_RE = re.compile(r"^\.(?P<name>.+?)\.\d+(\.[0-9a-f]{8})?\.tmp$")
LOCK_RE = re.compile(r"^\.synthviews(\.rank(?P<rank>\d+)-of-(?P<world>\d+))?\.lock$")
LOCK_RETRY_S = 0.5  # a lock whose holder is just releasing it is retried this long before refusing


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it and rename it over ``path``.

    A file that already holds exactly ``data`` is left alone, so a rerun changes nothing.
    An OSError (e.g. a full disk) names ``path``."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # unlike mkstemp, keeps the umask's permissions
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename in (None, str(tmp)):
            e.filename = str(path)
        raise


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_holder(path: Path) -> str:
    """'pid P on HOST since T' from a lock file (what the holder wrote after locking)."""
    try:
        info = json.loads(Path(path).read_text())
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def lock_is_held(path: Path) -> bool:
    """Whether some process holds a lock on ``path`` (probed without creating it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:  # a file system without locks
        return False
    finally:
        os.close(fd)


class FileLock:
    """An ``fcntl.flock`` on ``path``: the OS drops it when the process dies, even by ``kill -9``.

    An exclusive holder writes its pid, host and start time into the file; :meth:`acquire`
    returns False instead of waiting when another process holds it. :meth:`release`
    removes the file when no one else holds it, so a finished run leaves no lock file.
    """

    def __init__(self, path: str | Path, exclusive: bool = True):
        self.path, self.exclusive, self.fd = Path(path), exclusive, None

    def acquire(self) -> bool:
        deadline = time.monotonic() + LOCK_RETRY_S
        while True:
            self.fd = fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # release() works from here on
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    warnings.warn(f"{self.path}: this file system does not support locks ({e.strerror}); "
                                  f"nothing stops a second writer here", stacklevel=2)
                    break
                self.fd = None
                os.close(fd)
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
                continue
            if self._names(fd):
                break
            self.fd = None
            os.close(fd)  # the previous holder removed the file meanwhile: lock the new one
        if self.exclusive:
            info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
            os.pwrite(fd, info, 0)
            os.ftruncate(fd, len(info))
        return True

    def _names(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # shared holders remove it only when last
            except BlockingIOError:
                return
            except OSError:
                pass  # a file system without locks
            if self._names(fd):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)


def folder_lock_path(folder: Path) -> Path:
    return Path(folder) / ".synthviews.lock"


def rank_lock_path(folder: Path, rank: int, world_size: int) -> Path:
    return Path(folder) / f".synthviews.rank{rank:03d}-of-{world_size:03d}.lock"


def held_rank_locks(folder: Path, own: Path | None = None) -> list[tuple[Path, int]]:
    """(lock file, world size) of every rank lock in ``folder`` that a live process holds.

    ``own`` (this process's lock) is not probed: where flock is emulated with POSIX locks
    (NFS), closing the probe would release it."""
    found = []
    for path in sorted(Path(folder).glob(".synthviews.rank*-of-*.lock")):
        m = LOCK_RE.match(path.name)
        if m and path != own and lock_is_held(path):
            found.append((path, int(m.group("world"))))
    return found


class DatasetLock:
    """The writer locks of a dataset folder: one writer per folder, or one per rank.

    A single process (and ``merge``) holds ``.synthviews.lock`` exclusively. Each rank of
    a multi-rank run holds it shared, plus ``.synthviews.rankRRR-of-NNN.lock`` exclusively:
    ranks of one run coexist; a second job of the same rank, ranks of another world size
    (they would own the same shards) or a single process are refused. Refusals raise
    ConfigError naming the holder. Use as a context manager.
    """

    def __init__(self, folder: str | Path, rank: int = 0, world_size: int = 1):
        self.folder, self.rank, self.world_size = Path(folder), rank, world_size
        self.locks: list[FileLock] = []

    def __enter__(self):
        try:
            self._acquire()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc):
        self.release()

    def _acquire(self) -> None:
        folder_path = folder_lock_path(self.folder)
        if self.world_size == 1:
            if not self._take(FileLock(folder_path)):
                held = held_rank_locks(self.folder)
                who = describe_holder(held[0][0]) if held else describe_holder(folder_path)
                what = (f"rank job(s) of a multi-rank run ({len(held)} running)" if held
                        else "another synthviews process")
                raise self._busy(f"is being written by {what}: {who}")
            return
        if not self._take(FileLock(folder_path, exclusive=False)):
            raise self._busy(f"is being written by a single synthviews process: {describe_holder(folder_path)}")
        path = rank_lock_path(self.folder, self.rank, self.world_size)
        if not self._take(FileLock(path)):
            raise self._busy(f"already has a job for rank {self.rank} of {self.world_size}: {describe_holder(path)}")
        for other, world in held_rank_locks(self.folder, own=path):
            if world != self.world_size:
                raise self._busy(f"is being written by jobs with world size {world}, not {self.world_size} "
                                 f"({describe_holder(other)}); every job of a run needs the same --world-size")

    def _take(self, lock: FileLock) -> bool:
        self.locks.append(lock)  # released by __enter__ on any error, even when half taken
        try:
            ok = lock.acquire()
        except OSError as e:
            if e.filename is None:
                e.filename = str(lock.path)
            raise
        if not ok:
            self.locks.remove(lock)
        return ok

    def _busy(self, why: str) -> ConfigError:
        return ConfigError(f"{self.folder} {why}; wait for it to finish or stop it (one writer per folder)")

    def release(self) -> None:
        while self.locks:
            self.locks.pop().release()


__all__ = ["write_atomic", "sha256_file", "DatasetLock", "FileLock", "TEMPORARY_RE", "LOCK_RE"]
