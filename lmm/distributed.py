"""Rank, local rank and world size from torchrun or Slurm, and process-group set-up through DeepSpeed."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
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


def init_distributed(timeout_s: int = 900) -> DistEnv:
    """Initialise the default process group (gloo on CPU, nccl on GPU: DeepSpeed's accelerator decides).
    A collective that waits longer than ``timeout_s`` raises instead of hanging (a dead or stuck rank)."""
    import deepspeed

    env = detect_env()
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if not dist.is_initialized():
        _skip_cpu_inference_kernel()
        deepspeed.init_distributed(verbose=False, timeout=timedelta(seconds=timeout_s))
    return env


def _skip_cpu_inference_kernel() -> None:
    """On CPU, DeepSpeed's communication backend JIT-compiles a shared-memory all-reduce kernel at start-up
    (~90 s on 2 cores, under a file lock every rank waits on) that only its inference all-reduce uses. Training
    never calls it, so it is marked unavailable instead of built."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def reduction_device() -> torch.device:
    """Where collective buffers must live: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(values: list[float], op: dist.ReduceOp = dist.ReduceOp.SUM) -> list[float]:
    """Reduce a few scalars over all ranks (identity without a process group)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=reduction_device())
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (collective)."""
    return all_reduce([float(flag)], dist.ReduceOp.MAX)[0] > 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
