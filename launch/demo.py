"""The embedded-default main job (``make demo``): toy world -> train -> eval every checkpoint -> scaling plot.

For each caption source: 2 ranks under torchrun (CPU, gloo, DeepSpeed ZeRO-2) train the tiny model from
``configs/demo.yaml``, saving checkpoints from step 0. Then one eval job (``launch.evaluate`` on 2 ranks) scores every
checkpoint of every run on the held-out split into one results file, and ``launch.plot`` draws the scaling plot
(PNG, SVG, CSV and markdown tables, power-law fits) from it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_pipeline.demo_world import DemoWorldSpec, generate_demo_world
from launch.local import torchrun
from launch.plot import plot
from lmm.config import load_config
from lmm.eval.results import read_results


def print_table(records: list[dict]) -> None:
    print(f"\n{'run':<24} {'step':>5} {'samples seen':>13} {'CIDEr':>8} {'BLEU-4':>8} {'ROUGE-L':>8}  (x100)")
    for r in sorted(records, key=lambda r: (r["run_name"], r["step"])):
        m = r["metrics"]
        print(f"{r['run_name']:<24} {r['step']:>5} {r['samples_seen']:>13} {100 * m['CIDEr']:>8.2f} "
              f"{100 * m['Bleu_4']:>8.2f} {100 * m['ROUGE_L']:>8.2f}")


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
    samples = load_config(args.config, args.overrides).data.num_samples  # one epoch of distinct samples
    generate_demo_world(world, DemoWorldSpec(num_train=samples))
    results = args.out / "results.jsonl"
    sources = args.sources.split(",")
    run_dirs = [args.out / "runs" / source for source in sources]
    for source, run_dir in zip(sources, run_dirs):
        torchrun(args.nproc, "launch.pretrain", [
            "--config", args.config, f"data.caption_source={source}", f"run_name=demo-{source}",
            f"output_dir={run_dir}", f"data.train_manifest={world / 'train' / 'manifest.json'}",
            f"eval.dataset_json={world / 'eval' / 'dataset_coco.json'}", f"eval.image_root={world / 'eval'}",
            *args.overrides])
    torchrun(args.nproc, "launch.evaluate", ["--checkpoint", *map(str, run_dirs), "--results", str(results)])
    records = read_results(results)
    written = plot(records, args.out / "scaling")
    print_table(records)
    print(f"\nresults:     {results}\nplot:        {written['png']} (+ .svg, table {written['md']})"
          f"\ntensorboard: tensorboard --logdir {args.out / 'runs'}  (custom scalars: one chart per benchmark)"
          f"\ntotal time:  {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
