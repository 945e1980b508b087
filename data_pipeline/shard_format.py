"""The sample schema of a training shard, and why a sample may be unusable.

A shard is a tar of samples; a sample is the group of consecutive members sharing a ``__key__`` (the member name
up to its first dot, so keys hold no dots):

* ``<key>.jpg`` | ``.jpeg`` | ``.png`` | ``.webp`` -- one encoded image;
* ``<key>.json`` -- caption fields (``raw``, ``synthetic``, ``capsfusion``, any other such as ``laclip``; a field
  may hold a list of captions, e.g. COCO's five) plus metadata (``url``, ``width``, ``height``, ...);
* ``<key>.txt`` -- optional; img2dataset writes its caption column there: it counts as ``raw`` when the json has
  no ``raw`` field, so img2dataset output is readable as-is.

Fields may also come from keyed sidecar files next to the manifest (``data_pipeline.sidecar``): the shard reader
puts what they give a sample under ``__fields__``, and they win over the json's.

Images are turned into RGB by ``rgb_image``, which rescales high-bit-depth images (16-bit PNGs) instead of letting
``convert("RGB")`` clip them to white.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SIDECAR_FIELDS = "__fields__"  # a read sample's fields joined from sidecars (not a tar member)
CAPTION_FIELDS = ("raw", "synthetic", "capsfusion")
TAR_MTIME = 1_700_000_000  # fixed member mtime: identical samples give byte-identical shards (and sha256)

# Why a sample was skipped; logged as data/skipped/<reason>.
SKIP_REASONS = (
    "tar_error",         # corrupt / truncated / unreadable tar (or fewer samples than the manifest): rest of shard
    "bad_json",          # json member is not a JSON object
    "caption_not_utf8",  # caption bytes are not UTF-8
    "missing_caption",   # the chosen caption field is absent (or not text)
    "empty_caption",     # the chosen caption is empty or whitespace
    "caption_too_long",  # longer than data.max_caption_chars
    "missing_image",     # no image member
    "bad_image",         # image bytes do not decode
)

_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext: key up to the first dot


class BadSample(Exception):
    """A sample that must be skipped; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def split_name(name: str) -> tuple[str, str] | None:
    """``dir/000123.jpg`` -> (``dir/000123``, ``jpg``); None for names without an extension."""
    match = _NAME.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


def sample_fields(sample: dict) -> dict:
    """The caption fields and metadata of a raw sample (member bytes by extension); raises BadSample."""
    fields = {}
    if "json" in sample:
        try:
            fields = json.loads(sample["json"].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadSample("caption_not_utf8") from None
        except ValueError:
            raise BadSample("bad_json") from None
        if not isinstance(fields, dict):
            raise BadSample("bad_json")
    if "txt" in sample and "raw" not in fields:
        try:
            fields["raw"] = sample["txt"].decode("utf-8")
        except UnicodeDecodeError:
            raise BadSample("caption_not_utf8") from None
    fields.update(sample.get(SIDECAR_FIELDS, {}))
    return fields


def image_member(sample: dict) -> tuple[str, bytes]:
    """(extension, bytes) of the sample's image; raises BadSample('missing_image')."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return ext, sample[ext]
    raise BadSample("missing_image")


def is_high_bit_depth(image) -> bool:
    """Whether a PIL image's mode holds more than 8 bits per value (``I;16*``, 32-bit ``I``, float ``F``)."""
    return image.mode in ("I", "F") or image.mode.startswith("I;16")


def rgb_image(image):
    """A PIL image in RGB mode (an RGB image is returned as-is). ``convert("RGB")`` clips high-bit-depth values to
    white, so those images are rescaled to 8 bits first (``_eight_bit``); other modes (L, P, RGBA, CMYK, ...) take
    the usual ``convert``. 16-bit colour PNGs need nothing: PIL opens them as 8-bit RGB(A) already."""
    if image.mode == "RGB":
        return image
    return (_eight_bit(image) if is_high_bit_depth(image) else image).convert("RGB")


def _eight_bit(image):
    """A high-bit-depth PIL image as 8-bit greyscale (mode L), scaled by its nominal full scale: 65535 for
    ``I;16*`` (so 32896 -> 128); for ``I`` and ``F`` the first of 1.0 (floats only), 255, 65535, 2**31 - 1 that
    holds the maximum (else the maximum). Images with negative values are stretched from minimum to maximum."""
    import numpy as np
    from PIL import Image

    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = float(values.min(initial=0)), float(values.max(initial=0))
    if low < 0:
        values, high = values - low, high - low
        full = high or 1.0
    elif image.mode.startswith("I;16"):
        full = 65535
    else:
        scales = ((1.0,) if image.mode == "F" else ()) + (255, 65535, 2**31 - 1)
        full = next((s for s in scales if high <= s), high)
    return Image.fromarray(np.clip(np.rint(values * (255 / full)), 0, 255).astype(np.uint8))


def encode_sample(key: str, image_ext: str, image: bytes, fields: dict) -> dict:
    """A sample dict for ``webdataset.TarWriter(encoder=False)`` in this schema."""
    if "." in key or not key:
        raise ValueError(f"sample key {key!r} must be non-empty and hold no dots")
    return {"__key__": key, image_ext: image, "json": json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()}


def write_shard(path: str | Path, samples: Iterable[dict]) -> dict:
    """Write samples (``encode_sample`` dicts) to the tar shard ``path``, atomically: a temporary sibling renamed
    over it, so a reader never sees half a shard. Returns its manifest entry (``shard_entry``)."""
    import webdataset as wds  # lazy: it imports torch (seconds), which reading a shard's schema does not need

    path = Path(path)
    tmp, written = path.with_name(path.name + ".tmp"), 0
    with wds.TarWriter(str(tmp), encoder=False, mtime=TAR_MTIME) as sink:
        for sample in samples:
            sink.write(sample)
            written += 1
    os.replace(tmp, path)
    return shard_entry(path, written)


def shard_entry(path: Path, num_samples: int) -> dict:
    """A shard's manifest entry: file name, sample count, size and sha256."""
    data = Path(path).read_bytes()
    return {"path": Path(path).name, "num_samples": num_samples, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}
