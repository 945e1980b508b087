"""Checkpoint and weight loads that cannot run code from the files.

A pickle may call any importable function while it loads (``__reduce__``); ``torch.load(weights_only=True)`` only
rebuilds tensors, containers, primitive values and allow-listed types. DeepSpeed 0.19.8 passes
``weights_only=False`` at every checkpoint load (``runtime/checkpoint_engine/torch_checkpoint_engine.py`` under
``engine.load_checkpoint``, ``utils/zero_to_fp32.py`` under the consolidation eval and export use): measured, a
poisoned ``mp_rank_00_model_states.pt`` ran its payload under ``launch.evaluate`` and on resume.

``safe_loading()`` sets ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, which ``torch.load`` reads at every call and which
overrides an explicit ``weights_only=False`` (torch 2.14 ``serialization.load``), so DeepSpeed is not patched. It
allow-lists exactly the non-tensor types DeepSpeed 0.19.8 writes outside torch's defaults, found by saving real
2-rank checkpoints (ZeRO 0, 1, 2 and 3 in fp32 and bf16; lean ZeRO 2 and 3; steps 0-2; CPU, gloo), converting some to
the universal form (``ds_to_universal``, as ``lmm.training.elastic`` does) and listing
``torch.serialization.get_unsafe_globals_in_checkpoint`` of every ``.pt``; with them all 1,505 files load:

- ``deepspeed.runtime.zero.config.ZeroStageEnum``: ``zero_stage`` of ZeRO 1-3 optimizer files (and the universal
  ``optimizer_state.pt``); an ``int`` Enum, rebuilt by value lookup.
- ``deepspeed.runtime.fp16.loss_scaler.LossScaler``: the static loss scaler of the same files.
- ``deepspeed.utils.tensor_fragment.fragment_address``: ``param_slice_mappings`` of ZeRO 1/2 optimizer files (a
  dataclass of two ints).

The two classes are rebuilt by ``cls.__new__`` plus a ``__dict__`` update: no method of theirs runs. Model-state
files (ZeRO 0's optimizer state included) and the universal per-parameter files need nothing beyond torch's
defaults; the trainer's client state is plain data.
"""
from __future__ import annotations

import os
import pickle
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
# torch's refusals: a global outside the allow-list (or in a blocked module), or a call / object it will not build
_REFUSED = re.compile(r"GLOBAL (\S+)|unrecognized function (\S+)|but got <class '([^']+)'>")


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint or weight file pickles a type outside the allow-list; the message names the type and file."""


def deepspeed_checkpoint_types() -> list[type]:
    """The allow-list (see the module docstring)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


@contextmanager
def safe_loading() -> Iterator[None]:
    """Every ``torch.load`` inside, DeepSpeed's included, loads weights only whatever its caller passes, with
    DeepSpeed's checkpoint types allowed; a refused file raises UnsafeCheckpointError naming it. Nests. Fails
    closed: with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` also set, torch refuses every load (RuntimeError)."""
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    added = [t for t in deepspeed_checkpoint_types() if t not in torch.serialization.get_safe_globals()]
    try:
        with torch.serialization.safe_globals(added):  # removes exactly ``added`` on exit
            yield
    except pickle.UnpicklingError as err:
        named = refusal(err)
        if named is None:
            raise
        raise named from err
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


def refusal(err: BaseException, file: str | Path | None = None) -> UnsafeCheckpointError | None:
    """``err`` as "refusing to unpickle <type> from <file>: not a plain weights file" if it is torch refusing a
    weights-only load, else None. ``file`` defaults to the one the failing ``torch.load`` was reading."""
    if isinstance(err, UnsafeCheckpointError) or not isinstance(err, pickle.UnpicklingError):
        return None
    match = _REFUSED.search(str(err))
    if match is None:
        return None
    refused = next(group for group in match.groups() if group)
    file = file if file is not None else _file_being_loaded(err)
    return UnsafeCheckpointError(f"refusing to unpickle {refused} from {file or 'a checkpoint file'}: not a plain "
                                 "weights file")


def _file_being_loaded(err: BaseException) -> str | None:
    """The ``f`` argument of the innermost ``torch.load`` frame in ``err``'s traceback."""
    found, tb = None, err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is torch.serialization.load.__code__:
            found = tb.tb_frame.f_locals.get("f")
        tb = tb.tb_next
    if isinstance(found, (str, os.PathLike)):
        return os.fspath(found)
    return getattr(found, "name", None)
