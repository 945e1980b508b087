"""benchmarks/data_throughput.py runs end to end on a few generated shards: every pipeline reports a rate, the
ratios follow from them, and planning the 100M-sample epoch is timed."""
import re
import subprocess
import sys

from conftest import REPO_ROOT


def test_data_throughput_benchmark_runs_and_reports(tmp_path):
    cmd = [sys.executable, "benchmarks/data_throughput.py", "--samples", "600", "--per-shard", "100",
           "--image-size", "64", "--workers", "1", "--batch", "8", "--shuffle-buffer", "50", "--rounds", "2",
           "--cpu-normalize", "--dir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rates = {name.strip(): float(rate) for name, rate in
             re.findall(r"^  (\(\w'?\) [^\n]*?)\s+\d+ samples\s+[\d.]+ s\s+([\d.]+) samples/s$", out.stdout, re.M)}
    assert len(rates) == 5 and all(rate > 0 for rate in rates.values()), out.stdout
    ours_over_bare = float(re.search(r"ours/bare = ([\d.]+)", out.stdout).group(1))
    assert abs(ours_over_bare - rates["(a) ours, uint8 to the device"] / rates["(b) bare tar+decode+resize"]) < 0.01
    assert re.search(r"10000 shards: load manifest [\d.]+ s, plan all 8192 slots [\d.]+ s", out.stdout)
