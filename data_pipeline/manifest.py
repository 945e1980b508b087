"""The shard manifest, nested sample subsets, and the per-epoch deal of samples to (rank, worker) slots.

``manifest.json`` lists the shards in a fixed order: ``{"shards": [{"path", "num_samples", "bytes", "sha256"}],
"num_samples": N, ...}``; ``path`` is relative to the manifest, absolute, a URL, or a ``pipe:`` command. An entry
may also list ``sidecars`` (same kinds of path): keyed files of extra caption fields the shard reader joins to the
shard's samples (``data_pipeline.sidecar``); planning never reads them.

* **Subsets** (``data.num_samples``) are the first ``n`` samples in manifest order (the last shard may be cut),
  so 10M ⊂ 50M ⊂ 100M, planned from the manifest alone without opening a tar.
* **Epoch plan**: every epoch the subset's shards are shuffled with a seed shared by all ranks and laid end to
  end; slot ``s`` of ``S = ranks x workers`` reads the contiguous range ``[s * P, (s + 1) * P)`` with
  ``P = n // S`` (a range may start or end inside a shard). Every slot, hence every rank, gets exactly ``P``
  samples per epoch; the ``n % S`` samples at the end of the shuffled order are dropped for that epoch (a
  different few each epoch), never padded. Planning is O(shards + slots) in time and memory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data_pipeline.files import write_json_atomic

MANIFEST_FILE = "manifest.json"


class ShardEntry(NamedTuple):
    url: str  # resolved: local path, URL or ``pipe:`` command
    num_samples: int
    bytes: int | None = None
    sha256: str | None = None
    sidecars: tuple[str, ...] = ()  # resolved, like ``url``


class Piece(NamedTuple):
    """Samples ``[start, stop)`` of one shard (sample = one key's group of tar members), with its sidecars."""
    url: str
    start: int
    stop: int
    sidecars: tuple[str, ...] = ()


def is_relative(path: str) -> bool:
    """Whether a manifest path is a local path relative to the manifest (not absolute, a URL or ``pipe:``)."""
    return not (path.startswith("pipe:") or "://" in path or Path(path).is_absolute())


def resolve_url(path: str, base: Path) -> str:
    return str(base / path) if is_relative(path) else path


def manifest_file(path: str | Path) -> Path:
    """The ``manifest.json`` a path names (a folder means its ``manifest.json``)."""
    path = Path(path)
    return path / MANIFEST_FILE if path.is_dir() else path


def read_manifest(path: str | Path) -> dict:
    """A manifest's json as written (paths unresolved), e.g. for its ``caption_fields``."""
    path = manifest_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.train_manifest: no manifest at {path}")
    return json.loads(path.read_text())


def load_manifest(path: str | Path) -> list[ShardEntry]:
    """Shards listed in a ``manifest.json`` (a folder means its ``manifest.json``)."""
    path = manifest_file(path)
    shards = [ShardEntry(resolve_url(e["path"], path.parent), int(e["num_samples"]), e.get("bytes"), e.get("sha256"),
                         tuple(resolve_url(s, path.parent) for s in e.get("sidecars", ())))
              for e in read_manifest(path)["shards"]]
    if not shards:
        raise ValueError(f"{path}: manifest lists no shards")
    return shards


def write_manifest(path: str | Path, entries: list[dict], **extra) -> dict:
    """Write ``{"shards": entries, "num_samples": total, **extra}`` atomically; returns it."""
    path = Path(path)
    order = ("path", "num_samples", "bytes", "sha256")
    entries = [{**{k: e[k] for k in order if k in e}, **e} for e in entries]
    manifest = {"shards": entries, "num_samples": sum(e["num_samples"] for e in entries), **extra}
    write_json_atomic(path, manifest, sort_keys=False)
    return manifest


def total_samples(shards: list[ShardEntry]) -> int:
    return sum(s.num_samples for s in shards)


def subset(shards: list[ShardEntry], num_samples: int) -> list[Piece]:
    """The first ``num_samples`` samples in manifest order, as whole shards plus a cut last one."""
    available = total_samples(shards)
    if num_samples > available:
        raise ValueError(f"data.num_samples={num_samples:,} but the manifest holds only {available:,} samples "
                         f"in {len(shards):,} shards: prepare more shards or ask for fewer samples")
    if num_samples <= 0:
        raise ValueError(f"data.num_samples must be positive, got {num_samples}")
    pieces, left = [], num_samples
    for shard in shards:
        if left <= 0:
            break
        take = min(shard.num_samples, left)
        if take > 0:
            pieces.append(Piece(shard.url, 0, take, shard.sidecars))
        left -= take
    return pieces


class EpochPlan:
    """One epoch's deal of a subset's samples to ``slots`` (rank x worker) readers; see the module docstring."""

    def __init__(self, pieces: list[Piece], slots: int, seed: int, epoch: int):
        sizes = np.fromiter((p.stop - p.start for p in pieces), dtype=np.int64, count=len(pieces))
        self.pieces, self.slots = pieces, slots
        self.order = np.random.default_rng([seed, epoch]).permutation(len(pieces))
        self.ends = np.cumsum(sizes[self.order])
        self.samples_per_slot = int(self.ends[-1]) // slots if len(pieces) else 0
        if self.samples_per_slot == 0:
            raise ValueError(f"{int(self.ends[-1]) if len(pieces) else 0} samples cannot feed {slots} "
                             "(rank x worker) slots: ask for more samples or use fewer workers")

    def locate(self, position: int) -> tuple[int, int]:
        """(index in the shuffled order, offset in that piece) of the epoch's ``position``-th sample."""
        index = int(np.searchsorted(self.ends, position, side="right"))
        before = int(self.ends[index - 1]) if index else 0
        return index, position - before

    def slot_range(self, slot: int, start: int = 0, stop: int | None = None) -> list[Piece]:
        """Pieces holding samples ``[start, stop)`` of ``slot``'s share of this epoch, in reading order."""
        per = self.samples_per_slot
        stop = per if stop is None else min(stop, per)
        begin, end = slot * per + start, slot * per + stop
        out = []
        index, offset = self.locate(begin)
        while begin < end:
            piece = self.pieces[self.order[index]]
            take = min(piece.stop - piece.start - offset, end - begin)
            out.append(piece._replace(start=piece.start + offset, stop=piece.start + offset + take))
            begin += take
            index, offset = index + 1, 0
        return out

    def slot_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """For every slot at once (vectorised): the shuffled-order index and offset where its share begins."""
        begins = np.arange(self.slots, dtype=np.int64) * self.samples_per_slot
        index = np.searchsorted(self.ends, begins, side="right")
        before = np.where(index > 0, self.ends[np.maximum(index - 1, 0)], 0)
        return index, begins - before
