"""No code from files: a checkpoint whose pickle would run a command is refused, naming the file, under eval,
export and resume, and by the vision loader; clean ZeRO-2 and ZeRO-3 checkpoints still load weights-only."""
import json
import os
import shutil

import pytest
import torch

from conftest import REPO_ROOT, tiny_overrides
from launch.evaluate import main as evaluate_main
from launch.export import main as export_main
from lmm.torchrun import torchrun
from lmm.config import VisionConfig
from lmm.eval.loading import load_eval_model
from lmm.models.vision import build_vision_tower
from lmm.safe_loading import FORCE_WEIGHTS_ONLY, UnsafeCheckpointError, deepspeed_checkpoint_types, safe_loading
from lmm.training.checkpoint import META_FILE, complete_checkpoints


class Payload:
    """Unpickling it runs ``touch marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def zero2_run(demo_world, tmp_path_factory):
    """The one extra run of this file: a tiny 1-rank ZeRO-2 run, one step, one checkpoint."""
    out = tmp_path_factory.mktemp("zero2") / "run"
    torchrun(1, "launch.pretrain", ["--config", str(REPO_ROOT / "configs/demo.yaml"),
                                    *tiny_overrides(demo_world, out, "run_name=tiny-zero2", "train.zero_stage=2",
                                                    "data.num_samples=48", "train.max_steps=1",
                                                    "train.checkpoint_at_start=false")],
             capture=True, timeout=900)
    return out


def poisoned_copy(run_dir, tmp_path):
    """A copy of the run (config + newest checkpoint) whose model-state files also pickle a ``Payload``; meta.json
    keeps their true sizes, as an attacker's copy would. Returns (run copy, checkpoint, poisoned files, marker)."""
    source = complete_checkpoints(run_dir)[-1]
    run = tmp_path / "poisoned"
    checkpoint = run / "checkpoints" / source.name
    shutil.copytree(source, checkpoint)
    config = json.loads((run_dir / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "output_dir": str(run)}))
    marker = tmp_path / "payload-ran"
    files = sorted(checkpoint.glob("*model_states.pt"))
    meta = json.loads((checkpoint / META_FILE).read_text())
    for file in files:
        state = torch.load(file, map_location="cpu", weights_only=True)
        torch.save({**state, "extra": Payload(marker)}, file)
        if meta.get("files"):
            meta["files"][file.name] = file.stat().st_size
    (checkpoint / META_FILE).write_text(json.dumps(meta))
    return run, checkpoint, files, marker


def assert_refused(message, files, marker):
    assert not marker.exists(), "the pickled command ran"
    assert any(f"refusing to unpickle posix.system from {f}: not a plain weights file" in message
               for f in files), message[-2000:]


def test_eval_refuses_a_poisoned_checkpoint(zero3_run, tmp_path, capsys):
    _, checkpoint, files, marker = poisoned_copy(zero3_run, tmp_path)
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_eval_model(checkpoint)
    assert_refused(str(refused.value), files, marker)
    assert evaluate_main([str(checkpoint), "--results", str(tmp_path / "results.jsonl")]) == 2
    assert_refused(capsys.readouterr().err, files, marker)
    assert not (tmp_path / "results.jsonl").exists()


def test_export_refuses_a_poisoned_checkpoint(zero2_run, tmp_path, capsys):
    _, checkpoint, files, marker = poisoned_copy(zero2_run, tmp_path)
    assert export_main([str(checkpoint), str(tmp_path / "export")]) == 2
    assert_refused(capsys.readouterr().err, files, marker)
    assert not (tmp_path / "export" / "lmm_export.json").exists()


def test_resume_refuses_a_poisoned_checkpoint(zero2_run, tmp_path):
    """Needs ``lmm.training.checkpoint.resume`` to load under ``safe_loading``."""
    run, _, files, marker = poisoned_copy(zero2_run, tmp_path)
    with pytest.raises(RuntimeError) as failed:
        torchrun(1, "launch.pretrain", ["--config", str(run / "config.json")], capture=True, timeout=600)
    assert_refused(str(failed.value), files, marker)


def test_vision_weights_refuse_a_poisoned_file(saved_clip, tmp_path):
    file, marker = tmp_path / "clip.pt", tmp_path / "payload-ran"
    torch.save({**saved_clip.state_dict(), "extra": Payload(marker)}, file)
    with pytest.raises(UnsafeCheckpointError) as refused:
        build_vision_tower(VisionConfig(name="EVA01-tiny-14", pretrained=str(file)))
    assert_refused(str(refused.value), [file], marker)


def test_safe_loading_forces_weights_only_and_restores(tmp_path, monkeypatch):
    file, marker = tmp_path / "any.pt", tmp_path / "payload-ran"
    torch.save([Payload(marker)], file)
    monkeypatch.setenv(FORCE_WEIGHTS_ONLY, "0")
    before = set(torch.serialization.get_safe_globals())
    with pytest.raises(UnsafeCheckpointError, match=f"from {file}: not a plain weights file"):
        with safe_loading(), safe_loading():  # nests
            torch.load(file, weights_only=False)  # what DeepSpeed passes
    assert not marker.exists()
    assert os.environ[FORCE_WEIGHTS_ONLY] == "0" and set(torch.serialization.get_safe_globals()) == before
    monkeypatch.delenv(FORCE_WEIGHTS_ONLY)
    with safe_loading():
        assert os.environ[FORCE_WEIGHTS_ONLY] == "1"
        assert set(deepspeed_checkpoint_types()) <= set(torch.serialization.get_safe_globals())
    assert FORCE_WEIGHTS_ONLY not in os.environ


@pytest.mark.parametrize("run", ["zero2_run", "zero3_run"])
def test_clean_checkpoints_load_weights_only(run, request):
    """Every file DeepSpeed wrote loads under ``safe_loading`` even where the caller asks for a full unpickle, and
    eval consolidates the checkpoint."""
    checkpoint = complete_checkpoints(request.getfixturevalue(run))[-1]
    files = sorted(checkpoint.glob("*.pt"))
    assert any("optim_states" in f.name for f in files) and any("model_states" in f.name for f in files)
    with safe_loading():
        for file in files:
            assert isinstance(torch.load(file, map_location="cpu", weights_only=False), dict), file
    assert load_eval_model(checkpoint).meta.step == int(checkpoint.name.removeprefix("global_step"))
