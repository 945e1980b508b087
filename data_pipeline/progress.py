"""The trainer's side of the data stream: the loader position of every worker, and the skipped-sample bound.

Each batch carries the position its worker reached after it (``batch["data_position"]``). ``LoaderProgress``
keeps the newest one per worker; ``state_dict`` gathers every rank's to all ranks (DeepSpeed writes the client
state from rank 0 only) for the checkpoint, and ``positions_for_rank`` hands a resumed rank its own.
``skip_scalars`` sums the skip counts over workers and ranks for tensorboard (``data/skipped/<reason>``) and
stops the run with a clear message once more than ``max_skip_fraction`` of the samples read were skipped.
"""
from __future__ import annotations

import torch.distributed as dist

from data_pipeline.loader import DataStopped, fresh_position
from data_pipeline.shard_format import SKIP_REASONS
from lmm import distributed

MIN_SAMPLES_FOR_SKIP_BOUND = 1000  # the bound is not judged on fewer samples read (one bad sample in 10 is noise)


def positions_for_rank(state: dict | None, rank: int, world_size: int, num_workers: int) -> list[dict] | None:
    """This rank's worker positions from a checkpoint's ``data`` state (None for a fresh run)."""
    if state is None:
        return None
    workers = max(1, num_workers)
    if len(state["ranks"]) != world_size or any(len(r) != workers for r in state["ranks"]):
        raise ValueError(f"the checkpoint's loader state is for {len(state['ranks'])} ranks x "
                         f"{len(state['ranks'][0])} workers, this run has {world_size} x {workers}: resume with "
                         "the same world size and data.num_workers")
    return state["ranks"][rank]


class LoaderProgress:
    def __init__(self, num_workers: int, positions: list[dict] | None = None, max_skip_fraction: float = 0.01,
                 min_samples: int = MIN_SAMPLES_FOR_SKIP_BOUND):
        self.positions = [dict(p) for p in positions] if positions else [fresh_position()
                                                                          for _ in range(max(1, num_workers))]
        self.max_skip_fraction, self.min_samples = max_skip_fraction, min_samples

    def observe(self, batch: dict) -> None:
        mark = batch["data_position"]
        self.positions[mark["worker"]] = mark["position"]

    def state_dict(self) -> dict:
        """Collective: ``{"ranks": [[position of each worker] for each rank]}``."""
        if dist.is_initialized():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, self.positions)
        else:
            ranks = [self.positions]
        return {"ranks": ranks}

    def skip_totals(self) -> tuple[int, dict[str, int]]:
        """Collective: (samples read, skipped samples by reason), summed over workers and ranks."""
        local = [sum(p["seen"] for p in self.positions),
                 *(sum(p["skipped"].get(r, 0) for p in self.positions) for r in SKIP_REASONS)]
        values = [int(v) for v in distributed.all_reduce(local)]  # on the GPU under NCCL
        return values[0], dict(zip(SKIP_REASONS, values[1:]))

    def skip_scalars(self) -> dict[str, float]:
        """Collective: ``data/skip_fraction`` and ``data/skipped/<reason>`` (cumulative, once a reason occurred);
        raises DataStopped past the bound (on every rank alike: the totals are reduced)."""
        seen, skipped = self.skip_totals()
        total = sum(skipped.values())
        fraction = total / seen if seen else 0.0
        if seen >= self.min_samples and fraction > self.max_skip_fraction:
            reasons = ", ".join(f"{r}={n:,}" for r, n in skipped.items() if n)
            raise DataStopped(f"data: {total:,} of {seen:,} samples read ({fraction:.2%}) were skipped, more than "
                              f"data.max_skip_fraction={self.max_skip_fraction:g} ({reasons}). Fix or re-prepare "
                              "the shards, or raise the bound.")
        return {**{f"data/skipped/{r}": float(n) for r, n in skipped.items() if n}, "data/skip_fraction": fraction}
