"""LoRA adapters on the frozen decoder, through peft (``model.llm.lora``).

``apply_lora`` wraps the built ``LlamaForCausalLM`` in peft's ``PeftModelForCausalLM``: the base weights stay
frozen (and, loaded from files, stay out of every checkpoint: ``lmm.training.frozen_weights``), the low-rank
``lora_A`` / ``lora_B`` matrices train. peft keeps adapters in fp32 next to a bf16 base (``autocast_adapter_dtype``)
and DeepSpeed holds their fp32 master copy, as it does for the bridge. ``save_adapter`` writes peft's own format
(``adapter_config.json`` + ``adapter_model.safetensors``, loadable by ``PeftModel.from_pretrained`` over the base
decoder); ``merged_decoder`` folds the adapters into the base weights (a plain ``LlamaForCausalLM``).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from lmm.config import LoraConfig

ADAPTER_DIR = "adapter"


def apply_lora(llm: nn.Module, config: LoraConfig) -> nn.Module:
    """``llm`` with LoRA adapters on ``config.target_modules`` (every other parameter frozen)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in llm.named_modules()}
    missing = sorted(set(config.target_modules) - names)
    if missing:
        raise ValueError(f"config key 'model.llm.lora.target_modules': the decoder has no modules named {missing}")
    peft_config = PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(llm, peft_config)


def is_adapted(llm: nn.Module) -> bool:
    from peft import PeftModel
    return isinstance(llm, PeftModel)


def adapter_parameters(llm: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices of an adapted decoder (none for a plain one)."""
    return [p for name, p in llm.named_parameters() if ".lora_" in name]


def save_adapter(llm: nn.Module, out_dir: str | Path, base_path: str | None) -> Path:
    """peft's adapter files for ``llm`` in ``out_dir``; ``base_path`` (the base decoder's directory) is recorded
    as ``base_model_name_or_path``."""
    out = Path(out_dir)
    llm.peft_config["default"].base_model_name_or_path = base_path
    llm.save_pretrained(out, safe_serialization=True)
    return out


def merged_decoder(llm: nn.Module) -> nn.Module:
    """The plain decoder with the adapters folded into its weights (``llm`` itself when not adapted)."""
    return llm.merge_and_unload() if is_adapted(llm) else llm

