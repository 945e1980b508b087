"""Model FLOPs of one training sample, for MFU (model FLOPs utilisation); see BENCHMARKS.md "MFU".

Forward: 2 FLOPs per multiply-accumulate of every matmul, per token through it (patch embedding, projections,
MLPs, the bridge's cross-attention keys/values over the visual tokens, the LM head), plus attention scores and
weighted sums, ``4 x queries x keys x width`` per layer (causal attention counted in full, as PaLM's MFU does).
Backward depends on what trains, in the order vision -> bridge -> decoder:

* trained component: 2 x its forward (weight gradients and activation gradients);
* frozen, with a trained component upstream (the paper's frozen LLaMA behind the trained bridge): activation
  gradients only, 1 x the forward matmuls + 2 x the forward attention;
* frozen with nothing trained upstream (the paper's frozen tower): no backward at all;
* pixels never need a gradient, so a trained tower's patch embedding has a weights-only backward (1 x).

Gradient-checkpointing recomputation is not counted (model FLOPs, not hardware FLOPs). Sizes come from
``lmm.planning.ModelShape``; the decoder is assumed to have as many key/value heads as heads (LLaMA-2-7B).
"""
from __future__ import annotations

from dataclasses import dataclass

from lmm.planning import ModelShape

COMPONENTS = ("vision", "bridge", "llm")  # upstream -> downstream


@dataclass
class ForwardFlops:
    matmul: float
    attention: float

    @property
    def total(self) -> float:
        return self.matmul + self.attention


def forward_flops(shape: ModelShape) -> dict[str, ForwardFlops]:
    """Forward FLOPs per sample of each component."""
    t, w, i = shape.vision_tokens, shape.vision_width, shape.vision_mlp
    vision = ForwardFlops(2 * (t - 1) * shape.patch_params + shape.vision_depth * t * 2 * (4 * w * w + 2 * w * i),
                          shape.vision_depth * 4 * t * t * w)
    q, bw, bi, h = shape.num_queries, shape.bridge_width, shape.bridge_mlp, shape.llm_hidden
    bridge = ForwardFlops(
        shape.bridge_depth * (q * 2 * (6 * bw * bw + 2 * bw * bi) + t * 2 * (2 * w * bw)) + q * 2 * bw * h,
        shape.bridge_depth * (4 * q * q * bw + 4 * q * t * bw))
    s, li = shape.seq_len, shape.llm_mlp
    llm = ForwardFlops(s * (shape.llm_layers * 2 * (4 * h * h + 3 * h * li) + 2 * h * shape.vocab_size),
                       shape.llm_layers * 4 * s * s * h)
    return {"vision": vision, "bridge": bridge, "llm": llm}


def pass_multipliers(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """Component -> (passes over its matmuls, passes over its attention): forward + backward, as documented."""
    passes, upstream_trains = {}, False
    for name in COMPONENTS:
        if shape.trainable[name]:
            passes[name] = (3, 3)
        elif upstream_trains:
            passes[name] = (2, 3)
        else:
            passes[name] = (1, 1)
        upstream_trains = upstream_trains or shape.trainable[name]
    return passes


def training_matmul_flops(shape: ModelShape) -> dict[str, float]:
    """Forward + backward FLOPs per sample of each component's matmuls (attention excluded)."""
    passes = pass_multipliers(shape)
    flops = {name: passes[name][0] * fwd.matmul for name, fwd in forward_flops(shape).items()}
    if shape.trainable["vision"]:  # pixels need no gradient: the patch embedding's backward is weights-only
        flops["vision"] -= 2 * (shape.vision_tokens - 1) * shape.patch_params
    return flops


def training_flops(shape: ModelShape) -> dict[str, float]:
    """Forward + backward FLOPs per sample of each component."""
    passes, matmul = pass_multipliers(shape), training_matmul_flops(shape)
    return {name: matmul[name] + passes[name][1] * fwd.attention for name, fwd in forward_flops(shape).items()}


def training_flops_per_sample(shape: ModelShape) -> float:
    return sum(training_flops(shape).values())


# Dense bf16 tensor-core peaks (vendor data sheets), FLOP/s.
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.5e12,
                   "H100": 989.4e12, "A100": 312e12}


def peak_flops_for(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU by its CUDA name, or None when unknown."""
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None
