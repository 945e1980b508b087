"""Which caption of a multi-caption sample a run trains on.

A sample's ``json`` holds several caption fields (``raw``, ``synthetic``, ``capsfusion``, others). A run picks
one field, or ``mixed`` with per-source ratios; the mixed choice is a seeded hash of the sample key, so every
rank, worker and restart picks the same caption for the same sample.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

# The CapsFusion-120M release's column names -> this project's field names.
CAPSFUSION_120M_COLUMNS = {"laion_2b": "raw", "laion_coco": "synthetic", "capsfusion": "capsfusion"}


def _unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) determined by ``(seed, key)`` alone."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class CaptionSelector:
    def __init__(self, source: str, mix: dict[str, float] | None = None, seed: int = 0):
        if source == "mixed":
            if not mix:
                raise ValueError("caption_source 'mixed' needs ratios, e.g. {'raw': 0.5, 'synthetic': 0.5}")
            total = sum(mix.values())
            self.sources = list(mix)
            self.bounds = [c / total for c in accumulate(mix.values())]
        else:
            self.sources, self.bounds = [source], [1.0]
        self.seed = seed

    def source_for(self, key: str) -> str:
        if len(self.sources) == 1:
            return self.sources[0]
        index = bisect_right(self.bounds, _unit_hash(key, self.seed))
        return self.sources[min(index, len(self.sources) - 1)]

    def __call__(self, key: str, fields: dict) -> str | None:
        """The chosen caption, or None when the sample lacks it (missing, empty or not text)."""
        caption = fields.get(self.source_for(key))
        if not isinstance(caption, str) or not caption.strip():
            return None
        return caption.strip()
