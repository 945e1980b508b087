"""Rank, local rank and world size from torchrun or Slurm, and process-group set-up through DeepSpeed."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_env() -> DistEnv:
    """torchrun's RANK/LOCAL_RANK/WORLD_SIZE, else Slurm's SLURM_PROCID/LOCALID/NTASKS, else one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        return DistEnv(int(os.environ["SLURM_PROCID"]), int(os.environ.get("SLURM_LOCALID", 0)),
                       int(os.environ["SLURM_NTASKS"]))
    return DistEnv(0, 0, 1)


def init_distributed() -> DistEnv:
    """Initialise the default process group (gloo on CPU, nccl on GPU: DeepSpeed's accelerator decides)."""
    import deepspeed

    env = detect_env()
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if not dist.is_initialized():
        deepspeed.init_distributed(verbose=False)
    return env


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
