"""Eval metrics in tensorboard: ``eval/<benchmark>/<metric>`` against samples seen, plus a custom-scalars layout
that draws every run (one per caption source) on one chart per benchmark and metric.

Each (tag, step) is one point, however often a checkpoint is evaluated: tensorboard keeps every event it reads,
so a second event at the same step is a second point (and the custom-scalars plugin reads only the newest
layout). ``log_eval_record`` therefore compares with what the log directory holds, under a lock: a point already
there with the same value is not written again, and one with another value (a record redone with ``--force`` or
under another protocol) gets the new value in place, in its event file, so the points stay in step order; only
new points are appended. The layout (one event at step 0) covers every benchmark the directory has points for.
"""
from __future__ import annotations

import fcntl
import os
import re
import struct
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import custom_scalars

from lmm.training.checkpoint import run_dir_of

CHART_METRICS = ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L")
LAYOUT_TAG = "custom_scalars__config__"  # tensorboard.plugins.custom_scalar.metadata.CONFIG_SUMMARY_TAG
LOCK_FILE = ".eval_events.lock"  # not an event file: tensorboard reads only names containing "tfevents"


def eval_log_dir(loaded_path: str | Path) -> Path:
    """``<run>/tensorboard/eval`` for a checkpoint, ``<export>/tensorboard/eval`` for an exported model."""
    return run_dir_of(loaded_path) / "tensorboard" / "eval"


def custom_scalars_layout(benchmarks: list[str], metrics: tuple[str, ...] = CHART_METRICS) -> dict:
    """{category "eval <metric>": {chart <benchmark>: Multiline over all runs' ``eval/<benchmark>/<metric>``}}."""
    return {f"eval {metric}": {benchmark: ["Multiline", [f"^eval/{re.escape(benchmark)}/{re.escape(metric)}$"]]
                               for benchmark in sorted(benchmarks)} for metric in metrics}


def log_eval_record(log_dir: str | Path, record: dict) -> int:
    """Put a result's numeric metrics at ``samples_seen`` and the layout in ``log_dir``, each (tag, step) once
    (see the module docstring); returns how many points were written."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    step = int(record["samples_seen"])
    scalars = {f"eval/{record['benchmark']}/{name}": value for name, value in record["metrics"].items()
               if isinstance(value, float)}
    with _locked(log_dir / LOCK_FILE):
        stored = _stored_points(log_dir)
        benchmarks = {tag.split("/")[1] for tag, _ in stored if tag.startswith("eval/")} | {record["benchmark"]}
        layout = _layout_bytes(sorted(benchmarks))
        writes = {(tag, step): _float32(value) for tag, value in scalars.items()}
        writes[(LAYOUT_TAG, 0)] = layout
        writes = {key: value for key, value in writes.items() if stored.get(key) != [value]}
        _replace_points(log_dir, {key: value for key, value in writes.items() if key in stored})
        new = {key: value for key, value in writes.items() if key not in stored}
        if new:
            writer = SummaryWriter(log_dir=str(log_dir))
            try:
                for (tag, _), value in new.items():
                    if tag != LAYOUT_TAG:
                        writer.add_scalar(tag, value, global_step=step)
                if (LAYOUT_TAG, 0) in new:
                    writer.add_custom_scalars(custom_scalars_layout(sorted(benchmarks)))
            finally:
                writer.close()
    return len(writes)


def _float32(value: float) -> float:
    """The value as a scalar event stores it (``simple_value`` is a float32)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _layout_bytes(benchmarks: list[str]) -> bytes:
    return custom_scalars(custom_scalars_layout(benchmarks)).value[0].tensor.string_val[0]


def _event_files(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.iterdir() if "tfevents" in p.name and p.is_file())


def _events(path: Path):
    for data in RawEventFileLoader(str(path)).Load():
        yield event_pb2.Event.FromString(data)


def _point_value(value) -> float | bytes | None:
    if value.tag == LAYOUT_TAG:
        return value.tensor.string_val[0] if value.tensor.string_val else b""
    if value.WhichOneof("value") == "simple_value":
        return value.simple_value
    return None  # any other summary kind: still a point, never equal to a value written here


def _stored_points(log_dir: Path) -> dict[tuple[str, int], list]:
    """(tag, step) -> the values stored for it, in file order (more than one is a duplicate)."""
    points: dict[tuple[str, int], list] = defaultdict(list)
    for path in _event_files(log_dir):
        for event in _events(path):
            for value in event.summary.value:
                points[(value.tag, event.step)].append(_point_value(value))
    return dict(points)


def _replace_points(log_dir: Path, values: dict[tuple[str, int], float | bytes]) -> None:
    """Rewrite the event files holding any of ``values``' (tag, step) points: the first one of each gets the new
    value (and the event the current time), any further one (a duplicate) is cut out, as is an event left empty."""
    if not values:
        return
    placed = set()
    for path in _event_files(log_dir):
        events = list(_events(path))
        if not any((v.tag, e.step) in values for e in events for v in e.summary.value):
            continue
        kept = []
        for event in events:
            if event.HasField("summary") and any((v.tag, event.step) in values for v in event.summary.value):
                points = []
                for value in event.summary.value:
                    key = (value.tag, event.step)
                    if key in values and key in placed:
                        continue
                    if key in values:
                        _set_value(value, values[key])
                        placed.add(key)
                    points.append(value)
                if not points:
                    continue
                del event.summary.value[:]
                event.summary.value.extend(points)
                event.wall_time = time.time()
            kept.append(event)
        tmp = path.with_name(f".rewrite{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            records = RecordWriter(handle)
            for event in kept:
                records.write(event.SerializeToString())
            records.flush()
        os.replace(tmp, path)


def _set_value(value, new: float | bytes) -> None:
    if isinstance(new, bytes):
        del value.tensor.string_val[:]
        value.tensor.string_val.append(new)
    else:
        value.simple_value = new


@contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
