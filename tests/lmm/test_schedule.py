"""The LR schedules (lmm.training.schedule): cosine, WSD and WSD-S values at their phase boundaries, the first
update trains (DeepSpeed's WarmupCosineLR gave it lr 0), and the config checks of the WSD families."""
import math

import pytest
import torch

from conftest import REPO_ROOT
from lmm.config import ConfigError, decay_ends, load_config, total_steps
from lmm.training.schedule import align, lr_at, scheduler_factory

PAPER = ["model.allow_random_frozen=true"]


def paper(scale: str, *overrides: str):
    return load_config(REPO_ROOT / f"configs/capsfusion_{scale}.yaml", [*PAPER, *overrides])


@pytest.mark.parametrize("scale,warmup", [("10m", 500), ("100m", 2000)])
def test_paper_cosine(scale, warmup):
    """Linear warmup to 3e-4 at the end of warmup, cosine down to 3e-5 at the last update, never zero."""
    config = paper(scale)
    total = total_steps(config)
    lrs = [lr_at(config, step) for step in range(total)]
    assert lrs[0] == pytest.approx(3e-4 / warmup) and lrs[0] > 0  # the first update trains
    assert lrs[warmup // 2 - 1] == pytest.approx(1.5e-4)
    assert lrs[warmup - 1] == pytest.approx(3e-4) == max(lrs)
    assert lrs[-1] == pytest.approx(3e-5) == min(lrs[warmup:])
    assert all(a >= b for a, b in zip(lrs[warmup - 1:], lrs[warmup:]))
    assert lrs[warmup - 1 + (total - warmup) // 2] == pytest.approx(1.65e-4, rel=1e-3)  # half-way: the mean


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_phases(shape):
    """Warmup, then the peak until the last 20% of the run, then a decay that reaches min_lr at the last update."""
    config = paper("10m", "train.schedule=wsd", f"train.decay_shape={shape}")
    total, warmup = total_steps(config), 500  # 1220 steps
    start = total - round(0.2 * total)  # 976: the last step at peak LR
    assert lr_at(config, 0) == pytest.approx(3e-4 / warmup)
    assert lr_at(config, warmup - 1) == lr_at(config, start - 1) == pytest.approx(3e-4)  # stable
    assert lr_at(config, total - 1) == pytest.approx(3e-5)
    middle = lr_at(config, start + (total - start) // 2 - 1)  # half-way through the decay
    expected = 3e-4 - 2.7e-4 * (0.5 if shape == "linear" else math.sqrt(0.5))
    assert middle == pytest.approx(expected, rel=1e-6)
    decay = [lr_at(config, s) for s in range(start - 1, total)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_wsd_branch_matches_main_until_its_decay():
    """A decay branch (smaller train.budget_samples) is the main run's schedule up to the branch's decay start,
    and ends at min_lr at its own budget."""
    main = paper("100m", "train.schedule=wsd", "train.warmup_steps=500")
    branch = paper("100m", "train.schedule=wsd", "train.warmup_steps=500", "train.budget_samples=10000000")
    steps = total_steps(branch)
    assert steps == 1220 and decay_ends(branch) == [1220]
    start = steps - round(0.2 * steps)
    assert [lr_at(branch, s) for s in range(start)] == [lr_at(main, s) for s in range(start)]
    assert lr_at(branch, start) < lr_at(main, start) == 3e-4
    assert lr_at(branch, steps - 1) == pytest.approx(3e-5)


def test_wsd_s_returns_to_peak_after_each_decay():
    config = paper("100m", "train.schedule=wsd-s", "train.warmup_steps=500", "train.budgets=[10000000,50000000]")
    assert decay_ends(config) == [1220, 6103, 12207]
    for end in decay_ends(config):
        assert lr_at(config, end - 1) == pytest.approx(3e-5)  # the update before the budget's checkpoint
    assert lr_at(config, 1220) == lr_at(config, 6103) == 3e-4  # back at the peak, from the decayed weights
    assert lr_at(config, 1220 - round(0.2 * 1220) - 1) == 3e-4 > lr_at(config, 1220 - round(0.2 * 1220))


@pytest.mark.parametrize("overrides,match", [
    (["train.schedule=wsd", "train.warmup_steps=1000", "data.num_samples=10000000"], "before step 1000"),
    (["train.schedule=wsd-s", "train.warmup_steps=500", "train.budgets=[10000000,11000000]"], "decay_fraction"),
    (["train.schedule=wsd-s", "train.budgets=[200000000]"], "train.budgets"),
    (["train.schedule=cosine", "train.budgets=[10000000]"], "train.budgets"),
    (["train.schedule=wsd", "train.decay_fraction=0"], "decay_fraction"),
    (["train.budget_samples=200000000"], "train.budget_samples"),
])
def test_bad_schedules_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        paper("100m", *overrides)


def test_lambda_scheduler_follows_lr_at_and_aligns_after_a_load():
    """The object DeepSpeed steps: optimizer LR == lr_at(step) after each step; ``align`` fixes the LR after a
    checkpoint load restored another schedule's value (a branch loading its parent's optimizer state)."""
    config = paper("10m", "train.schedule=wsd")
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.train.lr)
    scheduler = scheduler_factory(config)(optimizer)
    for step in range(5):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(config, step))
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None]  # a plain function: nothing of the parent's schedule is saved
    optimizer.param_groups[0]["lr"] = 1.0  # what a loaded optimizer state might hold
    align(scheduler, 1000)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(config, 1000))
