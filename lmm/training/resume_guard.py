"""What a resumed run may change: keys that decide what the run *is* refuse, the others are recorded.

A resume compares the new config with the run's saved ``config.json`` before anything is written. A change to a
key that shapes the trained model or the data it sees (caption source or mix, manifest, subset, seed, model
shapes and weights, schedule, global batch, precision, ZeRO stage) would silently splice two experiments into
one curve, so it is refused (``RunChangedError``, exit 2) with a readable diff. Keys listed in ``RESUMABLE`` only
change how the rest of the run is executed or observed; they are allowed and appended to the run's
``history.jsonl`` with the step they took effect at.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lmm.config import ConfigError, config_from_dict

RESUMABLE = (  # dotted keys (a trailing "." covers a whole section)
    "output_dir",  # where the run was found: another spelling of the same directory
    "train.max_steps", "train.checkpoint_every", "train.checkpoint_at_start", "train.checkpoint_steps",
    "train.log_every",
    "train.max_requeues", "train.collective_timeout_s", "train.tf32", "train.micro_batch_size",
    "train.deepspeed_template", "train.sample_ledger", "train.peak_tflops",
    "data.num_workers", "data.max_skip_fraction",
    "model.allow_random_frozen", "model.vision.grad_checkpointing", "model.llm.grad_checkpointing",
    "model.llm.attn_implementation",
    "eval.",
)
HISTORY_FILE = "history.jsonl"
# what a decay branch may differ in from the run it starts from (besides RESUMABLE): its name and place, where
# its schedule ends and how it decays. The data section must match: the branch continues the parent's order.
BRANCHABLE = ("run_name", "train.budget_samples", "train.init_from", "train.decay_fraction", "train.decay_shape")


class RunChangedError(ValueError):
    """The new config changes what a run with checkpoints is."""


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (mappings that are config values, like ``data.mix``, stay whole
    when they are empty on both sides; otherwise their entries are compared one by one)."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def same(old, new) -> bool:
    """Equal values, or two spellings (relative, absolute, through a link) of one existing file or folder."""
    if old == new:
        return True
    try:
        return isinstance(old, str) and isinstance(new, str) and os.path.samefile(old, new)
    except OSError:
        return False


def with_defaults(saved: dict) -> dict:
    """A saved config with the keys added to the config since it was written at their defaults (a run from
    before a new key, e.g. ``train.peak_tflops``, is not a changed run); as saved when it no longer reads."""
    try:
        return config_from_dict(saved).to_dict()
    except ConfigError:  # e.g. a key removed since: compared as saved, so the difference is named
        return saved


def changes(saved: dict, new: dict) -> dict[str, tuple]:
    """``{key: (saved value, new value)}`` for every key whose value differs; keys the saved config predates
    count at their defaults."""
    before, after = flatten(with_defaults(saved)), flatten(new)
    keys = sorted(before.keys() | after.keys())
    return {k: (before.get(k), after.get(k)) for k in keys
            if k not in before or k not in after or not same(before[k], after[k])}


def check(saved: dict, new: dict, run_dir: str | Path, step: int) -> dict[str, tuple]:
    """The allowed changes; raises RunChangedError listing the refused ones."""
    diff = changes(saved, new)
    refused = {k: v for k, v in diff.items() if not resumable(k)}
    if refused:
        lines = "\n".join(f"  {k}: {old!r} (run) -> {value!r} (now)" for k, (old, value) in refused.items())
        raise RunChangedError(
            f"{run_dir} has checkpoints (newest: step {step}) made with another config; these keys change what "
            f"the run is:\n{lines}\nResume with the run's values, or start a new run in another output_dir. "
            f"Keys a resume may change: {', '.join(RESUMABLE)}")
    return {k: v for k, v in diff.items() if resumable(k)}


def check_branch(parent: dict, new: dict, parent_checkpoint: str | Path) -> None:
    """A decay branch starting from ``parent_checkpoint`` may only differ from the parent run's config in
    RESUMABLE and BRANCHABLE keys; raises RunChangedError listing the others."""
    refused = {k: v for k, v in changes(parent, new).items() if not resumable(k) and k not in BRANCHABLE}
    if refused:
        lines = "\n".join(f"  {k}: {old!r} (parent) -> {value!r} (branch)" for k, (old, value) in refused.items())
        raise RunChangedError(
            f"a branch of {parent_checkpoint} must train the parent's model on the parent's data; these keys "
            f"differ:\n{lines}\nKeys a branch may change: {', '.join(BRANCHABLE + RESUMABLE)}")


def record(run_dir: str | Path, step: int, allowed: dict[str, tuple]) -> None:
    """Append the allowed changes (if any) to the run's history."""
    if not allowed:
        return
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_at_step": step,
             "changed": {k: {"was": old, "now": new} for k, (old, new) in allowed.items()}}
    with open(Path(run_dir) / HISTORY_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")
