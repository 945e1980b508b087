"""Converting pretrained weights once to the training dtype: same tensors, same layout, then memory-mapped by the
build instead of converted."""
import copy
import json

import torch
from safetensors import safe_open

from data_pipeline.tokenizer import CaptionTokenizer
from launch.convert_weights import main as convert_main
from lmm.config import LLMConfig, VisionConfig
from lmm.models.llm import build_llm
from lmm.models.vision import VisionTower, build_vision_tower


def test_llama_directory_converts_to_bf16_and_is_then_mapped(llama_dir, tmp_path):
    path, saved = llama_dir
    out = tmp_path / "llama-bf16"
    assert convert_main(["llm", str(path), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "bfloat16" in (config.get("dtype"), config.get("torch_dtype"))
    assert (out / "tokenizer.model").read_bytes() == (path / "tokenizer.model").read_bytes()
    assert (out / "model.safetensors.index.json").read_text() == (path / "model.safetensors.index.json").read_text()
    assert not (tmp_path / "llama-bf16.partial").exists()

    tokenizer = CaptionTokenizer(out / "tokenizer.model")
    llm = build_llm(LLMConfig(pretrained=str(out), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                    tokenizer, torch.bfloat16)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(llm.state_dict()[name if "embed_tokens" not in name and "lm_head" not in name
                                           else name.replace(".weight", ".base.weight")], tensor.bfloat16()), name
    weight = llm.model.layers[0].mlp.up_proj.weight  # a view of the converted shard's memory map, not a copy
    shard = out / json.loads((out / "model.safetensors.index.json").read_text())["weight_map"][
        "model.layers.0.mlp.up_proj.weight"]
    assert weight.untyped_storage().nbytes() == shard.stat().st_size
    assert convert_main(["llm", str(path), str(out)]) == 2  # never over an existing directory


def test_open_clip_checkpoint_converts_to_a_visual_safetensors(saved_clip, tmp_path):
    src = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(saved_clip.state_dict(), src)
    out = tmp_path / "eva-bf16.safetensors"
    assert convert_main(["vision", str(src), str(out)]) == 0
    with safe_open(str(out), framework="pt") as handle:
        names = list(handle.keys())
        assert names and all(n.startswith("visual.") for n in names)
        assert handle.get_tensor(names[0]).dtype == torch.bfloat16
    tower = build_vision_tower(VisionConfig(name="EVA01-tiny-14", pretrained=str(out)), dtype=torch.bfloat16)
    reference = VisionTower(copy.deepcopy(saved_clip.visual)).to(torch.bfloat16)  # the fixture is shared
    pixels = torch.randn(1, 3, 112, 112, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(tower(pixels), reference(pixels))
    assert convert_main(["vision", str(src), str(tmp_path / "eva.pt")]) == 2
