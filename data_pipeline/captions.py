"""Which caption of a multi-caption sample a run trains on.

A sample's ``json`` holds several caption fields (``raw``, ``synthetic``, ``capsfusion``, others). A run picks
one field, or ``mixed`` with per-source ratios; the mixed choice is a seeded hash of the sample key, so every
rank, worker and restart picks the same caption for the same sample. A field holding a list (several captions
of one image, e.g. COCO's five) contributes one of them, chosen by a seeded hash of (key, epoch).
"""
from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate


def _unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) determined by ``(seed, key)`` alone."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class CaptionSelector:
    def __init__(self, source: str, mix: dict[str, float] | None = None, seed: int = 0,
                 max_chars: int | None = None):
        if source == "mixed":
            if not mix:
                raise ValueError("caption_source 'mixed' needs ratios, e.g. {'raw': 0.5, 'synthetic': 0.5}")
            total = sum(mix.values())
            self.sources = list(mix)
            self.bounds = [c / total for c in accumulate(mix.values())]
        else:
            self.sources, self.bounds = [source], [1.0]
        self.seed, self.max_chars = seed, max_chars

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
            caption = options[int(_unit_hash(f"{key}/{epoch}", self.seed) * len(options))] if options else ""
        if not isinstance(caption, str):
            return None, "missing_caption"
        caption = caption.strip()
        if not caption:
            return None, "empty_caption"
        if self.max_chars is not None and len(caption) > self.max_chars:
            return None, "caption_too_long"
        return caption, None

    def __call__(self, key: str, fields: dict) -> str | None:
        """The chosen caption, or None when the sample lacks a usable one."""
        return self.choose(key, fields)[0]
