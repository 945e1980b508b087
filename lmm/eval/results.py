"""Eval results: one JSONL file of records; re-evaluating a (checkpoint, benchmark) replaces its record."""
from __future__ import annotations

import json
import os
from pathlib import Path


def read_results(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def upsert_result(path: str | Path, record: dict) -> None:
    """Insert or replace the record with the same checkpoint and benchmark; atomic rewrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = (record["checkpoint"], record["benchmark"])
    records = [r for r in read_results(path) if (r["checkpoint"], r["benchmark"]) != key] + [record]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)
