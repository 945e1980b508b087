"""Eval results store: one JSONL file of records (one per run by default, any file may be shared).

A record is keyed by (checkpoint, benchmark): re-evaluating replaces it, never duplicates. Writes take an
exclusive lock on ``<file>.lock`` and rewrite the file atomically, so concurrent eval jobs sharing one file
neither lose records nor leave a half-written one.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

RESULTS_FILE = "eval_results.jsonl"  # a run's own results file, next to its checkpoints
REQUIRED_FIELDS = ("run_name", "caption_source", "num_samples", "samples_seen", "step", "benchmark", "metrics",
                   "checkpoint", "config_digest", "protocol")


def read_results(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def upsert_result(path: str | Path, record: dict) -> None:
    """Insert or replace the record with the same checkpoint and benchmark."""
    missing = [key for key in REQUIRED_FIELDS if key not in record]
    if missing:
        raise ValueError(f"result record lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = (record["checkpoint"], record["benchmark"])
    with _locked(path):
        records = [r for r in read_results(path) if (r["checkpoint"], r["benchmark"]) != key] + [record]
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        os.replace(tmp, path)


def find_result(path: str | Path, checkpoint: str | Path, benchmark: str) -> dict | None:
    """The stored record of ``checkpoint`` on ``benchmark``, if any."""
    checkpoint = str(Path(checkpoint).resolve())
    return next((r for r in read_results(path) if r["checkpoint"] == checkpoint and r["benchmark"] == benchmark),
                None)


@contextmanager
def _locked(path: Path):
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
