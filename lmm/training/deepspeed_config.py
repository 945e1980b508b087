"""DeepSpeed config = a JSON template (``configs/deepspeed/``) + the values the experiment config owns.

The experiment config is the single source of truth for batch sizes, precision, ZeRO stage and optimizer; the
template holds DeepSpeed-only knobs (bucket sizes, overlap, persistence thresholds). The LR schedule is not in
the DeepSpeed config: ``lmm.training.schedule`` hands DeepSpeed the scheduler object (a template's
``scheduler`` section is dropped).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from lmm.config import ConfigError, ExperimentConfig, check_world_size


def read_template(path: str | Path | None) -> dict:
    """The template's JSON ({} for none); a relative path is the working directory's (``lmm.config.read_yaml``
    already made a YAML file's own relative path the file's)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config key 'train.deepspeed_template': no such file {path}")
    return json.loads(path.read_text())


def build_deepspeed_config(config: ExperimentConfig, world_size: int) -> dict:
    t = config.train
    ds = copy.deepcopy(read_template(t.deepspeed_template))
    ds["train_batch_size"] = t.global_batch_size
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch_size
    ds["gradient_accumulation_steps"] = check_world_size(config, world_size)
    ds["gradient_clipping"] = t.grad_clip
    ds["bf16"] = {"enabled": t.precision == "bf16"}
    ds["zero_optimization"] = {**ds.get("zero_optimization", {}), "stage": t.zero_stage}
    optimizer = ds.setdefault("optimizer", {"type": "AdamW", "params": {"torch_adam": True, "adam_w_mode": True}})
    optimizer["params"] = {**optimizer.get("params", {}), "lr": t.lr, "betas": list(t.betas),
                           "weight_decay": t.weight_decay}
    ds.pop("scheduler", None)  # the schedule is lmm.training.schedule's, passed to deepspeed.initialize
    return ds
