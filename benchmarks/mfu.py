"""Training-step throughput and MFU of a configuration on one device (BENCHMARKS.md, "MFU").

    python benchmarks/mfu.py --config configs/capsfusion_10m.yaml --steps 50 --micro-batch 32 [key=value ...]

Random initialisation (no weights are read, so the 7B shape runs without a download; the frozen parts are random
too, hence ``model.allow_random_frozen=true``), synthetic full-length
samples (``<s> [IMG] <image>xQ [/IMG]`` + ``data.max_caption_tokens`` caption tokens + ``</s>``), the real model and
the real DeepSpeed engine with the config's precision and ZeRO stage, in one process. Prints per-step time,
samples/s, tokens/s, model GFLOP per sample (``lmm.flops``: trainable vs frozen parts), achieved TFLOP/s and
MFU = achieved / peak. The peak is the GPU's dense bf16 figure (``--peak-tflops`` overrides; required on CPU).
On CUDA it also prints the peak GPU memory of the training steps (warm-up included; model construction excluded):
``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``, in GiB.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data_pipeline.sequence import IGNORE_INDEX, SequenceLayout  # noqa: E402
from data_pipeline.tokenizer import IMAGE_MARKERS  # noqa: E402
from lmm.config import load_config  # noqa: E402


@dataclass
class SyntheticVocabulary:
    """The ids the model needs, for a vocabulary of ``pieces`` sentencepiece pieces plus the image markers (the
    benchmark feeds random caption ids, so no sentencepiece model is required)."""
    pieces: int
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        self.pad_id = self.eos_id
        self.img_start_id, self.img_end_id, self.image_id = self.pieces, self.pieces + 1, self.pieces + 2
        self.vocab_size = self.pieces + len(IMAGE_MARKERS)


def synthetic_batch(layout: SequenceLayout, micro_batch: int, image_size: tuple, device, generator) -> dict:
    """Full-length training examples with random caption ids (ids 3.. below the markers) and random pixels."""
    examples = []
    for _ in range(micro_batch):
        caption = torch.randint(3, layout.tokenizer.pieces, (layout.max_caption_tokens,), generator=generator)
        prefix, target = layout.image_prefix(), caption.tolist() + [layout.tokenizer.eos_id]
        examples.append((prefix + target, [IGNORE_INDEX] * len(prefix) + target))
    batch = {k: v.to(device) for k, v in layout.collate(examples).items()}
    batch["pixels"] = torch.randn(micro_batch, 3, *image_size, generator=generator).to(device)
    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/capsfusion_10m.yaml")
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of one device, in TFLOP/s")
    parser.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    args = parser.parse_args(argv)

    from lmm import distributed
    from lmm.flops import peak_flops_for, training_flops
    from lmm.models.lmm import build_lmm, parameter_counts
    from lmm.planning import model_shape
    from lmm.training.trainer import build_engine, seed_everything, set_tf32

    global_batch = args.micro_batch * args.accumulation
    config = load_config(args.config, [
        *args.overrides, "model.vision.pretrained=null", "model.llm.pretrained=null", "model.tokenizer.path=null",
        "model.allow_random_frozen=true", "train.warmup_steps=1",
        f"train.micro_batch_size={args.micro_batch}", f"train.global_batch_size={global_batch}",
        f"data.num_samples={global_batch * (args.steps + args.warmup)}"])
    vocab = SyntheticVocabulary(config.model.tokenizer.vocab_size)
    env = distributed.init_distributed()
    if env.world_size != 1:
        raise SystemExit("benchmarks/mfu.py measures one device; run it without torchrun")
    seed_everything(config.seed)
    set_tf32(config.train.tf32)
    cuda = torch.cuda.is_available()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_flops_for(torch.cuda.get_device_name())
                                                              if cuda else None)
    if peak is None:
        raise SystemExit("unknown peak FLOP/s for this device: pass --peak-tflops")

    start = time.perf_counter()
    with torch.device("cuda" if cuda else "cpu"):  # random init of the decoder on the GPU takes seconds, not minutes
        model = build_lmm(config.model, vocab)
    engine = build_engine(config, model, world_size=1)
    build_seconds = time.perf_counter() - start
    shape = model_shape(config)
    flops = training_flops(shape)
    per_sample = sum(flops.values())
    layout = SequenceLayout(vocab, config.model.bridge.num_queries, config.data.max_caption_tokens)
    generator = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(layout, args.micro_batch, model.vision.image_size, engine.device, generator)
               for _ in range(min(args.accumulation, 4))]
    if cuda:  # peak memory of the training steps, not of the fp32 construction DeepSpeed cast to bf16
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    step_seconds = []
    for step in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        for micro in range(args.accumulation):
            b = batches[micro % len(batches)]
            loss = engine(b["pixels"], b["input_ids"], b["attention_mask"], b["labels"])
            engine.backward(loss)
            engine.step()
        sync()
        if step >= args.warmup:
            step_seconds.append(time.perf_counter() - t0)

    step_time = statistics.median(step_seconds)
    samples_per_s = global_batch / step_time
    achieved = per_sample * samples_per_s
    counts = parameter_counts(model)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device: {device}; config {args.config} {' '.join(args.overrides)}")
    print(f"precision {config.train.precision}, ZeRO-{config.train.zero_stage}, micro-batch {args.micro_batch} x "
          f"accumulation {args.accumulation}, sequence {shape.seq_len} tokens, "
          f"checkpointing llm={config.model.llm.grad_checkpointing} vision={config.model.vision.grad_checkpointing}, "
          f"attention {config.model.llm.attn_implementation}; built in {build_seconds:.1f} s")
    print(f"parameters: trainable {counts['total/trainable']:,}  frozen {counts['total/frozen']:,}")
    print("model GFLOP per sample: " + ", ".join(f"{k} {v / 1e9:.4g}" for k, v in flops.items())
          + f", total {per_sample / 1e9:.6g}")
    print(f"step time: median {step_time * 1e3:.1f} ms (min {min(step_seconds) * 1e3:.1f}, "
          f"max {max(step_seconds) * 1e3:.1f}) over {len(step_seconds)} steps after {args.warmup} warm-up")
    print(f"samples/s: {samples_per_s:.2f}   tokens/s: {samples_per_s * shape.seq_len:.0f}")
    print(f"achieved: {achieved / 1e12:.4g} TFLOP/s   peak: {peak / 1e12:.4g} TFLOP/s   MFU: {achieved / peak:.1%}")
    if cuda:
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        print(f"max GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB   reserved: "
              f"{torch.cuda.max_memory_reserved() / 2**30:.2f} GiB   (of {total / 2**30:.1f} GiB; training steps)")
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
