"""Scaling plot: ``python -m launch.plot RESULTS [...] --out scaling [--metric CIDEr] [--final-only]``.

RESULTS are JSONL results files, or directories searched for ``eval_results.jsonl``. Writes ``<out>.png`` and
``<out>.svg`` (one panel per benchmark: metric x100 vs samples seen on a log axis, one line per caption source, a
marker per evaluated checkpoint, and the fitted saturating power law ``a - b·D^(-c)`` dashed with its parameters
in the legend, or "no fit" and why when a curve has fewer than 4 sample counts), plus ``<out>.csv`` and
``<out>.md`` with the points and the fits. A step-0 checkpoint (0 samples) is shown on a symmetric-log axis.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from lmm.eval.results import RESULTS_FILE, read_results
from lmm.eval.scaling import curves, fit_saturating_power_law, markdown_tables, scaling_points, write_points_csv


def read_all(paths: list[Path]) -> list[dict]:
    files = [f for p in paths for f in (sorted(p.rglob(RESULTS_FILE)) if p.is_dir() else [p])]
    return [r for f in files for r in read_results(f)]


def set_samples_axis(ax, samples: list[int]) -> None:
    """Log axis, symmetric-log when 0 samples (step 0) is shown; a range under two decades gets ticks at the
    data points, a symmetric-log one at 0 and the powers of ten."""
    positive = sorted({x for x in samples if x > 0}) or [1]
    has_zero = min(samples) <= 0
    if has_zero:
        ax.set_xscale("symlog", linthresh=positive[0], linscale=0.3)
    else:
        ax.set_xscale("log")
    if positive[-1] / positive[0] < 100:
        ticks = positive[::max(1, len(positive) // 6)]
        labels = [f"{x:,}" for x in ticks]
    elif has_zero:
        powers = range(math.ceil(math.log10(positive[0])), math.floor(math.log10(positive[-1])) + 1)
        ticks, labels = [10 ** k for k in powers], [f"$10^{{{k}}}$" for k in powers]
    else:
        return
    ax.set_xticks(([0] if has_zero else []) + ticks, (["0"] if has_zero else []) + labels,
                  rotation=30 if len(ticks) > 4 else 0)
    ax.minorticks_off()


def plot(records: list[dict], out: Path, metric: str = "CIDEr", final_only: bool = False) -> dict[str, Path]:
    """Write the figure (PNG, SVG) and tables (CSV, markdown); returns their paths by kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = scaling_points(records, metric, final_only)
    if not points:
        raise ValueError(f"no results with metric {metric}")
    out = out.with_suffix("") if out.suffix in (".png", ".svg") else out
    out.parent.mkdir(parents=True, exist_ok=True)
    data, fits = curves(points), {}
    fig, axes = plt.subplots(1, len(data), figsize=(6.5 * len(data), 4.8), squeeze=False)
    for ax, (benchmark, by_source) in zip(axes[0], sorted(data.items())):
        xs_all = [p.samples_seen for pts in by_source.values() for p in pts]
        for source, pts in sorted(by_source.items()):
            xs, ys = [p.samples_seen for p in pts], [p.value for p in pts]
            line, = ax.plot(xs, ys, marker="o", label=source)
            fit, note = fits[(benchmark, source)] = fit_saturating_power_law(xs, ys)
            if fit is None:
                ax.plot([], [], " ", label=f"  {source}: {note}")
            else:
                grid = np.geomspace(min(x for x in xs if x > 0), max(xs), 100)
                ax.plot(grid, fit(grid), linestyle="--", color=line.get_color(), label=f"  fit: {fit.label()}")
        set_samples_axis(ax, xs_all)
        ax.set_xlabel("samples seen (D)")
        ax.set_ylabel(f"{metric} (x100)")
        ax.set_title(benchmark)
        ax.grid(True, alpha=0.3)
        ax.legend(title="caption source", fontsize=8)
    fig.tight_layout()
    written = {"png": out.with_suffix(".png"), "svg": out.with_suffix(".svg")}
    fig.savefig(written["png"], dpi=120)
    fig.savefig(written["svg"])
    plt.close(fig)
    written["csv"] = write_points_csv(points, out.with_suffix(".csv"))
    written["md"] = out.with_suffix(".md")
    written["md"].write_text(markdown_tables(points, fits, metric))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="JSONL results files or directories holding them")
    parser.add_argument("--out", type=Path, default=Path("scaling"), help="output path without suffix")
    parser.add_argument("--metric", default="CIDEr")
    parser.add_argument("--final-only", action="store_true", help="only each run's final checkpoint")
    args = parser.parse_args(argv)
    try:
        written = plot(read_all(args.results), args.out, args.metric, args.final_only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + " ".join(str(p) for p in written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
