"""Compare the captions of two models, BEFORE and AFTER (e.g. a pretrained checkpoint and its fine-tuned version).

  python -m launch.compare BEFORE AFTER --out DIR [--dataset-json FILE --image-root DIR] [--split test]
                           [--max-images N] [--show 10 | --image-ids a,b,c] [eval.key=value ...]

BEFORE and AFTER are each a checkpoint (``<run>/checkpoints/global_stepN`` with meta.json) or an exported model
(``lmm_export.json``). Both caption the same images (the split of a Karpathy-format file; default: the AFTER run's
``eval.dataset_json``) under the same protocol: the AFTER run's saved ``eval`` section with ``eval.key=value``
overrides (the ``eval.`` prefix may be left out). Writes DIR/compare.json (models, protocol, metrics before /
after / delta, bootstrap intervals, all captions) and DIR/compare.md (metric table, x100, with the paired interval
of the CIDEr change, and a caption table of ``--show`` images sampled with a fixed seed, or of ``--image-ids``),
and prints the markdown. One process, on the GPU when there is one. The work is ``lmm.eval.compare``'s. Exit 2 on
a bad request (a path that is neither a checkpoint nor an export, an empty split, an unknown image id).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lmm import logs
from lmm.config import ConfigError
from lmm.eval.compare import DEFAULT_SHOW, JSON_FILE, MARKDOWN_FILE, plan_comparison, run_comparison, write_comparison
from lmm.safe_loading import UnsafeCheckpointError

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("words", nargs="+", metavar="BEFORE AFTER [eval.key=value ...]",
                        help="the two models (checkpoint or export), then protocol overrides")
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {JSON_FILE} and {MARKDOWN_FILE}")
    parser.add_argument("--dataset-json", help="Karpathy-format eval set (default: the AFTER run's eval.dataset_json)")
    parser.add_argument("--image-root", help="folder the file's image paths are relative to")
    parser.add_argument("--split", default="test", help="Karpathy split (default: test)")
    parser.add_argument("--max-images", type=int, help="score only the first N images of the split")
    parser.add_argument("--show", type=int, default=DEFAULT_SHOW, help="images in the caption table (fixed seed)")
    parser.add_argument("--image-ids", help="comma-separated image ids for the caption table instead")
    args = parser.parse_intermixed_args(argv)  # overrides may stand before, between or after options
    args.overrides = [w if w.startswith("eval.") else f"eval.{w}" for w in args.words if "=" in w]
    paths = [Path(w) for w in args.words if "=" not in w]
    if len(paths) != 2:
        parser.error(f"give exactly two models, BEFORE and AFTER (got {len(paths)} paths)")
    args.before, args.after = paths
    args.image_ids = [i.strip() for i in args.image_ids.split(",") if i.strip()] if args.image_ids else None
    if args.show < 0 or (args.max_images is not None and args.max_images < 1):
        parser.error("--show must be >= 0 and --max-images >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    args = parse_args(argv)
    try:  # a bad request fails before any weight is read
        plan = plan_comparison(args.before, args.after, args.overrides, args.dataset_json, args.image_root,
                               args.split, args.max_images, args.show, args.image_ids)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = run_comparison(plan)
    except UnsafeCheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(write_comparison(result, args.out), flush=True)
    log.info("wrote %s and %s", args.out / JSON_FILE, args.out / MARKDOWN_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
