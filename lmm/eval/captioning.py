"""Zero-shot captioning eval of a saved checkpoint: load, generate captions for a split, score CIDEr-D.

Checkpoints are consolidated with DeepSpeed's own ``zero_to_fp32`` utilities, so any ZeRO stage and any
training world size load into one process; generation is sliced across however many ranks eval runs with.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image

from lmm.config import EvalConfig, ExperimentConfig, config_from_dict
from lmm.eval.cider import score_captions
from lmm.models.lmm import LMM, GenerationSettings, build_lmm
from lmm.models.vision import image_preprocess
from lmm.sequence import SequenceLayout
from lmm.tokenizer import CaptionTokenizer
from lmm.training.checkpoint import RUN_CONFIG_FILE, CheckpointMeta, read_meta


@dataclass
class EvalImage:
    image_id: int
    path: Path
    references: list[str]


def load_karpathy(dataset_json: str | Path, image_root: str | Path, split: str = "test",
                  max_images: int | None = None) -> list[EvalImage]:
    """Images of one split of a Karpathy-format file (``dataset_coco.json``), with all their references."""
    dataset_json = Path(dataset_json)
    if not dataset_json.is_file():
        raise FileNotFoundError(f"eval.dataset_json: no such file {dataset_json}")
    images = []
    for entry in json.loads(dataset_json.read_text())["images"]:
        if entry.get("split") != split:
            continue
        refs = [s["raw"] for s in entry["sentences"]]
        image_id = entry.get("cocoid", entry.get("imgid"))
        images.append(EvalImage(image_id, Path(image_root) / entry.get("filepath", "") / entry["filename"], refs))
    if not images:
        raise ValueError(f"{dataset_json}: no images in split '{split}'")
    return images[:max_images] if max_images else images


def postprocess_caption(text: str) -> str:
    """Emu's protocol: keep the first sentence, strip the final period, lowercase."""
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return first.rstrip(".").strip().lower()


def load_checkpoint_model(checkpoint: str | Path) -> tuple[LMM, ExperimentConfig, CheckpointMeta]:
    """Rebuild the run's model from its saved config and load consolidated fp32 weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint)
    config = config_from_dict(json.loads((checkpoint.parent.parent / RUN_CONFIG_FILE).read_text()))
    model = build_lmm(config.model, CaptionTokenizer(config.model.tokenizer.path))
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)
    model.load_state_dict(state, strict=True)
    return model.eval(), config, meta


def generate_captions(model: LMM, layout: SequenceLayout, images: list[EvalImage], eval_config: EvalConfig,
                      rank: int = 0, world_size: int = 1) -> dict[int, str]:
    """Captions for this rank's slice of ``images`` (every ``world_size``-th), gathered on all ranks."""
    transform = image_preprocess(model.vision)
    settings = GenerationSettings(eval_config.num_beams, eval_config.max_new_tokens, eval_config.min_new_tokens,
                                  eval_config.length_penalty)
    prompt = layout.prompt(eval_config.prompt)
    mine = images[rank::world_size]
    captions: dict[int, str] = {}
    for start in range(0, len(mine), eval_config.batch_size):
        chunk = mine[start:start + eval_config.batch_size]
        pixels = torch.stack([transform(Image.open(img.path).convert("RGB")) for img in chunk])
        prompt_ids = torch.tensor([prompt] * len(chunk))
        for img, ids in zip(chunk, model.generate(pixels, prompt_ids, settings)):
            captions[img.image_id] = postprocess_caption(layout.tokenizer.decode(ids))
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, captions)
        captions = {k: v for part in gathered for k, v in part.items()}
    return captions


def evaluate_checkpoint(checkpoint: str | Path, eval_config: EvalConfig | None = None, rank: int = 0,
                        world_size: int = 1) -> dict:
    """One result record: checkpoint identity, protocol, metrics and a few example captions."""
    model, config, meta = load_checkpoint_model(checkpoint)
    eval_config = eval_config or config.eval
    images = load_karpathy(eval_config.dataset_json, eval_config.image_root, eval_config.split,
                           eval_config.max_images)
    layout = SequenceLayout(CaptionTokenizer(config.model.tokenizer.path), config.model.bridge.num_queries,
                            config.data.max_caption_tokens)
    captions = generate_captions(model, layout, images, eval_config, rank, world_size)
    metrics = score_captions({img.image_id: img.references for img in images}, captions)
    examples = [{"image_id": img.image_id, "caption": captions[img.image_id], "reference": img.references[0]}
                for img in images[:3]]
    return {**asdict(meta), "benchmark": eval_config.benchmark, "checkpoint": str(Path(checkpoint).resolve()),
            "metrics": metrics, "protocol": asdict(eval_config), "examples": examples}
