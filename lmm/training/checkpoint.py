"""DeepSpeed checkpoints of a run: ``<output_dir>/checkpoints/global_step<N>/`` plus a ``meta.json``.

The engine state (model, optimizer, scheduler, ZeRO partitions) is written by DeepSpeed; the trainer's own
state (step, samples seen, loader position) travels in DeepSpeed's ``client_state``. Frozen weights loaded from
files are left out (``lmm.training.frozen_weights``: the checkpoint's ``frozen_weights.json`` names the files).
``meta.json`` is written last, atomically, by rank 0 after every rank finished: a checkpoint without it is
incomplete and is ignored. It lists every file of the checkpoint with its size, so a checkpoint damaged later (a
truncated copy, a full disk) is recognised before DeepSpeed reads it: a resume skips it with a warning and takes
the previous one.
"""
from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_pipeline.files import write_json_atomic
from lmm import distributed
from lmm.training import elastic, frozen_weights

META_FILE = "meta.json"
RUN_CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
log = logging.getLogger(__name__)


@dataclass
class CheckpointMeta:
    run_name: str
    caption_source: str
    num_samples: int  # the run's budget: the samples it trains on (the data scale it belongs to)
    step: int
    samples_seen: int
    zero_stage: int
    config_digest: str
    world_size: int = 0  # ranks that wrote it (0: unknown, older checkpoints)
    schedule: str = "cosine"  # the LR schedule family (train.schedule)
    total_steps: int = 0  # the run's last step (0: unknown, older checkpoints)
    budget_point: bool = False  # a decay ends here (lmm.config.decay_ends): the point of a budget on a curve
    parent: str = ""  # the checkpoint a decay branch started from ("" for a run from scratch)
    branch_step: int = 0  # that checkpoint's step
    files: dict[str, int] = field(default_factory=dict)  # every file (relative path) -> size in bytes


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
        shutil.rmtree(elastic.universal_path(path), ignore_errors=True)  # a stale conversion of an older step-N
        frozen_weights.write(path, frozen)
        files = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
        write_json_atomic(path / META_FILE, {**asdict(meta), "files": files})
    distributed.barrier()
    return path


def resume(engine, checkpoint: str | Path, universal: Path | None = None) -> dict:
    """Load ``checkpoint`` into ``engine`` (from its ``universal`` form when given: another world size); returns
    its client state. The caller has checked the frozen files it left out (``frozen_weights.verify``, before
    anything was written)."""
    from lmm.safe_loading import safe_loading

    checkpoint = Path(checkpoint)
    source = universal or checkpoint
    with safe_loading():
        _, client_state = engine.load_checkpoint(str(source.parent), tag=source.name,
                                                 load_module_strict=not frozen_weights.excludes_frozen(checkpoint))
    if client_state is None:
        raise RuntimeError(f"could not load checkpoint {source}")
    return client_state


def unreadable(checkpoint: str | Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (a missing or truncated file), or None when it looks whole.
    Cheap: sizes against ``meta.json``, and each ``.pt`` file's zip directory (it sits at the file's end)."""
    checkpoint = Path(checkpoint)
    try:
        listed = json.loads((checkpoint / META_FILE).read_text()).get("files", {})
    except (OSError, ValueError) as err:
        return f"{META_FILE} unreadable ({err})"
    for name, size in listed.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, {size:,} were written"
    for path in sorted(checkpoint.glob("*.pt")):
        try:
            with zipfile.ZipFile(path):
                pass
        except (OSError, zipfile.BadZipFile) as err:
            return f"{path.name} is not a readable torch file ({err})"
    return None


def newest_resumable(output_dir: str | Path, verbose: bool = True) -> Path | None:
    """The newest complete checkpoint that is readable; newer damaged ones are skipped with a warning."""
    for checkpoint in reversed(complete_checkpoints(checkpoint_root(output_dir))):
        reason = unreadable(checkpoint)
        if reason is None:
            return checkpoint
        if verbose:
            log.warning(f"skipping checkpoint {checkpoint}: {reason}; trying the previous one")
    return None


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
    fields = CheckpointMeta.__dataclass_fields__
    return CheckpointMeta(**{k: v for k, v in json.loads((Path(checkpoint) / META_FILE).read_text()).items()
                             if k in fields})
