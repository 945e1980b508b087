"""Eval jobs: which checkpoints, under which protocol, and each (checkpoint, benchmark, protocol) evaluated once.

``Evaluator`` evaluates one checkpoint (or exported model) on the chosen benchmarks and stores one record per
benchmark in the results file and in tensorboard; every rank generates captions for its slice of the images,
rank 0 scores and writes. A benchmark whose record of the checkpoint under the same protocol (same
``protocol_digest``) is already in the results file is skipped -- ``pending`` is that one decision, used by a
plain eval job and by the watcher alike -- unless ``force`` is set, which redoes it and replaces the record (and
its tensorboard points: ``lmm.eval.tensorboard`` keeps one point per tag and step). Under several ranks rank 0
decides and the others follow, so all ranks evaluate the same benchmarks together.

``check`` fails a bad request (unknown benchmark, bad override, nothing to evaluate) before any weight is read;
``evaluate_checkpoints`` and ``watch_run`` do the work inside ``eval_session`` (process group and device).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from lmm import distributed
from lmm.config import EvalConfig, apply_overrides, build_dataclass
from lmm.distributed import DistEnv
from lmm.eval.captioning import eval_device_and_dtype
from lmm.eval.evaluation import BenchmarkTarget, evaluate_benchmark, prepare_model, protocol, protocol_digest, \
    resolve_benchmarks
from lmm.eval.loading import check_loadable, is_loadable, load_eval_model, saved_run_config
from lmm.eval.results import RESULTS_FILE, find_result, upsert_result
from lmm.eval.tensorboard import eval_log_dir, log_eval_record
from lmm.eval.watcher import CheckpointWatcher, WatchPolicy
from lmm.training.checkpoint import META_FILE, RUN_CONFIG_FILE, complete_checkpoints, run_dir_of

log = logging.getLogger(__name__)

SHOWN_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")


def resolve_checkpoints(target: Path) -> list[Path]:
    """``target`` itself if it is a checkpoint or an export, else its complete checkpoints, oldest first."""
    if is_loadable(target):
        return [target]
    found = complete_checkpoints(target) if target.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no complete checkpoint (with {META_FILE}) or exported model under {target}")
    return found


def eval_config_for(checkpoint: Path, overrides: list[str]) -> EvalConfig:
    """The run's own eval protocol with ``eval.*`` overrides applied."""
    merged = apply_overrides({"eval": saved_run_config(checkpoint).get("eval", {})}, overrides)
    return build_dataclass(EvalConfig, merged["eval"], "eval")


def default_results_path(checkpoint: Path) -> Path:
    return run_dir_of(checkpoint) / RESULTS_FILE


def is_stored(results: Path, checkpoint: Path, eval_config: EvalConfig, target: BenchmarkTarget) -> bool:
    """``results`` holds the record of ``checkpoint`` on ``target`` under this protocol."""
    record = find_result(results, checkpoint, target.benchmark.name)
    return record is not None and record.get("protocol_digest") == protocol_digest(protocol(eval_config, target))


class Evaluator:
    """Evaluates one checkpoint on the chosen benchmarks and stores the records (collective across ranks)."""

    def __init__(self, benchmarks: list[str], overrides: list[str], results: Path | None, env: DistEnv,
                 force: bool = False):
        self.benchmarks, self.overrides, self.results, self.env = benchmarks, overrides, results, env
        self.force = force
        self.sync: Callable = from_rank0 if env.world_size > 1 else (lambda obj: obj)

    def plan(self, checkpoint: Path) -> tuple[EvalConfig, list[BenchmarkTarget]]:
        """(eval config, benchmark targets) for ``checkpoint``; raises ConfigError on a bad protocol."""
        eval_config = eval_config_for(checkpoint, self.overrides)
        targets = resolve_benchmarks(eval_config, self.benchmarks)
        if checkpoint.is_dir():
            check_loadable(checkpoint)
        return eval_config, targets

    def results_path(self, checkpoint: Path) -> Path:
        return self.results or default_results_path(checkpoint)

    def pending(self, checkpoint: Path, planned: tuple[EvalConfig, list[BenchmarkTarget]] | None = None
                ) -> list[BenchmarkTarget]:
        """The chosen benchmarks without a stored record of ``checkpoint`` under the same protocol (``planned``:
        ``plan(checkpoint)`` when the caller has it already)."""
        eval_config, targets = planned or self.plan(checkpoint)
        return [t for t in targets if not is_stored(self.results_path(checkpoint), checkpoint, eval_config, t)]

    def is_done(self, checkpoint: Path) -> bool:
        """Every chosen benchmark already has a record of this checkpoint under the same protocol."""
        return not self.pending(checkpoint)

    def __call__(self, checkpoint: Path) -> int:
        """Evaluate the pending benchmarks (all of them with ``force``); returns how many were evaluated."""
        eval_config, targets = planned = self.plan(checkpoint)
        if self.env.is_main:  # rank 0's view of the results file rules
            names = [t.benchmark.name for t in (targets if self.force else self.pending(checkpoint, planned))]
        names = self.sync(names if self.env.is_main else None)
        todo = [t for t in targets if t.benchmark.name in names]
        skipped = [t.benchmark.name for t in targets if t.benchmark.name not in names]
        if skipped:
            log.info("already evaluated: %s on %s, same protocol (use --force to redo)", checkpoint,
                     ", ".join(skipped))
        if not todo:
            return 0
        _, dtype = eval_device_and_dtype(eval_config, self.env.local_rank)
        loaded = prepare_model(load_eval_model(checkpoint, dtype), eval_config, self.env.local_rank)
        for target in todo:
            record = evaluate_benchmark(loaded, eval_config, target, self.env.rank, self.env.world_size)
            if record is None:
                continue
            upsert_result(self.results_path(checkpoint), record)
            log_eval_record(eval_log_dir(checkpoint), record)
            shown = " ".join(f"{k} {100 * v:.2f}" for k, v in record["metrics"].items() if k in SHOWN_METRICS)
            log.info("%s step %s samples %s %s: %s (x100, %s images)", record["run_name"], record["step"],
                     record["samples_seen"], record["benchmark"], shown, record["metrics"]["num_images"])
        return len(todo)

    def check(self, checkpoints: list[Path], watch: Optional[Path] = None) -> list[Path]:
        """The checkpoints the targets name, each one's protocol checked before anything is loaded (a watched
        run's once its config exists); raises ConfigError, FileNotFoundError or ValueError on a bad request."""
        resolved = [c for target in checkpoints for c in resolve_checkpoints(target)]
        if watch and (watch / RUN_CONFIG_FILE).is_file():
            to_check = [watch / "checkpoints" / "global_step0"]
        else:
            to_check = resolved
        for checkpoint in to_check:
            self.plan(checkpoint)
        return resolved


def evaluate_checkpoints(evaluator: Evaluator, checkpoints: list[Path]) -> int:
    """Each checkpoint in order; returns how many (checkpoint, benchmark) records were evaluated."""
    return sum(evaluator(checkpoint) for checkpoint in checkpoints)


def watch_run(evaluator: Evaluator, run_dir: Path, policy: WatchPolicy) -> str:
    """Evaluate each checkpoint of ``run_dir`` once as it lands (``evaluator.is_done`` decides); returns why the
    watch ended."""
    watcher = CheckpointWatcher(run_dir, evaluator.is_done, policy)
    return watcher.run(evaluator, sync=evaluator.sync, is_main=evaluator.env.is_main)


@contextmanager
def eval_session(env: DistEnv):
    """This rank's device and, under several ranks, the process group; torn down on the way out."""
    import torch

    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(env.local_rank)  # NCCL collectives (all_gather_object) use the current device
        if env.world_size > 1:
            distributed.init_distributed()
        yield
    finally:
        distributed.shutdown()


def from_rank0(obj):
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
