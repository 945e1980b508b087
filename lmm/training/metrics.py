"""Training metrics: reduced across ranks, written to tensorboard (x axis = samples seen) and logged on rank 0.

Besides loss, LR and gradient norm, every log interval reports how well the hardware is used:

* ``perf/samples_per_s``, ``perf/tokens_per_s`` (caption tokens), summed over ranks;
* ``perf/tflops_per_device``: model FLOPs (``lmm.flops``, forward + backward of what trains, at each micro-batch's
  padded length) per second and device; ``perf/mfu``: that over the device's peak (``train.peak_tflops``, else the
  GPU's data-sheet figure; not logged where neither is known, e.g. on CPU);
* ``perf/data_wait_fraction``: the share of wall time the ranks spent waiting for the next batch (mean over ranks):
  near 0 the loader keeps up; a rising value means the GPUs starve (more ``data.num_workers``, faster storage).
"""
from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch.distributed as dist

from lmm import distributed

log = logging.getLogger(__name__)


class StepMeter:
    """Samples, caption tokens, model FLOPs and data-wait seconds since the last ``scalars`` call."""

    def __init__(self, flops_per_sample: Callable[[int], float] | None = None, peak_flops: float | None = None):
        self.flops_per_sample = lru_cache(maxsize=None)(flops_per_sample) if flops_per_sample else None
        self.peak_flops = peak_flops
        self._reset()

    def _reset(self) -> None:
        self.samples, self.tokens, self.flops, self.waited = 0, 0, 0.0, 0.0
        self.start = time.perf_counter()

    def add(self, samples: int, tokens: int, seq_len: int, waited_s: float) -> None:
        """One micro-batch: its samples, caption tokens, padded sequence length, and the time spent fetching it."""
        self.samples += samples
        self.tokens += tokens
        self.waited += waited_s
        if self.flops_per_sample is not None:
            self.flops += samples * self.flops_per_sample(seq_len)

    def scalars(self) -> dict[str, float]:
        """The ``perf/*`` scalars since the last call, over all ranks (collective)."""
        samples, tokens, flops, waited = distributed.all_reduce([self.samples, self.tokens, self.flops, self.waited])
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        ranks = world_size()
        self._reset()
        out = {"perf/samples_per_s": samples / elapsed, "perf/tokens_per_s": tokens / elapsed,
               "perf/data_wait_fraction": waited / (elapsed * ranks)}
        if self.flops_per_sample is not None:
            out["perf/tflops_per_device"] = flops / elapsed / ranks / 1e12
            if self.peak_flops:
                out["perf/mfu"] = flops / elapsed / ranks / self.peak_flops
        return out


class MetricsLogger:
    """Tensorboard scalars and one log line per call; no-op on ranks other than 0."""

    def __init__(self, log_dir: str | Path, enabled: bool, total_steps: int | None = None):
        self.writer, self.total_steps = None, total_steps
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: dict[str, float], samples_seen: int, step: int) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=samples_seen)
        shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in scalars.items())
        of = f"/{self.total_steps}" if self.total_steps else ""
        log.info("step %d%s samples %d %s", step, of, samples_seen, shown)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def mean_across_ranks(value: float) -> float:
    return distributed.all_reduce([value])[0] / world_size()
