"""Load a model for eval: a DeepSpeed checkpoint of any ZeRO stage, or an exported model directory.

A DeepSpeed checkpoint (``<run>/checkpoints/global_stepN`` with ``meta.json``) is consolidated into one fp32
state dict with DeepSpeed's own ``zero_to_fp32`` utilities, whatever the stage and the training world size, and
loaded into the model rebuilt from the run's saved ``config.json``. A directory holding ``lmm_export.json`` is an
exported model and goes through ``lmm.export.load_exported``; its run identity comes from that file's ``meta``
(or top level) and its eval protocol from the ``config`` it carries, if any.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from lmm.config import config_from_dict
from lmm.export import EXPORT_MARKER, load_exported
from lmm.models.lmm import LMM, build_lmm
from lmm.tokenizer import CaptionTokenizer
from lmm.training.checkpoint import META_FILE, RUN_CONFIG_FILE, CheckpointMeta, read_meta


@dataclass
class EvalModel:
    model: LMM
    tokenizer: CaptionTokenizer
    meta: CheckpointMeta
    path: Path


def is_export(path: str | Path) -> bool:
    return (Path(path) / EXPORT_MARKER).is_file()


def is_loadable(path: str | Path) -> bool:
    """A complete DeepSpeed checkpoint or an exported model."""
    return (Path(path) / META_FILE).is_file() or is_export(path)


def saved_run_config(path: str | Path) -> dict:
    """The run's config as saved next to its checkpoints (or inside an export), as plain data; {} if none."""
    path = Path(path)
    if is_export(path):
        info = json.loads((path / EXPORT_MARKER).read_text())
        if isinstance(info.get("config"), dict):
            return info["config"]
        return json.loads((path / RUN_CONFIG_FILE).read_text()) if (path / RUN_CONFIG_FILE).is_file() else {}
    run_config = path.parent.parent / RUN_CONFIG_FILE
    if not run_config.is_file():
        raise FileNotFoundError(f"{path}: the run's {RUN_CONFIG_FILE} is missing from {run_config.parent}")
    return json.loads(run_config.read_text())


def load_eval_model(path: str | Path) -> EvalModel:
    path = Path(path)
    if is_export(path):
        return _load_export(path)
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path} is neither a complete checkpoint (no {META_FILE}) nor an exported model "
                                f"(no {EXPORT_MARKER})")
    return _load_deepspeed(path)


def _load_deepspeed(checkpoint: Path) -> EvalModel:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    config = config_from_dict(saved_run_config(checkpoint))
    tokenizer = CaptionTokenizer(config.model.tokenizer.path)
    model = build_lmm(config.model, tokenizer)
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    model.load_state_dict(state, strict=True)
    return EvalModel(model.eval(), tokenizer, read_meta(checkpoint), checkpoint)


def _load_export(path: Path) -> EvalModel:
    model, tokenizer = load_exported(path)
    info = json.loads((path / EXPORT_MARKER).read_text())
    source = info.get("meta", info)
    defaults = {"run_name": path.name, "caption_source": "unknown", "num_samples": 0, "step": 0,
                "samples_seen": 0, "zero_stage": -1, "config_digest": ""}
    meta = CheckpointMeta(**{f.name: source.get(f.name, defaults[f.name]) for f in fields(CheckpointMeta)})
    return EvalModel(model.eval(), tokenizer, meta, path)
