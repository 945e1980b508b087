"""Speed switches change speed and memory, never the maths: gradient checkpointing (decoder and tower), the
attention implementation, TF32; unavailable choices fail clearly before any weights are read."""
import pytest
import torch
from conftest import REPO_ROOT

from data_pipeline.sequence import SequenceLayout
from lmm.config import ConfigError, load_config
from lmm.models.lmm import build_lmm
from lmm.training.trainer import set_tf32

TINY = ["model.bridge.num_queries=4", "model.bridge.width=32", "model.bridge.depth=1", "model.bridge.heads=2",
        "model.llm.hidden_size=64", "model.llm.num_layers=2", "model.llm.num_heads=2",
        "model.llm.intermediate_size=128", "model.vision.trainable=true", "model.llm.trainable=true"]


def loss_and_grads(tokenizer, *overrides):
    torch.manual_seed(0)
    model = build_lmm(load_config(REPO_ROOT / "configs/demo.yaml", TINY + list(overrides)).model, tokenizer).train()
    layout = SequenceLayout(tokenizer, 4, 16)
    batch = layout.collate([layout.training_example(c) for c in ["a red star in paris", "two blue hearts"]])
    pixels = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.untyped_storage().nbytes()) or t,
                                                  lambda t: t):
        loss = model(pixels, **batch)
    loss.backward()
    return model, loss.detach(), {n: p.grad for n, p in model.named_parameters()}, sum(saved)


def test_gradient_checkpointing_keeps_loss_and_gradients(tokenizer):
    plain, loss, grads, saved = loss_and_grads(tokenizer)
    ckpt, loss_c, grads_c, saved_c = loss_and_grads(tokenizer, "model.llm.grad_checkpointing=true",
                                                    "model.vision.grad_checkpointing=true")
    assert ckpt.llm.is_gradient_checkpointing and ckpt.vision.visual.trunk.grad_checkpointing
    assert not plain.llm.is_gradient_checkpointing
    assert torch.allclose(loss, loss_c, atol=1e-6)
    for name, grad in grads.items():
        if grad is None:  # the tower's final norm and head are not used (Emu's features come before them)
            assert grads_c[name] is None and name.startswith("vision.visual.trunk.")
        else:
            assert torch.allclose(grad, grads_c[name], atol=1e-6, rtol=1e-4), name
    assert saved_c < saved / 2  # only block inputs are kept for backward


def test_attention_implementations_agree_and_unavailable_ones_fail_clearly(tokenizer):
    _, sdpa, _, _ = loss_and_grads(tokenizer, "model.llm.attn_implementation=sdpa")
    eager_model, eager, _, _ = loss_and_grads(tokenizer, "model.llm.attn_implementation=eager")
    assert eager_model.llm.config._attn_implementation == "eager"
    assert torch.allclose(sdpa, eager, atol=1e-5)
    with pytest.raises(ConfigError, match="config key 'model.llm.attn_implementation': 'flash' is not one of"):
        load_config(REPO_ROOT / "configs/demo.yaml", ["model.llm.attn_implementation=flash"])
    from transformers.utils import is_flash_attn_2_available
    if not is_flash_attn_2_available():
        config = load_config(REPO_ROOT / "configs/demo.yaml",
                             TINY + ["model.llm.attn_implementation=flash_attention_2"])
        with pytest.raises(ValueError, match="flash_attention_2 needs the flash-attn package and a CUDA GPU"):
            build_lmm(config.model, tokenizer)


def test_tf32_switch_sets_cuda_matmul_flags(monkeypatch):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert load_config(REPO_ROOT / "configs/capsfusion_10m.yaml", ["model.allow_random_frozen=true"]).train.tf32
