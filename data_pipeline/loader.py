"""Streaming training data: webdataset tar shards -> (pixels, input_ids, labels, attention_mask) batches.

Each (rank, dataloader worker) slot reads its own shards: every epoch the shard list is shuffled with a seed
that all ranks share, then shard ``i`` goes to slot ``i % slots``. Samples are buffer-shuffled as raw bytes
(seeded per slot and epoch), the caption is selected, and only then are images decoded. The stream repeats
epochs forever; the trainer decides how many batches to take, so no rank can run dry and hang.

Resume: the loader position is the number of batches the trainer consumed. Each worker recomputes how many of
its samples that covers and skips them before decoding (still reading the tars), so a resumed run sees the same
samples in the same order as an uninterrupted one, given the same world size and worker count.
"""
from __future__ import annotations

import io
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.captions import CaptionSelector
from lmm.sequence import SequenceLayout

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Shard:
    url: str
    num_samples: int


def load_manifest(path: str | Path) -> list[Shard]:
    """Shards listed in a ``manifest.json``; relative paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.train_manifest: no manifest at {path}")
    entries = json.loads(path.read_text())["shards"]
    shards = []
    for entry in entries:
        url = entry["path"]
        if not url.startswith("pipe:") and "://" not in url and not Path(url).is_absolute():
            url = str(path.parent / url)
        shards.append(Shard(url, int(entry["num_samples"])))
    if not shards:
        raise ValueError(f"{path}: manifest lists no shards")
    return shards


def batches_seen_by_worker(consumed_batches: int, worker: int, num_workers: int) -> int:
    """DataLoader takes batches from workers round-robin: how many of the consumed ones came from ``worker``."""
    return max(0, (consumed_batches - worker + num_workers - 1) // num_workers)


class CaptionStream(IterableDataset):
    """An endless, seeded stream of tokenized (image, caption) training examples for one rank."""

    def __init__(self, shards: list[Shard], select: CaptionSelector, transform: Callable, layout: SequenceLayout,
                 rank: int, world_size: int, micro_batch_size: int, seed: int = 0, shuffle_buffer: int = 1000,
                 consumed_batches: int = 0):
        super().__init__()
        self.shards, self.select, self.transform, self.layout = shards, select, transform, layout
        self.rank, self.world_size, self.micro_batch_size = rank, world_size, micro_batch_size
        self.seed, self.shuffle_buffer, self.consumed_batches = seed, shuffle_buffer, consumed_batches
        self.skipped = Counter()

    def _slot(self) -> tuple[int, int, int, int]:
        """(slot, slots, logical worker, workers). A resumed DataLoader restarts its round-robin at worker 0,
        so physical worker ``w`` plays the logical worker that owned batch ``consumed + w``."""
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (physical + self.consumed_batches) % num_workers
        slots = self.world_size * num_workers
        if len(self.shards) < slots:
            raise ValueError(f"{len(self.shards)} shards cannot feed {self.world_size} ranks x {num_workers} "
                             "workers: write more (smaller) shards or use fewer workers")
        return self.rank * num_workers + worker, slots, worker, num_workers

    def _raw_samples(self, slot: int, slots: int) -> Iterator[dict]:
        epoch = 0
        while True:
            order = list(range(len(self.shards)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            urls = [{"url": self.shards[i].url} for i in order[slot::slots]]
            buffer_rng = random.Random(f"{self.seed}-{epoch}-{slot}")
            samples = wds.tarfile_samples(iter(urls), handler=self._count_and_continue)
            yield from _buffer_shuffle(samples, self.shuffle_buffer, buffer_rng)
            epoch += 1

    def _count_and_continue(self, exn: Exception) -> bool:
        self.skipped[f"tar_error:{type(exn).__name__}"] += 1
        return True

    def _with_caption(self, samples: Iterator[dict]) -> Iterator[tuple[dict, str]]:
        for sample in samples:
            try:
                fields = json.loads(sample["json"]) if "json" in sample else {}
            except (ValueError, UnicodeDecodeError):
                self.skipped["bad_json"] += 1
                continue
            if "txt" in sample and "raw" not in fields:  # img2dataset layout: .txt is the alt-text
                fields["raw"] = sample["txt"].decode("utf-8", errors="replace")
            caption = self.select(sample["__key__"], fields)
            if caption is None:
                self.skipped["missing_caption"] += 1
                continue
            yield sample, caption

    def _decode(self, sample: dict, caption: str) -> dict | None:
        data = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
        if data is None:
            self.skipped["missing_image"] += 1
            return None
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            pixels = self.transform(image)
        except Exception:  # PIL raises many types on corrupt data
            self.skipped["bad_image"] += 1
            return None
        input_ids, labels = self.layout.training_example(caption)
        return {"pixels": pixels, "input_ids": input_ids, "labels": labels, "key": sample["__key__"]}

    def __iter__(self) -> Iterator[dict]:
        slot, slots, worker, num_workers = self._slot()
        skip = batches_seen_by_worker(self.consumed_batches, worker, num_workers) * self.micro_batch_size
        for index, (sample, caption) in enumerate(self._with_caption(self._raw_samples(slot, slots))):
            if index < skip:
                continue  # already trained on before the resume; skipped before decoding
            example = self._decode(sample, caption)
            if example is not None:
                yield example


def _buffer_shuffle(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Reservoir-style shuffle buffer with an explicit RNG (reproducible, unlike a global one)."""
    buffer: list[dict] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class Collator:
    """Stacks images and pads token sequences (see ``SequenceLayout.collate``)."""

    def __init__(self, layout: SequenceLayout):
        self.layout = layout

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.layout.collate([(e["input_ids"], e["labels"]) for e in examples])
        batch["pixels"] = torch.stack([e["pixels"] for e in examples])
        batch["keys"] = [e["key"] for e in examples]
        return batch


def build_train_loader(stream: CaptionStream, num_workers: int) -> DataLoader:
    return DataLoader(stream, batch_size=stream.micro_batch_size, num_workers=num_workers,
                      collate_fn=Collator(stream.layout), persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers > 0 else None)


def caption_corpus(shards: list[Shard], max_samples: int = 200_000) -> Iterator[str]:
    """Every caption field of the first ``max_samples`` samples (text for training a tokenizer)."""
    seen = 0
    for sample in wds.tarfile_samples(iter({"url": s.url} for s in shards), handler=wds.ignore_and_continue):
        if seen >= max_samples:
            return
        seen += 1
        try:
            fields = json.loads(sample.get("json", b"{}"))
        except ValueError:
            continue
        if "txt" in sample:
            yield sample["txt"].decode("utf-8", errors="replace")
        yield from (v for v in fields.values() if isinstance(v, str) and v.strip() and "://" not in v)
