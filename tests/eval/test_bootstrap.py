"""Bootstrap intervals over eval images: contain the mean, reproducible, narrower with more images, fast, and
stored in the result record next to the metrics; the paired interval of a difference between two models."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmm.config import EvalConfig
from lmm.eval import evaluation
from lmm.eval.benchmarks import Benchmark, EvalImage
from lmm.eval.bootstrap import NUM_RESAMPLES, SEED, bootstrap_interval, paired_difference_interval, uncertainty_fields
from lmm.eval.scoring import score_captions, score_with_per_image

REFERENCES = {1: ["a dog runs on the grass", "a brown dog running"], 2: ["a red bus on a street", "a bus"],
              3: ["two cats sleep on a sofa", "cats on a couch"], 4: ["a man rides a wave", "a surfer on a wave"]}
PREDICTIONS = {1: "a dog running on grass", 2: "a bus on the street", 3: "a cat on a sofa", 4: "a man on a boat"}


def test_interval_contains_the_mean_is_reproducible_and_narrows_with_more_images():
    scores = np.random.default_rng(0).gamma(2.0, 0.5, 4000)
    low, high = bootstrap_interval(scores)
    assert low < scores.mean() < high
    assert bootstrap_interval(scores) == (low, high)  # fixed seed
    few = bootstrap_interval(scores[:200])
    assert few[1] - few[0] > 3 * (high - low)  # width ~ 1/sqrt(n): sqrt(4000 / 200) = 4.5
    assert bootstrap_interval([0.7]) == (0.7, 0.7)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_paired_interval_of_a_constant_shift_is_that_shift():
    before = np.random.default_rng(2).integers(0, 40, 300) / 8  # dyadic: after - before is exactly 0.375
    assert paired_difference_interval(before, before + 0.375) == (0.375, 0.375)
    assert paired_difference_interval(before, before) == (0.0, 0.0)


def test_paired_interval_resamples_the_same_images_for_both():
    rng = np.random.default_rng(3)
    before = rng.gamma(2.0, 0.5, 500)
    after = before + 0.05 + rng.normal(0, 0.1, 500)  # a small change, image difficulty shared
    index = np.random.default_rng(SEED).integers(0, 500, size=(NUM_RESAMPLES, 500), dtype=np.int32)
    by_hand = np.percentile(after[index].mean(axis=1) - before[index].mean(axis=1), [2.5, 97.5])
    low, high = paired_difference_interval(before, after)
    assert (low, high) == pytest.approx(tuple(by_hand), abs=1e-12)
    assert 0 < low < after.mean() - before.mean() < high  # beyond the noise: the interval excludes 0
    unpaired = [bootstrap_interval(s) for s in (before, after)]
    assert all(high - low < (h - lo) / 3 for lo, h in unpaired)  # pairing removes the images' own spread
    with pytest.raises(ValueError, match="same images"):
        paired_difference_interval(before, after[:-1])


def test_bootstrap_of_5000_images_is_fast():
    scores = np.random.default_rng(1).random(5000)
    bootstrap_interval(scores)  # warm-up
    start = time.perf_counter()
    bootstrap_interval(scores)
    assert time.perf_counter() - start < 1.0


def test_per_image_scores_average_to_the_metrics():
    metrics, per_image = score_with_per_image(REFERENCES, PREDICTIONS, tokenizer="python", with_meteor=False)
    assert metrics == score_captions(REFERENCES, PREDICTIONS, tokenizer="python", with_meteor=False)
    for name in ("CIDEr", "ROUGE_L"):
        assert len(per_image[name]) == 4 and per_image[name].mean() == pytest.approx(metrics[name], abs=1e-12)
    fields = uncertainty_fields(per_image)
    assert set(fields["intervals"]) == {"CIDEr", "ROUGE_L"}  # BLEU is corpus-level: no interval
    for name, (low, high) in fields["intervals"].items():
        assert low <= metrics[name] <= high
    assert fields["per_image"] == {"CIDEr": [round(float(s), 4) for s in per_image["CIDEr"]]}


@dataclass
class Meta:
    run_name: str = "r"
    step: int = 3


def test_the_record_gets_intervals_and_per_image_scores(monkeypatch, tmp_path):
    images = [EvalImage(key, tmp_path / f"{key}.jpg", refs) for key, refs in REFERENCES.items()]
    monkeypatch.setattr(evaluation, "load_images", lambda target, max_images: images)
    monkeypatch.setattr(evaluation, "generate_captions", lambda *args, **kwargs: PREDICTIONS)
    loaded = SimpleNamespace(model=torch.nn.Linear(1, 1), tokenizer=None, meta=Meta(), path=Path(tmp_path))
    target = evaluation.BenchmarkTarget(Benchmark("toy", "karpathy", "test", "toy.json"), "toy.json", "")
    record = evaluation.evaluate_benchmark(loaded, EvalConfig(tokenizer="python", meteor=False), target)
    assert set(record["intervals"]) == {"CIDEr", "ROUGE_L"}
    low, high = record["intervals"]["CIDEr"]
    assert low <= record["metrics"]["CIDEr"] <= high
    assert len(record["per_image"]["CIDEr"]) == 4
    assert np.mean(record["per_image"]["CIDEr"]) == pytest.approx(record["metrics"]["CIDEr"], abs=1e-4)
