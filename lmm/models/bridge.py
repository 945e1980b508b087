"""Emu-style causal-transformer bridge: learned queries read the visual tokens and become decoder embeddings.

Structure (Emu's "Causal Transformer", T5-base sized at full scale: 32 queries, width 768, 12 blocks, 12 heads):
LayerNorm on the visual features, then pre-norm blocks of
[causal self-attention over the queries -> cross-attention to the visual tokens -> GELU FFN], a final RMSNorm and
a Linear to the decoder width. Query ``i`` only sees queries ``<= i`` (causal), and every visual token.
All weights are randomly initialised (queries ~ N(0, 0.02)), unless ``model.bridge.pretrained`` names an export's
``bridge/model.safetensors`` (a fine-tuning run's ``model.init_from``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmm.config import BridgeConfig
from lmm.models.weights import check_tensor_shapes, state_shapes


class Attention(nn.Module):
    """Multi-head attention on scaled_dot_product_attention; keys/values may come from another width."""

    def __init__(self, width: int, heads: int, kv_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(kv_width or width, 2 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, w = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class BridgeBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, vision_width: int):
        super().__init__()
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads)
        self.norm_cross = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads, kv_width=vision_width)
        self.norm_mlp = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, queries: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        h = self.norm_self(queries)
        queries = queries + self.self_attn(h, h, causal=True)
        queries = queries + self.cross_attn(self.norm_cross(queries), visual, causal=False)
        return queries + self.mlp(self.norm_mlp(queries))


class CausalBridge(nn.Module):
    """``[batch, tokens, vision_width]`` visual features -> ``[batch, num_queries, out_width]`` embeddings."""

    def __init__(self, config: BridgeConfig, vision_width: int, out_width: int):
        super().__init__()
        self.num_queries = config.num_queries
        self.visual_norm = nn.LayerNorm(vision_width)
        self.queries = nn.Parameter(torch.empty(1, config.num_queries, config.width))
        self.blocks = nn.ModuleList(
            BridgeBlock(config.width, config.heads, config.mlp_ratio, vision_width) for _ in range(config.depth))
        self.final_norm = nn.RMSNorm(config.width)
        self.proj = nn.Linear(config.width, out_width)
        self.apply(_init_weights)
        nn.init.normal_(self.queries, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Learned queries are embeddings: no weight decay (timm's convention, read by the optimizer groups)."""
        return {"queries"}

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        visual = self.visual_norm(visual)
        x = self.queries.expand(visual.shape[0], -1, -1).to(visual.dtype)
        for block in self.blocks:
            x = block(x, visual)
        return self.proj(self.final_norm(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def load_bridge_weights(bridge: CausalBridge, path: str) -> None:
    """Fill ``bridge`` from a safetensors file of its state dict, every shape checked first."""
    from safetensors.torch import load_file

    state = load_file(path)
    check_tensor_shapes(state_shapes(bridge.state_dict()), state_shapes(state), f"model.bridge.pretrained {path}")
    bridge.load_state_dict(state, strict=True)
