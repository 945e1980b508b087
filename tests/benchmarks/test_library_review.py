"""benchmarks/library_review.py runs end to end at its smallest size and prints every figure of the four reviews
(tar parser, caption metrics, config, loader state)."""
import re
import shutil
import subprocess
import sys

from conftest import REPO_ROOT


def test_library_review_runs_and_prints_every_figure():
    cmd = [sys.executable, "benchmarks/library_review.py", "--images", "200", "--meteor-images", "0", "--shards", "2",
           "--per-shard", "100", "--resume-at", "90", "--image-size", "32", "--loader-batches", "10"]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    rates = re.findall(r"full read\s+(.+?)\s+(\d+) samples/s", text)
    assert len(rates) == 4 and all(int(rate) > 0 for _, rate in rates), text
    assert "same samples from every reader: True" in text
    assert len(re.findall(r"resume at sample 90 of 100: .+ ms  \(10 samples read\)", text)) == 4
    assert re.search(r"ours:\s+\d+ samples \+ \d+ LOST placeholders = 100 items", text)
    for metric in ("BLEU-1..4", "ROUGE-L", "CIDEr-D"):
        line = re.search(rf"{re.escape(metric)}\s+ours\s+[\d.]+ s\s+pycocoevalcap\s+[\d.]+ s.*per image ([\d.e+-]+)",
                         text)
        assert line and float(line.group(1)) < 1e-12, text
    assert "ours (auto -> python) {1: ['a dog']}" in text
    if shutil.which("java"):
        assert "identical tokens: python True, java True" in text
    assert re.search(r"lmm/config.py \d+ lines", text) and "train.zero_stage=7" in text
    assert "ours (positions):          exact True" in text
    assert re.search(r"carry \d+ samples, all distinct True, none already consumed True, .*: True", text)
