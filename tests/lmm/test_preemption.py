"""Stop signals are recorded (not acted on mid-step) and the requeue decision honours its limits."""
import os
import signal

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


def test_requeue_stops_after_max_requeues(monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert requeue(StopRequest(), max_requeues=2, is_main=True) is StopOutcome.NOT_REQUEUED
    assert "already restarted 2 times" in capsys.readouterr().err
