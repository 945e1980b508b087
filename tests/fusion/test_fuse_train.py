"""lmm-fuse train (issue 13 item 2): a fuser fine-tuned on (raw, synthetic, fused) triplets through the project's
training loop -- the prompt exactly as lmm-fuse run encodes it, loss on the fused caption only, broken samples
skipped and counted, LoRA adapter-only checkpoints, and an exported fuser directory lmm-fuse run takes."""
import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from data_pipeline.captions import CaptionSelector
from data_pipeline.manifest import Piece, load_manifest, subset
from data_pipeline.sequence import IGNORE_INDEX
from data_pipeline.shard_format import BadSample
from data_pipeline.shard_reader import read_piece
from launch.fuse import main as fuse_main
from lmm.fusion.generate import encode_prompts, load_tokenizer
from lmm.fusion.prompt import fusion_prompt
from lmm.fusion.random_model import save_random_fuser
from lmm.fusion.training import TripletStream
from lmm.training import frozen_weights
from lmm.training.checkpoint import complete_checkpoints

sys.path.insert(0, str(REPO_ROOT / "tests" / "data_pipeline"))
from shard_factory import captions, write_shards  # noqa: E402

SIZES = [8, 8, 8]
BROKEN = {"s001_0002": ("raw", None), "s002_0003": ("synthetic", "  ")}  # key -> (field, value; None: absent)


def fields(key: str) -> dict:
    out = captions(key)
    if key in BROKEN:
        name, value = BROKEN[key]
        if value is None:
            del out[name]
        else:
            out[name] = value
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse_train")
    manifest = write_shards(root / "in", SIZES, fields=fields, caption_fields=["raw", "synthetic", "capsfusion"])
    model = save_random_fuser(root / "base", [f"raw synthetic fused s00{i} a photo of a dog" for i in range(300)],
                              hidden_size=32, num_layers=1, num_heads=2)
    return root, manifest, model


def stream_for(manifest, model):
    tokenizer = load_tokenizer(model)
    pieces = subset(load_manifest(manifest), 24)
    return TripletStream(pieces, CaptionSelector("capsfusion"), tokenizer, "raw", "synthetic", 16, 0, 1, 4), tokenizer


def test_examples_are_the_run_prompt_then_the_fused_caption_with_loss_on_it_only(world):
    _, manifest, model = world
    stream, tokenizer = stream_for(manifest, model)
    raw = next(read_piece(Piece(load_manifest(manifest)[0].url, 0, 1)))
    example = stream._example(raw, epoch=0)
    sample = captions(raw["__key__"])
    prompt = encode_prompts(tokenizer, [fusion_prompt(sample["raw"], sample["synthetic"])])[0]
    target = tokenizer(sample["capsfusion"], add_special_tokens=False)["input_ids"][:16] + [tokenizer.eos_token_id]
    assert example["input_ids"] == prompt + target
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + target
    assert prompt[0] == tokenizer.bos_token_id


def test_samples_missing_an_input_are_skipped_by_reason(world):
    _, manifest, model = world
    stream, _ = stream_for(manifest, model)
    shards = load_manifest(manifest)
    for shard, index, reason in ((1, 2, "missing_caption"), (2, 3, "empty_caption")):
        raw = next(read_piece(Piece(shards[shard].url, index, index + 1)))
        with pytest.raises(BadSample) as err:
            stream._example(raw, epoch=0)
        assert err.value.reason == reason


@pytest.mark.multiprocess  # a training process
def test_lora_fuser_trains_checkpoints_adapters_and_exports_a_directory_lmm_fuse_run_takes(world):
    root, manifest, model = world
    out = root / "run"
    cmd = [sys.executable, "-m", "launch.fuse", "train", "--config", str(REPO_ROOT / "configs/fuser_demo.yaml"),
           f"model.llm.pretrained={model}", f"output_dir={out}", f"data.train_manifest={manifest}",
           "data.num_samples=24", "data.epochs=2", "data.num_workers=1", "data.shuffle_buffer=8",
           "train.global_batch_size=8", "train.micro_batch_size=4", "train.warmup_steps=1", "train.log_every=1",
           "model.llm.trainable=false", "model.llm.lora.rank=4", "model.llm.lora.alpha=8", "train.lr=5e-2"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "LoRA r=4" in log and "finished at step 6 of 6" in log
    last = complete_checkpoints(out)[-1]
    names = list(torch.load(last / "mp_rank_00_model_states.pt", weights_only=False)["module"])
    assert names and all(".lora_" in n for n in names)
    assert frozen_weights.read(last)["excluded"]
    assert max(float(x) for x in re.findall(r"skip_fraction=([0-9.e-]+)", log)) > 0  # the two broken samples
    fuser = out / "fuser"
    merged, base = load_file(str(fuser / "model.safetensors")), load_file(str(model / "model.safetensors"))
    assert merged.keys() == base.keys()
    assert any(not torch.equal(merged[k], base[k]) for k in base)  # the adapters were merged in
    assert fuse_main(["run", "--manifest", str(manifest), "--model", str(fuser), "--out", str(root / "fused"),
                      "--batch-size", "4", "--max-new-tokens", "6"]) == 0
    assert json.loads((root / "fused" / "manifest.json").read_text())["caption_fields"][-1] == "fused"
