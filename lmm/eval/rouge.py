"""ROUGE-L, numerically the same as pycocoevalcap's ``Rouge().compute_score``.

Captions are split on single spaces (so an empty caption is one empty token, as there). Per image: the longest
common subsequence with each reference gives precision ``lcs / len(hyp)`` and recall ``lcs / len(ref)``; the
maxima over references combine into ``(1 + beta^2) P R / (R + beta^2 P)`` with beta = 1.2 (0 if either is 0).
The corpus score is the mean over images. The LCS length uses the bit-parallel algorithm of Allison and Dix
(one big-integer operation per hypothesis token instead of a table).
"""
from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from lmm.eval.ngrams import check_inputs

__all__ = ["lcs_length", "rouge_l"]

BETA = 1.2


def rouge_l(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> tuple[float, np.ndarray]:
    """(corpus ROUGE-L, per-image scores in ``gts`` order) of already tokenized captions."""
    check_inputs(gts, res, "rouge_l")
    scores = np.array([_image_score(res[key][0].split(" "), [ref.split(" ") for ref in gts[key]]) for key in gts])
    return float(np.mean(scores)), scores


def _image_score(hyp: list[str], refs: list[list[str]]) -> float:
    lcs = [lcs_length(ref, hyp) for ref in refs]
    precision = max(common / len(hyp) for common in lcs)
    recall = max(common / len(ref) for common, ref in zip(lcs, refs))
    if precision == 0 or recall == 0:
        return 0.0
    return ((1 + BETA ** 2) * precision * recall) / float(recall + BETA ** 2 * precision)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    positions: dict[str, int] = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    remaining = full  # bit i clear once a[i] is matched on the current best chain
    for token in b:
        matched = remaining & positions.get(token, 0)
        remaining = ((remaining + matched) | (remaining - matched)) & full
    return len(a) - remaining.bit_count()
