"""EVA-CLIP vision tower, built by open_clip (EVA01-CLIP-g-14 at full scale).

The embedded default uses ``EVA01-tiny-14``: an open_clip model config (``open_clip_configs/``) whose tower is a
tiny timm ``Eva`` registered below through timm's own registry, so the same classes and code paths run at every
scale. Features follow Emu: all tokens (CLS + patches) of the LAST block, taken BEFORE the tower's final norm
and head; the bridge applies its own fresh LayerNorm to them.

A pretrained tower is built on the meta device and filled from its file in the run's dtype (never an initialised
fp32 copy): an open_clip-layout ``.safetensors`` streams tensor by tensor (``lmm.models.safetensors_reader``); a
``.pt`` / ``.bin`` is memory-mapped (``torch.load(mmap=True, weights_only=True)``) and converted tensor by tensor,
its mapped pages released when the load ends.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.eva import _create_eva
from torch import nn

from lmm.config import VisionConfig
from lmm.models.partitioned import fill_from_files, is_partitioned, load_partitioned, partitioned_construction
from lmm.models.safetensors_reader import tensor_entries
from lmm.models.weights import check_tensor_shapes, state_shapes
from lmm.safe_loading import refusal

OPEN_CLIP_CONFIG_DIR = Path(__file__).parent / "open_clip_configs"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP statistics, as EVA01-CLIP uses
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Non-persistent buffers of a timm tower that hold constants, not weights: EVA's attention keeps its (absent) key
# bias as a zero buffer. A meta-built tower gets them back as zeros after loading; any other is an error.
ZERO_BUFFERS = ("attn.k_bias",)

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
        self._constant_owners: list[nn.Module] | None = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self._match_constant_buffers()
        (patches, prefix), = self.visual.trunk.forward_intermediates(
            pixels, indices=1, return_prefix_tokens=True, norm=False, output_fmt="NLC", intermediates_only=True)
        return torch.cat([prefix, patches], dim=1)

    def _match_constant_buffers(self) -> None:
        """EVA's zero key-bias buffers follow their attention's weights: DeepSpeed's bf16 cast (0.19) converts
        parameters only, and a fp32 k_bias beside bf16 q/v biases breaks the fused qkv projection."""
        if self._constant_owners is None:
            self._constant_owners = [m for m in self.visual.trunk.modules()
                                     if isinstance(getattr(m, "k_bias", None), torch.Tensor)]
        for module in self._constant_owners:
            dtype = module.q_bias.dtype if getattr(module, "q_bias", None) is not None else module.k_bias.dtype
            if module.k_bias.dtype != dtype:
                module.k_bias = module.k_bias.to(dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.trunk.set_grad_checkpointing(enable)


def build_vision_tower(config: VisionConfig, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, zero3_config: dict | None = None) -> VisionTower:
    """Create the tower through open_clip: random init (fp32) without ``config.pretrained``, else a meta-device
    skeleton filled from that local open_clip checkpoint file in ``dtype`` (under a ZeRO-3 ``zero3_config``:
    partitioned as it is built, then filled).

    ``device="meta"`` builds the structure only (no memory, no weights): the planner's path.
    """
    if config.name not in open_clip.list_models():
        raise ValueError(f"model.vision.name: unknown open_clip model '{config.name}'")
    if config.pretrained is not None and not Path(config.pretrained).is_file():
        raise FileNotFoundError(f"model.vision.pretrained: no such checkpoint file: {config.pretrained}")
    pretrained = config.pretrained is not None and str(device) != "meta"
    build_on = "meta" if pretrained or str(device) == "meta" else device
    with torch.device(build_on):  # on "meta" open_clip must not first build (and initialise) on the CPU
        clip = open_clip.create_model(config.name, device=build_on)
    visual = clip.visual
    del clip  # the text tower is not used
    if pretrained and zero3_config is not None:
        visual = partitioned_visual(config.name, visual, zero3_config)
    tower = VisionTower(visual)
    if pretrained:
        load_vision_weights(tower, config.pretrained, dtype)
    if config.grad_checkpointing:
        tower.set_grad_checkpointing(True)
    return tower


def partitioned_visual(name: str, skeleton: nn.Module, zero3_config: dict) -> nn.Module:
    """The visual tower alone built under ZeRO-3's ``zero.Init`` (partitioned as it is constructed), with the
    preprocessing config open_clip gave ``skeleton``. Built through open_clip's own visual-tower builder (the one
    ``CLIP.__init__`` calls): the whole CLIP cannot be built under ``zero.Init`` (its 0-dim ``logit_scale`` breaks
    DeepSpeed's broadcast), and its text tower is not used."""
    from open_clip.model import _build_vision_tower

    model_config = open_clip.get_model_config(name)
    with partitioned_construction(zero3_config):
        visual = _build_vision_tower(model_config["embed_dim"], model_config["vision_cfg"],
                                     model_config.get("quick_gelu", False))
    visual.preprocess_cfg = dict(getattr(skeleton, "preprocess_cfg", {}))
    return visual


def load_vision_weights(tower: VisionTower, checkpoint_file: str | Path, dtype: torch.dtype = torch.float32) -> None:
    """Load the visual trunk of an open_clip checkpoint file into ``tower`` (meta skeleton or built), strictly, in
    ``dtype``.

    Accepts what ``open_clip.create_model(pretrained=<file>)`` reads (``.pt``/``.bin``/``.safetensors``, a
    ``state_dict`` key, ``module.`` prefixes; a whole CLIP with ``visual.trunk.*`` keys, text tower ignored) and,
    through timm's EVA converter, a bare trunk or EVA-CLIP's own ``visual.*`` naming. A tensor of the wrong shape
    or a missing/extra tensor raises WeightsMismatchError naming it. Only weights are read: a file pickling
    anything else raises ``lmm.safe_loading.UnsafeCheckpointError`` (a ValueError) naming it.
    """
    source = f"model.vision.pretrained {checkpoint_file}"
    trunk = tower.visual.trunk
    expected = state_shapes(trunk.state_dict(keep_vars=True))
    entries = _open_clip_trunk_entries(checkpoint_file) if str(checkpoint_file).endswith(
        ".safetensors") else None
    if entries is not None:  # open_clip's own layout: stream tensor by tensor
        prefix, entries = entries
        check_tensor_shapes(expected, {name.removeprefix(prefix): e.shape for name, e in entries.items()
                                       if name.startswith(prefix)}, source)
        fill_from_files(trunk, entries, dtype, rename=lambda name: prefix + name)
    else:
        from timm.models.eva import checkpoint_filter_fn

        state = checkpoint_filter_fn(read_state_dict(checkpoint_file, source), trunk)
        check_tensor_shapes(expected, state_shapes(state), source)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        if is_partitioned(trunk):
            load_partitioned(trunk, state.__getitem__)
        else:
            trunk.load_state_dict(state, strict=True, assign=True)
        del state  # drops the memory map
    _restore_constant_buffers(trunk, dtype)


def _open_clip_trunk_entries(checkpoint_file: str | Path) -> tuple[str, dict] | None:
    """(prefix, entries) when a safetensors file holds the trunk under ``[module.]visual.trunk.``, else None."""
    try:
        entries = tensor_entries([checkpoint_file])
    except ValueError as err:
        raise ValueError(f"model.vision.pretrained {checkpoint_file}: not a readable checkpoint ({err})") from err
    for prefix in ("visual.trunk.", "module.visual.trunk."):
        if any(name.startswith(prefix) for name in entries):
            return prefix, entries
    return None


def read_state_dict(checkpoint_file: str | Path, source: str) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict (memory-mapped where the format allows), unwrapped as open_clip does."""
    try:
        if str(checkpoint_file).endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(str(checkpoint_file))
        else:
            try:
                state = torch.load(checkpoint_file, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
                state = torch.load(checkpoint_file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for a corrupt or foreign file
        raise (refusal(err, checkpoint_file)
               or ValueError(f"{source}: not a readable checkpoint ({type(err).__name__}: {err})")) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{source}: not a readable checkpoint (no tensors)")
    if next(iter(state)).startswith("module."):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _restore_constant_buffers(trunk: nn.Module, dtype: torch.dtype) -> None:
    """Meta buffers left after loading a meta skeleton: known constants become zeros, anything else is an error."""
    for name, buffer in list(trunk.named_buffers()):
        if buffer.device.type != "meta":
            continue
        if not name.endswith(ZERO_BUFFERS):
            raise RuntimeError(f"vision tower buffer '{name}' is not in the checkpoint and has no known value")
        owner, _, leaf = name.rpartition(".")
        trunk.get_submodule(owner).register_buffer(leaf, torch.zeros(buffer.shape, dtype=dtype),
                                                   persistent=False)


def image_preprocess(tower: VisionTower):
    """The eval-time transform open_clip defines for this tower (resize, center crop, its normalisation)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    return image_transform_v2(PreprocessCfg(**tower.preprocess_cfg), is_train=False)
