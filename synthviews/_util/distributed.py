"""Which slice of the work this process does: one process, torchrun ranks, or independent jobs.

Whole shards are dealt out round-robin (shard s goes to rank s % world), so
the dataset is the same whatever the number of ranks.

RANK/WORLD_SIZE are checked before anything uses them: a rank outside the
world, WORLD_SIZE without RANK or a missing MASTER_ADDR would otherwise make a
process read another rank's data, or wait forever for a rendezvous.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    use_torch_distributed: bool = False

    def owns(self, shard: int) -> bool:
        return shard % self.world_size == self.rank


def check_ranks(rank, world_size, names: tuple[str, str] = ("rank", "world_size")) -> tuple[int, int]:
    """``(rank, world_size)`` as ints, or a ConfigError naming what is wrong."""
    for name, value in zip(names, (rank, world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if world_size < 1:
        raise ConfigError(f"{names[1]} must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"{names[0]} must be in [0, {world_size - 1}] for {names[1]}={world_size}, got {rank}")
    return rank, world_size


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from None


def env_ranks() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` from the environment (torchrun sets them), checked; None if neither is set."""
    has_rank, has_world = "RANK" in os.environ, "WORLD_SIZE" in os.environ
    if not has_rank and not has_world:
        return None
    if has_rank != has_world:
        given, missing = ("RANK", "WORLD_SIZE") if has_rank else ("WORLD_SIZE", "RANK")
        raise ConfigError(f"environment variable {given} is set but {missing} is not: set both (torchrun does) "
                          f"or neither")
    rank, world = check_ranks(_env_int("RANK"), _env_int("WORLD_SIZE"), ("RANK", "WORLD_SIZE"))
    if world > 1:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
        if missing:
            raise ConfigError(f"RANK={rank} WORLD_SIZE={world} but {' and '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not set: launch with torchrun, or pass "
                              f"rank/world_size explicitly")
    return rank, world


def training_ranks(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` a data reader is: explicit arguments, else an initialised
    torch.distributed group, else the checked environment, else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise ConfigError("give both rank and world_size, or neither")
    if rank is not None:
        return check_ranks(rank, world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return env_ranks() or (0, 1)


def worker_slot() -> tuple[int, int]:
    """``(worker, num_workers)`` of the DataLoader worker running now, read at iteration time
    (``WORKER``/``NUM_WORKERS`` in the environment override it, as in webdataset, for tests)."""
    if "WORKER" in os.environ and "NUM_WORKERS" in os.environ:
        worker, workers = check_ranks(_env_int("WORKER"), _env_int("NUM_WORKERS"), ("WORKER", "NUM_WORKERS"))
        return worker, workers
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def detect_ranks(rank: int | None = None, world_size: int | None = None) -> Ranks:
    """Explicit ``rank``/``world_size`` (independent jobs, e.g. a SLURM array), else torchrun's env, else one process."""
    if (rank is None) != (world_size is None):
        raise ConfigError("give both --rank and --world-size (independent jobs), or neither")
    if rank is not None:
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ConfigError(f"--world-size must be an integer >= 1, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"--rank must be in [0, {world_size - 1}], got {rank!r}")
        return Ranks(rank, world_size)
    env = env_ranks()
    if env is not None and env[1] > 1:
        local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
        return Ranks(env[0], env[1], local, True)
    return Ranks()


def init_process_group(ranks: Ranks, device: torch.device) -> None:
    """Join torchrun's group: nccl for CUDA, gloo for CPU."""
    if ranks.use_torch_distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def barrier(ranks: Ranks) -> None:
    if ranks.use_torch_distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()


def destroy_process_group(ranks: Ranks) -> None:
    if ranks.use_torch_distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
