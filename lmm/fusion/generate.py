"""Batched greedy generation for fusion: one tokenizer, two engines (vLLM, transformers' ``generate``).

``Fuser`` loads the model directory's transformers tokenizer and does the text work for both engines, so they get
the same token ids and give back text the same way: prompts are wrapped in the tokenizer's chat template when
asked (as one user turn, with the generation prompt), tokenized (special tokens added unless the template holds
them), handed to the engine as token ids, and only the new tokens come back, decoded without special tokens.

* ``transformers``: ``AutoModelForCausalLM`` on the process's device (``cuda:<local rank>`` when there is a GPU,
  bf16 there and fp32 on the CPU unless ``dtype`` says otherwise), batches padded on the left, greedy
  ``generate`` with the KV cache, ``max_new_tokens``, stopping at the end-of-sequence token.
* ``vllm``: ``LLM(model_dir).generate(token prompts, SamplingParams(temperature=0, max_tokens=max_new_tokens))``,
  on the GPU(s) the process sees (one task per GPU: ``slurm/fuse.sh``). vLLM batches continuously inside what it
  is given, so give it large batches (``--batch-size 1024``). **Untested here**: vLLM is not installed on the CPU
  box this project is developed on; the path is kept to these few lines.

``auto`` is vLLM on a GPU when it is installed, transformers otherwise.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

BACKENDS = ("auto", "vllm", "transformers")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``vllm`` on a GPU with vLLM installed, else ``transformers``; ``vllm`` must be installed."""
    installed = importlib.util.find_spec("vllm") is not None
    if backend == "auto":
        return "vllm" if installed and torch.cuda.is_available() else "transformers"
    if backend == "vllm" and not installed:
        raise ValueError("--backend vllm: vLLM is not installed (pip install vllm), or use --backend transformers")
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU, fp32 on the CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_tokenizer(model_dir: str | Path):
    """The directory's transformers tokenizer, padding on the left (with the end-of-sequence token when it has no
    padding token, as LLaMA's)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_prompts(tokenizer, prompts: list[str], chat_template: bool = False) -> list[list[int]]:
    """Token ids of prompt texts, as generation and fuser training both see them: in the chat template (one user
    turn with the generation prompt) when asked, else with the tokenizer's special tokens (LLaMA's ``<s>``)."""
    if chat_template:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    return tokenizer(prompts, add_special_tokens=not chat_template)["input_ids"]


class TransformersEngine:
    def __init__(self, model_dir: str | Path, tokenizer, max_new_tokens: int, dtype: str = "auto"):
        from transformers import AutoModelForCausalLM

        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}" if cuda else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=resolve_dtype(dtype, self.device))
        self.model.to(self.device).eval()
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        out = self.model.generate(**batch, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                                  pad_token_id=self.tokenizer.pad_token_id)
        return out[:, batch["input_ids"].shape[1]:].tolist()


class VllmEngine:
    """Untested on this CPU box (vLLM is not installed here); see the module docstring."""

    def __init__(self, model_dir: str | Path, max_new_tokens: int, dtype: str = "auto"):
        from vllm import LLM, SamplingParams

        self.llm = LLM(model=str(model_dir), dtype={"auto": "bfloat16", "bf16": "bfloat16", "fp16": "float16",
                                                    "fp32": "float32"}[dtype], seed=0)
        self.params = SamplingParams(temperature=0, max_tokens=max_new_tokens)

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], self.params, use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]


class Fuser:
    """Prompt texts -> generated texts (the new tokens only, decoded), greedy, one engine call per batch."""

    def __init__(self, model_dir: str | Path, max_new_tokens: int, backend: str = "auto", chat_template: bool = False,
                 dtype: str = "auto"):
        self.tokenizer = load_tokenizer(model_dir)
        if chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"--chat-template: the tokenizer in {model_dir} has no chat template")
        self.chat_template = chat_template
        self.backend = resolve_backend(backend)
        self.engine = (VllmEngine(model_dir, max_new_tokens, dtype) if self.backend == "vllm"
                       else TransformersEngine(model_dir, self.tokenizer, max_new_tokens, dtype))

    def encode(self, prompts: list[str]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, prompts, self.chat_template)

    def generate(self, prompts: list[str]) -> list[str]:
        return self.tokenizer.batch_decode(self.engine.generate(self.encode(prompts)), skip_special_tokens=True)
