"""Streaming training data: tar shards -> (pixels, input_ids, labels, attention_mask) batches, resumable exactly.

Every (rank, dataloader worker) slot reads its contiguous share of the epoch's shuffled shard order
(``data_pipeline.manifest.EpochPlan``: equal sample counts for every slot). The share is read as raw bytes in
windows of ``shuffle_buffer`` consecutive samples; each window is emitted in a seeded random order (the
permutation's seed is ``(seed, epoch, slot, window)``), the caption is selected, and only then are images
decoded. The stream repeats epochs forever; the trainer takes exactly the batches it needs, so no rank runs dry.

**Position.** Every example carries its worker's position after it: ``(epoch, window, emitted, seen,
skipped)`` plus the shard and in-shard offset where the window starts. The collator puts the newest one on the
batch, the trainer keeps the newest per worker (``lmm.training.loader_state``) and saves them in each checkpoint.
A resumed worker plans the same epoch, opens the window's shard at its offset (tar headers only), re-reads that
one window's raw bytes and drops the ``emitted`` samples it already served, undecoded.
A resume on another number of ranks or workers first reads its ``carry``: ranges of the old layout's emissions
that ``lmm.training.loader_state.reshard`` dealt it (the position counts them in ``carry``), then the next epochs.

**Pixels.** The tower's open_clip transform is split at its ToTensor: workers run the PIL part (resize, crop)
and ship uint8 images (4x less inter-process traffic than floats); ``TrainLoader`` moves each batch to the
training device and applies ToTensor + Normalize there, batched, with the same float32 operations (bit-identical
to the per-sample transform; on a GPU this costs the CPU nothing). Other transforms run whole in the workers.

**Bad data** (``data_pipeline.shard_format.SKIP_REASONS``) is skipped and counted in the position, so the counts
reach the trainer with the batches. A worker that reads a whole epoch share without one usable sample stops the
run with a clear error instead of hanging.
"""
from __future__ import annotations

import io
import math
import os
from collections import Counter
from itertools import islice
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from torchvision import transforms as T

from data_pipeline.captions import CaptionSelector
from data_pipeline.manifest import EpochPlan, Piece
from data_pipeline.sequence import SequenceLayout
from data_pipeline.shard_format import BadSample, image_member, rgb_image, sample_fields
from data_pipeline.shard_reader import LOST, read_pieces


def fresh_position(epoch: int = 0) -> dict:
    """Before the first sample of ``epoch`` (``carry``: carry-over samples emitted, see ``CaptionStream``)."""
    return {"epoch": epoch, "window": 0, "emitted": 0, "seen": 0, "skipped": {}, "shard": None, "offset": 0,
            "carry": 0}


class DataStopped(RuntimeError):
    """The data is too broken to train on (raised in a worker, re-raised by the DataLoader in the trainer)."""


def window_order(seed: int, epoch: int, slot: int, window: int, size: int) -> np.ndarray:
    """The emission order of one shuffle window: its RNG state is determined by these four numbers."""
    return np.random.default_rng([seed, epoch, slot, window]).permutation(size)


class PixelNormalize:
    """The tail of an open_clip transform (ToTensor, Normalize) applied to a uint8 [B, H, W, C] batch."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255)  # as ToTensor
        return pixels.sub_(self.mean.to(pixels.device)).div_(self.std.to(pixels.device))  # as Normalize


class _SkipIfNoop:
    """A PIL step that is skipped when it would copy the image unchanged (crop to its own size, convert to its
    own mode): same pixels, one copy less."""

    def __init__(self, step: Callable):
        self.step = step

    def __call__(self, image: Image.Image) -> Image.Image:
        if isinstance(self.step, T.CenterCrop) and image.size == tuple(reversed(self.step.size)):
            return image
        if getattr(self.step, "mode", None) == getattr(image, "mode", "") and hasattr(self.step, "mode"):
            return image  # open_clip's MaybeConvertMode
        return self.step(image)


def split_transform(transform: Callable) -> tuple[Callable, PixelNormalize | None]:
    """(per-image PIL stage, batched tensor stage) of a ``Compose([... PIL ops, ToTensor, Normalize])``;
    (transform, None) when it has another form."""
    steps = getattr(transform, "transforms", None)
    if (not steps or len(steps) < 2 or not isinstance(steps[-2], T.ToTensor)
            or not isinstance(steps[-1], T.Normalize) or steps[-1].inplace):
        return transform, None
    return T.Compose([_SkipIfNoop(step) for step in steps[:-2]]), PixelNormalize(steps[-1].mean, steps[-1].std)


def _uint8_image(pil_stage: Callable) -> Callable:
    def apply(image: Image.Image) -> np.ndarray:
        return np.asarray(pil_stage(image), dtype=np.uint8)  # [H, W, C], a view of the PIL image's bytes
    return apply


def stack_images(images: list) -> torch.Tensor:
    """One ``[B, ...]`` tensor of the examples' images. uint8 arrays are copied once each, straight into a
    tensor that lives in shared memory inside a DataLoader worker, so the batch crosses to the trainer as is."""
    if not isinstance(images[0], np.ndarray):
        return default_collate(images)  # float tensors of an unsplit transform (shared memory in a worker too)
    shape = (len(images), *images[0].shape)
    if get_worker_info() is None:
        out = torch.empty(shape, dtype=torch.uint8)
    else:
        out = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(math.prod(shape)))
        out = out.view(shape)
    rows = out.numpy()
    for row, image in enumerate(images):
        rows[row] = image
    return out


class CaptionStream(IterableDataset):
    """An endless, seeded stream of tokenized (image, caption) training examples for one rank.

    ``positions``: this rank's saved worker positions (logical worker -> position dict), ``consumed_batches``:
    batches the trainer took before the resume (it sets which physical worker plays which logical one),
    ``carry``: per logical worker, the samples another world size left to this rank (read before its epochs).
    """

    def __init__(self, pieces: list[Piece], select: CaptionSelector, transform: Callable, layout: SequenceLayout,
                 rank: int, world_size: int, micro_batch_size: int, seed: int = 0, shuffle_buffer: int = 1000,
                 positions: list[dict] | None = None, consumed_batches: int = 0,
                 carry: list[list[list[int]]] | None = None):
        super().__init__()
        self.pieces, self.select, self.layout = pieces, select, layout
        pil_stage, self.normalize = split_transform(transform)
        self.transform = _uint8_image(pil_stage) if self.normalize else transform
        self.rank, self.world_size, self.micro_batch_size = rank, world_size, micro_batch_size
        self.seed, self.shuffle_buffer = seed, max(1, shuffle_buffer)
        self.positions, self.consumed_batches, self.carry = positions, consumed_batches, carry
        self._plans, self._start_cache = {}, (None, {})

    def _logical_worker(self) -> tuple[int, int]:
        """(logical worker, workers). A resumed DataLoader restarts its round-robin at physical worker 0, so
        physical worker ``p`` plays the logical worker that owned batch ``consumed + p``."""
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if self.positions is not None and len(self.positions) != num_workers:
            raise ValueError(f"the checkpoint's loader state is for {len(self.positions)} dataloader workers per "
                             f"rank, this run has {num_workers}: resume with the same data.num_workers")
        return (physical + self.consumed_batches) % num_workers, num_workers

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = self._logical_worker()
        slot, slots = self.rank * num_workers + worker, self.world_size * num_workers
        position = dict(self.positions[worker]) if self.positions is not None else fresh_position()
        carry = self.carry[worker] if self.carry else []
        counts = _Counts(position["seen"], Counter(position["skipped"]),
                         self._plan(slots, position["epoch"]).samples_per_slot, slot)
        done = position.get("carry", 0)
        for done, (epoch, raw) in enumerate(self._carried(carry, done), start=done + 1):
            example = counts.example(self._example, raw, epoch)
            if example is not None:
                example["position"] = (worker, {**position, **counts.state(), "carry": done})
                yield example
        epoch, start = position["epoch"], position["window"] * self.shuffle_buffer + position["emitted"]
        while True:
            plan = self._plan(slots, epoch)
            if position.get("shard") is not None:  # checked once, on the first window after a resume
                first_window = start // self.shuffle_buffer
                _check_resume_point(position, self._window_start(plan, epoch, slot, first_window), worker)
                position["shard"] = None
            for index, raw in self._emissions(plan, epoch, slot, start, plan.samples_per_slot):
                example = counts.example(self._example, raw, epoch)
                if example is not None:
                    window, emitted = divmod(index + 1, self.shuffle_buffer)
                    example["position"] = (worker, {"epoch": epoch, "window": window, "emitted": emitted,
                                                    **counts.state(), "carry": done,
                                                    **self._window_start(plan, epoch, slot, window)})
                    yield example
            epoch, start = epoch + 1, 0

    def _plan(self, slots: int, epoch: int) -> EpochPlan:
        """The epoch plan of a slot layout (cached: a carry-over visits a few, then one per epoch)."""
        if (slots, epoch) not in self._plans:
            if len(self._plans) > 8:
                self._plans.clear()
            self._plans[slots, epoch] = EpochPlan(self.pieces, slots, self.seed, epoch)
        return self._plans[slots, epoch]

    def _window_start(self, plan: EpochPlan, epoch: int, slot: int, window: int) -> dict:
        """``_window_start`` of one window, remembered while the stream is in it."""
        key = (plan.slots, epoch, slot, window)
        if self._start_cache[0] != key:
            self._start_cache = (key, _window_start(plan, slot, window * self.shuffle_buffer))
        return self._start_cache[1]

    def _emissions(self, plan: EpochPlan, epoch: int, slot: int, begin: int, end: int) -> Iterator[tuple[int, dict]]:
        """(emission index, raw sample) for emissions ``[begin, end)`` of ``slot``'s share of ``epoch``: the share
        read in windows of ``shuffle_buffer`` samples, each emitted in its seeded order (``window_order``)."""
        size, share = self.shuffle_buffer, plan.samples_per_slot
        end = min(end, share)
        if begin >= end:
            return
        first, last = begin // size, (end - 1) // size
        raw_samples = read_pieces(plan.slot_range(slot, first * size, min(share, (last + 1) * size)))
        for window in range(first, last + 1):
            count = min(size, share - window * size)
            window_samples = list(islice(raw_samples, count))
            order = window_order(self.seed, epoch, slot, window, count)
            for j in range(max(begin - window * size, 0), min(end - window * size, count)):
                raw, window_samples[order[j]] = window_samples[order[j]], None
                yield window * size + j, raw

    def _carried(self, items: list[list[int]], done: int) -> Iterator[tuple[int, dict]]:
        """(epoch, raw sample) of the carry-over ``items`` after the first ``done``: ranges of another slot
        layout's emissions (``[slots, epoch, slot, begin, end]``, see ``lmm.training.loader_state.reshard``)."""
        for slots, epoch, slot, begin, end in items:
            if done >= end - begin:
                done -= end - begin
                continue
            for _, raw in self._emissions(self._plan(slots, epoch), epoch, slot, begin + done, end):
                yield epoch, raw
            done = 0

    def _example(self, raw: dict | None, epoch: int) -> dict:
        """Caption selection, tokenization, then image decoding; raises BadSample."""
        if raw is LOST:
            raise BadSample("tar_error")
        caption, reason = self.select.choose(raw["__key__"], sample_fields(raw), epoch)
        if reason:
            raise BadSample(reason)
        _, data = image_member(raw)
        try:
            image = Image.open(io.BytesIO(data))
            pixels = self.transform(rgb_image(image))
        except Exception:  # PIL raises many types on corrupt data
            raise BadSample("bad_image") from None
        input_ids, labels = self.layout.training_example(caption)
        return {"pixels": pixels, "input_ids": input_ids, "labels": labels, "key": raw["__key__"]}


class _Counts:
    """Samples read and skipped (by reason) by one loader slot; stops the run when a whole epoch share in a row
    was unusable."""

    def __init__(self, seen: int, skipped: Counter, share: int, slot: int):
        self.seen, self.skipped, self.share, self.slot, self.bad_run = seen, skipped, share, slot, 0

    def example(self, build: Callable, raw, epoch: int) -> dict | None:
        """``build(raw, epoch)``, or None for a skipped sample (counted)."""
        self.seen += 1
        try:
            example = build(raw, epoch)
        except BadSample as bad:
            self.skipped[bad.reason] += 1
            self.bad_run += 1
            if self.bad_run >= self.share:
                raise DataStopped(_no_usable_data(self.slot, self.bad_run, self.skipped)) from None
            return None
        self.bad_run = 0
        return example

    def state(self) -> dict:
        return {"seen": self.seen, "skipped": dict(self.skipped)}


def _window_start(plan: EpochPlan, slot: int, offset: int) -> dict:
    """Shard and in-shard offset where a window of ``slot``'s share starts (saved for checking the resume)."""
    pieces = plan.slot_range(slot, offset, offset + 1)
    return {"shard": pieces[0].url, "offset": pieces[0].start} if pieces else {"shard": None, "offset": 0}


def _check_resume_point(position: dict, planned: dict, worker: int) -> None:
    """The saved window start must be where the current plan starts it (shards may have moved: names count)."""
    if planned["shard"] is None or ((os.path.basename(position["shard"]), position["offset"])
                                    != (os.path.basename(planned["shard"]), planned["offset"])):
        raise ValueError(f"loader worker {worker}: the checkpoint resumes at {position['shard']} sample "
                         f"{position['offset']}, but the current manifest / data config plans {planned['shard']} "
                         f"sample {planned['offset']}: resume with the manifest, data.num_samples, data.seed, "
                         "data.shuffle_buffer, world size and data.num_workers of the checkpointed run")


def _no_usable_data(slot: int, count: int, skipped: Counter) -> str:
    return (f"data: loader slot {slot} skipped {count:,} samples in a row (a whole epoch share) without one "
            f"usable sample; skipped so far: {dict(skipped)}. Check the shards and data.caption_source.")


class Collator:
    """Stacks images, pads token sequences (see ``SequenceLayout.collate``) and carries the loader position.

    Crossing from a worker to the trainer, every shared-memory tensor costs the receiver a socket handshake (file
    descriptor passing, ~1 ms), so only the pixels go as one; the small token arrays go as numpy, by value, and
    ``TrainLoader`` turns them back into tensors."""

    def __init__(self, layout: SequenceLayout):
        self.layout = layout

    def __call__(self, examples: list[dict]) -> dict:
        tokens = self.layout.collate([(e["input_ids"], e["labels"]) for e in examples])
        batch = {name: value.numpy() for name, value in tokens.items()}  # small: they travel inside the pickle
        if "pixels" in examples[0]:  # text-only streams (a fuser's) have none
            batch["pixels"] = stack_images([e["pixels"] for e in examples])
        batch["keys"] = [e["key"] for e in examples]
        worker, position = examples[-1]["position"]
        batch["data_position"] = {"worker": worker, "position": position}
        return batch


class TrainLoader:
    """The DataLoader's batches on ``device``, with the pixel normalisation the workers left out applied there."""

    def __init__(self, loader: DataLoader, normalize: PixelNormalize | None, device: torch.device | str = "cpu"):
        self.loader, self.normalize, self.device = loader, normalize, torch.device(device)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            for name, value in batch.items():
                if isinstance(value, np.ndarray):
                    value = torch.from_numpy(value)
                if isinstance(value, torch.Tensor):
                    batch[name] = value.to(self.device, non_blocking=True)
            if self.normalize is not None:
                batch["pixels"] = self.normalize(batch["pixels"])
            yield batch


def build_train_loader(stream: CaptionStream, num_workers: int, device: torch.device | str = "cpu",
                       worker_init_fn: Callable[[int], None] | None = None) -> TrainLoader:
    """``worker_init_fn`` runs in each worker after PyTorch's own set-up (the trainer's passes stop signals on)."""
    loader = DataLoader(stream, batch_size=stream.micro_batch_size, num_workers=num_workers,
                        collate_fn=Collator(stream.layout), persistent_workers=num_workers > 0,
                        worker_init_fn=worker_init_fn,
                        prefetch_factor=4 if num_workers > 0 else None, pin_memory=torch.device(device).type == "cuda")
    return TrainLoader(loader, stream.normalize, device)
