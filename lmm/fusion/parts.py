"""Which shards one fusion process handles: part ``index`` of ``parts`` contiguous, near-equal shard ranges.

By default a process is part ``array_task * world_size + rank`` of ``array_tasks * world_size``: Slurm's job array
(``SLURM_ARRAY_TASK_ID``, counted from ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``, of
``SLURM_ARRAY_TASK_COUNT``) times the ranks of each task (torchrun's ``RANK`` / ``WORLD_SIZE``, else Slurm's
``SLURM_PROCID`` / ``SLURM_NTASKS``). So one array task per range, one rank per range, or both, need no flag.
"""
from __future__ import annotations

import os

from lmm.distributed import detect_env


def part_from_env() -> tuple[int, int]:
    """(index, parts) of this process, from the environment (see the module docstring); (0, 1) outside."""
    env, task, tasks = os.environ, 0, 1
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        step = int(env.get("SLURM_ARRAY_TASK_STEP", 1))
        task = (int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))) // step
        tasks = int(env["SLURM_ARRAY_TASK_COUNT"])
    ranks = detect_env()
    return task * ranks.world_size + ranks.rank, tasks * ranks.world_size


def part_range(num_shards: int, index: int, parts: int) -> range:
    """Shard indices of part ``index``: ``[n * index // parts, n * (index + 1) // parts)``."""
    if parts < 1 or not 0 <= index < parts:
        raise ValueError(f"part {index} of {parts}: need 0 <= part < parts")
    return range(num_shards * index // parts, num_shards * (index + 1) // parts)
