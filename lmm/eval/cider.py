"""CIDEr-D, numerically the same as pycocoevalcap's ``Cider().compute_score``, vectorised with numpy.

Every caption is split on whitespace into n-grams (orders 1..4). Each n-gram gets the tf-idf weight
``tf * (log(N) - log(max(1, df)))``. N is the number of evaluated images, and df counts those images whose
references contain the n-gram. For each order, the score is the clipped cosine ``sum(min(h, r) * r) / (|h| |r|)``
of hypothesis and reference, times the Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``. delta is the
difference in bigram counts (pycocoevalcap's "length"). An image scores 10 x the mean over orders of the
summed reference scores divided by the number of references. The corpus score is the mean over images, and a
single-image evaluation scores 0.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import chain
from typing import NamedTuple

import numpy as np

from lmm.eval.ptb_tokenizer import tokenize_captions

__all__ = ["cider_d", "score_captions"]


def cider_d(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """(corpus CIDEr-D, per-image scores in ``gts`` order) of already tokenized captions.

    ``gts`` maps image id -> non-empty list of references, ``res`` the same ids -> ``[hypothesis]``.
    ``n`` is the highest n-gram order (1..4; pycocoevalcap itself only runs with 4), ``sigma`` the length
    penalty width.
    """
    _check_inputs(gts, res, n, sigma)
    image_ids = list(gts)
    num_images, num_refs = len(image_ids), np.array([len(gts[key]) for key in image_ids])
    # sentence i < num_images is image i's hypothesis, the references of all images follow
    sentences = [res[key][0] for key in image_ids] + [ref for key in image_ids for ref in gts[key]]
    image_of = np.concatenate([np.arange(num_images), np.repeat(np.arange(num_images), num_refs)])
    grams = _count_ngrams(sentences, n)
    value = _tfidf(grams, image_of, num_images)
    similarity = _similarity(grams, value, image_of, num_images, sigma)
    per_image = np.zeros((num_images, n))
    np.add.at(per_image, image_of[num_images:], similarity)
    scores = per_image.mean(axis=1) / num_refs * 10.0
    return float(scores.mean()), scores


def score_captions(references: dict[Hashable, list[str]], predictions: dict[Hashable, str],
                   tokenizer_backend: str = "auto") -> dict:
    """PTB-tokenize raw references and predictions (as pycocoevalcap's COCOEvalCap does) and score CIDEr-D."""
    if references.keys() != predictions.keys():
        raise ValueError(f"references and predictions must cover the same images "
                         f"({len(references.keys() - predictions.keys())} without a prediction, "
                         f"{len(predictions.keys() - references.keys())} without references)")
    for key, refs in references.items():
        if not refs:
            raise ValueError(f"image {key!r} has no reference captions")
        if not isinstance(predictions[key], str):
            raise TypeError(f"prediction for image {key!r} must be a string, got {type(predictions[key]).__name__}")
    gts = tokenize_captions(references, tokenizer_backend)
    res = tokenize_captions({key: [caption] for key, caption in predictions.items()}, tokenizer_backend)
    score, _ = cider_d(gts, res)
    return {"CIDEr": score, "num_images": len(gts)}


def _check_inputs(gts: dict, res: dict, n: int, sigma: float) -> None:
    """pycocoevalcap's assertions, as ValueErrors."""
    if gts.keys() != res.keys():
        raise ValueError(f"gts and res must have the same image ids ({len(gts.keys() - res.keys())} missing "
                         f"from res, {len(res.keys() - gts.keys())} not in gts)")
    if not gts:
        raise ValueError("cider_d needs at least one image")
    if not 1 <= n <= 4 or not sigma > 0:
        raise ValueError(f"cider_d needs 1 <= n <= 4 and sigma > 0, got n={n}, sigma={sigma}")
    for key in gts:
        if not isinstance(res[key], list) or len(res[key]) != 1:
            raise ValueError(f"res[{key!r}] must be a list holding exactly one hypothesis, got {res[key]!r}")
        if not isinstance(gts[key], list) or not gts[key]:
            raise ValueError(f"gts[{key!r}] must be a non-empty list of references, got {gts[key]!r}")


class _NGrams(NamedTuple):
    """One entry per distinct (sentence, n-gram): sentence, global n-gram id, order - 1, count."""

    sent: np.ndarray
    gram: np.ndarray
    order: np.ndarray
    tf: np.ndarray
    num_ids: int
    bigrams: np.ndarray  # per sentence: pycocoevalcap's "length"
    n: int


def _tfidf(grams: _NGrams, image_of: np.ndarray, num_images: int) -> np.ndarray:
    """tf * idf of every entry; df counts images with the n-gram in any of their references."""
    is_ref = grams.sent >= num_images
    if not is_ref.any():
        raise ValueError("cider_d: every reference caption is empty, document frequencies are undefined")
    image_grams = np.sort(image_of[grams.sent[is_ref]] * grams.num_ids + grams.gram[is_ref])
    image_grams = image_grams[np.append(True, image_grams[1:] != image_grams[:-1])]  # distinct (image, n-gram)
    df = np.bincount(image_grams % grams.num_ids, minlength=grams.num_ids)
    return grams.tf * (np.log(float(num_images)) - np.log(np.maximum(1.0, df)))[grams.gram]


def _similarity(grams: _NGrams, value: np.ndarray, image_of: np.ndarray, num_images: int,
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


def _count_ngrams(sentences: Sequence[str], n: int) -> _NGrams:
    """Distinct n-grams (orders 1..n) of each whitespace-split sentence, with counts."""
    vocab: dict[str, int] = {}
    words = [[vocab.setdefault(w, len(vocab)) for w in s.split()] for s in sentences]
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    flat = np.fromiter(chain.from_iterable(words), dtype=np.int64, count=int(lengths.sum()))
    sent_of = np.repeat(np.arange(len(sentences)), lengths)
    words_left = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(flat))  # from each position to its end
    gram_ids = flat.copy()  # id of the k-gram starting at each position, where one starts
    columns, num_ids = [], 0
    for k in range(1, n + 1):
        starts = np.flatnonzero(words_left >= k)
        if not len(starts):
            break
        if k == 1:
            count = len(vocab)
        else:  # a k-gram is its (k-1)-gram prefix followed by one more word
            unique, gram_ids[starts] = np.unique(gram_ids[starts] * len(vocab) + flat[starts + k - 1],
                                                 return_inverse=True)
            count = len(unique)
        keys, tf = np.unique(sent_of[starts] * count + gram_ids[starts], return_counts=True)
        columns.append((keys // count, keys % count + num_ids, np.full(len(keys), k - 1), tf))
        num_ids += count
    bigrams = np.maximum(lengths - 1, 0)
    if not columns:
        empty = np.zeros(0, dtype=np.int64)
        return _NGrams(empty, empty, empty, empty.astype(float), 1, bigrams, n)
    sent, gram, order, tf = (np.concatenate(column) for column in zip(*columns))
    return _NGrams(sent, gram, order, tf.astype(float), num_ids, bigrams, n)


def _clipped_overlap(keys: np.ndarray, is_ref: np.ndarray, value: np.ndarray) -> np.ndarray:
    """For each reference entry, ``min(h, r) * r`` with ``h`` its image's hypothesis value (0 if absent)."""
    order = np.argsort(keys[~is_ref])
    hyp_keys = np.append(keys[~is_ref][order], -1)  # sentinel for "past the end"
    hyp_values = np.append(value[~is_ref][order], 0.0)
    ref_keys, ref_values = keys[is_ref], value[is_ref]
    at = np.searchsorted(hyp_keys[:-1], ref_keys)
    hyp = np.where(hyp_keys[at] == ref_keys, hyp_values[at], 0.0)
    return np.minimum(hyp, ref_values) * ref_values
