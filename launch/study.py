"""Run a scaling study in one command: every training run, decay branch and eval-only job, then the plot.

    lmm-study run configs/study_capsfusion.yaml                      # Slurm: sbatch with --dependency
    lmm-study run configs/study_demo.yaml --backend local --nproc 2  # this machine, one job after another
    lmm-study status configs/study_capsfusion.yaml                   # table: job, state, step / total, CIDEr
    lmm-study plot configs/study_capsfusion.yaml                     # <output_dir>/scaling.{png,svg,csv,md}

Idempotent: ``run`` skips what is done (read from the runs' checkpoints and the study's results file) and what is
queued or running (the Slurm job ids it submitted are kept in ``<output_dir>/study.json``), and submits the rest,
each waiting (``afterok``) for the jobs it needs that are not done yet. Re-running after a failure resubmits the
failed jobs and those that waited for them, never a duplicate. Every run config is loaded (validated) before
anything is submitted; a bad study exits 2. Trailing ``key=value`` words override the study (``budgets=[...]``),
or every run's config when the key is a run config key (``data.train_manifest=...``).
"""
from __future__ import annotations

import argparse
import sys

from lmm import logs
from lmm.config import ConfigError
from lmm.study_runner import LocalBackend, SlurmBackend, Study, check_world_sizes, status_rows, write_plot


def print_status(study: Study, slurm: bool) -> None:
    rows = [("job", "state", "step / total", "CIDEr x100 [95% CI]"), *status_rows(study, slurm)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmm-study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "status", "plot"])
    parser.add_argument("study", help="study YAML, e.g. configs/study_capsfusion.yaml")
    parser.add_argument("--backend", choices=["slurm", "local"], default="slurm")
    parser.add_argument("--nproc", type=int, default=2, help="local backend: ranks per run (torchrun)")
    parser.add_argument("--dry-run", action="store_true", help="run: list the jobs and their state, submit nothing")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the study or of every run config")
    args = parser.parse_intermixed_args(argv)  # options may follow the overrides
    logs.setup()
    try:
        study = Study(args.study, args.overrides)
        if args.command == "run":
            check_world_sizes(study, args.backend, args.nproc)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"study error (nothing submitted): {err}", file=sys.stderr)
        return 2
    slurm = args.backend == "slurm"
    if args.command == "status":
        print_status(study, slurm or bool(study.submitted))
        write_plot(study)
        return 0
    if args.command == "plot":
        return 0 if write_plot(study) else 1
    if args.dry_run:
        print_status(study, slurm)
        return 0
    code = (SlurmBackend() if slurm else LocalBackend(args.nproc)).run(study)
    if not slurm:
        print_status(study, slurm=False)
        write_plot(study)
    return code


if __name__ == "__main__":
    sys.exit(main())
