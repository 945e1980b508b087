"""benchmarks/mfu.py runs end to end (real model, real DeepSpeed engine) on CPU at a tiny shape, and reports the
FLOPs of lmm.flops for the configuration it ran."""
import os
import re
import subprocess
import sys

from conftest import REPO_ROOT, TINY_OVERRIDES
from lmm.torchrun import free_port
from lmm.config import load_config
from lmm.flops import training_flops_per_sample
from lmm.planning import model_shape

MODEL = [o for o in TINY_OVERRIDES if o.startswith("model.")] + ["model.allow_random_frozen=true", "model.vision.trainable=false",
                                                                 "model.llm.trainable=false"]


def test_mfu_benchmark_runs_and_reports(tmp_path):
    cmd = [sys.executable, "benchmarks/mfu.py", "--config", "configs/demo.yaml", "--micro-batch", "4",
           "--accumulation", "2", "--steps", "2", "--warmup", "1", "--peak-tflops", "0.05", *MODEL]
    env = {**os.environ, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "over 2 steps after 1 warm-up" in text and "micro-batch 4 x accumulation 2" in text
    samples_per_s = float(re.search(r"samples/s: ([\d.]+)", text).group(1))
    total = float(re.search(r"total ([\d.e+-]+)\n", text).group(1))
    mfu = float(re.search(r"MFU: ([\d.]+)%", text).group(1))
    assert samples_per_s > 0 and mfu > 0
    config = load_config(REPO_ROOT / "configs/demo.yaml", MODEL)
    expected = training_flops_per_sample(model_shape(config))
    assert abs(total * 1e9 - expected) / expected < 1e-5
    assert abs(mfu / 100 - expected * samples_per_s / 0.05e12) < 0.002
