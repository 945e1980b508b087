"""AdamW parameter groups as timm, open_clip and LLaVA make them: weight decay on weight matrices only.

No decay on: biases and norm weights (every parameter with fewer than 2 dimensions), embedding tables (parameters
of ``nn.Embedding``), and whatever a module lists in its ``no_weight_decay()`` (timm's convention: the tower's
``pos_embed`` / ``cls_token``, the bridge's learned ``queries``, the decoder's separate image-marker rows).
Only trainable parameters are grouped; frozen ones never reach the optimizer.
"""
from __future__ import annotations

from torch import nn

from lmm.models.lmm import full_numel


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters of ``model`` that get no weight decay."""
    listed = set()
    for prefix, module in model.named_modules():
        own = getattr(module, "no_weight_decay", None)
        if callable(own):
            listed |= {f"{prefix}.{name}" if prefix else name for name in own()}
    names = set()
    for prefix, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            name = f"{prefix}.{leaf}" if prefix else leaf  # ZeRO-3 keeps the true shape in ds_shape
            if len(getattr(param, "ds_shape", param.shape)) < 2 or isinstance(module, nn.Embedding) or name in listed:
                names.add(name)
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict], dict[str, dict]]:
    """Optimizer groups of the trainable parameters (empty groups left out) and a summary per group:
    ``{"decay": {"weight_decay", "tensors", "parameters"}, "no_decay": {...}}``."""
    skip = no_decay_names(model)
    split = {"decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            split["no_decay" if name in skip else "decay"].append(param)
    decay = {"decay": weight_decay, "no_decay": 0.0}
    groups = [{"params": params, "weight_decay": decay[kind]} for kind, params in split.items() if params]
    summary = {kind: {"weight_decay": decay[kind], "tensors": len(params),
                      "parameters": sum(full_numel(p) for p in params)}
               for kind, params in split.items()}
    return groups, summary
