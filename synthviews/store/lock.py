"""The writer locks of a dataset folder: one writer per folder, or one per rank of a multi-rank run.

The lock files' names are the format's (``format.LOCK_NAME``, ``format.rank_lock_name``); the
locking itself (``flock``, which the OS drops when the holder dies) is ``_util.files.FileLock``.
"""

from __future__ import annotations

from pathlib import Path

from .._util.files import FileLock, describe_holder, lock_is_held
from ..errors import ConfigError
from .format import LOCK_NAME, LOCK_RE, RANK_LOCK_GLOB, rank_lock_name


def folder_lock_path(folder: Path) -> Path:
    return Path(folder) / LOCK_NAME


def rank_lock_path(folder: Path, rank: int, world_size: int) -> Path:
    return Path(folder) / rank_lock_name(rank, world_size)


def held_rank_locks(folder: Path, own: Path | None = None) -> list[tuple[Path, int]]:
    """(lock file, world size) of every rank lock in ``folder`` that a live process holds.

    ``own`` (this process's lock) is not probed: where flock is emulated with POSIX locks
    (NFS), closing the probe would release it."""
    found = []
    for path in sorted(Path(folder).glob(RANK_LOCK_GLOB)):
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


__all__ = ["DatasetLock", "held_rank_locks"]
