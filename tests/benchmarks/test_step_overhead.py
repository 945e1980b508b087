"""benchmarks/step_overhead.py runs end to end (2 real DeepSpeed ranks, our Trainer step vs a bare loop) at a tiny
shape and prints both step times and their ratio."""
import re
import subprocess
import sys

from conftest import REPO_ROOT, TINY_OVERRIDES

MODEL = [o for o in TINY_OVERRIDES if o.startswith("model.") and "tokenizer" not in o]


def test_step_overhead_benchmark_runs_and_reports():
    cmd = [sys.executable, "benchmarks/step_overhead.py", "--steps", "2", "--rounds", "2", *MODEL]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    bare = float(re.search(r"bare DeepSpeed loop :\s+([\d.]+) ms/step", out.stdout).group(1))
    ours = float(re.search(r"our training step   :\s+([\d.]+) ms/step", out.stdout).group(1))
    ratio = float(re.search(r"ratio ours / bare   :\s+([\d.]+)", out.stdout).group(1))
    assert bare > 0 and ours > 0 and abs(ratio - ours / bare) < 0.01
