"""Fusion throughput, in one run:

1. captions/s of ``lmm-fuse run`` against a bare batched ``generate`` loop, side by side;
2. what the fused field costs the training loader: reading a shard with its keyed sidecar joined
   (``data_pipeline.sidecar``) against reading it alone, and the bytes of a sidecar line against a shard sample.

For 1:
Both fuse the same samples (real shards written here with the demo world's raw and synthetic captions) with the
same random-init ``LlamaForCausalLM`` directory (``lmm.fusion.random_model``), the same batch size and number of
new tokens, greedy:

* bare: the prompts prepared beforehand; per batch ``tokenizer(padding=True)`` -> ``model.generate`` ->
  ``batch_decode`` of the new tokens;
* ``lmm-fuse run``: ``launch.fuse.main(["run", ...])`` in-process, the command's whole code path: request checks,
  reading the shards, prompts, generation, post-processing, sidecars, done records, manifest and stats.

Each is timed from loading the model to its last caption (imports and one warm-up batch excluded); rounds
alternate and the best of each is reported, with the range of the round-by-round ratios (on shared cores, the
noise). The bare loop batches each shard's prompts as the command does, so both see the same batches and the fused
captions must come out identical.

For 2: a shard of ``--join-samples`` samples with 16 KB images (about what img2dataset writes at 256 px) and a
sidecar of ~250-character captions; full reads, a resume near the end and parsing the sidecar alone, best of 5.

  PYTHONPATH=. python benchmarks/fuse_throughput.py [--shards 4] [--per-shard 32] [--batch 16] [--new-tokens 32]
      [--hidden 256] [--layers 4] [--threads 1] [--rounds 5] [--join-samples 10000]
"""
from __future__ import annotations

import argparse
import io
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from data_pipeline.demo_world import sample_item
from data_pipeline.manifest import Piece, load_manifest, write_manifest
from data_pipeline.shard_format import encode_sample, write_shard
from data_pipeline.shard_reader import read_piece
from data_pipeline.sidecar import SidecarWriter, read_sidecars
from launch.fuse import main as fuse_main
from lmm.fusion.generate import Fuser  # noqa: F401  (imported here, not inside the timed run)
from lmm.fusion.prompt import fusion_prompt, postprocess
from lmm.fusion.random_model import save_random_fuser
from lmm.fusion.run import fusion_inputs

MAX_CHARS = 100_000  # no cap: the bare loop has none either


def write_world(folder: Path, shards: int, per_shard: int) -> Path:
    """Shards of samples with the demo world's raw and synthetic captions (``sample_item``; one small image for
    all: fusion never decodes it); returns the manifest."""
    folder.mkdir(parents=True)
    image = io.BytesIO()
    Image.new("RGB", (32, 32), "teal").save(image, format="JPEG")
    entries = []
    for shard in range(shards):
        items = (sample_item(0, "train", shard * per_shard + i) for i in range(per_shard))
        samples = [encode_sample(f"b{shard:03d}_{i:05d}", "jpg", image.getvalue(),
                                 {f: item.captions[f] for f in ("raw", "synthetic")}) for i, item in enumerate(items)]
        entries.append(write_shard(folder / f"b{shard:03d}.tar", samples))
    write_manifest(folder / "manifest.json", entries, caption_fields=["raw", "synthetic"])
    return folder / "manifest.json"


def prompts_of(manifest: Path) -> list[list[tuple[str, str]]]:
    """Per shard, (key, prompt) of every sample that has both captions, in manifest order."""
    shards = []
    for shard in load_manifest(manifest):
        samples = read_piece(Piece(shard.url, 0, shard.num_samples))
        inputs = [(s["__key__"], fusion_inputs(s, "raw", "synthetic")) for s in samples]
        shards.append([(key, fusion_prompt(*pair)) for key, pair in inputs if isinstance(pair, tuple)])
    return shards


@torch.inference_mode()
def bare_loop(model_dir: Path, shards: list[list[tuple[str, str]]], batch: int, new_tokens: int) -> dict:
    """key -> generated text: each shard's prompts in batches of ``batch`` (the batches ``lmm-fuse run`` makes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = {}
    for prompts in shards:
        for start in range(0, len(prompts), batch):
            keys, chunk = zip(*prompts[start:start + batch])
            inputs = tokenizer(list(chunk), return_tensors="pt", padding=True)
            out = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens,
                                 pad_token_id=tokenizer.pad_token_id)
            texts.update(zip(keys, tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                          skip_special_tokens=True)))
    return texts


def fuse_run(manifest: Path, model_dir: Path, out: Path, batch: int, new_tokens: int) -> dict:
    """``lmm-fuse run``; returns key -> fused caption from its sidecars."""
    assert fuse_main(["run", "--manifest", str(manifest), "--model", str(model_dir), "--out", str(out),
                      "--batch-size", str(batch), "--max-new-tokens", str(new_tokens), "--max-chars",
                      str(MAX_CHARS), "--backend", "transformers"]) == 0
    rows = [json.loads(line) for path in sorted(out.glob("*.fused.jsonl")) for line in path.read_text().splitlines()]
    return {row["__key__"]: row["fused"] for row in rows}


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=32, help="samples per shard")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on shared cores more threads make both figures swing by up to 10x)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--join-samples", type=int, default=10_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_world(tmp / "shards", args.shards, args.per_shard)
        shards = prompts_of(manifest)
        captions = sum(len(prompts) for prompts in shards)
        model_dir = save_random_fuser(tmp / "model", [p for prompts in shards for _, p in prompts], args.vocab,
                                      args.hidden, args.layers, args.heads)
        bare_loop(model_dir, [shards[0][:args.batch]], args.batch, args.new_tokens)  # warm-up, untimed
        bare_s, ours_s, same = [], [], True
        for out in (tmp / f"out{r}" for r in range(args.rounds)):
            seconds, texts = timed(bare_loop, model_dir, shards, args.batch, args.new_tokens)
            bare_s.append(seconds)
            seconds, fused = timed(fuse_run, manifest, model_dir, out, args.batch, args.new_tokens)
            ours_s.append(seconds)
            same &= fused == {k: c for k, t in texts.items() if (c := postprocess(t, MAX_CHARS)) is not None}
        params = parameters(model_dir)
    bare, ours = captions / min(bare_s), captions / min(ours_s)
    print(f"fusion throughput: {captions} captions ({args.shards} shards x {args.per_shard}), batch {args.batch}, "
          f"{args.new_tokens} new tokens, greedy; LlamaForCausalLM hidden {args.hidden}, {args.layers} layers, "
          f"{params / 1e6:.2f}M parameters; {torch.get_num_threads()} thread(s); best of {args.rounds} round(s)")
    print(f"  bare batched generate loop : {bare:8.2f} captions/s")
    print(f"  lmm-fuse run               : {ours:8.2f} captions/s")
    paired = sorted(b / o for b, o in zip(bare_s, ours_s))
    print(f"  ratio run / bare           : {ours / bare:8.3f}   (target >= 0.9; round by round "
          f"{paired[0]:.2f}-{paired[-1]:.2f})")
    print(f"  fused captions identical   : {same}")
    join_benchmark(args.join_samples)


def read_all(piece: Piece) -> int:
    return sum(1 for _ in read_piece(piece))


def join_benchmark(samples: int) -> None:
    rng, image = random.Random(0), random.Random(1).randbytes(16_000)
    words = ["a", "red", "dog", "runs", "on", "the", "sandy", "beach", "near", "Paris", "at", "sunset", "with", "two",
             "people", "and", "an", "old", "blue", "bike"]
    with tempfile.TemporaryDirectory() as tmp:
        shard, sidecar = Path(tmp) / "a.tar", Path(tmp) / "a.fused.jsonl"
        write_shard(shard, (encode_sample(f"k{i:07d}", "jpg", image, {"raw": "alt text " * 6,
                                                                     "synthetic": "a photo " * 6})
                            for i in range(samples)))
        with SidecarWriter(sidecar) as writer:
            for i in range(samples):
                writer.write(f"k{i:07d}", {"fused": " ".join(rng.choices(words, k=60))[:250]})
        resume = max(samples - samples // 20, 0)
        rows = []
        for name, sidecars in (("shard alone", ()), ("shard + sidecar join", (str(sidecar),))):
            full = min(timed(read_all, Piece(str(shard), 0, samples, sidecars))[0] for _ in range(5))
            tail = min(timed(read_all, Piece(str(shard), resume, samples, sidecars))[0] for _ in range(5))
            rows.append((name, full, tail))
        parse = min(timed(read_sidecars, [str(sidecar)])[0] for _ in range(5))
        line, sample = writer.entry["bytes"] / samples, shard.stat().st_size / samples
    print(f"sidecar join: one shard of {samples} samples ({sample / 1000:.1f} KB each), sidecar {line:.0f} bytes "
          f"per line ({line / sample:.1%} of a sample)")
    for name, full, tail in rows:
        print(f"  {name:<22} full read {full * 1000:8.1f} ms ({samples / full:8.0f} samples/s), "
              f"resume at {resume} {tail * 1000:6.1f} ms")
    print(f"  parsing the sidecar        : {parse * 1000:8.1f} ms ({parse / samples * 1e6:.1f} us per sample; full reads "
          f"differ by {(rows[1][1] - rows[0][1]) / samples * 1e6:+.1f} us per sample)")


def parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118 (not iterable)


if __name__ == "__main__":
    main()
