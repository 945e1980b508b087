"""LLaMA decoder (transformers ``LlamaForCausalLM``): a local Hugging Face directory, or random init from sizes."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmm.config import LLMConfig
from lmm.tokenizer import CaptionTokenizer


def build_llm(config: LLMConfig, tokenizer: CaptionTokenizer) -> LlamaForCausalLM:
    """Load or create the decoder and size its vocabulary to the tokenizer's (image markers included)."""
    if config.pretrained is not None:
        path = Path(config.pretrained)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.llm.pretrained: {path} is not a Hugging Face model directory "
                                    "(config.json missing)")
        llm = LlamaForCausalLM.from_pretrained(path, attn_implementation=config.attn_implementation,
                                               dtype=torch.float32)
    else:
        llm = LlamaForCausalLM(LlamaConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, num_key_value_heads=config.num_heads,
            intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
            bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
            tie_word_embeddings=False, attn_implementation=config.attn_implementation))
    resize_with_mean_init(llm, tokenizer.vocab_size)
    if config.grad_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return llm


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
