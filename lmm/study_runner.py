"""Running a planned study (``lmm.study``): which jobs are done, the Slurm job ids submitted for the rest
(``<output_dir>/study.json``), and two backends that run what is missing: this machine (torchrun, one job after
another) or Slurm (sbatch with ``--dependency=afterok`` on the unfinished jobs each needs). ``lmm-study``
(``launch.study``) is the command line.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from data_pipeline.files import write_json_atomic
from lmm.config import ConfigError, check_world_size
from lmm.study import (
    Job,
    StudyConfig,
    eval_plan,
    eval_record,
    is_done,
    load_study,
    newest_step,
    plan_jobs,
    run_config,
)

log = logging.getLogger(__name__)

STATE_FILE = "study.json"
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING"}
STUDY_KEYS = set(StudyConfig.__dataclass_fields__)


class Study:
    """The study's jobs with their doneness, and the scheduler ids submitted for them (``study.json``)."""

    def __init__(self, path: str, overrides: list[str]):
        self.path = path
        self.study_overrides = [o for o in overrides if o.split("=", 1)[0].split(".")[0] in STUDY_KEYS]
        self.run_overrides = [o for o in overrides if o not in self.study_overrides]
        self.config = load_study(path, self.study_overrides)
        self.jobs = plan_jobs(self.config, self.run_overrides)
        self.by_name = {job.name: job for job in self.jobs}
        self.eval_plans = {job.name: eval_plan(self.config, job) for job in self.jobs if job.kind == "eval"}
        self.benchmarks = {name: [t.benchmark.name for t in targets] for name, (_, targets) in self.eval_plans.items()}
        self.state_file = Path(self.config.output_dir) / STATE_FILE
        self.submitted = _read_json(self.state_file).get("jobs", {})

    def done(self, job: Job) -> bool:
        return is_done(self.config, job, self.eval_plans.get(job.name))

    def record(self, job: Job, job_id: str) -> None:
        self.submitted[job.name] = {"job_id": job_id, "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_file, {"study": self.path, "jobs": self.submitted})

    def eval_args(self, jobs: list[Job]) -> list[str]:
        return ["--checkpoint", *(str(j.checkpoint) for j in jobs), "--results", str(self.config.results),
                *(["--benchmark", *self.config.benchmarks] if self.config.benchmarks else []),
                *self.config.eval_overrides]

    def train_args(self, job: Job) -> list[str]:
        return ["--config", job.config_path, *job.overrides]


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


# --------------------------------------------------------------------------------------------------- backends

class LocalBackend:
    """One job after another on this machine (torchrun on ``nproc`` ranks). A run's legs are not started one by
    one: its last unfinished leg trains straight through (its branch points are checkpoint steps), which saves a
    start-up per leg (~15 s each on 2 cores); the evals go in one call at the end."""

    def __init__(self, nproc: int):
        self.nproc = nproc

    def run(self, study: Study) -> int:
        from lmm.torchrun import torchrun

        failed: set[str] = set()
        pending_evals = []
        for i, job in enumerate(study.jobs):
            if study.done(job):
                continue
            if job.kind == "train" and any(later.kind == "train" and later.run_dir == job.run_dir
                                           for later in study.jobs[i + 1:]):
                continue  # a later leg of the same run trains through this one
            if any(name in failed for name in job.after):
                log.error(f"skipping {job.name}: a job it needs failed")
                failed.add(job.name)
                continue
            if job.kind == "eval":
                pending_evals.append(job)
                continue
            log.info(f"{job.name}")
            try:
                torchrun(self.nproc, "launch.pretrain", study.train_args(job))
            except RuntimeError as err:
                log.error(f"{job.name} failed: {err}")
                failed.add(job.name)
        if pending_evals:
            log.info(f"evaluating {len(pending_evals)} budget point(s)")
            try:
                torchrun(self.nproc, "launch.evaluate", study.eval_args(pending_evals))
            except RuntimeError as err:
                log.error(f"evaluation failed: {err}")
                failed.update(j.name for j in pending_evals)
        return 1 if failed else 0


class SlurmBackend:
    """sbatch per job with ``--dependency=afterok`` on the jobs it needs that are not done; a plot job at the end."""

    def __init__(self, python: str = sys.executable):
        self.python = python

    @staticmethod
    def state(job_id: str) -> str | None:
        """The job's state from accounting (sacct), else the queue (squeue); None when Slurm knows nothing."""
        for cmd in (["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],
                    ["squeue", "-h", "-j", job_id, "-o", "%T"]):
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.split()
            except (OSError, subprocess.TimeoutExpired):
                continue
            if out:
                return out[-1].rstrip("+")
        return None

    def active_id(self, study: Study, job: Job) -> str | None:
        entry = study.submitted.get(job.name)
        if entry and self.state(entry["job_id"]) in ACTIVE:
            return entry["job_id"]
        return None

    def sbatch(self, study: Study, name: str, options: list[str], command: list[str], after: list[str],
               condition: str = "afterok") -> str:
        logs = Path(study.config.output_dir).resolve() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        depend = [f"--dependency={condition}:{':'.join(after)}", "--kill-on-invalid-dep=yes"] if after else []
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
        cmd = ["sbatch", "--parsable", f"--job-name={study.config.name}-{slug}", f"--output={logs}/{slug}-%j.out",
               *depend, *options, *command]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "LMM_PYTHON": self.python})
        if result.returncode:
            raise RuntimeError(f"sbatch failed for {name}: {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def run(self, study: Study) -> int:
        ids: dict[str, str] = {}  # job name -> id of its queued or running Slurm job
        submitted = False
        if not Path("slurm/launch.sh").is_file():
            raise ConfigError("run lmm-study from the repository root: the batch scripts run there (slurm/)")
        for job in study.jobs:
            if study.done(job):
                log.info(f"done       {job.name}")
                continue
            active = self.active_id(study, job)
            if active:
                ids[job.name] = active
                log.info(f"queued     {job.name} (job {active})")
                continue
            after = [ids[name] for name in job.after if name in ids]
            if job.kind == "train":
                options, command = study.config.slurm.train, ["slurm/pretrain.sh", *study.train_args(job)]
            else:
                options, command = study.config.slurm.eval, ["slurm/eval.sh", *study.eval_args([job])]
            ids[job.name] = self.sbatch(study, job.name, options, command, after)
            study.record(job, ids[job.name])
            submitted = True
            waits = f" after {','.join(after)}" if after else ""
            log.info(f"submitted  {job.name} (job {ids[job.name]}{waits})")
        evals = [ids[j.name] for j in study.jobs if j.kind == "eval" and j.name in ids]
        if evals and submitted:  # else the plot job of an earlier pass still waits for the queued evals
            plot = [self.python, "-m", "launch.study", "plot", study.path, *study.study_overrides,
                    *study.run_overrides]
            job_id = self.sbatch(study, "plot", study.config.slurm.plot,
                                 ["--wrap", " ".join(map(_quote, plot))], evals, "afterany")
            log.info(f"submitted  plot (job {job_id}, after every eval)")
        return 0


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


# ------------------------------------------------------------------------------------------------ status, plot

def status_rows(study: Study, slurm: bool) -> list[tuple[str, str, str, str]]:
    """(job, state, step / total, CIDEr x100 [95% CI]) per job."""
    rows = []
    for job in study.jobs:
        entry = study.submitted.get(job.name)
        if study.done(job):
            state = "done"
        elif entry and slurm:
            state = (SlurmBackend.state(entry["job_id"]) or "unknown").lower() + f" ({entry['job_id']})"
        else:
            state = "missing"
        progress, cider = "", ""
        if job.kind == "train":
            progress = f"{min(newest_step(job.run_dir) or 0, job.stop_step)} / {job.stop_step}"
        else:
            record = eval_record(study.config, job)
            if record is not None:
                value, ci = record["metrics"]["CIDEr"], record.get("intervals", {}).get("CIDEr")
                cider = f"{100 * value:.2f}" + (f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "")
        rows.append((job.name, state, progress, cider))
    return rows


def write_plot(study: Study) -> dict[str, Path] | None:
    from lmm.eval.plotting import plot
    from lmm.eval.results import read_results

    records = read_results(study.config.results)
    if not any(r.get("budget_point") for r in records):
        log.info(f"no budget point evaluated yet in {study.config.results}: no plot")
        return None
    written = plot(records, Path(study.config.output_dir) / "scaling")
    log.info(f"plot: {written['png']} (+ .svg, .csv, table {written['md']})")
    return written


def check_world_sizes(study: Study, backend: str, nproc: int) -> None:
    """The batch split must work for the world size each training job will get (ConfigError otherwise)."""
    if backend == "local":
        world = nproc
    else:
        flags = dict(re.findall(r"--(nodes|ntasks-per-node)=(\d+)", " ".join(study.config.slurm.train)))
        if len(flags) < 2:
            return  # the batch scripts' headers decide; the run checks at start
        world = int(flags["nodes"]) * int(flags["ntasks-per-node"])
    for job in study.jobs:
        if job.kind == "train":
            check_world_size(run_config(study.config, job.overrides), world)
