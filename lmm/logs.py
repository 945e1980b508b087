"""The console log of every entry point: one format with time and rank, rank 0 telling the story of the job.

``setup()`` is called once by each ``launch`` entry point; modules log through ``logging.getLogger(__name__)``.
Rank 0 logs at INFO (``LMM_LOG_LEVEL`` overrides), the other ranks WARNING and above only, so a 16-rank job
prints each event once. Records go to stdout, in order with the metric lines, which is where Slurm's ``--output``
and a terminal both look. A record from a library (any logger outside this project) is shown once per process:
open_clip warns "No pretrained weights loaded" at every tower build, and an eval builds one per checkpoint.
"""
from __future__ import annotations

import logging
import os
import sys

PROJECT_LOGGERS = ("lmm", "data_pipeline", "launch", "__main__")
FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def process_rank() -> int:
    """The global rank from the launcher's environment (torchrun's RANK, Slurm's SLURM_PROCID), 0 outside."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


class _RankAndLibraryOnce(logging.Filter):
    """Stamps the rank on every record; lets a library's record through once per (logger, message)."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank, self.seen = rank, set()

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        if record.name.split(".")[0] in PROJECT_LOGGERS:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup(rank: int | None = None) -> None:
    """Configure the root logger for this process (idempotent: a second call replaces the first handler)."""
    rank = process_rank() if rank is None else rank
    level = os.environ.get("LMM_LOG_LEVEL", "INFO").upper() if rank == 0 else "WARNING"
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_RankAndLibraryOnce(rank))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "lmm_handler", False)]:
        root.removeHandler(old)
    handler.lmm_handler = True
    root.addHandler(handler)
    root.setLevel(level)
