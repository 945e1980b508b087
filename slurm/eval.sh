#!/usr/bin/env bash
# Eval-only job: caption generation + CIDEr for one checkpoint, or every checkpoint of a run directory.
#   sbatch slurm/eval.sh runs/capsfusion-10m-raw                                 # all complete checkpoints
#   sbatch slurm/eval.sh runs/capsfusion-10m-raw/checkpoints/global_step1220     # one checkpoint
#   sbatch --dependency=afterok:<train job id> slurm/eval.sh runs/capsfusion-10m-raw
#   sbatch slurm/eval.sh runs/capsfusion-10m-raw --force                         # evaluate again what is stored
# Each (checkpoint, benchmark, protocol) is evaluated once: one whose record under the same protocol is already in
# the results file is skipped ("already evaluated: ... (use --force to redo)"), so the job run twice, or requeued,
# repeats nothing and writes no tensorboard point twice; --force redoes it and replaces the record and its points.
# Any further arguments go to launch.evaluate (see `python -m launch.evaluate --help`).
#SBATCH --job-name=lmm-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out
# Slurm runs a copy of this file: its launcher is found next to the submitted path (Command=), from any directory
exec "$(scontrol show job "$SLURM_JOB_ID" | sed -n '/^ *Command=/{s|^ *Command=\([^ ]*\)/[^/ ]*.*|\1|p;q}')/launch.sh" evaluate "$@"
