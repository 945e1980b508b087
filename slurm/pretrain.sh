#!/usr/bin/env bash
# Pretraining with any experiment config; the job's size comes from sbatch options (lmm-study submits these):
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --time=24:00:00 \
#       slurm/pretrain.sh --config configs/capsfusion_base.yaml data.num_samples=10000000 [key=value ...]
# Preemption / time limit: USR1 arrives 5 min before the end; the run checkpoints and requeues itself.
#SBATCH --job-name=lmm-pretrain
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out
# Slurm runs a copy of this file: its launcher is found next to the submitted path (Command=), from any directory
exec "$(scontrol show job "$SLURM_JOB_ID" | sed -n '/^ *Command=/{s|^ *Command=\([^ ]*\)/[^/ ]*.*|\1|p;q}')/launch.sh" pretrain "$@"
