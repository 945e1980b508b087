"""BLEU-1..4, numerically the same as pycocoevalcap's ``Bleu(4).compute_score`` (its ``option='closest'``).

n-grams are counted on whitespace tokens. A hypothesis n-gram is "correct" up to the largest count it has in any
one reference of its image, and the number of guesses of order k is ``max(0, len - k + 1)``. The reference
length is the "closest" one (the shortest among those nearest to the hypothesis length). Corpus BLEU-k is the
geometric mean of the first k corpus precisions ``(correct + 1e-15) / (guess + 1e-9)`` times the brevity penalty
``exp(1 - ref/test)`` when the summed hypothesis length is below the summed reference length; per-image scores
use the same formula on each image's own counts.
"""
from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from lmm.eval.ngrams import check_inputs, count_ngrams, stack_sentences

__all__ = ["bleu"]

_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's smoothing constants


def bleu(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]], n: int = 4
         ) -> tuple[list[float], np.ndarray]:
    """(corpus [BLEU-1, ..., BLEU-n], per-image scores of shape ``(n, images)`` in ``gts`` order) of already
    tokenized captions, in pycocoevalcap's ``gts``/``res`` convention."""
    check_inputs(gts, res, "bleu")
    if not 1 <= n <= 4:
        raise ValueError(f"bleu needs 1 <= n <= 4, got n={n}")
    sentences, image_of, _ = stack_sentences(gts, res)
    num_images = len(gts)
    grams = count_ngrams(sentences, n)
    correct = _clipped_matches(grams, image_of, num_images)
    test_len = grams.lengths[:num_images]
    guess = np.maximum(test_len[:, None] - np.arange(n)[None, :], 0)
    ref_len = _closest_ref_lengths(grams.lengths[num_images:], image_of[num_images:], test_len)
    per_image = _geometric_means(correct.astype(float), guess.astype(float), test_len, ref_len)
    corpus = _geometric_means(correct.sum(axis=0, keepdims=True).astype(float),
                              guess.sum(axis=0, keepdims=True).astype(float),
                              test_len.sum(keepdims=True), ref_len.sum(keepdims=True))
    return corpus[:, 0].tolist(), per_image


def _clipped_matches(grams, image_of: np.ndarray, num_images: int) -> np.ndarray:
    """``[image, order]``: sum over hypothesis n-grams of min(count, max count in one reference)."""
    n, key = grams.n, image_of[grams.sent] * grams.num_ids + grams.gram
    is_ref = grams.sent >= num_images
    ref_keys, inverse = np.unique(key[is_ref], return_inverse=True)
    ref_max = np.zeros(len(ref_keys))
    np.maximum.at(ref_max, inverse, grams.tf[is_ref])
    hyp_keys = key[~is_ref]
    at = np.searchsorted(ref_keys, hyp_keys)  # len(ref_keys) points at the "absent" sentinel
    ref_keys, ref_max = np.append(ref_keys, -1), np.append(ref_max, 0.0)
    clipped = np.minimum(grams.tf[~is_ref], np.where(ref_keys[at] == hyp_keys, ref_max[at], 0.0))
    cells = grams.sent[~is_ref] * n + grams.order[~is_ref]
    return np.bincount(cells, weights=clipped, minlength=num_images * n).reshape(num_images, n)


def _closest_ref_lengths(ref_len: np.ndarray, image_of_ref: np.ndarray, test_len: np.ndarray) -> np.ndarray:
    """Per image ``min((abs(l - test), l) for l in reference lengths)[1]``."""
    scale = int(ref_len.max(initial=0)) + 1
    rank = np.abs(ref_len - test_len[image_of_ref]) * scale + ref_len  # lexicographic (distance, length)
    best = np.full(len(test_len), np.iinfo(np.int64).max)
    np.minimum.at(best, image_of_ref, rank)
    return best % scale


def _geometric_means(correct: np.ndarray, guess: np.ndarray, test_len: np.ndarray,
                     ref_len: np.ndarray) -> np.ndarray:
    """``[order, row]`` BLEU-k of rows of counts, with pycocoevalcap's smoothing and brevity penalty."""
    n = correct.shape[1]
    scores, product = np.empty((n, len(correct))), np.ones(len(correct))
    for k in range(n):
        product = product * ((correct[:, k] + _TINY) / (guess[:, k] + _SMALL))
        scores[k] = product ** (1.0 / (k + 1))
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    short = ratio < 1
    scores[:, short] *= np.exp(1 - 1 / ratio[short])
    return scores
