"""METEOR 1.5 through the jar that pycocoevalcap ships, with its exact line protocol, when Java is present.

pycocoevalcap runs ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm``, sends one
``SCORE ||| ref 1 ||| ... ||| ref n ||| hypothesis`` line per image (``|||`` removed from the hypothesis, double
spaces made single), reads back one statistics line each, then sends ``EVAL ||| stats 1 ||| ...`` and reads one
score per image followed by the corpus score. This module speaks the same protocol, but writes from a thread so
no pipe can fill up, fails with the jar's own error message instead of blocking when the JVM dies, and keeps one
JVM per process: loading the paraphrase tables takes ~10 s, so a job scoring many checkpoints pays it once.
"""
from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Hashable
from pathlib import Path

from lmm.eval.ngrams import check_inputs

__all__ = ["MeteorScorer", "java_available", "meteor"]


def java_available() -> bool:
    return shutil.which("java") is not None


def _jar_path() -> Path:
    spec = importlib.util.find_spec("pycocoevalcap")
    for location in (spec.submodule_search_locations or []) if spec else []:
        jar = Path(location) / "meteor" / "meteor-1.5.jar"
        if jar.is_file():
            return jar
    raise RuntimeError("METEOR needs pycocoevalcap installed (it ships meteor/meteor-1.5.jar)")


class MeteorScorer:
    """One METEOR JVM; ``score`` may be called many times, ``close`` ends it."""

    def __init__(self):
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("METEOR needs a `java` executable on PATH")
        jar = _jar_path()
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"],
                                      cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr)
        self._lock = threading.Lock()

    def score(self, gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> tuple[float, list[float]]:
        """(corpus METEOR, per-image scores in ``gts`` order) of already tokenized captions."""
        check_inputs(gts, res, "meteor")
        score_lines = [" ||| ".join(("SCORE", " ||| ".join(gts[key]),
                                     res[key][0].replace("|||", "").replace("  ", " "))) for key in gts]
        with self._lock:
            stats = self._exchange(score_lines, len(score_lines))
            values = self._exchange(["EVAL ||| " + " ||| ".join(stats)], len(stats) + 1)
        per_image = [float(v) for v in values[:-1]]
        return float(values[-1]), per_image

    def _exchange(self, lines: list[str], num_replies: int) -> list[str]:
        """Write ``lines`` (from a thread) and read ``num_replies`` reply lines."""
        payload = "".join(line + "\n" for line in lines).encode()
        writer = threading.Thread(target=self._write, args=(payload,), daemon=True)
        writer.start()
        replies = []
        for _ in range(num_replies):
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"METEOR jar exited (code {self._proc.poll()}): {self._error_text()}")
            replies.append(line.decode().strip())
        writer.join()
        return replies

    def _write(self, payload: bytes) -> None:
        try:
            self._proc.stdin.write(payload)
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the reader reports the jar's error

    def _error_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()


@functools.lru_cache(maxsize=1)
def _shared_scorer() -> MeteorScorer:
    scorer = MeteorScorer()
    atexit.register(scorer.close)
    return scorer


def meteor(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> tuple[float, list[float]]:
    """METEOR with this process's shared JVM (started on first use)."""
    return _shared_scorer().score(gts, res)
