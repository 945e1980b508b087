"""The whole CapsFusion method on the CPU box (``make demo-fusion``, after ``make demo``): make fused captions, then
train on them.

1. A tiny random fuser (``LlamaForCausalLM``, a sentencepiece tokenizer trained on the world's captions and the
   paper's prompt) is fine-tuned with ``lmm-fuse train`` on the (raw, synthetic, capsfusion) triplets of the first
   ``configs/fuser_demo.yaml`` ``data.num_samples`` training images -- the toy world's capsfusion captions play
   ChatGPT's fusions, as CapsFus-LLaMA learnt from ChatGPT's.
2. ``lmm-fuse run`` fuses every training image's raw and synthetic captions with it (``nproc`` processes, one part
   of the shards each) into a ``fused`` sidecar field and a derived manifest.
3. The demo's scaling study runs once more for the ``fused`` source on that manifest, into the same output folder:
   its results join the other three sources' and the scaling plot gets a fourth line.
Re-running skips what is done.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from data_pipeline.manifest import MANIFEST_FILE, load_manifest
from data_pipeline.tokenizer import caption_corpus
from launch import study as lmm_study
from lmm.fusion.random_model import save_random_fuser
from lmm.fusion.training import FUSER_DIR
from lmm.torchrun import torchrun

FUSER_CONFIG = "configs/fuser_demo.yaml"
FIELD = "fused"
FUSER_SIZE = {"vocab_size": 600, "hidden_size": 128, "num_layers": 2, "num_heads": 4}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="configs/study_demo.yaml")
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args(argv)
    start, world, work = time.time(), args.out / "world", args.out / "fusion"
    train_manifest = world / "train" / MANIFEST_FILE
    if not train_manifest.is_file():
        print(f"error: no demo world at {world}: run `make demo` first", file=sys.stderr)
        return 2
    base = work / "base"
    if not (base / "config.json").is_file():
        save_random_fuser(base, caption_corpus(load_manifest(train_manifest)), **FUSER_SIZE)
    run = work / "fuser-run"
    torchrun(args.nproc, "launch.fuse", ["train", "--config", FUSER_CONFIG, f"model.llm.pretrained={base}",
                                         f"output_dir={run}", f"data.train_manifest={train_manifest}"])
    fused = work / FIELD
    torchrun(args.nproc, "launch.fuse", ["run", "--manifest", str(train_manifest), "--model", str(run / FUSER_DIR),
                                         "--out", str(fused), "--field", FIELD, "--batch-size", "64",
                                         "--max-new-tokens", "40", "--max-chars", "300"])
    code = lmm_study.main([
        "run", args.study, "--backend", "local", "--nproc", str(args.nproc), f"output_dir={args.out}",
        f"caption_sources=[{FIELD}]", f"data.train_manifest={fused / MANIFEST_FILE}",
        f"eval.dataset_json={world / 'eval' / 'dataset_coco.json'}", f"eval.image_root={world / 'eval'}"])
    print(f"\nfusion stats: {json.dumps(json.loads((fused / 'stats.json').read_text()).get('total', {}))}"
          f"\nscaling plot: {args.out / 'scaling.png'} (four caption sources)"
          f"\ntotal time:   {time.time() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
