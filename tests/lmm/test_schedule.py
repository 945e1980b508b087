import pytest
import torch
from deepspeed.runtime.lr_schedules import WarmupCosineLR

from conftest import REPO_ROOT
from lmm.config import load_config
from lmm.training.deepspeed_config import build_deepspeed_config


@pytest.mark.parametrize("scale,warmup", [("10m", 500), ("100m", 2000)])
def test_paper_schedule(scale, warmup):
    """Linear warmup to 3e-4 at the end of warmup, cosine down to 3e-5 at the last step (DeepSpeed's scheduler)."""
    config = load_config(REPO_ROOT / f"configs/capsfusion_{scale}.yaml", ["model.allow_random_frozen=true"])
    ds = build_deepspeed_config(config, world_size=256)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=ds["optimizer"]["params"]["lr"])
    schedule = WarmupCosineLR(optimizer, **ds["scheduler"]["params"])
    total = ds["scheduler"]["params"]["total_num_steps"]
    lrs = {}
    for step in range(total + 1):
        schedule.step(step)
        lrs[step] = optimizer.param_groups[0]["lr"]
    assert lrs[warmup // 2] == pytest.approx(1.5e-4)
    # DeepSpeed's cosine phase starts one step in, so the peak is 3e-4 to within 1e-4 relative
    assert lrs[warmup] == pytest.approx(3e-4, rel=1e-4)
    assert max(lrs.values()) == pytest.approx(3e-4, rel=1e-4)
    assert lrs[total] == pytest.approx(3e-5)
    assert all(lrs[s] >= lrs[s + 1] for s in range(warmup, total))
