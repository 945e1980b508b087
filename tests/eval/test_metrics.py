"""BLEU, ROUGE-L, METEOR (pycocoevalcap's own scorers behind our API) and the whole scoring pipeline against
pycocoevalcap, on several hundred varied captions."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from lmm.eval.bleu import bleu
from lmm.eval.rouge import rouge_l
from lmm.eval.scoring import score_captions
from test_cider import HAND_WRITTEN, random_captions
from test_ptb_tokenizer import pycocoevalcap_tokenize, varied_corpus

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no `java` on PATH: METEOR and pycocoevalcap's "
                                                                     "PTBTokenizer need it")
CASES = sorted(HAND_WRITTEN) + ["random0", "random1", "random2"]


def case(name):
    return HAND_WRITTEN[name] if name in HAND_WRITTEN else random_captions(int(name[-1]))


@pytest.mark.parametrize("name", CASES)
def test_bleu_matches_pycocoevalcap(name):
    gts, res = case(name)
    expected, expected_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    corpus, per_image = bleu(gts, res)
    np.testing.assert_allclose(corpus, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(per_image, expected_per_image, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_rouge_l_matches_pycocoevalcap(name):
    gts, res = case(name)
    expected, expected_per_image = Rouge().compute_score(gts, res)
    corpus, per_image = rouge_l(gts, res)
    assert corpus == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(per_image, expected_per_image, rtol=0, atol=1e-6)


def test_bleu_known_values():
    corpus, _ = bleu({1: ["a b c d"]}, {1: ["a b c d"]})
    np.testing.assert_allclose(corpus, [1.0] * 4, atol=1e-8)
    corpus, _ = bleu({1: ["a b c d e f g h"]}, {1: ["a b c d"]})  # all precisions 1, brevity penalty e^(1 - 8/4)
    np.testing.assert_allclose(corpus, [np.exp(-1)] * 4, atol=1e-8)
    with pytest.raises(ValueError, match="same image ids"):
        bleu({1: ["a"]}, {2: ["a"]})


def noisy_hypotheses(corpus: dict[int, list[str]], seed: int = 3) -> dict[int, str]:
    """Raw hypotheses: a reference copied, cut, shuffled, taken from another image, or empty."""
    rng, keys = random.Random(seed), sorted(corpus)
    hyps = {}
    for key in keys:
        words = rng.choice(corpus[key]).split(" ")
        kind = rng.random()
        if kind < 0.25:
            hyps[key] = " ".join(words)
        elif kind < 0.5:
            hyps[key] = " ".join(words[: rng.randint(1, len(words))])
        elif kind < 0.7:
            hyps[key] = " ".join(rng.sample(words, len(words)))
        elif kind < 0.95:
            hyps[key] = rng.choice(corpus[rng.choice(keys)])
        else:
            hyps[key] = ""
    return hyps


@pytest.fixture(scope="module")
def pycocoevalcap_meteor():
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()  # one JVM for the module: loading METEOR's paraphrase tables takes ~10 s


@needs_java
def test_whole_pipeline_matches_pycocoevalcap_on_raw_captions(pycocoevalcap_meteor):
    """COCOEvalCap's steps (PTBTokenizer, then every scorer on the same tokens) against ``score_captions``."""
    references = varied_corpus(seed=7, num_images=200)
    predictions = noisy_hypotheses(references)
    assert sum(len(refs) for refs in references.values()) > 500
    gts = pycocoevalcap_tokenize(references)
    res = pycocoevalcap_tokenize({key: [caption] for key, caption in predictions.items()})
    expected = dict(zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], Bleu(4).compute_score(gts, res, verbose=0)[0]))
    expected["METEOR"] = pycocoevalcap_meteor.compute_score(gts, res)[0]
    expected["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    for tokenizer in ("java", "python"):
        got = score_captions(references, predictions, tokenizer=tokenizer)
        assert got["num_images"] == 200
        for metric, value in expected.items():
            assert got[metric] == pytest.approx(value, abs=1e-6), (tokenizer, metric)
    assert 0 < expected["CIDEr"] and 0 < expected["METEOR"] < 1


@needs_java
def test_meteor_per_image_matches_pycocoevalcap(pycocoevalcap_meteor):
    from lmm.eval.meteor import meteor

    gts, res = random_captions(4, num_images=300)
    gts = {k: [r if r else "x" for r in refs] for k, refs in gts.items()}
    res = {k: [h if h else "x"] for k, (h,) in res.items()}
    expected, expected_per_image = pycocoevalcap_meteor.compute_score(gts, res)
    corpus, per_image = meteor(gts, res)  # the JVM the pipeline test started answers again
    assert corpus == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(per_image, expected_per_image, rtol=0, atol=1e-6)


def test_meteor_reports_a_dead_jvm_instead_of_blocking():
    from lmm.eval.meteor import MeteorScorer, java_available

    if not java_available():
        with pytest.raises(RuntimeError, match="java"):
            MeteorScorer()
        return
    scorer = MeteorScorer()
    scorer._proc.kill()
    for _ in range(2):  # pycocoevalcap's own Meteor would block on its lock the second time
        with pytest.raises(RuntimeError, match="METEOR jar exited"):
            scorer.score({1: ["a dog"]}, {1: ["a dog"]})
    scorer.close()


def test_without_meteor_every_other_metric_is_reported():
    got = score_captions({1: ["a dog on a sofa."], 2: ["A red bus."]}, {1: "a dog on a sofa", 2: "a bus"},
                         tokenizer="python", with_meteor=False)
    assert set(got) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr", "num_images"}
