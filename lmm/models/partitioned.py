"""Building pretrained components under ZeRO-3: partitioned as they are constructed, filled from the files.

Under ZeRO-3 no rank may hold a whole pretrained decoder or tower. Inside DeepSpeed's ``zero.Init`` every module
is partitioned over the ranks as soon as its constructor returns (each rank keeps 1/N of every parameter); the
weights are then copied in one parameter at a time inside ``zero.GatheredParameters(modifier_rank=0)``: rank 0
reads the tensor from the file, DeepSpeed scatters it, so a rank holds its partition plus one gathered parameter
at a time. transformers' own DeepSpeed integration does the same (``_load_state_dict_into_zero3_model``); this
module applies it to the project's readers. Randomly initialised components (the bridge, test-size models) are
built whole and partitioned by ``deepspeed.initialize``, so their initialisation is the same at every stage.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from lmm.models.safetensors_reader import TensorEntry, load_into, read_tensor


@contextlib.contextmanager
def partitioned_construction(ds_config: dict | None) -> Iterator[None]:
    """Construct modules partitioned over the ranks (``ds_config`` of a ZeRO-3 run); a no-op without one."""
    if ds_config is None:
        yield
        return
    import deepspeed
    from transformers.integrations.deepspeed import prevent_arange_dtype_change

    # RoPE buffers are built with torch.arange and an explicit dtype, which zero.Init would otherwise cast. The
    # dtype comes from ds_config's bf16 section (the run's precision): DeepSpeed 0.19's Init ignores an explicit
    # dtype on accelerators without fp16 (the CPU) and picks bf16.
    with prevent_arange_dtype_change(), deepspeed.zero.Init(config_dict_or_path=ds_config):
        yield


def is_partitioned(module: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


def gathered(params: list[nn.Parameter], modifier_rank: int | None = None):
    """Whole copies of ZeRO-3 partitioned ``params`` inside the block (written back from ``modifier_rank``);
    a no-op for ordinary parameters."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=modifier_rank)


def load_partitioned(module: nn.Module, fetch: Callable[[str], torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    """Fill a partitioned ``module`` with ``fetch(own name)`` for every parameter and persistent buffer but ``skip``:
    parameters one at a time, read on rank 0 and scattered by DeepSpeed; buffers (never partitioned) on every
    rank."""
    import torch.distributed as dist

    is_reader = not dist.is_initialized() or dist.get_rank() == 0
    params = {name: p for name, p in module.named_parameters() if name not in skip}
    buffers = [name for name in module.state_dict() if name not in params and name not in skip]
    with torch.no_grad():
        for name, param in params.items():  # the same order on every rank: the gathers are collective
            with gathered([param], modifier_rank=0):
                if is_reader:
                    param.data.copy_(fetch(name))
        for name in buffers:
            module.get_buffer(name).copy_(fetch(name))


def fill_from_files(module: nn.Module, entries: dict[str, TensorEntry], dtype: torch.dtype,
                    rename: Callable[[str], str] = lambda name: name, skip: tuple[str, ...] = ()) -> None:
    """Fill ``module`` from safetensors ``entries``: through rank 0 when ZeRO-3 partitioned it, else in place of
    its (meta or uninitialised) tensors."""
    if is_partitioned(module):
        load_partitioned(module, safetensors_fetch(entries, dtype, rename), skip=skip)
    else:
        load_into(module, entries, dtype, rename=rename, skip=skip)


def safetensors_fetch(entries: dict[str, TensorEntry], dtype: torch.dtype,
                      rename: Callable[[str], str] = lambda name: name) -> Callable[[str], torch.Tensor]:
    """``fetch`` for ``load_partitioned``: one tensor of the files by the module's own name, in ``dtype``."""
    return lambda name: read_tensor(entries[rename(name)], dtype if entries[rename(name)].dtype.is_floating_point
                                    else entries[rename(name)].dtype)
