"""Pretrained weights converted once to the training dtype, so every run memory-maps them instead of converting.

Why: a weight file already in the run's dtype is mapped by every rank of a node (one page-cache copy, build+load
0.42x a bare read of the files at 7B); an fp16 release (LLaMA-2's) trained in bf16 is converted by every rank into
its own memory instead (5x a bare read at 1B shape on the 2-core box; BENCHMARKS.md, "Build memory").

``convert_llm_dir``: a Hugging Face LLaMA directory; every safetensors shard is rewritten tensor by tensor in the
dtype (same names, same shards, same index), ``config.json`` records the dtype, and every other file (tokenizer,
generation config) is copied. ``convert_open_clip_file``: an open_clip checkpoint (``.pt``/``.bin``/
``.safetensors``) becomes one safetensors file of its ``visual.*`` tensors (the text tower is dropped; a bare trunk
or EVA's own naming is kept as it is), read with ``weights_only=True`` and loadable as ``model.vision.pretrained``. Output is written under a temporary name and
renamed, so an interrupted conversion leaves nothing that looks complete.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def convert_llm_dir(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    from safetensors.torch import save_file

    from lmm.models.safetensors_reader import iter_tensors, read_header, tensor_entries
    from lmm.models.weights import safetensors_files

    shards = safetensors_files(src, "llm")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; give a new directory")
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file() and path not in shards:
            shutil.copy2(path, partial / path.name)
    for shard in shards:
        header, _ = read_header(shard)
        tensors = dict(iter_tensors(tensor_entries([shard]), dtype, map_same_dtype=False))
        save_file(tensors, str(partial / shard.name), metadata=header.get("__metadata__") or {"format": "pt"})
        del tensors
        print(f"converted {shard.name}", flush=True)
    config_file = partial / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config["torch_dtype" if "torch_dtype" in config else "dtype"] = str(dtype).removeprefix("torch.")
        config_file.write_text(json.dumps(config, indent=2) + "\n")
    partial.rename(dst)
    return dst


def convert_open_clip_file(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    from safetensors.torch import save_file

    from lmm.models.vision import read_state_dict

    if dst.suffix != ".safetensors":
        raise ValueError(f"{dst}: the output must be a .safetensors file")
    state = read_state_dict(src, f"vision file {src}")
    if any(name.startswith("visual.") for name in state):
        state = {name: tensor for name, tensor in state.items() if name.startswith("visual.")}
    state = {name: (t.to(dtype) if t.is_floating_point() else t).contiguous() for name, t in state.items()}
    partial = dst.with_name(dst.name + ".partial")
    save_file(state, str(partial), metadata={"format": "pt"})
    partial.rename(dst)
    return dst
