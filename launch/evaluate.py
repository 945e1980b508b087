"""Evaluate saved checkpoints: ``python -m launch.evaluate CKPT_OR_RUN_DIR [--results FILE] [eval.key=value ...]``.

CKPT_OR_RUN_DIR is one checkpoint (``.../checkpoints/global_stepN``) or a run directory / checkpoints folder,
in which case every complete checkpoint is evaluated in step order. Runs single-process or under torchrun
(generation is split across ranks). Each result goes to the JSONL results file and to the run's tensorboard
(``eval/<benchmark>/<metric>`` against samples seen).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmm.config import ConfigError, EvalConfig, apply_overrides, build_dataclass


def resolve_checkpoints(target: Path) -> list[Path]:
    from lmm.training.checkpoint import META_FILE, complete_checkpoints

    if (target / META_FILE).is_file():
        return [target]
    found = complete_checkpoints(target)
    if not found:
        raise FileNotFoundError(f"no complete checkpoint (with {META_FILE}) under {target}")
    return found


def eval_config_for(checkpoint: Path, overrides: list[str]) -> EvalConfig:
    """The run's own eval protocol with ``eval.*`` overrides applied."""
    from lmm.training.checkpoint import RUN_CONFIG_FILE

    saved = json.loads((checkpoint.parent.parent / RUN_CONFIG_FILE).read_text())
    merged = apply_overrides({"eval": saved["eval"]}, overrides)
    return build_dataclass(EvalConfig, merged["eval"], "eval")


def log_to_tensorboard(checkpoint: Path, record: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(checkpoint.parent.parent / "tensorboard" / "eval"))
    for name, value in record["metrics"].items():
        if isinstance(value, float):
            writer.add_scalar(f"eval/{record['benchmark']}/{name}", value, global_step=record["samples_seen"])
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="checkpoint, run directory or checkpoints folder")
    parser.add_argument("--results", type=Path, default=Path("results.jsonl"), help="JSONL results file")
    parser.add_argument("overrides", nargs="*", help="eval.key=value protocol overrides")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if not o.startswith("eval.")]
    try:
        if bad:
            raise ConfigError(f"only eval.* overrides apply to evaluation, got {bad}")
        checkpoints = resolve_checkpoints(args.target)
        configs = [eval_config_for(c, args.overrides) for c in checkpoints]
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from lmm import distributed
    from lmm.eval.captioning import evaluate_checkpoint
    from lmm.eval.results import upsert_result

    env = distributed.detect_env()
    if env.world_size > 1:
        distributed.init_distributed()
    try:
        for checkpoint, eval_config in zip(checkpoints, configs):
            record = evaluate_checkpoint(checkpoint, eval_config, env.rank, env.world_size)
            if env.is_main:
                upsert_result(args.results, record)
                log_to_tensorboard(checkpoint, record)
                print(f"{record['run_name']} step {record['step']} samples {record['samples_seen']} "
                      f"{record['benchmark']} CIDEr {record['metrics']['CIDEr']:.4f}", flush=True)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
