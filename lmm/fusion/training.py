"""``lmm-fuse train``: fine-tune a causal LM as a caption fuser on (raw, synthetic, fused) triplets, as
CapsFus-LLaMA was trained -- through the project's training loop (``lmm.training.trainer.train`` with a
``FuserTask``): DeepSpeed ZeRO, checkpoints, exact resume, logs, stop signals, LoRA.

A sample's input is ``lmm.fusion.prompt.fusion_prompt(raw, synthetic)`` tokenized exactly as ``lmm-fuse run``
tokenizes it (``encode_prompts``), followed by the fused caption (``data.caption_source``, cut to
``data.max_caption_tokens``) and the end-of-sequence token; the loss is on the fused caption and that token only.
Samples without a usable raw / synthetic / fused caption are skipped and counted like any training sample
(``missing_caption`` / ``empty_caption``); the inputs are read as ``lmm-fuse run`` reads them
(``lmm.fusion.run.fusion_texts``: a list field gives its first non-blank caption). The run's config is the
project's: ``model.llm.pretrained`` is the base fuser (a Hugging Face directory with its tokenizer),
``model.llm.trainable`` or ``model.llm.lora`` say what trains,
``fusion.raw_field`` / ``fusion.synthetic_field`` name the inputs; ``model.vision`` and ``model.bridge`` are unused.
When the run ends, ``export_fuser`` writes ``<output_dir>/fuser/``: the decoder with any adapters merged plus its
tokenizer, the directory ``lmm-fuse run --model`` takes.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from data_pipeline.captions import CaptionSelector
from data_pipeline.loader import CaptionStream
from data_pipeline.sequence import IGNORE_INDEX, TextLayout
from data_pipeline.shard_format import BadSample, sample_fields
from data_pipeline.shard_reader import LOST
from lmm import distributed
from lmm.config import ExperimentConfig
from lmm.eval.loading import load_trained_weights
from lmm.fusion.generate import encode_prompts, load_tokenizer
from lmm.fusion.prompt import fusion_prompt
from lmm.fusion.run import fusion_texts
from lmm.models.adapters import apply_lora, merged_decoder
from lmm.models.lmm import precision_dtype
from lmm.training import frozen_weights
from lmm.training.checkpoint import latest_checkpoint
from lmm.training.metrics import StepMeter
from lmm.training.trainer import CaptioningTask, caption_selector

log = logging.getLogger(__name__)
FUSER_DIR = "fuser"
# why a sample's inputs cannot be fused -> the training loader's skip reason it is counted under
TRAINING_SKIP_REASON = {"missing_raw": "missing_caption", "missing_synthetic": "missing_caption",
                        "empty_input": "empty_caption"}


class FuserModel(nn.Module):
    """A causal LM whose forward returns the next-token loss (labels -100 outside the fused caption)."""

    def __init__(self, llm: nn.Module):
        super().__init__()
        self.llm = llm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss


def build_fuser(config: ExperimentConfig, dtype: torch.dtype) -> FuserModel:
    """The base fuser from ``model.llm.pretrained``: trainable in fp32 (DeepSpeed keeps the master copy), or
    frozen in ``dtype`` with LoRA adapters when ``model.llm.lora.rank`` is set."""
    from transformers import AutoModelForCausalLM

    llm_config = config.model.llm
    llm = AutoModelForCausalLM.from_pretrained(llm_config.pretrained,
                                               dtype=torch.float32 if llm_config.trainable else dtype)
    llm.requires_grad_(llm_config.trainable)
    if llm_config.grad_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if llm_config.lora.rank:
        llm = apply_lora(llm, llm_config.lora)
    return FuserModel(llm)


class TripletStream(CaptionStream):
    """The training stream's sampling, positions and exact resume, with text-only examples: the fusion prompt
    of a sample's raw and synthetic captions, then its fused caption as the target."""

    def __init__(self, pieces, select: CaptionSelector, tokenizer, raw_field: str, synthetic_field: str,
                 max_target_tokens: int, rank: int, world_size: int, micro_batch_size: int, **kwargs):
        super().__init__(pieces, select, None, TextLayout(tokenizer.pad_token_id), rank, world_size,
                         micro_batch_size, **kwargs)
        self.tokenizer, self.fields, self.max_target_tokens = tokenizer, (raw_field, synthetic_field), max_target_tokens

    def _example(self, raw: dict | None, epoch: int) -> dict:
        if raw is LOST:
            raise BadSample("tar_error")
        fields = sample_fields(raw)
        target, reason = self.select.choose(raw["__key__"], fields, epoch)
        if reason:
            raise BadSample(reason)
        inputs = fusion_texts(fields, *self.fields)
        if isinstance(inputs, str):
            raise BadSample(TRAINING_SKIP_REASON[inputs])
        prompt = encode_prompts(self.tokenizer, [fusion_prompt(*inputs)])[0]
        answer = self.tokenizer(target, add_special_tokens=False)["input_ids"][: self.max_target_tokens]
        answer = answer + [self.tokenizer.eos_token_id]
        return {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer,
                "key": raw["__key__"]}


class FuserTask(CaptioningTask):
    """The training loop's task for a fuser (see the module docstring)."""

    def resolve(self, config: ExperimentConfig, env: distributed.DistEnv) -> ExperimentConfig:
        if not config.model.llm.pretrained or not (Path(config.model.llm.pretrained) / "config.json").is_file():
            raise ValueError("config key 'model.llm.pretrained': lmm-fuse train needs the base fuser, a Hugging "
                             f"Face model directory with its tokenizer; got {config.model.llm.pretrained!r}")
        return config

    def prepare(self, config: ExperimentConfig, env: distributed.DistEnv) -> None:
        pass

    def build_model(self, config: ExperimentConfig, ds_config: dict) -> nn.Module:
        self.tokenizer = load_tokenizer(config.model.llm.pretrained)
        return build_fuser(config, precision_dtype(config.train.precision))

    def stream(self, config: ExperimentConfig, model: nn.Module, pieces: list, env: distributed.DistEnv,
               **resume) -> TripletStream:
        d, f = config.data, config.fusion
        return TripletStream(pieces, caption_selector(d), self.tokenizer, f.raw_field, f.synthetic_field,
                             d.max_caption_tokens, env.rank, env.world_size, config.train.micro_batch_size, seed=d.seed,
                             shuffle_buffer=d.shuffle_buffer, **resume)

    def frozen_weights(self, config: ExperimentConfig) -> dict:
        return frozen_weights.describe(config.model, components=("llm",))

    def meter(self, config: ExperimentConfig, device: torch.device) -> StepMeter:
        return StepMeter()  # throughput and data stall; no FLOP model for a fuser


def export_fuser(config: ExperimentConfig, out_dir: str | Path | None = None) -> Path:
    """The newest checkpoint of the fuser run as a Hugging Face directory (adapters merged) with its tokenizer:
    ``<output_dir>/fuser/`` unless ``out_dir`` is given."""
    checkpoint = latest_checkpoint(config.output_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{config.output_dir}: no complete checkpoint to export")
    frozen_weights.verify(checkpoint, config.model)
    model = build_fuser(config, torch.float32)
    load_trained_weights(model, checkpoint)
    out = Path(out_dir) if out_dir is not None else Path(config.output_dir) / FUSER_DIR
    merged_decoder(model.llm).save_pretrained(out, safe_serialization=True)
    load_tokenizer(config.model.llm.pretrained).save_pretrained(out)
    log.info("fuser of %s written to %s", checkpoint, out)
    return out
