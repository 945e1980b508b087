"""The console log of every entry point: one format with time and rank, rank 0 telling the story of the job.

``setup()`` is called once by each ``launch`` entry point; modules log through ``logging.getLogger(__name__)``.
Rank 0 logs at INFO (``LMM_LOG_LEVEL`` overrides), the other ranks WARNING and above only, so a 16-rank job
prints each event once. Records go to stdout, in order with the metric lines, which is where Slurm's ``--output``
and a terminal both look; Python warnings go through the same handler (deprecation notices on rank 0 only).

Libraries are quieter than the project: their records below WARNING are dropped (``LMM_LOG_LEVEL=DEBUG`` shows
them), and each of their messages is shown once per process (an eval builds a model per checkpoint). open_clip's
"No pretrained weights loaded ... initialized randomly" is dropped: the project builds every tower without
weights and loads them itself (``lmm.models.vision``), so the message is false whenever weights are given.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

PROJECT_LOGGERS = ("lmm", "data_pipeline", "launch", "__main__")
FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def process_rank() -> int:
    """The global rank from the launcher's environment (torchrun's RANK, Slurm's SLURM_PROCID), 0 outside."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


DROPPED = ("No pretrained weights loaded for model",)  # library messages that are false here (see above)


class _RankAndQuietLibraries(logging.Filter):
    """Stamps the rank on every record; lets a library's record through once per (logger, message), at
    ``library_level`` and above, unless it is one of DROPPED."""

    def __init__(self, rank: int, library_level: int):
        super().__init__()
        self.rank, self.library_level, self.seen = rank, library_level, set()

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        if record.name.split(".")[0] in PROJECT_LOGGERS:
            return True
        message = record.getMessage()
        key = (record.name, message)
        if record.levelno < self.library_level or key in self.seen or message.startswith(DROPPED):
            return False
        self.seen.add(key)
        return True


def setup(rank: int | None = None) -> None:
    """Configure the root logger for this process (idempotent: a second call replaces the first handler)."""
    rank = process_rank() if rank is None else rank
    level = os.environ.get("LMM_LOG_LEVEL", "INFO").upper() if rank == 0 else "WARNING"
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_RankAndQuietLibraries(rank, logging.DEBUG if level == "DEBUG" else logging.WARNING))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "lmm_handler", False)]:
        root.removeHandler(old)
    handler.lmm_handler = True
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    if rank != 0:  # a library's deprecation notice is the same on every rank: rank 0 shows it
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
