"""Training metrics: reduced across ranks, written to tensorboard (x axis = samples seen) and stdout on rank 0."""
from __future__ import annotations

import time
from pathlib import Path

import torch.distributed as dist

from lmm import distributed


class ThroughputMeter:
    """Samples and caption tokens per second since the last ``rates`` call, summed over all ranks."""

    def __init__(self):
        self.samples = 0
        self.tokens = 0
        self.start = time.perf_counter()

    def add(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens

    def rates(self) -> tuple[float, float]:
        samples, tokens = distributed.all_reduce([self.samples, self.tokens])
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.samples, self.tokens, self.start = 0, 0, time.perf_counter()
        return samples / elapsed, tokens / elapsed


class MetricsLogger:
    """No-op on ranks other than 0."""

    def __init__(self, log_dir: str | Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, scalars: dict[str, float], samples_seen: int, step: int) -> None:
        if self.writer is None:
            return
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=samples_seen)
        shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in scalars.items())
        print(f"step {step} samples {samples_seen} {shown}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def mean_across_ranks(value: float) -> float:
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    return distributed.all_reduce([value])[0] / world_size
