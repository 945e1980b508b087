"""LLaMA decoder (transformers ``LlamaForCausalLM``): a local Hugging Face directory, or random init from sizes."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmm.config import LLMConfig
from lmm.models.weights import WeightsMismatchError, check_tensor_shapes, safetensors_files, safetensors_shapes, \
    state_shapes
from lmm.tokenizer import IMAGE_MARKERS, CaptionTokenizer

# LLMConfig field -> LlamaConfig field that must agree when a pretrained directory is given
_SIZE_FIELDS = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                "intermediate_size": "intermediate_size"}


def build_llm(config: LLMConfig, tokenizer: CaptionTokenizer) -> LlamaForCausalLM:
    """Load or create the decoder and size its vocabulary to the tokenizer's (image markers included)."""
    check_attn_implementation(config.attn_implementation)
    if config.pretrained is not None:
        llm = load_pretrained_llm(config, tokenizer)
    else:
        llm = LlamaForCausalLM(llama_config(config, tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id,
                                            tokenizer.pad_id))
    resize_with_mean_init(llm, tokenizer.vocab_size)
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


def load_pretrained_llm(config: LLMConfig, tokenizer: CaptionTokenizer) -> LlamaForCausalLM:
    """``from_pretrained`` on a local directory after checking every tensor's shape from the safetensors headers."""
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
    if hf_config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    check_tensor_shapes(expected, safetensors_shapes(safetensors_files(path, "model.llm.pretrained")),
                        f"model.llm.pretrained {path}", ignore_unexpected=("rotary_emb.inv_freq",))
    return LlamaForCausalLM.from_pretrained(path, attn_implementation=config.attn_implementation,
                                            dtype=torch.float32)


def check_attn_implementation(name: str) -> None:
    """flash_attention_2 needs the flash-attn package and a CUDA GPU: say so before any weights are read."""
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available
        if not is_flash_attn_2_available():
            raise ValueError("config key 'model.llm.attn_implementation': flash_attention_2 needs the flash-attn "
                             "package and a CUDA GPU, which this machine lacks; use sdpa")


@torch.no_grad()
def resize_with_mean_init(llm: LlamaForCausalLM, vocab_size: int) -> None:
    """Grow input/output embeddings to ``vocab_size``; new rows are the mean of the old ones (as Emu does)."""
    old = llm.get_input_embeddings().weight.shape[0]
    if old == vocab_size:
        return
    if old > vocab_size:
        raise ValueError(f"decoder vocabulary ({old}) is larger than the tokenizer's ({vocab_size})")
    llm.resize_token_embeddings(vocab_size, mean_resizing=False)
    for emb in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight):
        emb[old:] = emb[:old].mean(dim=0, keepdim=True)
