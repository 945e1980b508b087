#!/usr/bin/env bash
# The fusion stage as a job array: each array task fuses one contiguous range of the manifest's shards (its part:
# array task x rank, from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT and the task's ranks, one GPU each).
#   sbatch --array=0-63 slurm/fuse.sh --manifest /data/shards/manifest.json --model /weights/capsfus-llama-13b \
#       --out /data/fused [--field fused] [--batch-size 1024] [--chat-template] [...]
#   sbatch slurm/fuse.sh ... --part 3 --num-parts 64                    # one part by hand (a failed task)
# Resumable: a requeued or re-submitted task skips the shards it finished (at most the shard in flight is redone).
# The task that ends with every shard done writes <out>/manifest.json and stats.json; otherwise
# `python -m launch.fuse finish --out <out>` does it later or lists the missing shards.
# Any further arguments go to `launch.fuse run` (see `python -m launch.fuse run --help`).
#SBATCH --job-name=lmm-fuse
#SBATCH --array=0-7
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%A_%a.out
# Slurm runs a copy of this file: its launcher is found next to the submitted path (Command=), from any directory
# (the first Command= line: an array task's record can come with its array's)
exec "$(scontrol show job "$SLURM_JOB_ID" | sed -n '/^ *Command=/{s|^ *Command=\([^ ]*\)/[^/ ]*.*|\1|p;q}')/launch.sh" fuse run "$@"
