"""Checks for local weight files: every tensor present, nothing unexpected, every shape as the model expects.

Loading a checkpoint of the wrong size must fail before training starts, with the tensor named, instead of
silently re-initialising it (transformers' default) or failing deep inside ``load_state_dict``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into; the message names the tensors."""


def check_tensor_shapes(expected: Mapping[str, tuple], found: Mapping[str, tuple], source: str,
                        ignore_unexpected: Iterable[str] = ()) -> None:
    """Raise WeightsMismatchError naming the first mismatched, missing or unexpected tensors of ``source``."""
    mismatched = [f"tensor '{name}' has shape {tuple(found[name])} in {source} but the model expects "
                  f"{tuple(shape)}" for name, shape in expected.items()
                  if name in found and tuple(found[name]) != tuple(shape)]
    if mismatched:
        raise WeightsMismatchError("; ".join(mismatched[:5]) + (f" (and {len(mismatched) - 5} more)"
                                                                if len(mismatched) > 5 else ""))
    missing = [name for name in expected if name not in found]
    if missing:
        raise WeightsMismatchError(f"{source} lacks {len(missing)} tensor(s) the model needs, e.g. "
                                   f"{missing[:5]}")
    skip = tuple(ignore_unexpected)
    unexpected = [name for name in found if name not in expected and not any(s in name for s in skip)]
    if unexpected:
        raise WeightsMismatchError(f"{source} holds {len(unexpected)} tensor(s) the model does not have, e.g. "
                                   f"{unexpected[:5]}")


def safetensors_files(directory: Path, what: str) -> list[Path]:
    """The safetensors files of a Hugging Face model directory (single file or sharded with an index)."""
    index = directory / SAFETENSORS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{what}: {index.name} lists shard(s) missing from {directory}: {missing}")
        return [directory / s for s in shards]
    if (directory / SAFETENSORS_FILE).is_file():
        return [directory / SAFETENSORS_FILE]
    raise FileNotFoundError(f"{what}: {directory} has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}")


def state_shapes(state: Mapping) -> dict[str, tuple]:
    """Name -> shape; a ZeRO-3 partitioned parameter (``state_dict(keep_vars=True)``) reports its whole shape."""
    return {name: tuple(getattr(tensor, "ds_shape", tensor.shape)) for name, tensor in state.items()}
