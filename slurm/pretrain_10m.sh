#!/usr/bin/env bash
# CapsFusion pretraining on 10M samples of one caption source (configs/capsfusion_10m.yaml).
#   sbatch slurm/pretrain_10m.sh                                # capsfusion captions
#   sbatch slurm/pretrain_10m.sh data.caption_source=raw        # any config override passes through
#   sbatch --nodes=4 slurm/pretrain_10m.sh                      # sbatch flags override the headers below
# Preemption / time limit: USR1 arrives 5 min before the end; the run checkpoints and requeues itself.
#SBATCH --job-name=capsfusion-10m
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out
# Slurm runs a copy of this file: its launcher is found next to the submitted path (Command=), from any directory
exec "$(scontrol show job "$SLURM_JOB_ID" | sed -n '/^ *Command=/{s|^ *Command=\([^ ]*\)/[^/ ]*.*|\1|p;q}')/launch.sh" pretrain --config configs/capsfusion_10m.yaml "$@"
