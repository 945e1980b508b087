"""LLaMA decoder (transformers ``LlamaForCausalLM``): a local Hugging Face directory, or random init from sizes.

A pretrained decoder is built without initialising anything (transformers' ``no_init_weights``, the mechanism its
DeepSpeed integration uses) directly in the run's dtype, and filled tensor by tensor from the safetensors files
(``lmm.models.safetensors_reader``): no fp32 copy, no second model, peak host memory ~ the bytes it holds.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.initialization import no_init_weights

from data_pipeline.tokenizer import IMAGE_MARKERS, CaptionTokenizer
from lmm.config import LLMConfig
from lmm.models.marker_rows import add_marker_rows
from lmm.models.partitioned import fill_from_files, partitioned_construction
from lmm.models.safetensors_reader import tensor_entries
from lmm.models.weights import WeightsMismatchError, check_tensor_shapes, safetensors_files, state_shapes

# LLMConfig field -> LlamaConfig field that must agree when a pretrained directory is given
_SIZE_FIELDS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                "intermediate_size": "intermediate_size"}


def build_llm(config: LLMConfig, tokenizer: CaptionTokenizer, dtype: torch.dtype = torch.float32,
              zero3_config: dict | None = None) -> LlamaForCausalLM:
    """Load (in ``dtype``; partitioned as it is built under a ZeRO-3 ``zero3_config``) or create (fp32, random)
    the decoder and size its vocabulary to the tokenizer's (image markers included; separate trainable rows when
    the decoder is frozen and ``train_image_markers`` is set)."""
    check_attn_implementation(config.attn_implementation)
    if config.pretrained is not None:
        llm = load_pretrained_llm(config, tokenizer, dtype, zero3_config)
    else:
        llm = LlamaForCausalLM(llama_config(config, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id,
                                            tokenizer.pad_id))
    add_marker_rows(llm, tokenizer.vocab_size, separate=separate_marker_rows(config))
    if config.grad_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return llm


def llama_config(config: LLMConfig, vocab_size: int, bos_id: int = 1, eos_id: int = 2,
                 pad_id: int = 2) -> LlamaConfig:
    """The decoder's LlamaConfig: the pretrained directory's own (checked against the sizes), else the sizes."""
    if config.pretrained is not None:
        return pretrained_llama_config(config)
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
        intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, tie_word_embeddings=False,
        attn_implementation=config.attn_implementation)


def pretrained_llama_config(config: LLMConfig) -> LlamaConfig:
    """``config.json`` of the pretrained directory; its sizes must match ``model.llm.*`` (planner and MFU use those)."""
    path = Path(config.pretrained)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model.llm.pretrained: {path} is not a Hugging Face model directory "
                                "(config.json missing)")
    hf_config = LlamaConfig.from_pretrained(path)
    for ours, theirs in _SIZE_FIELDS.items():
        if getattr(config, ours) != getattr(hf_config, theirs):
            raise WeightsMismatchError(
                f"config key 'model.llm.{ours}' is {getattr(config, ours)} but {path / 'config.json'} has "
                f"{theirs}={getattr(hf_config, theirs)}; set model.llm.{ours}={getattr(hf_config, theirs)}")
    return hf_config


def pretrained_tokenizer_file(config: LLMConfig) -> Path:
    """The pretrained directory's ``tokenizer.model`` (the default tokenizer when a pretrained decoder is used)."""
    model_file = Path(config.pretrained) / "tokenizer.model"
    if not model_file.is_file():
        raise FileNotFoundError(f"model.llm.pretrained: {model_file} is missing; copy LLaMA's sentencepiece "
                                "tokenizer.model there or set model.tokenizer.path")
    return model_file


def separate_marker_rows(config: LLMConfig) -> bool:
    """New image-marker rows are trained on their own when the decoder itself is frozen."""
    return config.train_image_markers and not config.trainable


def load_pretrained_llm(config: LLMConfig, tokenizer: CaptionTokenizer, dtype: torch.dtype = torch.float32,
                        zero3_config: dict | None = None) -> LlamaForCausalLM:
    """A local Hugging Face directory in ``dtype``, after checking every tensor's shape from the safetensors
    headers; built uninitialised and filled from the files (what ``from_pretrained`` does, without its mapped-page
    peak on a dtype change)."""
    path = Path(config.pretrained)
    hf_config = pretrained_llama_config(config)
    pieces = tokenizer.vocab_size - len(IMAGE_MARKERS)
    if hf_config.vocab_size not in (pieces, tokenizer.vocab_size):
        raise WeightsMismatchError(
            f"model.llm.pretrained {path}: vocabulary of {hf_config.vocab_size} does not fit the tokenizer "
            f"{tokenizer.model_file} ({pieces} pieces + {len(IMAGE_MARKERS)} image markers)")
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(hf_config)
    expected = state_shapes(skeleton.state_dict())
    tied = ("lm_head.weight",) if hf_config.tie_word_embeddings else ()
    for name in tied:
        expected.pop(name, None)
    entries = tensor_entries(safetensors_files(path, "model.llm.pretrained"))
    check_tensor_shapes(expected, {name: entry.shape for name, entry in entries.items()},
                        f"model.llm.pretrained {path}", ignore_unexpected=("rotary_emb.inv_freq",))
    hf_config._attn_implementation = config.attn_implementation
    hf_config.dtype = dtype
    # storage is allocated, not initialised: every tensor is read from the files next
    with no_init_weights(), partitioned_construction(zero3_config), local_default_dtype(dtype):
        llm = LlamaForCausalLM(hf_config)
    fill_from_files(llm, entries, dtype, skip=tied)
    if tied:
        llm.tie_weights()
    return llm.eval()


@contextlib.contextmanager
def local_default_dtype(dtype: torch.dtype):
    """Modules constructed inside get ``dtype`` parameters (what ``from_pretrained(dtype=...)`` does)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def check_attn_implementation(name: str) -> None:
    """flash_attention_2 needs the flash-attn package and a CUDA GPU: say so before any weights are read."""
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available
        if not is_flash_attn_2_available():
            raise ValueError("config key 'model.llm.attn_implementation': flash_attention_2 needs the flash-attn "
                             "package and a CUDA GPU, which this machine lacks; use sdpa")
