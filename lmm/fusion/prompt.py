"""The CapsFusion prompt (the paper's exact text) and the post-processing of what a fuser writes back.

``PAPER_PROMPT`` is the prompt the paper gives ChatGPT and CapsFus-LLaMA, byte for byte (two spaces between its
sentences, one between the raw caption and ``Sentence 2:``); ``fusion_prompt`` puts a raw caption and a synthetic
caption in its two slots, each with its whitespace collapsed to single spaces (alt-text carries newlines and tabs).
Whatever trains a fuser on (raw, synthetic, fused) triplets must build its inputs with the same function.

``postprocess`` turns a generation (the new tokens only, decoded: the prompt is never echoed back) into a caption,
in this order: strip surrounding whitespace; drop one leading label the model may write (``Sentence 3:``,
``New sentence:``, ``Fused sentence:``, ...); keep the first paragraph (up to the first line break: a caption is one
line, and a model that goes on starts a note or the next "Sentence N:" there); drop an opening quote and its
closing one; collapse whitespace; cap at ``max_chars`` by cutting at the last word boundary that fits (then
trailing commas, colons, semicolons go; a single longer word is cut hard).
The result is ``None`` when nothing is left: the generation is unusable and the sample is counted, not written.
"""
from __future__ import annotations

import re

RAW_SLOT, SYNTHETIC_SLOT = "<raw caption>", "<synthetic caption>"
PAPER_PROMPT = (
    "Please merge and refine the information from the two given sentences.  "
    "Sentence 1 provides detailed real-world knowledge, yet it suffers from flaws in sentence structure and "
    "grammar.  "
    "Sentence 2 exhibits nice sentence structure, but lacking in-depth real-world details and may contain false "
    "information.  "
    "Please combine them into a new sentence, ensuring a well-structured sentence while retaining the detailed "
    "real-world information provided in Sentence 1.  "
    "Avoid simply concatenating the sentences.  "
    f"Sentence 1: {RAW_SLOT} Sentence 2: {SYNTHETIC_SLOT}"
)
_HEAD, _REST = PAPER_PROMPT.split(RAW_SLOT)
_MIDDLE, _TAIL = _REST.split(SYNTHETIC_SLOT)

_LABEL = re.compile(r"^(?:sentence\s*3|(?:new|fused|merged|combined|refined)\s+sentence)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space, and none at the ends."""
    return " ".join(text.split())


def fusion_prompt(raw: str, synthetic: str) -> str:
    """The paper's prompt with ``raw`` as Sentence 1 and ``synthetic`` as Sentence 2."""
    return f"{_HEAD}{one_line(raw)}{_MIDDLE}{one_line(synthetic)}{_TAIL}"


def postprocess(generated: str, max_chars: int) -> str | None:
    """The fused caption in ``generated`` (see the module docstring), or None when nothing usable is left."""
    text = _LABEL.sub("", generated.strip(), count=1)
    text = text.split("\n", 1)[0].strip()
    if text[:1] in _QUOTES:  # an opening quote, and its closing one
        text = text[1:-1] if len(text) > 1 and text[-1] in _QUOTES else text[1:]
    text = one_line(text)
    if len(text) > max_chars:
        head = text[:max_chars + 1]  # ends with a space when the first max_chars characters are whole words
        text = (head.rsplit(" ", 1)[0] if " " in head else head[:max_chars]).rstrip(" ,;:")
    return text or None
