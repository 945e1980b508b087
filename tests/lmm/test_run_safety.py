"""Resume guard, damaged-checkpoint fallback, sample ledger and stop-signal relay, without training (the end-to-end
runs are in tests/test_end_to_end.py and tests/slurm)."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from conftest import REPO_ROOT
from lmm.config import load_config
from lmm.training import resume_guard, sample_ledger
from lmm.training.checkpoint import META_FILE, newest_resumable, unreadable


def demo_config(*overrides):
    return load_config(REPO_ROOT / "configs/demo.yaml", ["data.train_manifest=", *overrides]).to_dict()


def test_guard_refuses_identity_keys_with_a_diff_and_records_the_others(tmp_path):
    saved = demo_config()
    with pytest.raises(resume_guard.RunChangedError) as refused:
        resume_guard.check(saved, demo_config("data.caption_source=raw", "model.llm.hidden_size=64",
                                              "train.log_every=3"), tmp_path, 25)
    message = str(refused.value)
    assert "data.caption_source: 'capsfusion' (run) -> 'raw' (now)" in message
    assert "model.llm.hidden_size: 128 (run) -> 64 (now)" in message and "train.log_every: " not in message
    assert "(newest: step 25)" in message
    mixed = demo_config("data.caption_source=mixed", "data.mix={raw: 0.5, synthetic: 0.5}")
    with pytest.raises(resume_guard.RunChangedError, match="data.mix.raw"):
        resume_guard.check(saved, mixed, tmp_path, 1)
    for key in ("train.global_batch_size=128", "train.lr=1e-3", "train.zero_stage=3", "data.seed=1",
                "data.num_samples=12288", "train.precision=bf16", "model.vision.pretrained=/w.pt"):
        with pytest.raises(resume_guard.RunChangedError):
            resume_guard.check(saved, demo_config(key, "model.allow_random_frozen=true"), tmp_path, 1)

    allowed = resume_guard.check(saved, demo_config("train.max_steps=7", "data.num_workers=4",
                                                    "eval.num_beams=1"), tmp_path, 5)
    assert allowed == {"train.max_steps": (None, 7), "data.num_workers": (1, 4), "eval.num_beams": (3, 1)}
    resume_guard.record(tmp_path, 5, allowed)
    resume_guard.record(tmp_path, 6, {})  # nothing changed: nothing written
    (entry,) = [json.loads(line) for line in (tmp_path / resume_guard.HISTORY_FILE).read_text().splitlines()]
    assert entry["resumed_at_step"] == 5 and entry["changed"]["data.num_workers"] == {"was": 1, "now": 4}


def fake_checkpoint(root, step, files):
    path = root / "checkpoints" / f"global_step{step}"
    path.mkdir(parents=True)
    for name in files:
        torch.save({"step": step}, path / name)
    sizes = {name: (path / name).stat().st_size for name in files}
    (path / META_FILE).write_text(json.dumps({"step": step, "files": sizes}))
    return path


def test_damaged_newest_checkpoints_are_skipped_naming_them(tmp_path, caplog):
    names = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    first, second, third = (fake_checkpoint(tmp_path, step, names) for step in (2, 4, 6))
    assert newest_resumable(tmp_path) == third and unreadable(third) is None
    model = third / names[0]
    model.write_bytes(model.read_bytes()[:200])  # truncated
    (second / names[1]).unlink()
    assert newest_resumable(tmp_path) == first
    err = caplog.text
    assert f"skipping checkpoint {third}: {names[0]} has 200 bytes" in err
    assert f"skipping checkpoint {second}: {names[1]} is missing" in err
    # an older checkpoint without a file list (before meta.json had one) is judged by the zip directories
    (first / META_FILE).write_text(json.dumps({"step": 2}))
    assert unreadable(first) is None
    with zipfile.ZipFile(first / names[0], "a") as archive:
        archive.writestr("junk", b"x" * 100)
    (first / names[0]).write_bytes((first / names[0]).read_bytes()[:-50])
    assert "not a readable torch file" in unreadable(first)
    assert newest_resumable(tmp_path, verbose=False) is None


def test_ledger_flushes_cuts_back_and_counts(tmp_path):
    for rank, keys in ((0, ["a", "b"]), (1, ["c", "d"])):
        ledger = sample_ledger.SampleLedger(tmp_path, rank, enabled=True)
        ledger.add(1, keys[:1])
        ledger.add(2, keys[1:])
        ledger.flush()
    with open(tmp_path / "ledger" / "rank0.tsv", "a") as f:
        f.write("3\ta\n4\tpartial")  # a step after the resumed checkpoint, and a torn last line
    sample_ledger.cut_back(tmp_path, 2)
    steps = sample_ledger.read(tmp_path)
    assert steps == {1: ["a", "c"], 2: ["b", "d"]}
    summary = sample_ledger.summarise({**steps, 4: ["a", "z"]}, ["a", "b", "c", "d", "e"])
    assert summary == {"steps": 3, "last_step": 4, "trained": 6, "unique": 5, "repeats": 1, "unread": 1,
                       "foreign": 1, "coverage": 0.8, "missing_steps": [3]}
    assert not sample_ledger.SampleLedger(tmp_path / "off", 0, enabled=False).add(1, ["x"])
    assert not (tmp_path / "off").exists()


RELAY = """
import subprocess, sys, time
from torch.utils.data import DataLoader, IterableDataset
from lmm.training.preemption import STOP, forward_to_trainer

class Numbers(IterableDataset):
    def __iter__(self):
        n = 0
        while True:
            time.sleep(0.01)
            n += 1
            yield n

STOP.install()
it = iter(DataLoader(Numbers(), batch_size=2, num_workers=2, worker_init_fn=forward_to_trainer,
                     persistent_workers=True))
next(it)
subprocess.run(["kill", "-TERM", str(it._workers[0].pid)])  # as Slurm does: from another process
for _ in range(20):
    next(it)
print("stop requested:", STOP.signum)
"""


def test_a_loader_worker_relays_sigterm_to_the_trainer_and_keeps_serving(tmp_path):
    """PyTorch makes SIGTERM fatal to a worker (the run would die without a checkpoint); the relay passes it on,
    and the trainer's own shutdown of its workers still works (the process exits)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", RELAY], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"stop requested: {int(signal.SIGTERM)}" in result.stdout
    assert time.monotonic() - started < 60


def test_guard_reads_keys_a_saved_config_predates_at_their_defaults(tmp_path):
    """A run saved before a config key existed resumes: the missing key counts at its default, and a new value
    for it is a change like any other (refused where it changes the run, recorded where it may)."""
    saved = demo_config()
    del saved["train"]["peak_tflops"], saved["train"]["schedule"]  # keys this project added after runs existed
    assert resume_guard.check(saved, demo_config(), tmp_path, 1) == {}
    assert resume_guard.check(saved, demo_config("train.peak_tflops=100"), tmp_path, 1) == {
        "train.peak_tflops": (None, 100.0)}
    with pytest.raises(resume_guard.RunChangedError, match="train.schedule: 'cosine' \\(run\\) -> 'wsd'"):
        resume_guard.check(saved, demo_config("train.schedule=wsd"), tmp_path, 1)


def test_guard_accepts_another_spelling_of_the_same_files(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tokenizer.model").write_text("x")
    monkeypatch.chdir(tmp_path)
    saved = demo_config("output_dir=run", "model.tokenizer.path=run/tokenizer.model")
    moved = demo_config(f"output_dir={tmp_path / 'run'}", f"model.tokenizer.path={tmp_path / 'run/tokenizer.model'}")
    assert resume_guard.check(saved, moved, tmp_path, 1) == {}
    with pytest.raises(resume_guard.RunChangedError, match="model.tokenizer.path"):
        resume_guard.check(saved, demo_config("output_dir=run", "model.tokenizer.path=other.model"), tmp_path, 1)


def test_a_branch_is_refused_a_missing_parent_or_other_data(tmp_path):
    """``train.init_from`` must name a complete checkpoint, before the branch's end, of a run whose config differs
    only where a branch may (name, budget, decay): anything else would splice two experiments."""
    from lmm.config import ConfigError, load_config
    from lmm.training.trainer import parent_checkpoint

    def branch(init_from, *extra):
        return load_config(REPO_ROOT / "configs/demo.yaml", ["data.train_manifest=", "train.schedule=wsd",
                                                             f"train.init_from={init_from}", *extra])

    with pytest.raises(ConfigError, match="no meta.json"):
        parent_checkpoint(branch(tmp_path / "missing" / "checkpoints" / "global_step3"))
    run = tmp_path / "main"
    parent = fake_checkpoint(run, 100, ["mp_rank_00_model_states.pt"])
    meta = json.loads((parent / META_FILE).read_text())
    (parent / META_FILE).write_text(json.dumps({**meta, "run_name": "main", "caption_source": "capsfusion",
                                                "num_samples": 8192, "samples_seen": 3200, "zero_stage": 2,
                                                "config_digest": "x"}))
    (run / "config.json").write_text(json.dumps(demo_config("train.schedule=wsd")))
    with pytest.raises(ConfigError, match="is at step 100, not before the branch's last step 64"):
        parent_checkpoint(branch(parent, "train.budget_samples=2048"))
    with pytest.raises(resume_guard.RunChangedError, match="data.seed: 0 \\(parent\\) -> 1 \\(branch\\)"):
        parent_checkpoint(branch(parent, "train.budget_samples=4096", "data.seed=1"))
    assert parent_checkpoint(branch(parent, "train.budget_samples=4096", "run_name=b")) == parent
