"""Lean checkpoints: frozen weights stay in their pretrained files, and each checkpoint records which files.

A frozen tower and decoder (~15.8 GB in bf16 at paper scale) are identical in every checkpoint of a run, so when
every frozen component was loaded from a file, checkpoints leave them out (DeepSpeed's
``exclude_frozen_parameters``) and ``frozen_weights.json`` records, per component, the path it was read from and a
cheap fingerprint: byte sizes plus a SHA-256 of each safetensors header (names, dtypes, shapes, offsets) and of the
``config.json`` / index; for a pickle-zip ``.pt`` / ``.bin``, a SHA-256 of its first and last MiB (the zip
directory at its end carries every record's CRC-32). Resume, eval and export rebuild the frozen parts from the
files, after ``verify`` proved them unchanged; a missing or changed file is refused with the difference named.
A frozen component without a file (``model.allow_random_frozen``) keeps the frozen weights in the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmm.config import ModelConfig
from lmm.models.safetensors_reader import read_header
from lmm.models.weights import SAFETENSORS_INDEX, safetensors_files

FROZEN_WEIGHTS_FILE = "frozen_weights.json"
EDGE_BYTES = 1 << 20


class FrozenWeightsError(ValueError):
    """The frozen weights a checkpoint relies on are missing or differ from those it was trained with."""


def frozen_sources(model: ModelConfig) -> dict[str, str | None]:
    """Frozen component -> the weight path it is loaded from (None: randomly initialised)."""
    parts = {"vision": (model.vision.trainable, model.vision.pretrained),
             "llm": (model.llm.trainable, model.llm.pretrained),
             "bridge": (model.bridge.trainable, model.bridge.pretrained)}
    return {name: path for name, (trainable, path) in parts.items() if not trainable}


def leaves_frozen_out(sources: dict[str, str | None]) -> bool:
    """Checkpoints leave the frozen weights out: there are some, and all come from files."""
    return bool(sources) and all(path is not None for path in sources.values())


def describe(model: ModelConfig, components: tuple[str, ...] = ("vision", "bridge", "llm")) -> dict:
    """What a checkpoint of this model records: whether frozen weights are left out, and their fingerprints
    (``components``: the parts the trained model has; a text-only fuser has only the decoder)."""
    sources = {name: path for name, path in frozen_sources(model).items() if name in components}
    return {"excluded": leaves_frozen_out(sources),
            "components": {name: {"path": str(Path(path).resolve()), "fingerprint": fingerprint(path)}
                           for name, path in sources.items() if path is not None}}


def fingerprint(path: str | Path) -> dict[str, dict]:
    """File name -> {"bytes", "sha256"} for a weight file or a Hugging Face directory (see module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such weight path: {path}")
    if path.is_dir():
        files = [path / "config.json", *([path / SAFETENSORS_INDEX] if (path / SAFETENSORS_INDEX).is_file() else []),
                 *safetensors_files(path, str(path))]
    else:
        files = [path]
    return {file.name: {"bytes": file.stat().st_size, "sha256": _digest(file)} for file in files}


def _digest(file: Path) -> str:
    digest = hashlib.sha256()
    if file.suffix == ".safetensors":
        header, data_start = read_header(file)
        digest.update(json.dumps(header, sort_keys=True).encode())
    elif file.suffix == ".json" or file.stat().st_size <= 2 * EDGE_BYTES:
        digest.update(file.read_bytes())
    else:
        with open(file, "rb") as handle:
            digest.update(handle.read(EDGE_BYTES))
            handle.seek(-EDGE_BYTES, 2)
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def write(checkpoint: Path, record: dict) -> None:
    from data_pipeline.files import write_json_atomic
    write_json_atomic(checkpoint / FROZEN_WEIGHTS_FILE, record)


def read(checkpoint: str | Path) -> dict | None:
    """The checkpoint's record; None for a checkpoint that holds every weight (or predates lean checkpoints)."""
    file = Path(checkpoint) / FROZEN_WEIGHTS_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def excludes_frozen(checkpoint: str | Path) -> bool:
    record = read(checkpoint)
    return bool(record and record.get("excluded"))


def verify(checkpoint: str | Path, model: ModelConfig) -> None:
    """Raise FrozenWeightsError unless every frozen weight file ``checkpoint`` left out is where ``model`` points
    and unchanged since training."""
    record = read(checkpoint)
    if not record or not record.get("excluded"):
        return
    sources = frozen_sources(model)
    for name, saved in record["components"].items():
        key = f"model.{name}.pretrained"
        path = sources.get(name)
        if path is None:
            raise FrozenWeightsError(f"{checkpoint} does not hold the frozen {name} weights (they came from "
                                     f"{saved['path']}), and {key} is not set or the component is now trainable")
        try:
            found = fingerprint(path)
        except FileNotFoundError:
            raise FrozenWeightsError(f"{checkpoint} needs the frozen {name} weights it was trained with, from "
                                     f"{saved['path']}; {key}={path} does not exist") from None
        if found != saved["fingerprint"]:
            changed = sorted(f for f in set(found) | set(saved["fingerprint"])
                             if found.get(f) != saved["fingerprint"].get(f))
            raise FrozenWeightsError(f"{checkpoint} left out the frozen {name} weights it was trained with (from "
                                     f"{saved['path']}); {key}={path} differs from them in {changed} (sizes or "
                                     f"safetensors headers); point {key} at the original files")
