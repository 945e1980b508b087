"""METEOR 1.5: pycocoevalcap's own ``Meteor`` (its jar, its line protocol), one JVM per process, when Java is present.

Loading METEOR's paraphrase tables takes ~10 s, so a job scoring many checkpoints keeps one ``Meteor`` for the
process. What this module adds to pycocoevalcap's class is what happens when that JVM dies (killed, out of
memory): pycocoevalcap raises a bare ``BrokenPipeError`` and keeps its lock held, so the next call blocks forever
(``benchmarks/library_review.py``, "METEOR with a dead JVM"); here the call raises a RuntimeError with the jar's
own error text and the next ``meteor()`` starts a fresh JVM. The protocol port this module used to hold (107
lines) scored the same numbers (max |diff| 0) and was not faster (1,000 images: 12.8 s vs pycocoevalcap's 7.7 s,
under load), so it went.
"""
from __future__ import annotations

import atexit
import functools
import shutil
from collections.abc import Hashable

from lmm.eval.ngrams import check_inputs

__all__ = ["MeteorScorer", "java_available", "meteor"]


def java_available() -> bool:
    return shutil.which("java") is not None


class MeteorScorer:
    """One METEOR JVM (pycocoevalcap's ``Meteor``); ``score`` may be called many times, ``close`` ends it."""

    def __init__(self):
        if not java_available():
            raise RuntimeError("METEOR needs a `java` executable on PATH")
        from pycocoevalcap.meteor.meteor import Meteor
        self._meteor = Meteor()
        self._proc = self._meteor.meteor_p

    def score(self, gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> tuple[float, list[float]]:
        """(corpus METEOR, per-image scores in ``gts`` order) of already tokenized captions."""
        check_inputs(gts, res, "meteor")
        if self._proc.poll() is None:
            try:
                corpus, per_image = self._meteor.compute_score(gts, res)
                return float(corpus), [float(v) for v in per_image]
            except (OSError, ValueError):  # a pipe to a dead JVM, or an empty reply line
                self._meteor.lock.release()  # pycocoevalcap leaves it held; its __del__ would block on it
                self._proc.wait()
        self.close()
        _shared_scorer.cache_clear()
        raise RuntimeError(f"METEOR jar exited (code {self._proc.poll()}): {self._error_text()}")

    def _error_text(self) -> str:
        try:
            return self._proc.stderr.read().decode(errors="replace")[-2000:]
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        """Ends the JVM (without pycocoevalcap's ``__del__``, which waits for a lock a failed call keeps)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


@functools.lru_cache(maxsize=1)
def _shared_scorer() -> MeteorScorer:
    scorer = MeteorScorer()
    atexit.register(scorer.close)
    return scorer


def meteor(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> tuple[float, list[float]]:
    """METEOR with this process's shared JVM (started on first use, again after it died)."""
    return _shared_scorer().score(gts, res)
