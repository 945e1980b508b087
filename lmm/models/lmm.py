"""The LMM: vision tower -> causal bridge -> LLaMA, joined at the ``<image>`` placeholder embeddings."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmm.config import ModelConfig
from lmm.models.bridge import CausalBridge
from lmm.models.llm import build_llm
from lmm.models.vision import VisionTower, build_vision_tower
from lmm.tokenizer import CaptionTokenizer


@dataclass
class GenerationSettings:
    num_beams: int = 1
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    length_penalty: float = 1.0


class LMM(nn.Module):
    def __init__(self, vision: VisionTower, bridge: CausalBridge, llm: nn.Module, tokenizer: CaptionTokenizer):
        super().__init__()
        self.vision, self.bridge, self.llm = vision, bridge, llm
        self.image_id, self.eos_id, self.pad_id = tokenizer.image_id, tokenizer.eos_id, tokenizer.pad_id

    def embed(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings with each row's ``<image>`` placeholders replaced by the bridge output."""
        embeds = self.llm.get_input_embeddings()(input_ids)
        visual = self.bridge(self.vision(pixels.to(embeds.dtype))).to(embeds.dtype)
        slots = input_ids == self.image_id
        if not torch.equal(slots.sum(dim=1), torch.full_like(slots[:, 0], visual.shape[1], dtype=torch.long)):
            raise ValueError(f"every sequence needs exactly {visual.shape[1]} <image> tokens")
        return embeds.masked_scatter(slots.unsqueeze(-1), visual)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over the positions whose label is not -100."""
        out = self.llm(inputs_embeds=self.embed(pixels, input_ids), attention_mask=attention_mask, labels=labels,
                       use_cache=False)
        return out.loss

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, prompt_ids: torch.Tensor, settings: GenerationSettings) -> list[list[int]]:
        """Greedy (num_beams=1) or beam search with the decoder's KV cache; returns new token ids per image."""
        embeds = self.embed(pixels, prompt_ids)
        out = self.llm.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(prompt_ids.shape, dtype=torch.long,
                                                            device=prompt_ids.device),
            num_beams=settings.num_beams, max_new_tokens=settings.max_new_tokens,
            min_new_tokens=settings.min_new_tokens, length_penalty=settings.length_penalty, do_sample=False,
            use_cache=True, eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        return [[t for t in row.tolist() if t != self.pad_id] for row in out]


def build_lmm(config: ModelConfig, tokenizer: CaptionTokenizer) -> LMM:
    """Materialise the three components and apply the freeze flags."""
    vision = build_vision_tower(config.vision)
    llm = build_llm(config.llm, tokenizer)
    bridge = CausalBridge(config.bridge, vision_width=vision.width, out_width=llm.config.hidden_size)
    for module, trainable in ((vision, config.vision.trainable), (bridge, config.bridge.trainable),
                              (llm, config.llm.trainable)):
        module.requires_grad_(trainable)
    return LMM(vision, bridge, llm, tokenizer)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts per top-level component, and their totals."""
    def numel(p: nn.Parameter) -> int:
        return getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 leaves an empty local tensor

    counts = {}
    for name, child in model.named_children():
        counts[f"{name}/trainable"] = sum(numel(p) for p in child.parameters() if p.requires_grad)
        counts[f"{name}/frozen"] = sum(numel(p) for p in child.parameters() if not p.requires_grad)
    for kind in ("trainable", "frozen"):
        counts[f"total/{kind}"] = sum(v for k, v in list(counts.items()) if k.endswith(f"/{kind}"))
    return counts
