"""The training story: config -> tokenizer, model, DeepSpeed engine, data stream -> steps, logs, checkpoints."""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import deepspeed
import numpy as np
import torch

from data_pipeline.captions import CaptionSelector
from data_pipeline.loader import CaptionStream, build_train_loader, caption_corpus, load_manifest
from lmm import distributed
from lmm.config import ExperimentConfig, stop_step
from lmm.models.lmm import build_lmm, parameter_counts
from lmm.models.vision import image_preprocess
from lmm.sequence import IGNORE_INDEX, SequenceLayout
from lmm.tokenizer import CaptionTokenizer, train_tokenizer
from lmm.training import checkpoint
from lmm.training.checkpoint import CheckpointMeta, RUN_CONFIG_FILE, write_json_atomic
from lmm.training.deepspeed_config import build_deepspeed_config
from lmm.training.metrics import MetricsLogger, ThroughputMeter, mean_across_ranks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_tokenizer(config: ExperimentConfig, env: distributed.DistEnv) -> ExperimentConfig:
    """Return the config with ``model.tokenizer.path`` set, training a tokenizer on rank 0 when none is given."""
    if config.model.tokenizer.path is not None:
        return config
    model_file = Path(config.output_dir) / "tokenizer.model"
    if env.is_main and not model_file.is_file():
        shards = load_manifest(config.data.train_manifest)
        train_tokenizer(caption_corpus(shards), model_file, config.model.tokenizer.vocab_size)
    distributed.barrier()
    return replace(config, model=replace(config.model, tokenizer=replace(config.model.tokenizer,
                                                                         path=str(model_file))))


def train(config: ExperimentConfig) -> list[dict]:
    """Run (or resume) one training run; returns the logged metric history (rank 0's view)."""
    env = distributed.init_distributed()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = prepare_tokenizer(config, env)
    if env.is_main:
        write_json_atomic(output_dir / RUN_CONFIG_FILE, config.to_dict())
    seed_everything(config.seed)
    tokenizer = CaptionTokenizer(config.model.tokenizer.path)
    model = build_lmm(config.model, tokenizer)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=build_deepspeed_config(config, env.world_size))
    logger = MetricsLogger(output_dir / "tensorboard", enabled=env.is_main)
    if env.is_main:
        print(json.dumps({"parameters": parameter_counts(model)}), flush=True)

    state = checkpoint.resume(engine, output_dir) or {"step": 0, "consumed_batches": 0}
    layout = SequenceLayout(tokenizer, config.model.bridge.num_queries, config.data.max_caption_tokens)
    stream = CaptionStream(
        load_manifest(config.data.train_manifest),
        CaptionSelector(config.data.caption_source, config.data.mix, config.data.seed),
        image_preprocess(model.vision), layout, env.rank, env.world_size, config.train.micro_batch_size,
        seed=config.data.seed, shuffle_buffer=config.data.shuffle_buffer,
        consumed_batches=state["consumed_batches"])
    batches = iter(build_train_loader(stream, config.data.num_workers))
    step, consumed = state["step"], state["consumed_batches"]

    def save() -> None:
        meta = CheckpointMeta(config.run_name, config.data.caption_source, config.data.num_samples, step,
                              step * config.train.global_batch_size, config.train.zero_stage, config.digest())
        checkpoint.save(engine, output_dir, meta, {"step": step, "consumed_batches": consumed})

    if step == 0 and config.train.checkpoint_at_start:
        save()
    history, meter, last = [], ThroughputMeter(), stop_step(config)
    while step < last:
        losses = []
        for _ in range(engine.gradient_accumulation_steps()):
            batch = next(batches)
            consumed += 1
            loss = engine(batch["pixels"], batch["input_ids"], batch["attention_mask"], batch["labels"])
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            meter.add(len(batch["keys"]), int((batch["labels"] != IGNORE_INDEX).sum()))
        step += 1
        if step % config.train.log_every == 0 or step == last:
            samples_per_s, tokens_per_s = meter.rates()
            grad_norm = engine.get_global_grad_norm()
            scalars = {"train/loss": mean_across_ranks(sum(losses) / len(losses)),
                       "train/lr": engine.get_lr()[0],
                       "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                       "perf/samples_per_s": samples_per_s, "perf/tokens_per_s": tokens_per_s}
            logger.log(scalars, step * config.train.global_batch_size, step)
            history.append({"step": step, **scalars})
        if step % config.train.checkpoint_every == 0 or step == last:
            save()
    logger.close()
    return history
