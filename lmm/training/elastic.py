"""Resuming on another number of ranks: DeepSpeed's universal checkpoint for the ZeRO-partitioned state.

A ZeRO-1/2/3 checkpoint stores the optimizer state (and under ZeRO-3 the parameters) in one partition per
data-parallel rank, and DeepSpeed refuses to load it into another world size. Its own answer is the universal
checkpoint: ``deepspeed.checkpoint.ds_to_universal`` rewrites the partitions as one file set per parameter, and an
engine configured with ``checkpoint.load_universal`` re-partitions them for any world size. Rank 0 converts the
checkpoint being resumed once, into ``checkpoints/universal/<tag>`` (written under a temporary name, then renamed,
so a killed conversion is redone), and every rank loads that. The trainer's own state (step, loader positions)
travels in the client state, which the conversion copies; the data side is re-dealt by
``lmm.training.loader_state.reshard``.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lmm import distributed

UNIVERSAL_DIR = "universal"


def saved_world_size(checkpoint: str | Path) -> int | None:
    """Data-parallel ranks the checkpoint's ZeRO partitions were written by (None without ZeRO: stage 0)."""
    files = list(Path(checkpoint).glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    return len(files) or None


def universal_path(checkpoint: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.parent / UNIVERSAL_DIR / checkpoint.name


def convert(checkpoint: str | Path) -> Path:
    """Rank 0 writes the universal form of ``checkpoint`` (if not already there); collective."""
    target = universal_path(checkpoint)
    if distributed.detect_env().is_main and not target.is_dir():
        from deepspeed.checkpoint import ds_to_universal

        from lmm.safe_loading import safe_loading

        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        args = argparse.Namespace(input_folder=str(checkpoint), output_folder=str(tmp), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=True)
        with safe_loading():
            ds_to_universal.main(args)
        tmp.rename(target)
    distributed.barrier()
    return target
