"""Train one run: ``torchrun --nproc_per_node N -m launch.pretrain --config configs/demo.yaml key=value ...``.

Under Slurm the same module is started by ``srun`` (see ``slurm/launch.sh``). Exit codes: 0 finished or
requeued after a preemption checkpoint, 2 bad config (a bad key, a world size the global batch does not split
over, a resume that changes what the run is, or frozen weight files that changed since the run's checkpoints),
75 stopped by a signal after a checkpoint without a
requeue (rerun to resume).

Under ``srun --kill-on-bad-exit`` a rank that exits non-zero first gets its siblings killed (the step then
reports their SIGTERM, not 75 or 2; measured: a refused resume ended ``FAILED 15:0``), so when ``LMM_STOP_MARKER``
names a file, a stopped run or a config error writes its exit code and a message there and every rank exits 0;
``slurm/launch.sh`` turns the marker into the job's exit code.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lmm.training.preemption import STOP, StopOutcome

EXIT_BAD_CONFIG = 2
EXIT_STOPPED = 75  # EX_TEMPFAIL: incomplete but resumable
EXIT_PEER_LOST = 1  # another rank died; the job fails (srun names the dead task too)
STOP_MARKER_ENV = "LMM_STOP_MARKER"


def run(config, task=None) -> int:
    """Train ``config`` in this process (one rank; ``task``: what trains, default the LMM on captions, see
    ``lmm.training.trainer.CaptioningTask``); returns the process exit code."""
    from lmm import distributed, logs
    from lmm.config import ConfigError
    from lmm.safe_loading import UnsafeCheckpointError
    from lmm.training.frozen_weights import FrozenWeightsError
    from lmm.training.resume_guard import RunChangedError
    from lmm.training.trainer import train
    logs.setup()
    try:
        try:
            _, outcome = train(config, task)
        except (ConfigError, FrozenWeightsError, RunChangedError, UnsafeCheckpointError) as err:
            if distributed.detect_env().is_main:  # raised on every rank, before anything was written
                print(f"error: {err}", file=sys.stderr, flush=True)
            return exit_through_launcher(EXIT_BAD_CONFIG, "refused before anything was written (see the error above)")
        except distributed.PeerLost as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return EXIT_PEER_LOST
        if outcome is not StopOutcome.NOT_REQUEUED:
            return 0
        code = exit_through_launcher(EXIT_STOPPED, f"stopped after a checkpoint in {config.output_dir}; not "
                                     "requeued: resubmit to resume", every_rank=False)
        distributed.barrier()  # the marker exists before any rank exits
        return code
    finally:
        distributed.shutdown()  # before exit, or srun may report the task as aborted


def exit_through_launcher(code: int, message: str, every_rank: bool = True) -> int:
    """``code``, or 0 after writing ``"<code> <message>"`` to ``LMM_STOP_MARKER`` (under slurm/launch.sh). Ranks that
    all reach the same verdict each write it (atomically, same content); otherwise only rank 0 does."""
    marker = os.environ.get(STOP_MARKER_ENV)
    if not marker:
        return code
    from lmm import distributed  # here, not above: a config error must not wait for torch's import

    if every_rank or distributed.detect_env().is_main:
        path = Path(marker)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(f"{code} {message}\n")
        os.replace(tmp, path)
    return 0


def main(argv: list[str] | None = None) -> int:
    STOP.install()  # first: Slurm's early-warning signal may come while the heavy imports still run
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML experiment config")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. data.caption_source=raw")
    args = parser.parse_args(argv)
    from lmm.config import ConfigError, load_config
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return exit_through_launcher(EXIT_BAD_CONFIG, "config error (see above)")
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
