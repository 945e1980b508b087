"""CIDEr-D, numerically the same as pycocoevalcap's ``Cider().compute_score``, vectorised with numpy.

Every caption is split on whitespace into n-grams (orders 1..4). Each n-gram gets the tf-idf weight
``tf * (log(N) - log(max(1, df)))``. N is the number of evaluated images, and df counts those images whose
references contain the n-gram. For each order, the score is the clipped cosine ``sum(min(h, r) * r) / (|h| |r|)``
of hypothesis and reference, times the Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``. delta is the
difference in bigram counts (pycocoevalcap's "length"). An image scores 10 x the mean over orders of the
summed reference scores divided by the number of references. The corpus score is the mean over images, and a
single-image evaluation scores 0.

Why a port and not pycocoevalcap's ``Cider``: 5,000 images x 5 references score in 0.9-1.0 s here against
19-22 s there, x19-24, with per-image scores equal to 4.4e-16 (pycocoevalcap returns per-image scores too, so
that is not the reason); CIDEr alone is most of pycocoevalcap's scoring time, paid per benchmark and checkpoint.
Measured by ``PYTHONPATH=. .venv/bin/python benchmarks/library_review.py --only metrics`` (BENCHMARKS.md,
"Library review"). BLEU and ROUGE-L, x3-7 faster as ports but only 2-3 s per 5,000 images, call pycocoevalcap.
"""
from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from lmm.eval.ngrams import NGrams, check_inputs, count_ngrams, stack_sentences

__all__ = ["cider_d"]


def cider_d(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """(corpus CIDEr-D, per-image scores in ``gts`` order) of already tokenized captions.

    ``gts`` maps image id -> non-empty list of references, ``res`` the same ids -> ``[hypothesis]``.
    ``n`` is the highest n-gram order (1..4; pycocoevalcap itself only runs with 4), ``sigma`` the length
    penalty width.
    """
    check_inputs(gts, res, "cider_d")
    if not 1 <= n <= 4 or not sigma > 0:
        raise ValueError(f"cider_d needs 1 <= n <= 4 and sigma > 0, got n={n}, sigma={sigma}")
    sentences, image_of, num_refs = stack_sentences(gts, res)
    num_images = len(gts)
    grams = count_ngrams(sentences, n)
    value = _tfidf(grams, image_of, num_images)
    similarity = _similarity(grams, value, image_of, num_images, sigma)
    per_image = np.zeros((num_images, n))
    np.add.at(per_image, image_of[num_images:], similarity)
    scores = per_image.mean(axis=1) / num_refs * 10.0
    return float(scores.mean()), scores


def _tfidf(grams: NGrams, image_of: np.ndarray, num_images: int) -> np.ndarray:
    """tf * idf of every entry; df counts images with the n-gram in any of their references."""
    is_ref = grams.sent >= num_images
    if not is_ref.any():
        raise ValueError("cider_d: every reference caption is empty, document frequencies are undefined")
    image_grams = np.sort(image_of[grams.sent[is_ref]] * grams.num_ids + grams.gram[is_ref])
    image_grams = image_grams[np.append(True, image_grams[1:] != image_grams[:-1])]  # distinct (image, n-gram)
    df = np.bincount(image_grams % grams.num_ids, minlength=grams.num_ids)
    return grams.tf * (np.log(float(num_images)) - np.log(np.maximum(1.0, df)))[grams.gram]


def _similarity(grams: NGrams, value: np.ndarray, image_of: np.ndarray, num_images: int,
                sigma: float) -> np.ndarray:
    """Per reference and order: clipped cosine with its image's hypothesis times the length penalty."""
    n, num_sentences = grams.n, len(image_of)
    norm = np.sqrt(np.bincount(grams.sent * n + grams.order, weights=value ** 2, minlength=num_sentences * n))
    norm = norm.reshape(num_sentences, n)
    is_ref = grams.sent >= num_images
    overlap = _clipped_overlap(image_of[grams.sent] * grams.num_ids + grams.gram, is_ref, value)
    numerator = np.bincount(grams.sent[is_ref] * n + grams.order[is_ref], weights=overlap,
                            minlength=num_sentences * n).reshape(num_sentences, n)[num_images:]
    hyp_of_ref = image_of[num_images:]
    denominator = norm[hyp_of_ref] * norm[num_images:]
    similarity = np.divide(numerator, denominator, out=numerator.copy(), where=denominator != 0)
    delta = (grams.bigrams[hyp_of_ref] - grams.bigrams[num_images:]).astype(float)
    return similarity * np.exp(-(delta ** 2) / (2 * sigma ** 2))[:, None]


def _clipped_overlap(keys: np.ndarray, is_ref: np.ndarray, value: np.ndarray) -> np.ndarray:
    """For each reference entry, ``min(h, r) * r`` with ``h`` its image's hypothesis value (0 if absent)."""
    order = np.argsort(keys[~is_ref])
    hyp_keys = np.append(keys[~is_ref][order], -1)  # sentinel for "past the end"
    hyp_values = np.append(value[~is_ref][order], 0.0)
    ref_keys, ref_values = keys[is_ref], value[is_ref]
    at = np.searchsorted(hyp_keys[:-1], ref_keys)
    hyp = np.where(hyp_keys[at] == ref_keys, hyp_values[at], 0.0)
    return np.minimum(hyp, ref_values) * ref_values
