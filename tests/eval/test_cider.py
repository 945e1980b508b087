"""CIDEr-D against pycocoevalcap's Cider on hand-written and random caption sets."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
from pycocoevalcap.cider.cider import Cider

from lmm.eval.cider import cider_d
from lmm.eval.ptb_tokenizer import tokenize_captions
from lmm.eval.scoring import score_captions


def assert_matches_pycocoevalcap(gts, res, sigma=6.0):
    expected, expected_per_image = Cider(sigma=sigma).compute_score(gts, res)
    score, per_image = cider_d(gts, res, sigma=sigma)
    assert isinstance(score, float) and per_image.shape == (len(gts),)
    assert score == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(per_image, expected_per_image, rtol=0, atol=1e-6)
    return per_image


HAND_WRITTEN = {
    "perfect_match": ({1: ["a man riding a horse on the beach", "a person on a horse"],
                       2: ["two dogs playing with a red ball", "dogs play in the grass"],
                       3: ["a plate of food on a table"]},
                      {1: ["a man riding a horse on the beach"], 2: ["two dogs playing with a red ball"],
                       3: ["a plate of food on a table"]}),
    "no_overlap": ({1: ["a cat on a sofa"], 2: ["a train at the station"], 3: ["kids flying a kite"]},
                   {1: ["green mountains under snow"], 2: ["purple umbrella"], 3: ["zebra zebra zebra"]}),
    "partial": ({1: ["a man riding a wave on a surfboard", "a surfer rides a large wave"],
                 2: ["a bowl of fruit on a wooden table", "apples and bananas in a bowl"],
                 3: ["a bus driving down a city street"], 4: ["a clock tower in a town square"]},
                {1: ["a man riding a surfboard"], 2: ["a bowl of apples"], 3: ["a red bus on the street"],
                 4: ["a tower with a large clock on it"]}),
    "ref_counts_vary": ({i: [f"a photo of thing {j} number {i}" for j in range(i)] for i in range(1, 8)},
                        {i: [f"a photo of thing {i}"] for i in range(1, 8)}),
    "repeated_ngrams": ({1: ["dog dog dog dog", "a dog and a dog"], 2: ["the the the cat", "a cat"],
                         3: ["one two one two one two"]},
                        {1: ["dog dog dog dog dog dog dog"], 2: ["the the cat the the cat"], 3: ["one two one two"]}),
    "length_penalty": ({1: ["a small brown dog runs across the green field"], 2: ["a woman holding an umbrella"],
                        3: ["people walking down a busy sidewalk in the rain"], 4: ["a cat"], 5: ["cat"],
                        6: ["the quick brown fox jumps over the lazy dog"]},
                       {1: ["dog"], 2: ["a woman holding an umbrella " * 6], 3: [""], 4: ["a cat"], 5: ["a cat"],
                        6: ["the quick brown fox"]}),
}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_cases_match_pycocoevalcap(name):
    gts, res = HAND_WRITTEN[name]
    per_image = assert_matches_pycocoevalcap(gts, res)
    if name == "no_overlap":
        assert (per_image == 0).all()
    if name == "perfect_match":
        assert (per_image > 0).all()


@pytest.mark.parametrize("sigma", [1.0, 3.0, 12.0])
def test_sigma_matches_pycocoevalcap(sigma):
    assert_matches_pycocoevalcap(*HAND_WRITTEN["length_penalty"], sigma=sigma)


def random_captions(seed: int, num_images: int = 400):
    """Zipf-ish vocabulary, 1-7 references of 0-25 words, hypotheses copied, shuffled, truncated or fresh."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)]
    weights = [1 / (i + 1) for i in range(300)]

    def sentence(low=0, high=25):
        return " ".join(rng.choices(vocab, weights, k=rng.randint(low, high)))

    gts, res = {}, {}
    for image in range(num_images):
        refs = [sentence(0 if rng.random() < 0.05 else 3) for _ in range(rng.randint(1, 7))]
        words = rng.choice(refs).split()
        kind = rng.random()
        if kind < 0.2:
            hyp = " ".join(words)
        elif kind < 0.4:
            hyp = " ".join(rng.sample(words, len(words)))
        elif kind < 0.55:
            hyp = " ".join(words[: rng.randint(0, len(words))])
        else:
            hyp = sentence()
        gts[f"img{image}"], res[f"img{image}"] = refs, [hyp]
    return gts, res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_corpus_matches_pycocoevalcap(seed):
    gts, res = random_captions(seed)
    per_image = assert_matches_pycocoevalcap(gts, res)
    assert per_image.max() > 1.0 and (per_image == 0).any()


def test_one_image_scores_zero():
    gts, res = {7: ["a dog on a couch", "a brown dog"]}, {7: ["a dog on a couch"]}
    score, per_image = cider_d(gts, res)
    assert score == 0.0 and per_image.tolist() == [0.0]
    assert_matches_pycocoevalcap(gts, res)


def test_exact_copies_with_disjoint_vocabularies_score_ten():
    """Every n-gram has df = 1 < N, so each order's cosine is exactly 1, with no length penalty."""
    gts = {1: ["alpha beta gamma delta"], 2: ["one two three four five"]}
    res = {1: ["alpha beta gamma delta"], 2: ["one two three four five"]}
    score, per_image = cider_d(gts, res)
    np.testing.assert_allclose(per_image, [10.0, 10.0])
    assert score == pytest.approx(10.0)


def test_lower_orders():
    gts = {1: ["a b c d"], 2: ["e f"]}
    res = {1: ["a b x y"], 2: ["e f"]}
    unigram, per_image = cider_d(gts, res, n=1)
    assert per_image[1] == pytest.approx(10.0) and per_image[0] == pytest.approx(5.0)  # cosine 2/4
    assert cider_d(gts, res, n=2)[0] < unigram


@pytest.mark.parametrize("gts,res,message", [
    ({1: ["a"], 2: ["b"]}, {1: ["a"]}, "same image ids"),
    ({1: ["a"]}, {1: ["a"], 2: ["b"]}, "same image ids"),
    ({1: ["a"]}, {1: ["a", "b"]}, "exactly one hypothesis"),
    ({1: ["a"]}, {1: []}, "exactly one hypothesis"),
    ({1: ["a"]}, {1: "a"}, "exactly one hypothesis"),
    ({1: []}, {1: ["a"]}, "non-empty list of references"),
    ({1: "a"}, {1: ["a"]}, "non-empty list of references"),
    ({}, {}, "at least one image"),
    ({1: ["", ""], 2: [""]}, {1: ["a"], 2: ["b"]}, "every reference caption is empty"),
])
def test_invalid_inputs_raise_value_error(gts, res, message):
    with pytest.raises(ValueError, match=message):
        cider_d(gts, res)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 5}, {"sigma": 0.0}])
def test_invalid_parameters_raise_value_error(kwargs):
    with pytest.raises(ValueError, match="1 <= n <= 4 and sigma > 0"):
        cider_d({1: ["a"]}, {1: ["a"]}, **kwargs)


RAW_REFERENCES = {
    101: ["A man riding a wave on top of a surfboard.", "A surfer rides a big wave!"],
    102: ["Two dogs play with a frisbee in the park.", "Dogs playing in a park, one with a frisbee."],
    103: ["A plate of food (pasta & salad) on a table.", "Pasta and salad on a wooden table."],
}
RAW_PREDICTIONS = {101: "a man riding a wave on a surfboard", 102: "two dogs playing in the park",
                   103: "a plate of pasta on a table"}


def test_score_captions_tokenizes_then_scores():
    result = score_captions(RAW_REFERENCES, RAW_PREDICTIONS, tokenizer="python", with_meteor=False)
    gts = tokenize_captions(RAW_REFERENCES, "python")
    res = tokenize_captions({k: [v] for k, v in RAW_PREDICTIONS.items()}, "python")
    assert result["CIDEr"] == cider_d(gts, res)[0] and result["num_images"] == 3
    assert gts[101][1] == "a surfer rides a big wave" and result["CIDEr"] > 0


@pytest.mark.skipif(shutil.which("java") is None, reason="no `java` on PATH: cannot run pycocoevalcap's tokenizer")
def test_score_captions_matches_pycocoevalcap_pipeline():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in RAW_REFERENCES.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": v}] for k, v in RAW_PREDICTIONS.items()})
    expected, _ = Cider().compute_score(gts, res)
    assert score_captions(RAW_REFERENCES, RAW_PREDICTIONS)["CIDEr"] == pytest.approx(expected, abs=1e-6)


def test_score_captions_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same images"):
        score_captions(RAW_REFERENCES, {101: "a man"})
    with pytest.raises(ValueError, match="no reference captions"):
        score_captions({1: [], 2: ["x"]}, {1: "a", 2: "b"})
    with pytest.raises(TypeError, match="must be a string"):
        score_captions({1: ["a"]}, {1: ["a"]})
