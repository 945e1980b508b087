"""Scaling plot from results files: one curve per (caption source, schedule) through budget points only, 95%
bands, PNG + SVG, CSV + markdown tables, bounded saturating power-law fits."""
from __future__ import annotations

import csv
import json

import matplotlib
import numpy as np
import pytest

from launch.plot import main as plot_main
from lmm.eval.plotting import figure
from lmm.eval.results import upsert_result
from lmm.eval.scaling import curves, fit_saturating_power_law, runs, scaling_points, schedule_fields

matplotlib.use("Agg")

TRUE = {"capsfusion": (120.0, 900.0, 0.35), "synthetic": (95.0, 400.0, 0.3)}  # a, b, c of a - b * D^(-c)
BATCH = 8192
BUDGETS = (10_000_000, 50_000_000, 100_000_000, 500_000_000)  # samples; steps = budget // BATCH


def record(run, source, target, step, samples, cider, benchmark="coco_karpathy_test", **fields):
    return {"run_name": run, "caption_source": source, "num_samples": target, "step": step, "samples_seen": samples,
            "benchmark": benchmark, "metrics": {"CIDEr": cider, "num_images": 5000},
            "checkpoint": f"/runs/{run}/checkpoints/global_step{step}", "config_digest": "abc", "protocol": {},
            "evaluated_at": "2026-11-23T10:00:00Z", **fields}


def paper_run(source, budget, value, schedule="cosine"):
    """A run of ``budget`` samples as the trainer writes it: its last step, the budget point (samples seen short of
    the budget: 10M // 8192 = 1220 steps = 9,994,240 samples), with an interval, and its mid checkpoint."""
    total, half = budget // BATCH, budget // BATCH // 2
    run = f"{source}-{schedule}-{budget // 10 ** 6}m"
    end = value(total * BATCH)
    return [record(run, source, budget, total, total * BATCH, end, schedule=schedule, total_steps=total,
                   budget_point=True, intervals={"CIDEr": [end - 0.01, end + 0.01]}),
            record(run, source, budget, half, half * BATCH, value(half * BATCH) - 0.05, schedule=schedule,
                   total_steps=total, budget_point=False)]


def paper_results(tmp_path):
    """Two results files: capsfusion and synthetic at 4 budgets (cosine), capsfusion at 2 budgets as WSD decay
    branches off one stable run, and one old-style raw record (no schedule fields) on NoCaps."""
    first, second = tmp_path / "a" / "eval_results.jsonl", tmp_path / "b.jsonl"
    for source, (a, b, c) in TRUE.items():
        for budget in BUDGETS:
            for r in paper_run(source, budget, lambda d, a=a, b=b, c=c: (a - b * d ** (-c)) / 100):
                upsert_result(first, r)
    for budget in BUDGETS[:2]:  # a WSD stable run, and a decay branch off it over the last 20% of each budget
        total = budget // BATCH
        branch = int(total * 0.8)
        upsert_result(second, record("capsfusion-wsd", "capsfusion", BUDGETS[1], branch, branch * BATCH,
                                     0.9 + budget / 10 ** 9, schedule="wsd", total_steps=BUDGETS[1] // BATCH,
                                     budget_point=False))
        upsert_result(second, record(f"capsfusion-wsd-decay{total}", "capsfusion", budget, total, total * BATCH,
                                     1.0 + budget / 10 ** 9, schedule="wsd", total_steps=total, budget_point=True,
                                     parent=f"/runs/capsfusion-wsd/checkpoints/global_step{branch}",
                                     branch_step=branch))
    upsert_result(second, record("raw-100m", "raw", 10 ** 8, 12207, 12207 * BATCH, 0.6, benchmark="nocaps_val"))
    return first, second


def test_paper_step_counts_are_budget_points():
    total = 10_000_000 // BATCH
    assert (total, total * BATCH) == (1220, 9_994_240)
    new = record("r", "raw", 10_000_000, total, total * BATCH, 0.5, total_steps=total, schedule="wsd")
    flagged = {**new, "budget_point": True}
    old = record("r", "raw", 10_000_000, total, total * BATCH, 0.5)
    assert schedule_fields(new) == {"schedule": "wsd", "total_steps": 1220, "budget_point": True, "parent": "",
                                    "branch_step": None}
    assert schedule_fields(flagged)["budget_point"] and not schedule_fields(old)["budget_point"]  # old rule
    assert schedule_fields(old)["schedule"] == "cosine"
    reevaluated = {**old, "schedule": "cosine", "total_steps": 0, "budget_point": False, "parent": "",
                   "branch_step": 0}  # an old checkpoint's meta read with the new defaults
    assert not schedule_fields(reevaluated)["budget_point"]  # old rule: 9,994,240 < 10M
    assert schedule_fields({**reevaluated, "samples_seen": 10_000_000})["budget_point"]
    assert [p.step for p in scaling_points([new], final_only=True)] == [1220]
    assert not schedule_fields({**new, "step": 610})["budget_point"]


def test_runs_of_different_budgets_are_never_joined():
    """A 10M run's mid checkpoint and a 50M run's checkpoint at the same samples seen stay on separate lines."""
    at = 610 * BATCH
    records = [*paper_run("capsfusion", 10_000_000, lambda d: 0.8),  # mid checkpoint at step 610
               record("capsfusion-50m", "capsfusion", 50_000_000, 610, at, 0.7, total_steps=6103),
               record("capsfusion-50m", "capsfusion", 50_000_000, 6103, 6103 * BATCH, 0.95, total_steps=6103)]
    points = scaling_points(records)
    [line] = curves(points)["coco_karpathy_test"].values()
    assert [(p.run_name, p.samples_seen) for p in line] == [("capsfusion-cosine-10m", 9_994_240),
                                                           ("capsfusion-50m", 6103 * BATCH)]
    traces = runs(points)["coco_karpathy_test"]
    assert sorted(len({p.num_samples for p in trace}) for trace in traces.values()) == [1, 1]
    assert sorted([p.step for p in trace] for trace in traces.values()) == [[610, 1220], [610, 6103]]

    fig, _ = figure(points, "CIDEr", intermediate=True)
    lines = fig.axes[0].get_lines()
    [budget] = [line for line in lines if line.get_gid() == "budget"]
    assert list(budget.get_xdata()) == [9_994_240, 6103 * BATCH]  # no mid checkpoint in the budget line
    run_lines = [sorted(line.get_xdata()) for line in lines if line.get_gid() == "run"]
    assert sorted(run_lines) == [[at, 9_994_240], [at, 6103 * BATCH]]
    assert sorted(x for line in lines if line.get_gid() == "intermediate" for x in line.get_xdata()) == [at, at]
    assert all(line.get_markerfacecolor() == "none" for line in lines if line.get_gid() == "intermediate")
    fig, _ = figure(points, "CIDEr")  # default: budget points only
    assert {line.get_gid() for line in fig.axes[0].get_lines()} <= {"budget", None}


def test_plot_written_from_results_files(tmp_path):
    _, second = paper_results(tmp_path)
    out = tmp_path / "plots" / "scaling"
    assert plot_main([str(tmp_path / "a"), str(second), "--out", str(out)]) == 0  # a directory is searched
    for suffix in (".png", ".svg", ".csv", ".md"):
        assert out.with_suffix(suffix).stat().st_size > 200, suffix
    assert out.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 2 * 4 * 2 + 4 + 1  # every checkpoint, budget point or not
    assert {r["benchmark"] for r in rows} == {"coco_karpathy_test", "nocaps_val"}
    [end] = [r for r in rows if r["run_name"] == "capsfusion-cosine-10m" and r["step"] == "1220"]
    assert (end["schedule"], end["budget_point"], end["samples_seen"]) == ("cosine", "yes", "9994240")
    assert float(end["ci_low"]) == pytest.approx(float(end["value"]) - 1) and end["parent"] == ""
    [mid] = [r for r in rows if r["run_name"] == "capsfusion-cosine-10m" and r["step"] == "610"]
    assert (mid["budget_point"], mid["ci_low"], mid["ci_high"]) == ("no", "", "")
    [old] = [r for r in rows if r["run_name"] == "raw-100m"]
    assert (old["schedule"], old["budget_point"], old["total_steps"]) == ("cosine", "no", "")  # 12207 steps < 1e8

    markdown = out.with_suffix(".md").read_text()
    budget_table, fit_table = markdown.split("Fits of")
    assert "| coco_karpathy_test | capsfusion | cosine | capsfusion-cosine-10m | 1220 | 9,994,240 |" in budget_table
    assert "| step | samples seen | CIDEr | CI low | CI high | parent | branch step |" in budget_table
    assert "| capsfusion-wsd-decay1220 | 1220 | 9,994,240 | 101.00 |  |  | /runs/capsfusion-wsd/" in budget_table
    assert "| 610 |" not in budget_table and "raw" not in budget_table
    assert "| coco_karpathy_test | capsfusion | cosine | 120 | 900 | 0.35 | 4 |" in fit_table
    assert "| coco_karpathy_test | capsfusion | wsd |  |  |  |  | no fit: 2 point(s) with D > 0, need 4 |" in fit_table
    assert plot_main([str(tmp_path / "a"), "--final-only", "--out", str(tmp_path / "f")]) == 0  # the default
    assert plot_main([str(tmp_path / "a"), "--intermediate", "--out", str(tmp_path / "i")]) == 0


def test_lines_per_source_and_schedule_with_bands(tmp_path):
    first, second = paper_results(tmp_path)
    records = [json.loads(line) for f in (first, second) for line in f.read_text().splitlines()]
    fig, fits = figure(scaling_points(records), "CIDEr")
    coco = next(ax for ax in fig.axes if ax.get_title() == "coco_karpathy_test")
    labels = [line.get_label() for line in coco.get_lines() if line.get_gid() == "budget"]
    assert labels == ["capsfusion (cosine)", "capsfusion (wsd)", "synthetic (cosine)"]
    assert len(coco.collections) >= 3  # a band (and error bars) per line with intervals
    assert fits[("coco_karpathy_test", "synthetic", "cosine")][0].c == pytest.approx(0.3, rel=1e-3)
    branch = runs(scaling_points(records))["coco_karpathy_test"][("capsfusion-wsd-decay1220", 10_000_000,
                                                                  "/runs/capsfusion-wsd/checkpoints/global_step976")]
    assert [(p.run_name, p.step) for p in branch] == [("capsfusion-wsd", 976), ("capsfusion-wsd-decay1220", 1220)]
    fig, _ = figure(scaling_points(records[:8]), "CIDEr")  # one schedule family: the source alone
    assert [line.get_label() for line in fig.axes[0].get_lines() if line.get_gid() == "budget"] == ["capsfusion"]


def test_fit_recovers_a_known_power_law_and_refuses_too_few_or_noisy_points():
    samples = np.geomspace(1e6, 1e8, 6)
    fit, note = fit_saturating_power_law([0, *samples], [1.0, *(120 - 900 * samples ** -0.35)])  # D = 0 is skipped
    assert fit is not None and fit.num_points == 6 and "rmse" in note
    assert (fit.a, fit.b, fit.c) == pytest.approx((120, 900, 0.35), rel=1e-3)
    assert fit(np.array([1e8]))[0] == pytest.approx(120 - 900 * 1e8 ** -0.35, rel=1e-6)
    fit, note = fit_saturating_power_law([0, 1e6, 1e7, 1e8], [1, 50, 60, 65])
    assert fit is None and note == "no fit: 3 point(s) with D > 0, need 4"
    fit, note = fit_saturating_power_law(samples, [50, 62, 48, 60, 47, 61])  # noisy, not monotone
    assert fit is None and note.startswith("no fit: ") and "bound" in note
    fit, note = fit_saturating_power_law(samples, 0.5 * np.log(samples), metric="Bleu_4")  # never saturates
    assert fit is None and "a at a bound (a in [0, 100]" in note


def test_points_keep_the_latest_evaluation_and_old_records_still_plot(tmp_path):
    records = [record("r", "raw", 100, 1, 50, 0.5), record("r", "raw", 100, 2, 100, 0.7)]  # no schedule fields
    newer = {**record("r", "raw", 100, 2, 100, 0.9), "evaluated_at": "2026-11-24T00:00:00Z"}
    points = scaling_points([newer, *records])
    assert [(p.step, p.value, p.budget_point, p.ci_low) for p in points] == [(1, 50.0, False, None),
                                                                             (2, 90.0, True, None)]
    assert [p.step for p in scaling_points(records, final_only=True)] == [2]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert plot_main([str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "old")]) == 0
    assert "| r | 2 | 100 | 70.00 |  |  |\n" in (tmp_path / "old.md").read_text()
    assert plot_main([str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert plot_main([str(tmp_path / "r.jsonl"), "--metric", "METEOR", "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "mid.jsonl").write_text(json.dumps(records[0]) + "\n")  # no budget point yet
    assert plot_main([str(tmp_path / "mid.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert plot_main([str(tmp_path / "mid.jsonl"), "--intermediate", "--out", str(tmp_path / "x")]) == 0
