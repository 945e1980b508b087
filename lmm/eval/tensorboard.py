"""Eval metrics in tensorboard: ``eval/<benchmark>/<metric>`` against samples seen, plus a custom-scalars layout
that draws every run (one per caption source) on one chart per benchmark and metric."""
from __future__ import annotations

import re
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from lmm.training.checkpoint import run_dir_of

CHART_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")


def eval_log_dir(loaded_path: str | Path) -> Path:
    """``<run>/tensorboard/eval`` for a checkpoint, ``<export>/tensorboard/eval`` for an exported model."""
    return run_dir_of(loaded_path) / "tensorboard" / "eval"


def custom_scalars_layout(benchmarks: list[str], metrics: tuple[str, ...] = CHART_METRICS) -> dict:
    """{category "eval <metric>": {chart <benchmark>: Multiline over all runs' ``eval/<benchmark>/<metric>``}}."""
    return {f"eval {metric}": {benchmark: ["Multiline", [f"^eval/{re.escape(benchmark)}/{re.escape(metric)}$"]]
                               for benchmark in sorted(benchmarks)} for metric in metrics}


def log_eval_record(log_dir: str | Path, record: dict) -> None:
    """Write a result's numeric metrics at ``samples_seen`` and the layout for its benchmark."""
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for name, value in record["metrics"].items():
            if isinstance(value, float):
                writer.add_scalar(f"eval/{record['benchmark']}/{name}", value, global_step=record["samples_seen"])
        writer.add_custom_scalars(custom_scalars_layout([record["benchmark"]]))
    finally:
        writer.close()
