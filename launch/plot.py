"""Scaling plot: ``python -m launch.plot results.jsonl [...] --out scaling.png [--metric CIDEr]``.

One line per caption source (metric vs samples seen), one panel per benchmark, a marker per checkpoint.
The x axis is logarithmic; when a step-0 checkpoint (0 samples) is present it is symmetric-log so 0 shows.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from lmm.eval.results import read_results


def curves(records: list[dict], metric: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """benchmark -> caption source -> sorted (samples_seen, metric) points (the latest record per point)."""
    points: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if metric in r["metrics"]:
            points[r["benchmark"]][r["caption_source"]][r["samples_seen"]] = r["metrics"][metric]
    return {b: {s: sorted(p.items()) for s, p in by_source.items()} for b, by_source in points.items()}


def plot(records: list[dict], out: Path, metric: str = "CIDEr") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(records, metric)
    if not data:
        raise ValueError(f"no results with metric {metric}")
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4.5), squeeze=False)
    for ax, (benchmark, by_source) in zip(axes[0], sorted(data.items())):
        xs_all = [x for pts in by_source.values() for x, _ in pts]
        for source, pts in sorted(by_source.items()):
            ax.plot([x for x, _ in pts], [100 * y for _, y in pts], marker="o", label=source)
        if min(xs_all) > 0:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=max(1, min((x for x in xs_all if x > 0), default=1)))
        ax.set_xlabel("samples seen")
        ax.set_ylabel(f"{metric} (x100)")
        ax.set_title(benchmark)
        ax.grid(True, alpha=0.3)
        ax.legend(title="caption source")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="JSONL results files")
    parser.add_argument("--out", type=Path, default=Path("scaling.png"))
    parser.add_argument("--metric", default="CIDEr")
    args = parser.parse_args(argv)
    records = [r for path in args.results for r in read_results(path)]
    try:
        print(f"wrote {plot(records, args.out, args.metric)}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
