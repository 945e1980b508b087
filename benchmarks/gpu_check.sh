#!/usr/bin/env bash
# GPU readiness check for ONE GPU machine (BENCHMARKS.md, "GPU readiness (`benchmarks/gpu_check.sh`)").
#
#   benchmarks/gpu_check.sh                        # results under ./gpu_check_out, or under $OUT if set
#
# Needs this checkout, its .venv from `make setup` (or LMM_PYTHON), one CUDA GPU, no network. Sized for one
# NVIDIA H200 (141 GB) and 16 CPU cores: the whole script stays within 8 minutes. Every step runs under
# `timeout`, capped on its own and by a global budget (BUDGET_S, default 450 s), so a hung step cannot eat the
# steps after it. A failed step is reported and the later steps still run; the exit status is 1 if any step
# failed (or was skipped), 0 if all passed.
#
# Steps (all output under $OUT; each step's full log in $OUT/<step>.log):
#   0 env     torch, CUDA, DeepSpeed's accelerator and comm backend, GPU name and total memory (torch and
#             nvidia-smi; the total memory in GiB feeds lmm-plan). Without a CUDA device the GPU steps are
#             skipped (ALLOW_CPU=1 runs them anyway: a plumbing test only, the figures mean nothing).
#   1 demo    python -m launch.demo --nproc 1 --out $OUT/demo train.precision=bf16
#             the embedded default end to end on one rank (CUDA accelerator, NCCL): toy world -> training of
#             the tiny model for each of the 3 caption sources -> eval of every checkpoint -> scaling plot.
#             Wall time and the final table (run, step, samples seen, CIDEr, BLEU-4, ROUGE-L). The demo world
#             is NOT shrunk (6,144 samples, 96 steps of 64 per run): expected ~3 minutes, mostly process start-up
#             (3 trainings + 1 eval job), checkpoints and eval of 21 checkpoints, not training, so shrinking
#             data.num_samples would save little; and one rank with accumulation 2 runs the same optimisation
#             as `make demo`'s 2 ranks, so its CIDEr is comparable. Capped at DEMO_TIMEOUT_S (240 s); to shrink
#             it anyway: DEMO_OVERRIDES="train.precision=bf16 data.num_samples=3072 train.checkpoint_every=8".
#   2 plan    python -m launch.plan --config configs/capsfusion_10m.yaml --nodes 1 --gpus-per-node 1
#                 --gpu-mem-gb <GiB from step 0> --json $OUT/plan.json <paper overrides>
#     mfu     python benchmarks/mfu.py --config configs/capsfusion_10m.yaml --micro-batch <lmm-plan's>
#                 --steps 30 --warmup 3 <paper overrides>
#             paper overrides: train.zero_stage=2 model.llm.trainable=false model.allow_random_frozen=true
#             (the config's own defaults for ZeRO and freezing, stated explicitly; random weights, as mfu.py
#             builds). EVA01-g-14 frozen, bridge trained, LLaMA-2-7B frozen, bf16, synthetic full-length
#             samples. If the planned micro-batch runs out of GPU memory, the MFU step is marked failed (the
#             plan did not fit) and, time permitting (RETRY_MIN_S, 100 s), re-run at half that micro-batch with
#             at most 15 timed steps, so that figures still come back.
#   3 memory  peak GPU memory of that MFU run (torch max allocated / max reserved over the training steps, and
#             nvidia-smi's memory.used sampled every 0.5 s: the whole device, CUDA context included) next to
#             lmm-plan's estimate for the micro-batch that ran, with their ratios.
# At the end a markdown summary (for BENCHMARKS.md) is printed and written to $OUT/summary.md.
#
# Knobs (environment): OUT, LMM_PYTHON (default .venv/bin/python, relative to the repository root), BUDGET_S,
#   DEMO_TIMEOUT_S, DEMO_OVERRIDES (default "train.precision=bf16"), CONFIG (default configs/capsfusion_10m.yaml),
#   MFU_STEPS (30), MFU_WARMUP (3), MFU_MICRO_BATCH (skip lmm-plan's choice), MFU_PEAK_TFLOPS (needed off the
#   known GPUs), GPU_MEM_GB (instead of the measured total), RETRY_MIN_S, ALLOW_CPU=1.
set -uo pipefail

OUT_DIR=${OUT:-gpu_check_out}
if ! mkdir -p "$OUT_DIR" || ! OUT_DIR=$(cd "$OUT_DIR" && pwd); then
    echo "cannot create output folder $OUT_DIR" >&2
    exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || { echo "cannot cd to the repository root" >&2; exit 2; }

PY=${LMM_PYTHON:-.venv/bin/python}
BUDGET_S=${BUDGET_S:-450}
DEMO_TIMEOUT_S=${DEMO_TIMEOUT_S:-240}
CONFIG=${CONFIG:-configs/capsfusion_10m.yaml}
MFU_STEPS=${MFU_STEPS:-30}
MFU_WARMUP=${MFU_WARMUP:-3}
read -r -a DEMO_ARGS <<< "${DEMO_OVERRIDES-train.precision=bf16}"
PAPER_ARGS=(train.zero_stage=2 model.llm.trainable=false model.allow_random_frozen=true)
PEAK_ARGS=()
if [[ -n ${MFU_PEAK_TFLOPS:-} ]]; then PEAK_ARGS=(--peak-tflops "$MFU_PEAK_TFLOPS"); fi
MFU_MIN_S=150                       # kept back for plan + MFU while the env step and the demo run
RETRY_MIN_S=${RETRY_MIN_S:-100}     # needed to start an MFU re-run after an out-of-memory failure

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=.

if [[ ! -x $PY ]]; then
    echo "no python at $PY: run 'make setup' first (or set LMM_PYTHON)" >&2
    exit 2
fi
if ! command -v timeout > /dev/null; then
    echo "coreutils 'timeout' is required" >&2
    exit 2
fi
HAVE_SMI=0
if command -v nvidia-smi > /dev/null; then HAVE_SMI=1; fi

# Results of an earlier run in the same folder would be mixed in (and the demo would resume its checkpoints).
for name in demo env.log env.json nvidia-smi.txt demo.log demo_table.txt plan.log plan.json mfu.log mfu_retry.log \
    mfu_nvidia_smi_mib.txt mfu_retry_nvidia_smi_mib.txt mfu_run.json memory.json steps.tsv summary.md report.py; do
    rm -rf "${OUT_DIR:?}/$name"
done
STEPS_TSV=$OUT_DIR/steps.tsv
: > "$STEPS_TSV"

# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
banner() { printf '\n==== [%s] %s ====\n' "$1" "$2"; }

seconds_left() { echo $((BUDGET_S - SECONDS)); }

now() { date +%s.%N; }

since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# record NAME STATUS SECONDS NOTE   (STATUS: PASS, FAIL or SKIP; the summary reads steps.tsv)
record() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STEPS_TSV"
    printf '[%s] %s (%s s)%s\n' "$1" "$2" "$3" "${4:+: $4}"
}

# run_timed NAME CAP_S RESERVE_S LOG CMD...: CMD under `timeout`, for at most CAP_S and never into the last
# RESERVE_S of the budget; its stdout and stderr go to LOG. Sets STEP_RC (124: timed out / no time) and STEP_S.
run_timed() {
    local name=$1 cap=$2 reserve=$3 log=$4 limit start
    shift 4
    limit=$(($(seconds_left) - reserve))
    if ((limit > cap)); then limit=$cap; fi
    STEP_S=0
    if ((limit < 10)); then
        echo "no time left in the ${BUDGET_S} s budget" | tee "$log"
        STEP_RC=124
        return
    fi
    local shown="$*"
    shown=${shown//$'\n'/ }
    if ((${#shown} > 400)); then shown="${shown:0:400} ..."; fi
    echo "+ timeout ${limit}s $shown" | tee "$log"
    echo "  (log: $log)"
    start=$(now)
    timeout -k 15 "$limit" "$@" >> "$log" 2>&1
    STEP_RC=$?
    STEP_S=$(since "$start")
    if ((STEP_RC == 124 || STEP_RC == 137)); then
        echo "[$name] timed out after ${limit} s" | tee -a "$log"
    fi
}

show_tail() { echo "---- last lines of $1 ----"; grep -v '^\[20[0-9-]* [0-9:,]*\] \[' "$1" | tail -n "${2:-15}"; }

leftover_gpu_processes() {
    if ((HAVE_SMI)); then
        local apps
        apps=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2> /dev/null)
        if [[ -n $apps ]]; then
            echo "WARNING: processes still on the GPU after $1 (later measurements may be disturbed):"
            echo "$apps"
        fi
    fi
}

# The helper: probes the environment, parses the logs, compares memory, writes the summary.
cat > "$OUT_DIR/report.py" << 'PYEOF'
"""gpu_check.sh's helper: `report.py env`, `report.py mfu LOG`, `report.py memory`, `report.py summary`
(standard library only, except `env`, which imports torch and DeepSpeed)."""
import json
import os
import re
import sys
from pathlib import Path

OUT = Path(os.environ["GPU_CHECK_OUT"])


def read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def load_json(path):
    try:
        return json.loads(read(path))
    except ValueError:
        return {}


def mfu_figures(text):
    """The figures benchmarks/mfu.py printed, as a dict (missing ones absent)."""
    patterns = {
        "device": r"device: (.*?); config",
        "setup": r"(precision \S+, ZeRO-\d, micro-batch \d+ x accumulation \d+, sequence \d+ tokens)",
        "built_s": r"built in ([\d.]+) s",
        "step": r"step time: median ([\d.]+) ms \(min ([\d.]+), max ([\d.]+)\) over (\d+) steps after (\d+) warm-up",
        "samples_s": r"samples/s: ([\d.]+)\s+tokens/s: (\d+)",
        "tflops": r"achieved: ([\d.e+-]+) TFLOP/s\s+peak: ([\d.e+-]+) TFLOP/s\s+MFU: ([\d.]+)%",
        "gflop": r"total ([\d.e+-]+)\n",
        "memory": r"max GPU memory allocated: ([\d.]+) GiB(?:\s+reserved: ([\d.]+) GiB)?",
    }
    found = {}
    for key, pattern in patterns.items():
        match = re.search(pattern, text)
        if match:
            found[key] = match.groups() if len(match.groups()) > 1 else match.group(1)
    return found


def smi_peak_gib(path):
    values = [float(v) for v in read(path).split() if re.fullmatch(r"[\d.]+", v)]
    return max(values) / 1024 if values else None


def planned_gib(plan, micro_batch):
    """lmm-plan's per-GPU estimate for ``micro_batch`` (its formula: states + micro x activations + headroom)."""
    stage = next((s for s in plan.get("stages", []) if s["stage"] == plan.get("zero_stage")), None)
    if stage is None or micro_batch is None:
        return None
    states, act, headroom = stage["model_states_gb"], stage["activations_gb_per_sample"], plan["headroom_gb"]
    return {"total": states + micro_batch * act + headroom, "states": states, "act_per_sample": act,
            "headroom": headroom, "micro_batch": micro_batch}


def memory():
    """Peak memory of the MFU run next to lmm-plan's estimate; writes memory.json; exit 1 if figures are missing."""
    run = load_json(OUT / "mfu_run.json")
    figures = mfu_figures(read(run.get("log", "")))
    plan = load_json(OUT / "plan.json")
    est = planned_gib(plan, run.get("micro_batch"))
    result = {"micro_batch": run.get("micro_batch"), "planned": est,
              "nvidia_smi_peak_gib": smi_peak_gib(run.get("smi", ""))}
    if "memory" in figures:
        allocated, reserved = figures["memory"]
        result["allocated_gib"] = float(allocated)
        result["reserved_gib"] = float(reserved) if reserved else None
    if est and result.get("allocated_gib") is not None:
        result["allocated_vs_planned_less_headroom"] = result["allocated_gib"] / (est["total"] - est["headroom"])
    if est and result.get("reserved_gib") is not None:
        result["reserved_vs_planned"] = result["reserved_gib"] / est["total"]
    if est and result["nvidia_smi_peak_gib"] is not None:
        result["nvidia_smi_vs_planned"] = result["nvidia_smi_peak_gib"] / est["total"]
    (OUT / "memory.json").write_text(json.dumps(result, indent=2))
    print(f"micro-batch {result['micro_batch']}")
    if est:
        print(f"lmm-plan estimate: {gib(est['total'])} GiB = model states {gib(est['states'])} + "
              f"{est['micro_batch']} x {est['act_per_sample']:.3g} activations + {est['headroom']:g} headroom")
    else:
        print("lmm-plan estimate: none (no plan.json)")
    print(f"measured (torch, training steps): max allocated {fmt(result.get('allocated_gib'))} GiB, "
          f"max reserved {fmt(result.get('reserved_gib'))} GiB")
    print(f"measured (nvidia-smi, whole GPU): peak used {fmt(result['nvidia_smi_peak_gib'])} GiB")
    for key in ("reserved_vs_planned", "allocated_vs_planned_less_headroom", "nvidia_smi_vs_planned"):
        if result.get(key) is not None:
            print(f"{key.replace('_', ' ')}: {result[key]:.3f}")
    complete = est is not None and result.get("allocated_gib") is not None
    return 0 if complete else 1


def env():
    """What the GPU steps will run on: torch, CUDA, DeepSpeed's accelerator, the GPU and its memory."""
    import subprocess

    import torch
    info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        free, _ = torch.cuda.mem_get_info(0)
        info.update(device=props.name, device_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    mem_gib=round(props.total_memory / 2**30, 2), free_gib=round(free / 2**30, 2),
                    bf16=torch.cuda.is_bf16_supported())
    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
        info.update(deepspeed=deepspeed.__version__, ds_accelerator=get_accelerator().device_name(),
                    ds_comm_backend=get_accelerator().communication_backend_name())
    except Exception as err:  # reported; the step then fails on the missing accelerator
        info["deepspeed_error"] = repr(err)
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    print("GPU_CHECK_ENV " + json.dumps(info))
    return 0


def fmt(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def gib(value):
    """GiB to print: one decimal at GPU sizes, three significant digits for small (CPU test) sizes."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def print_mfu(log):
    figures = mfu_figures(read(log))
    if "step" not in figures:
        print("no MFU figures in the log")
        return 1
    median, low, high, steps, warmup = figures["step"]
    samples, tokens = figures["samples_s"]
    achieved, peak, mfu = figures["tflops"]
    print(f"device {figures.get('device', '?')}; {figures.get('setup', '?')}; built in {figures.get('built_s', '?')} s")
    print(f"step time {median} ms median (min {low}, max {high}; {steps} steps after {warmup} warm-up)")
    print(f"samples/s {samples}, tokens/s {tokens}; achieved {achieved} TFLOP/s of {peak}: MFU {mfu}%")
    if "memory" in figures:
        print(f"max GPU memory allocated {figures['memory'][0]} GiB, reserved {figures['memory'][1] or 'n/a'} GiB")
    return 0


def demo_rows():
    """(run, step, samples, CIDEr) of the last checkpoint of each run in the demo's final table."""
    last = {}
    for line in read(OUT / "demo_table.txt").splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[1].isdigit():
            run, step, samples, cider = parts[0], int(parts[1]), int(parts[2]), parts[3]
            if run not in last or step > last[run][1]:
                last[run] = (run, step, samples, cider)
    return list(last.values())


def summary():
    env = load_json(OUT / "env.json")
    steps = [line.split("\t") for line in read(OUT / "steps.tsv").splitlines() if line.strip()]
    status = {s[0]: s for s in steps}
    run = load_json(OUT / "mfu_run.json")
    figures = mfu_figures(read(run.get("log", "")))
    mem = load_json(OUT / "memory.json")
    plan = load_json(OUT / "plan.json")

    demo = status.get("demo", ["demo", "SKIP", "0", ""])
    rows = demo_rows()
    demo_time = {"PASS": f"{demo[2]} s", "SKIP": "not run"}.get(demo[1], f"{demo[1]} after {demo[2]} s")
    cider = ", ".join(f"{r[0].removeprefix('demo-')} {r[3]}" for r in rows)
    if rows:
        cider += f" (step {rows[0][1]}, {rows[0][2]:,} samples seen)"

    mfu_cell = step_cell = rate_cell = "n/a"
    if "step" in figures:
        median, low, high, n, warmup = figures["step"]
        achieved, peak, mfu = figures["tflops"]
        samples, tokens = figures["samples_s"]
        mfu_cell = f"{mfu}% ({achieved} of {peak} TFLOP/s)"
        step_cell = f"{median} ms ({low}-{high}; {n} steps after {warmup} warm-up)"
        rate_cell = f"{samples} ({tokens} tokens/s)"
    micro = run.get("micro_batch")
    source = run.get("micro_batch_source", "")
    setup = f"{figures.get('setup', f'micro-batch {micro}')} (micro-batch: {source})" if micro else "did not run"

    est = mem.get("planned") or {}
    measured = (f"{fmt(mem.get('allocated_gib'))} / {fmt(mem.get('reserved_gib'))} GiB "
                f"(nvidia-smi {fmt(mem.get('nvidia_smi_peak_gib'))} GiB)") if mem else "n/a"
    planned = (f"{gib(est['total'])} GiB ({gib(est['states'])} model states + {est['micro_batch']} x "
               f"{est['act_per_sample']:.3g} activations + {est['headroom']:g} headroom)") if est else "n/a"
    ratios = "n/a"
    if mem.get("reserved_vs_planned") is not None or mem.get("allocated_vs_planned_less_headroom") is not None:
        ratios = (f"reserved / planned {fmt(mem.get('reserved_vs_planned'), 3)}; allocated / (planned - headroom) "
                  f"{fmt(mem.get('allocated_vs_planned_less_headroom'), 3)}")

    device = env.get("device", figures.get("device", "no CUDA device"))
    lines = [
        f"GPU readiness check ({os.environ.get('GPU_CHECK_DATE', '')}, commit {os.environ.get('GPU_CHECK_COMMIT', '?')}): "
        f"{device}, {fmt(env.get('mem_gib'))} GiB, driver {env.get('driver', '?')}, torch {env.get('torch', '?')}, "
        f"DeepSpeed {env.get('deepspeed', '?')} ({env.get('ds_accelerator', '?')}/{env.get('ds_comm_backend', '?')}); "
        f"script total {os.environ.get('GPU_CHECK_TOTAL_S', '?')} s",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| demo wall time (`launch.demo --nproc 1`, `{os.environ.get('GPU_CHECK_DEMO_ARGS', '')}`) | {demo_time} |",
        f"| demo CIDEr x100 at the last checkpoint | {cider or 'n/a'} |",
        f"| MFU run (`{os.environ.get('GPU_CHECK_CONFIG', '')}`, LLM frozen) | {setup} |",
        f"| MFU | {mfu_cell} |",
        f"| step time, median (min-max) | {step_cell} |",
        f"| samples/s | {rate_cell} |",
        f"| peak memory measured: torch max allocated / reserved | {measured} |",
        f"| lmm-plan estimate for that micro-batch | {planned} |",
        f"| measured / planned | {ratios} |",
        "",
        "Steps: " + ", ".join(f"{s[0]} {s[1]} ({s[2]} s{'; ' + s[3] if len(s) > 3 and s[3] else ''})" for s in steps),
    ]
    if plan.get("micro_batch") and micro and plan["micro_batch"] != micro:
        lines.append(f"lmm-plan chose micro-batch {plan['micro_batch']}; the figures above are at {micro}.")
    text = "\n".join(lines) + "\n"
    (OUT / "summary.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    mode = sys.argv[1]
    sys.exit({"env": env, "mfu": lambda: print_mfu(sys.argv[2]), "memory": memory, "summary": summary}[mode]())
PYEOF
export GPU_CHECK_OUT=$OUT_DIR
report() { "$PY" "$OUT_DIR/report.py" "$@"; }

echo "GPU readiness check: repository $(pwd), output $OUT_DIR, budget ${BUDGET_S} s"

# ---------------------------------------------------------------------------------------------------------------
# 0. environment
# ---------------------------------------------------------------------------------------------------------------
banner 0 "environment: torch, CUDA, DeepSpeed accelerator, GPU memory"
if ((HAVE_SMI)); then nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1; fi
run_timed env 90 "$MFU_MIN_S" "$OUT_DIR/env.log" "$PY" "$OUT_DIR/report.py" env
grep '^GPU_CHECK_ENV ' "$OUT_DIR/env.log" | tail -n 1 | cut -d' ' -f2- > "$OUT_DIR/env.json"
env_field() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$OUT_DIR/env.json" "$1" 2> /dev/null; }
CUDA_OK=$(env_field cuda_available)
DS_ACC=$(env_field ds_accelerator)
MEASURED_GIB=$(env_field mem_gib)
if [[ -z $MEASURED_GIB ]] && ((HAVE_SMI)); then  # torch could not say: nvidia-smi reports MiB
    MEASURED_GIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 2> /dev/null |
        awk 'NR == 1 && $1 + 0 > 0 { printf "%.2f", $1 / 1024 }')
fi
GPU_MEM_GB=${GPU_MEM_GB:-$MEASURED_GIB}
if [[ -s $OUT_DIR/env.json ]]; then
    "$PY" -c 'import json, sys; [print(f"  {k}: {v}") for k, v in json.load(open(sys.argv[1])).items()]' "$OUT_DIR/env.json"
fi
echo "  GPU memory for lmm-plan: ${GPU_MEM_GB:-unknown} GiB"
GPU_OK=0
if ((STEP_RC == 0)) && [[ $CUDA_OK == True && $DS_ACC == cuda ]]; then
    GPU_OK=1
    FREE_GIB=$(env_field free_gib)
    NOTE=""
    if awk -v f="$FREE_GIB" -v t="$MEASURED_GIB" 'BEGIN { exit !(t - f > 2) }'; then
        NOTE="only $FREE_GIB of $MEASURED_GIB GiB free: another process holds GPU memory"
        echo "WARNING: $NOTE"
    fi
    record env PASS "$STEP_S" "$NOTE"
else
    show_tail "$OUT_DIR/env.log"
    record env FAIL "$STEP_S" "no CUDA device for torch/DeepSpeed (cuda_available=${CUDA_OK:-?}, accelerator=${DS_ACC:-?})"
fi
RUN_GPU_STEPS=$GPU_OK
if ((!GPU_OK)) && [[ ${ALLOW_CPU:-0} == 1 ]]; then
    echo "ALLOW_CPU=1: running the GPU steps without a GPU (plumbing test; figures are meaningless)"
    RUN_GPU_STEPS=1
fi

# ---------------------------------------------------------------------------------------------------------------
# 1. the demo end to end
# ---------------------------------------------------------------------------------------------------------------
banner 1 "demo end to end: python -m launch.demo --nproc 1 ${DEMO_ARGS[*]}"
DEMO_STATUS=SKIP
if ((RUN_GPU_STEPS)); then
    run_timed demo "$DEMO_TIMEOUT_S" "$MFU_MIN_S" "$OUT_DIR/demo.log" \
        "$PY" -m launch.demo --nproc 1 --out "$OUT_DIR/demo" "${DEMO_ARGS[@]}"
    # the final table: from its header line to the first blank line; then the demo's own total time
    awk '/^run +step +samples seen/ { on = 1 } on && /^$/ { exit } on' "$OUT_DIR/demo.log" > "$OUT_DIR/demo_table.txt"
    if ((STEP_RC == 0)) && [[ -s $OUT_DIR/demo_table.txt ]]; then
        DEMO_STATUS=PASS
        cat "$OUT_DIR/demo_table.txt"
        grep -E '^(results|plot|total time):' "$OUT_DIR/demo.log"
        record demo PASS "$STEP_S" ""
    else
        DEMO_STATUS=FAIL
        show_tail "$OUT_DIR/demo.log" 25
        record demo FAIL "$STEP_S" "exit $STEP_RC$( ((STEP_RC == 124 || STEP_RC == 137)) && echo ' (timed out)')"
    fi
    echo "demo wall time: ${STEP_S} s ($DEMO_STATUS)"
    leftover_gpu_processes "the demo"
else
    record demo SKIP 0 "no GPU"
fi

# ---------------------------------------------------------------------------------------------------------------
# 2. lmm-plan's micro-batch, then the paper-shaped MFU measurement
# ---------------------------------------------------------------------------------------------------------------
banner 2 "lmm-plan for $CONFIG on 1 x ${GPU_MEM_GB:-?} GiB, then benchmarks/mfu.py at its micro-batch"
PLAN_MB=""
if [[ -n $GPU_MEM_GB ]]; then
    run_timed plan 90 60 "$OUT_DIR/plan.log" "$PY" -m launch.plan --config "$CONFIG" --nodes 1 --gpus-per-node 1 \
        --gpu-mem-gb "$GPU_MEM_GB" --json "$OUT_DIR/plan.json" "${PAPER_ARGS[@]}"
    PLAN_MB=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["micro_batch"])' \
        "$OUT_DIR/plan.json" 2> /dev/null)
    if ((STEP_RC == 0)) && [[ -n $PLAN_MB ]]; then
        grep -E '^(chosen|overrides|note):' "$OUT_DIR/plan.log"
        record plan PASS "$STEP_S" "micro-batch $PLAN_MB"
    else
        show_tail "$OUT_DIR/plan.log"
        record plan FAIL "$STEP_S" "exit $STEP_RC"
    fi
else
    record plan FAIL 0 "GPU memory unknown (set GPU_MEM_GB)"
fi

# run_mfu MICRO_BATCH TAG STEPS: one benchmarks/mfu.py run (log $OUT/TAG.log, nvidia-smi samples
# $OUT/TAG_nvidia_smi_mib.txt)
run_mfu() {
    local micro=$1 tag=$2 steps=$3 port sampler=""
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if ((HAVE_SMI)); then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 500 \
            > "$OUT_DIR/${tag}_nvidia_smi_mib.txt" 2> /dev/null &
        sampler=$!
    fi
    run_timed "$tag" 600 5 "$OUT_DIR/$tag.log" env MASTER_PORT="$port" "$PY" benchmarks/mfu.py --config "$CONFIG" \
        --steps "$steps" --warmup "$MFU_WARMUP" --micro-batch "$micro" "${PEAK_ARGS[@]}" "${PAPER_ARGS[@]}"
    if [[ -n $sampler ]]; then
        kill "$sampler" 2> /dev/null
        wait "$sampler" 2> /dev/null
    fi
    leftover_gpu_processes "$tag"
}

# mfu_run_json MICRO_BATCH SOURCE TAG: which run the memory step and the summary read
mfu_run_json() {
    printf '{"micro_batch": %s, "micro_batch_source": "%s", "log": "%s", "smi": "%s"}\n' "$1" "$2" \
        "$OUT_DIR/$3.log" "$OUT_DIR/$3_nvidia_smi_mib.txt" > "$OUT_DIR/mfu_run.json"
}

if ((RUN_GPU_STEPS)); then
    if [[ -n ${MFU_MICRO_BATCH:-} ]]; then
        MB=$MFU_MICRO_BATCH SOURCE="MFU_MICRO_BATCH"
    elif [[ -n $PLAN_MB ]]; then
        MB=$PLAN_MB SOURCE="lmm-plan"
    else
        MB=32 SOURCE="lmm-plan failed: the config's micro-batch"
    fi
    echo "micro-batch $MB ($SOURCE)"
    run_mfu "$MB" mfu "$MFU_STEPS"
    mfu_run_json "$MB" "$SOURCE" mfu
    if ((STEP_RC == 0)) && report mfu "$OUT_DIR/mfu.log"; then
        record mfu PASS "$STEP_S" "micro-batch $MB"
    elif grep -qiE 'out of memory|OutOfMemoryError' "$OUT_DIR/mfu.log"; then
        show_tail "$OUT_DIR/mfu.log" 8
        record mfu FAIL "$STEP_S" "out of GPU memory at micro-batch $MB ($SOURCE)"
        HALF=$((MB / 2))
        if ((HALF >= 1 && $(seconds_left) >= RETRY_MIN_S)); then
            echo "re-running at micro-batch $HALF so that figures still come back"
            run_mfu "$HALF" mfu_retry $((MFU_STEPS < 15 ? MFU_STEPS : 15))
            if ((STEP_RC == 0)) && report mfu "$OUT_DIR/mfu_retry.log"; then
                mfu_run_json "$HALF" "half of $SOURCE's $MB, which ran out of memory" mfu_retry
                record mfu_retry PASS "$STEP_S" "micro-batch $HALF"
            else
                show_tail "$OUT_DIR/mfu_retry.log"
                record mfu_retry FAIL "$STEP_S" "exit $STEP_RC at micro-batch $HALF"
            fi
        else
            echo "no time left for a re-run at micro-batch $HALF"
        fi
    else
        show_tail "$OUT_DIR/mfu.log" 25
        record mfu FAIL "$STEP_S" "exit $STEP_RC$( ((STEP_RC == 124 || STEP_RC == 137)) && echo ' (timed out)')"
    fi
else
    record mfu SKIP 0 "no GPU"
fi

# ---------------------------------------------------------------------------------------------------------------
# 3. peak GPU memory of that run next to lmm-plan's estimate
# ---------------------------------------------------------------------------------------------------------------
banner 3 "peak GPU memory of the MFU run vs lmm-plan's estimate"
if [[ -s $OUT_DIR/mfu_run.json ]]; then
    if report memory; then
        record memory PASS 0 ""
    else
        record memory FAIL 0 "measured or planned figure missing"
    fi
else
    record memory SKIP 0 "no MFU run"
fi

# ---------------------------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------------------------
banner summary "markdown for BENCHMARKS.md (also in $OUT_DIR/summary.md)"
COMMIT=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2> /dev/null) ]]; then COMMIT="$COMMIT+local changes"; fi
GPU_CHECK_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') GPU_CHECK_COMMIT=$COMMIT GPU_CHECK_TOTAL_S=$SECONDS \
    GPU_CHECK_DEMO_ARGS="${DEMO_ARGS[*]}" GPU_CHECK_CONFIG=$CONFIG report summary ||
    echo "summary failed; the logs are in $OUT_DIR"

if awk -F '\t' '$2 != "PASS" { bad = 1 } END { exit !bad }' "$STEPS_TSV"; then
    echo "RESULT: some steps failed or were skipped (see above and $OUT_DIR/*.log); total ${SECONDS} s"
    exit 1
fi
echo "RESULT: all steps passed; total ${SECONDS} s"
exit 0
