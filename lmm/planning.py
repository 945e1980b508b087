"""Plan a full-size run before submitting it: parameters, per-GPU memory per ZeRO stage, micro-batch x accumulation.

The model is built on the meta device (structure and shapes, no storage, no weights read), so EVA01-g + LLaMA-2-7B
is planned in about a second on a laptop. Memory per GPU = model states + activations + headroom:

* **model states** (per parameter, bytes; N = data-parallel GPUs; bf16 mixed precision with Adam keeps a bf16
  param and grad, and an fp32 master copy, fp32 grad and two fp32 moments = 16 bytes on the optimizer side):
  trainable parameters use DeepSpeed's own estimators for ZeRO-2 (``2 + 18/N``) and ZeRO-3
  (``18/N`` + 4 x the largest layer, gathered whole); ZeRO-0 is ``20`` and ZeRO-1 ``4 + 16/N`` (DeepSpeed has no
  estimator for these). Frozen parameters hold only their bf16 weights: ``2`` bytes, ``2/N`` under ZeRO-3.
  fp32 training: 4-byte params and grads, 8 bytes of Adam moments, no master copy.
* **activations** kept for backward, per sample (coefficients in bytes of bf16 activations, measured with
  ``torch.autograd.graph.saved_tensors_hooks`` on the real modules and checked in ``tests/lmm/test_planning.py``):
  LLaMA layer, per token: ``24h + 8i + 2s`` when trained, ``16h + 6i + 2s`` when frozen (a frozen Linear keeps
  no input: only activation gradients flow back to the bridge); with gradient checkpointing ``2h`` per layer
  plus one layer recomputed at a time. LM head, final norm and input embeddings per token: ``4V + 8h``
  (trained) or ``4V + 4h`` (frozen) kept, ``8V`` transient (fp32 logits for the loss and their gradient).
  EVA block per token when trained: ``16w + 4i`` (``2w`` with checkpointing), plus the pixels (``6 x H x W``)
  and embedded tokens (``4w`` per token); a frozen tower upstream of everything keeps nothing. Bridge block per
  sample when anything before the decoder trains: ``Q (24w + 4i) + 4 w T``.
* **headroom**: CUDA context, NCCL and DeepSpeed buckets, allocator fragmentation (``--headroom-gb``).

The chosen micro-batch is the largest divisor of ``global / N`` that fits; accumulation makes the global batch
exact. No fitting micro-batch (or a global batch the GPUs cannot divide) is an impossible plan.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from lmm.config import ExperimentConfig

GIB = 1024 ** 3
STAGES = (0, 1, 2, 3)


class PlanError(ValueError):
    """The run cannot be laid out on the requested GPUs."""


@dataclass
class ModelShape:
    """Everything the estimates need, read from the meta-device model and the config."""
    params: dict[str, int]  # component -> parameter count
    trainable: dict[str, bool]  # component -> trained?
    largest_layer: int  # most parameters held directly by one module (ZeRO-3 gathers it whole)
    vision_width: int
    vision_depth: int
    vision_mlp: int
    vision_tokens: int
    image_pixels: int  # height x width of the tower's input
    patch_params: int  # patch-embedding weights (a matmul per patch)
    bridge_width: int
    bridge_depth: int
    bridge_mlp: int
    num_queries: int
    llm_hidden: int
    llm_layers: int
    llm_mlp: int
    vocab_size: int
    seq_len: int  # longest training sequence: <s> [IMG] <image>xQ [/IMG] caption </s>

    @property
    def trainable_params(self) -> int:
        return sum(n for name, n in self.params.items() if self.trainable[name])

    @property
    def frozen_params(self) -> int:
        return sum(n for name, n in self.params.items() if not self.trainable[name])


def planned_vocab_size(config: ExperimentConfig) -> int:
    """The decoder vocabulary a run will have: the tokenizer's pieces plus the three image markers."""
    from data_pipeline.tokenizer import IMAGE_MARKERS, CaptionTokenizer
    from lmm.models.llm import pretrained_tokenizer_file

    m = config.model
    if m.tokenizer.path is not None:
        return CaptionTokenizer(m.tokenizer.path).vocab_size
    if m.llm.pretrained is not None:
        return CaptionTokenizer(pretrained_tokenizer_file(m.llm)).vocab_size
    return m.tokenizer.vocab_size + len(IMAGE_MARKERS)


def build_meta_model(config: ExperimentConfig, vocab_size: int | None = None) -> nn.ModuleDict:
    """Vision tower, bridge and decoder with the run's exact shapes on the meta device (no memory, no weights)."""
    from transformers import LlamaForCausalLM

    from lmm.models.bridge import CausalBridge
    from lmm.models.llm import llama_config
    from lmm.models.vision import build_vision_tower

    m = config.model
    vocab_size = vocab_size or planned_vocab_size(config)
    vision = build_vision_tower(dataclasses.replace(m.vision, pretrained=None), device="meta")
    llm_config = llama_config(m.llm, vocab_size)
    llm_config.vocab_size = vocab_size  # a pretrained decoder is resized to the tokenizer's vocabulary
    with torch.device("meta"):
        llm = LlamaForCausalLM(llm_config)
        bridge = CausalBridge(m.bridge, vision_width=vision.width, out_width=llm_config.hidden_size)
    return nn.ModuleDict({"vision": vision, "bridge": bridge, "llm": llm})


def model_shape(config: ExperimentConfig, model: nn.ModuleDict | None = None) -> ModelShape:
    model = model if model is not None else build_meta_model(config)
    m = config.model
    trunk, llm = model["vision"].visual.trunk, model["llm"].config
    return ModelShape(
        params={name: sum(p.numel() for p in part.parameters()) for name, part in model.items()},
        trainable={"vision": m.vision.trainable, "bridge": m.bridge.trainable, "llm": m.llm.trainable},
        largest_layer=max(sum(p.numel() for p in mod.parameters(recurse=False)) for mod in model.modules()),
        vision_width=trunk.embed_dim, vision_depth=len(trunk.blocks),
        vision_mlp=trunk.blocks[0].mlp.fc1.out_features, vision_tokens=model["vision"].num_tokens,
        image_pixels=model["vision"].image_size[0] * model["vision"].image_size[1],
        patch_params=trunk.patch_embed.proj.weight.numel(),
        bridge_width=m.bridge.width, bridge_depth=m.bridge.depth, bridge_mlp=int(m.bridge.width * m.bridge.mlp_ratio),
        num_queries=m.bridge.num_queries, llm_hidden=llm.hidden_size, llm_layers=llm.num_hidden_layers,
        llm_mlp=llm.intermediate_size, vocab_size=llm.vocab_size,
        seq_len=3 + m.bridge.num_queries + config.data.max_caption_tokens + 1)


def model_state_bytes(shape: ModelShape, stage: int, nodes: int, gpus_per_node: int, precision: str) -> int:
    """Per-GPU bytes of parameters, gradients and optimizer states (see the module docstring)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n, trained, frozen = nodes * gpus_per_node, shape.trainable_params, shape.frozen_params
    if precision == "bf16" and stage == 2:
        states = estimate_zero2_model_states_mem_needs(trained, gpus_per_node, nodes, cpu_offload=False)[1]
    elif precision == "bf16" and stage == 3:
        states = estimate_zero3_model_states_mem_needs(trained, shape.largest_layer, gpus_per_node, nodes,
                                                       cpu_offload=False, cpu_offload_params=False)[1]
    else:
        p = 2 if precision == "bf16" else 4  # bytes of a param (and of a grad)
        optimizer = 16 if precision == "bf16" else 8  # fp32 master + fp32 grad + Adam m, v | Adam m, v
        states = {0: (2 * p + optimizer) * trained, 1: 2 * p * trained + optimizer * trained / n,
                  2: p * trained + (p + optimizer) * trained / n,
                  3: (2 * p + optimizer) * trained / n + 2 * p * shape.largest_layer}[stage]
    weight = 2 if precision == "bf16" else 4
    return int(states + (weight * frozen / n if stage == 3 else weight * frozen))


def checkpoint_bytes(trainable: int, frozen: int, precision: str, stage: int, lean: bool) -> int:
    """Bytes of one DeepSpeed checkpoint, all ranks' files together (tensor data; pickling adds a few KB).

    Trainable parameters: the fp32 master copy and two fp32 Adam moments (12 bytes) in the optimizer files, plus the
    module's own copy in the model file below ZeRO-3 (2 bytes bf16, 4 fp32; ZeRO-3 stores no module copy). Frozen
    parameters: once, in the training precision -- or not at all in a lean checkpoint (``exclude_frozen_parameters``).
    Checked against a real lean ZeRO-3 checkpoint in ``tests/lmm/test_zero3_freeze_and_export.py``.
    """
    param_bytes = 2 if precision == "bf16" else 4
    per_trainable = 12 + (param_bytes if stage < 3 else 0)
    return trainable * per_trainable + (0 if lean else frozen * param_bytes)


@dataclass
class Activations:
    """Bytes per sample kept for backward, and bytes per sample alive only transiently (one layer / the logits)."""
    kept: int
    transient: int


def activation_bytes(shape: ModelShape, precision: str, llm_checkpointing: bool,
                     vision_checkpointing: bool) -> Activations:
    """Per-sample activation memory of one training micro-step (formulas in the module docstring)."""
    s, h, i, v = shape.seq_len, shape.llm_hidden, shape.llm_mlp, shape.vocab_size
    tr = shape.trainable
    llm_layer = s * ((24 * h + 8 * i + 2 * s) if tr["llm"] else (16 * h + 6 * i + 2 * s))
    kept = s * (4 * v + (8 * h if tr["llm"] else 4 * h))  # head, final norm, the spliced input embeddings
    transient = 8 * s * v
    if llm_checkpointing:
        kept += shape.llm_layers * 2 * s * h
        transient += llm_layer
    else:
        kept += shape.llm_layers * llm_layer
    if tr["vision"] or tr["bridge"]:
        w, q, t = shape.bridge_width, shape.num_queries, shape.vision_tokens
        kept += shape.bridge_depth * (q * (24 * w + 4 * shape.bridge_mlp) + 4 * w * t)
    if tr["vision"]:
        kept += 2 * 3 * shape.image_pixels + 4 * shape.vision_tokens * shape.vision_width  # pixels, embedded tokens
        vis_layer = shape.vision_tokens * (16 * shape.vision_width + 4 * shape.vision_mlp)
        if vision_checkpointing:
            kept += shape.vision_depth * 2 * shape.vision_tokens * shape.vision_width
            transient += vis_layer
        else:
            kept += shape.vision_depth * vis_layer
    scale = 1 if precision == "bf16" else 2  # coefficients are for 2-byte activations
    return Activations(kept * scale, transient * scale)


@dataclass
class StageEstimate:
    stage: int
    model_states_gb: float
    activations_gb_per_sample: float  # with the config's checkpointing setting
    activations_gb_per_sample_ckpt: float  # with gradient checkpointing on the decoder and the tower
    max_micro_batch: int  # 0: does not fit (config's checkpointing)
    max_micro_batch_ckpt: int


@dataclass
class Plan:
    config_name: str
    nodes: int
    gpus_per_node: int
    gpu_mem_gb: float
    headroom_gb: float
    params: dict[str, int]
    trainable_params: int
    frozen_params: int
    stages: list[StageEstimate]
    zero_stage: int
    grad_checkpointing: bool
    micro_batch: int
    accumulation: int
    global_batch: int
    per_gpu_gb: float
    checkpoint_gb: float  # one checkpoint as the run writes it (lean when every frozen part comes from a file)
    checkpoint_gb_with_frozen: float  # the same checkpoint holding the frozen weights too
    notes: list[str] = field(default_factory=list)

    @property
    def overrides(self) -> list[str]:
        return [f"train.micro_batch_size={self.micro_batch}"]


def per_gpu_bytes(states: int, act: Activations, micro_batch: int, headroom_gb: float) -> float:
    return states + micro_batch * (act.kept + act.transient) + headroom_gb * GIB


def largest_fitting_micro_batch(states: int, act: Activations, per_gpu_batch: int, gpu_mem_gb: float,
                                headroom_gb: float) -> int:
    """Largest divisor of ``per_gpu_batch`` whose memory fits ``gpu_mem_gb``; 0 when even 1 does not."""
    fits = [mb for mb in range(1, per_gpu_batch + 1) if per_gpu_batch % mb == 0
            and per_gpu_bytes(states, act, mb, headroom_gb) <= gpu_mem_gb * GIB]
    return max(fits, default=0)


def make_plan(config: ExperimentConfig, nodes: int, gpus_per_node: int, gpu_mem_gb: float,
              headroom_gb: float = 4.0, config_name: str = "", shape: ModelShape | None = None) -> Plan:
    """Estimate every ZeRO stage and choose micro-batch x accumulation for the config's stage; PlanError if none."""
    if nodes < 1 or gpus_per_node < 1 or gpu_mem_gb <= 0:
        raise PlanError("need at least one node, one GPU per node and positive GPU memory")
    shape = shape or model_shape(config)
    t, m = config.train, config.model
    world, global_batch = nodes * gpus_per_node, t.global_batch_size
    if global_batch % world:
        raise PlanError(f"global batch {global_batch} is not divisible by {world} GPUs "
                        f"({nodes} nodes x {gpus_per_node}); no micro-batch x accumulation reaches it exactly")
    per_gpu_batch = global_batch // world
    ckpt = m.llm.grad_checkpointing
    as_configured = activation_bytes(shape, t.precision, ckpt, m.vision.grad_checkpointing)
    checkpointed = activation_bytes(shape, t.precision, True, True)
    stages = []
    for stage in STAGES:
        states = model_state_bytes(shape, stage, nodes, gpus_per_node, t.precision)
        stages.append(StageEstimate(
            stage, states / GIB, (as_configured.kept + as_configured.transient) / GIB,
            (checkpointed.kept + checkpointed.transient) / GIB,
            largest_fitting_micro_batch(states, as_configured, per_gpu_batch, gpu_mem_gb, headroom_gb),
            largest_fitting_micro_batch(states, checkpointed, per_gpu_batch, gpu_mem_gb, headroom_gb)))
    chosen = stages[t.zero_stage]
    notes = []
    if chosen.max_micro_batch == 0:
        better = [f"train.zero_stage={e.stage}" for e in stages if e.max_micro_batch] + \
                 ([f"model.llm.grad_checkpointing=true (micro-batch {chosen.max_micro_batch_ckpt})"]
                  if chosen.max_micro_batch_ckpt else [])
        raise PlanError(f"ZeRO-{t.zero_stage} does not fit {gpu_mem_gb:g} GB per GPU even at micro-batch 1 "
                        f"({chosen.model_states_gb:.1f} GB of model states + "
                        f"{chosen.activations_gb_per_sample:.2f} GB per sample + {headroom_gb:g} GB headroom)"
                        + (f"; would fit with: {', '.join(better)}" if better else ""))
    micro = chosen.max_micro_batch
    if t.micro_batch_size != micro:
        notes.append(f"config has train.micro_batch_size={t.micro_batch_size}; the plan uses {micro}")
    per_gpu = per_gpu_bytes(model_state_bytes(shape, t.zero_stage, nodes, gpus_per_node, t.precision),
                            as_configured, micro, headroom_gb)
    from lmm.training.frozen_weights import frozen_sources, leaves_frozen_out
    lean = leaves_frozen_out(frozen_sources(m))
    sizes = [checkpoint_bytes(shape.trainable_params, shape.frozen_params, t.precision, t.zero_stage, keep)
             for keep in (lean, False)]
    return Plan(config_name, nodes, gpus_per_node, gpu_mem_gb, headroom_gb, shape.params, shape.trainable_params,
                shape.frozen_params, stages, t.zero_stage, ckpt, micro, per_gpu_batch // micro, global_batch,
                per_gpu / GIB, sizes[0] / GIB, sizes[1] / GIB, notes)


def format_plan(plan: Plan) -> str:
    """A human-readable report: parameters, the per-stage table, the choice."""
    lines = [f"plan for {plan.config_name or 'config'} on {plan.nodes} node(s) x {plan.gpus_per_node} GPU(s), "
             f"{plan.gpu_mem_gb:g} GB each ({plan.headroom_gb:g} GB headroom)", "", "parameters:"]
    for name, count in plan.params.items():
        lines.append(f"  {name:<8} {count:>15,}")
    lines += [f"  {'trainable':<8} {plan.trainable_params:>15,}", f"  {'frozen':<8} {plan.frozen_params:>15,}", "",
              "ZeRO | model states GB | act GB/sample (config / ckpt) | max micro-batch (config / ckpt)"]
    for e in plan.stages:
        lines.append(f"  {e.stage}  | {e.model_states_gb:14.1f} | {e.activations_gb_per_sample:10.3f} / "
                     f"{e.activations_gb_per_sample_ckpt:<10.3f}     | {e.max_micro_batch:>6} / "
                     f"{e.max_micro_batch_ckpt:<6}")
    checkpointing = "on" if plan.grad_checkpointing else "off"
    lines += ["", f"chosen: ZeRO-{plan.zero_stage}, gradient checkpointing {checkpointing}, micro-batch "
                  f"{plan.micro_batch} x accumulation {plan.accumulation} x {plan.nodes * plan.gpus_per_node} GPUs "
                  f"= global batch {plan.global_batch}; estimated {plan.per_gpu_gb:.1f} GB per GPU",
              "overrides: " + " ".join(plan.overrides),
              f"checkpoint: {plan.checkpoint_gb:.2f} GB each (frozen weights included: "
              f"{plan.checkpoint_gb_with_frozen:.2f} GB)"]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
