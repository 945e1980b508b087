"""Stop signals are recorded (not acted on mid-step) and the requeue decision honours its limits."""
import os
import signal
from pathlib import Path

from lmm.training.preemption import StopOutcome, StopRequest, requeue


def test_signal_sets_the_flag_and_keeps_the_previous_handler():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda *_: calls.append("old"))
    try:
        stop = StopRequest().install().install()  # installing twice must not chain to itself
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested and stop.signum == signal.SIGUSR2 and calls == []
        stop.previous_handler(signal.SIGUSR2)(signal.SIGUSR2, None)  # chained for submitit
        assert calls == ["old"]
    finally:
        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, previous)


def test_requeue_outside_slurm_just_stops(monkeypatch):
    for name in ("SLURM_JOB_ID", "SUBMITIT_EXECUTOR", "SUBMITIT_FOLDER"):
        monkeypatch.delenv(name, raising=False)
    assert requeue(StopRequest(), max_requeues=3, is_main=True) is StopOutcome.NOT_REQUEUED


def test_requeue_stops_after_max_requeues(monkeypatch, caplog):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert requeue(StopRequest(), max_requeues=2, is_main=True) is StopOutcome.NOT_REQUEUED
    assert "already restarted 2 times" in caplog.text


def test_stopped_run_exits_75_or_leaves_the_launcher_a_marker(monkeypatch, tmp_path):
    """Without a launcher a stopped run exits 75; under slurm/launch.sh (LMM_STOP_MARKER set) every rank exits 0 so
    srun --kill-on-bad-exit does not kill siblings, and rank 0 leaves the marker the launcher turns into 75."""
    import launch.pretrain as pretrain
    import lmm.training.trainer as trainer
    from lmm.config import load_config

    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(str(Path(__file__).resolve().parents[2] / "configs/demo.yaml"), [f"output_dir={tmp_path / 'run'}"])
    outcomes = iter([StopOutcome.NOT_REQUEUED, StopOutcome.NOT_REQUEUED, StopOutcome.REQUEUED])
    monkeypatch.setattr(trainer, "train", lambda _config, _task=None: (None, next(outcomes)))
    monkeypatch.delenv(pretrain.STOP_MARKER_ENV, raising=False)
    assert pretrain.run(config) == pretrain.EXIT_STOPPED

    marker = tmp_path / "logs" / ".stopped-7"
    monkeypatch.setenv(pretrain.STOP_MARKER_ENV, str(marker))
    assert pretrain.run(config) == 0
    assert str(tmp_path / "run") in marker.read_text()
    marker.unlink()
    assert pretrain.run(config) == 0 and not marker.exists()  # requeued: no marker
