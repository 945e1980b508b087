"""The embedded-default main job (``make demo``): toy world -> train -> eval every checkpoint -> scaling plot.

For each caption source: 2 ranks under torchrun (CPU, gloo, DeepSpeed ZeRO-2) train the tiny model from
``configs/demo.yaml``, saving checkpoints from step 0; every checkpoint is then evaluated (CIDEr-D on the held-out
split, generation split over 2 ranks) into one results file, and the scaling plot is drawn from it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_pipeline.demo_world import DemoWorldSpec, generate_demo_world
from launch.local import torchrun
from launch.plot import plot
from lmm.eval.results import read_results


def print_table(records: list[dict]) -> None:
    print(f"\n{'run':<24} {'step':>5} {'samples seen':>13} {'CIDEr':>8}")
    for r in sorted(records, key=lambda r: (r["run_name"], r["step"])):
        print(f"{r['run_name']:<24} {r['step']:>5} {r['samples_seen']:>13} {100 * r['metrics']['CIDEr']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--sources", default="capsfusion,synthetic,raw", help="caption sources, one run each")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args(argv)
    start = time.time()
    world = args.out / "world"
    generate_demo_world(world, DemoWorldSpec())
    results = args.out / "results.jsonl"
    for source in args.sources.split(","):
        run_dir = args.out / "runs" / source
        torchrun(args.nproc, "launch.pretrain", [
            "--config", args.config, f"data.caption_source={source}", f"run_name=demo-{source}",
            f"output_dir={run_dir}", f"data.train_manifest={world / 'train' / 'manifest.json'}",
            f"eval.dataset_json={world / 'eval' / 'dataset_coco.json'}", f"eval.image_root={world / 'eval'}",
            *args.overrides])
        torchrun(args.nproc, "launch.evaluate", [str(run_dir), "--results", str(results)])
    records = read_results(results)
    png = plot(records, args.out / "scaling.png")
    print_table(records)
    print(f"\nresults:     {results}\nplot:        {png}\ntensorboard: tensorboard --logdir {args.out / 'runs'}"
          f"\ntotal time:  {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
