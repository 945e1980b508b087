#!/usr/bin/env bash
# The one launcher behind every slurm/*.sh batch script: inside an allocation, start one process per task (one
# per GPU) with srun, rendezvous taken from the Slurm environment.
#
#   slurm/launch.sh pretrain --config configs/capsfusion_10m.yaml [key=value ...]
#   slurm/launch.sh evaluate CHECKPOINT_OR_DIR [options]
#
# Rendezvous: master = first host of the job's node list, port derived from the job id (stable across requeues,
# distinct between jobs sharing a node); rank / local rank / world size come from SLURM_PROCID / SLURM_LOCALID /
# SLURM_NTASKS in lmm.distributed. --kill-on-bad-exit: one dead rank ends the whole step at once (no hang).
# Exit code: srun's, except 75 when the run stopped after a checkpoint without requeueing (train.max_requeues
# reached) and 2 for a config error: the ranks then exit 0 and leave the code in LMM_STOP_MARKER, since a rank
# exiting non-zero first would get its siblings killed and the step would report their SIGTERM instead.
# The job runs in the checkout this file is in (relative paths in ARGS are relative to it), whatever the submit
# directory. Environment: LMM_PYTHON (interpreter; default: the checkout's .venv when present, else `python`),
# MASTER_PORT (to override the derived port).
set -euo pipefail

entry=${1:?usage: slurm/launch.sh pretrain|evaluate|fuse ARGS...}
shift
: "${SLURM_JOB_ID:?slurm/launch.sh runs inside a Slurm allocation (sbatch slurm/pretrain_10m.sh)}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n ${LMM_PYTHON:-} ]]; then PYTHON=$LMM_PYTHON
elif [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python
else PYTHON=python; fi
if ! checked=$("$PYTHON" -c "import importlib.metadata as m, torch, deepspeed, open_clip, transformers
print(m.version('lmm-scaling'))" 2>&1); then  # the last line: the version, or the import error
    echo "[launch] error: $PYTHON cannot import the project's packages (${checked##*$'\n'}): run 'make setup' in" \
         "$PWD, or set LMM_PYTHON to the interpreter of your environment" >&2
    exit 1
fi
echo "[launch] python $PYTHON, lmm-scaling ${checked##*$'\n'}, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 12000))}  # below the ephemeral range (lmm.distributed)
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1  # a failed NCCL collective aborts instead of hanging

echo "[launch] job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
     "${SLURM_NTASKS} tasks, master ${MASTER_ADDR}:${MASTER_PORT}, launch.${entry} $*"
export LMM_STOP_MARKER="$PWD/slurm/logs/.stopped-${SLURM_JOB_ID}"
rm -f "$LMM_STOP_MARKER"
status=0
srun --kill-on-bad-exit=1 --cpu-bind=none "$PYTHON" -m "launch.${entry}" "$@" || status=$?
if [[ $status -eq 0 && -e $LMM_STOP_MARKER ]]; then  # "<exit code> <message>" (launch.pretrain)
    read -r code message < "$LMM_STOP_MARKER"
    echo "[launch] $message"
    rm -f "$LMM_STOP_MARKER"
    exit "$code"
fi
exit "$status"
