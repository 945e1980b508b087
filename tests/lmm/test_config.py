import pytest

from conftest import REPO_ROOT
from lmm.config import ConfigError, load_config, stop_step, total_steps
from lmm.training.deepspeed_config import build_deepspeed_config, gradient_accumulation_steps


@pytest.mark.parametrize("name,samples,warmup", [("10m", 10_000_000, 500), ("50m", 50_000_000, 1000),
                                                  ("100m", 100_000_000, 2000)])
def test_paper_configs(name, samples, warmup):
    config = load_config(REPO_ROOT / f"configs/capsfusion_{name}.yaml", ["data.caption_source=raw",
                                                                          "model.allow_random_frozen=true"])
    assert config.data.num_samples == samples and config.train.warmup_steps == warmup
    assert config.train.global_batch_size == 8192 and config.train.lr == 3e-4 and config.train.min_lr == 3e-5
    assert config.model.vision.name == "EVA01-g-14" and config.model.llm.hidden_size == 4096
    assert config.run_name == f"capsfusion-{name}-raw" and config.output_dir == f"runs/capsfusion-{name}-raw"
    assert total_steps(config) == samples // 8192


def test_overrides_are_typed():
    config = load_config(REPO_ROOT / "configs/demo.yaml", ["train.lr=1e-3", "data.caption_source=raw",
                                                           "train.max_steps=3", "data.mix={}"])
    assert config.train.lr == 1e-3 and isinstance(config.train.lr, float)
    assert config.data.caption_source == "raw" and config.train.max_steps == 3 and stop_step(config) == 3
    assert total_steps(config) == config.data.num_samples // config.train.global_batch_size  # spans the epoch


@pytest.mark.parametrize("override,message", [
    ("train.lrr=1", "unknown config key 'train.lrr'"),
    ("model.bridge.depthh=2", "unknown config key 'model.bridge.depthh'"),
    ("train.global_batch_size=big", "config key 'train.global_batch_size': expected int"),
    ("train.precision=fp16", "config key 'train.precision': 'fp16' is not one of"),
    ("train.zero_stage=4", "config key 'train.zero_stage'"),
    ("data.caption_source=mixed", "config key 'data.mix'"),
    ("train.micro_batch_size=5", "is not a multiple of train.micro_batch_size=5"),
    ("model.llm.trainable=yes_please", "config key 'model.llm.trainable': expected bool"),
    ("noequals", "must look like key.path=value"),
])
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(REPO_ROOT / "configs/demo.yaml", [override])


def test_mixed_ratios_accepted():
    config = load_config(REPO_ROOT / "configs/demo.yaml", ["data.caption_source=mixed",
                                                           "data.mix={raw: 1, capsfusion: 3}"])
    assert config.data.mix == {"raw": 1.0, "capsfusion": 3.0}


def test_gradient_accumulation_is_exact():
    assert gradient_accumulation_steps(8192, 16, 64) == 8
    with pytest.raises(ConfigError, match="pick a micro batch that divides 128"):
        gradient_accumulation_steps(8192, 48, 64)
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        gradient_accumulation_steps(8192, 16, 3)


def test_deepspeed_config_follows_experiment_config():
    config = load_config(REPO_ROOT / "configs/capsfusion_100m.yaml", ["train.zero_stage=3", "model.allow_random_frozen=true"])
    ds = build_deepspeed_config(config, world_size=256)
    assert ds["train_batch_size"] == 8192 and ds["gradient_accumulation_steps"] == 1
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": True}
    params = ds["scheduler"]["params"]
    assert params["total_num_steps"] == 12207 and params["warmup_num_steps"] == 2000
    assert params["cos_min_ratio"] == pytest.approx(0.1)


def test_paper_model_and_freezing_policy():
    """EVA01-CLIP-g-14 frozen -> Emu bridge (32 x 768, 12 blocks, 12 heads, FFN 3072) trained -> LLaMA-2-7B frozen;
    the "fire the LLM" run is one override."""
    m = load_config(REPO_ROOT / "configs/capsfusion_50m.yaml", ["model.allow_random_frozen=true"]).model
    assert (m.vision.name, m.vision.trainable) == ("EVA01-g-14", False)
    b = m.bridge
    assert (b.num_queries, b.width, b.depth, b.heads, b.width * b.mlp_ratio, b.trainable) == (32, 768, 12, 12, 3072,
                                                                                             True)
    llm = m.llm
    assert (llm.hidden_size, llm.num_layers, llm.num_heads, llm.intermediate_size, llm.trainable) == (4096, 32, 32,
                                                                                                     11008, False)
    fired = load_config(REPO_ROOT / "configs/capsfusion_50m.yaml", ["model.llm.trainable=true", "model.allow_random_frozen=true"]).model.llm
    assert fired.trainable
