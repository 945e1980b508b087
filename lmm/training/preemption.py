"""Preemption and time limits: checkpoint at the next step boundary, then requeue.

Slurm's early warning (``#SBATCH --signal=USR1@300``; submitit uses USR2) or a SIGTERM only sets a flag here;
the trainer checks the flag of *every* rank (one tiny all-reduce per step), so all ranks stop after the same step,
save a checkpoint with the data position, and then rank 0 decides for all:

- under ``sbatch``: a job Slurm already requeued (``scontrol requeue``, preemption; its restart count went up) is
  left to Slurm; a job that is ending otherwise (``scancel``) is not requeued; a running job is requeued with
  ``scontrol requeue $SLURM_JOB_ID`` up to ``train.max_requeues`` times (counted by ``SLURM_RESTART_COUNT``);
- under submitit, submitit's own checkpoint-and-requeue handler (which this module chained) is called on rank 0;
- anywhere else (torchrun, a workstation) the run just stops; rerunning the same command resumes it.

The restarted job finds the newest complete checkpoint and resumes without being told.

Slurm signals *every* process of a step (``scancel``, ``scontrol requeue``, preemption), DataLoader workers
included. PyTorch's worker set-up makes SIGTERM fatal to a worker, which would end the run without a checkpoint;
``forward_to_trainer`` (the loader's ``worker_init_fn``) replaces that: a worker passes any stop signal to the
training process and keeps serving batches, and the training process owns the shutdown.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from enum import Enum

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)  # USR2: submitit's default warning

log = logging.getLogger(__name__)


class StopOutcome(Enum):
    REQUEUED = "requeued"
    NOT_REQUEUED = "not_requeued"  # stopped after a checkpoint; nothing will restart it


class StopRequest:
    """Remembers that a stop signal arrived; installed once, as early as possible in the process."""

    def __init__(self):
        self.signum: int | None = None
        self.at: float | None = None  # time.monotonic() of the first stop signal
        self._previous: dict[int, object] = {}

    def install(self) -> "StopRequest":
        for signum in STOP_SIGNALS:
            previous = signal.signal(signum, self._record)
            if previous != self._record:  # a second install keeps the handler it chained first
                self._previous[signum] = previous
        return self

    def _record(self, signum: int, frame) -> None:
        """Only a flag (and the time): the trainer announces the stop once all ranks agree on it, so a SIGTERM
        that srun sends because another rank died is reported as that death, not as a preemption."""
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def previous_handler(self, signum: int):
        return self._previous.get(signum)


STOP = StopRequest()  # the process-wide instance; ``launch.pretrain`` installs it before heavy imports


def forward_to_trainer(_worker_id: int = 0) -> None:
    """In a DataLoader worker: pass SIGTERM / SIGUSR1 / SIGUSR2 from anyone else to the training process and keep
    working; a SIGTERM from the training process itself (its shutdown of the workers) still ends the worker.

    The signals are blocked and a thread takes them with ``sigwaitinfo``, which (unlike a Python handler) tells
    who sent each one."""
    trainer = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def relay() -> None:
        while True:
            info = signal.sigwaitinfo(STOP_SIGNALS)
            if info.si_signo == signal.SIGTERM and info.si_pid == trainer:
                os._exit(0)
            try:
                os.kill(trainer, info.si_signo)
            except ProcessLookupError:  # the trainer is gone; PyTorch's watchdog ends this worker
                pass

    threading.Thread(target=relay, name="stop-signal-relay", daemon=True).start()


def under_submitit() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_FOLDER" in os.environ


def requeue(stop: StopRequest, max_requeues: int, is_main: bool) -> StopOutcome:
    """Put the job back in the queue. Collective: rank 0 decides and acts, every rank returns its decision. Call
    after the checkpoint is saved."""
    if under_submitit():
        return _submitit_requeue(stop, is_main)
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id is None:
        if is_main:
            log.warning("not under Slurm: stopped after the checkpoint; rerun the same command to resume")
        return StopOutcome.NOT_REQUEUED
    outcome = _slurm_requeue(job_id, max_requeues) if is_main else None
    return _agreed(outcome)


def _agreed(outcome: StopOutcome | None) -> StopOutcome:
    """Rank 0's outcome on every rank (the others pass None)."""
    from lmm import distributed

    choices = list(StopOutcome)
    index = distributed.all_reduce([choices.index(outcome) if outcome is not None else 0])[0]
    return choices[int(index)]


def job_state(job_id: str) -> tuple[str | None, int | None]:
    """(JobState, Restarts) of a Slurm job from ``scontrol show job``; (None, None) when that fails."""
    try:
        result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None, None
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    restarts = fields.get("Restarts")
    return fields.get("JobState"), int(restarts) if restarts and restarts.isdigit() else None


def _slurm_requeue(job_id: str, max_requeues: int) -> StopOutcome:
    """Rank 0: requeue a running job (at most ``max_requeues`` times). A job Slurm already requeued (``scontrol
    requeue``, preemption: its restart count went up) is left to Slurm; a job that is ending otherwise
    (``scancel``) is not requeued, so a cancel stays a cancel."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    state, now = job_state(job_id)
    if now is not None and now > restarts:
        log.info(f"job {job_id} was requeued by Slurm (restart {now}): it resumes from this checkpoint")
        return StopOutcome.REQUEUED
    if state is not None and state != "RUNNING":
        log.warning(f"job {job_id} is ending ({state}, e.g. scancel): not requeueing; resubmit to continue "
                    "from the checkpoint")
        return StopOutcome.NOT_REQUEUED
    if restarts >= max_requeues:
        log.warning(f"job {job_id} already restarted {restarts} times (train.max_requeues={max_requeues}): "
                    "not requeueing; resubmit to continue from the checkpoint")
        return StopOutcome.NOT_REQUEUED
    log.info(f"requeueing job {job_id} (restart {restarts + 1} of at most {max_requeues})")
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning(f"scontrol requeue {job_id} failed: {result.stderr.strip()}")
        return StopOutcome.NOT_REQUEUED
    return StopOutcome.REQUEUED


def _submitit_requeue(stop: StopRequest, is_main: bool) -> StopOutcome:
    """Hand over to submitit's handler, which calls our Checkpointable's ``checkpoint``, requeues (rank 0) and
    exits. No rank returns normally: a returned value would be stored as the job's result while the requeued
    job still runs."""
    signum = signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]
    handler = stop.previous_handler(signum)  # submitit's checkpoint-and-requeue
    if is_main:
        if not callable(handler):
            log.warning("submitit handler missing: not requeued")
            return StopOutcome.NOT_REQUEUED
        handler(signum, None)  # raises SystemExit after requeueing (or UncompletedJobError when out of budget)
    raise SystemExit(0)
