"""Two real DeepSpeed ranks (torchrun, gloo, ZeRO-2): the loss falls, a run resumes on another number of ranks and
workers (past a damaged checkpoint) reading every sample once, and the checkpoints evaluate and plot. Exact
resume (same weights as an uninterrupted run) is tested through Slurm's signals in tests/slurm and for lean
checkpoints in tests/lmm/test_zero3_freeze_and_export.py."""
import json
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO_ROOT, tiny_overrides
from lmm.torchrun import torchrun
from launch.check_ledger import planned_keys
from lmm.training import sample_ledger
from lmm.training.checkpoint import complete_checkpoints, read_meta

STEPS = 8  # 128 samples / global batch 16


def pretrain(world, out, *extra, ranks=2):
    return torchrun(ranks, "launch.pretrain", ["--config", str(REPO_ROOT / "configs/demo.yaml"),
                                           *tiny_overrides(world, out, "data.num_samples=128",
                                                           "train.checkpoint_every=4", "train.lr=6e-3",
                                                           "train.min_lr=6e-4", *extra)],
                    capture=True, timeout=600)


def scalars(run_dir, tag):
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def runs(demo_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, pretrain(demo_world, root / "full").stdout


def test_loss_falls_and_scalars_are_logged(runs):
    root, _ = runs
    loss = scalars(root / "full", "train/loss")
    assert [s for s, _ in loss] == [16 * i for i in range(1, STEPS + 1)]  # x axis: samples seen
    assert loss[-1][1] < loss[0][1] - 0.3
    for tag in ("train/lr", "train/grad_norm", "perf/samples_per_s", "perf/tokens_per_s", "perf/tflops_per_device",
                "perf/data_wait_fraction"):
        assert len(scalars(root / "full", tag)) == STEPS
    assert all(0 <= wait <= 1 for _, wait in scalars(root / "full", "perf/data_wait_fraction"))
    assert all(tflops > 0 for _, tflops in scalars(root / "full", "perf/tflops_per_device"))


def test_checkpoints_carry_step_and_samples(runs):
    root, _ = runs
    metas = [read_meta(c) for c in complete_checkpoints(root / "full")]
    assert [(m.step, m.samples_seen) for m in metas] == [(0, 0), (4, 64), (8, 128)]
    assert {m.caption_source for m in metas} == {"capsfusion"}


def test_checkpoints_evaluate_on_one_rank_and_plot(runs, tmp_path):
    from launch.evaluate import main as evaluate
    from launch.plot import main as plot

    root, _ = runs
    results = tmp_path / "results.jsonl"
    assert evaluate([str(root / "full"), "--results", str(results)]) == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 4, 8]
    assert all(0 <= r["metrics"]["CIDEr"] < 10 and r["protocol"]["num_beams"] == 2 for r in records)
    events = EventAccumulator(str(root / "full" / "tensorboard" / "eval"))
    events.Reload()
    assert sorted({e.step for e in events.Scalars("eval/demo_world_test/CIDEr")}) == [0, 64, 128]
    assert plot([str(results), "--out", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def elastic(demo_world, tmp_path_factory):
    """2 ranks x 2 workers to step 5, 1 rank x 1 worker to step 7 (its step-7 checkpoint is then truncated), 2
    ranks x 1 worker to the end from step 6: ZeRO partitions and loader positions re-dealt twice."""
    out = tmp_path_factory.mktemp("elastic") / "run"
    logs = [pretrain(demo_world, out, "train.sample_ledger=true", "data.num_workers=2", "train.max_steps=5").stdout,
            pretrain(demo_world, out, "train.sample_ledger=true", "train.max_steps=7", "train.checkpoint_every=1",
                     ranks=1).stdout]
    damaged = complete_checkpoints(out)[-1] / "mp_rank_00_model_states.pt"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    logs.append(pretrain(demo_world, out, "train.sample_ledger=true").stdout)
    return out, logs


def test_a_resumed_run_logs_its_story_on_rank_0(elastic):
    """The third leg's log: time- and rank-stamped lines telling what the run is, where it resumed, each checkpoint
    with its time, and how it ended; rank 1 logs no INFO lines."""
    out, logs = elastic
    story = [line for line in logs[2].splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[rank 0\] ", line)]
    expected = [r"INFO lmm\.training\.trainer: run \S+: capsfusion captions, 128 samples in 8 steps of 16 \(= 4 per "
                r"rank x 2 accumulation x 2 ranks\), cosine schedule .* config digest [0-9a-f]{12}",
                rf"WARNING lmm\.training\.checkpoint: skipping checkpoint {out}/checkpoints/global_step7",
                rf"INFO lmm\.training\.trainer: resumed from {out}/checkpoints/global_step6 \(step 6, samples seen 96\)"
                r" on 2 ranks \(re-partitioned\)",
                r"INFO lmm\.training\.metrics: step 7/8 samples 112 loss=\S+ lr=\S+ .*data_wait_fraction=",
                rf"INFO lmm\.training\.trainer: checkpoint: step 8 \(samples seen 128\) saved to "
                rf"{out}/checkpoints/global_step8 in \d+\.\d s",
                rf"INFO lmm\.training\.trainer: finished at step 8 of 8 \(samples seen 128\) after \d+ s; outputs in "
                rf"{out}"]
    found = [next((i for i, line in enumerate(story) if re.search(pattern, line)), None) for pattern in expected]
    assert None not in found and found == sorted(found), (found, story)
    assert "[rank 1] INFO" not in logs[2]
    assert "No pretrained weights loaded" not in logs[2]  # open_clip's false warning is dropped (lmm.logs)


def test_resume_on_other_ranks_reads_every_sample_once_and_keeps_the_schedule(elastic, runs):
    from launch.check_ledger import main as check_ledger

    out, logs = elastic
    assert "on 1 ranks (re-partitioned)" in logs[1] and "on 2 ranks (re-partitioned)" in logs[2]
    assert "skipping checkpoint" in logs[2] and "global_step7: mp_rank_00_model_states.pt has 1,000 bytes" in logs[2]
    firsts = [re.search(r"INFO lmm\.training\.metrics: step (\d+)/", log).group(1) for log in logs]
    assert firsts == ["1", "6", "7"]  # the third leg fell back to the step-6 checkpoint
    full = dict(scalars(runs[0] / "full", "train/lr"))
    elastic_lr = dict(scalars(out, "train/lr"))
    assert elastic_lr == pytest.approx(full)  # the LR schedule went on across both re-partitions
    summary = sample_ledger.summarise(sample_ledger.read(out), planned_keys(out))
    assert summary == {**summary, "steps": STEPS, "trained": 128, "repeats": 0, "unread": 0, "foreign": 0,
                       "missing_steps": []}
    assert check_ledger([str(out)]) == 0
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[0]["changed"]["data.num_workers"] == {"was": 2, "now": 1}
    assert history[0]["resumed_at_step"] == 5 and history[1]["resumed_at_step"] == 6

