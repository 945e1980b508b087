"""95% percentile bootstrap intervals of caption metrics, resampling eval images.

Each of ``NUM_RESAMPLES`` resamples draws the benchmark's images with replacement and takes the mean of their
per-image scores; the interval is the 2.5th and 97.5th percentile of those means. Per-image scores are computed
once on the full set and only averaged per resample: CIDEr-D keeps the document frequencies (IDF) of the full
set, so its interval reflects which images were drawn, not how the IDF would move with them. BLEU is a
corpus-level ratio without per-image scores: no interval. The seed is fixed, so a rerun gives the same interval.

Two models captioned on the same images are compared by a paired interval of the difference of their means: each
resample draws one set of image indices and applies it to both per-image arrays, so it measures the change, not the
two models' noise added up.
"""
from __future__ import annotations

import numpy as np

NUM_RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
INTERVAL_METRICS = ("CIDEr", "ROUGE_L")  # metrics that are the mean of per-image scores
PER_IMAGE_METRICS = ("CIDEr",)  # stored per image in the record, for paired comparisons of checkpoints
PER_IMAGE_DECIMALS = 4


def bootstrap_interval(scores, num_resamples: int = NUM_RESAMPLES, level: float = LEVEL,
                       seed: int = SEED) -> tuple[float, float]:
    """(low, high) percentile bootstrap interval of the mean of per-image ``scores``."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or not len(scores):
        raise ValueError(f"bootstrap_interval needs a non-empty 1-d array of scores, got shape {scores.shape}")
    index = np.random.default_rng(seed).integers(0, len(scores), size=(num_resamples, len(scores)), dtype=np.int32)
    low, high = np.percentile(scores[index].mean(axis=1), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def paired_difference_interval(before, after, num_resamples: int = NUM_RESAMPLES, level: float = LEVEL,
                               seed: int = SEED) -> tuple[float, float]:
    """(low, high) paired percentile bootstrap interval of ``mean(after) - mean(before)`` over per-image scores
    of the same images: the same resampled indices for both, i.e. ``bootstrap_interval`` of the differences."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before.shape != after.shape:
        raise ValueError(f"paired_difference_interval needs scores of the same images, got shapes {before.shape} "
                         f"and {after.shape}")
    return bootstrap_interval(after - before, num_resamples, level, seed)


def uncertainty_fields(per_image: dict[str, np.ndarray]) -> dict:
    """The record's ``intervals`` (metric -> [low, high], x1 like ``metrics``) and ``per_image`` (metric ->
    scores in image order, rounded) fields from per-image scores (metric -> array)."""
    return {"intervals": {m: list(bootstrap_interval(per_image[m])) for m in INTERVAL_METRICS if m in per_image},
            "per_image": {m: np.round(per_image[m], PER_IMAGE_DECIMALS).tolist()
                          for m in PER_IMAGE_METRICS if m in per_image}}
