"""Submit a pretraining run with submitit (Slurm, or the local executor on one machine).

    python -m launch.submit --config configs/capsfusion_100m.yaml --nodes 16 --gpus-per-node 8 \\
        --partition gpu --time-min 4320 data.caption_source=raw
    python -m launch.submit --executor local --tasks-per-node 2 --config configs/demo.yaml

The config (and the batch arithmetic for the requested world size) is checked before anything is submitted:
a bad config exits 2 and nothing reaches the cluster. So is the request against the nodes ``sinfo`` reports
(``check_resources``): a job no node could ever run (too many nodes, tasks x CPUs, GPUs or memory per node, an
unknown partition) would pend forever, so it exits 2 instead. ``--cpus-per-task`` defaults to 8, or fewer when the
partition's smallest node has fewer CPUs per task. Preemption and time limits are handled by submitit's
checkpoint-and-requeue, chained after the trainer's own checkpoint (see ``lmm.training.preemption``).
From Python: ``submit_pretrain(config_path, overrides, SubmitOptions(nodes=4))`` returns the submitit job.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import submitit

from launch.pretrain import EXIT_BAD_CONFIG, EXIT_STOPPED, run
from lmm.cluster import Node, cluster_nodes, partition_nodes
from lmm.config import ConfigError, ExperimentConfig, check_world_size, load_config
from lmm.distributed import rendezvous_port
from lmm.training.deepspeed_config import build_deepspeed_config
from lmm.training.preemption import STOP


@dataclass
class SubmitOptions:
    executor: str = "slurm"  # slurm | local
    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # default: one per GPU (1 when gpus_per_node is 0)
    cpus_per_task: int | None = None  # default: 8, or what the partition's smallest node has per task
    time_min: int = 24 * 60
    partition: str | None = None
    max_num_timeout: int = 3  # submitit's requeue budget for timeouts/preemptions
    folder: str = "slurm/submitit/%j"
    python: str | None = None  # interpreter on the nodes (default: this one)
    gpu_mem_gb: float | None = None  # when set, the memory planner must find a plan that fits (lmm-plan)
    slurm_args: dict = field(default_factory=dict)  # extra sbatch options, e.g. {"qos": "high"}
    mem_gb: float | None = None  # memory per node (sbatch --mem); default: the partition's

    @property
    def ntasks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ntasks_per_node


DEFAULT_CPUS_PER_TASK = 8


def fitting_cpus_per_task(options: SubmitOptions, nodes: list[Node]) -> int:
    """``DEFAULT_CPUS_PER_TASK``, or fewer if the partition's smallest node cannot give that to every task."""
    if not nodes:
        return DEFAULT_CPUS_PER_TASK
    smallest = min(n.cpus for n in partition_nodes(nodes, options.partition))
    return max(1, min(DEFAULT_CPUS_PER_TASK, smallest // options.ntasks_per_node))


def check_resources(options: SubmitOptions, nodes: list[Node]) -> None:
    """Raise ConfigError when fewer than ``options.nodes`` nodes of the partition could ever run one node's share
    of the job (tasks x CPUs, GPUs, memory); node states are not considered, only what the nodes have."""
    candidates = partition_nodes(nodes, options.partition)
    cpus, mem_mb = options.ntasks_per_node * options.cpus_per_task, round((options.mem_gb or 0) * 1024)
    fitting = [n for n in candidates if n.cpus >= cpus and n.gpus >= options.gpus_per_node and n.mem_mb >= mem_mb]
    if len(fitting) >= options.nodes:
        return
    asked = (f"{options.ntasks_per_node} tasks x {options.cpus_per_task} CPUs, {options.gpus_per_node} GPUs"
             + (f", {mem_mb} MB" if mem_mb else ""))
    shapes = Counter(f"{n.cpus} CPUs, {n.gpus} GPUs, {n.mem_mb} MB" for n in candidates)
    where = f"partition {options.partition!r}" if options.partition else "the default partition"
    raise ConfigError(f"the job would pend forever: it asks {options.nodes} node(s) with {asked} each, but "
                      f"{where} has " + "; ".join(f"{k} node(s) with {shape}" for shape, k in shapes.items())
                      + "; change --nodes, --tasks-per-node, --cpus-per-task, --gpus-per-node, --mem-gb or --partition")


class PretrainJob(submitit.helpers.Checkpointable):
    """The callable submitit runs on every task; ``checkpoint`` (inherited) resubmits it unchanged, and the
    restarted run resumes from its newest checkpoint by itself."""

    def __init__(self, config_path: str, overrides: list[str]):
        self.config_path, self.overrides = config_path, list(overrides)

    def __call__(self) -> int:
        STOP.install()  # chains submitit's own handlers (called after our checkpoint)
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ["MASTER_PORT"] = str(rendezvous_port(int(os.environ["SLURM_JOB_ID"])))  # not submitit's
        code = run(load_config(self.config_path, self.overrides))
        if code == EXIT_STOPPED:
            raise RuntimeError("stopped by a signal after a checkpoint and not requeued; resubmit to resume")
        return code


def check_submission(config_path: str, overrides: list[str], options: SubmitOptions) -> ExperimentConfig:
    """Everything that can be known before submission: the config, and the batch split for this world size."""
    config = load_config(config_path, overrides)  # also checks the manifest's caption fields, where it exists
    check_world_size(config, options.world_size)  # raises ConfigError if the batch cannot split exactly
    build_deepspeed_config(config, options.world_size)  # and the DeepSpeed template exists
    if options.executor not in ("slurm", "local"):
        raise ConfigError(f"--executor must be slurm or local, got {options.executor!r}")
    if options.gpu_mem_gb and options.gpus_per_node:
        from lmm.planning import PlanError, make_plan
        try:
            make_plan(config, options.nodes, options.gpus_per_node, options.gpu_mem_gb)
        except PlanError as err:
            raise ConfigError(f"memory plan: {err}") from None
    return config


def make_executor(options: SubmitOptions, job_name: str) -> submitit.Executor:
    executor = submitit.AutoExecutor(folder=options.folder, cluster=options.executor,
                                     slurm_python=options.python, slurm_max_num_timeout=options.max_num_timeout)
    params = dict(name=job_name, nodes=options.nodes, tasks_per_node=options.ntasks_per_node,
                  cpus_per_task=options.cpus_per_task, timeout_min=options.time_min, mem_gb=options.mem_gb)
    if options.executor == "slurm":
        params.update(slurm_partition=options.partition, slurm_signal_delay_s=300,
                      slurm_additional_parameters={"requeue": True, **options.slurm_args})
        if options.gpus_per_node:
            params["gpus_per_node"] = options.gpus_per_node
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def fit_to_cluster(options: SubmitOptions) -> SubmitOptions:
    """``options`` with ``cpus_per_task`` filled in, checked against the Slurm cluster's nodes where there is one."""
    nodes = cluster_nodes() if options.executor == "slurm" else None
    if options.cpus_per_task is None:
        options = replace(options, cpus_per_task=fitting_cpus_per_task(options, nodes or []))
    if nodes:
        check_resources(options, nodes)
    return options


def submit_pretrain(config_path: str, overrides: list[str], options: SubmitOptions) -> submitit.Job:
    """Validate, then submit; raises ConfigError (nothing submitted) on a bad config or a job no node can run."""
    config = check_submission(config_path, overrides, options)
    options = fit_to_cluster(options)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    return make_executor(options, config.run_name).submit(PretrainJob(config_path, overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--executor", default="slurm", choices=["slurm", "local"])
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--tasks-per-node", type=int, default=None, help="default: one per GPU")
    parser.add_argument("--cpus-per-task", type=int, default=None,
                        help=f"default: {DEFAULT_CPUS_PER_TASK}, or fewer to fit the partition's smallest node")
    parser.add_argument("--mem-gb", type=float, default=None, help="memory per node (default: the partition's)")
    parser.add_argument("--time-min", type=int, default=24 * 60)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--max-requeues", type=int, default=3, help="submitit's timeout/preemption budget")
    parser.add_argument("--folder", default="slurm/submitit/%j", help="submitit logs and pickles")
    parser.add_argument("--python", default=None, help="interpreter on the nodes (default: this one)")
    parser.add_argument("--gpu-mem-gb", type=float, default=None,
                        help="refuse to submit unless the memory planner (lmm-plan) fits the run in this much")
    parser.add_argument("--wait", action="store_true", help="block until the job ends; exit with its status")
    parser.add_argument("overrides", nargs="*", help="key.path=value config overrides")
    args = parser.parse_args(argv)
    options = SubmitOptions(args.executor, args.nodes, args.gpus_per_node, args.tasks_per_node, args.cpus_per_task,
                            args.time_min, args.partition, args.max_requeues, args.folder, args.python,
                            args.gpu_mem_gb, mem_gb=args.mem_gb)
    try:
        job = submit_pretrain(args.config, args.overrides, options)
    except ConfigError as err:
        print(f"config error (nothing submitted): {err}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"submitted job {job.job_id} ({options.executor}, {options.world_size} tasks); logs: {job.paths.folder}",
          flush=True)
    if not args.wait:
        return 0
    try:
        job.results()
    except Exception as err:  # submitit re-raises the job's failure here
        print(f"job {job.job_id} failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
