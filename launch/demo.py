"""The embedded-default main job (``make demo``): the toy world, then the demo's scaling study through lmm-study.

Generates the toy world (``data_pipeline.demo_world``: train shards with raw / synthetic / capsfusion captions and
a held-out eval split with human-style references), then runs ``configs/study_demo.yaml`` with the local backend:
per caption source a WSD main run and its decay branches (2 ranks under torchrun, CPU, gloo, DeepSpeed ZeRO-2),
one eval of every budget point, the study table and the scaling plot with 95% bootstrap bands. Then the step
people take after pretraining: a LoRA fine-tune of the capsfusion model on the world's caption-style split
(``configs/demo_lora.yaml``: ``lmm-prepare karpathy`` shards, adapters only, ``model.init_from`` the main run's last
checkpoint) and ``lmm-compare``'s before/after table on the style's test images. Re-running skips what is done.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_pipeline import prepare
from data_pipeline.demo_world import DemoWorldSpec, generate_demo_world
from launch import compare
from launch import study as lmm_study
from lmm.study import load_study
from lmm.torchrun import torchrun
from lmm.training.checkpoint import complete_checkpoints

LORA_CONFIG = "configs/demo_lora.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="configs/study_demo.yaml")
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the study or of every run")
    args = parser.parse_args(argv)
    start = time.time()
    world = args.out / "world"
    budgets = load_study(args.study, [o for o in args.overrides if o.startswith("budgets=")]).budgets
    generate_demo_world(world, DemoWorldSpec(num_train=budgets[-1]))  # the largest budget: one epoch of it
    code = lmm_study.main([
        "run", args.study, "--backend", "local", "--nproc", str(args.nproc), f"output_dir={args.out}",
        f"data.train_manifest={world / 'train' / 'manifest.json'}",
        f"eval.dataset_json={world / 'eval' / 'dataset_coco.json'}", f"eval.image_root={world / 'eval'}",
        *args.overrides])
    if code == 0:
        code = fine_tune_style(args.out, world, args.nproc)
    print(f"\nresults:     {args.out / 'results.jsonl'}"
          f"\nLoRA style:  {args.out / 'lora-style' / 'compare' / 'compare.md'}"
          f"\ntensorboard: tensorboard --logdir {args.out}  (custom scalars: one chart per benchmark)"
          f"\ntotal time:  {time.time() - start:.0f} s")
    return code


def fine_tune_style(out: Path, world: Path, nproc: int) -> int:
    """LoRA-fine-tune the capsfusion main run's last checkpoint on the style split, then compare it with its
    starting point on the style's test images (exit code of ``lmm-compare``)."""
    style = world / "style"
    shards = style / "train_shards"
    if not (shards / "manifest.json").is_file():
        prepare.main(["karpathy", str(style / "dataset_style.json"), "--image-root", str(style), "--split", "train",
                      "--out", str(shards), "--workers", "1"])
    parent = complete_checkpoints(out / "capsfusion" / "wsd-main")[-1]
    run = out / "lora-style"
    torchrun(nproc, "launch.pretrain", [
        "--config", LORA_CONFIG, f"output_dir={run}", f"model.init_from={parent}", f"data.train_manifest={shards}",
        f"eval.dataset_json={style / 'dataset_style.json'}", f"eval.image_root={style}", "eval.split=test"])
    return compare.main([str(parent), str(complete_checkpoints(run)[-1]), "--out", str(run / "compare"),
                         "--show", "8"])


if __name__ == "__main__":
    sys.exit(main())
