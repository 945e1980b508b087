"""``lmm-fuse run``: fuse each sample's raw and synthetic captions into a new caption field, shard by shard.

Input: a manifest whose samples carry a raw and a synthetic caption (field names configurable; a field holding a
list contributes its first non-blank caption). Each sample with both gets the paper's prompt
(``lmm.fusion.prompt``), batches of prompts go to the fuser (``lmm.fusion.generate``), and each post-processed
generation becomes the sample's new caption field. Output, in ``out``:

* one keyed sidecar per shard (``data_pipeline.sidecar``, which says why not a copy of the shards), and once every
  shard is done ``manifest.json`` (the same shards and samples, plus the sidecars, ``caption_fields`` plus the new
  field, so training selects it with ``data.train_manifest=<out> data.caption_source=<field>``) and
  ``stats.json``: rows read, fused and skipped by reason (``SKIP_REASONS``), per shard and in total;
* ``fuse.json``, the run record: what decides the outputs (manifest, model, fields, prompt digest, token and
  character caps, chat template). A later run into the same ``out`` with other values is refused; batch size,
  backend and dtype may change (each shard's done record names its own).

**Resumable per shard.** A shard's sidecar is written to ``<name>.tmp`` and renamed when the shard is done, then a
small done record (``<stem>.<field>.done.json``: counts and the sidecar's size and sha256) is written last. A
re-run skips shards whose record and sidecar are in place, so a killed run redoes at most the shards it had in
flight, and a re-run of a finished run changes nothing. A shard is generated in its own batches, so redoing one
gives the same bytes.

**Parallel.** A process handles one contiguous part of the shard list (``lmm.fusion.parts``: ``--part`` /
``--num-parts``, by default from the Slurm array task and the rank). A process that ends with every shard done
writes the manifest and stats (all such writes are identical); otherwise it names how many are missing, and
``lmm-fuse finish`` writes them later or lists the missing shards.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from data_pipeline.files import write_json_atomic
from data_pipeline.manifest import MANIFEST_FILE, Piece, ShardEntry, load_manifest, manifest_file, read_manifest
from data_pipeline.shard_format import BadSample, sample_fields
from data_pipeline.shard_reader import LOST, read_piece
from data_pipeline.sidecar import SUFFIX, SidecarWriter, sidecar_names, write_derived_manifest
from lmm.fusion.parts import part_range
from lmm.fusion.prompt import PAPER_PROMPT, fusion_prompt, one_line, postprocess

log = logging.getLogger(__name__)

SKIP_REASONS = (
    "unreadable",           # the sample cannot be read: broken tar, json not an object, text not UTF-8
    "missing_raw",          # no raw field, or not text
    "missing_synthetic",    # no synthetic field, or not text
    "empty_input",          # the raw or the synthetic caption is blank
    "unusable_generation",  # nothing left of the generation after post-processing
)
RUN_FILE, STATS_FILE, DONE_SUFFIX = "fuse.json", "stats.json", ".done.json"
_FIELD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class FuseSettings:
    manifest: str
    model: str
    out: str
    field: str = "fused"
    raw_field: str = "raw"
    synthetic_field: str = "synthetic"
    max_new_tokens: int = 128
    max_chars: int = 1000
    chat_template: bool = False
    batch_size: int = 32
    backend: str = "auto"
    dtype: str = "auto"

    def record(self) -> dict:
        """The run record: what decides the outputs."""
        return {"manifest": str(manifest_file(self.manifest).absolute()), "model": str(Path(self.model).absolute()),
                "field": self.field, "raw_field": self.raw_field, "synthetic_field": self.synthetic_field,
                "prompt_sha256": hashlib.sha256(PAPER_PROMPT.encode()).hexdigest()[:16],
                "max_new_tokens": self.max_new_tokens, "max_chars": self.max_chars,
                "chat_template": self.chat_template}


def check_request(settings: FuseSettings) -> None:
    """Refuse a request that cannot run or would not make a usable field (ValueError, naming the option); then
    record the run in ``out`` (or check it against the record there)."""
    s = settings
    for name in ("batch_size", "max_new_tokens", "max_chars"):
        if getattr(s, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    if not _FIELD.match(s.field):
        raise ValueError(f"--field {s.field!r}: use letters, digits, '_' and '-' (it names files and a json key)")
    fields = read_manifest(s.manifest).get("caption_fields")
    if fields is not None:
        if s.field in fields:
            raise ValueError(f"--field {s.field!r}: the manifest already has that caption field ({fields})")
        for option, name in (("--raw-field", s.raw_field), ("--synthetic-field", s.synthetic_field)):
            if name not in fields:
                raise ValueError(f"{option} {name!r}: not one of the manifest's caption fields {fields}")
    if not (Path(s.model) / "config.json").is_file():
        raise ValueError(f"--model {s.model}: not a Hugging Face model directory (no config.json)")
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    record, path = s.record(), out / RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        changed = {k: (old.get(k), v) for k, v in record.items() if old.get(k) != v}
        if changed:
            raise ValueError(f"{s.out} holds a fusion run with other settings (was, now): {changed}; "
                             "use another --out")
    else:
        write_json_atomic(path, record)


def fusion_inputs(sample: dict | None, raw_field: str, synthetic_field: str) -> tuple[str, str] | str:
    """(raw, synthetic) of a read sample, or the reason it cannot be fused (one of SKIP_REASONS)."""
    if sample is LOST:
        return "unreadable"
    try:
        fields = sample_fields(sample)
    except BadSample:
        return "unreadable"
    return fusion_texts(fields, raw_field, synthetic_field)


def fusion_texts(fields: dict, raw_field: str, synthetic_field: str) -> tuple[str, str] | str:
    """(raw, synthetic) of a sample's caption fields (a list gives its first non-blank caption), or why they
    cannot be fused: ``missing_raw``, ``missing_synthetic`` or ``empty_input``. Fusing and training a fuser both
    read their inputs here."""
    texts = []
    for name, reason in ((raw_field, "missing_raw"), (synthetic_field, "missing_synthetic")):
        value = fields.get(name)
        if isinstance(value, list):
            value = next((v for v in value if isinstance(v, str) and v.strip()), "")
        if not isinstance(value, str):
            return reason
        texts.append(value)
    return (texts[0], texts[1]) if all(one_line(t) for t in texts) else "empty_input"


def _done_path(out: Path, sidecar: str) -> Path:
    return out / (sidecar.removesuffix(SUFFIX) + DONE_SUFFIX)


def finished(out: Path, sidecar: str) -> dict | None:
    """The done record of a shard whose sidecar is in place, else None."""
    record_path = _done_path(out, sidecar)
    if not record_path.is_file() or not (out / sidecar).is_file():
        return None
    record = json.loads(record_path.read_text())
    return record if record["sidecar"]["bytes"] == (out / sidecar).stat().st_size else None


def fuse_shard(shard: ShardEntry, sidecar: Path, settings: FuseSettings, fuser, bar: tqdm) -> dict:
    """Fuse one shard into its sidecar; returns its counts (rows, fused, skipped by reason) and sidecar entry."""
    rows, fused, skipped, batch = 0, 0, Counter(), []
    with SidecarWriter(sidecar) as writer:
        def flush() -> None:
            nonlocal fused
            for (key, _), text in zip(batch, fuser.generate([prompt for _, prompt in batch])):
                caption = postprocess(text, settings.max_chars)
                if caption is None:
                    skipped["unusable_generation"] += 1
                else:
                    writer.write(key, {settings.field: caption})
                    fused += 1
            bar.update(len(batch))
            batch.clear()

        for sample in read_piece(Piece(shard.url, 0, shard.num_samples, shard.sidecars)):
            rows += 1
            inputs = fusion_inputs(sample, settings.raw_field, settings.synthetic_field)
            if isinstance(inputs, str):
                skipped[inputs] += 1
                bar.update(1)
                continue
            batch.append((sample["__key__"], fusion_prompt(*inputs)))
            if len(batch) == settings.batch_size:
                flush()
        if batch:
            flush()
    return {"rows": rows, "fused": fused, "skipped": dict(sorted(skipped.items())), "sidecar": writer.entry}


def fuse_part(settings: FuseSettings, index: int, parts: int) -> dict:
    """Fuse the unfinished shards of part ``index`` of ``parts`` (the model is loaded only when there is one);
    then write the manifest and stats if every shard is done. Returns this part's shards, how many were done
    before, its rows / fused / skipped counts, and the shards of the whole run still missing."""
    check_request(settings)
    out, shards = Path(settings.out), load_manifest(settings.manifest)
    names = sidecar_names([s.url for s in shards], settings.field)
    mine = part_range(len(shards), index, parts)
    todo = [i for i in mine if finished(out, names[i]) is None]
    log.info("fuse part %d/%d: shards %d-%d of %d, %d already done, %d to do; field %r from %r + %r, model %s",
             index, parts, mine.start, mine.stop - 1, len(shards), len(mine) - len(todo), len(todo), settings.field,
             settings.raw_field, settings.synthetic_field, settings.model)
    totals = Counter()
    if todo:
        totals = _fuse_shards(settings, [(i, shards[i], out / names[i]) for i in todo], f"fuse {index}/{parts}")
    return {"part": [index, parts], "shards": list(mine), "done_before": len(mine) - len(todo),
            "rows": totals.pop("rows", 0), "fused": totals.pop("fused", 0), "skipped": dict(totals),
            "missing": finish(out)}


def _fuse_shards(settings: FuseSettings, jobs: list[tuple[int, ShardEntry, Path]], desc: str) -> Counter:
    """Fuse (index, shard, sidecar path) jobs, each finished with its done record; returns the summed counts."""
    from lmm.fusion.generate import Fuser

    s, totals = settings, Counter()
    fuser = Fuser(s.model, s.max_new_tokens, s.backend, s.chat_template, s.dtype)
    engine = {"backend": fuser.backend, "batch_size": s.batch_size, "dtype": s.dtype}
    # a bar in a terminal; none in a log file (Slurm's --output), where the per-shard lines tell the story
    with tqdm(total=sum(shard.num_samples for _, shard, _ in jobs), desc=desc, unit="caption", disable=None,
              dynamic_ncols=True) as bar:
        for index, shard, sidecar in jobs:
            start = time.perf_counter()
            counts = fuse_shard(shard, sidecar, s, fuser, bar)
            write_json_atomic(_done_path(sidecar.parent, sidecar.name),
                              {"index": index, "shard": shard.url, **counts, "engine": engine})
            seconds = time.perf_counter() - start
            generated = counts["fused"] + counts["skipped"].get("unusable_generation", 0)
            log.info("shard %d (%s): %d rows, %d fused, skipped %s; %.1f s, %.2f captions/s", index,
                     Path(shard.url).name, counts["rows"], counts["fused"], counts["skipped"] or "none", seconds,
                     generated / seconds)
            totals.update({"rows": counts["rows"], "fused": counts["fused"], **counts["skipped"]})
    return totals


def finish(out: str | Path) -> list[str]:
    """Write ``manifest.json`` and ``stats.json`` of the fusion run in ``out`` when every shard is done; returns
    the shards not done yet (then nothing is written)."""
    out = Path(out)
    record = json.loads((out / RUN_FILE).read_text())
    shards = load_manifest(record["manifest"])
    names = sidecar_names([s.url for s in shards], record["field"])
    records = [finished(out, name) for name in names]
    missing = [shard.url for shard, done in zip(shards, records) if done is None]
    if missing:
        log.info("%d of %d shards done; not yet: %s", len(shards) - len(missing), len(shards),
                 ", ".join(Path(m).name for m in missing[:10]) + (" ..." if len(missing) > 10 else ""))
        return missing
    manifest = write_derived_manifest(record["manifest"], out, record["field"], names)
    skipped = Counter()
    for done in records:
        skipped.update(done["skipped"])
    total = {"rows": sum(r["rows"] for r in records), "fused": sum(r["fused"] for r in records),
             "skipped": dict(sorted(skipped.items()))}
    write_json_atomic(out / STATS_FILE, {**record, "total": total, "shards": records})
    log.info("all %d shards done: %d rows, %d fused, skipped %s; wrote %s (caption_fields %s) and %s",
             len(shards), total["rows"], total["fused"], total["skipped"] or "none", out / MANIFEST_FILE,
             manifest["caption_fields"], out / STATS_FILE)
    return []
