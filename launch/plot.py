"""Scaling plot: ``python -m launch.plot RESULTS [...] --out scaling [--metric CIDEr] [--intermediate]``.

RESULTS are JSONL results files, or directories searched for ``eval_results.jsonl``. Writes ``<out>.png``,
``.svg``, ``.csv`` and ``.md`` (``lmm.eval.plotting``); ``--final-only`` (budget points only) is the default.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmm.eval.plotting import plot, read_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="JSONL results files or directories holding them")
    parser.add_argument("--out", type=Path, default=Path("scaling"), help="output path without suffix")
    parser.add_argument("--metric", default="CIDEr")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--intermediate", action="store_true",
                       help="also each run's checkpoints between budget points, as hollow markers")
    shown.add_argument("--final-only", action="store_true", help="budget points only (the default)")
    args = parser.parse_args(argv)
    try:
        written = plot(read_all(args.results), args.out, args.metric, intermediate=args.intermediate)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + " ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
