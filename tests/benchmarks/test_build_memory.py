"""benchmarks/build_memory.py runs end to end at a tiny shape (generated LLaMA directory and open_clip tower file,
train build, lean checkpoint through DeepSpeed, eval build, each measured in its own subprocess) and prints every
row of its report with positive figures."""
import json
import os
import re
import struct
import subprocess
import sys

from conftest import REPO_ROOT
from safetensors import safe_open

NUMBER = r"([\d.]+) (GB|MB|kB)"


def to_bytes(value: str, unit: str) -> float:
    return float(value) * {"GB": 1e9, "MB": 1e6, "kB": 1e3}[unit]


def test_build_memory_benchmark_reports_every_figure(tmp_path):
    cmd = [sys.executable, "benchmarks/build_memory.py", "--llm-shape", "tiny", "--workdir", str(tmp_path),
           "--shard-gb", "0.0002"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout

    for label in ("train build (build_lmm)", "eval build (load_eval_model, lean ckpt)"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        held, peak, private_peak = (to_bytes(*re.match(NUMBER, cells[i]).groups()) for i in (1, 2, 4))
        build_s, touch_s, total_s, bare_s, fresh_s = (float(re.match(r"([\d.e-]+) s", cells[i]).group(1))
                                                      for i in (5, 6, 7, 8, 10))
        assert held > 0 and peak > 0 and private_peak > 0 and build_s > 0 and touch_s >= 0 and bare_s > 0
        assert fresh_s > 0 and total_s >= build_s
        assert float(cells[3]) > 0 and float(cells[9]) > 0 and float(cells[11]) > 0
        assert abs(float(cells[3]) - peak / held) < 0.01 * peak / held + 0.002
        assert cells[13] in ("PASS", "FAIL") and cells[14] in ("PASS", "FAIL")

    # the paper config's accounting: the bridge's 128,322,048 parameters are the trainable state (x 14 bytes)
    assert "parameters: trainable 128,322,048" in text
    lean = float(re.search(r"lean checkpoint\s+:\s+([\d.]+) GB", text).group(1))
    assert abs(lean - 128_322_048 * 14 / 1e9) < 1e-3
    assert re.search(r"lean / trainable state\s+: 1\.000\s+\(target <= 1\.05\) PASS", text)
    real = int(re.search(r"total ([\d,]+) B", text).group(1).replace(",", ""))
    assert real > 0 and re.search(r"real / trainable state = [\d.]+", text)

    # the generated files are what the build read: a sharded LLaMA directory and an open_clip-layout tower file
    llama = tmp_path / "llama-tiny-bf16"
    index = json.loads((llama / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and (llama / "config.json").is_file() and (llama / "tokenizer.model").is_file()
    with safe_open(str(llama / shards[0]), "numpy") as handle:  # the safetensors library reads what we wrote
        assert handle.metadata() == {"format": "pt"} and set(handle.keys()) <= set(index["weight_map"])
    tower = tmp_path / "EVA01-tiny-14-bf16" / "open_clip_model.safetensors"
    with open(tower, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    assert all(name.startswith("visual.trunk.") for name in header if name != "__metadata__")
    assert (tmp_path / "run-tiny-EVA01-tiny-14-bf16" / "checkpoints" / "global_step1" / "frozen_weights.json").is_file()
