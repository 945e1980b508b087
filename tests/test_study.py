"""lmm-study end to end on this machine (local backend, 2 DeepSpeed ranks, tiny models): a WSD main run, a decay
branch that continues the main run's data order and decays to its budget, one eval per budget point, the status
table and the plot. A re-run redoes nothing; after a lost result it redoes only that."""
import contextlib
import io
import json
import re

import pytest
import yaml
from conftest import REPO_ROOT, tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launch.check_ledger import main as check_ledger
from launch.study import main as study_main
from lmm.eval.results import read_results
from lmm.study import samples_processed
from lmm.study_runner import Study
from lmm.training import sample_ledger
from lmm.training.checkpoint import complete_checkpoints, read_meta

STUDY = {"name": "tiny", "config": str(REPO_ROOT / "configs/demo.yaml"), "caption_sources": ["capsfusion"],
         "budgets": [64, 256], "schedules": ["wsd"], "decay_fraction": 0.25,
         "overrides": ["train.checkpoint_at_start=false", "train.checkpoint_every=1000", "train.sample_ledger=true",
                       "train.lr=6e-3", "train.min_lr=6e-4"]}


def run_study(path, overrides):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = study_main(["run", str(path), "--backend", "local", *overrides])
    return code, out.getvalue()


def lrs(run_dir):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/lr")}


@pytest.fixture(scope="module")
def study(demo_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(out)}))
    overrides = [o for o in tiny_overrides(demo_world, out) if not o.startswith("output_dir=")]
    code, log = run_study(path, overrides)
    return out, path, overrides, code, log


def test_the_study_trains_legs_and_branches_then_evaluates_every_budget_point(study):
    out, path, overrides, code, log = study
    assert code == 0
    started = re.findall(r"INFO lmm\.study_runner: (train .*)", log)
    # the local backend trains the main run straight through (its branch points are checkpoint steps)
    assert started == ["train capsfusion/wsd-main", "train capsfusion/wsd-64"]
    records = read_results(out / "results.jsonl")
    assert sorted((r["run_name"], r["step"], r["budget_point"], r["schedule"]) for r in records) == [
        ("tiny-capsfusion-wsd-64", 4, True, "wsd"), ("tiny-capsfusion-wsd-main", 16, True, "wsd")]
    assert all(r["intervals"]["CIDEr"][0] <= r["metrics"]["CIDEr"] <= r["intervals"]["CIDEr"][1] for r in records)
    assert (out / "scaling.png").stat().st_size > 1000 and "wsd" in (out / "scaling.md").read_text()
    assert "eval capsfusion/wsd-64 step 4" in log and "done" in log  # the status table
    # 16 main steps + the branch's 1 decay step, at 16 samples a step (two cosine runs: 20 steps)
    assert samples_processed(Study(str(path), overrides).jobs) == 17 * 16


def test_branches_continue_the_main_runs_data_and_decay_to_their_budget(study):
    out = study[0]
    main, branch = out / "capsfusion" / "wsd-main", out / "capsfusion" / "wsd-64"
    main_keys, branch_keys = sample_ledger.read(main), sample_ledger.read(branch)
    assert sorted(branch_keys) == [1, 2, 3, 4] and all(branch_keys[s] == main_keys[s] for s in branch_keys)
    assert check_ledger([str(branch)]) == 0
    assert lrs(main)[16] == pytest.approx(3e-3)  # the first update trains (warmup 2: half the peak)
    assert lrs(branch)[64] == pytest.approx(6e-4) and lrs(main)[64] == pytest.approx(6e-3)  # only the branch decays
    assert lrs(main)[256] == pytest.approx(6e-4)
    [checkpoint] = complete_checkpoints(branch)
    meta = read_meta(checkpoint)
    parent = main / "checkpoints" / "global_step3"
    assert (meta.step, meta.num_samples, meta.total_steps, meta.budget_point) == (4, 64, 4, True)
    assert (meta.parent, meta.branch_step) == (str(parent.resolve()), 3)
    assert [(m.step, m.budget_point) for m in map(read_meta, complete_checkpoints(main))] == [
        (3, False), (16, True)]
    assert json.loads((branch / "config.json").read_text())["train"]["init_from"] == str(parent)


def test_a_rerun_redoes_nothing_and_then_only_what_is_missing(study):
    out, path, overrides, _, _ = study
    code, log = run_study(path, overrides)
    assert code == 0 and "lmm.study_runner: train" not in log and "lmm.study_runner: evaluating" not in log
    results = out / "results.jsonl"
    kept = [line for line in results.read_text().splitlines() if '"step": 4,' not in line]
    results.write_text("\n".join(kept) + "\n")
    code, log = run_study(path, overrides)
    assert code == 0 and "lmm.study_runner: train" not in log and "lmm.study_runner: evaluating 1 budget point(s)" in log
    assert len(read_results(results)) == 2
