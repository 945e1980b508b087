"""Freezing under ZeRO-3 (two real DeepSpeed ranks, torchrun, gloo) and the consolidated export of that run.

Paper policy: tower and decoder frozen, bridge trained. After a few steps the frozen weights are bit-identical to
step 0, every trainable tensor moved, and only the bridge reached the optimizer. The final checkpoint exports to
parts that transformers / safetensors load, and ``load_exported`` reproduces the checkpoint's outputs.
"""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM

from conftest import REPO_ROOT, consolidated_weights as consolidated, tiny_overrides
from launch.export import main as export_main
from launch.local import torchrun
from lmm.config import config_from_dict
from lmm.eval.loading import load_eval_model, saved_run_config
from lmm.export import EXPORT_MARKER, load_exported, read_export
from lmm.sequence import SequenceLayout
from lmm.training.checkpoint import complete_checkpoints


@pytest.fixture(scope="module")
def paper_policy_zero3_run(demo_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3") / "run"
    result = torchrun(2, "launch.pretrain", [
        "--config", str(REPO_ROOT / "configs/demo.yaml"),
        *tiny_overrides(demo_world, out, "data.num_samples=64", "train.zero_stage=3",
                        "train.deepspeed_template=configs/deepspeed/zero3.json", "model.vision.trainable=false",
                        "model.llm.trainable=false", "train.checkpoint_at_start=true", "train.checkpoint_every=4",
                        "train.lr=6e-3", "train.min_lr=6e-4")], capture=True, timeout=900)
    return out, result.stdout


def test_zero3_updates_only_the_trainable_parts(paper_policy_zero3_run):
    out, stdout = paper_policy_zero3_run
    first, last = complete_checkpoints(out)[0], complete_checkpoints(out)[-1]
    assert (first.name, last.name) == ("global_step0", "global_step4")
    before, after = consolidated(first), consolidated(last)
    assert before.keys() == after.keys()
    for name in before:
        if name.startswith(("vision.", "llm.")):
            assert torch.equal(before[name], after[name]), f"frozen {name} changed"
        else:
            assert name.startswith("bridge.") and not torch.equal(before[name], after[name]), f"{name} did not train"

    model_states = torch.load(last / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu",
                              weights_only=False)
    optimized = model_states["param_shapes"][0]  # what DeepSpeed's optimizer holds
    assert optimized and all(name.startswith("bridge.") for name in optimized)
    assert all(not name.startswith("bridge.") for name in model_states["frozen_param_shapes"])

    counts = next(json.loads(line)["parameters"] for line in stdout.splitlines() if line.startswith('{"parameters"'))
    assert counts["total/trainable"] == counts["bridge/trainable"] == sum(
        before[name].numel() for name in before if name.startswith("bridge."))
    assert counts["vision/trainable"] == counts["llm/trainable"] == 0 and counts["total/frozen"] > 0


def test_export_loads_with_transformers_and_reproduces_outputs(paper_policy_zero3_run, tmp_path):
    out, _ = paper_policy_zero3_run
    export_dir = tmp_path / "export"
    assert export_main([str(out), str(export_dir)]) == 0  # the run's newest complete checkpoint
    marker = read_export(export_dir)
    assert marker["meta"]["step"] == 4 and marker["meta"]["zero_stage"] == 3

    # each part stands alone: transformers for the decoder, safetensors + config.json for bridge and tower
    llm = LlamaForCausalLM.from_pretrained(export_dir / "llm")
    assert (export_dir / "llm" / "tokenizer.model").is_file()
    for part in ("bridge", "vision"):
        assert json.loads((export_dir / part / "config.json").read_text())
        with safe_open(str(export_dir / part / "model.safetensors"), framework="pt") as handle:
            assert len(list(handle.keys())) > 0

    reference = load_eval_model(complete_checkpoints(out)[-1]).model
    config = config_from_dict(saved_run_config(complete_checkpoints(out)[-1]))
    exported, exported_tokenizer = load_exported(export_dir)
    layout = SequenceLayout(exported_tokenizer, config.model.bridge.num_queries, config.data.max_caption_tokens)
    batch = layout.collate([layout.training_example(c) for c in ["a red star in paris", "two blue hearts"]])
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(exported(pixels, **batch), reference(pixels, **batch))
        assert torch.equal(llm(input_ids=batch["input_ids"]).logits, reference.llm(input_ids=batch["input_ids"]).logits)

    assert export_main([str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    (export_dir / EXPORT_MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="not a complete export"):
        load_exported(export_dir)
