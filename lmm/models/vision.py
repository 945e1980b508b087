"""EVA-CLIP vision tower, built by open_clip (EVA01-CLIP-g-14 at full scale).

The embedded default uses ``EVA01-tiny-14``: an open_clip model config (``open_clip_configs/``) whose tower is a
tiny timm ``Eva`` registered below through timm's own registry, so the same classes and code paths run at every
scale. Features follow Emu: all tokens (CLS + patches) of the LAST block, taken BEFORE the tower's final norm
and head; the bridge applies its own fresh LayerNorm to them.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.eva import _create_eva
from torch import nn

from lmm.config import VisionConfig
from lmm.models.weights import check_tensor_shapes, state_shapes

OPEN_CLIP_CONFIG_DIR = Path(__file__).parent / "open_clip_configs"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP statistics, as EVA01-CLIP uses
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# timm reads ``default_cfgs`` of the module that registers a model.
default_cfgs = generate_default_cfgs({
    "eva_lmm_tiny_patch14.untrained": {"input_size": (3, 112, 112), "mean": CLIP_MEAN, "std": CLIP_STD,
                                       "num_classes": 0},
})


@register_model
def eva_lmm_tiny_patch14(pretrained: bool = False, **kwargs):
    """A 2-block, 64-wide EVA ViT with the same structure as EVA01-g (patch 14, CLS token, abs pos embed)."""
    args = dict(img_size=112, patch_size=14, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0)
    return _create_eva("eva_lmm_tiny_patch14", pretrained=pretrained, **dict(args, **kwargs))


open_clip.add_model_config(OPEN_CLIP_CONFIG_DIR)


class VisionTower(nn.Module):
    """Wraps open_clip's visual tower and returns last-block tokens ``[batch, 1 + patches, width]``."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        if not hasattr(visual, "trunk") or not hasattr(visual.trunk, "forward_intermediates"):
            raise ValueError("expected an open_clip timm-based EVA tower (visual.trunk with forward_intermediates)")
        self.visual = visual
        self.width = visual.trunk.embed_dim
        self.image_size = tuple(visual.image_size)
        self.num_tokens = visual.trunk.patch_embed.num_patches + visual.trunk.num_prefix_tokens
        self.preprocess_cfg = dict(getattr(visual, "preprocess_cfg", {}))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        (patches, prefix), = self.visual.trunk.forward_intermediates(
            pixels, indices=1, return_prefix_tokens=True, norm=False, output_fmt="NLC", intermediates_only=True)
        return torch.cat([prefix, patches], dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.trunk.set_grad_checkpointing(enable)


def build_vision_tower(config: VisionConfig, device: str | torch.device = "cpu") -> VisionTower:
    """Create the tower through open_clip and load ``config.pretrained`` (a local open_clip checkpoint file).

    ``device="meta"`` builds the structure only (no memory, no weights): the planner's path.
    """
    if config.name not in open_clip.list_models():
        raise ValueError(f"model.vision.name: unknown open_clip model '{config.name}'")
    if config.pretrained is not None and not Path(config.pretrained).is_file():
        raise FileNotFoundError(f"model.vision.pretrained: no such checkpoint file: {config.pretrained}")
    with torch.device(device):  # on "meta" open_clip must not first build (and initialise) on the CPU
        clip = open_clip.create_model(config.name, device=device)
    tower = VisionTower(clip.visual)
    del clip  # the text tower is not used
    if config.pretrained is not None and str(device) != "meta":
        load_vision_weights(tower, config.pretrained)
    if config.grad_checkpointing:
        tower.set_grad_checkpointing(True)
    return tower


def load_vision_weights(tower: VisionTower, checkpoint_file: str | Path) -> None:
    """Load the visual trunk of an open_clip checkpoint file into ``tower``, strictly.

    Accepts what ``open_clip.create_model(pretrained=<file>)`` reads (``.pt``/``.bin``/``.safetensors``, a
    ``state_dict`` key, ``module.`` prefixes; a whole CLIP with ``visual.trunk.*`` keys, text tower ignored) and,
    through timm's EVA converter, a bare trunk or EVA-CLIP's own ``visual.*`` naming. A tensor of the wrong shape
    or a missing/extra tensor raises WeightsMismatchError naming it.
    """
    from open_clip.factory import load_state_dict
    from timm.models.eva import checkpoint_filter_fn

    source = f"model.vision.pretrained {checkpoint_file}"
    try:
        state = load_state_dict(str(checkpoint_file))
    except Exception as err:  # torch/safetensors raise many types for a corrupt or foreign file
        raise ValueError(f"{source}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    trunk = tower.visual.trunk
    state = checkpoint_filter_fn(state, trunk)
    check_tensor_shapes(state_shapes(trunk.state_dict()), state_shapes(state), source)
    trunk.load_state_dict(state, strict=True)


def image_preprocess(tower: VisionTower):
    """The eval-time transform open_clip defines for this tower (resize, center crop, its normalisation)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    return image_transform_v2(PreprocessCfg(**tower.preprocess_cfg), is_train=False)
