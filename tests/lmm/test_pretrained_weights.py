"""Real weights from local paths: checkpoints saved in the formats open_clip and transformers publish load through
the config path and reproduce the saved models' outputs; missing or mismatched files fail naming what is wrong."""
import json
import shutil

import pytest
import torch
from conftest import PRETRAINED_LLM_SIZES as LLM_SIZES
from conftest import REPO_ROOT
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from data_pipeline.tokenizer import CaptionTokenizer
from lmm.config import VisionConfig, load_config
from lmm.models.lmm import build_lmm
from lmm.models.vision import VisionTower, build_vision_tower
from lmm.models.weights import WeightsMismatchError
from lmm.training.trainer import with_tokenizer_path

BRIDGE = ["model.bridge.num_queries=4", "model.bridge.width=32", "model.bridge.depth=1", "model.bridge.heads=2"]


def write_clip(clip, path, fmt):
    """A whole open_clip CLIP state dict as a user would have it on disk."""
    state = {k: v.clone().contiguous() for k, v in clip.state_dict().items()}
    if fmt == "safetensors":
        save_file(state, str(path))
    elif fmt == "wrapped":  # a training checkpoint: {"state_dict": {"module.visual...": ...}}
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("fmt,suffix", [("plain", "pt"), ("wrapped", "bin"), ("safetensors", "safetensors")])
def test_open_clip_checkpoint_loads_and_matches(saved_clip, tmp_path, fmt, suffix):
    path = write_clip(saved_clip, tmp_path / f"eva.{suffix}", fmt)
    tower = build_vision_tower(VisionConfig(name="EVA01-tiny-14", pretrained=str(path))).eval()
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = VisionTower(saved_clip.visual)(pixels)
        assert torch.equal(tower(pixels), expected)
        assert not torch.allclose(build_vision_tower(VisionConfig(name="EVA01-tiny-14"))(pixels), expected)


def test_vision_checkpoint_errors_name_the_problem(saved_clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.vision.pretrained: no such checkpoint file"):
        build_vision_tower(VisionConfig(name="EVA01-tiny-14", pretrained=str(tmp_path / "absent.pt")))
    state = dict(saved_clip.state_dict())
    state["visual.trunk.blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    torch.save(state, tmp_path / "wrong_shape.pt")
    with pytest.raises(WeightsMismatchError, match=r"tensor 'blocks\.1\.mlp\.fc1\.weight' has shape \(100, 64\)"):
        build_vision_tower(VisionConfig(name="EVA01-tiny-14", pretrained=str(tmp_path / "wrong_shape.pt")))
    del state["visual.trunk.blocks.1.mlp.fc1.weight"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(WeightsMismatchError, match=r"lacks 1 tensor.*blocks\.1\.mlp\.fc1\.weight"):
        build_vision_tower(VisionConfig(name="EVA01-tiny-14", pretrained=str(tmp_path / "missing.pt")))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        build_vision_tower(VisionConfig(name="EVA01-tiny-14", pretrained=str(tmp_path / "notes.pt")))


def paper_like_config(tmp_path, llama_path, *extra):
    return load_config(REPO_ROOT / "configs/demo.yaml", [*BRIDGE, *LLM_SIZES, f"model.llm.pretrained={llama_path}",
                                                         f"output_dir={tmp_path}", *extra])


def test_llama_directory_loads_through_the_config_path(llama_dir, saved_clip, tmp_path):
    path, saved = llama_dir
    eva = write_clip(saved_clip, tmp_path / "eva.safetensors", "safetensors")
    config = paper_like_config(tmp_path, path, f"model.vision.pretrained={eva}")
    config = with_tokenizer_path(config)  # defaults to the directory's tokenizer.model
    assert config.model.tokenizer.path == str(path / "tokenizer.model")
    tokenizer = CaptionTokenizer(config.model.tokenizer.path)
    model = build_lmm(config.model, tokenizer).eval()
    pieces = saved.config.vocab_size
    ids = torch.tensor([tokenizer.encode("two red circles at lake como")])
    with torch.no_grad():
        logits = model.llm(input_ids=ids).logits
        assert torch.equal(logits[..., :pieces], saved(input_ids=ids).logits)
        pixels = torch.randn(1, 3, 112, 112)
        assert torch.equal(model.vision(pixels), VisionTower(saved_clip.visual)(pixels))
    embeddings = model.llm.get_input_embeddings().weight
    assert embeddings.shape[0] == pieces + 3  # [IMG], [/IMG], <image>, mean-initialised
    assert torch.allclose(embeddings[pieces:], embeddings[:pieces].mean(0).expand(3, -1))


def test_llama_directory_errors_name_the_problem(llama_dir, tmp_path, tokenizer):
    path, saved = llama_dir
    tok = CaptionTokenizer(path / "tokenizer.model")
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)

    def build(target, *extra):
        return build_lmm(paper_like_config(tmp_path, target, *extra).model, tok)

    with pytest.raises(WeightsMismatchError, match="config key 'model.llm.hidden_size' is 64 .* hidden_size=32"):
        build(path, "model.llm.hidden_size=64")
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (broken / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"lists shard\\(s\\) missing .*{shard}"):
        build(broken)

    single = tmp_path / "single"
    saved.save_pretrained(single, safe_serialization=True)
    state = load_file(single / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(48, 32)
    save_file(state, single / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError,
                       match=r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' has shape \(48, 32\)"):
        build(single)
    (single / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has neither model.safetensors nor model.safetensors.index.json"):
        build(single)
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        build(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="tokenizer.model is missing"):
        with_tokenizer_path(paper_like_config(tmp_path, single))


def test_llama_vocabulary_must_fit_the_tokenizer(llama_dir, tmp_path):
    path, saved = llama_dir
    other = tmp_path / "other_vocab"
    bigger = LlamaForCausalLM(LlamaConfig(**{**saved.config.to_dict(), "vocab_size": saved.config.vocab_size + 7}))
    bigger.save_pretrained(other, safe_serialization=True)
    with pytest.raises(WeightsMismatchError, match=f"vocabulary of {saved.config.vocab_size + 7} does not fit"):
        build_lmm(paper_like_config(tmp_path, other).model, CaptionTokenizer(path / "tokenizer.model"))
