"""DeepSpeed checkpoints of a run: ``<output_dir>/checkpoints/global_step<N>/`` plus a ``meta.json``.

The engine state (model, optimizer, scheduler, ZeRO partitions) is written by DeepSpeed; the trainer's own
state (step, samples seen, loader position) travels in DeepSpeed's ``client_state``. Frozen weights loaded from
files are left out (``lmm.training.frozen_weights``: the checkpoint's ``frozen_weights.json`` names the files).
``meta.json`` is written last, atomically, by rank 0 after every rank finished: a checkpoint without it is
incomplete and is ignored.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lmm import distributed
from lmm.config import ModelConfig
from lmm.files import write_json_atomic
from lmm.training import frozen_weights

META_FILE = "meta.json"
RUN_CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class CheckpointMeta:
    run_name: str
    caption_source: str
    num_samples: int  # the run's target sample count (the data scale it belongs to)
    step: int
    samples_seen: int
    zero_stage: int
    config_digest: str


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a checkpoint (``<run>/checkpoints/global_stepN``); any other path (an exported
    model) stands for itself."""
    path = Path(path)
    return path.parent.parent if path.parent.name == CHECKPOINTS_DIR else path


def tag_for(step: int) -> str:
    return f"global_step{step}"


def save(engine, output_dir: str | Path, meta: CheckpointMeta, client_state: dict, frozen: dict) -> Path:
    """Collective: every rank must call it. ``frozen`` is ``frozen_weights.describe(config.model)``."""
    root = checkpoint_root(output_dir)
    engine.save_checkpoint(str(root), tag=tag_for(meta.step), client_state=client_state,
                           exclude_frozen_parameters=frozen["excluded"])
    distributed.barrier()
    path = root / tag_for(meta.step)
    if distributed.detect_env().is_main:
        frozen_weights.write(path, frozen)
        write_json_atomic(path / META_FILE, asdict(meta))
    distributed.barrier()
    return path


def resume(engine, output_dir: str | Path, model: ModelConfig) -> dict | None:
    """Load the newest complete checkpoint into ``engine``; returns its client state, or None if there is none.
    Frozen weights the checkpoint left out must be the unchanged files ``model`` names (FrozenWeightsError)."""
    latest = latest_checkpoint(output_dir)
    if latest is None:
        return None
    frozen_weights.verify(latest, model)
    _, client_state = engine.load_checkpoint(str(latest.parent), tag=latest.name,
                                             load_module_strict=not frozen_weights.excludes_frozen(latest))
    if client_state is None:
        raise RuntimeError(f"could not load checkpoint {latest}")
    return client_state


def complete_checkpoints(output_dir_or_root: str | Path) -> list[Path]:
    """Complete checkpoints (those with meta.json), oldest first."""
    root = Path(output_dir_or_root)
    if (root / CHECKPOINTS_DIR).is_dir():
        root = root / CHECKPOINTS_DIR
    found = [p.parent for p in root.glob(f"global_step*/{META_FILE}")]
    return sorted(found, key=lambda p: int(p.name.removeprefix("global_step")))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(checkpoint_root(output_dir))
    return found[-1] if found else None


def read_meta(checkpoint: str | Path) -> CheckpointMeta:
    return CheckpointMeta(**json.loads((Path(checkpoint) / META_FILE).read_text()))
