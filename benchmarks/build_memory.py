"""Host memory and time of building the model from its weight files, and the size of lean checkpoints
(BENCHMARKS.md, "Build memory and lean checkpoints").

    PYTHONPATH=. python benchmarks/build_memory.py --llm-shape 1b [--file-dtype fp16] [--workdir DIR] [--keep]
    PYTHONPATH=. python benchmarks/build_memory.py --llm-shape 7b --keep

What it measures, in one run, each measurement in a fresh subprocess (the script re-invokes itself with the hidden
``--measure KIND`` flag and reads one JSON line back from its stdout):

1. **Train build** -- ``lmm.models.lmm.build_lmm(config.model, tokenizer, torch.bfloat16)`` exactly as a training
   rank calls it (``lmm.training.trainer.train``): frozen pretrained decoder from a Hugging Face LLaMA directory,
   frozen pretrained tower from an open_clip ``.safetensors`` file, random fp32 bridge, separate image-marker rows;
   then one read of every 4 KiB page of every parameter and buffer (*first touch*: a weight the reader memory-maps
   is not read until used, so without it "build" would time no loading at all; it stands for the least that the
   first forward or the copy to the GPU pays). *Build+load* = build + first touch. *Peak RSS* = the subprocess's
   ``VmHWM`` (reset through ``/proc/self/clear_refs`` once the imports are done) minus its RSS after the imports,
   against *held* = the bytes of the unique storages behind every parameter and buffer, split into *private*
   memory and *mapped* file pages (page cache, shared by every process that maps the same file); target peak <=
   1.15 x held. The *private peak* (``RssAnon``, sampled every 5 ms) is what each further rank of a node adds.
   Time target: build+load <= 1.5 x a *bare read* of the same weight files (another fresh subprocess, no torch:
   every file read sequentially with ``readinto`` into one reused 64 MiB buffer). Also shown: the same read into
   fresh anonymous memory kept to the end (the floor of any loader that gives the process a private copy: it pays
   the first-touch page faults the reused buffer never does). The page cache is warmed by an untimed read of the
   files right before each timed measurement; each subprocess reports the bytes it made the kernel fetch from disk
   (``/proc/self/io`` ``read_bytes``), non-zero when the files and what the process holds do not both fit in RAM.
2. **Eval build** -- ``lmm.eval.loading.load_eval_model(checkpoint, torch.bfloat16)`` on a lean DeepSpeed checkpoint
   written by the real code path first (another subprocess: single-process gloo group, ``build_lmm`` in bf16,
   ``lmm.training.trainer.build_engine`` with ZeRO-2 bf16, one optimizer step, ``Trainer.save`` with
   ``frozen_weights.describe(config.model)``). The step's gradients come from a synthetic loss on the trainable
   parameters, not from a forward pass: bf16 matmuls run at ~0.1 GFLOP/s on a CPU without AVX-512 (the 2-core
   box these figures come from), and the checkpoint's contents (fp32 master weights, Adam moments, the bf16 module
   copy of the trained tensors) do not depend on where the gradients came from. Same figures as (1); the bare read
   covers the pretrained files plus the checkpoint's files (all of them, although the eval reads only the fp32
   master weights of the optimizer file, not its Adam moments).
3. **Checkpoint bytes** of the paper config (``configs/capsfusion_10m.yaml``: EVA01-g-14 and LLaMA-2-7B frozen,
   128M-parameter bridge trained, bf16, ZeRO-2) from the meta-device build (``lmm.planning.model_shape``) with
   ``lmm.planning.checkpoint_bytes``: with the frozen weights and lean, and lean against the trainable state
   (trainable x (2 + 12) bytes; target <= 1.05 x). Then the real lean checkpoint of (2) against the same
   accounting for its own config, and against the trainable state of the model that wrote it.

The weight files are generated first, cheaply (constant values, tensor by tensor; no model is materialised):
``<workdir>/llama-<shape>-<dtype>/`` (``config.json`` via ``LlamaConfig.save_pretrained``, a synthetic
sentencepiece ``tokenizer.model`` with the shape's vocabulary, ``model-0000N-of-0000M.safetensors`` shards of at
most ``--shard-gb`` + ``model.safetensors.index.json``) and ``<workdir>/<tower>-<dtype>/open_clip_model.safetensors``
(``visual.trunk.*``, shapes from ``open_clip.create_model(tower, device="meta")``). ``--keep`` reuses files
(and the checkpoint) already written there. Shapes: ``1b`` = TinyLlama's sizes (hidden 2048, 22 layers, 32 heads,
intermediate 5632, vocab 32000) with full multi-head attention; ``7b`` = LLaMA-2-7B (4096 / 32 / 32 / 11008 / 32000).
``--file-dtype fp16`` writes fp16 files (LLaMA-2's own releases are fp16), so the load converts fp16 -> bf16.
``--llm-shape tiny`` (hidden 64, 2 layers, vocab 1000, tiny bridge, EVA01-tiny-14) is for the smoke test
(``tests/benchmarks/test_build_memory.py``); at that shape only, the checkpoint is written and the eval build's
modules imported while the train build is measured, to keep the test short.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PAPER_CONFIG = REPO_ROOT / "configs/capsfusion_10m.yaml"
RESULT_MARK = "BUILD_MEMORY_RESULT "
READ_BUFFER = 64 << 20
GB = 1e9
PEAK_TARGET, TIME_TARGET, LEAN_TARGET = 1.15, 1.5, 1.05
TOWER_FILE = "open_clip_model.safetensors"
FILE_DTYPES = {"bf16": ("bfloat16", "BF16", 2), "fp16": ("float16", "F16", 2), "fp32": ("float32", "F32", 4)}


@dataclass(frozen=True)
class LlmShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int  # sentencepiece pieces (the decoder's rows; the three image markers come on top)
    max_positions: int


SHAPES = {
    "tiny": LlmShape(64, 2, 4, 172, 1000, 128),
    "1b": LlmShape(2048, 22, 32, 5632, 32000, 2048),
    "7b": LlmShape(4096, 32, 32, 11008, 32000, 4096),
}
TINY_BRIDGE = ["model.bridge.num_queries=4", "model.bridge.width=32", "model.bridge.depth=1", "model.bridge.heads=2"]


# ----------------------------------------------------------------------------------------------- process figures

def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM (peak) / RssAnon (private) / RssFile (file-backed) of this process, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def disk_read_bytes() -> int:
    """Bytes this process caused to be fetched from storage (page-cache hits excluded); -1 if unknown."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


class Probe:
    """Around one build: wall time (with laps), CPU time, disk reads, and memory above the post-import baseline --
    peak RSS (``VmHWM``, reset on entry), and the peak of the private (anonymous) part sampled every 5 ms by a
    thread, and private / file-backed RSS at the end."""

    def __enter__(self):
        import gc
        import threading
        gc.collect()
        self.reset = reset_peak_rss()
        self.base = proc_status()
        self.disk0, self.cpu0 = disk_read_bytes(), os.times()
        self.anon_peak, self.laps, self.done = self.base["RssAnon"], [], threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.anon_peak = max(self.anon_peak, proc_status()["RssAnon"])

    def lap(self) -> None:
        self.laps.append(time.perf_counter() - self.t0)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.done.set()
        self.sampler.join()
        cpu, status = os.times(), proc_status()
        base = self.base
        self.figures = {"seconds": self.seconds, "laps_s": self.laps, "user_s": cpu.user - self.cpu0.user,
                        "sys_s": cpu.system - self.cpu0.system, "baseline_rss": base["VmRSS"],
                        "peak_bytes": status["VmHWM"] - base["VmRSS"],
                        "rss_after_bytes": status["VmRSS"] - base["VmRSS"],
                        "private_peak_bytes": max(self.anon_peak, status["RssAnon"]) - base["RssAnon"],
                        "private_after_bytes": status["RssAnon"] - base["RssAnon"],
                        "file_after_bytes": status["RssFile"] - base["RssFile"],
                        "peak_reset": self.reset, "disk_read_bytes": disk_read_bytes() - self.disk0}


def file_mappings() -> list[tuple[int, int, str]]:
    """(start, end, path) of this process's file-backed memory mappings."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end, fields[5]))
    return out


def unique_storages(model) -> list:
    """The distinct non-empty storages behind ``model``'s parameters and buffers, with the first tensor seen."""
    import itertools
    seen = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        storage = tensor.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = (storage, tensor)
    return list(seen.values())


def touch_every_page(model) -> int:
    """Read one byte of every 4 KiB page of every storage of ``model``: what the first forward pass or the copy to
    the GPU pays at least. For a memory-mapped weight file this maps its pages (page-cache hits when warm); for
    private memory that the build wrote it costs next to nothing. Returns the bytes covered."""
    import torch
    total = 0
    for storage, _ in unique_storages(model):
        view = torch.empty(0, dtype=torch.uint8).set_(storage)
        int(view[::4096].sum())
        total += storage.nbytes()
    return total


def held_bytes(model) -> dict:
    """Bytes of the unique storages behind every parameter and buffer: in total, memory-mapped from a file (shared
    through the page cache by every process mapping it) vs private, per top-level component and per dtype; and the
    trainable / frozen parameter counts."""
    mappings = file_mappings()
    ids = {}
    for name, part in model.named_children():
        for storage, _ in unique_storages(part):
            ids.setdefault(storage.data_ptr(), name)
    total = mapped = 0
    parts, dtypes = {}, {}
    for storage, tensor in unique_storages(model):
        nbytes, address = storage.nbytes(), storage.data_ptr()
        total += nbytes
        if any(start <= address < end for start, end, _ in mappings):
            mapped += nbytes
        part = ids.get(address, "other")
        parts[part] = parts.get(part, 0) + nbytes
        dtypes[str(tensor.dtype)] = dtypes.get(str(tensor.dtype), 0) + nbytes
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"held_bytes": total, "mapped_bytes": mapped, "private_bytes": total - mapped, "held_by_part": parts,
            "held_by_dtype": dtypes, "trainable_params": trainable, "frozen_params": frozen}


# --------------------------------------------------------------------------------------------- the weight files

def _safetensors_header(entries: list[tuple[str, tuple, str, int]]) -> tuple[bytes, int]:
    """Header bytes (length prefix included, padded to 8) and data size for (name, shape, code, itemsize)."""
    header, offset = {}, 0
    for name, shape, code, itemsize in entries:
        numel = 1
        for dim in shape:
            numel *= dim
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + numel * itemsize]}
        offset += numel * itemsize
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def write_safetensors(path: Path, shapes: list[tuple[str, tuple]], file_dtype: str, value: float = 2 ** -7) -> int:
    """A safetensors file whose tensors all hold ``value``, written chunk by chunk (never a tensor in memory)."""
    import torch

    torch_name, code, itemsize = FILE_DTYPES[file_dtype]
    prefix, nbytes = _safetensors_header([(name, shape, code, itemsize) for name, shape in shapes])
    chunk = torch.full((READ_BUFFER // itemsize,), value, dtype=getattr(torch, torch_name)).view(torch.uint8)
    chunk_view = memoryview(chunk.numpy())
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(prefix)
        left = nbytes
        while left:
            step = min(left, len(chunk_view))
            handle.write(chunk_view[:step])
            left -= step
    os.replace(tmp, path)
    return len(prefix) + nbytes


def write_tokenizer(path: Path, pieces: int) -> None:
    """A LLaMA-like sentencepiece model (unk 0, bos 1, eos 2) with exactly ``pieces`` pieces: a tiny BPE model
    trained on a few sentences, padded with never-produced pieces (LLaMA's own tokenizer.model is not public)."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    buffer = io.BytesIO()
    sentences = ["a photo of a cat on a sofa", "the image depicts a photo of a dog", "two people walking on a beach"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 20), model_writer=buffer, model_type="bpe", vocab_size=48,
        hard_vocab_limit=False, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    for index in range(len(proto.pieces), pieces):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"<unused_{index}>", -1e6 - index
    del proto.pieces[pieces:]
    path.write_bytes(proto.SerializeToString())


def llama_shapes(shape: LlmShape, file_dtype: str):
    """The LlamaConfig of a shape and its state dict's (name, shape) list, from a meta-device model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                         num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
                         intermediate_size=shape.intermediate, max_position_embeddings=shape.max_positions,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config.dtype = FILE_DTYPES[file_dtype][0]
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return config, [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def write_llama_dir(directory: Path, shape: LlmShape, file_dtype: str, shard_bytes: int) -> None:
    """A Hugging Face LLaMA directory: config.json, tokenizer.model, safetensors shards + index."""
    config, shapes = llama_shapes(shape, file_dtype)
    itemsize = FILE_DTYPES[file_dtype][2]
    shards, current, size = [], [], 0
    for name, dims in shapes:
        nbytes = itemsize
        for dim in dims:
            nbytes *= dim
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, dims))
        size += nbytes
    shards.append(current)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    write_tokenizer(directory / "tokenizer.model", shape.vocab)
    weight_map, total = {}, 0
    for number, shard in enumerate(shards, 1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / file_name, shard, file_dtype)
        for name, dims in shard:
            weight_map[name] = file_name
            nbytes = itemsize
            for dim in dims:
                nbytes *= dim
            total += nbytes
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_tower_file(path: Path, tower: str, file_dtype: str) -> None:
    """open_clip layout: the visual trunk's tensors under ``visual.trunk.``."""
    import open_clip
    import torch

    import lmm.models.vision  # noqa: F401  (registers EVA01-tiny-14 with open_clip and timm)

    with torch.device("meta"):
        clip = open_clip.create_model(tower, device="meta")
    shapes = [(f"visual.trunk.{name}", tuple(t.shape)) for name, t in clip.visual.trunk.state_dict().items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, shapes, file_dtype)


# ------------------------------------------------------------------------------------------ config and file sets

@dataclass
class Spec:
    """Everything a measurement subprocess needs (passed as JSON)."""
    shape: str
    tower: str
    file_dtype: str
    llama_dir: str
    tower_file: str
    run_dir: str

    @property
    def checkpoint(self) -> Path:
        return Path(self.run_dir) / "checkpoints" / "global_step1"


def run_overrides(spec: Spec) -> list[str]:
    s = SHAPES[spec.shape]
    return [f"model.vision.name={spec.tower}", f"model.vision.pretrained={spec.tower_file}",
            f"model.llm.pretrained={spec.llama_dir}", f"model.llm.hidden_size={s.hidden}",
            f"model.llm.num_layers={s.layers}", f"model.llm.num_heads={s.heads}",
            f"model.llm.intermediate_size={s.intermediate}", f"model.llm.max_position_embeddings={s.max_positions}",
            f"model.tokenizer.path={Path(spec.llama_dir) / 'tokenizer.model'}", "train.precision=bf16",
            "train.zero_stage=2", "train.micro_batch_size=1", "train.global_batch_size=1", "data.num_samples=1000",
            "train.warmup_steps=10", "data.max_caption_tokens=8", "run_name=build-memory",
            f"output_dir={spec.run_dir}", *(TINY_BRIDGE if spec.shape == "tiny" else [])]


def run_config(spec: Spec):
    from lmm.config import load_config
    return load_config(PAPER_CONFIG, run_overrides(spec))


def weight_files(spec: Spec) -> list[Path]:
    """The files a train build reads: the decoder's shards and the tower file."""
    from lmm.models.weights import safetensors_files
    return [*safetensors_files(Path(spec.llama_dir), "llama"), Path(spec.tower_file)]


def checkpoint_files(spec: Spec) -> list[Path]:
    return sorted(p for p in spec.checkpoint.iterdir() if p.suffix == ".pt")


# ----------------------------------------------------------------------------------- measurements (subprocesses)

def measure_bare(files: list[str], fresh: bool = False) -> dict:
    """Read every file sequentially, 64 MiB per ``readinto``: into one reused buffer (the target's reference: what
    any loader must at least do), or with ``fresh`` into new anonymous memory kept to the end (one mapping per file,
    first touched by the read, as a loader that hands the process its own copy must)."""
    import mmap

    buffer = memoryview(bytearray(READ_BUFFER))
    kept = []
    disk0, total = disk_read_bytes(), 0
    start = time.perf_counter()
    for name in files:
        with open(name, "rb", buffering=0) as handle:
            if fresh:
                length = os.fstat(handle.fileno()).st_size
                kept.append(mmap.mmap(-1, max(length, 1)))
                buffer = memoryview(kept[-1])
            offset = 0
            while True:
                count = handle.readinto(buffer[offset:offset + READ_BUFFER] if fresh else buffer)
                if not count:
                    break
                total += count
                offset += count if fresh else 0
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": total, "disk_read_bytes": disk_read_bytes() - disk0}


def measure_train(spec: Spec) -> dict:
    import torch

    from data_pipeline.tokenizer import CaptionTokenizer
    from lmm.models.lmm import build_lmm, precision_dtype

    config = run_config(spec)
    tokenizer = CaptionTokenizer(config.model.tokenizer.path)
    dtype = precision_dtype(config.train.precision)
    assert dtype == torch.bfloat16
    wait_for_go()
    with Probe() as probe:
        model = build_lmm(config.model, tokenizer, dtype)
        probe.lap()
        touch_every_page(model)
    return {**probe.figures, **held_bytes(model)}


def measure_eval(spec: Spec) -> dict:
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa: F401  (import cost)

    from lmm.eval.loading import load_eval_model

    wait_for_go()
    with Probe() as probe:
        loaded = load_eval_model(spec.checkpoint, torch.bfloat16)
        probe.lap()
        touch_every_page(loaded.model)
    return {**probe.figures, **held_bytes(loaded.model)}


def make_checkpoint(spec: Spec) -> dict:
    """A lean ZeRO-2 bf16 checkpoint through the training code path (one process, gloo), after one optimizer step
    whose gradients come from a synthetic loss on the trainable parameters (see the module docstring)."""
    import torch

    from data_pipeline.files import write_json_atomic
    from data_pipeline.tokenizer import CaptionTokenizer
    from lmm import distributed
    from lmm.models.lmm import build_lmm, precision_dtype
    from lmm.training import checkpoint, frozen_weights
    from lmm.training.checkpoint import RUN_CONFIG_FILE
    from lmm.training.metrics import MetricsLogger
    from lmm.training.trainer import Trainer, build_engine, seed_everything

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    env = distributed.init_distributed()
    config = run_config(spec)
    run_dir = Path(config.output_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / RUN_CONFIG_FILE, config.to_dict())
    seed_everything(config.seed)
    tokenizer = CaptionTokenizer(config.model.tokenizer.path)
    frozen = frozen_weights.describe(config.model)
    model = build_lmm(config.model, tokenizer, precision_dtype(config.train.precision))
    counts = held_bytes(model)
    engine = build_engine(config, model, env.world_size, env.is_main)
    trainable = [p for p in engine.module.parameters() if p.requires_grad]
    loss = sum((p.float().square().mean() for p in trainable), torch.zeros(()))
    engine.backward(loss)
    engine.step()
    trainer = Trainer(config, engine, MetricsLogger(run_dir / "tensorboard", enabled=False), step=1,
                      consumed_batches=1, frozen=frozen)
    trainer.save()
    path = checkpoint.latest_checkpoint(run_dir)
    files = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
    distributed.shutdown()
    return {"checkpoint": str(path), "files": files, "lean": frozen["excluded"],
            "trainable_params": counts["trainable_params"], "frozen_params": counts["frozen_params"]}


def meta_accounting(config) -> dict:
    """Parameter counts of the meta-device build of ``config`` and its checkpoint bytes, with and without frozen."""
    from lmm.planning import build_meta_model, checkpoint_bytes, model_shape

    shape = model_shape(config, build_meta_model(config))
    t = config.train
    trainable, frozen = shape.trainable_params, shape.frozen_params
    return {"trainable_params": trainable, "frozen_params": frozen, "params": shape.params,
            "with_frozen": checkpoint_bytes(trainable, frozen, t.precision, t.zero_stage, lean=False),
            "lean": checkpoint_bytes(trainable, frozen, t.precision, t.zero_stage, lean=True),
            "trainable_state": trainable * ((2 if t.precision == "bf16" else 4) + 12)}


MEASURES = {"train": measure_train, "eval": measure_eval, "checkpoint": make_checkpoint}


GATED = False  # a pre-started child waits for a line on stdin before its timed part


def wait_for_go() -> None:
    """In a pre-started child: block (imports done) until the parent has warmed the page cache and says go."""
    if GATED:
        sys.stdin.readline()


def child_main(kind: str, payload: str) -> int:
    global GATED
    try:  # at 7B shape a child holds most of the machine's memory: if memory runs out, let it be the one to go
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    data = json.loads(payload)
    GATED = bool(data.pop("gated", False))
    result = measure_bare(data["files"], data["fresh"]) if kind == "bare" else MEASURES[kind](Spec(**data))
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ the parent side

class ChildFailed(RuntimeError):
    def __init__(self, kind: str, code: int, stdout: str, stderr: str):
        last = [line for line in stderr.strip().splitlines() if line.strip()]
        self.summary = f"--measure {kind} exited {code}: {last[-1].strip() if last else 'no output'}"
        super().__init__(f"{self.summary}\n{stdout[-3000:]}\n{stderr[-5000:]}")


def start_child(kind: str, payload: dict, gated: bool = False):
    """Start ``--measure kind`` in a fresh interpreter; its output goes to temporary files (no pipe to fill).
    ``gated``: it imports, then waits for ``go(child)`` before its timed part."""
    import tempfile
    payload = {**payload, "gated": True} if gated else payload
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", kind, "--payload", json.dumps(payload)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=stdout, stderr=stderr, text=True,
                            stdin=subprocess.PIPE if gated else subprocess.DEVNULL)
    return kind, proc, stdout, stderr, time.perf_counter()


def go(child) -> None:
    """Let a gated child start its timed part."""
    proc = child[1]
    try:
        proc.stdin.write("go\n")
        proc.stdin.close()
    except (BrokenPipeError, OSError):  # it already failed; finish_child reports why
        pass


def finish_child(child, timeout: float | None = None) -> dict:
    """Wait for a child started by ``start_child`` and return the JSON it printed."""
    kind, proc, stdout, stderr, start = child
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    stdout.seek(0)
    stderr.seek(0)
    text, errors = stdout.read(), stderr.read()
    stdout.close()
    stderr.close()
    if os.environ.get("BUILD_MEMORY_VERBOSE"):
        print(f"  (--measure {kind}: subprocess {time.perf_counter() - start:.1f} s)", flush=True)
    lines = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise ChildFailed(kind, proc.returncode, text, errors)
    return json.loads(lines[-1][len(RESULT_MARK):])


def run_child(kind: str, payload: dict, timeout: float | None = None) -> dict:
    return finish_child(start_child(kind, payload), timeout)


def warm(files: list[Path]) -> None:
    """Untimed read of ``files`` so that the timed reads start from a warm page cache."""
    measure_bare([str(f) for f in files])


def summary(runs: list[dict]) -> dict:
    """Median time over rounds (with every round's), the most bytes fetched from disk in any round."""
    return {"seconds": statistics.median(r["seconds"] for r in runs), "rounds_s": [r["seconds"] for r in runs],
            "bytes": runs[0].get("bytes", 0), "disk_read_bytes": max(r["disk_read_bytes"] for r in runs)}


def prepare_files(args, spec: Spec) -> None:
    shape = SHAPES[spec.shape]
    llama_dir, tower_file = Path(spec.llama_dir), Path(spec.tower_file)
    done = llama_dir / ".complete"
    if not (args.keep and done.is_file()):
        start = time.perf_counter()
        write_llama_dir(llama_dir, shape, spec.file_dtype, int(args.shard_gb * GB))
        done.write_text("ok")
        print(f"wrote {llama_dir} in {time.perf_counter() - start:.1f} s", flush=True)
    if not (args.keep and tower_file.is_file()):
        start = time.perf_counter()
        write_tower_file(tower_file, spec.tower, spec.file_dtype)
        print(f"wrote {tower_file} in {time.perf_counter() - start:.1f} s", flush=True)


def measured_pair(kind: str, spec: Spec, files: list[Path], repeats: int, started=None) -> dict:
    """``repeats`` rounds of (bare read, read into fresh memory, build), each after an untimed warm-up read of
    ``files``; ``started``: a gated child of ``kind`` already importing, used for the first round's build."""
    builds, bares, freshes = [], [], []
    names = [str(f) for f in files]
    for round_ in range(repeats):
        warm(files)
        bares.append(run_child("bare", {"files": names, "fresh": False}))
        warm(files)
        freshes.append(run_child("bare", {"files": names, "fresh": True}))
        warm(files)
        if round_ == 0 and started is not None:
            go(started)
            builds.append(finish_child(started))
        else:
            builds.append(run_child(kind, asdict(spec)))
        print(f"{kind} round {round_ + 1}: build {seconds(builds[-1]['laps_s'][0])}, build+load "
              f"{seconds(builds[-1]['seconds'])}, peak "
              f"{size(builds[-1]['peak_bytes'])}; bare read {seconds(bares[-1]['seconds'])}, into fresh memory "
              f"{seconds(freshes[-1]['seconds'])}", flush=True)
    build = {**builds[-1], **summary(builds), "build_s": statistics.median(b["laps_s"][0] for b in builds),
             "touch_s": statistics.median(b["seconds"] - b["laps_s"][0] for b in builds),
             **{key: max(b[key] for b in builds) for key in ("peak_bytes", "private_peak_bytes")}}
    bare, fresh = summary(bares), summary(freshes)
    return {"build": build, "bare": bare, "fresh": fresh, "peak_ratio": build["peak_bytes"] / build["held_bytes"],
            "time_ratio": build["seconds"] / bare["seconds"], "fresh_ratio": build["seconds"] / fresh["seconds"]}


def failed_or(measure) -> dict:
    """``measure()``, or ``{"error": the child's last traceback line}`` when a measured subprocess failed (the
    report then shows the failure in that row and goes on with the others)."""
    try:
        return measure()
    except ChildFailed as err:
        print(err, file=sys.stderr, flush=True)
        return {"error": err.summary}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def source_version() -> str:
    """The commit of the library code measured, and whether lmm/ differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "lmm"], cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes in lmm/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def format_report(args, spec: Spec, results: dict, paper: dict, ckpt: dict | None, run_acc: dict | None,
                  version: str) -> str:
    s = SHAPES[spec.shape]
    now = source_version()
    version = version if now == version else f"{version} at the start, {now} at the end (CHANGED DURING THE RUN)"
    lines = [(f"LLaMA {spec.shape} shape (hidden {s.hidden}, {s.layers} layers, {s.heads} heads, intermediate "
              f"{s.intermediate}, vocab {s.vocab}) + {spec.tower} tower; files {spec.file_dtype}, built in bf16; "
              f"library at {version}; page cache warmed before every timed run; {args.repeats} round(s), "
              "median times, max peaks"), "",
             ("| build | held (private + mapped) | peak RSS | peak / held | private peak | build | first touch "
              "| build+load | bare read (bytes) | build+load / bare | read into fresh memory | build+load / fresh "
              "| disk reads (build, bare, fresh) | memory <= 1.15x | time <= 1.5x bare |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for kind, label in (("train", "train build (build_lmm)"), ("eval", "eval build (load_eval_model, lean ckpt)")):
        if kind not in results:
            continue
        r = results[kind]
        if "error" in r:
            lines.append(f"| {label} | FAILED: {r['error']} |" + " |" * 12 + " FAIL | FAIL |")
            continue
        b, bare, fresh = r["build"], r["bare"], r["fresh"]
        lines.append(
            f"| {label} | {size(b['held_bytes'])} ({size(b['private_bytes'])} + {size(b['mapped_bytes'])}) "
            f"| {size(b['peak_bytes'])} | {r['peak_ratio']:.3f} | {size(b['private_peak_bytes'])} "
            f"| {seconds(b['build_s'])} | {seconds(b['touch_s'])} | {seconds(b['seconds'])} "
            f"| {seconds(bare['seconds'])} ({size(bare['bytes'])}) | {r['time_ratio']:.2f} "
            f"| {seconds(fresh['seconds'])} | {r['fresh_ratio']:.2f} "
            f"| {size(b['disk_read_bytes'])}, {size(bare['disk_read_bytes'])}, {size(fresh['disk_read_bytes'])} "
            f"| {verdict(r['peak_ratio'] <= PEAK_TARGET)} | {verdict(r['time_ratio'] <= TIME_TARGET)} |")
    lines.append("")
    for kind in ("train", "eval"):
        if "build" not in results.get(kind, {}):
            continue
        b = results[kind]["build"]
        lines.append(
            f"{kind} detail: held by part " + ", ".join(f"{k} {size(v)}" for k, v in b["held_by_part"].items())
            + "; by dtype " + ", ".join(f"{k.removeprefix('torch.')} {size(v)}" for k, v in b["held_by_dtype"].items())
            + f"; peak - held {size(b['peak_bytes'] - b['held_bytes'])}; at the end: private RSS "
            f"{size(b['private_after_bytes'])}, file-backed RSS {size(b['file_after_bytes'])}; CPU user "
            f"{b['user_s']:.2f} s, sys {b['sys_s']:.2f} s; rounds build+load {fmt_rounds(b['rounds_s'])} s, bare "
            f"{fmt_rounds(results[kind]['bare']['rounds_s'])} s, fresh {fmt_rounds(results[kind]['fresh']['rounds_s'])}"
            f" s; trainable {b['trainable_params']:,}, frozen {b['frozen_params']:,} params; a node of 8 ranks "
            f"building at once holds ~{size(8 * b['private_peak_bytes'] + b['mapped_bytes'])} (8 x private peak + "
            f"the mapped files once) vs {size(8 * b['held_bytes'])} (8 private copies)")
    lines += ["", "checkpoint bytes, paper config (configs/capsfusion_10m.yaml; meta-device build, bf16, ZeRO-2):",
              f"  parameters: trainable {paper['trainable_params']:,}  frozen {paper['frozen_params']:,}",
              f"  checkpoint with frozen weights : {paper['with_frozen'] / GB:8.3f} GB",
              (f"  lean checkpoint                : {paper['lean'] / GB:8.3f} GB  "
               f"({paper['with_frozen'] / paper['lean']:.1f}x smaller)"),
              f"  trainable state (x (2 + 12) B) : {paper['trainable_state'] / GB:8.3f} GB",
              (f"  lean / trainable state         : {paper['lean'] / paper['trainable_state']:.3f}  (target <= "
               f"{LEAN_TARGET}) {verdict(paper['lean'] / paper['trainable_state'] <= LEAN_TARGET)}"),
              f"  with frozen / trainable state  : {paper['with_frozen'] / paper['trainable_state']:.3f}"]
    if ckpt is not None:
        real = sum(ckpt["files"].values())
        state = ckpt["trainable_params"] * 14
        lines += ["", (f"real lean checkpoint of the eval build ({spec.shape} shape, {spec.tower}; "
                       f"{Path(ckpt['checkpoint']).name}, lean={ckpt['lean']}):"),
                  "  files: " + ", ".join(f"{k} {v:,} B" for k, v in sorted(ckpt["files"].items())),
                  f"  total {real:,} B = {size(real)}",
                  (f"  accounting (meta build of this config): lean {run_acc['lean']:,} B (trainable "
                   f"{run_acc['trainable_params']:,}); real / accounting = {real / run_acc['lean']:.4f}"),
                  (f"  trainable state of the built model ({ckpt['trainable_params']:,} trainable params x 14 B): "
                   f"{state:,} B; real / trainable state = {real / state:.4f}  (target <= {LEAN_TARGET}) "
                   f"{verdict(real / state <= LEAN_TARGET)}"),
                  (f"  the same checkpoint with frozen weights would be {size(run_acc['with_frozen'])} "
                   "(accounting)")]
    return "\n".join(lines)


def size(nbytes: float) -> str:
    """Bytes in GB, MB or kB (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if abs(nbytes) >= scale / 10:
            return f"{nbytes / scale:.3f} {unit}"
    return f"{nbytes / 1e3:.1f} kB"


def seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value:.3g} s"


def fmt_rounds(values: list[float]) -> str:
    return "/".join(f"{v:.3g}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-shape", choices=tuple(SHAPES), default="1b", metavar="{1b,7b}",
                        help="decoder shape (tiny: the smoke test's)")
    parser.add_argument("--tower", default=None, help="open_clip model name (default EVA01-g-14)")
    parser.add_argument("--file-dtype", choices=tuple(FILE_DTYPES), default="bf16")
    parser.add_argument("--workdir", default="/tmp/build_memory_work")
    parser.add_argument("--keep", action="store_true", help="reuse weight files and checkpoint already written")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (bare read, build) per build kind")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="largest LLaMA shard, GB")
    parser.add_argument("--skip-eval", action="store_true", help="no checkpoint, no eval build")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--payload", help=argparse.SUPPRESS)
    if argv is None:
        argv = sys.argv[1:]
    if "--measure" in argv:
        args = parser.parse_args(argv)
        return child_main(args.measure, args.payload)
    args = parser.parse_args(argv)
    shape = args.llm_shape
    tower = args.tower or ("EVA01-tiny-14" if shape == "tiny" else "EVA01-g-14")
    work = Path(args.workdir).resolve()
    spec = Spec(shape, tower, args.file_dtype, str(work / f"llama-{shape}-{args.file_dtype}"),
                str(work / f"{tower}-{args.file_dtype}" / TOWER_FILE),
                str(work / f"run-{shape}-{tower}-{args.file_dtype}"))
    version = source_version()
    print(f"build_memory: {shape} + {tower}, files {args.file_dtype}, workdir {work}, library at {version}",
          flush=True)
    prepare_files(args, spec)

    from lmm.config import load_config

    results, files = {}, weight_files(spec)
    ckpt = run_acc = writer = eval_child = None
    ckpt_record = Path(spec.run_dir) / "build_memory_checkpoint.json"
    reuse = args.keep and ckpt_record.is_file() and (spec.checkpoint / "meta.json").is_file()
    if not args.skip_eval and not reuse and shape == "tiny":
        # smoke-test shape only: write the checkpoint, and import the eval build's modules, while the train build
        # is measured (keeps the test short; figures at this shape say nothing). At real shapes every subprocess
        # runs alone.
        writer = start_child("checkpoint", asdict(spec))
        eval_child = start_child("eval", asdict(spec), gated=True)  # imports now, measures once told to
    paper = meta_accounting(load_config(PAPER_CONFIG, ["model.allow_random_frozen=true"]))
    results["train"] = failed_or(lambda: measured_pair("train", spec, files, args.repeats))
    if not args.skip_eval:
        if reuse:
            ckpt = json.loads(ckpt_record.read_text())
        else:
            start = time.perf_counter()
            ckpt = failed_or(lambda: finish_child(writer) if writer else run_child("checkpoint", asdict(spec)))
            if "error" not in ckpt:
                ckpt_record.write_text(json.dumps(ckpt))
                print(f"wrote lean checkpoint {ckpt['checkpoint']} ({time.perf_counter() - start:.1f} s)",
                      flush=True)
        if "error" in ckpt:
            if eval_child is not None:
                eval_child[1].kill()
                eval_child[1].wait()
            results["eval"], ckpt = {"error": f"no checkpoint: {ckpt['error']}"}, None
        else:
            run_acc = meta_accounting(run_config(spec))
            results["eval"] = failed_or(
                lambda: measured_pair("eval", spec, [*files, *checkpoint_files(spec)], args.repeats, eval_child))
    print()
    print(format_report(args, spec, results, paper, ckpt, run_acc, version), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
