"""The scaling plot: one panel per benchmark, metric x100 vs samples seen on a log axis, one line per (caption
source, schedule family) joining only its budget points (checkpoints that end an LR decay, one per budget) with
their 95% bootstrap band and error bars, and the bounded saturating power law ``a - b·D^(-c)`` dashed with its
parameters in the legend, or "no fit" and why. ``intermediate`` adds the checkpoints between budget points as
hollow markers on one faint line per run. Beside ``<out>.png`` / ``.svg``: ``<out>.csv`` holds every point,
``<out>.md`` the budget points and the fits. A step-0 checkpoint (0 samples) is shown on a symmetric-log axis.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lmm.eval.results import RESULTS_FILE, read_results
from lmm.eval.scaling import Point, curves, fit_curves, markdown_tables, runs, scaling_points, write_points_csv

SCHEDULE_MARKERS = {"cosine": "o", "wsd": "s", "wsd-s": "D"}


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


def plot(records: list[dict], out: Path, metric: str = "CIDEr", final_only: bool = False,
         intermediate: bool = False) -> dict[str, Path]:
    """Write the figure (PNG, SVG) and tables (CSV, markdown); returns their paths by kind. Budget points only
    unless ``intermediate`` (``final_only``, the default, is kept for callers that ask for it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = scaling_points(records, metric)
    if not points:
        raise ValueError(f"no results with metric {metric}")
    if not intermediate and not any(p.budget_point for p in points):
        raise ValueError(f"no budget point (a checkpoint that ends an LR decay) among {len(points)} checkpoint(s) "
                         f"with {metric}; --intermediate draws them")
    out = out.with_suffix("") if out.suffix in (".png", ".svg") else out
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, fits = figure(points, metric, intermediate and not final_only)
    written = {"png": out.with_suffix(".png"), "svg": out.with_suffix(".svg")}
    fig.savefig(written["png"], dpi=120)
    fig.savefig(written["svg"])
    plt.close(fig)
    written["csv"] = write_points_csv(points, out.with_suffix(".csv"))
    written["md"] = out.with_suffix(".md")
    written["md"].write_text(markdown_tables(points, fits, metric))
    return written


def figure(points: list[Point], metric: str, intermediate: bool = False):
    """(figure, fits): a panel per benchmark, a line per (caption source, schedule) through its budget points with
    the 95% band and error bars, its fit dashed; with ``intermediate``, each run's checkpoints as hollow markers on
    a faint line of their own."""
    import matplotlib.pyplot as plt

    fits = fit_curves(points, metric)
    budget = curves(points)
    traces = runs(points) if intermediate else {}
    keys = sorted({p.curve for p in points})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {key: colors[i % len(colors)] for i, key in enumerate(keys)}
    one_schedule = len({schedule for _, schedule in keys}) == 1
    labels = {key: key[0] if one_schedule else f"{key[0]} ({key[1]})" for key in keys}
    benchmarks = sorted(set(budget) | set(traces))
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(6.5 * len(benchmarks), 4.8), squeeze=False)
    for ax, benchmark in zip(axes[0], benchmarks):
        by_curve, by_run = budget.get(benchmark, {}), traces.get(benchmark, {})
        unlabelled = set(keys) - set(by_curve)  # curves without budget points here: their runs get the label
        for trace in by_run.values():
            key = trace[-1].curve
            _draw_run(ax, trace, color[key], f"{labels[key]}: checkpoints" if key in unlabelled else None)
            unlabelled.discard(key)
        for key, pts in sorted(by_curve.items()):
            _draw_curve(ax, pts, color[key], labels[key], fits[(benchmark, *key)])
        set_samples_axis(ax, [p.samples_seen for pts in (*by_curve.values(), *by_run.values()) for p in pts])
        ax.set_xlabel("samples seen (D)")
        ax.set_ylabel(f"{metric} (x100)")
        ax.set_title(benchmark)
        ax.grid(True, alpha=0.3)
        ax.legend(title="caption source" if one_schedule else "caption source (schedule)", fontsize=8)
    fig.tight_layout()
    return fig, fits


def _draw_curve(ax, pts: list[Point], color: str, label: str, fit_and_note) -> None:
    """Budget points joined, their 95% band and error bars (where the records have intervals), and the fit."""
    xs, ys = np.array([p.samples_seen for p in pts]), np.array([p.value for p in pts])
    low = np.array([np.nan if p.ci_low is None else p.ci_low for p in pts])
    high = np.array([np.nan if p.ci_high is None else p.ci_high for p in pts])
    ax.plot(xs, ys, marker=SCHEDULE_MARKERS.get(pts[0].schedule, "o"), color=color, label=label, gid="budget")
    ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0)
    has = ~np.isnan(low)
    if has.any():
        ax.errorbar(xs[has], ys[has], yerr=[ys[has] - low[has], high[has] - ys[has]], fmt="none", ecolor=color,
                    capsize=3, linewidth=1)
    fit, note = fit_and_note
    if fit is None:
        ax.plot([], [], " ", label=f"  {label}: {note}")
    else:
        grid = np.geomspace(xs[xs > 0].min(), xs.max(), 100)
        ax.plot(grid, fit(grid), linestyle="--", color=color, label=f"  fit: {fit.label()}")


def _draw_run(ax, trace: list[Point], color: str, label: str | None) -> None:
    """One run's checkpoints on a faint thin line, those that are not budget points as small hollow markers."""
    ax.plot([p.samples_seen for p in trace], [p.value for p in trace], color=color, linewidth=0.6, alpha=0.35,
            gid="run")
    between = [p for p in trace if not p.budget_point]
    ax.plot([p.samples_seen for p in between], [p.value for p in between], linestyle="none", marker="o",
            markersize=4, markerfacecolor="none", color=color, alpha=0.7, label=label or "_nolegend_",
            gid="intermediate")
