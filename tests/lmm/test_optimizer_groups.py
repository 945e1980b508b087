"""AdamW groups: decay on weight matrices only; biases, norms, embeddings, learned queries, position embeddings and
the separate image-marker rows get none; frozen parameters are in no group."""
import torch
from conftest import REPO_ROOT, frozen_pretrained_overrides
from torch import nn

from data_pipeline.tokenizer import CaptionTokenizer
from lmm.config import load_config
from lmm.models.lmm import build_lmm
from lmm.training.optimizer_groups import no_decay_names, parameter_groups

TINY = ["model.bridge.num_queries=4", "model.bridge.width=32", "model.bridge.depth=1", "model.bridge.heads=2",
        "model.llm.hidden_size=32", "model.llm.num_layers=1", "model.llm.num_heads=2",
        "model.llm.intermediate_size=64"]


def test_no_decay_on_biases_norms_embeddings_and_queries(tokenizer):
    model = build_lmm(load_config(REPO_ROOT / "configs/demo.yaml", TINY).model, tokenizer)  # all trainable
    skip = no_decay_names(model)
    expected_skip = {"bridge.queries", "llm.model.embed_tokens.weight", "vision.visual.trunk.pos_embed",
                     "vision.visual.trunk.cls_token", "bridge.final_norm.weight", "bridge.visual_norm.bias",
                     "bridge.blocks.0.mlp.0.bias", "llm.model.norm.weight", "vision.visual.trunk.blocks.0.norm1.weight"}
    assert expected_skip <= skip
    decayed = {"bridge.blocks.0.self_attn.q.weight", "bridge.proj.weight", "llm.lm_head.weight",
               "llm.model.layers.0.mlp.up_proj.weight", "vision.visual.trunk.blocks.0.attn.qkv.weight"}
    assert not decayed & skip
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():  # every norm weight and bias, whatever its module type
        owner = modules[name.rpartition(".")[0]]
        if param.ndim < 2 or isinstance(owner, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(owner).__name__.lower():
            assert name in skip, name

    groups, summary = parameter_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert summary["no_decay"]["tensors"] == len(skip)
    assert sum(s["parameters"] for s in summary.values()) == sum(p.numel() for p in model.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(p) for n, p in model.named_parameters() if n in skip}


def test_frozen_decoder_trains_only_its_new_marker_rows_without_decay(llama_dir, clip_file, tmp_path):
    path, _ = llama_dir
    tokenizer = CaptionTokenizer(path / "tokenizer.model")
    config = load_config(REPO_ROOT / "configs/demo.yaml", [*TINY, *frozen_pretrained_overrides(path, clip_file)])
    model = build_lmm(config.model, tokenizer)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trained if not n.startswith("bridge.")} == {"llm.model.embed_tokens.new_rows",
                                                                   "llm.lm_head.new_rows"}
    groups, summary = parameter_groups(model, 0.05)
    assert {id(p) for p in groups[1]["params"]} >= {id(model.llm.get_input_embeddings().new_rows),
                                                    id(model.llm.get_output_embeddings().new_rows)}
    assert summary["decay"]["parameters"] + summary["no_decay"]["parameters"] == sum(
        p.numel() for n, p in model.named_parameters() if n in trained)
    rows = model.llm.get_input_embeddings().new_rows
    assert rows.shape == (3, 32) and torch.equal(rows[0], rows[1])  # mean-initialised, then trained apart

    config = load_config(REPO_ROOT / "configs/demo.yaml", [*TINY, *frozen_pretrained_overrides(path, clip_file),
                                                           "model.llm.train_image_markers=false"])
    model = build_lmm(config.model, tokenizer)
    assert all(n.startswith("bridge.") for n, p in model.named_parameters() if p.requires_grad)
