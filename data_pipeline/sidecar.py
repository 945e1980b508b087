"""Keyed caption sidecars: a new caption field for existing shards, without copying the shards.

A sidecar belongs to one shard: a JSON Lines file with one line per sample that gets the field(s),
``{"__key__": "<sample key>", "<field>": "<caption>"}``, in shard order. A manifest entry lists its sidecars after
its ``path`` (``"sidecars": ["shard-000000.fused.jsonl"]``, relative to the manifest like ``path``), and
``shard_reader.read_piece`` joins them by key: a sample's fields are its json's, then each sidecar's (a later one
wins). A sample without a line lacks the field, which the loader counts as ``missing_caption`` when that field is
chosen. A sidecar that cannot be read makes its shard's range unreadable (``tar_error``, one warning), like a
broken tar. The join changes no sample count or order, so the epoch plan and the loader's exact resume are those
of the same shards without sidecars; a derived manifest points at the original shards (``write_derived_manifest``).

Why a sidecar and not a copy of every shard with the field added to each json: at 100M samples the images are
nearly all of the bytes. Images resized to 256 px take ~16 KB each (a public 256-px set: 14 GB for 890k images;
LAION-400M at its original sizes: 4.4 TB for 69.9M, ~63 KB), a sidecar line ~0.3 KB (a ~250-character fused
caption plus its key and quoting). A copy would read and write ~1.6 TB (256 px) to ~6 TB per fusion run and fused
field; the sidecars are ~30 GB, under 2% of that, and the shards stay the ones whose sha256 the manifest records.
The join costs the loader little: a 10,000-sample shard reads ~15-20 us per sample slower with its sidecar
(parsing it: 5-8 us; the rest is the garbage collector walking the parsed rows) against ~1.4 ms per sample for
the loader's read + decode + resize (~700 samples/s per worker, BENCHMARKS.md "Data throughput"): ~1-1.5%
(``benchmarks/fuse_throughput.py``, "sidecar join").
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath

import webdataset as wds

from data_pipeline.manifest import MANIFEST_FILE, is_relative, manifest_file, read_manifest, write_manifest

SUFFIX = ".jsonl"
KEY = "__key__"


def sidecar_names(shard_urls: list[str], field: str) -> list[str]:
    """File names of ``field``'s sidecars for these shards: ``<shard stem>.<field>.jsonl``, with the shard's
    manifest index in front of every name when two stems would collide."""
    stems = [re.sub(r"[^A-Za-z0-9_-]", "_", PurePosixPath(url.split()[-1]).name.split(".")[0]) for url in shard_urls]
    if len(set(stems)) < len(stems):
        stems = [f"{index:06d}-{stem}" for index, stem in enumerate(stems)]
    return [f"{stem}.{field}{SUFFIX}" for stem in stems]


class SidecarWriter:
    """Writes a sidecar line by line to ``<path>.tmp``; leaving the ``with`` block renames it over ``path`` (a
    reader never sees half a sidecar) and sets ``entry`` (file name, rows, bytes, sha256). An exception inside the
    block removes the temporary file instead."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.rows, self.bytes, self.digest, self.entry = 0, 0, hashlib.sha256(), None

    def __enter__(self):
        self.file = open(self.tmp, "wb")
        return self

    def write(self, key: str, fields: dict) -> None:
        line = (json.dumps({KEY: key, **fields}, ensure_ascii=False) + "\n").encode()
        self.file.write(line)
        self.digest.update(line)
        self.rows, self.bytes = self.rows + 1, self.bytes + len(line)

    def __exit__(self, error_type, *_) -> None:
        if error_type is not None:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        self.entry = {"path": self.path.name, "rows": self.rows, "bytes": self.bytes,
                      "sha256": self.digest.hexdigest()}


def read_sidecars(urls: tuple[str, ...] | list[str]) -> dict[str, dict]:
    """Sample key -> the fields these sidecars give it (a later sidecar wins); raises when one cannot be read."""
    fields: dict[str, dict] = {}
    for url in urls:
        stream = wds.gopen(url, "rb")
        try:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                key = row.pop(KEY, None) if isinstance(row, dict) else None
                if not isinstance(key, str):
                    raise TypeError(f"{url} line {number}: expected an object with a string {KEY}")
                fields.setdefault(key, {}).update(row)
        finally:
            stream.close()
    return fields


def _relocated(path: str, source_dir: Path, out_dir: Path) -> str:
    """A relative path of ``source_dir``'s manifest, relative to ``out_dir`` instead (other paths are kept)."""
    return os.path.relpath(source_dir / path, out_dir) if is_relative(path) else path


def write_derived_manifest(source: str | Path, out_dir: str | Path, field: str, sidecars: list[str]) -> dict:
    """Write ``out_dir/manifest.json``: ``source``'s shards, each with one more sidecar (``sidecars``: file names in
    ``out_dir``, in manifest order) that adds caption ``field``. Shard and earlier sidecar paths are re-based to
    ``out_dir``, the source's other keys kept, ``caption_fields`` extended. Returns the manifest."""
    source_dir, out_dir = manifest_file(source).parent.absolute(), Path(out_dir).absolute()
    manifest = read_manifest(source)
    if len(sidecars) != len(manifest["shards"]):
        raise ValueError(f"{len(sidecars)} sidecars for {len(manifest['shards'])} shards")
    entries = [{**entry, "path": _relocated(entry["path"], source_dir, out_dir),
                "sidecars": [*(_relocated(s, source_dir, out_dir) for s in entry.get("sidecars", ())), sidecar]}
               for entry, sidecar in zip(manifest["shards"], sidecars)]
    fields = list(manifest.get("caption_fields") or [])
    extra = {k: v for k, v in manifest.items() if k not in ("shards", "num_samples", "caption_fields")}
    return write_manifest(out_dir / MANIFEST_FILE, entries, **extra,
                          caption_fields=[*fields, *([field] if field not in fields else [])])
