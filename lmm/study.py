"""A scaling study as a graph of jobs: caption sources x budgets x schedule families -> training runs, decay
branches and eval-only jobs, each with the jobs it must wait for, and whether it is already done.

Per caption source and family (``<output_dir>/<source>/<run>``):

- ``cosine``: one run per budget (a nested subset of ``data.num_samples = budget``, warmup per budget).
- ``wsd``: a main run over the largest budget; for each smaller budget, a decay branch (``train.init_from``) from
  the main run's checkpoint at the branch's decay start, reading the main run's data order (``train.budget_samples``
  = the budget). On a cluster the main run trains in legs (``train.max_steps`` = each branch point) so every
  branch can start as soon as its point exists; its own decay gives the largest budget. The branch points are
  also ``train.checkpoint_steps``, so one leg straight to the end (the local backend) leaves them too.
- ``wsd-s``: one run that decays at every budget and returns to the peak LR after each (segments at the decay ends).

Each budget point gets one eval-only job on its checkpoint. Doneness is read from the files (a run's complete
checkpoints, the study's results file), never from a job scheduler, so a re-run resubmits only what is missing.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmm.config import (
    ConfigError,
    EvalConfig,
    ExperimentConfig,
    apply_overrides,
    build_dataclass,
    decay_ends,
    decay_steps,
    load_config,
    read_yaml,
    total_steps,
)

FAMILIES = ("cosine", "wsd", "wsd-s")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """Where the run's step-``step`` checkpoint is (``lmm.training.checkpoint``'s layout)."""
    from lmm.training.checkpoint import checkpoint_root, tag_for

    return checkpoint_root(run_dir) / tag_for(step)
RESULTS_FILE = "results.jsonl"


@dataclass
class SlurmStudyConfig:
    """sbatch options per job kind (they override the batch scripts' headers), e.g. ``[--nodes=2, --time=24:00:00]``."""
    train: list[str] = field(default_factory=list)
    eval: list[str] = field(default_factory=list)
    plot: list[str] = field(default_factory=lambda: ["--ntasks=1", "--time=30"])


@dataclass
class StudyConfig:
    name: str = "study"
    config: str = ""  # the experiment config every run starts from (relative to the study file, or the cwd)
    output_dir: str = "runs/study"
    caption_sources: list[str] = field(default_factory=lambda: ["capsfusion", "synthetic", "raw"])
    budgets: list[int] = field(default_factory=list)  # samples, ascending (e.g. 10M, 50M, 100M)
    schedules: list[Literal["cosine", "wsd", "wsd-s"]] = field(default_factory=lambda: ["wsd"])
    warmup_steps: list[int] = field(default_factory=list)  # per budget for cosine runs; WSD families use the first
    decay_fraction: float = 0.2  # WSD families: share of each budget spent decaying
    decay_shape: Literal["linear", "1-sqrt", "cosine"] = "1-sqrt"
    overrides: list[str] = field(default_factory=list)  # key=value for every run
    benchmarks: list[str] = field(default_factory=list)  # eval benchmarks (default: the runs' own eval set)
    eval_overrides: list[str] = field(default_factory=list)  # eval.key=value for every eval job
    slurm: SlurmStudyConfig = field(default_factory=SlurmStudyConfig)

    @property
    def results(self) -> Path:
        return Path(self.output_dir) / RESULTS_FILE


@dataclass
class Job:
    """One training leg (a run trained to ``stop_step``) or one eval of a checkpoint."""
    name: str
    kind: Literal["train", "eval"]
    source: str
    family: str
    budget: int  # samples of the budget this job serves (training: of its run)
    run_dir: Path
    config_path: str
    overrides: list[str]  # the run's overrides (training legs add train.max_steps)
    stop_step: int  # training: the step this leg trains to; eval: the step of the checkpoint
    after: list[str] = field(default_factory=list)  # names of the jobs this one waits for

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.run_dir, self.stop_step)


def load_study(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """A study YAML (``key.path=value`` overrides apply to it too), checked: every run config it implies must load."""
    path = Path(path)
    study = build_dataclass(StudyConfig, apply_overrides(read_yaml(path), list(overrides)), "study")
    if not study.config:
        raise ConfigError("study key 'config': the experiment config every run starts from is required")
    config = Path(study.config)
    if not config.is_absolute() and (path.parent / config).is_file():
        study = dataclasses.replace(study, config=str(path.parent / config))
    b = study.budgets
    if not b or any(x <= 0 for x in b) or any(x >= y for x, y in zip(b, b[1:])):
        raise ConfigError(f"study key 'budgets': positive sample counts in ascending order, got {b}")
    if study.warmup_steps and len(study.warmup_steps) != len(b):
        raise ConfigError(f"study key 'warmup_steps': one per budget ({len(b)}), got {study.warmup_steps}")
    if not study.caption_sources or not study.schedules:
        raise ConfigError("study keys 'caption_sources' and 'schedules' must not be empty")
    return study


def _label(samples: int) -> str:
    for unit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if samples % unit == 0:
            return f"{samples // unit}{suffix}"
    return str(samples)


def run_config(study: StudyConfig, overrides: list[str]) -> ExperimentConfig:
    return load_config(study.config, overrides)


def _warmup(study: StudyConfig, index: int) -> list[str]:
    return [f"train.warmup_steps={study.warmup_steps[index]}"] if study.warmup_steps else []


def plan_jobs(study: StudyConfig, extra: list[str] = ()) -> list[Job]:
    """Every job of the study in an order that respects dependencies (each job after those it waits for).
    ``extra`` overrides apply to every run after the study's own (e.g. data paths). Loads (validates) every run
    config: a ConfigError here means nothing should be submitted."""
    jobs: list[Job] = []
    for source in study.caption_sources:
        for family in study.schedules:
            base = [*study.overrides, *extra, f"data.caption_source={source}", f"train.schedule={family}"]
            if family == "cosine":
                for i, budget in enumerate(study.budgets):
                    run = f"cosine-{_label(budget)}"
                    jobs += _run_jobs(study, source, family, budget, run,
                                      [*base, f"data.num_samples={budget}", *_warmup(study, i)], [])
            else:
                jobs += _wsd_jobs(study, source, family, base)
    return jobs


def _named(study: StudyConfig, source: str, run: str, overrides: list[str]) -> list[str]:
    run_dir = Path(study.output_dir) / source / run
    return [*overrides, f"run_name={study.name}-{source}-{run}", f"output_dir={run_dir}"]


def _run_jobs(study, source, family, budget, run, overrides, after, legs=()) -> list[Job]:
    """A run's training legs (one per ``legs`` step, then to its end) and the eval of its final checkpoint."""
    overrides = _named(study, source, run, overrides)
    config = run_config(study, overrides)
    run_dir, name = Path(config.output_dir), f"{source}/{run}"
    jobs, previous = [], list(after)
    for step in [*legs, total_steps(config)]:
        last = step == total_steps(config)
        leg = Job(f"train {name}" + ("" if last else f" to step {step}"), "train", source, family, budget, run_dir,
                  study.config, overrides + ([] if last else [f"train.max_steps={step}"]), step, previous)
        jobs.append(leg)
        previous = [leg.name]
    jobs.append(_eval_job(study, jobs[-1], budget))
    return jobs


def _eval_job(study: StudyConfig, train: Job, budget: int) -> Job:
    return Job(f"eval {train.source}/{train.run_dir.name} step {train.stop_step}", "eval", train.source, train.family,
               budget, train.run_dir, train.config_path, train.overrides, train.stop_step, [train.name])


def _wsd_jobs(study: StudyConfig, source: str, family: str, base: list[str]) -> list[Job]:
    largest = study.budgets[-1]
    main_overrides = [*base, f"data.num_samples={largest}", *_warmup(study, 0),
                      f"train.decay_fraction={study.decay_fraction}", f"train.decay_shape={study.decay_shape}"]
    if family == "wsd-s":
        main_overrides.append(f"train.budgets={list(study.budgets[:-1])}")
        run = "wsd-s"
        config = run_config(study, _named(study, source, run, main_overrides))
        ends = decay_ends(config)
        jobs = _run_jobs(study, source, family, largest, run, main_overrides, [], legs=ends[:-1])
        legs = [j for j in jobs if j.kind == "train"]
        evals = [_eval_job(study, leg, budget) for leg, budget in zip(legs[:-1], study.budgets)]
        return [*jobs[:-1], *evals, jobs[-1]]
    run = "wsd-main"
    config = run_config(study, _named(study, source, run, main_overrides))
    batch = config.train.global_batch_size
    points = []  # (budget, branch point: the main run's step where the branch's decay starts)
    for budget in study.budgets[:-1]:
        end = budget // batch
        points.append((budget, end - decay_steps(config, end)))
    branch_points = [p for _, p in points]
    main_overrides.append(f"train.checkpoint_steps={branch_points}")  # a leg may run past them (local backend)
    main = _run_jobs(study, source, family, largest, run, main_overrides, [], legs=branch_points)
    jobs = list(main)
    for (budget, point), leg in zip(points, main):
        parent = checkpoint_path(config.output_dir, point)
        jobs += _run_jobs(study, source, family, budget, f"wsd-{_label(budget)}",
                          [*main_overrides, f"train.budget_samples={budget}", f"train.init_from={parent}"],
                          [leg.name])
    return jobs


# ----------------------------------------------------------------------------------------------------- progress

def newest_step(run_dir: Path) -> int | None:
    """Step of the run's newest complete checkpoint (None: none yet)."""
    from lmm.training.checkpoint import complete_checkpoints, read_meta

    found = complete_checkpoints(run_dir) if run_dir.is_dir() else []
    return read_meta(found[-1]).step if found else None


def eval_record(study: StudyConfig, job: Job, benchmark: str | None = None) -> dict | None:
    """The stored result of an eval job's checkpoint (on ``benchmark``, default any), if any."""
    from lmm.eval.results import read_results

    checkpoint = str(job.checkpoint.resolve())
    found = [r for r in read_results(study.results) if r["checkpoint"] == checkpoint
             and (benchmark is None or r["benchmark"] == benchmark)]
    return found[-1] if found else None


def eval_plan(study: StudyConfig, job: Job) -> tuple[EvalConfig, list]:
    """The protocol an eval job runs under (the run's ``eval`` with the study's overrides) and the benchmark
    targets it must store (ConfigError when one is not configured)."""
    from lmm.eval.evaluation import resolve_benchmarks

    config = run_config(study, [*job.overrides, *(o if o.startswith("eval.") else f"eval.{o}"
                                                  for o in study.eval_overrides)])
    return config.eval, resolve_benchmarks(config.eval, study.benchmarks)


def is_done(study: StudyConfig, job: Job, plan: tuple[EvalConfig, list] | None = None) -> bool:
    """Training leg: the run has a complete checkpoint at or past its stop step. Eval: every benchmark has a
    record of the checkpoint under the same protocol in the study's results file (the evaluator's own rule,
    ``lmm.eval.evaluator.is_stored``: a changed protocol is evaluated again)."""
    from lmm.eval.evaluator import is_stored

    if job.kind == "train":
        step = newest_step(job.run_dir)
        return step is not None and step >= job.stop_step
    eval_config, targets = plan if plan is not None else eval_plan(study, job)
    return all(is_stored(Path(study.results), job.checkpoint, eval_config, t) for t in targets)


def samples_processed(jobs: list[Job]) -> int:
    """Samples the study's training runs processed: each run's newest step minus the step it started from (a
    branch starts at its parent's checkpoint), times its global batch."""
    from lmm.training.checkpoint import RUN_CONFIG_FILE, complete_checkpoints, read_meta

    total = 0
    for run_dir in dict.fromkeys(job.run_dir for job in jobs if job.kind == "train"):
        found = complete_checkpoints(run_dir) if run_dir.is_dir() else []
        if found:
            meta = read_meta(found[-1])
            batch = json.loads((run_dir / RUN_CONFIG_FILE).read_text())["train"]["global_batch_size"]
            total += (meta.step - meta.branch_step) * batch
    return total
