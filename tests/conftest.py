"""Shared fixtures (a small generated toy world and a tiny experiment config built on it) and the test tiers.

Tiers (markers, assigned here in one place): ``slurm`` (tests/slurm: real Slurm daemons), ``multiprocess`` (a test
that starts real DeepSpeed ranks or training processes, itself or through a run fixture), ``unit`` (the rest).
``make test-quick`` runs the unit tier; ``make test`` and ``.ci/run`` run everything.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# fixtures that train real runs (DeepSpeed ranks under torchrun or Slurm): a test using one is ``multiprocess``
RUN_FIXTURES = {"zero3_run", "lean_zero3_run", "zero2_run", "runs", "elastic", "uninterrupted", "cluster"}
# modules whose tests start ranks or training processes themselves
MULTIPROCESS_MODULES = {"tests/benchmarks", "tests/test_end_to_end.py", "tests/test_study.py", "tests/lmm/test_zero3_freeze_and_export.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        where = Path(item.fspath).relative_to(REPO_ROOT).as_posix()
        params = getattr(getattr(item, "callspec", None), "params", {})  # fixtures requested by name
        uses = set(item.fixturenames) | {v for v in params.values() if isinstance(v, str)}
        if where.startswith("tests/slurm/"):
            item.add_marker(pytest.mark.slurm)
        elif (RUN_FIXTURES & uses or item.get_closest_marker("multiprocess")
              or any(where.startswith(m) for m in MULTIPROCESS_MODULES)):
            item.add_marker(pytest.mark.multiprocess)
        else:
            item.add_marker(pytest.mark.unit)

TINY_OVERRIDES = [
    "model.bridge.num_queries=4", "model.bridge.width=32", "model.bridge.depth=1", "model.bridge.heads=2",
    "model.llm.hidden_size=32", "model.llm.num_layers=1", "model.llm.num_heads=2",
    "model.llm.intermediate_size=64", "model.tokenizer.vocab_size=300",
    "data.num_workers=1", "data.shuffle_buffer=16", "data.max_caption_tokens=24",
    "train.global_batch_size=16", "train.micro_batch_size=4", "train.warmup_steps=2", "train.log_every=1",
    "eval.num_beams=2", "eval.max_new_tokens=8", "eval.min_new_tokens=1", "eval.batch_size=8",
    "eval.max_images=8",
]


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> Path:
    from data_pipeline.demo_world import DemoWorldSpec, generate_demo_world

    out = tmp_path_factory.mktemp("world")
    generate_demo_world(out, DemoWorldSpec(num_train=512, num_eval=16, samples_per_shard=32, seed=1))
    return out


@pytest.fixture(scope="session")
def tokenizer(demo_world, tmp_path_factory):
    from data_pipeline.manifest import load_manifest
    from data_pipeline.tokenizer import CaptionTokenizer, caption_corpus, train_tokenizer

    corpus = caption_corpus(load_manifest(demo_world / "train" / "manifest.json"))
    path = train_tokenizer(corpus, tmp_path_factory.mktemp("tok") / "sp.model", 300)
    return CaptionTokenizer(path)


def tiny_overrides(world: Path, output_dir: Path, *extra: str) -> list[str]:
    return [*TINY_OVERRIDES, f"output_dir={output_dir}", f"data.train_manifest={world / 'train' / 'manifest.json'}",
            f"eval.dataset_json={world / 'eval' / 'dataset_coco.json'}", f"eval.image_root={world / 'eval'}",
            *extra]


def consolidated_weights(checkpoint: Path) -> dict:
    """fp32 weights of a DeepSpeed checkpoint directory (``.../checkpoints/global_step<N>``), any ZeRO stage."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)


def assert_same_weights(first: dict, second: dict) -> None:
    import torch
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6), name


@pytest.fixture
def seeded():
    import torch
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def zero3_run(demo_world, tmp_path_factory) -> Path:
    """One tiny 2-rank ZeRO-3 run per session (torchrun): complete checkpoints at steps 0, 1 and 2."""
    from lmm.torchrun import torchrun

    run_dir = tmp_path_factory.mktemp("zero3") / "run"
    torchrun(2, "launch.pretrain", ["--config", str(REPO_ROOT / "configs/demo.yaml"),
                                    *tiny_overrides(demo_world, run_dir, "run_name=tiny-zero3", "train.zero_stage=3",
                                                    "data.num_samples=32", "train.checkpoint_every=1")],
             capture=True, timeout=900)
    return run_dir


# The decoder / tower sizes of the pretrained files below (model.llm.* must match a LLaMA directory's config.json).
PRETRAINED_LLM_SIZES = ["model.llm.hidden_size=32", "model.llm.num_layers=2", "model.llm.num_heads=2",
                        "model.llm.intermediate_size=64"]


@pytest.fixture(scope="session")
def saved_clip():
    """A tiny open_clip EVA CLIP whose weights the tests write in open_clip's file formats."""
    import open_clip
    import torch

    torch.manual_seed(1)
    return open_clip.create_model("EVA01-tiny-14").eval()


@pytest.fixture(scope="session")
def llama_dir(tokenizer, tmp_path_factory):
    """A Hugging Face LLaMA directory: sharded safetensors + index, config.json, sentencepiece tokenizer.model."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.sp.get_piece_size(), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                       tie_word_embeddings=False)).eval()
    path = tmp_path_factory.mktemp("llama")
    llm.save_pretrained(path, safe_serialization=True, max_shard_size="40KB")
    shutil.copy(tokenizer.model_file, path / "tokenizer.model")
    assert (path / "model.safetensors.index.json").is_file()
    return path, llm


@pytest.fixture(scope="session")
def clip_file(saved_clip, tmp_path_factory):
    """``saved_clip`` as open_clip publishes it: ``open_clip_model.safetensors`` (whole CLIP, ``visual.trunk.*``)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("clip") / "open_clip_model.safetensors"
    save_file({k: v.clone().contiguous() for k, v in saved_clip.state_dict().items()}, str(path))
    return path


def frozen_pretrained_overrides(llama_path: Path, clip_path: Path) -> list[str]:
    """The paper's freezing policy on the tiny pretrained files: tower and decoder frozen and read from files."""
    return [*PRETRAINED_LLM_SIZES, "model.vision.trainable=false", "model.llm.trainable=false",
            f"model.vision.pretrained={clip_path}", f"model.llm.pretrained={llama_path}"]
