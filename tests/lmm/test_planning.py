"""The planner: full-size counts on the meta device, DeepSpeed's estimators, activation formulas against what
autograd really keeps, exact micro-batch x accumulation, and refusal of impossible plans."""
import json
import time

import pytest
import torch
from conftest import REPO_ROOT
from transformers import LlamaConfig, LlamaForCausalLM

from data_pipeline.sequence import SequenceLayout
from launch.plan import main as plan_main
from lmm.config import ConfigError, load_config
from lmm.models.lmm import build_lmm
from lmm.planning import (
    GIB,
    PlanError,
    activation_bytes,
    build_meta_model,
    checkpoint_bytes,
    make_plan,
    model_shape,
    model_state_bytes,
)

LLAMA2_7B_PARAMS = 6_738_415_616  # Llama-2-7b-hf, vocabulary 32000
EVA01_G_VISUAL_PARAMS = 1_012_588_928  # open_clip EVA01-g-14 visual: 40 x 1408-wide blocks, patch 14, 224 px


@pytest.fixture(scope="module")
def paper():
    config = load_config(REPO_ROOT / "configs/capsfusion_10m.yaml", ["model.allow_random_frozen=true"])
    start = time.perf_counter()
    model = build_meta_model(config)
    seconds = time.perf_counter() - start
    return config, model, seconds


def test_full_size_model_builds_on_meta_quickly(paper):
    _, model, seconds = paper
    assert all(p.is_meta for p in model.parameters())  # no storage was allocated
    assert seconds < 30, seconds  # ~1 s on an idle core


def test_counts_match_eva01_g_and_llama2_7b(paper):
    config, model, _ = paper
    shape = model_shape(config, model)
    with torch.device("meta"):
        llama = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                                             num_attention_heads=32, num_key_value_heads=32,
                                             intermediate_size=11008, tie_word_embeddings=False))
    assert sum(p.numel() for p in llama.parameters()) == LLAMA2_7B_PARAMS
    assert shape.params["llm"] == LLAMA2_7B_PARAMS + 2 * 3 * 4096  # + [IMG], [/IMG], <image> in and out
    assert shape.params["vision"] == EVA01_G_VISUAL_PARAMS
    assert (shape.vision_width, shape.vision_depth, shape.vision_mlp, shape.vision_tokens) == (1408, 40, 6144, 257)
    assert 125e6 < shape.params["bridge"] < 131e6  # Emu's "about 128M"
    assert shape.trainable_params == shape.params["bridge"]  # paper default: tower and decoder frozen
    assert shape.frozen_params == EVA01_G_VISUAL_PARAMS + shape.params["llm"]
    fired = model_shape(load_config(REPO_ROOT / "configs/capsfusion_10m.yaml", ["model.llm.trainable=true", "model.allow_random_frozen=true"]), model)
    assert fired.trainable_params == shape.params["bridge"] + shape.params["llm"]


def test_model_states_use_deepspeed_estimators(paper):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    config, model, _ = paper
    shape = model_shape(config, model)
    t, f = shape.trainable_params, shape.frozen_params
    assert model_state_bytes(shape, 2, 4, 8, "bf16") == \
        estimate_zero2_model_states_mem_needs(t, 8, 4, cpu_offload=False)[1] + 2 * f
    assert model_state_bytes(shape, 3, 4, 8, "bf16") == estimate_zero3_model_states_mem_needs(
        t, shape.largest_layer, 8, 4, cpu_offload=False, cpu_offload_params=False)[1] + int(2 * f / 32)
    by_stage = [model_state_bytes(shape, s, 4, 8, "bf16") for s in range(4)]
    assert by_stage == sorted(by_stage, reverse=True) and by_stage[0] == 20 * t + 2 * f


def saved_activation_bytes(model, batch, pixels) -> int:
    """Bytes autograd keeps for backward (parameters excluded), deduplicated by storage."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(pixels, **batch)
    return sum(seen.values())


@pytest.mark.parametrize("vision_trainable,llm_trainable,ckpt", [
    (False, False, False), (False, True, False), (False, False, True), (False, True, True), (True, True, False),
    (True, True, True)])
def test_activation_formula_matches_what_autograd_keeps(tokenizer, vision_trainable, llm_trainable, ckpt):
    flag = {True: "true", False: "false"}
    overrides = ["model.bridge.num_queries=8", "model.bridge.width=64", "model.bridge.depth=2",
                 "model.bridge.heads=2", "model.llm.hidden_size=256", "model.llm.num_layers=2",
                 "model.llm.num_heads=4", "model.llm.intermediate_size=688",
                 f"model.vision.trainable={flag[vision_trainable]}", f"model.llm.trainable={flag[llm_trainable]}",
                 f"model.llm.grad_checkpointing={flag[ckpt]}",
                 f"model.vision.grad_checkpointing={flag[ckpt and vision_trainable]}",
                 "data.max_caption_tokens=24", "train.precision=bf16", "model.allow_random_frozen=true"]
    config = load_config(REPO_ROOT / "configs/demo.yaml", overrides)
    torch.manual_seed(0)
    model = build_lmm(config.model, tokenizer).to(torch.bfloat16).train()
    layout = SequenceLayout(tokenizer, 8, 24)
    long_caption = " ".join(["a red star above two blue circles in paris"] * 6)  # truncated to 24 tokens
    micro = 4
    batch = layout.collate([layout.training_example(long_caption)] * micro)
    shape = model_shape(config, build_meta_model(config, tokenizer.vocab_size))
    assert batch["input_ids"].shape[1] == shape.seq_len
    measured = saved_activation_bytes(model, batch, torch.randn(micro, 3, 112, 112, dtype=torch.bfloat16))
    estimated = micro * activation_bytes(shape, "bf16", ckpt, ckpt and vision_trainable).kept
    print(f"activation estimate {estimated} vs measured {measured}: {estimated / measured:.3f}")
    assert estimated == pytest.approx(measured, rel=0.15), (estimated, measured)


def test_plan_reaches_the_global_batch_exactly(paper):
    config, model, _ = paper
    plan = make_plan(config, nodes=8, gpus_per_node=8, gpu_mem_gb=80, shape=model_shape(config, model))
    assert plan.micro_batch * plan.accumulation * 64 == 8192
    assert plan.per_gpu_gb <= 80 and plan.overrides == [f"train.micro_batch_size={plan.micro_batch}"]
    stages = {e.stage: e for e in plan.stages}
    assert stages[3].model_states_gb < stages[2].model_states_gb
    assert all(e.activations_gb_per_sample_ckpt < e.activations_gb_per_sample for e in plan.stages)
    small = make_plan(config, nodes=1, gpus_per_node=8, gpu_mem_gb=40, shape=model_shape(config, model))
    assert small.micro_batch * small.accumulation * 8 == 8192 and small.accumulation > 1


def test_impossible_plans_are_refused(paper, tmp_path, capsys):
    config, model, _ = paper
    shape = model_shape(config, model)
    with pytest.raises(PlanError, match="ZeRO-2 does not fit 16 GB .* would fit with: train.zero_stage=3"):
        make_plan(config, 8, 8, 16, shape=shape)
    with pytest.raises(PlanError, match="not divisible by 24 GPUs"):
        make_plan(config, 3, 8, 80, shape=shape)
    assert shape.frozen_params * 2 / GIB > 14  # frozen bf16 weights alone fill a 16 GB card under ZeRO-2

    base = ["--config", str(REPO_ROOT / "configs/capsfusion_10m.yaml")]
    assert plan_main(base + ["--nodes", "8", "--gpus-per-node", "8", "--gpu-mem-gb", "16",
                             "model.allow_random_frozen=true"]) == 2
    assert "plan refused" in capsys.readouterr().err
    out = tmp_path / "plan.json"
    assert plan_main(base + ["--nodes", "8", "--gpus-per-node", "8", "--json", str(out), "train.zero_stage=3",
                             "model.allow_random_frozen=true"]) == 0
    saved = json.loads(out.read_text())
    assert saved["zero_stage"] == 3 and saved["micro_batch"] * saved["accumulation"] * 64 == 8192
    assert "micro-batch" in capsys.readouterr().out
    # random frozen parts cannot be left out of checkpoints; with weight files they are (lean: ~2 GB, not ~17 GB)
    assert saved["checkpoint_gb"] == saved["checkpoint_gb_with_frozen"]
    lean = checkpoint_bytes(shape.trainable_params, shape.frozen_params, "bf16", 2, lean=True)
    full = checkpoint_bytes(shape.trainable_params, shape.frozen_params, "bf16", 2, lean=False)
    assert lean == shape.trainable_params * (2 + 12) and 1.6 < lean / GIB < 1.7 and 16 < full / GIB < 17

    # no silent random weights: the plan and the submission refuse a paper config without weight paths
    assert plan_main(["--config", str(REPO_ROOT / "configs/capsfusion_10m.yaml"), "--nodes", "8"]) == 2
    assert "config key 'model.vision.pretrained'" in capsys.readouterr().err
    from launch.submit import SubmitOptions, check_submission
    with pytest.raises(ConfigError, match="config key 'model.vision.pretrained'"):
        check_submission(str(REPO_ROOT / "configs/capsfusion_10m.yaml"), [], SubmitOptions(nodes=8))

