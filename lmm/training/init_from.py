"""``model.init_from``: a new run (LoRA or full fine-tuning) that starts from another run's weights.

The weights come from an export (``lmm-export``): its ``vision/``, ``bridge/``, ``llm/`` parts and tokenizer
become the run's ``model.*.pretrained`` paths and ``model.tokenizer.path`` (``lmm.eval.loading
.export_model_config``), so the run loads them the way it loads any pretrained file: streamed in the run's
precision, partitioned under ZeRO-3, and -- where frozen -- fingerprinted and left out of every checkpoint
(``lmm.training.frozen_weights``). A DeepSpeed checkpoint is exported first, once, by rank 0 into
``<output_dir>/init_from/`` (reused when its marker names the same checkpoint). The optimizer, schedule and data
order start fresh: that is what separates it from ``train.init_from`` (a decay branch continuing its parent).
The run's ``config.json`` records the resolved paths, so resume and eval rebuild the same model.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from lmm import distributed
from lmm.config import ConfigError, ExperimentConfig
from lmm.eval.loading import export_model_config, is_export, read_export
from lmm.export import export_checkpoint
from lmm.training.checkpoint import META_FILE, unreadable

log = logging.getLogger(__name__)
EXPORT_DIR = "init_from"


def with_init_from(config: ExperimentConfig, env: distributed.DistEnv) -> ExperimentConfig:
    """The config with ``model.init_from`` resolved into per-component weight paths (collective when a
    checkpoint must be exported); unchanged when it is not set."""
    source = config.model.init_from
    if source is None:
        return config
    export = export_dir_for(Path(source), Path(config.output_dir), env)
    model = export_model_config(config.model, export)
    return dataclasses.replace(config, model=dataclasses.replace(model, init_from=source))


def export_dir_for(source: Path, output_dir: Path, env: distributed.DistEnv) -> Path:
    """The export a run starts from: ``source`` itself, or its export under ``output_dir`` (made once)."""
    if is_export(source):
        return source
    if not (source / META_FILE).is_file():
        raise ConfigError(f"config key 'model.init_from': {source} is neither a complete checkpoint (no {META_FILE}) "
                          "nor an lmm-export directory (no lmm_export.json)")
    reason = unreadable(source)
    if reason is not None:
        raise ConfigError(f"config key 'model.init_from': cannot start from {source}: {reason}")
    out = output_dir / EXPORT_DIR
    if env.is_main and not _exported_from(out, source):
        log.info("model.init_from: exporting %s to %s (once)", source, out)
        export_checkpoint(source, out)
    distributed.barrier()
    return out


def _exported_from(out: Path, checkpoint: Path) -> bool:
    return is_export(out) and read_export(out).get("checkpoint") == str(checkpoint.resolve())
