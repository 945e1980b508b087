"""The learning-rate schedule: linear warmup, then cosine decay, or WSD (warmup, stable, decay) and WSD-S.

``lr_at(config, step)`` is the LR of the update that follows ``step`` completed optimizer steps, so the first
update (step 0) already trains at ``lr / warmup_steps``. It is the project's own function because DeepSpeed's
schedulers cannot serve: ``WarmupCosineLR`` applies lr 0.0 to the first two updates (measured: updates 1 and 2
of the 10M config), and neither it nor ``WarmupDecayLR`` has a stable phase or a ``1-sqrt`` decay. DeepSpeed
still owns the scheduler object (``deepspeed.initialize(lr_scheduler=...)``: stepped with the optimizer, saved
in and restored from its checkpoints).

- ``cosine``: warmup to ``lr``, then cosine to ``min_lr`` at the run's last step.
- ``wsd``: warmup, constant ``lr``, then the last ``decay_fraction`` of the run decays to ``min_lr``
  (``decay_shape``: ``linear`` or ``1-sqrt``, Hägele et al. 2024). A decay *branch* of a longer WSD run is the
  same function with a smaller ``train.budget_samples``: it equals the main run's LR up to its decay start.
- ``wsd-s``: one run decays at each of ``train.budgets`` (and at its end) and returns to ``lr`` after each
  decay, continuing from the decayed weights (Wen et al. 2024).

The steps where a decay ends (``decay_ends``) are a run's *budget points*: the checkpoints a scaling curve uses.
"""
from __future__ import annotations

import math

from lmm.config import ExperimentConfig, decay_ends, decay_steps, total_steps


def _decayed(shape: str, progress: float) -> float:
    """Fraction of the way from ``lr`` (0) to ``min_lr`` (1) at ``progress`` in (0, 1] of a decay."""
    if shape == "linear":
        return progress
    if shape == "1-sqrt":
        return math.sqrt(progress)
    return 0.5 * (1 - math.cos(math.pi * progress))  # cosine


def lr_at(config: ExperimentConfig, step: int) -> float:
    """The LR of update ``step + 1``, i.e. after ``step`` completed optimizer steps."""
    t = config.train
    update = step + 1  # 1-based: the first update is update 1
    if update <= t.warmup_steps:
        return t.lr * update / t.warmup_steps
    span = t.lr - t.min_lr
    if t.schedule == "cosine":
        end = total_steps(config)
        progress = min(1.0, (update - t.warmup_steps) / max(1, end - t.warmup_steps))
        return t.min_lr + span * 0.5 * (1 + math.cos(math.pi * progress))
    ends = decay_ends(config)
    end = next((e for e in ends if update <= e), ends[-1])
    length = decay_steps(config, end)
    progress = min(1.0, (update - (end - length)) / length)
    if progress <= 0:
        return t.lr
    return t.lr - span * _decayed(t.decay_shape, progress)


def scheduler_factory(config: ExperimentConfig):
    """What ``deepspeed.initialize(lr_scheduler=...)`` takes: optimizer -> a ``LambdaLR`` following ``lr_at``.

    The multiplier is a plain function (not an object): ``LambdaLR`` then keeps no state of it in checkpoints,
    so a decay branch resumed from its parent's checkpoint follows its own schedule, not the parent's."""
    from torch.optim.lr_scheduler import LambdaLR

    def factory(optimizer):
        def multiplier(step: int) -> float:
            return lr_at(config, step) / config.train.lr

        return LambdaLR(optimizer, multiplier)

    return factory


def align(scheduler, step: int) -> None:
    """Set the optimizer's LR for the update after ``step`` (after a checkpoint load: the optimizer state it
    restores holds the LR the saving run would have used next, which a decay branch must replace)."""
    scheduler.last_epoch = step - 1
    scheduler.step()
