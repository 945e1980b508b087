"""The trainer's side of the data stream: the loader position of every worker, and the skipped-sample bound.

Each batch carries the position its worker reached after it (``batch["data_position"]``). ``LoaderProgress``
keeps the newest one per worker; ``state_dict`` gathers every rank's to all ranks (DeepSpeed writes the client
state from rank 0 only) for the checkpoint, and ``positions_for_rank`` hands a resumed rank its own.
``reshard`` re-deals what a checkpoint's loaders had left of the epoch when the run resumes on another number
of ranks or workers (elastic resume). ``skip_scalars`` sums the skip counts over workers and ranks for
tensorboard (``data/skipped/<reason>``) and stops the run with a clear message once more than
``max_skip_fraction`` of the samples read were skipped.

Why our own and not torchdata's ``StatefulDataLoader`` (``benchmarks/library_review.py --only loader``,
BENCHMARKS.md "Library review" (d)): on our stream, stopped after 150 batches of 2 workers, both restore exactly,
but the first batch after resume takes 0.32 s here against 1.32 s there, growing with the position (it replays
every batch already trained on, since a stream without ``state_dict`` can only be fast-forwarded), and it refuses
another number of workers (a bare ``AssertionError``) and has no ranks; ``reshard`` re-deals 1x2 -> 2x3 exactly.
"""
from __future__ import annotations

from collections import Counter

import torch.distributed as dist

from data_pipeline.loader import DataStopped, fresh_position
from data_pipeline.manifest import EpochPlan, Piece
from data_pipeline.shard_format import SKIP_REASONS
from lmm import distributed

MIN_SAMPLES_FOR_SKIP_BOUND = 1000  # the bound is not judged on fewer samples read (one bad sample in 10 is noise)


def positions_for_rank(state: dict | None, rank: int, world_size: int, num_workers: int) -> list[dict] | None:
    """This rank's worker positions from a checkpoint's ``data`` state (None for a fresh run); the state must be
    for this layout (``reshard`` first)."""
    if state is None:
        return None
    workers = max(1, num_workers)
    if len(state["ranks"]) != world_size or any(len(r) != workers for r in state["ranks"]):
        raise ValueError(f"the loader state is for {len(state['ranks'])} ranks x {len(state['ranks'][0])} workers, "
                         f"this run has {world_size} x {workers}: reshard it first")
    return state["ranks"][rank]


def carry_for_rank(state: dict | None, rank: int) -> list[list[list[int]]] | None:
    """This rank's carry-over items per worker (None when the state has none)."""
    return state["carry"][rank] if state and state.get("carry") else None


def reshard(state: dict, pieces: list[Piece], seed: int, shuffle_buffer: int, world_size: int,
            num_workers: int) -> tuple[dict, bool]:
    """(state, changed): ``state`` re-dealt to ``world_size`` x ``num_workers`` loader slots.

    What every old slot had left -- the rest of its carry-over, the rest of its current epoch's share and, if other
    slots were already further, its whole share of the epochs up to the furthest one -- is concatenated as ranges
    of emissions (``[slots, epoch, slot, begin, end]``: a slot's share is emitted window by window in a seeded order
    that these five numbers and the manifest determine) and cut into ``world_size x num_workers`` near-equal
    parts, the new slots' carry-over. Each new slot reads its part first, then the epochs after the furthest one
    under the new layout. Nothing is read twice and nothing is left out; read/skip counts are kept (on slot 0).
    """
    workers, size = max(1, num_workers), max(1, shuffle_buffer)
    if len(state["ranks"]) == world_size and all(len(r) == workers for r in state["ranks"]):
        return state, False
    positions = [p for rank in state["ranks"] for p in rank]
    carried = [c for rank in state.get("carry") or [[[] for _ in r] for r in state["ranks"]] for c in rank]
    rests = [_after(carry, position.get("carry", 0)) for position, carry in zip(positions, carried)]
    begins = [p["window"] * size + p["emitted"] for p in positions]
    # the newest epoch any slot has started (a slot still in its carry-over has not started its ``epoch``)
    last_epoch = max(p["epoch"] - (1 if rest or not begin else 0) for p, rest, begin in zip(positions, rests, begins))
    items, old_slots = [], len(positions)
    for slot, (position, rest, begin) in enumerate(zip(positions, rests, begins)):
        items += rest
        for epoch in range(position["epoch"], last_epoch + 1):
            share = EpochPlan(pieces, old_slots, seed, epoch).samples_per_slot
            if begin < share:
                items.append([old_slots, epoch, slot, begin, share])
            begin = 0
    parts = _cut(items, world_size * workers)
    fresh = [fresh_position(last_epoch + 1) for _ in parts]
    fresh[0]["seen"] = sum(p["seen"] for p in positions)
    fresh[0]["skipped"] = dict(sum((Counter(p["skipped"]) for p in positions), Counter()))
    by_rank = lambda rows: [rows[r * workers:(r + 1) * workers] for r in range(world_size)]  # noqa: E731
    return {"ranks": by_rank(fresh), "carry": by_rank(parts)}, True


def _after(items: list[list[int]], done: int) -> list[list[int]]:
    """``items`` without their first ``done`` emissions."""
    rest = []
    for slots, epoch, slot, begin, end in items:
        skip = min(done, end - begin)
        done -= skip
        if begin + skip < end:
            rest.append([slots, epoch, slot, begin + skip, end])
    return rest


def _cut(items: list[list[int]], parts: int) -> list[list[list[int]]]:
    """``items`` cut into ``parts`` consecutive runs of near-equal length (they differ by at most one)."""
    total = sum(end - begin for *_, begin, end in items)
    bounds = [total * (part + 1) // parts for part in range(parts)]
    out, part, done = [[] for _ in range(parts)], 0, 0
    for slots, epoch, slot, begin, end in items:
        while begin < end:
            while done >= bounds[part]:
                part += 1
            take = min(end - begin, bounds[part] - done)
            out[part].append([slots, epoch, slot, begin, begin + take])
            begin, done = begin + take, done + take
    return out


class LoaderProgress:
    def __init__(self, num_workers: int, positions: list[dict] | None = None, max_skip_fraction: float = 0.01,
                 min_samples: int = MIN_SAMPLES_FOR_SKIP_BOUND, carry: list | None = None):
        self.carry = carry  # every rank's carry-over (the same on all ranks), saved as is
        self.positions = [dict(p) for p in positions] if positions else [fresh_position()
                                                                          for _ in range(max(1, num_workers))]
        self.max_skip_fraction, self.min_samples = max_skip_fraction, min_samples

    def observe(self, batch: dict) -> None:
        mark = batch["data_position"]
        self.positions[mark["worker"]] = mark["position"]

    def state_dict(self) -> dict:
        """Collective: ``{"ranks": [[position of each worker] for each rank], "carry": ...}``."""
        if dist.is_initialized():
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, self.positions)
        else:
            ranks = [self.positions]
        return {"ranks": ranks, **({"carry": self.carry} if self.carry else {})}

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
