"""Consolidated export of a training checkpoint, loadable without DeepSpeed.

A DeepSpeed checkpoint of any ZeRO stage and world size is consolidated with DeepSpeed's own ``zero_to_fp32``
(through ``lmm.eval.loading.load_eval_model``) and written as::

    <out>/lmm_export.json   written last: format, checkpoint identity (step, samples seen, caption source, ...),
                            the run's full config, and the layout below
    <out>/llm/              LlamaForCausalLM.save_pretrained (config.json, safetensors; vocabulary includes the
                            image markers) + the sentencepiece tokenizer.model + transformers' tokenizer files
                            (AutoTokenizer: the sentencepiece pieces and the three markers at the model's ids)
    <out>/adapter/          a LoRA run only: peft's adapter files (adapter_config.json, adapter_model.safetensors;
                            ``PeftModel.from_pretrained`` over the base decoder it names); ``llm/`` holds the
                            decoder with the adapters merged, and the export's config has LoRA off
    <out>/bridge/           model.safetensors + config.json (BridgeConfig fields, vision_width, out_width)
    <out>/vision/           model.safetensors in open_clip's layout (visual.trunk.*; loads as model.vision.pretrained)
                            + config.json (open_clip model name, feature choice)

This module writes the format; ``lmm.eval.loading`` reads it (``read_export``, ``load_exported(out)``: the LMM
rebuilt from these parts through the same builders training uses) and owns the marker's name and format string,
so the dependency runs one way (export -> eval.loading). ``read_export`` and ``load_exported`` are re-exported
here for callers of the export API. Both directions load under ``lmm.safe_loading.safe_loading`` (the checkpoint
through ``load_eval_model``): weights only.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from data_pipeline.files import write_json_atomic
from data_pipeline.tokenizer import IMAGE_MARKERS, CaptionTokenizer
from lmm.config import ExperimentConfig, config_from_dict
from lmm.eval.loading import EXPORT_FORMAT, EXPORT_MARKER, load_eval_model, load_exported, read_export, saved_run_config
from lmm.models.adapters import ADAPTER_DIR, is_adapted, merged_decoder, save_adapter
from lmm.models.lmm import precision_dtype
from lmm.models.marker_rows import merge_marker_rows

__all__ = ["EXPORT_FORMAT", "EXPORT_MARKER", "export_checkpoint", "load_exported", "read_export"]

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def save_hf_tokenizer(llm_dir: Path) -> None:
    """transformers' tokenizer files for ``llm_dir``'s ``tokenizer.model``, so ``AutoTokenizer`` there has as many
    tokens as the decoder has embedding rows: the image markers are special tokens at the ids the model gives them
    (right after the sentencepiece vocabulary, ``data_pipeline.tokenizer``), checked."""
    from transformers import LlamaTokenizer

    ours = CaptionTokenizer(llm_dir / TOKENIZER_FILE)
    hf = LlamaTokenizer.from_pretrained(llm_dir, add_bos_token=True, legacy=False)
    hf.add_special_tokens({"additional_special_tokens": list(IMAGE_MARKERS)})
    marker_ids = hf.convert_tokens_to_ids(list(IMAGE_MARKERS))
    if len(hf) != ours.vocab_size or marker_ids != [ours.img_start_id, ours.img_end_id, ours.image_id]:
        raise RuntimeError(f"transformers' tokenizer for {llm_dir} has {len(hf)} tokens and markers at {marker_ids}; "
                           f"the model has {ours.vocab_size} rows and markers at {ours.img_start_id}-{ours.image_id}")
    hf.save_pretrained(llm_dir)


def self_contained(config: ExperimentConfig) -> ExperimentConfig:
    """The run's config as the export's model: adapters merged (LoRA off), no weights from elsewhere."""
    llm = dataclasses.replace(config.model.llm, lora=dataclasses.replace(config.model.llm.lora, rank=0))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, llm=llm, init_from=None))


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the consolidated parts of one complete checkpoint to ``out_dir``; returns the marker file."""
    config = config_from_dict(saved_run_config(checkpoint_dir))
    # one build: frozen parts in the run's precision from their files, trained parts (fp32) from the checkpoint
    loaded = load_eval_model(checkpoint_dir, precision_dtype(config.train.precision))
    model, meta = loaded.model, loaded.meta
    out = Path(out_dir)
    (out / EXPORT_MARKER).unlink(missing_ok=True)  # an interrupted re-export must not look complete
    parts = {"llm": "llm", "tokenizer": f"llm/{TOKENIZER_FILE}", "bridge": f"bridge/{WEIGHTS_FILE}",
             "vision": f"vision/{WEIGHTS_FILE}"}
    if is_adapted(model.llm):  # peft's own adapter files, then the adapters folded into the exported decoder
        save_adapter(model.llm, out / ADAPTER_DIR, config.model.llm.pretrained)
        parts["adapter"] = ADAPTER_DIR
    llm = merged_decoder(model.llm)
    merge_marker_rows(llm)  # trained image-marker rows become rows of the exported vocabulary
    llm.save_pretrained(out / "llm", safe_serialization=True)
    shutil.copyfile(config.model.tokenizer.path, out / "llm" / TOKENIZER_FILE)
    save_hf_tokenizer(out / "llm")
    _save_tensors(model.bridge.state_dict(), out / "bridge" / WEIGHTS_FILE)
    write_json_atomic(out / "bridge" / "config.json", {**dataclasses.asdict(config.model.bridge),
                                                      "vision_width": model.vision.width,
                                                      "out_width": model.llm.config.hidden_size})
    _save_tensors({f"visual.{k}": v for k, v in model.vision.visual.state_dict().items()},
                  out / "vision" / WEIGHTS_FILE)
    write_json_atomic(out / "vision" / "config.json", {
        "open_clip_model": config.model.vision.name, "width": model.vision.width,
        "num_tokens": model.vision.num_tokens, "image_size": list(model.vision.image_size),
        "features": "all tokens (CLS + patches) of the last block, before the final norm and head"})
    marker = {"format": EXPORT_FORMAT, "checkpoint": str(Path(checkpoint_dir).resolve()),
              "meta": dataclasses.asdict(meta), "config": self_contained(config).to_dict(), "parts": parts}
    write_json_atomic(out / EXPORT_MARKER, marker)
    return out / EXPORT_MARKER
