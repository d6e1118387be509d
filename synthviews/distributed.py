"""Which slice of the work this process does: one process, torchrun ranks, or independent jobs.

Whole shards are dealt out round-robin (shard s goes to rank s % world), so
the dataset is the same whatever the number of ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    use_torch_distributed: bool = False

    def owns(self, shard: int) -> bool:
        return shard % self.world_size == self.rank


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
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world > 1:
        return Ranks(int(os.environ["RANK"]), env_world, int(os.environ.get("LOCAL_RANK", "0")), True)
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
