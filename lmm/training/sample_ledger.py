"""The sample ledger (``train.sample_ledger``): which sample keys each rank trained on, per optimizer step.

Per rank, ``<run>/ledger/rank<R>.tsv`` gets one line per step: ``step<TAB>key key ...`` (the keys of every
micro-batch of that step, in order). Lines are buffered and appended (and fsynced) as part of each checkpoint,
before the checkpoint is marked complete, so a killed run's ledger holds at least the steps of its last complete
checkpoint; a resume cuts every rank file back to the step it resumes from, so steps redone after a kill are not
counted twice. ``launch.check_ledger`` reads the files back and counts repeats, skips and coverage.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

LEDGER_DIR = "ledger"


class SampleLedger:
    def __init__(self, run_dir: str | Path, rank: int, enabled: bool):
        self.path = Path(run_dir) / LEDGER_DIR / f"rank{rank}.tsv"
        self.enabled, self.lines = enabled, []

    def add(self, step: int, keys: list[str]) -> None:
        if self.enabled:
            self.lines.append(f"{step}\t{' '.join(keys)}\n")

    def flush(self) -> None:
        """Append the buffered steps durably (call before the checkpoint that covers them is marked complete)."""
        if not (self.enabled and self.lines):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.writelines(self.lines)
            f.flush()
            os.fsync(f.fileno())
        self.lines = []


def cut_back(run_dir: str | Path, step: int) -> None:
    """Drop every rank file's lines after ``step`` (rank 0, before training resumes from ``step``)."""
    for path in sorted((Path(run_dir) / LEDGER_DIR).glob("rank*.tsv")):
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.endswith("\n") and int(line.split("\t", 1)[0]) <= step]
        if kept != lines:
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)


def inherit(parent_run_dir: str | Path, run_dir: str | Path, step: int) -> None:
    """A decay branch starts its ledger with its parent's steps up to ``step`` (rank 0, at the branch's first
    start), so the branch's ledger accounts for every sample its weights were trained on."""
    source = Path(parent_run_dir) / LEDGER_DIR
    for path in sorted(source.glob("rank*.tsv")):
        target = Path(run_dir) / LEDGER_DIR / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                  if line.endswith("\n") and int(line.split("\t", 1)[0]) <= step))


def read(run_dir: str | Path) -> dict[int, list[str]]:
    """``{step: keys of every rank}`` from a run's ledger."""
    steps: dict[int, list[str]] = {}
    for path in sorted((Path(run_dir) / LEDGER_DIR).glob("rank*.tsv")):
        for line in path.read_text().splitlines():
            step, _, keys = line.partition("\t")
            steps.setdefault(int(step), []).extend(keys.split())
    return steps


def summarise(steps: dict[int, list[str]], planned: list[str]) -> dict:
    """Repeats, skips and coverage of the keys trained on against the run's ``planned`` sample keys.

    ``repeats``: trainings of a key beyond its first; ``unread``: planned keys never trained on (a finished
    one-epoch run leaves the epoch's remainder, ``len(planned) - steps x global batch``, plus skipped bad
    samples); ``missing_steps``: steps between 1 and the last one without a ledger line; ``foreign``: keys not
    in the plan."""
    counts = Counter(key for keys in steps.values() for key in keys)
    plan = set(planned)
    last = max(steps, default=0)
    return {"steps": len(steps), "last_step": last, "trained": sum(counts.values()), "unique": len(counts),
            "repeats": sum(n - 1 for n in counts.values()), "unread": len(plan - counts.keys()),
            "foreign": len(counts.keys() - plan), "coverage": len(plan & counts.keys()) / len(plan) if plan else 0.0,
            "missing_steps": [s for s in range(1, last + 1) if s not in steps]}
