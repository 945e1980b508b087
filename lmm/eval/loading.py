"""Load a model for eval: a DeepSpeed checkpoint of any ZeRO stage, or an exported model directory.

A DeepSpeed checkpoint (``<run>/checkpoints/global_stepN`` with ``meta.json``) is built once: the model from the
run's saved ``config.json`` with its frozen parts read from their pretrained files in the eval dtype (after
``frozen_weights.verify`` proved them unchanged), then the checkpoint's weights -- only the trained ones for a lean
checkpoint -- consolidated with DeepSpeed's own ``zero_to_fp32``, whatever the stage and the training world size
(what it prints for every checkpoint is swallowed, unless it fails; one log line says what was loaded).
A directory holding ``lmm_export.json`` is an exported model: this module owns reading that format
(``read_export``, ``load_exported``) -- ``lmm.export`` owns writing it and imports the marker from here, so the
dependency runs one way (export -> loading). An export's run identity comes from its marker's ``meta`` (or top
level) and its eval protocol from the ``config`` it carries, if any. Either loads under
``lmm.safe_loading.safe_loading``: weights only; a file that pickles anything else raises UnsafeCheckpointError
naming it, its code never runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from data_pipeline.tokenizer import CaptionTokenizer
from lmm.config import ModelConfig, config_from_dict
from lmm.models.lmm import LMM, build_lmm
from lmm.safe_loading import safe_loading
from lmm.training import frozen_weights
from lmm.training.checkpoint import META_FILE, RUN_CONFIG_FILE, CheckpointMeta, read_meta

log = logging.getLogger(__name__)

EXPORT_MARKER = "lmm_export.json"  # an export's marker file, written last by ``lmm.export``
EXPORT_FORMAT = "lmm-export/1"


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


def load_eval_model(path: str | Path, dtype: torch.dtype = torch.float32) -> EvalModel:
    """The model of a checkpoint or export; a checkpoint's frozen parts are built in ``dtype``."""
    path = Path(path)
    if not is_export(path) and not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{path} is neither a complete checkpoint (no {META_FILE}) nor an exported model "
                                f"(no {EXPORT_MARKER})")
    with safe_loading():  # DeepSpeed's zero_to_fp32 passes weights_only=False
        return _load_export(path) if is_export(path) else _load_deepspeed(path, dtype)


def check_loadable(path: str | Path) -> None:
    """Cheap checks before any weight is read: a lean checkpoint's frozen weight files are present and unchanged
    (FrozenWeightsError otherwise)."""
    path = Path(path)
    if not is_export(path) and frozen_weights.excludes_frozen(path):
        frozen_weights.verify(path, config_from_dict(saved_run_config(path)).model)


def _load_deepspeed(checkpoint: Path, dtype: torch.dtype) -> EvalModel:

    config = config_from_dict(saved_run_config(checkpoint))
    lean = frozen_weights.excludes_frozen(checkpoint)
    frozen_weights.verify(checkpoint, config.model)
    tokenizer = CaptionTokenizer(config.model.tokenizer.path)
    model = build_lmm(config.model, tokenizer, dtype)
    load_trained_weights(model, checkpoint)
    meta = read_meta(checkpoint)
    log.info("loaded %s (step %d, ZeRO-%d%s) in %s", checkpoint, meta.step, meta.zero_stage,
             ", trained weights only" if lean else "", str(dtype).removeprefix("torch."))
    return EvalModel(model.eval(), tokenizer, meta, checkpoint)


def load_trained_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Copy a DeepSpeed checkpoint's weights (any ZeRO stage and world size; the trained ones only for a lean
    checkpoint, whose frozen weights ``model`` already holds) into ``model``, every name checked."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    lean = frozen_weights.excludes_frozen(checkpoint)
    # lazy: the optimizer files stay memory-mapped and each tensor is consolidated as it is copied in
    with _quiet():
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name,
                                                         exclude_frozen_parameters=lean, lazy_mode=True)
    own = model.state_dict()
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad} if lean else set()
    unexpected, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state) - frozen)
    if unexpected or missing:
        raise RuntimeError(f"{checkpoint} does not fit the run's model: unexpected {unexpected[:5]}, missing "
                           f"{missing[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor.contiguous())


def read_export(out_dir: str | Path) -> dict:
    """The export's marker (format, checkpoint meta, run config); FileNotFoundError/ValueError if not an export."""
    marker = Path(out_dir) / EXPORT_MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{out_dir} is not a complete export ({EXPORT_MARKER} missing)")
    data = json.loads(marker.read_text())
    if data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{marker}: unsupported format {data.get('format')!r} (expected {EXPORT_FORMAT})")
    return data


def load_exported(out_dir: str | Path) -> tuple[LMM, CaptionTokenizer]:
    """The exported LMM (eval mode, fp32, on CPU) and its tokenizer, built by the training code's builders."""
    out = Path(out_dir)
    data = read_export(out)
    model_config = export_model_config(config_from_dict(data["config"]).model, out)
    model_config = dataclasses.replace(  # inference: no activation checkpointing
        model_config, vision=dataclasses.replace(model_config.vision, grad_checkpointing=False),
        llm=dataclasses.replace(model_config.llm, grad_checkpointing=False))
    tokenizer = CaptionTokenizer(model_config.tokenizer.path)
    with safe_loading():  # the marker may name a pickled vision file
        model = build_lmm(model_config, tokenizer)
    return model.eval(), tokenizer


def export_model_config(model: ModelConfig, out_dir: str | Path) -> ModelConfig:
    """``model`` with every component's weights and the tokenizer read from the export in ``out_dir`` (its
    ``parts``): how an export is loaded, and how a run with ``model.init_from`` starts from one."""
    out = Path(out_dir)
    parts = read_export(out)["parts"]
    return dataclasses.replace(
        model, init_from=None,
        vision=dataclasses.replace(model.vision, pretrained=str(out / parts["vision"])),
        bridge=dataclasses.replace(model.bridge, pretrained=str(out / parts["bridge"])),
        llm=dataclasses.replace(model.llm, pretrained=str(out / parts["llm"])),
        tokenizer=dataclasses.replace(model.tokenizer, path=str(out / parts["tokenizer"])))


@contextlib.contextmanager
def _quiet():
    """Swallow what ``zero_to_fp32`` prints for every checkpoint (bare prints: "Processing zero checkpoint ...",
    "Detected checkpoint of type zero stage ...", and two progress bars on stderr); shown after all if it fails."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise


def _load_export(path: Path) -> EvalModel:
    model, tokenizer = load_exported(path)
    info = read_export(path)
    log.info("loaded export %s", path)
    source = info.get("meta", info)
    defaults = {"run_name": path.name, "caption_source": "unknown", "num_samples": 0, "step": 0,
                "samples_seen": 0, "zero_stage": -1, "config_digest": ""}
    meta = CheckpointMeta(**{f.name: source[f.name] if f.name in source else defaults.get(f.name, f.default)
                             for f in fields(CheckpointMeta)})
    return EvalModel(model.eval(), tokenizer, meta, path)
