"""Scaling curves from result records: points (metric vs samples seen), grouped into one curve per (benchmark,
caption source, schedule family) that joins only budget points (checkpoints that end an LR decay), the runs'
trajectories apart, a bounded saturating power-law fit ``metric = a - b * D^(-c)`` per curve, and the points as
CSV and markdown tables."""
from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MIN_FIT_POINTS = 4  # three parameters: fewer points would be interpolated, not fitted
MAX_EXPONENT = 2.0  # c in (0, 2]
# the range of a metric x100, which bounds the asymptote a: CIDEr-D is at most 10, the others are fractions
METRIC_RANGES = {"CIDEr": (0.0, 1000.0), "Bleu_1": (0.0, 100.0), "Bleu_2": (0.0, 100.0), "Bleu_3": (0.0, 100.0),
                 "Bleu_4": (0.0, 100.0), "ROUGE_L": (0.0, 100.0), "METEOR": (0.0, 100.0)}
DEFAULT_RANGE = (0.0, 100.0)
DEFAULT_SCHEDULE = "cosine"  # records written before schedules were recorded


def metric_range(metric: str) -> tuple[float, float]:
    """The x100 range of ``metric``; a NoCaps domain metric (``in-domain/CIDEr``) has its metric's range."""
    return METRIC_RANGES.get(metric.rsplit("/", 1)[-1], DEFAULT_RANGE)


def schedule_fields(record: dict) -> dict:
    """``schedule``, ``total_steps``, ``budget_point``, ``parent`` and ``branch_step`` of a result record, with the
    fallbacks for checkpoints that predate them (fields absent, or ``total_steps`` 0 from the meta's defaults): a
    cosine schedule, and a budget point at ``step == total_steps`` or, with ``total_steps`` unknown, once the
    run's target sample count is seen."""
    total_steps = record.get("total_steps") or None
    if total_steps is None:
        budget = bool(record.get("budget_point")) or record["samples_seen"] >= record.get("num_samples", 0) > 0
    else:
        budget = bool(record.get("budget_point", record["step"] == total_steps))
    parent = record.get("parent") or ""
    return {"schedule": record.get("schedule") or DEFAULT_SCHEDULE, "total_steps": total_steps,
            "budget_point": budget, "parent": parent, "branch_step": record.get("branch_step") if parent else None}


@dataclass(frozen=True)
class Point:
    benchmark: str
    caption_source: str
    schedule: str
    run_name: str
    step: int
    samples_seen: int
    num_samples: int  # the run's target sample count
    value: float  # metric x100, as papers report it
    ci_low: float | None  # 95% bootstrap interval x100, None when the record has none
    ci_high: float | None
    budget_point: bool
    total_steps: int | None
    parent: str
    branch_step: int | None
    checkpoint: str

    @property
    def curve(self) -> tuple[str, str]:
        return self.caption_source, self.schedule

    @property
    def run(self) -> tuple[str, int, str]:
        """A run's checkpoints share its name, budget and parent (a decay branch is a run of its own)."""
        return self.run_name, self.num_samples, self.parent


@dataclass(frozen=True)
class PowerLawFit:
    """``a - b * D^(-c)``: ``a`` the asymptote, ``c`` how fast it is approached."""
    a: float
    b: float
    c: float
    num_points: int
    rmse: float

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        return self.a - self.b * np.asarray(samples, dtype=float) ** (-self.c)

    def label(self) -> str:
        return f"{self.a:.3g} − {self.b:.3g}·D^−{self.c:.3g}"


def scaling_points(records: list[dict], metric: str = "CIDEr", final_only: bool = False) -> list[Point]:
    """One point per (benchmark, checkpoint) with ``metric``; the latest evaluation wins across files.
    ``final_only`` keeps the budget points only (see ``schedule_fields``)."""
    latest: dict[tuple[str, str], dict] = {}
    for record in sorted(records, key=lambda r: r.get("evaluated_at", "")):
        if metric in record["metrics"]:
            latest[(record["benchmark"], record["checkpoint"])] = record
    points = [_point(r, metric) for r in latest.values()]
    if final_only:
        points = [p for p in points if p.budget_point]
    return sorted(points, key=lambda p: (p.benchmark, p.caption_source, p.schedule, p.samples_seen, p.run_name))


def _point(record: dict, metric: str) -> Point:
    interval = record.get("intervals", {}).get(metric)
    low, high = (100 * interval[0], 100 * interval[1]) if interval else (None, None)
    return Point(benchmark=record["benchmark"], caption_source=record["caption_source"], run_name=record["run_name"],
                 step=record["step"], samples_seen=record["samples_seen"], num_samples=record.get("num_samples", 0),
                 value=100 * record["metrics"][metric], ci_low=low, ci_high=high, checkpoint=record["checkpoint"],
                 **schedule_fields(record))


def curves(points: list[Point]) -> dict[str, dict[tuple[str, str], list[Point]]]:
    """benchmark -> (caption source, schedule) -> its budget points in samples-seen order: the scaling curves."""
    grouped: dict[str, dict[tuple[str, str], list[Point]]] = {}
    for p in sorted((p for p in points if p.budget_point), key=lambda p: (p.samples_seen, p.run_name)):
        grouped.setdefault(p.benchmark, {}).setdefault(p.curve, []).append(p)
    return grouped


def runs(points: list[Point]) -> dict[str, dict[tuple[str, int, str], list[Point]]]:
    """benchmark -> run -> its checkpoints in samples-seen order, a decay branch led by its parent checkpoint
    when that is among ``points``: each run's own trajectory, never joined with another budget's."""
    grouped: dict[str, dict[tuple[str, int, str], list[Point]]] = {}
    by_checkpoint = {(p.benchmark, p.checkpoint): p for p in points}
    for p in sorted(points, key=lambda p: (p.samples_seen, p.step)):
        trace = grouped.setdefault(p.benchmark, {}).setdefault(p.run, [])
        parent = by_checkpoint.get((p.benchmark, p.parent))
        if not trace and parent is not None:
            trace.append(parent)
        trace.append(p)
    return grouped


def fit_saturating_power_law(samples: list[float], values: list[float], metric: str = "CIDEr"
                             ) -> tuple[PowerLawFit | None, str]:
    """Least-squares fit of ``a - b * D^(-c)`` on the points with D > 0, bounded to b > 0, 0 < c <= 2 and ``a``
    within the metric's range; (None, "no fit: why") with too few points, when least squares does not converge,
    when a parameter ends on a bound, or when the fit is worse than the points' spread."""
    from scipy.optimize import curve_fit

    x = np.asarray(samples, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = x > 0
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < MIN_FIT_POINTS:
        return None, f"no fit: {len(np.unique(x))} point(s) with D > 0, need {MIN_FIT_POINTS}"
    scale = x.max()  # fit on D / max(D) for conditioning: y = a - B * (D/scale)^(-c), b = B * scale^c
    low, high = metric_range(metric)
    spread = float(np.ptp(y)) + 1e-9
    bounds = ([low, 0.0, 0.0], [high, np.inf, MAX_EXPONENT])

    def model(xn, a, big_b, c):
        return a - big_b * xn ** (-c)

    best = None
    for c0 in (0.1, 0.5, 1.0, 1.9):
        p0 = (float(np.clip(y.max() + 0.1 * spread, low + 1e-3 * (high - low), high - 1e-3 * (high - low))),
              spread, c0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(model, x / scale, y, p0=p0, bounds=bounds, maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((model(x / scale, *params) - y) ** 2))
        if np.all(np.isfinite(params)) and (best is None or sse < best[1]):
            best = (params, sse)
    if best is None:
        return None, "no fit: least squares did not converge"
    (a, big_b, c), sse = best
    rmse = math.sqrt(sse / len(x))
    on_bound = [name for name, hit in (("a", min(a - low, high - a) < 1e-3 * (high - low)),
                                       ("b", big_b < 1e-6 * spread),
                                       ("c", min(c, MAX_EXPONENT - c) < 1e-3 * MAX_EXPONENT)) if hit]
    if on_bound:
        return None, f"no fit: {', '.join(on_bound)} at a bound (a in [{low:g}, {high:g}], b > 0, 0 < c <= 2)"
    if rmse > np.std(y):
        return None, f"no fit: rmse {rmse:.3g} above the points' spread {np.std(y):.3g}"
    fit = PowerLawFit(float(a), float(big_b * scale ** c), float(c), len(x), rmse)
    return fit, f"fit on {len(x)} points, rmse {fit.rmse:.3g}"


def fit_curves(points: list[Point], metric: str) -> dict[tuple[str, str, str], tuple[PowerLawFit | None, str]]:
    """(benchmark, caption source, schedule) -> the fit of its budget points."""
    return {(benchmark, *curve): fit_saturating_power_law([p.samples_seen for p in pts], [p.value for p in pts],
                                                          metric)
            for benchmark, by_curve in curves(points).items() for curve, pts in by_curve.items()}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_points_csv(points: list[Point], path: Path) -> Path:
    """Every point (budget points and the checkpoints between them), x100 values, empty cells where unknown."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Point.__dataclass_fields__))
        writer.writeheader()
        writer.writerows({key: _cell(value) for key, value in asdict(p).items()} for p in points)
    return path


def markdown_tables(points: list[Point], fits: dict[tuple[str, str, str], tuple[PowerLawFit | None, str]],
                    metric: str) -> str:
    """The budget points per (benchmark, caption source, schedule), then the fitted parameters per curve."""
    budget = sorted((p for p in points if p.budget_point),
                    key=lambda p: (p.benchmark, p.caption_source, p.schedule, p.samples_seen, p.run_name))
    branches = any(p.parent for p in budget)  # parent and branch step columns only when there are branches
    lines = [f"Budget points (checkpoints that end an LR decay), {metric} x100 with its 95% bootstrap interval:", "",
             _row(["benchmark", "caption source", "schedule", "run", "step", "samples seen", metric, "CI low",
                   "CI high"] + ["parent", "branch step"] * branches),
             _row(["---"] * 4 + ["---:"] * 5 + ["---", "---:"] * branches)]
    for p in budget:
        lines.append(_row([p.benchmark, p.caption_source, p.schedule, p.run_name, str(p.step), f"{p.samples_seen:,}",
                           f"{p.value:.2f}", _x100(p.ci_low), _x100(p.ci_high)]
                          + [p.parent, _cell(p.branch_step)] * branches))
    lines += ["", f"Fits of {metric} = a − b·D^(−c) on the budget points (D = samples seen > 0):", "",
              _row(["benchmark", "caption source", "schedule", "a", "b", "c", "points", "note"]),
              _row(["---"] * 3 + ["---:"] * 4 + ["---"])]
    for (benchmark, source, schedule), (fit, note) in sorted(fits.items()):
        values = [f"{fit.a:.4g}", f"{fit.b:.4g}", f"{fit.c:.4g}", str(fit.num_points)] if fit else [""] * 4
        lines.append(_row([benchmark, source, schedule, *values, note]))
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _x100(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"
