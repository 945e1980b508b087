"""A tiny randomly initialised fuser directory (tests, benchmarks, the CPU demo): the classes a cluster run loads.

``save_random_fuser`` trains a LLaMA-style sentencepiece model in-process on the given text plus the paper's
prompt (``data_pipeline.tokenizer.train_tokenizer``), saves transformers' tokenizer files next to it (as
``lmm.export.save_hf_tokenizer`` does for exported decoders) and a seeded random ``LlamaForCausalLM`` of the given
size, so ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` (and ``lmm-fuse run --model``) read it as
they read a real one.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from data_pipeline.tokenizer import train_tokenizer
from lmm.fusion.prompt import PAPER_PROMPT


def save_random_fuser(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 500, hidden_size: int = 64,
                      num_layers: int = 2, num_heads: int = 4, max_positions: int = 1024, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    out = Path(out_dir)
    train_tokenizer([*[PAPER_PROMPT] * 20, *texts], out / "tokenizer.model", vocab_size)
    tokenizer = LlamaTokenizer.from_pretrained(out, add_bos_token=True, legacy=False)
    tokenizer.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 8 // 3,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out
