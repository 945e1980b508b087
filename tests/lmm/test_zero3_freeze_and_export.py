"""The paper's freezing policy with real weight files (two real DeepSpeed ranks, torchrun, gloo), ZeRO-3 and ZeRO-2:
lean checkpoints, lean resume / eval / export, and refusal when the frozen files change.

Tower and decoder are frozen and read from an open_clip safetensors file and a sharded LLaMA directory; the bridge
and the decoder's separate image-marker rows train. Checkpoints hold the trained tensors only and name the frozen
files; eval builds the model once from those files plus the checkpoint and matches a model assembled by open_clip's
and transformers' own loaders; the export loads with transformers and reproduces the checkpoint's outputs.
"""
import json
import shutil

import open_clip
import pytest
import torch
from conftest import REPO_ROOT, frozen_pretrained_overrides, tiny_overrides
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaForCausalLM

from data_pipeline.sequence import SequenceLayout
from data_pipeline.tokenizer import CaptionTokenizer
from launch.evaluate import main as evaluate_main
from launch.export import main as export_main
from lmm.config import config_from_dict
from lmm.eval.loading import EXPORT_MARKER, load_eval_model, load_exported, read_export, saved_run_config
from lmm.models.bridge import CausalBridge
from lmm.models.lmm import LMM, GenerationSettings
from lmm.models.vision import VisionTower
from lmm.planning import checkpoint_bytes
from lmm.torchrun import torchrun
from lmm.training import frozen_weights
from lmm.training.checkpoint import complete_checkpoints


def run_args(world, out, llama, clip, *extra):
    return ["--config", str(REPO_ROOT / "configs/demo.yaml"),
            *tiny_overrides(world, out, "data.num_samples=64", "train.zero_stage=3",
                            "train.deepspeed_template=configs/deepspeed/zero3.json",
                            *frozen_pretrained_overrides(llama, clip), "train.checkpoint_at_start=true",
                            "train.checkpoint_every=2", "train.lr=6e-3", "train.min_lr=6e-4", *extra)]


@pytest.fixture(scope="module")
def lean_zero3_run(demo_world, llama_dir, clip_file, tmp_path_factory):
    """Stopped after step 2 (max_steps), then resumed from its lean checkpoint to the end (step 4)."""
    root = tmp_path_factory.mktemp("zero3")
    llama, clip = root / "llama", root / "open_clip_model.safetensors"
    shutil.copytree(llama_dir[0], llama)
    shutil.copy(clip_file, clip)
    out = root / "run"
    first = torchrun(2, "launch.pretrain", run_args(demo_world, out, llama, clip, "train.max_steps=2"),
                     capture=True, timeout=900)
    second = torchrun(2, "launch.pretrain", run_args(demo_world, out, llama, clip), capture=True, timeout=900)
    return out, llama, clip, first.stdout + second.stdout


def trained_tensors(checkpoint):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name,
                                                    exclude_frozen_parameters=True)


def logged_json(log: str, key: str):
    """The value of ``key`` in the first log line that carries ``{"<key>": ...}`` (the trainer's start-up records)."""
    line = next(line for line in log.splitlines() if f'{{"{key}"' in line)
    return json.loads(line[line.index(f'{{"{key}"'):])[key]


def test_lean_checkpoints_hold_only_the_trained_tensors(lean_zero3_run):
    out, llama, clip, stdout = lean_zero3_run
    steps = [c.name for c in complete_checkpoints(out)]
    assert steps == ["global_step0", "global_step2", "global_step4"]
    first, last = (trained_tensors(c) for c in (complete_checkpoints(out)[0], complete_checkpoints(out)[-1]))
    assert first.keys() == last.keys()
    assert all(name.startswith("bridge.") or name.endswith(".new_rows") for name in last)
    assert {"llm.model.embed_tokens.new_rows", "llm.lm_head.new_rows"} <= last.keys()
    for name in last:
        assert not torch.equal(first[name], last[name]), f"{name} did not train"

    record = json.loads((complete_checkpoints(out)[-1] / frozen_weights.FROZEN_WEIGHTS_FILE).read_text())
    assert record["excluded"] and set(record["components"]) == {"vision", "llm"}
    assert record["components"]["vision"]["path"] == str(clip.resolve())
    model_states = torch.load(complete_checkpoints(out)[-1] / "zero_pp_rank_0_mp_rank_00_model_states.pt",
                              map_location="cpu", weights_only=False)
    assert not model_states.get("frozen_param_shapes")  # DeepSpeed wrote no frozen tensor
    assert all(name.startswith("bridge.") or name.endswith(".new_rows") for name in model_states["param_shapes"][0])

    counts = logged_json(stdout, "parameters")
    assert counts["total/trainable"] == sum(t.numel() for t in last.values())
    # the planner's checkpoint accounting holds on the real files: 12 bytes per trained parameter, nothing frozen
    written = sum(tensor_bytes(torch.load(f, map_location="cpu", weights_only=False))
                  for f in complete_checkpoints(out)[-1].glob("*.pt"))
    expected = checkpoint_bytes(counts["total/trainable"], counts["total/frozen"], "fp32", 3, lean=True)
    assert expected <= written <= 1.05 * expected
    held = logged_json(stdout, "held_after_build")
    for part in ("vision", "llm"):  # partitioned while it was built: rank 0 never held the whole pretrained part
        assert held[part]["held"] <= 0.55 * held[part]["total"], (part, held[part])
    groups = logged_json(stdout, "optimizer_groups")
    assert groups["decay"]["parameters"] + groups["no_decay"]["parameters"] == counts["total/trainable"]


def tensor_bytes(obj, seen=None) -> int:
    """Bytes of the distinct tensor storages in a loaded checkpoint object."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    return 0


def assembled_by_the_libraries(checkpoint, saved_clip, llama, clip):
    """The same model assembled without the project's loaders: transformers' from_pretrained, open_clip's
    pretrained= loading, the trained tensors set by name."""
    config = config_from_dict(saved_run_config(checkpoint))
    tokenizer = CaptionTokenizer(config.model.tokenizer.path)
    trained = trained_tensors(checkpoint)
    llm = LlamaForCausalLM.from_pretrained(llama, dtype=torch.float32)
    for attr, key in (("get_input_embeddings", "llm.model.embed_tokens.new_rows"),
                      ("get_output_embeddings", "llm.lm_head.new_rows")):
        old = getattr(llm, attr)().weight.data
        getattr(llm, attr)().weight = torch.nn.Parameter(torch.cat([old, trained[key]]))
    llm.config.vocab_size = tokenizer.vocab_size
    tower = VisionTower(open_clip.create_model("EVA01-tiny-14", pretrained=str(clip)).visual)
    bridge = CausalBridge(config.model.bridge, tower.width, llm.config.hidden_size)
    bridge.load_state_dict({k.removeprefix("bridge."): v for k, v in trained.items() if k.startswith("bridge.")})
    return LMM(tower, bridge, llm, tokenizer).eval(), tokenizer, config


def test_lean_eval_build_matches_the_libraries_own_loaders(lean_zero3_run, saved_clip):
    out, llama, clip, _ = lean_zero3_run
    checkpoint = complete_checkpoints(out)[-1]
    loaded = load_eval_model(checkpoint)
    reference, tokenizer, config = assembled_by_the_libraries(checkpoint, saved_clip, llama, clip)
    layout = SequenceLayout(tokenizer, config.model.bridge.num_queries, config.data.max_caption_tokens)
    pixels = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    prompt = torch.tensor([layout.prompt("")] * 3)
    settings = GenerationSettings(num_beams=2, max_new_tokens=8, min_new_tokens=2)
    with torch.no_grad():
        assert loaded.model.generate(pixels, prompt, settings) == reference.generate(pixels, prompt, settings)
        batch = layout.collate([layout.training_example(c) for c in ["a red star in paris", "two blue hearts"]])
        assert torch.allclose(loaded.model(pixels[:2], **batch), reference(pixels[:2], **batch), atol=1e-5)


def test_export_loads_with_transformers_and_reproduces_outputs(lean_zero3_run, tmp_path):
    out, _, _, _ = lean_zero3_run
    export_dir = tmp_path / "export"
    assert export_main([str(out), str(export_dir)]) == 0  # the run's newest complete checkpoint
    marker = read_export(export_dir)
    assert marker["meta"]["step"] == 4 and marker["meta"]["zero_stage"] == 3

    # each part stands alone: transformers for the decoder (trained marker rows merged in), safetensors for the rest
    llm = LlamaForCausalLM.from_pretrained(export_dir / "llm")
    assert (export_dir / "llm" / "tokenizer.model").is_file()
    for part in ("bridge", "vision"):
        assert json.loads((export_dir / part / "config.json").read_text())
        with safe_open(str(export_dir / part / "model.safetensors"), framework="pt") as handle:
            assert len(list(handle.keys())) > 0

    reference = load_eval_model(complete_checkpoints(out)[-1]).model
    config = config_from_dict(saved_run_config(complete_checkpoints(out)[-1]))
    exported, exported_tokenizer = load_exported(export_dir)
    assert llm.get_input_embeddings().weight.shape[0] == exported_tokenizer.vocab_size
    hf_tokenizer = AutoTokenizer.from_pretrained(export_dir / "llm")  # the markers at the model's own ids
    assert len(hf_tokenizer) == exported_tokenizer.vocab_size
    assert hf_tokenizer.convert_tokens_to_ids(["[IMG]", "[/IMG]", "<image>"]) == [
        exported_tokenizer.img_start_id, exported_tokenizer.img_end_id, exported_tokenizer.image_id]
    caption = "a red star in paris"
    assert hf_tokenizer(caption).input_ids == [exported_tokenizer.bos_id, *exported_tokenizer.encode(caption)]
    layout = SequenceLayout(exported_tokenizer, config.model.bridge.num_queries, config.data.max_caption_tokens)
    batch = layout.collate([layout.training_example(c) for c in ["a red star in paris", "two blue hearts"]])
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(exported(pixels, **batch), reference(pixels, **batch), atol=1e-5)
        assert torch.allclose(llm(input_ids=batch["input_ids"]).logits,
                              reference.llm(input_ids=batch["input_ids"]).logits, atol=1e-5)

    assert export_main([str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    (export_dir / EXPORT_MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="not a complete export"):
        load_exported(export_dir)


def test_changed_or_missing_frozen_files_are_refused(lean_zero3_run, demo_world, capfd, tmp_path):
    out, llama, clip, _ = lean_zero3_run
    checkpoint = complete_checkpoints(out)[-1]
    original = clip.read_bytes()
    try:
        state = load_file(str(clip))  # the same weights, converted to fp16 by someone: other sizes and header
        save_file({k: v.half() for k, v in state.items()}, str(clip))
        with pytest.raises(frozen_weights.FrozenWeightsError, match="model.vision.pretrained=.* differs from them"):
            load_eval_model(checkpoint)
        assert evaluate_main(["--checkpoint", str(checkpoint)]) == 2
        assert "model.vision.pretrained" in capfd.readouterr().err
        assert export_main([str(checkpoint), str(tmp_path / "export")]) == 2
        config_before = (out / "config.json").read_text()
        with pytest.raises(RuntimeError, match="exitcode  : 2"):
            torchrun(1, "launch.pretrain", run_args(demo_world, out, llama, clip, "train.max_steps=6"),
                     capture=True, timeout=300)
        assert (out / "config.json").read_text() == config_before  # refused before anything was written
        clip.unlink()
        with pytest.raises(frozen_weights.FrozenWeightsError, match="does not exist"):
            load_eval_model(checkpoint)
    finally:
        clip.write_bytes(original)
    assert load_eval_model(checkpoint).meta.step == 4


def test_lean_zero2_resume_is_exact(demo_world, llama_dir, clip_file, tmp_path):
    """The paper's stage: a run stopped after step 2 and resumed from its lean checkpoint ends with the weights of
    the uninterrupted run (frozen parts re-read from the files, trained parts and optimizer from the checkpoint)."""
    zero2 = ["train.zero_stage=2", "train.deepspeed_template=configs/deepspeed/zero2.json",
             "train.checkpoint_at_start=false"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    torchrun(2, "launch.pretrain", run_args(demo_world, whole, llama_dir[0], clip_file, *zero2), capture=True,
             timeout=900)
    torchrun(2, "launch.pretrain", run_args(demo_world, split, llama_dir[0], clip_file, *zero2, "train.max_steps=2"),
             capture=True, timeout=900)
    assert [c.name for c in complete_checkpoints(split)] == ["global_step2"]
    assert frozen_weights.excludes_frozen(complete_checkpoints(split)[-1])
    torchrun(2, "launch.pretrain", run_args(demo_world, split, llama_dir[0], clip_file, *zero2), capture=True,
             timeout=900)
    expected, resumed = (trained_tensors(complete_checkpoints(run)[-1]) for run in (whole, split))
    assert complete_checkpoints(split)[-1].name == "global_step4" and expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
