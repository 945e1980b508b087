"""The checkpoint watcher: each complete checkpoint evaluated once as it lands, never a half-written one, nothing
repeated after a restart, and its stopping rules; time is injected, so nothing sleeps."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from launch.evaluate import main as evaluate
from lmm.config import ExperimentConfig, apply_overrides
from lmm.distributed import DistEnv
from lmm.eval.evaluator import Evaluator
from lmm.eval.results import read_results
from lmm.eval.watcher import CheckpointWatcher, WatchPolicy
from lmm.training.checkpoint import META_FILE, RUN_CONFIG_FILE

FAST = ["eval.meteor=false"]


class FakeTime:
    def __init__(self, on_sleep=None):
        self.now, self.sleeps, self.on_sleep = 0.0, [], on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()


def test_checkpoints_are_evaluated_once_as_they_land(zero3_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(zero3_run, run, ignore=shutil.ignore_patterns("tensorboard", "eval_results.jsonl*"))
    landing = []  # meta.json of steps 1 and 2 held back: those checkpoints are "still being written"
    for step in (1, 2):
        meta = run / "checkpoints" / f"global_step{step}" / META_FILE
        landing.append((meta, meta.read_text()))
        meta.unlink()

    def land_next():
        if landing:
            meta, text = landing.pop(0)
            meta.write_text(text)

    evaluated, results = [], tmp_path / "results.jsonl"
    evaluator = Evaluator([], FAST, results, DistEnv(0, 0, 1))

    def evaluate_and_count(checkpoint: Path) -> None:
        evaluated.append(checkpoint.name)
        evaluator(checkpoint)

    fake = FakeTime(on_sleep=land_next)
    watcher = CheckpointWatcher(run, evaluator.is_done, WatchPolicy(poll_seconds=30), fake.clock, fake.sleep)
    reason = watcher.run(evaluate_and_count)
    assert evaluated == ["global_step0", "global_step1", "global_step2"]
    assert fake.sleeps == [30, 30] and "final checkpoint (step 2)" in reason
    assert sorted(r["step"] for r in read_results(results)) == [0, 1, 2]

    evaluated.clear()  # a restarted watcher finds everything done and stops at once
    restarted = CheckpointWatcher(run, evaluator.is_done, WatchPolicy(poll_seconds=30), fake.clock, fake.sleep)
    assert "final checkpoint" in restarted.run(evaluate_and_count) and evaluated == []
    assert evaluate(["--watch", str(run), "--results", str(results), *FAST]) == 0  # the command, restarted

    evaluator.overrides = [*FAST, "eval.num_beams=1"]  # a changed protocol is new work; records are replaced
    assert "final checkpoint" in restarted.run(evaluate_and_count) and len(evaluated) == 3
    records = read_results(results)
    assert len(records) == 3 and {r["protocol"]["num_beams"] for r in records} == {1}


def fake_run(root: Path, steps: list[int], half_written: list[int] = ()) -> Path:
    """A run directory with config.json (4 steps in all) and checkpoint folders holding only meta.json."""
    config = apply_overrides(ExperimentConfig().to_dict(), ["model.allow_random_frozen=true", "data.num_samples=64", "train.global_batch_size=16",
                                                            "train.micro_batch_size=4"])
    root.mkdir(parents=True)
    (root / RUN_CONFIG_FILE).write_text(json.dumps(config))
    for step in [*steps, *half_written]:
        folder = root / "checkpoints" / f"global_step{step}"
        folder.mkdir(parents=True)
        if step not in half_written:
            (folder / META_FILE).write_text(json.dumps({
                "run_name": "r", "caption_source": "raw", "num_samples": 64, "step": step, "samples_seen": 16 * step,
                "zero_stage": 2, "config_digest": "x"}))
    return root


def watch(run: Path, policy: WatchPolicy, done: set[str] | None = None):
    done = set() if done is None else done
    fake = FakeTime()
    watcher = CheckpointWatcher(run, lambda c: c.name in done, policy, fake.clock, fake.sleep)
    order = []

    def evaluate_one(checkpoint: Path) -> None:
        order.append(checkpoint.name)
        done.add(checkpoint.name)

    return watcher.run(evaluate_one), order, fake.sleeps


def test_idle_timeout_ends_a_watch_whose_final_checkpoint_never_comes(tmp_path):
    run = fake_run(tmp_path / "run", [0, 1], half_written=[2])
    reason, order, sleeps = watch(run, WatchPolicy(poll_seconds=10, idle_timeout=25))
    assert order == ["global_step0", "global_step1"] and sleeps == [10, 10, 10]
    assert "no new checkpoint for 25 s" in reason


def test_stop_after_step(tmp_path):
    run = fake_run(tmp_path / "run", [0, 1, 2, 3])
    reason, order, sleeps = watch(run, WatchPolicy(stop_after_step=2))
    assert order == ["global_step0", "global_step1", "global_step2"] and sleeps == []
    assert "up to step 2" in reason
    reason, order, _ = watch(run, WatchPolicy(stop_after_step=2), done={"global_step0"})
    assert order == ["global_step1", "global_step2"]


def test_final_checkpoint_ends_the_watch(tmp_path):
    run = fake_run(tmp_path / "run", [0, 2, 4])
    reason, order, sleeps = watch(run, WatchPolicy())
    assert order == ["global_step0", "global_step2", "global_step4"] and sleeps == []
    assert "final checkpoint (step 4)" in reason


def test_a_run_that_has_not_started_is_waited_for(tmp_path):
    reason, order, sleeps = watch(tmp_path / "not_yet", WatchPolicy(poll_seconds=5, idle_timeout=12))
    assert order == [] and sleeps == [5, 5, 5] and "no new checkpoint" in reason
