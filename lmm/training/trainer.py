"""The training story: config -> tokenizer, model, DeepSpeed engine, data stream -> steps, logs, checkpoints."""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import deepspeed
import numpy as np
import torch

from data_pipeline.captions import CaptionSelector
from data_pipeline.files import write_json_atomic
from data_pipeline.loader import CaptionStream, build_train_loader
from data_pipeline.manifest import MANIFEST_FILE, load_manifest, subset
from data_pipeline.sequence import IGNORE_INDEX, SequenceLayout
from data_pipeline.tokenizer import CaptionTokenizer
from lmm import distributed
from lmm.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    budget_samples,
    check_world_size,
    decay_ends,
    stop_step,
    total_steps,
)
from lmm.flops import peak_flops_for, training_flops_per_sample
from lmm.models.lmm import LMM, build_lmm, describe_adapters, held_parameters, parameter_counts, precision_dtype
from lmm.models.vision import image_preprocess
from lmm.planning import model_shape
from lmm.training import checkpoint, elastic, frozen_weights, resume_guard, sample_ledger, schedule
from lmm.training.checkpoint import RUN_CONFIG_FILE, CheckpointMeta
from lmm.training.deepspeed_config import build_deepspeed_config
from lmm.training.init_from import with_init_from
from lmm.training.loader_state import LoaderProgress, carry_for_rank, positions_for_rank, reshard
from lmm.training.metrics import MetricsLogger, StepMeter, mean_across_ranks
from lmm.training.optimizer_groups import parameter_groups
from lmm.training.preemption import STOP, StopOutcome, StopRequest, forward_to_trainer, requeue
from lmm.training.run_tokenizer import train_tokenizer_once, with_tokenizer_path
from lmm.training.sample_ledger import SampleLedger

log = logging.getLogger(__name__)
MODEL_INPUTS = ("pixels", "input_ids", "attention_mask", "labels")  # batch keys a model's forward takes by name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_micro_step(seed: int, step: int, micro: int, rank: int) -> None:
    """Seed the randomness of one forward/backward (dropout: LoRA's, or a model's) by (seed, step, micro-batch,
    rank): DeepSpeed's checkpoints hold no RNG state, and the DataLoader draws its base seed from the global RNG
    when a run (or a resume) starts, so only a seed set right before the forward makes a resumed run draw what the
    uninterrupted run drew."""
    torch.manual_seed(int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0]))


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (CUDA only; bf16 compute is unaffected)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def build_engine(config: ExperimentConfig, model: LMM, world_size: int, is_main: bool = False,
                 ds_config: dict | None = None):
    """DeepSpeed engine over the trainable parameters only (frozen ones never reach the optimizer), in two AdamW
    groups: weight decay on weight matrices, none on biases, norms, embeddings and learned queries."""
    groups, summary = parameter_groups(model, config.train.weight_decay)
    if is_main:
        log.info("optimizer groups %s", json.dumps({"optimizer_groups": summary}))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups,
                                           config=ds_config or build_deepspeed_config(config, world_size),
                                           lr_scheduler=schedule.scheduler_factory(config))
    return engine


class Trainer:
    """Optimizer steps (with gradient accumulation), metrics and checkpoints around one DeepSpeed engine."""

    def __init__(self, config: ExperimentConfig, engine, logger: MetricsLogger, step: int = 0,
                 consumed_batches: int = 0, data_progress: LoaderProgress | None = None,
                 stop: StopRequest = STOP, frozen: dict | None = None, ledger: SampleLedger | None = None,
                 meter: StepMeter | None = None):
        self.config, self.engine, self.logger, self.stop = config, engine, logger, stop
        self.ledger = ledger or SampleLedger(config.output_dir, 0, enabled=False)
        self.frozen = frozen or frozen_weights.describe(config.model)  # fingerprints of the files loaded
        self.step, self.consumed_batches = step, consumed_batches
        self.data_progress = data_progress or LoaderProgress(config.data.num_workers)
        self.meter, self.losses, self.history = meter or StepMeter(), [], []
        self.stopped_early = False  # a stop signal ended ``fit`` before the last step (after a checkpoint)
        self.lr = float("nan")  # the LR of the latest update (logged as train/lr)
        self.budget_steps = set(decay_ends(config))  # always checkpointed: the points of the scaling curves
        self.save_steps = self.budget_steps | set(config.train.checkpoint_steps)
        self.lineage = branch_lineage(config)

    @property
    def samples_seen(self) -> int:
        return self.step * self.config.train.global_batch_size

    def train_step(self, batches: Iterator[dict]) -> None:
        """One optimizer step: forward/backward over ``gradient_accumulation_steps`` micro-batches."""
        keys, self.lr = [], self.engine.get_lr()[0]  # the LR this update trains with
        rank = distributed.detect_env().rank
        for micro in range(self.engine.gradient_accumulation_steps()):
            asked = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - asked
            seed_micro_step(self.config.seed, self.step, micro, rank)
            if self.ledger.enabled:
                keys += batch["keys"]
            self.consumed_batches += 1
            self.data_progress.observe(batch)
            loss = self.engine(**{name: batch[name] for name in MODEL_INPUTS if name in batch})
            self.engine.backward(loss)
            self.engine.step()
            self.losses.append(loss.detach())
            self.meter.add(len(batch["input_ids"]), int((batch["labels"] != IGNORE_INDEX).sum()),
                           batch["input_ids"].shape[1], waited)
        self.step += 1
        self.ledger.add(self.step, keys)

    def log(self) -> None:
        """Reduce and write the metrics accumulated since the last call (collective)."""
        grad_norm = self.engine.get_global_grad_norm()
        scalars = {"train/loss": mean_across_ranks(torch.stack(self.losses).mean().item()),
                   "train/lr": self.lr,
                   "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                   **self.meter.scalars(), **self.data_progress.skip_scalars()}
        self.losses = []
        self.logger.log(scalars, self.samples_seen, self.step)
        self.history.append({"step": self.step, **scalars})

    def save(self) -> None:
        c = self.config
        meta = CheckpointMeta(c.run_name, c.data.caption_source, budget_samples(c), self.step, self.samples_seen,
                              c.train.zero_stage, c.digest(), distributed.detect_env().world_size,
                              c.train.schedule, total_steps(c), self.step in self.budget_steps, *self.lineage)
        self.ledger.flush()  # before the checkpoint is complete: a complete checkpoint's steps are in the ledger
        started = time.monotonic()
        path = checkpoint.save(self.engine, c.output_dir, meta, {"step": self.step,
                                                                 "consumed_batches": self.consumed_batches,
                                                                 "data": self.data_progress.state_dict()},
                               self.frozen)
        if distributed.detect_env().is_main:
            since_signal = (f"; {time.monotonic() - self.stop.at:.1f} s after the stop signal"
                            if self.stop.at is not None else "")
            log.info("checkpoint: step %d (samples seen %d) saved to %s in %.1f s%s", self.step, self.samples_seen,
                     path, time.monotonic() - started, since_signal)

    def fit(self, batches: Iterator[dict]) -> list[dict]:
        """Train until the epoch ends (or ``train.max_steps``), or until a stop signal; returns the metric history."""
        last = stop_step(self.config)
        env = distributed.detect_env()
        try:
            if self.step == 0 and self.config.train.checkpoint_at_start:
                self.save()
            while self.step < last and not self.stopped_early:
                self.advance(batches, last)
        except RuntimeError as err:  # a collective that failed because another rank died is named as such
            raise distributed.explain_failed_collective(err, env) from err
        return self.history

    def advance(self, batches: Iterator[dict], last: int) -> None:
        """One step of the training story: the optimizer step, then logs and checkpoints when due. A stop signal
        on any rank (checked collectively, so all ranks agree) forces a checkpoint and ends the run early."""
        t = self.config.train
        self.train_step(batches)
        if self.step % t.log_every == 0 or self.step == last:
            self.log()
        stopping = distributed.any_rank(self.stop.requested)
        if stopping and distributed.detect_env().is_main:
            log.warning("stop signal received: checkpointing after step %d", self.step)
        if self.step % t.checkpoint_every == 0 or self.step == last or self.step in self.save_steps or stopping:
            self.save()
        self.stopped_early = stopping and self.step < last


def branch_lineage(config: ExperimentConfig) -> tuple[str, int]:
    """(parent checkpoint, its step) of a decay branch (``train.init_from``); ("", 0) for a run from scratch."""
    if not config.train.init_from:
        return "", 0
    parent = Path(config.train.init_from).resolve()
    return str(parent), checkpoint.read_meta(parent).step


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, and how (``universal``: its re-partitionable form, another world
    size)."""
    checkpoint: Path
    step: int
    universal: Path | None = None
    changes: dict = field(default_factory=dict)  # allowed config changes since the run's config.json
    branch: bool = False  # the checkpoint is the parent run's (``train.init_from``): the branch's first start


def find_resume_point(config: ExperimentConfig, env: distributed.DistEnv) -> ResumePoint | None:
    """The newest readable checkpoint of the run, after the checks that must pass before anything is written:
    the config may only change resumable keys (RunChangedError), the frozen weight files must be the same
    (FrozenWeightsError)."""
    output_dir = Path(config.output_dir)
    latest = checkpoint.newest_resumable(output_dir, verbose=env.is_main)
    branch = latest is None and config.train.init_from is not None
    if branch:
        latest = parent_checkpoint(config)
    if latest is None:
        return None
    step = checkpoint.read_meta(latest).step
    saved = output_dir / RUN_CONFIG_FILE
    changes = (resume_guard.check(json.loads(saved.read_text()), config.to_dict(), output_dir, step)
               if saved.is_file() and not branch else {})
    frozen_weights.verify(latest, config.model)
    saved_ranks = elastic.saved_world_size(latest)
    needs_universal = saved_ranks is not None and saved_ranks != env.world_size
    return ResumePoint(latest, step, elastic.universal_path(latest) if needs_universal else None, changes, branch)


def parent_checkpoint(config: ExperimentConfig) -> Path:
    """The checkpoint a decay branch starts from, checked: complete, readable, and from a run whose config
    differs from the branch's only where a branch may (``resume_guard.check_branch``)."""
    parent = Path(config.train.init_from)
    reason = (checkpoint.unreadable(parent) if (parent / checkpoint.META_FILE).is_file()
              else "not a complete checkpoint (no meta.json)")
    if reason is not None:
        raise ConfigError(f"config key 'train.init_from': cannot start from {parent}: {reason}")
    parent_config = checkpoint.run_dir_of(parent) / RUN_CONFIG_FILE
    if parent_config.is_file():
        resume_guard.check_branch(json.loads(parent_config.read_text()), config.to_dict(), parent)
    if checkpoint.read_meta(parent).step >= total_steps(config):
        raise ConfigError(f"config key 'train.init_from': {parent} is at step {checkpoint.read_meta(parent).step}, "
                          f"not before the branch's last step {total_steps(config)}")
    return parent


def record_start(config: ExperimentConfig, start: ResumePoint | None, env: distributed.DistEnv) -> None:
    """Rank 0: the run's history gets the allowed config changes, ``config.json`` the config now in force; the
    ledger is cut back to the resumed step."""
    output_dir = Path(config.output_dir)
    if not env.is_main:
        return
    if start is not None:
        resume_guard.record(output_dir, start.step, start.changes)
        if start.branch and config.train.sample_ledger:
            sample_ledger.inherit(checkpoint.run_dir_of(start.checkpoint), output_dir, start.step)
        sample_ledger.cut_back(output_dir, start.step)
        how = f" on {env.world_size} ranks (re-partitioned)" if start.universal else ""
        what = "branching from the parent checkpoint" if start.branch else "resumed from"
        samples = start.step * config.train.global_batch_size
        log.info("%s %s (step %d, samples seen %d)%s", what, start.checkpoint, start.step, samples, how)
    else:
        log.info("starting from scratch in %s", output_dir)
    write_json_atomic(output_dir / RUN_CONFIG_FILE, config.to_dict())


def caption_selector(data: DataConfig) -> CaptionSelector:
    """The run's caption choice (``data.caption_source``, ``mix``, ``seed``, ``max_caption_chars``,
    ``caption_per_epoch``)."""
    return CaptionSelector(data.caption_source, data.mix, data.seed, data.max_caption_chars,
                           data.caption_per_epoch)


class CaptioningTask:
    """What a run trains and on what: the LMM on (image, caption) samples. The training loop (``train``) asks a
    task for these six things only, so a text-only fuser (``lmm.fusion.training.FuserTask``) trains through the
    same loop: DeepSpeed engine, checkpoints, exact resume, logs, stop signals."""

    def resolve(self, config: ExperimentConfig, env: distributed.DistEnv) -> ExperimentConfig:
        """The config with the paths it implies (``model.init_from`` parts, the tokenizer) filled in."""
        return with_tokenizer_path(with_init_from(config, env))

    def prepare(self, config: ExperimentConfig, env: distributed.DistEnv) -> None:
        """Collective, once the run may write: the run's own tokenizer when it has none."""
        train_tokenizer_once(config, env)

    def build_model(self, config: ExperimentConfig, ds_config: dict) -> torch.nn.Module:
        self.tokenizer = CaptionTokenizer(config.model.tokenizer.path)
        return build_lmm(config.model, self.tokenizer, precision_dtype(config.train.precision),
                         zero3_config=ds_config if config.train.zero_stage == 3 else None)

    def stream(self, config: ExperimentConfig, model: LMM, pieces: list, env: distributed.DistEnv, **resume
               ) -> CaptionStream:
        """This rank's stream; ``resume``: ``positions``, ``consumed_batches``, ``carry`` (see CaptionStream)."""
        d = config.data
        return CaptionStream(
            pieces, caption_selector(d), image_preprocess(model.vision),
            SequenceLayout(self.tokenizer, config.model.bridge.num_queries, d.max_caption_tokens),
            env.rank, env.world_size, config.train.micro_batch_size, seed=d.seed, shuffle_buffer=d.shuffle_buffer,
            **resume)

    def frozen_weights(self, config: ExperimentConfig) -> dict:
        """What its checkpoints record of the frozen weight files (``lmm.training.frozen_weights``)."""
        return frozen_weights.describe(config.model)

    def meter(self, config: ExperimentConfig, device: torch.device) -> StepMeter:
        return step_meter(config, device)


def train(config: ExperimentConfig, task: CaptioningTask | None = None) -> tuple[list[dict], StopOutcome | None]:
    """Run (or resume) one training run of ``task`` (default: the LMM on captions): the logged metric history,
    and how it ended early (requeued or not) when a stop signal cut it short (None when it reached its last
    step). Every check that can refuse the run (config, world size, changed config or weights) happens before
    anything is written."""
    task = task or CaptioningTask()
    env = distributed.init_distributed(config.train.collective_timeout_s)
    distributed.start_heartbeat(env)
    accumulation = check_world_size(config, env.world_size)
    if env.is_main:
        log.info(describe_run(config, env.world_size, accumulation))
    output_dir = Path(config.output_dir)
    pieces = subset(load_manifest(config.data.train_manifest), config.data.num_samples)
    if env.is_main:
        log.info(describe_data(config))
    config = task.resolve(config, env)
    start = find_resume_point(config, env)
    output_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    record_start(config, start, env)
    task.prepare(config, env)
    seed_everything(config.seed)
    set_tf32(config.train.tf32)
    frozen = task.frozen_weights(config)  # fingerprints of the files about to be loaded
    ds_config = build_deepspeed_config(config, env.world_size)
    if start is not None and start.universal is not None:
        elastic.convert(start.checkpoint)
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    model = task.build_model(config, ds_config)
    if env.is_main:
        log.info("held after build %s", json.dumps({"held_after_build": held_parameters(model)}))
    engine = build_engine(config, model, env.world_size, env.is_main, ds_config)
    if env.is_main:
        log.info("parameters %s", json.dumps({"parameters": parameter_counts(model)}))
        if config.model.llm.lora.rank:
            log.info(describe_adapters(model, config.model.llm.lora))

    state = {"step": 0, "consumed_batches": 0}
    if start is not None:
        state = checkpoint.resume(engine, start.checkpoint, start.universal)
        schedule.align(engine.lr_scheduler, state["step"])  # a branch decays from here, unlike its parent
    d = config.data
    data_state = state.get("data")
    if data_state is not None:
        data_state, resharded = reshard(data_state, pieces, d.seed, d.shuffle_buffer, env.world_size, d.num_workers)
        state["consumed_batches"] = 0 if resharded else state["consumed_batches"]
    positions = positions_for_rank(data_state, env.rank, env.world_size, d.num_workers)
    stream = task.stream(config, model, pieces, env, positions=positions, consumed_batches=state["consumed_batches"],
                         carry=carry_for_rank(data_state, env.rank))
    logger = MetricsLogger(output_dir / "tensorboard", enabled=env.is_main, total_steps=stop_step(config))
    ledger = SampleLedger(output_dir, env.rank, config.train.sample_ledger)
    progress = LoaderProgress(d.num_workers, positions, d.max_skip_fraction,
                              carry=data_state.get("carry") if data_state else None)
    trainer = Trainer(config, engine, logger, state["step"], state["consumed_batches"], progress, frozen=frozen,
                      ledger=ledger, meter=task.meter(config, engine.device))
    started = time.monotonic()
    try:
        history = trainer.fit(iter(build_train_loader(stream, config.data.num_workers, engine.device,
                                                      worker_init_fn=forward_to_trainer)))
    finally:
        logger.close()
    if env.is_main:
        how = "stopped early" if trainer.stopped_early else "finished"
        log.info("%s at step %d of %d (samples seen %d) after %.0f s; outputs in %s (checkpoints/, tensorboard/, "
                 "%s)", how, trainer.step, stop_step(config), trainer.samples_seen, time.monotonic() - started,
                 output_dir, RUN_CONFIG_FILE)
    if not trainer.stopped_early:
        return history, None
    return history, requeue(trainer.stop, config.train.max_requeues, env.is_main)


def describe_run(config: ExperimentConfig, world_size: int, accumulation: int) -> str:
    """The run in one line: what it trains on, its batch split, schedule and ZeRO stage, and the config digest."""
    t, d = config.train, config.data
    return (f"run {config.run_name}: {d.caption_source} captions, {budget_samples(config)} samples in "
            f"{total_steps(config)} steps of {t.global_batch_size} (= {t.micro_batch_size} per rank x "
            f"{accumulation} accumulation x {world_size} ranks), {t.schedule} schedule to lr {t.lr:g}, ZeRO-"
            f"{t.zero_stage}, {t.precision}; config digest {config.digest()}; output {config.output_dir}")


def describe_data(config: ExperimentConfig) -> str:
    """Images and captions apart: the subset's images, the manifest's caption counts for the run's fields (when
    it records them), and how many samples the epochs make."""
    d = config.data
    path = Path(d.train_manifest)
    manifest = json.loads((path / MANIFEST_FILE if path.is_dir() else path).read_text())
    fields = list(d.mix) if d.caption_source == "mixed" else [d.caption_source]
    counts = manifest.get("caption_counts", {})
    captions = ", ".join(f"{counts[f]:,} '{f}' captions" for f in fields if f in counts)
    return (f"data: {d.num_samples:,} of the manifest's {manifest.get('num_samples', 0):,} images"
            f"{f' ({captions} in the manifest)' if captions else ''}; {d.epochs} epoch(s) = "
            f"{d.num_samples * d.epochs:,} samples; a list of captions gives one per image per epoch "
            f"({d.caption_per_epoch})")


def step_meter(config: ExperimentConfig, device: torch.device) -> StepMeter:
    """The meter of the perf/* metrics: model FLOPs per sample at a padded length (the run's shapes, built on the
    meta device), and the device's peak FLOP/s when known."""
    shape = model_shape(config)
    peak = (config.train.peak_tflops * 1e12 if config.train.peak_tflops
            else peak_flops_for(torch.cuda.get_device_name(device)) if torch.device(device).type == "cuda" else None)
    return StepMeter(lambda seq_len: training_flops_per_sample(replace(shape, seq_len=seq_len)), peak)
