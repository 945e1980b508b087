"""Evaluate saved checkpoints or exported models on captioning benchmarks.

  python -m launch.evaluate --checkpoint CKPT_OR_DIR [...] [--benchmark coco nocaps flickr30k] [eval.key=value ...]
  python -m launch.evaluate --watch RUN_DIR [--stop-after-step N] [--idle-timeout S] [eval.key=value ...]

CKPT_OR_DIR is one checkpoint (``<run>/checkpoints/global_stepN``, complete once its meta.json exists), an exported
model directory (with ``lmm_export.json``), or a run directory / checkpoints folder, in which case every complete
checkpoint is evaluated in step order (re-evaluating replaces earlier records). ``--watch`` evaluates each
checkpoint of a run once as it lands and skips those whose record (same protocol) is already stored, so a
restarted watcher repeats nothing. Runs as one process or under torchrun / srun (rank and world size from the
environment): every rank generates captions for its slice of the images, rank 0 scores and writes.

The protocol comes from the run's saved config (``eval.*``), changed by ``eval.key=value`` overrides (the
``eval.`` prefix may be left out), and is stored with every result. Results go to ``--results`` (default: the
run's ``eval_results.jsonl``) and to tensorboard (``<run>/tensorboard/eval``, x axis = samples seen).
Exit 2 on a bad request, or when a checkpoint file pickles more than weights (it is refused unread:
``lmm.safe_loading``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmm.config import ConfigError, EvalConfig, apply_overrides, build_dataclass
from lmm.eval.results import RESULTS_FILE
from lmm.training.checkpoint import RUN_CONFIG_FILE, run_dir_of


def resolve_checkpoints(target: Path) -> list[Path]:
    """``target`` itself if it is a checkpoint or an export, else its complete checkpoints, oldest first."""
    from lmm.eval.loading import is_loadable
    from lmm.training.checkpoint import META_FILE, complete_checkpoints

    if is_loadable(target):
        return [target]
    found = complete_checkpoints(target) if target.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no complete checkpoint (with {META_FILE}) or exported model under {target}")
    return found


def eval_config_for(checkpoint: Path, overrides: list[str]) -> EvalConfig:
    """The run's own eval protocol with ``eval.*`` overrides applied."""
    from lmm.eval.loading import saved_run_config

    merged = apply_overrides({"eval": saved_run_config(checkpoint).get("eval", {})}, overrides)
    return build_dataclass(EvalConfig, merged["eval"], "eval")


def default_results_path(checkpoint: Path) -> Path:
    return run_dir_of(checkpoint) / RESULTS_FILE


class Evaluator:
    """Evaluates one checkpoint on the chosen benchmarks and stores the records (collective across ranks)."""

    def __init__(self, benchmarks: list[str], overrides: list[str], results: Path | None, env):
        self.benchmarks, self.overrides, self.results, self.env = benchmarks, overrides, results, env

    def plan(self, checkpoint: Path):
        """(eval config, benchmark targets) for ``checkpoint``; raises ConfigError on a bad protocol."""
        from lmm.eval.evaluation import resolve_benchmarks
        from lmm.eval.loading import check_loadable

        eval_config = eval_config_for(checkpoint, self.overrides)
        targets = resolve_benchmarks(eval_config, self.benchmarks)
        if checkpoint.is_dir():
            check_loadable(checkpoint)
        return eval_config, targets

    def results_path(self, checkpoint: Path) -> Path:
        return self.results or default_results_path(checkpoint)

    def is_done(self, checkpoint: Path) -> bool:
        """Every chosen benchmark already has a record of this checkpoint under the same protocol."""
        from lmm.eval.evaluation import protocol, protocol_digest
        from lmm.eval.results import find_result

        eval_config, targets = self.plan(checkpoint)
        for target in targets:
            record = find_result(self.results_path(checkpoint), checkpoint, target.benchmark.name)
            if record is None or record.get("protocol_digest") != protocol_digest(protocol(eval_config, target)):
                return False
        return True

    def __call__(self, checkpoint: Path) -> None:
        from lmm.eval.captioning import eval_device_and_dtype
        from lmm.eval.evaluation import evaluate_benchmark, prepare_model
        from lmm.eval.loading import load_eval_model
        from lmm.eval.results import upsert_result
        from lmm.eval.tensorboard import eval_log_dir, log_eval_record

        eval_config, targets = self.plan(checkpoint)
        _, dtype = eval_device_and_dtype(eval_config, self.env.local_rank)
        loaded = prepare_model(load_eval_model(checkpoint, dtype), eval_config, self.env.local_rank)
        for target in targets:
            record = evaluate_benchmark(loaded, eval_config, target, self.env.rank, self.env.world_size)
            if record is None:
                continue
            upsert_result(self.results_path(checkpoint), record)
            log_eval_record(eval_log_dir(checkpoint), record)
            shown = " ".join(f"{k} {100 * v:.2f}" for k, v in record["metrics"].items()
                             if k in ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L"))
            print(f"{record['run_name']} step {record['step']} samples {record['samples_seen']} "
                  f"{record['benchmark']}: {shown} (x100, {record['metrics']['num_images']} images)", flush=True)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, nargs="+", default=[],
                        help="checkpoint, exported model, run directory or checkpoints folder")
    parser.add_argument("--watch", type=Path, help="run directory to watch for new checkpoints")
    parser.add_argument("--benchmark", nargs="+", default=[],
                        help="coco, nocaps, flickr30k (files from eval.benchmarks.<name>); default: eval.dataset_json")
    parser.add_argument("--results", type=Path, help=f"JSONL results file (default: <run>/{RESULTS_FILE})")
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
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from lmm import distributed

    env = distributed.detect_env()
    evaluator = Evaluator(args.benchmark, args.overrides, args.results, env)
    try:
        checkpoints = [c for target in args.checkpoint for c in resolve_checkpoints(target)]
        if args.watch and (args.watch / RUN_CONFIG_FILE).is_file():  # the run exists: check its protocol now
            checkpoints_to_check = [args.watch / "checkpoints" / "global_step0"]
        else:
            checkpoints_to_check = checkpoints
        for checkpoint in checkpoints_to_check:
            evaluator.plan(checkpoint)  # fail on a bad protocol before loading anything
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from lmm.safe_loading import UnsafeCheckpointError

    _init_distributed(env)
    try:
        if args.watch:
            from lmm.eval.watcher import CheckpointWatcher, WatchPolicy

            policy = WatchPolicy(args.poll_seconds, args.idle_timeout, args.stop_after_step)
            watcher = CheckpointWatcher(args.watch, evaluator.is_done, policy)
            reason = watcher.run(evaluator, sync=_from_rank0 if env.world_size > 1 else (lambda poll: poll),
                                 is_main=env.is_main)
            if env.is_main:
                print(f"watch of {args.watch} finished: {reason}", flush=True)
        else:
            for checkpoint in checkpoints:
                evaluator(checkpoint)
    except UnsafeCheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.shutdown()
    return 0


def _init_distributed(env) -> None:
    import torch

    from lmm import distributed

    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)  # NCCL collectives (all_gather_object) use the current device
    if env.world_size > 1:
        distributed.init_distributed()


def _from_rank0(obj):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


if __name__ == "__main__":
    sys.exit(main())
