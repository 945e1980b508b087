"""Rank, local rank and world size from torchrun or Slurm, process-group set-up through DeepSpeed, and naming a
rank that died.

When a rank dies (SIGKILL, out of memory, a lost node) the others only see a failed collective ("Connection
closed by peer"). Each rank therefore bumps a counter in the process group's key-value store every second
(``start_heartbeat``); after a failed collective ``silent_ranks`` watches the counters for a few seconds and names
the ranks whose counter stood still (or rank 0's host, when the store it serves is gone).
"""
from __future__ import annotations

import os
import threading
import time
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


def rendezvous_port(job_id: int) -> int:
    """The rendezvous port of a Slurm job: stable across its requeues, distinct between jobs sharing a node, and
    below Linux's ephemeral range (32768-60999), where srun's and slurmstepd's own sockets could already hold it
    (measured: a submitit job whose port 57654 was one of srun's failed with EADDRINUSE). ``slurm/launch.sh``
    uses the same formula."""
    return 20000 + job_id % 12000


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
    """Stop the heartbeat, then leave the process group. The heartbeat must end first: a thread still inside
    ``store.add`` while the store is destroyed aborts the process ("terminate called without an active
    exception", exit -6 after a finished run; seen once in ~20 short runs)."""
    stop_heartbeat()
    if dist.is_initialized():
        dist.destroy_process_group()


HEARTBEAT_S = 1.0
_heartbeat: tuple[threading.Event, threading.Thread] | None = None


class PeerLost(RuntimeError):
    """A collective failed because another rank is gone; the message names it."""


def _store():
    from torch.distributed.distributed_c10d import _get_default_store
    return _get_default_store()


def _heartbeat_key(rank: int) -> str:
    return f"lmm/heartbeat/{rank}"


def start_heartbeat(env: DistEnv) -> None:
    """A daemon thread that bumps this rank's counter in the store every ``HEARTBEAT_S`` (multi-rank runs)."""
    if env.world_size < 2 or not dist.is_initialized():
        return
    global _heartbeat
    stop_heartbeat()
    store, key, stop = _store(), _heartbeat_key(env.rank), threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                store.add(key, 1)
            except Exception:  # the store is gone with rank 0's host: nothing left to report to
                return
            stop.wait(HEARTBEAT_S)

    thread = threading.Thread(target=beat, name="rank-heartbeat", daemon=True)
    thread.start()
    _heartbeat = (stop, thread)


def stop_heartbeat() -> None:
    """End the heartbeat thread (waits for a ``store.add`` in flight)."""
    global _heartbeat
    if _heartbeat is not None:
        stop, thread = _heartbeat
        stop.set()
        thread.join(timeout=10)
        _heartbeat = None


def silent_ranks(world_size: int, watch_s: float = 3 * HEARTBEAT_S) -> list[int] | None:
    """Ranks whose heartbeat did not move for ``watch_s`` seconds; None when the store itself is unreachable
    (the rank that serves it, rank 0 under srun, is gone)."""
    try:
        store = _store()
        before = [store.add(_heartbeat_key(r), 0) for r in range(world_size)]
        time.sleep(watch_s)
        after = [store.add(_heartbeat_key(r), 0) for r in range(world_size)]
    except Exception:
        return None
    return [r for r in range(world_size) if after[r] == before[r]]


def explain_failed_collective(err: Exception, env: DistEnv) -> Exception:
    """A PeerLost naming the dead rank(s) when ``err`` came from another rank's death, else ``err``."""
    if env.world_size < 2 or not dist.is_initialized():
        return err
    silent = silent_ranks(env.world_size)
    if silent == []:
        return err
    who = ("rank 0 (it serves the process group's store)" if silent is None else
           ", ".join(f"rank {r}" for r in silent))
    return PeerLost(f"rank {env.rank}: {who} stopped responding (killed, out of memory or its node lost?); "
                    f"this rank cannot go on alone. The run resumes from its newest checkpoint. ({err})")
