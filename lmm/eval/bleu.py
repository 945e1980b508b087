"""BLEU-1..4: pycocoevalcap's ``Bleu(4)`` (``option='closest'``), with pycocoevalcap's assertions as ValueErrors.

The numpy port this module used to hold (79 lines) gave the same scores and was x3-5 faster, which on 5,000
images x 5 references is 0.7 s instead of 2.4-3.8 s (``benchmarks/library_review.py``): not worth its lines next
to caption generation and METEOR, so it went.
"""
from __future__ import annotations

from collections.abc import Hashable

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu

from lmm.eval.ngrams import check_inputs

__all__ = ["bleu"]


def bleu(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]], n: int = 4
         ) -> tuple[list[float], np.ndarray]:
    """(corpus [BLEU-1, ..., BLEU-n], per-image scores of shape ``(n, images)`` in ``gts`` order) of already
    tokenized captions, in pycocoevalcap's ``gts``/``res`` convention."""
    check_inputs(gts, res, "bleu")
    if not 1 <= n <= 4:
        raise ValueError(f"bleu needs 1 <= n <= 4, got n={n}")
    corpus, per_image = Bleu(n).compute_score(gts, res, verbose=0)
    return [float(v) for v in corpus], np.asarray(per_image, dtype=float)
