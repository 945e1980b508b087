"""Zero-shot caption generation for a list of eval images, sliced over ranks and gathered on every rank.

Each rank takes every ``world_size``-th image, generates in batches (greedy or beam search with the decoder's KV
cache, ``LMM.generate``) and post-processes as Emu's protocol does; the captions of all ranks are gathered, so any
rank count works whatever the training run used. Rank 0 shows a progress bar.
"""
from __future__ import annotations

import re

import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from lmm.config import EvalConfig
from lmm.eval.benchmarks import EvalImage
from lmm.models.lmm import LMM, GenerationSettings
from lmm.models.vision import image_preprocess
from data_pipeline.sequence import SequenceLayout
from data_pipeline.tokenizer import CaptionTokenizer

POSTPROCESS = "first sentence, final period stripped, lowercase"


def postprocess_caption(text: str) -> str:
    """Emu's protocol: keep the first sentence, strip the final period, lowercase."""
    first = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return first.rstrip(".").strip().lower()


def generation_settings(eval_config: EvalConfig) -> GenerationSettings:
    return GenerationSettings(eval_config.num_beams, eval_config.max_new_tokens, eval_config.min_new_tokens,
                              eval_config.length_penalty)


def eval_device_and_dtype(eval_config: EvalConfig, local_rank: int = 0) -> tuple[torch.device, torch.dtype]:
    """This rank's GPU when there is one, else the CPU; ``precision=auto`` is bf16 on GPU and fp32 on CPU."""
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    precision = eval_config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return device, torch.bfloat16 if precision == "bf16" else torch.float32


@torch.no_grad()
def generate_captions(model: LMM, tokenizer: CaptionTokenizer, images: list[EvalImage], eval_config: EvalConfig,
                      rank: int = 0, world_size: int = 1, desc: str = "captions") -> dict:
    """image id -> post-processed caption for all ``images`` (each rank generates its slice)."""
    device = next(model.parameters()).device
    transform = image_preprocess(model.vision)
    layout = SequenceLayout(tokenizer, model.bridge.num_queries, max_caption_tokens=0)
    prompt = layout.prompt(eval_config.prompt)
    settings = generation_settings(eval_config)
    mine = images[rank::world_size]
    captions: dict = {}
    # a bar on rank 0 in a terminal; none in a log file (Slurm's --output), where the result line follows anyway
    with tqdm(total=len(mine), desc=desc, unit="img", disable=True if rank != 0 else None, dynamic_ncols=True) as bar:
        for start in range(0, len(mine), eval_config.batch_size):
            chunk = mine[start:start + eval_config.batch_size]
            pixels = torch.stack([_load_image(img, transform) for img in chunk]).to(device)
            prompt_ids = torch.tensor([prompt] * len(chunk), device=device)
            for img, ids in zip(chunk, model.generate(pixels, prompt_ids, settings)):
                captions[img.image_id] = postprocess_caption(tokenizer.decode(ids))
            bar.update(len(chunk))
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, captions)
        captions = {k: v for part in gathered for k, v in part.items()}
    return captions


def _load_image(image: EvalImage, transform) -> torch.Tensor:
    try:
        with Image.open(image.path) as img:
            return transform(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ValueError(f"eval image {image.image_id}: cannot read {image.path}: {err}") from err
