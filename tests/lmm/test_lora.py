"""LoRA fine-tuning from a pretraining checkpoint (``model.init_from`` + ``model.llm.lora``), on two real DeepSpeed
ranks: adapter-only checkpoints, bitwise resume with adapter dropout, peft-format and merged export.

The parent is the session's tiny ZeRO-3 run; the fine-tune freezes tower, bridge and decoder (all read from the
parent's export) and trains rank-4 adapters for two epochs of 32 images, in-turn captions."""
import json

import pytest
import torch
from conftest import REPO_ROOT, tiny_overrides
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

from data_pipeline.captions import CaptionSelector
from launch.export import main as export_main
from lmm.config import ConfigError, budget_samples, load_config
from lmm.eval.loading import load_eval_model, read_export
from lmm.torchrun import torchrun
from lmm.training import frozen_weights
from lmm.training.checkpoint import complete_checkpoints

LORA = ["model.vision.trainable=false", "model.bridge.trainable=false", "model.llm.trainable=false",
        "model.llm.lora.rank=4", "model.llm.lora.alpha=8", "model.llm.lora.dropout=0.1", "data.num_samples=32",
        "data.epochs=2", "data.caption_per_epoch=in_turn", "train.checkpoint_every=2", "train.lr=1e-2"]


def fine_tune_args(world, out, parent, *extra):
    return ["--config", str(REPO_ROOT / "configs/demo.yaml"),
            *tiny_overrides(world, out, *LORA, f"model.init_from={parent}", *extra)]


@pytest.fixture(scope="module")
def lora_runs(demo_world, zero3_run, tmp_path_factory):
    """(interrupted run dir, uninterrupted run dir, parent checkpoint, stdout of the interrupted run's two parts)."""
    parent = complete_checkpoints(zero3_run)[-1]
    root = tmp_path_factory.mktemp("lora")
    interrupted, whole = root / "interrupted", root / "whole"
    first = torchrun(2, "launch.pretrain", fine_tune_args(demo_world, interrupted, parent, "train.max_steps=1"),
                     capture=True, timeout=900)
    second = torchrun(2, "launch.pretrain", fine_tune_args(demo_world, interrupted, parent), capture=True,
                      timeout=900)
    torchrun(2, "launch.pretrain", fine_tune_args(demo_world, whole, parent), capture=True, timeout=900)
    return interrupted, whole, parent, first.stdout + second.stdout


def module_state(checkpoint):
    return torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]


def test_checkpoints_hold_only_the_adapters(lora_runs):
    interrupted, _, parent, _ = lora_runs
    last = complete_checkpoints(interrupted)[-1]
    names = list(module_state(last))
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names), names
    record = frozen_weights.read(last)
    assert record["excluded"] and set(record["components"]) == {"vision", "bridge", "llm"}
    assert all(c["path"].startswith(str(interrupted / "init_from")) for c in record["components"].values())
    size = sum(f.stat().st_size for f in last.iterdir())
    parent_size = sum(f.stat().st_size for f in parent.iterdir())
    assert size * 5 < parent_size, (size, parent_size)


def test_start_up_reports_the_adapters_and_exports_the_parent_once(lora_runs):
    interrupted, _, parent, stdout = lora_runs
    assert stdout.count("model.init_from: exporting") == 1
    line = next(x for x in stdout.splitlines() if "LoRA r=4 alpha=8" in x)
    assert "adapter parameters" in line and "trainable" in line and "%)" in line
    assert "resumed from" in stdout
    assert read_export(interrupted / "init_from")["checkpoint"] == str(parent.resolve())


def test_resume_with_adapter_dropout_is_bitwise(lora_runs):
    interrupted, whole, _, _ = lora_runs
    a, b = (module_state(complete_checkpoints(run)[-1]) for run in (interrupted, whole))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert complete_checkpoints(whole)[-1].name == "global_step4"  # 2 epochs x 32 images / 16 per step


def test_export_writes_the_peft_adapter_and_a_merged_decoder(lora_runs, tmp_path):
    interrupted, _, _, _ = lora_runs
    checkpoint = complete_checkpoints(interrupted)[-1]
    out = tmp_path / "export"
    export_main([str(checkpoint), str(out)])
    marker = read_export(out)
    assert marker["parts"]["adapter"] == "adapter" and marker["config"]["model"]["llm"]["lora"]["rank"] == 0
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == str(interrupted / "init_from" / "llm")

    ids = torch.tensor([[1, 5, 9, 20, 33, 7]])
    merged = LlamaForCausalLM.from_pretrained(out / "llm")
    adapted = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(interrupted / "init_from" / "llm"),
                                        out / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-5, rtol=1e-5)
    assert len(AutoTokenizer.from_pretrained(out / "llm")) == merged.get_input_embeddings().weight.shape[0]

    from_checkpoint, from_export = load_eval_model(checkpoint).model, load_eval_model(out).model
    pixels = torch.randn(2, 3, 112, 112)
    tokens = torch.tensor([[from_checkpoint.image_id] * 4 + [5, 9, 20]] * 2)
    with torch.no_grad():
        a = from_checkpoint.llm(inputs_embeds=from_checkpoint.embed(pixels, tokens)).logits
        b = from_export.llm(inputs_embeds=from_export.embed(pixels, tokens)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["model.llm.lora.rank=4", "model.llm.trainable=true"], "LoRA adapts a frozen decoder"),
    (["model.llm.lora.rank=4", "model.llm.trainable=false", "model.allow_random_frozen=true",
      "model.llm.lora.target_modules=[]"], "non-empty"),
    (["model.init_from=/no/such/dir"], "is not a directory"),
    (["model.init_from=.", "model.llm.pretrained=/x"], "unset model.llm.pretrained"),
    (["model.vision.trainable=false", "model.bridge.trainable=false", "model.llm.trainable=false",
      "model.allow_random_frozen=true"], "nothing would train"),
    (["data.epochs=0"], "data.epochs"),
])
def test_fine_tuning_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO_ROOT / "configs/demo.yaml", overrides)


def test_epochs_multiply_the_budget():
    config = load_config(REPO_ROOT / "configs/demo.yaml", ["data.epochs=3"])
    assert budget_samples(config) == 3 * config.data.num_samples


def test_in_turn_shows_every_caption_once_per_block_of_epochs():
    captions = {"refs": ["a", "b", "c", "d", "e"]}
    select = CaptionSelector("refs", seed=3, list_choice="in_turn")
    for key in ("img1", "img2"):
        for block in range(3):
            seen = [select.choose(key, captions, epoch)[0] for epoch in range(5 * block, 5 * block + 5)]
            assert sorted(seen) == captions["refs"]
    assert [select.choose("img1", captions, e)[0] for e in range(10)] == \
        [CaptionSelector("refs", seed=3, list_choice="in_turn").choose("img1", captions, e)[0] for e in range(10)]
    with pytest.raises(ValueError, match="list_choice"):
        CaptionSelector("refs", list_choice="sometimes")


def test_the_demo_fine_tune_config_loads(tmp_path):
    config = load_config(REPO_ROOT / "configs/demo_lora.yaml", [f"model.init_from={tmp_path}"])
    m = config.model
    assert m.llm.lora.rank == 8 and not (m.vision.trainable or m.bridge.trainable or m.llm.trainable)
    assert budget_samples(config) == config.data.num_samples * config.data.epochs


def test_start_up_counts_images_and_captions_apart(tmp_path):
    from lmm.training.trainer import describe_data

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"shards": [{"path": "a.tar", "num_samples": 40}], "num_samples": 40,
                                    "num_images": 40, "caption_counts": {"captions": 200},
                                    "caption_fields": ["captions"]}))
    config = load_config(REPO_ROOT / "configs/demo_lora.yaml", [f"model.init_from={tmp_path}",
                                                               f"data.train_manifest={manifest}", "data.num_samples=32",
                                                               "data.epochs=5", "train.warmup_steps=1"])
    line = describe_data(config)
    assert "32 of the manifest's 40 images" in line and "200 'captions' captions" in line
    assert "5 epoch(s) = 160 samples" in line and "(in_turn)" in line
