"""Typed experiment configuration: YAML files + ``key.path=value`` overrides -> nested dataclasses.

Every key is checked against the dataclass fields and every value against its annotated type, so a typo
or a wrong type fails at load time (before anything is built or submitted), naming the key.
A YAML file may start from another with ``base: other.yaml`` (path relative to the file).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


@dataclass
class VisionConfig:
    """EVA-CLIP vision tower built by open_clip (``name`` is an open_clip model config)."""
    name: str = "EVA01-tiny-14"
    pretrained: Optional[str] = None  # local open_clip checkpoint file; None = random init
    trainable: bool = False  # the paper keeps the CLIP tower frozen
    grad_checkpointing: bool = False


@dataclass
class BridgeConfig:
    """Emu-style causal transformer between vision features and the decoder (random init)."""
    num_queries: int = 32
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    trainable: bool = True


@dataclass
class LLMConfig:
    """LLaMA decoder: ``pretrained`` is a local Hugging Face directory, else built from the sizes below."""
    pretrained: Optional[str] = None
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    intermediate_size: int = 11008
    max_position_embeddings: int = 4096
    trainable: bool = False  # frozen by default; ``true`` is the paper's "fire the LLM" variant
    # the rows the image markers add to a pretrained vocabulary train even when the decoder is frozen
    train_image_markers: bool = True
    grad_checkpointing: bool = False
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"  # transformers' switch


@dataclass
class TokenizerConfig:
    """sentencepiece model: LLaMA's ``tokenizer.model``, or trained in-process on the training captions."""
    path: Optional[str] = None  # None = <model.llm.pretrained>/tokenizer.model, else one trained on the captions
    vocab_size: int = 32000  # only used when training one


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # A frozen vision tower or decoder without ``pretrained`` weights is a config error: it would train against a
    # random frozen network. Tests, benchmarks and tiny experiments opt in to random frozen weights here.
    allow_random_frozen: bool = False


@dataclass
class DataConfig:
    """Which shards, which caption source, how many samples."""
    train_manifest: str = ""  # manifest.json listing webdataset shards
    caption_source: str = "capsfusion"  # raw | synthetic | capsfusion | any json field | mixed
    mix: dict[str, float] = field(default_factory=dict)  # source -> ratio when caption_source == mixed
    num_samples: int = 10_000_000  # samples seen in the run (one epoch of the nested subset)
    max_caption_tokens: int = 64
    num_workers: int = 2
    shuffle_buffer: int = 1000  # samples per seeded shuffle window (raw bytes held per dataloader worker)
    seed: int = 0
    max_skip_fraction: float = 0.01  # stop the run when more than this share of the samples read was unusable
    max_caption_chars: int = 2000  # longer captions are skipped as oversized (counted)


@dataclass
class TrainConfig:
    global_batch_size: int = 8192
    micro_batch_size: int = 16
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 500
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "bf16"
    tf32: bool = True  # TF32 tensor cores for fp32 matmuls/convolutions (CUDA only)
    zero_stage: int = 2
    deepspeed_template: str = "configs/deepspeed/zero.json"
    checkpoint_every: int = 1000  # optimizer steps; a final checkpoint is always written
    checkpoint_at_start: bool = False  # a step-0 checkpoint, so the untrained model is on the curve
    log_every: int = 10
    max_steps: Optional[int] = None  # stop (with a checkpoint) after this step; the LR schedule still spans the epoch
    max_requeues: int = 3  # a preempted/timed-out Slurm job requeues itself at most this many times
    collective_timeout_s: int = 900  # a collective waiting longer (a dead or hung rank) fails the run


# Emu's published zero-shot COCO captioning prompt (the text after the image block)
EMU_CAPTION_PROMPT = ("please provide an accurate and concise description of the given image. [ASSISTANT]: "
                      "the image depicts a photo of")


@dataclass
class BenchmarkFiles:
    """Where one standard benchmark lives (see lmm/eval/benchmarks.py for the formats)."""
    annotations: str = ""  # dataset_coco.json / nocaps_val_4500_captions.json / dataset_flickr30k.json
    image_root: str = ""


@dataclass
class EvalConfig:
    """Zero-shot captioning protocol (defaults: Emu's COCO settings); stored with every result."""
    dataset_json: str = ""  # the run's own eval set, Karpathy format (dataset_coco.json)
    image_root: str = ""
    split: str = "test"
    benchmark: str = "coco_karpathy_test"  # result name of that eval set
    benchmarks: dict[str, BenchmarkFiles] = field(default_factory=dict)  # coco / nocaps / flickr30k files
    prompt: str = EMU_CAPTION_PROMPT
    num_beams: int = 5
    max_new_tokens: int = 20
    min_new_tokens: int = 8
    length_penalty: float = -1.0
    batch_size: int = 16
    max_images: Optional[int] = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    tokenizer: Literal["auto", "java", "python"] = "auto"  # PTB tokenizer; auto: Stanford's when java exists
    meteor: bool = True  # METEOR when java is present (its JVM takes ~10 s to start, once per job)


@dataclass
class ExperimentConfig:
    run_name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short stable hash of the whole config (stored with results)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_value(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {_check_value(key, k, args[0]): _check_value(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, key)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not (type(value) is annotation):
        raise ConfigError(f"config key '{key}': expected {annotation.__name__}, got {value!r}")
    return value


def build_dataclass(cls: type, values: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key '{where}' (valid keys here: {sorted(names)})")
    kwargs = {k: _check_value(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and value:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    """Read a YAML config, resolving its ``base:`` chain."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    base = data.pop("base", None)
    if base is not None:
        data = _deep_merge(_read_yaml(path.parent / base), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=1e-4`` -> (['train', 'lr'], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    value = yaml.safe_load(raw) if raw != "" else ""
    # yaml reads 3e-4 as a string (no dot): accept it as a float
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in "e.") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def config_from_dict(data: dict) -> ExperimentConfig:
    config = expand_names(build_dataclass(ExperimentConfig, data))
    validate(config)
    return config


def expand_names(config: ExperimentConfig) -> ExperimentConfig:
    """Fill ``{caption_source}`` in run_name, then ``{run_name}``/``{caption_source}`` in output_dir."""
    try:
        run_name = config.run_name.format(caption_source=config.data.caption_source)
        output_dir = config.output_dir.format(run_name=run_name, caption_source=config.data.caption_source)
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"config keys 'run_name'/'output_dir': bad placeholder {err}; "
                          "use {caption_source} or {run_name}") from None
    return dataclasses.replace(config, run_name=run_name, output_dir=output_dir)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    data = _read_yaml(Path(path)) if path is not None else {}
    return config_from_dict(apply_overrides(data, list(overrides)))


def validate(config: ExperimentConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    t, d, m = config.train, config.data, config.model
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"config key 'train.zero_stage': must be 0-3, got {t.zero_stage}")
    for key, value in (("train.global_batch_size", t.global_batch_size), ("train.micro_batch_size",
                       t.micro_batch_size), ("data.num_samples", d.num_samples), ("train.warmup_steps",
                       t.warmup_steps), ("model.bridge.num_queries", m.bridge.num_queries)):
        if value <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {value}")
    if t.max_requeues < 0 or t.collective_timeout_s <= 0:
        raise ConfigError("config keys 'train.max_requeues'/'train.collective_timeout_s': need max_requeues >= 0 "
                          f"and collective_timeout_s > 0, got {t.max_requeues} and {t.collective_timeout_s}")
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError(f"config key 'train.global_batch_size': {t.global_batch_size} is not a multiple of "
                          f"train.micro_batch_size={t.micro_batch_size}")
    if not 0 < t.min_lr <= t.lr:
        raise ConfigError(f"config key 'train.min_lr': need 0 < min_lr <= lr, got {t.min_lr} and {t.lr}")
    if m.bridge.width % m.bridge.heads:
        raise ConfigError(f"config key 'model.bridge.heads': width {m.bridge.width} not divisible by {m.bridge.heads}")
    if d.caption_source == "mixed":
        if not d.mix or any(r < 0 for r in d.mix.values()) or sum(d.mix.values()) <= 0:
            raise ConfigError("config key 'data.mix': caption_source=mixed needs positive ratios, "
                              "e.g. data.mix={raw: 0.5, synthetic: 0.5}")
    elif d.mix:
        raise ConfigError(f"config key 'data.mix': only used with caption_source=mixed, "
                          f"not '{d.caption_source}'")
    if d.num_samples < t.global_batch_size:
        raise ConfigError(f"config key 'data.num_samples': {d.num_samples} is less than one global batch "
                          f"({t.global_batch_size})")
    if not any([m.vision.trainable, m.bridge.trainable, m.llm.trainable]):
        raise ConfigError("config key 'model': every component is frozen; nothing would train")
    for key, part in (("model.vision", m.vision), ("model.llm", m.llm)):
        if not part.trainable and part.pretrained is None and not m.allow_random_frozen:
            raise ConfigError(f"config key '{key}.pretrained': {key} is frozen but has no pretrained weights, so "
                              f"the run would train against a random frozen network; set {key}.pretrained to a "
                              f"local weight path (or model.allow_random_frozen=true for tests and tiny runs)")


def total_steps(config: ExperimentConfig) -> int:
    """Optimizer steps of the run (and of its LR schedule): one epoch of ``data.num_samples``."""
    return config.data.num_samples // config.train.global_batch_size


def stop_step(config: ExperimentConfig) -> int:
    """The step this invocation stops at: the epoch's end, or ``train.max_steps`` if that comes first."""
    steps = total_steps(config)
    return min(steps, config.train.max_steps) if config.train.max_steps else steps
