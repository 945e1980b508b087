"""Checkpoint watcher: evaluate each complete checkpoint of a run once, as it lands.

A checkpoint counts once its ``meta.json`` exists (written last, atomically), so a half-written one is never read.
Whether a checkpoint is done is asked of the results store (``is_done``: ``lmm.eval.evaluator``'s, the rule a plain
eval job follows too), so a restarted watcher repeats nothing. The watcher stops when the run's final checkpoint
(the epoch's last step, from the run's ``config.json``) is evaluated, when a checkpoint at or past
``stop_after_step`` exists and every checkpoint up to it is evaluated, or after ``idle_timeout`` seconds without a
new checkpoint. Under several ranks, rank 0 decides each poll and ``sync`` hands its decision to every rank, so all
ranks evaluate the same checkpoints together.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lmm.config import config_from_dict, total_steps
from lmm.training.checkpoint import RUN_CONFIG_FILE, complete_checkpoints, read_meta


@dataclass
class WatchPolicy:
    poll_seconds: float = 60.0
    idle_timeout: Optional[float] = None  # seconds without a new checkpoint; None waits for the final one
    stop_after_step: Optional[int] = None


@dataclass
class Poll:
    pending: list[str]  # checkpoints to evaluate now, oldest first
    finished: Optional[str]  # why the watch ends after them, or None


class CheckpointWatcher:
    def __init__(self, run_dir: str | Path, is_done: Callable[[Path], bool], policy: WatchPolicy,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.run_dir, self.is_done, self.policy = Path(run_dir), is_done, policy
        self.clock, self.sleep = clock, sleep
        self.last_activity = clock()

    def final_step(self) -> Optional[int]:
        """The run's last step (end of its epoch), once its config.json exists."""
        run_config = self.run_dir / RUN_CONFIG_FILE
        if self.run_dir.name == "checkpoints":
            run_config = self.run_dir.parent / RUN_CONFIG_FILE
        if not run_config.is_file():
            return None
        return total_steps(config_from_dict(json.loads(run_config.read_text())))

    def poll(self) -> Poll:
        stop_after = self.policy.stop_after_step
        found = [(read_meta(c).step, c) for c in complete_checkpoints(self.run_dir)] if self.run_dir.is_dir() else []
        wanted = [(step, c) for step, c in found if stop_after is None or step <= stop_after]
        pending = [str(c) for _, c in wanted if not self.is_done(c)]
        steps = {step for step, _ in found}
        final = self.final_step()
        if final is not None and final in steps and (stop_after is None or final <= stop_after):
            return Poll(pending, f"the run's final checkpoint (step {final}) is evaluated")
        if stop_after is not None and steps and max(steps) >= stop_after:
            return Poll(pending, f"every checkpoint up to step {stop_after} is evaluated")
        if not pending and self.policy.idle_timeout is not None \
                and self.clock() - self.last_activity >= self.policy.idle_timeout:
            return Poll(pending, f"no new checkpoint for {self.policy.idle_timeout:g} s")
        return Poll(pending, None)

    def run(self, evaluate: Callable[[Path], None], sync: Callable[[Optional[Poll]], Poll] = lambda poll: poll,
            is_main: bool = True) -> str:
        """Poll, evaluate, sleep until finished; returns why it stopped."""
        while True:
            poll = sync(self.poll() if is_main else None)
            for checkpoint in poll.pending:
                evaluate(Path(checkpoint))
                self.last_activity = self.clock()
            if poll.finished:
                return poll.finished
            if not poll.pending:
                self.sleep(self.policy.poll_seconds)
