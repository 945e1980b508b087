"""Check a run's sample ledger: ``python -m launch.check_ledger RUN_DIR`` (or ``lmm-check-ledger``).

The run must have trained with ``train.sample_ledger=true``. Prints one JSON line: steps, samples trained,
``repeats`` (trainings of a key beyond its first), ``unread`` (planned keys never trained on), ``coverage`` and
``missing_steps``, against the run's planned samples (``data.train_manifest`` / ``data.num_samples`` of its
``config.json``; the keys come from the shards' tar headers). Exit 0 when nothing was repeated and no step is
missing, 1 otherwise, 2 when the run has no ledger.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_pipeline.manifest import load_manifest, subset
from data_pipeline.shard_reader import sample_keys
from lmm.training import sample_ledger
from lmm.training.checkpoint import RUN_CONFIG_FILE


def planned_keys(run_dir: Path) -> list[str]:
    data = json.loads((run_dir / RUN_CONFIG_FILE).read_text())["data"]
    return [key for piece in subset(load_manifest(data["train_manifest"]), data["num_samples"])
            for key in sample_keys(piece)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    steps = sample_ledger.read(args.run_dir)
    if not steps:
        print(f"error: {args.run_dir} has no sample ledger (train with train.sample_ledger=true)", file=sys.stderr)
        return 2
    summary = sample_ledger.summarise(steps, planned_keys(args.run_dir))
    print(json.dumps(summary))
    return 0 if summary["repeats"] == 0 and not summary["missing_steps"] else 1


if __name__ == "__main__":
    sys.exit(main())
