"""Captioning benchmarks in their standard files: which images, with all their reference captions.

| key | result name | file | format |
| --- | --- | --- | --- |
| ``coco`` | ``coco_karpathy_test`` | ``dataset_coco.json`` (Karpathy split, 5,000 test images) | Karpathy |
| ``nocaps`` | ``nocaps_val`` | ``nocaps_val_4500_captions.json`` (4,500 images, ~10 refs) | COCO captions |
| ``flickr30k`` | ``flickr30k_karpathy_test`` | ``dataset_flickr30k.json`` (Karpathy split, 1,000 test) | Karpathy |

Karpathy format: ``images[]`` with ``filename``, optional ``filepath`` (``val2014``), ``split``, ``cocoid`` (COCO)
or ``imgid`` (Flickr30K) and ``sentences[].raw``; the image is ``image_root/filepath/filename``.
COCO captions format: ``images[]`` (``id``, ``file_name``, NoCaps adds ``domain``) and ``annotations[]``
(``image_id``, ``caption``); the image is ``image_root/file_name``.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["BENCHMARKS", "Benchmark", "EvalImage", "load_benchmark", "load_coco_captions", "load_karpathy",
           "missing_images"]


@dataclass(frozen=True)
class EvalImage:
    image_id: int | str
    path: Path
    references: list[str]
    domain: Optional[str] = None  # NoCaps: in-domain / near-domain / out-domain


@dataclass(frozen=True)
class Benchmark:
    name: str  # stored in results and used in tensorboard tags
    format: str  # "karpathy" or "coco"
    split: Optional[str]  # Karpathy split to take
    standard_file: str


BENCHMARKS = {
    "coco": Benchmark("coco_karpathy_test", "karpathy", "test", "dataset_coco.json"),
    "nocaps": Benchmark("nocaps_val", "coco", None, "nocaps_val_4500_captions.json"),
    "flickr30k": Benchmark("flickr30k_karpathy_test", "karpathy", "test", "dataset_flickr30k.json"),
}


def load_benchmark(benchmark: Benchmark, annotations: str | Path, image_root: str | Path,
                   max_images: Optional[int] = None) -> list[EvalImage]:
    """The benchmark's images (the first ``max_images`` if given), in file order."""
    if benchmark.format == "karpathy":
        images = load_karpathy(annotations, image_root, benchmark.split or "test")
    elif benchmark.format == "coco":
        images = load_coco_captions(annotations, image_root)
    else:
        raise ValueError(f"benchmark {benchmark.name}: unknown format {benchmark.format!r}")
    return images[:max_images] if max_images else images


def load_karpathy(dataset_json: str | Path, image_root: str | Path, split: str = "test") -> list[EvalImage]:
    """Images of one split of a Karpathy-format file (``dataset_coco.json``, ``dataset_flickr30k.json``)."""
    data = _read_json(dataset_json, "images")
    images = []
    for entry in data["images"]:
        if entry.get("split") != split:
            continue
        image_id = entry.get("cocoid", entry.get("imgid"))
        if image_id is None or "filename" not in entry:
            raise ValueError(f"{dataset_json}: an image entry has no cocoid/imgid or filename: {_brief(entry)}")
        refs = [s["raw"] for s in entry.get("sentences", [])]
        if not refs:
            raise ValueError(f"{dataset_json}: image {image_id} has no reference sentences")
        images.append(EvalImage(image_id, Path(image_root) / entry.get("filepath", "") / entry["filename"], refs))
    if not images:
        raise ValueError(f"{dataset_json}: no images in split '{split}'")
    return images


def load_coco_captions(annotations_json: str | Path, image_root: str | Path) -> list[EvalImage]:
    """Images of a COCO-captions-format file (``nocaps_val_4500_captions.json``) with all their captions."""
    data = _read_json(annotations_json, "images", "annotations")
    refs: dict[int, list[str]] = defaultdict(list)
    for annotation in data["annotations"]:
        refs[annotation["image_id"]].append(annotation["caption"])
    images = []
    for entry in data["images"]:
        if not refs.get(entry["id"]):
            raise ValueError(f"{annotations_json}: image {entry['id']} has no annotations")
        images.append(EvalImage(entry["id"], Path(image_root) / entry["file_name"], refs[entry["id"]],
                                entry.get("domain")))
    unknown = refs.keys() - {entry["id"] for entry in data["images"]}
    if unknown:
        raise ValueError(f"{annotations_json}: annotations for {len(unknown)} unlisted image ids, e.g. {min(unknown)}")
    if not images:
        raise ValueError(f"{annotations_json}: no images")
    return images


def missing_images(images: list[EvalImage]) -> list[Path]:
    return [img.path for img in images if not img.path.is_file()]


def _read_json(path: str | Path, *keys: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark annotations: no such file {path}")
    data = json.loads(path.read_text())
    absent = [key for key in keys if not isinstance(data, dict) or key not in data]
    if absent:
        raise ValueError(f"{path}: not the expected format, missing top-level key(s) {absent}")
    return data


def _brief(entry: dict) -> str:
    return json.dumps({k: v for k, v in entry.items() if k != "sentences"})[:200]
