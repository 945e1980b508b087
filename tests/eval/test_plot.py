"""Scaling plot from results files: PNG + SVG, CSV + markdown tables, saturating power-law fits."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from launch.plot import main as plot_main
from lmm.eval.results import upsert_result
from lmm.eval.scaling import fit_saturating_power_law, scaling_points

TRUE = {"capsfusion": (120.0, 900.0, 0.35), "synthetic": (95.0, 400.0, 0.3)}  # a, b, c of a - b * D^(-c)


def record(run, source, target, step, samples, cider, benchmark="coco_karpathy_test"):
    return {"run_name": run, "caption_source": source, "num_samples": target, "step": step, "samples_seen": samples,
            "benchmark": benchmark, "metrics": {"CIDEr": cider, "num_images": 5000},
            "checkpoint": f"/runs/{run}/checkpoints/global_step{step}", "config_digest": "abc", "protocol": {},
            "evaluated_at": "2026-11-23T10:00:00Z"}


def write_results(tmp_path):
    """Two files as two eval jobs would write them: capsfusion and synthetic with 6 checkpoints each (step 0
    included), raw with only 2, one NoCaps point."""
    first, second = tmp_path / "a" / "eval_results.jsonl", tmp_path / "b.jsonl"
    for source, (a, b, c) in TRUE.items():
        run = f"{source}-100m"
        upsert_result(first, record(run, source, 10 ** 8, 0, 0, 0.01))
        for step, samples in enumerate(np.geomspace(1e6, 1e8, 5).astype(int), start=1):
            upsert_result(first, record(run, source, 10 ** 8, step, int(samples), (a - b * samples ** (-c)) / 100))
    for step, samples in ((1, 10 ** 7), (2, 10 ** 8)):
        upsert_result(second, record("raw-100m", "raw", 10 ** 8, step, samples, 0.8 + 0.01 * step))
    upsert_result(second, record("raw-100m", "raw", 10 ** 8, 2, 10 ** 8, 0.6, benchmark="nocaps_val"))
    return first, second


def test_plot_written_from_results_files(tmp_path):
    first, second = write_results(tmp_path)
    out = tmp_path / "plots" / "scaling"
    assert plot_main([str(tmp_path / "a"), str(second), "--out", str(out)]) == 0  # a directory is searched
    for suffix in (".png", ".svg", ".csv", ".md"):
        assert out.with_suffix(suffix).stat().st_size > 200, suffix
    assert out.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 6 + 6 + 2 + 1
    assert {r["benchmark"] for r in rows} == {"coco_karpathy_test", "nocaps_val"}
    markdown = out.with_suffix(".md").read_text()
    assert "| coco_karpathy_test | raw | | | | | no fit: 2 point(s) with D > 0, need 4 |" in markdown
    assert "| coco_karpathy_test | capsfusion | 120 | 900 | 0.35 | 5 |" in markdown


def test_fit_recovers_a_known_power_law_and_refuses_too_few_points():
    samples = np.geomspace(1e6, 1e8, 6)
    fit, note = fit_saturating_power_law([0, *samples], [1.0, *(120 - 900 * samples ** -0.35)])  # D = 0 is skipped
    assert fit is not None and fit.num_points == 6 and "rmse" in note
    assert (fit.a, fit.b, fit.c) == pytest.approx((120, 900, 0.35), rel=1e-3)
    assert fit(np.array([1e8]))[0] == pytest.approx(120 - 900 * 1e8 ** -0.35, rel=1e-6)
    fit, note = fit_saturating_power_law([0, 1e6, 1e7, 1e8], [1, 50, 60, 65])
    assert fit is None and note == "no fit: 3 point(s) with D > 0, need 4"


def test_points_keep_the_latest_evaluation_and_can_be_final_only(tmp_path):
    records = [record("r", "raw", 100, 1, 50, 0.5), record("r", "raw", 100, 2, 100, 0.7)]
    newer = {**record("r", "raw", 100, 2, 100, 0.9), "evaluated_at": "2026-11-24T00:00:00Z"}
    points = scaling_points([newer, *records])
    assert [(p.step, p.value) for p in points] == [(1, 50.0), (2, 90.0)]
    assert [p.step for p in scaling_points(records, final_only=True)] == [2]
    assert plot_main([str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "r.jsonl").write_text(json.dumps(records[0]) + "\n")
    assert plot_main([str(tmp_path / "r.jsonl"), "--metric", "METEOR", "--out", str(tmp_path / "x")]) == 2
