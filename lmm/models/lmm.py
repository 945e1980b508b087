"""The LMM: vision tower -> causal bridge -> LLaMA, joined at the ``<image>`` placeholder embeddings."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_pipeline.tokenizer import CaptionTokenizer
from lmm.config import LoraConfig, ModelConfig
from lmm.models.adapters import adapter_parameters, apply_lora
from lmm.models.bridge import CausalBridge, load_bridge_weights
from lmm.models.llm import build_llm
from lmm.models.marker_rows import marker_row_parameters
from lmm.models.vision import VisionTower, build_vision_tower


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


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype weights are held in for a ``train.precision`` (``bf16`` or ``fp32``)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def build_lmm(config: ModelConfig, tokenizer: CaptionTokenizer, dtype: torch.dtype = torch.float32,
              zero3_config: dict | None = None) -> LMM:
    """Materialise the three components and apply the freeze flags.

    Pretrained weights are read straight into ``dtype`` (the run's precision: no fp32 copy of a frozen 7B decoder);
    under ZeRO-3 (``zero3_config``, the run's DeepSpeed config) pretrained components are partitioned over the
    ranks as they are built (``lmm.models.partitioned``). Frozen random components (``model.allow_random_frozen``)
    are cast to ``dtype``; randomly initialised trainable ones stay fp32 for DeepSpeed, which casts them and keeps
    fp32 master weights. The tower is built before the decoder, so its load peak passes before the decoder's bytes
    are held. ``model.llm.lora`` wraps the frozen decoder in peft's LoRA adapters (``lmm.models.adapters``); a
    pretrained bridge (``model.bridge.pretrained``) is read from its file.
    """
    hf_zero3 = None
    if zero3_config is not None:  # transformers' switch for its own ZeRO-3 paths (resizing a partitioned vocab)
        from transformers.integrations import HfDeepSpeedConfig
        hf_zero3 = HfDeepSpeedConfig(zero3_config)
    vision = build_vision_tower(config.vision, dtype=dtype, zero3_config=zero3_config)
    llm = build_llm(config.llm, tokenizer, dtype, zero3_config)
    del hf_zero3
    bridge = CausalBridge(config.bridge, vision_width=vision.width, out_width=llm.config.hidden_size)
    if config.bridge.pretrained is not None:
        load_bridge_weights(bridge, config.bridge.pretrained)
    for module, trainable in ((vision, config.vision.trainable), (bridge, config.bridge.trainable),
                              (llm, config.llm.trainable)):
        module.requires_grad_(trainable)
        if not trainable and any(p.dtype != dtype for p in module.parameters()):
            module.to(dtype)
    if config.llm.lora.rank:  # adapters on the frozen decoder (fp32, like every trainable weight here)
        llm = apply_lora(llm, config.llm.lora)
    for row in marker_row_parameters(llm):  # separate image-marker rows train with a frozen decoder
        row.requires_grad_(True)
    return LMM(vision, bridge, llm, tokenizer)


def full_numel(p: nn.Parameter) -> int:
    """Elements of the whole parameter (ZeRO-3 leaves an empty local tensor and keeps the count in ds_numel)."""
    return getattr(p, "ds_numel", None) or p.numel()


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts per top-level component, and their totals."""
    counts = {}
    for name, child in model.named_children():
        counts[f"{name}/trainable"] = sum(full_numel(p) for p in child.parameters() if p.requires_grad)
        counts[f"{name}/frozen"] = sum(full_numel(p) for p in child.parameters() if not p.requires_grad)
    for kind in ("trainable", "frozen"):
        counts[f"total/{kind}"] = sum(v for k, v in list(counts.items()) if k.endswith(f"/{kind}"))
    return counts


def describe_adapters(model: nn.Module, config: LoraConfig) -> str:
    """One line for the start-up log: the adapters' size, and the trainable share of the whole model."""
    adapter = sum(full_numel(p) for p in adapter_parameters(model))
    trainable = sum(full_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(full_numel(p) for p in model.parameters())
    return (f"LoRA r={config.rank} alpha={config.alpha:g} dropout={config.dropout:g} on "
            f"{','.join(config.target_modules)}: {adapter:,} adapter parameters ({adapter * 4 / 2**20:.2f} MiB in "
            f"fp32); trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")


def held_parameters(model: nn.Module) -> dict[str, int]:
    """Per component: parameter elements this rank holds right now (its partitions under ZeRO-3) and in all."""
    held = {}
    for name, child in model.named_children():
        params = list(child.parameters())
        held[name] = {"held": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
                      "total": sum(full_numel(p) for p in params)}
    return held
