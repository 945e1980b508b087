"""benchmarks/fuse_throughput.py runs end to end at a tiny shape: both loops report a rate, the ratio follows from
them, lmm-fuse run's fused captions are the bare loop's; the sidecar join is timed."""
import re
import subprocess
import sys

from conftest import REPO_ROOT


def test_fuse_throughput_benchmark_runs_and_reports():
    cmd = [sys.executable, "benchmarks/fuse_throughput.py", "--shards", "2", "--per-shard", "4", "--batch", "2",
           "--new-tokens", "4", "--hidden", "32", "--layers", "1", "--heads", "2", "--vocab", "300", "--rounds", "1",
           "--join-samples", "200"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    bare = float(re.search(r"bare batched generate loop :\s+([\d.]+) captions/s", out.stdout).group(1))
    ours = float(re.search(r"lmm-fuse run               :\s+([\d.]+) captions/s", out.stdout).group(1))
    ratio = float(re.search(r"ratio run / bare           :\s+([\d.]+)", out.stdout).group(1))
    assert bare > 0 and ours > 0 and abs(ratio - ours / bare) < 0.01
    assert "fused captions identical   : True" in out.stdout
    assert re.search(r"sidecar join: one shard of 200 samples .*\n.*shard alone .*\n.*shard \+ sidecar join .*\n"
                     r"  parsing the sidecar        :\s+[\d.]+ ms", out.stdout)
    assert re.search(r"^fusion throughput: 8 captions \(2 shards x 4\), batch 2, 4 new tokens", out.stdout,
                     re.MULTILINE)
