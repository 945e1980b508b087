"""The MFU FLOP formula against torch's own FLOP counter on the real modules, for each freezing policy."""
import pytest
import torch
from conftest import REPO_ROOT
from torch.utils.flop_counter import FlopCounterMode

from data_pipeline.sequence import SequenceLayout
from lmm.config import load_config
from lmm.flops import forward_flops, pass_multipliers, training_flops, training_flops_per_sample, training_matmul_flops
from lmm.models.lmm import build_lmm
from lmm.planning import build_meta_model, model_shape

MATMUL_OPS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.convolution", "aten.convolution_backward"}


@pytest.mark.parametrize("vision,llm", [(False, False), (False, True), (True, True)])
def test_matmul_flops_equal_torch_flop_counter(tokenizer, vision, llm):
    """Paper policy (tower and decoder frozen), "fire the LLM", and everything trained."""
    config = load_config(REPO_ROOT / "configs/demo.yaml", ["model.allow_random_frozen=true", 
        "model.bridge.num_queries=8", "model.bridge.width=64", "model.bridge.depth=2", "model.bridge.heads=2",
        "model.llm.hidden_size=128", "model.llm.num_layers=2", "model.llm.num_heads=4",
        "model.llm.intermediate_size=344", "data.max_caption_tokens=24",
        f"model.vision.trainable={str(vision).lower()}", f"model.llm.trainable={str(llm).lower()}"])
    torch.manual_seed(0)
    model = build_lmm(config.model, tokenizer)
    layout = SequenceLayout(tokenizer, 8, 24)
    micro = 2
    batch = layout.collate([layout.training_example(" ".join(["a red star in paris"] * 10))] * micro)
    shape = model_shape(config, build_meta_model(config, tokenizer.vocab_size))
    assert batch["input_ids"].shape[1] == shape.seq_len
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randn(micro, 3, 112, 112), **batch).backward()
    counted = sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in MATMUL_OPS)
    assert sum(training_matmul_flops(shape).values()) * micro == counted

    passes = pass_multipliers(shape)
    assert passes["vision"] == ((3, 3) if vision else (1, 1))  # a frozen tower has no backward
    assert passes["llm"] == ((3, 3) if llm else (2, 3))  # a frozen decoder still passes activation gradients
    fwd = forward_flops(shape)
    assert training_flops_per_sample(shape) == pytest.approx(
        sum(training_matmul_flops(shape).values()) + sum(passes[n][1] * fwd[n].attention for n in fwd))


def test_paper_scale_flops_per_sample():
    """EVA01-g (forward only) + bridge (trained) + LLaMA-2-7B (frozen, activation gradients) at 100 tokens."""
    config = load_config(REPO_ROOT / "configs/capsfusion_10m.yaml", ["model.allow_random_frozen=true"])
    shape = model_shape(config)
    flops = training_flops(shape)
    assert shape.seq_len == 100
    # the decoder dominates: ~2 x (2 x 6.5e9 matmul parameters per token x 100 tokens)
    assert 2.5e12 < flops["llm"] < 2.8e12 and 0.45e12 < flops["vision"] < 0.6e12 and flops["bridge"] < 0.1e12
