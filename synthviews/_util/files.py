"""File helpers: atomic writes (a reader never sees a half-written file), file hashes, and
file locks that the OS drops when their holder dies."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import socket
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

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


__all__ = ["write_atomic", "sha256_file", "FileLock", "lock_is_held", "describe_holder"]
