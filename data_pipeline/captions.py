"""Which caption of a multi-caption sample a run trains on.

A sample's ``json`` holds several caption fields (``raw``, ``synthetic``, ``capsfusion``, others). A run picks
one field, or ``mixed`` with per-source ratios; the mixed choice is a seeded hash of the sample key, so every
rank, worker and restart picks the same caption for the same sample. A field holding a list (several captions
of one image, e.g. COCO's five) contributes one of them per epoch (``data.caption_per_epoch``): ``random`` picks
by a seeded hash of (key, epoch); ``in_turn`` walks a seeded per-image order of its captions, one per epoch, so an
image with ``c`` captions shows each of them once in every block of ``c`` epochs (0 to c-1, c to 2c-1, ...):
every (image, caption) pair is a sample, without storing the image once per caption or showing it twice in one
epoch. Either way the choice is a function of (seed, key, epoch), which the loader's resume position fixes, so
a resume stays exact.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

import numpy as np

LIST_CHOICES = ("random", "in_turn")


def _unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) determined by ``(seed, key)`` alone."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class CaptionSelector:
    def __init__(self, source: str, mix: dict[str, float] | None = None, seed: int = 0,
                 max_chars: int | None = None, list_choice: str = "random"):
        if list_choice not in LIST_CHOICES:
            raise ValueError(f"list_choice must be one of {LIST_CHOICES}, got {list_choice!r}")
        if source == "mixed":
            if not mix:
                raise ValueError("caption_source 'mixed' needs ratios, e.g. {'raw': 0.5, 'synthetic': 0.5}")
            total = sum(mix.values())
            self.sources = list(mix)
            self.bounds = [c / total for c in accumulate(mix.values())]
        else:
            self.sources, self.bounds = [source], [1.0]
        self.seed, self.max_chars, self.list_choice = seed, max_chars, list_choice

    def source_for(self, key: str) -> str:
        if len(self.sources) == 1:
            return self.sources[0]
        index = bisect_right(self.bounds, _unit_hash(key, self.seed))
        return self.sources[min(index, len(self.sources) - 1)]

    def choose(self, key: str, fields: dict, epoch: int = 0) -> tuple[str | None, str | None]:
        """(caption, None), or (None, skip reason): missing_caption, empty_caption or caption_too_long."""
        caption = fields.get(self.source_for(key))
        if isinstance(caption, list):
            options = [c for c in caption if isinstance(c, str) and c.strip()]
            caption = options[self.list_index(key, epoch, len(options))] if options else ""
        if not isinstance(caption, str):
            return None, "missing_caption"
        caption = caption.strip()
        if not caption:
            return None, "empty_caption"
        if self.max_chars is not None and len(caption) > self.max_chars:
            return None, "caption_too_long"
        return caption, None

    def list_index(self, key: str, epoch: int, count: int) -> int:
        """Which of a sample's ``count`` listed captions ``epoch`` uses."""
        if self.list_choice == "random":
            return int(_unit_hash(f"{key}/{epoch}", self.seed) * count)
        cycle, turn = divmod(epoch, count)  # a fresh seeded order of the captions every ``count`` epochs
        order = np.random.default_rng(int(_unit_hash(f"{key}/{cycle}", self.seed) * 2**63)).permutation(count)
        return int(order[turn])

    def __call__(self, key: str, fields: dict) -> str | None:
        """The chosen caption, or None when the sample lacks a usable one."""
        return self.choose(key, fields)[0]
