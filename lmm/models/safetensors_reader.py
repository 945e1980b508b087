"""Read safetensors weights into a model in the run's dtype, one tensor at a time, never a second copy.

A tensor whose file dtype is the run's dtype becomes a view of a private, read-only-in-practice memory map of the
file (``torch.UntypedStorage.from_file(shared=False)``): nothing is read until the weights are used, and the pages
live in the page cache, which every rank of a node shares -- eight ranks of a node hold one copy of a frozen
decoder, not eight. A tensor of another dtype (an fp16 release trained in bf16) is read with plain file reads into
one reused scratch buffer and converted into its own storage, so the peak is the held bytes plus the largest
tensor. What this replaces: ``from_pretrained`` (transformers 5.24) loading an fp16 LLaMA-1B-shaped directory as
bf16 peaked at 1.96x the bytes the model holds (VmHWM, measured by hand when this reader was written), because every
mapped page it touches while converting stays resident until the shard is closed. This reader's figures (peak
~1.00x held; build+load 0.42x a bare read of the files at 7B): ``benchmarks/build_memory.py``, BENCHMARKS.md.

A mapped file must not be truncated or rewritten in place while a run uses it (replacing it by a rename is safe);
the lean checkpoints' fingerprints (``lmm.training.frozen_weights``) catch files that changed between runs.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the data buffer.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own bound


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: str | Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its data buffer starts."""
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors file (header length {length})")
        text = handle.read(length)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a safetensors file (bad header: {err})") from None
    return header, 8 + length


def tensor_entries(files: Iterable[str | Path]) -> dict[str, TensorEntry]:
    """Every tensor of ``files`` (one model's shards) by name, from the headers only."""
    entries = {}
    for path in map(Path, files):
        header, data_start = read_header(path)
        size = path.stat().st_size
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in DTYPES:
                raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
            begin, end = (data_start + offset for offset in info["data_offsets"])
            if end > size:
                raise ValueError(f"{path}: tensor '{name}' ends at byte {end} but the file has {size} "
                                 "(truncated file?)")
            entries[name] = TensorEntry(path, DTYPES[info["dtype"]], tuple(info["shape"]), begin, end)
    return entries


def read_tensor(entry: TensorEntry, dtype: torch.dtype, handle=None, scratch: list[torch.Tensor] | None = None
                ) -> torch.Tensor:
    """One tensor in ``dtype``: read into its destination directly when the file holds that dtype, else into a
    scratch buffer (``scratch[0]``, replaced by a larger one as needed) and converted."""
    out = torch.empty(entry.shape, dtype=dtype)
    target = out if entry.dtype == dtype else _scratch_view(scratch, entry)
    nbytes = entry.end - entry.begin
    if nbytes:
        own = handle is None
        handle = open(entry.path, "rb") if own else handle
        try:
            handle.seek(entry.begin)
            view = memoryview(target.view(-1).view(torch.uint8).numpy())
            if handle.readinto(view) != nbytes:
                raise ValueError(f"{entry.path}: short read at byte {entry.begin} (truncated file?)")
        finally:
            if own:
                handle.close()
    if target is not out:
        out.copy_(target.view(entry.shape))
    return out


def _scratch_view(scratch: list[torch.Tensor] | None, entry: TensorEntry) -> torch.Tensor:
    numel = 1
    for dim in entry.shape:
        numel *= dim
    nbytes = numel * torch.empty((), dtype=entry.dtype).element_size()
    if scratch is None:
        scratch = [torch.empty(0, dtype=torch.uint8)]
    if scratch[0].numel() < nbytes:  # a new buffer: one that numpy has viewed cannot be resized
        scratch[0] = torch.empty(nbytes, dtype=torch.uint8)
    return scratch[0][:nbytes].view(entry.dtype)


def mapped_tensor(entry: TensorEntry, storage: torch.UntypedStorage) -> torch.Tensor | None:
    """``entry`` as a view of its file's memory map, or None when its offset is not aligned to its dtype."""
    size = torch.empty((), dtype=entry.dtype).element_size()
    if entry.begin % size:
        return None
    strides, step = [], 1
    for dim in reversed(entry.shape):
        strides.insert(0, step)
        step *= dim
    return torch.empty(0, dtype=entry.dtype).set_(storage, entry.begin // size, entry.shape, strides)


def iter_tensors(entries: dict[str, TensorEntry], dtype: torch.dtype, names: Iterable[str] | None = None,
                 map_same_dtype: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor in dtype)`` for ``names`` (default: all), in file order: views of the file's memory map where
    it holds ``dtype`` already (``map_same_dtype``), else read and converted through one reused scratch buffer.
    Integer tensors keep their dtype."""
    chosen = sorted(names if names is not None else entries, key=lambda n: (str(entries[n].path), entries[n].begin))
    scratch = [torch.empty(0, dtype=torch.uint8)]
    handles: dict[Path, object] = {}
    maps: dict[Path, torch.UntypedStorage] = {}
    try:
        for name in chosen:
            entry = entries[name]
            own_dtype = dtype if entry.dtype.is_floating_point else entry.dtype  # never convert integer tensors
            if map_same_dtype and entry.dtype == own_dtype:
                if entry.path not in maps:
                    maps[entry.path] = torch.UntypedStorage.from_file(str(entry.path), False,
                                                                      entry.path.stat().st_size)
                view = mapped_tensor(entry, maps[entry.path])
                if view is not None:
                    yield name, view
                    continue
            if entry.path not in handles:
                for old in handles.values():
                    old.close()
                handles = {entry.path: open(entry.path, "rb")}
            yield name, read_tensor(entry, own_dtype, handles[entry.path], scratch)
    finally:
        for handle in handles.values():
            handle.close()


def load_into(module: torch.nn.Module, entries: dict[str, TensorEntry], dtype: torch.dtype,
              rename: Callable[[str], str] = lambda name: name, skip: Iterable[str] = ()) -> None:
    """Fill every parameter and persistent buffer of ``module`` but ``skip`` from ``entries`` (file name =
    ``rename(own name)``), floating-point ones in ``dtype``, replacing the module's tensors (so it works on
    meta-device skeletons). Shapes and names must have been checked (``lmm.models.weights.check_tensor_shapes``)."""
    skip = set(skip)
    wanted = {rename(name): name for name in module.state_dict() if name not in skip}
    state = {wanted[file_name]: tensor for file_name, tensor in iter_tensors(entries, dtype, wanted)}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if set(missing) != skip or unexpected:
        raise RuntimeError(f"weights not filled: missing {sorted(set(missing) - skip)[:5]}, unexpected "
                           f"{unexpected[:5]}")
