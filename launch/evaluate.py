"""Evaluate saved checkpoints or exported models on captioning benchmarks.

  python -m launch.evaluate --checkpoint CKPT_OR_DIR [...] [--benchmark coco nocaps flickr30k] [--force]
                            [eval.key=value ...]
  python -m launch.evaluate --watch RUN_DIR [--stop-after-step N] [--idle-timeout S] [eval.key=value ...]

CKPT_OR_DIR is one checkpoint (``<run>/checkpoints/global_stepN``, complete once its meta.json exists), an exported
model directory (with ``lmm_export.json``), or a run directory / checkpoints folder, in which case every complete
checkpoint is evaluated in step order. Each (checkpoint, benchmark, protocol) is evaluated once: one whose record
under the same protocol is already in the results file is skipped ("already evaluated: ..."), so a job run twice
repeats nothing; ``--force`` evaluates again and replaces the record. ``--watch`` evaluates each checkpoint of a
run as it lands, by the same rule, so a restarted watcher repeats nothing either. Runs as one process or under
torchrun / srun (rank and world size from the environment): every rank generates captions for its slice of the
images, rank 0 scores and writes.

The protocol comes from the run's saved config (``eval.*``), changed by ``eval.key=value`` overrides (the
``eval.`` prefix may be left out), and is stored with every result. Results go to ``--results`` (default: the
run's ``eval_results.jsonl``) and to tensorboard (``<run>/tensorboard/eval``, x axis = samples seen, one point
per metric and step however often a checkpoint is evaluated). The work is done by ``lmm.eval.evaluator``.
Exit 2 on a bad request, or when a checkpoint file pickles more than weights (it is refused unread:
``lmm.safe_loading``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lmm import logs
from lmm.config import ConfigError
from lmm.eval.results import RESULTS_FILE

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, nargs="+", default=[],
                        help="checkpoint, exported model, run directory or checkpoints folder")
    parser.add_argument("--watch", type=Path, help="run directory to watch for new checkpoints")
    parser.add_argument("--benchmark", nargs="+", default=[],
                        help="coco, nocaps, flickr30k (files from eval.benchmarks.<name>); default: eval.dataset_json")
    parser.add_argument("--results", type=Path, help=f"JSONL results file (default: <run>/{RESULTS_FILE})")
    parser.add_argument("--force", action="store_true",
                        help="evaluate again what the results file already holds under the same protocol")
    parser.add_argument("--poll-seconds", type=float, default=60.0, help="watch: seconds between polls")
    parser.add_argument("--idle-timeout", type=float, help="watch: stop after this many seconds without news")
    parser.add_argument("--stop-after-step", type=int, help="watch: stop once every checkpoint up to this step is done")
    parser.add_argument("rest", nargs="*", metavar="PATH_OR_OVERRIDE",
                        help="more checkpoint paths, and eval.key=value protocol overrides")
    args = parser.parse_intermixed_args(argv)  # paths and overrides may stand before, between or after options
    # nargs="+" options swallow what follows them: key=value items are overrides wherever they stand
    words = [*map(str, args.checkpoint), *args.benchmark, *args.rest]
    args.overrides = [w if w.startswith("eval.") else f"eval.{w}" for w in words if "=" in w]
    args.benchmark = [w for w in args.benchmark if "=" not in w]
    args.checkpoint = [Path(w) for w in [*map(str, args.checkpoint), *args.rest] if "=" not in w]
    if bool(args.checkpoint) == bool(args.watch):
        parser.error("give checkpoints (--checkpoint PATH ...) or --watch RUN_DIR, not both or neither")
    if args.force and args.watch:
        parser.error("--force applies to --checkpoint: a watcher evaluates what is not stored yet")
    return args


def main(argv: list[str] | None = None) -> int:
    logs.setup()
    args = parse_args(argv)
    from lmm.distributed import detect_env
    from lmm.eval.evaluator import Evaluator, eval_session, evaluate_checkpoints, watch_run
    from lmm.eval.watcher import WatchPolicy
    from lmm.safe_loading import UnsafeCheckpointError

    env = detect_env()
    evaluator = Evaluator(args.benchmark, args.overrides, args.results, env, force=args.force)
    try:
        checkpoints = evaluator.check(args.checkpoint, args.watch)  # a bad request fails before any loading
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with eval_session(env):
            if args.watch:
                reason = watch_run(evaluator, args.watch,
                                   WatchPolicy(args.poll_seconds, args.idle_timeout, args.stop_after_step))
                log.info("watch of %s finished: %s", args.watch, reason)
            else:
                evaluate_checkpoints(evaluator, checkpoints)
    except UnsafeCheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
