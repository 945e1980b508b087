"""Scaling curves from result records: points (metric vs samples seen per benchmark and caption source), a
saturating power-law fit ``metric = a - b * D^(-c)`` per curve, and the points as CSV and markdown tables."""
from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

MIN_FIT_POINTS = 4  # three parameters: fewer points would be interpolated, not fitted


@dataclass(frozen=True)
class Point:
    benchmark: str
    caption_source: str
    run_name: str
    step: int
    samples_seen: int
    num_samples: int  # the run's target sample count
    value: float  # metric x100, as papers report it
    checkpoint: str


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
        sign = "−" if self.b >= 0 else "+"
        return f"{self.a:.3g} {sign} {abs(self.b):.3g}·D^−{self.c:.3g}"


def scaling_points(records: list[dict], metric: str = "CIDEr", final_only: bool = False) -> list[Point]:
    """One point per (benchmark, checkpoint) with ``metric``; the latest evaluation wins across files.
    ``final_only`` keeps each run's last checkpoint (samples seen = its target sample count)."""
    latest: dict[tuple[str, str], dict] = {}
    for record in sorted(records, key=lambda r: r.get("evaluated_at", "")):
        if metric in record["metrics"]:
            latest[(record["benchmark"], record["checkpoint"])] = record
    points = [Point(r["benchmark"], r["caption_source"], r["run_name"], r["step"], r["samples_seen"],
                    r.get("num_samples", 0), 100 * r["metrics"][metric], r["checkpoint"]) for r in latest.values()]
    if final_only:
        points = [p for p in points if p.samples_seen >= p.num_samples > 0]
    return sorted(points, key=lambda p: (p.benchmark, p.caption_source, p.samples_seen, p.run_name))


def curves(points: list[Point]) -> dict[str, dict[str, list[Point]]]:
    """benchmark -> caption source -> points in samples-seen order."""
    grouped: dict[str, dict[str, list[Point]]] = {}
    for p in points:
        grouped.setdefault(p.benchmark, {}).setdefault(p.caption_source, []).append(p)
    return grouped


def fit_saturating_power_law(samples: list[float], values: list[float]) -> tuple[Optional[PowerLawFit], str]:
    """Least-squares fit of ``a - b * D^(-c)`` on the points with D > 0; (None, why) when it cannot be fitted."""
    from scipy.optimize import curve_fit

    x = np.asarray(samples, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = x > 0
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < MIN_FIT_POINTS:
        return None, f"no fit: {len(np.unique(x))} point(s) with D > 0, need {MIN_FIT_POINTS}"
    scale = x.max()  # fit on D / max(D) for conditioning: y = a - B * (D/scale)^(-c), b = B * scale^c

    def model(xn, a, big_b, c):
        return a - big_b * xn ** (-c)

    best = None
    for c0 in (0.1, 0.5, 1.0, 2.0):
        p0 = (y.max() + 0.1 * (np.ptp(y) + 1e-9), np.ptp(y) + 1e-9, c0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(model, x / scale, y, p0=p0, maxfev=20000,
                                      bounds=([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, 5.0]))
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((model(x / scale, *params) - y) ** 2))
        if np.all(np.isfinite(params)) and (best is None or sse < best[1]):
            best = (params, sse)
    if best is None:
        return None, "no fit: least squares did not converge"
    (a, big_b, c), sse = best
    fit = PowerLawFit(float(a), float(big_b * scale ** c), float(c), len(x), math.sqrt(sse / len(x)))
    return fit, f"fit on {len(x)} points, rmse {fit.rmse:.3g}"


def write_points_csv(points: list[Point], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Point.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    return path


def markdown_tables(points: list[Point], fits: dict[tuple[str, str], tuple[Optional[PowerLawFit], str]],
                    metric: str) -> str:
    """The points, then the fitted parameters per curve, as markdown."""
    lines = [f"| benchmark | caption source | run | step | samples seen | {metric} (x100) |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {p.benchmark} | {p.caption_source} | {p.run_name} | {p.step} | {p.samples_seen:,} | {p.value:.2f} |"
              for p in points]
    lines += ["", f"Fits of {metric} = a − b·D^(−c) (D = samples seen > 0):", "",
              "| benchmark | caption source | a | b | c | points | note |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for (benchmark, source), (fit, note) in sorted(fits.items()):
        if fit is None:
            lines.append(f"| {benchmark} | {source} | | | | | {note} |")
        else:
            lines.append(f"| {benchmark} | {source} | {fit.a:.4g} | {fit.b:.4g} | {fit.c:.4g} | {fit.num_points} | "
                         f"{note} |")
    return "\n".join(lines) + "\n"
