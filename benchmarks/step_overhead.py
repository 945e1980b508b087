"""Training-step overhead: our Trainer's step (accumulation, loss/throughput bookkeeping, tensorboard logging,
the collective stop-signal check) vs a bare DeepSpeed loop (forward, backward, step) on the same tiny model, batch, ZeRO stage and 2 ranks.

    python benchmarks/step_overhead.py [--steps 30] [--rounds 4] [--nproc 2] [key=value ...]

Both loops run in one process group, alternating in rounds so machine noise hits both alike; prints each round,
the median step time of each loop and their ratio (target <= 1.05). The median over rounds, not the mean, so
that one round hit by a burst of load elsewhere on the machine does not decide the figure; the means are
printed too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def timed_steps(step_fn, steps: int) -> float:
    import torch.distributed as dist
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    dist.barrier()
    return (time.perf_counter() - start) / steps


def run_rank(args) -> None:
    import itertools

    import torch

    from data_pipeline.demo_world import capsfusion_caption, sample_item
    from data_pipeline.loader import fresh_position
    from data_pipeline.sequence import SequenceLayout
    from data_pipeline.tokenizer import CaptionTokenizer, train_tokenizer
    from lmm import distributed
    from lmm.config import load_config
    from lmm.models.lmm import build_lmm
    from lmm.training.metrics import MetricsLogger
    from lmm.training.trainer import Trainer, build_engine

    env = distributed.init_distributed()
    workdir = Path(args.workdir)
    captions = [capsfusion_caption(sample_item(0, "train", i)) for i in range(512)]
    if env.is_main:
        train_tokenizer(captions, workdir / "tok.model", 400)
    distributed.barrier()
    tokenizer = CaptionTokenizer(workdir / "tok.model")
    config = load_config(REPO_ROOT / "configs/demo.yaml", [f"output_dir={workdir}", "train.log_every=10",
                                                           "train.checkpoint_every=100000",
                                                           *args.overrides])
    layout = SequenceLayout(tokenizer, config.model.bridge.num_queries, config.data.max_caption_tokens)
    micro = config.train.micro_batch_size
    batch = layout.collate([layout.training_example(c) for c in captions[:micro]])
    batch["pixels"] = torch.randn(micro, 3, 112, 112)
    batch["data_position"] = {"worker": 0, "position": fresh_position()}  # what the loader's collator attaches
    batches = itertools.repeat(batch)

    def engine():
        torch.manual_seed(0)
        return build_engine(config, build_lmm(config.model, tokenizer), env.world_size)

    ours = Trainer(config, engine(), MetricsLogger(workdir / "tb", enabled=env.is_main))
    bare = engine()

    def our_step():
        ours.advance(batches, last=10**9)  # checkpoint_every is beyond the benchmark: no saves

    def bare_step():
        for _ in range(bare.gradient_accumulation_steps()):
            loss = bare(batch["pixels"], batch["input_ids"], batch["attention_mask"], batch["labels"])
            bare.backward(loss)
            bare.step()

    timed_steps(our_step, 3), timed_steps(bare_step, 3)  # warm-up
    our_times, bare_times = [], []
    for _ in range(args.rounds):
        our_times.append(timed_steps(our_step, args.steps))
        bare_times.append(timed_steps(bare_step, args.steps))
    if env.is_main:
        ours_s, bare_s = statistics.median(our_times), statistics.median(bare_times)
        print(f"\nstep overhead ({env.world_size} ranks, ZeRO-{config.train.zero_stage}, "
              f"global batch {config.train.global_batch_size}, {args.rounds} x {args.steps} steps each)")
        print(f"  bare DeepSpeed loop : {1000 * bare_s:8.1f} ms/step median  (rounds: "
              f"{', '.join(f'{1000 * t:.1f}' for t in bare_times)})")
        print(f"  our training step   : {1000 * ours_s:8.1f} ms/step median  (rounds: "
              f"{', '.join(f'{1000 * t:.1f}' for t in our_times)})")
        print(f"  ratio ours / bare   : {ours_s / bare_s:8.3f}   (medians; target <= 1.05; ratio of means "
              f"{statistics.mean(our_times) / statistics.mean(bare_times):.3f})")
    distributed.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.zero_stage=1")
    args = parser.parse_args()
    if "RANK" in os.environ:
        run_rank(args)
        return 0
    from lmm.torchrun import torchrun
    with tempfile.TemporaryDirectory() as workdir:
        torchrun(args.nproc, __file__, ["--steps", str(args.steps), "--rounds", str(args.rounds),
                                        "--workdir", workdir, *args.overrides])
    return 0


if __name__ == "__main__":
    sys.exit(main())
