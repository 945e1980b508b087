"""Caption metrics as pycocoevalcap's ``COCOEvalCap`` computes them: PTB-tokenize references and predictions
once, then BLEU-1..4, METEOR (only when Java is present), ROUGE-L and CIDEr-D on the same tokens; the per-image
ROUGE-L and CIDEr-D scores, whose means those metrics are, on request (for bootstrap intervals)."""
from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from lmm.eval.bleu import bleu
from lmm.eval.cider import cider_d
from lmm.eval.meteor import java_available, meteor
from lmm.eval.ptb_tokenizer import resolve_backend, tokenize_captions
from lmm.eval.rouge import rouge_l

__all__ = ["score_captions", "score_with_per_image"]


def score_captions(references: dict[Hashable, list[str]], predictions: dict[Hashable, str],
                   tokenizer: str = "auto", with_meteor: bool = True) -> dict:
    """Metrics of raw ``predictions`` (image id -> caption) against raw ``references`` (image id -> captions).

    Returns ``Bleu_1``..``Bleu_4``, ``ROUGE_L``, ``CIDEr``, ``METEOR`` when ``with_meteor`` and Java is present,
    plus ``num_images``; scores as pycocoevalcap reports them (CIDEr x1, papers show x100).
    """
    return score_with_per_image(references, predictions, tokenizer, with_meteor)[0]


def score_with_per_image(references: dict[Hashable, list[str]], predictions: dict[Hashable, str],
                         tokenizer: str = "auto", with_meteor: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """``score_captions``'s metrics, and ``ROUGE_L`` and ``CIDEr`` per image (arrays in ``references`` order)."""
    if references.keys() != predictions.keys():
        raise ValueError(f"references and predictions must cover the same images "
                         f"({len(references.keys() - predictions.keys())} without a prediction, "
                         f"{len(predictions.keys() - references.keys())} without references)")
    for key, refs in references.items():
        if not refs:
            raise ValueError(f"image {key!r} has no reference captions")
        if not isinstance(predictions[key], str):
            raise TypeError(f"prediction for image {key!r} must be a string, got {type(predictions[key]).__name__}")
    backend = resolve_backend(tokenizer)
    gts = tokenize_captions(references, backend)
    res = tokenize_captions({key: [caption] for key, caption in predictions.items()}, backend)
    metrics = {f"Bleu_{k}": value for k, value in enumerate(bleu(gts, res)[0], start=1)}
    if with_meteor and java_available():
        metrics["METEOR"] = meteor(gts, res)[0]
    per_image = {}
    metrics["ROUGE_L"], per_image["ROUGE_L"] = rouge_l(gts, res)
    metrics["CIDEr"], per_image["CIDEr"] = cider_d(gts, res)
    return {**metrics, "num_images": len(gts)}, per_image
