"""pycocoevalcap's input checks as ValueErrors (every metric module), and for CIDEr-D the sentence layout and the
distinct n-grams of whitespace-split sentences with their counts, as flat numpy arrays."""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import chain
from typing import NamedTuple

import numpy as np

__all__ = ["NGrams", "check_inputs", "count_ngrams", "stack_sentences"]


def check_inputs(gts: dict, res: dict, metric: str) -> None:
    """pycocoevalcap's assertions on tokenized ``gts`` (id -> references) and ``res`` (id -> [hypothesis]),
    as ValueErrors."""
    if gts.keys() != res.keys():
        raise ValueError(f"gts and res must have the same image ids ({len(gts.keys() - res.keys())} missing "
                         f"from res, {len(res.keys() - gts.keys())} not in gts)")
    if not gts:
        raise ValueError(f"{metric} needs at least one image")
    for key in gts:
        if not isinstance(res[key], list) or len(res[key]) != 1:
            raise ValueError(f"res[{key!r}] must be a list holding exactly one hypothesis, got {res[key]!r}")
        if not isinstance(gts[key], list) or not gts[key]:
            raise ValueError(f"gts[{key!r}] must be a non-empty list of references, got {gts[key]!r}")


def stack_sentences(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]
                    ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sentences, image index of each sentence, references per image) in ``gts`` order: sentence
    ``i < len(gts)`` is image i's hypothesis, the references of all images follow."""
    image_ids = list(gts)
    num_images, num_refs = len(image_ids), np.array([len(gts[key]) for key in image_ids])
    sentences = [res[key][0] for key in image_ids] + [ref for key in image_ids for ref in gts[key]]
    image_of = np.concatenate([np.arange(num_images), np.repeat(np.arange(num_images), num_refs)])
    return sentences, image_of, num_refs


class NGrams(NamedTuple):
    """One entry per distinct (sentence, n-gram): sentence, global n-gram id, order - 1, count."""

    sent: np.ndarray
    gram: np.ndarray
    order: np.ndarray
    tf: np.ndarray
    num_ids: int
    lengths: np.ndarray  # words per sentence
    n: int

    @property
    def bigrams(self) -> np.ndarray:
        """Per sentence: pycocoevalcap CIDEr's "length" (number of bigrams)."""
        return np.maximum(self.lengths - 1, 0)


def count_ngrams(sentences: Sequence[str], n: int) -> NGrams:
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
    if not columns:
        empty = np.zeros(0, dtype=np.int64)
        return NGrams(empty, empty, empty, empty.astype(float), 1, lengths, n)
    sent, gram, order, tf = (np.concatenate(column) for column in zip(*columns))
    return NGrams(sent, gram, order, tf.astype(float), num_ids, lengths, n)
