"""Prepare training shards: a caption table, a Karpathy caption file or an img2dataset download -> fixed-size
shards + manifest + stats.

    python -m data_pipeline.prepare table captions.parquet --out shards/ --image-column path --image-root imgs/
    python -m data_pipeline.prepare karpathy dataset_coco.json --image-root coco/ --split train --split restval \
        --out shards/
    python -m data_pipeline.prepare img2dataset downloads/ --out shards/ --preset capsfusion120m
    python -m data_pipeline.prepare img2dataset downloads/ --out downloads/ --in-place   # manifest only

**table**: parquet or JSONL files with one row per (image, caption set). A column mapping names which column
feeds which field (``--column raw=laion_2b``; ``--preset capsfusion120m`` maps the release's columns). Images
come from a column of local paths (``--image-column``, relative to ``--image-root``): URLs are not fetched --
fetch them with img2dataset first. Rows whose image is a URL, missing or unreadable, or that have no caption, are
counted as failures by reason. Rows naming the same image (COCO-style, 5 captions per image) become one sample
whose caption fields hold the list of distinct captions. Shards hold ``--samples-per-shard`` samples (each input
file's last shard holds the rest; a rare unreadable image makes its shard one smaller).

**karpathy**: a Karpathy-split file (``dataset_coco.json``, ``dataset_flickr30k.json``: ``images[]`` with
``filepath``, ``filename``, ``split``, ``cocoid`` or ``imgid``, ``sentences[].raw``) -> one sample per image of
the ``--split`` splits (repeatable; default train): the caption field (``--field``, default ``captions``) holds
the image's sentences as a list (stripped; empty ones are dropped and counted), ``image_id`` its id. Images are
``--image-root/filepath/filename``; missing or unreadable ones are failures, as for tables. A split with no
images, or no usable image at all, is an error.

**img2dataset**: its ``NNNNN.tar`` shards (``key.jpg``, ``key.txt``, ``key.json`` with any extra columns saved
with ``--save_additional_columns``) are re-packed into shards of exactly ``--samples-per-shard`` samples; the
mapping is applied to the json's fields (a field whose column is absent falls back to the field's own name: ``url``
is img2dataset's source URL, ``raw`` its ``txt``). ``--in-place`` only writes a manifest over the existing tars
(the loader reads img2dataset's layout as-is). An input shard that is not a tar, is empty, or breaks off (cut
short, corrupt) never stops the run: the samples before the break are used, and the shard is named in the stats.

Output: shards, ``manifest.json`` (per shard: path, num_samples, bytes, sha256; ``num_images``, which equals
``num_samples``, and ``caption_counts``: captions per field, each entry of a list counted, absent for
``--in-place``) and ``stats.json`` (rows, unique images, samples, captions per field, failures by reason; for
Karpathy input the images per split, sentences and empty sentences; for img2dataset input ``unreadable_shards``:
per broken input shard its path, error, samples kept and samples lost, the latter from img2dataset's per-shard
stats and counted as ``tar_error`` failures). High-bit-depth images (16-bit PNGs) are rescaled to 8 bits. Shards
are written to a temporary name and renamed, then a ``<shard>.json`` record marks them done: a re-run skips
finished shards (resumable) and rewrites identical outputs (idempotent). Work is spread over ``--workers``
processes with a progress bar.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import multiprocessing as mp
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from data_pipeline.files import write_json_atomic
from data_pipeline.manifest import MANIFEST_FILE, Piece, write_manifest
from data_pipeline.shard_format import (
    BadSample,
    encode_sample,
    image_member,
    is_high_bit_depth,
    rgb_image,
    sample_fields,
    shard_entry,
    write_shard,
)
from data_pipeline.shard_reader import LOST, read_pieces, scan_shard

PRESETS = {
    # The CapsFusion-120M release: image_url, laion_2b (raw alt-text), laion_coco (BLIP), capsfusion (fused).
    "capsfusion120m": {"url": "image_url", "raw": "laion_2b", "synthetic": "laion_coco", "capsfusion": "capsfusion"},
}
DEFAULT_COLUMNS = {"url": "url", "raw": "raw", "synthetic": "synthetic", "capsfusion": "capsfusion"}
STATS_FILE = "stats.json"
PIL_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


# ------------------------------------------------------------------------------------------------ samples

def _caption_values(values: Iterable) -> str | list[str] | None:
    """One caption, the list of distinct ones (several rows per image), or None."""
    distinct = list(dict.fromkeys(v.strip() for v in values if isinstance(v, str) and v.strip()))
    if not distinct:
        return None
    return distinct[0] if len(distinct) == 1 else distinct


def _image_record(data: bytes) -> tuple[str, bytes, int, int]:
    """(extension, bytes, width, height): JPEG, PNG and WEBP bytes are kept, except high-bit-depth ones (re-encoded
    in 8 bits); images in other formats are re-encoded as JPEG. Raises BadSample."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            ext = PIL_FORMATS.get(image.format)
            if ext is None or is_high_bit_depth(image):
                ext = ext or "jpg"
                data = _encoded_rgb(image, ext)
    except Exception:
        raise BadSample("image_unreadable") from None
    return ext, data, width, height


def _encoded_rgb(image, ext: str) -> bytes:
    """``image`` as 8-bit RGB bytes: PNG for ``ext`` png, else JPEG."""
    out = io.BytesIO()
    rgb_image(image).save(out, format="PNG" if ext == "png" else "JPEG", quality=95)
    return out.getvalue()


def _write_shard(job: dict) -> dict:
    """Write one shard from ``job["samples"]`` (table) or ``job["pieces"]`` (img2dataset); returns its record."""
    out = Path(job["path"])
    failures, captions = Counter(), Counter()
    samples = _table_samples(job["samples"]) if "samples" in job else _img2dataset_samples(job["pieces"],
                                                                                         job["columns"])

    def usable():
        for sample in samples:
            if isinstance(sample, BadSample):
                failures[sample.reason] += 1
                continue
            fields = json.loads(sample["json"])
            captions.update({f: len(v) if isinstance(v, list) else 1 for f, v in fields.items()
                             if f in job["caption_fields"]})
            yield sample

    record = {"shard": write_shard(out, usable()), "failures": dict(failures), "captions": dict(captions)}
    write_json_atomic(out.with_name(out.name + ".json"), record)  # the done marker, written last
    return record


def _table_samples(groups: list[dict]):
    for group in groups:
        try:
            data = Path(group["image"]).read_bytes()
            ext, data, width, height = _image_record(data)
        except (OSError, BadSample):
            yield BadSample("image_unreadable")
            continue
        yield encode_sample(group["key"], ext, data, {**group["fields"], "width": width, "height": height})


def _mapped_fields(meta: dict, columns: dict[str, str]) -> dict:
    """Caption fields and url of an img2dataset sample; a field whose column is absent falls back to the field's
    own name (``url``: img2dataset's source URL; ``raw``: the ``.txt``). Raises BadSample."""
    fields = {}
    for field, column in columns.items():
        value = meta.get(column)
        if value is None:
            value = meta.get(field)
        if field == "url":
            if isinstance(value, str):
                fields["url"] = value
        elif (caption := _caption_values(value if isinstance(value, list) else [value])) is not None:
            fields[field] = caption
    if fields.keys() <= {"url"}:
        raise BadSample("no_caption")
    return fields


def _img2dataset_samples(pieces: list[Piece], columns: dict[str, str]):
    for raw in read_pieces(pieces):
        if raw is LOST:
            yield BadSample("tar_error")
            continue
        try:
            meta = sample_fields({k: v for k, v in raw.items() if k in ("json", "txt")})
            _, image = image_member(raw)
            fields = _mapped_fields(meta, columns)
            ext, data, width, height = _image_record(image)
        except BadSample as bad:
            yield bad
            continue
        key = raw["__key__"].replace("/", "_")
        extra = {k: meta[k] for k in ("original_width", "original_height") if k in meta}
        yield encode_sample(key, ext, data, {**fields, **extra, "source_key": raw["__key__"], "width": width,
                                             "height": height})


# ------------------------------------------------------------------------------------------- table input

def _read_rows(path: Path, needed: list[str]) -> tuple[list[dict], Counter]:
    """Rows of a parquet or JSONL file as dicts of the needed columns; unparsable JSONL lines are failures."""
    failures = Counter()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        names = pq.ParquetFile(path).schema_arrow.names
        return pq.read_table(path, columns=[c for c in needed if c in names]).to_pylist(), failures
    rows = []
    with open(path, "rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict):
                    raise ValueError
                rows.append(row)
            except (UnicodeDecodeError, ValueError):
                failures["bad_row"] += 1
    return rows, failures


def _stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", path.name.split(".")[0])


def _local_image(image: str, image_root: Path | None, failures: Counter) -> Path | None:
    """The local file of an image path (relative to ``image_root`` if given); None, counted as a failure
    (``image_not_fetched``, ``missing_image``), when it is a URL or no file."""
    if "://" in image:
        failures["image_not_fetched"] += 1
        return None
    local = image_root / image if image_root else Path(image)
    if not local.is_file():
        failures["missing_image"] += 1
        return None
    return local


def plan_table_file(path: Path, columns: dict[str, str], image_column: str, image_root: Path | None,
                    group: bool) -> tuple[list[dict], dict]:
    """Group a table's rows by image and keep the usable groups (sample keys ``<file stem>_<group index>``);
    returns (groups, stats) with rows, unique images and failures by reason."""
    rows, failures = _read_rows(path, [image_column, *columns.values()])
    if rows and not any(image_column in r for r in rows[:1000]):
        raise SystemExit(f"{path}: no image column '{image_column}'. Tables that hold only URLs (like the "
                         "CapsFusion-120M release) need their images fetched first: run img2dataset on them and "
                         "prepare its output folder (`prepare img2dataset`), or add a column of local paths.")
    by_image: dict[str, list[dict]] = {}
    for index, row in enumerate(rows):
        image = row.get(image_column)
        if not isinstance(image, str) or not image:
            failures["missing_image"] += 1
            continue
        by_image.setdefault(image if group else f"{index}\0{image}", []).append(row)
    groups, stem, url_column = [], _stem(path), columns.get("url")
    for index, (name, members) in enumerate(by_image.items()):
        local = _local_image(name.split("\0")[-1], image_root, failures)
        if local is None:
            continue
        fields = {f: _caption_values(r.get(c) for r in members) for f, c in columns.items() if f != "url"}
        fields = {f: v for f, v in fields.items() if v is not None}
        if not fields:
            failures["no_caption"] += 1
            continue
        url = next((r[url_column] for r in members if url_column and isinstance(r.get(url_column), str)), None)
        groups.append({"key": f"{stem}_{index:09d}", "image": str(local),
                       "fields": {**fields, **({"url": url} if url else {})}})
    return groups, {"rows": len(rows) + failures["bad_row"], "unique_images": len(by_image),
                    "failures": dict(failures)}


# ---------------------------------------------------------------------------------------- karpathy input

METADATA_FIELDS = ("url", "image_id", "width", "height", "source_key")


def _karpathy_entries(path: Path, splits: list[str]) -> list[tuple[int, dict]]:
    """(position in the file, entry) of the images of ``splits`` in a Karpathy-format file; a split without images
    is an error."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path}: not a readable Karpathy-format file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SystemExit(f"{path}: not a Karpathy-format file (expected a top-level 'images' list)")
    entries = [(i, e) for i, e in enumerate(data["images"]) if isinstance(e, dict) and e.get("split") in splits]
    found = Counter(e["split"] for _, e in entries)
    missing = [s for s in splits if not found[s]]
    if missing:
        present = sorted({str(e.get("split")) for e in data["images"] if isinstance(e, dict)})
        raise SystemExit(f"{path}: no images in split(s) {missing}; the file's splits: {present}")
    return entries


def plan_karpathy_file(path: Path, image_root: Path, splits: list[str], field: str) -> tuple[list[dict], dict]:
    """One group per image of ``splits`` (image ``image_root/filepath/filename``; sample key ``<file stem>_<position
    in the file>``) whose ``field`` lists its sentences (``raw``, stripped, empty ones dropped and counted), with
    ``image_id`` (``cocoid``, else ``imgid``); returns (groups, stats): images per split, sentences, empty
    sentences and failures by reason."""
    entries = _karpathy_entries(path, splits)
    groups, failures, stem, sentences, empty = [], Counter(), _stem(path), 0, 0
    for index, entry in entries:
        image_id = entry.get("cocoid", entry.get("imgid"))
        if image_id is None or not isinstance(entry.get("filename"), str):
            raise SystemExit(f"{path}: image entry {index} has no cocoid/imgid or filename")
        raws = [s.get("raw") if isinstance(s, dict) else None for s in entry.get("sentences") or []]
        captions = [r.strip() for r in raws if isinstance(r, str) and r.strip()]
        sentences, empty = sentences + len(raws), empty + len(raws) - len(captions)
        local = _local_image(os.path.join(entry.get("filepath") or "", entry["filename"]), image_root, failures)
        if local is None:
            continue
        if not captions:
            failures["no_caption"] += 1
            continue
        groups.append({"key": f"{stem}_{index:09d}", "image": str(local),
                       "fields": {field: captions, "image_id": image_id}})
    return groups, {"splits": dict(Counter(e["split"] for _, e in entries)), "unique_images": len(entries),
                    "sentences": sentences, "empty_sentences": empty, "failures": dict(failures)}


# --------------------------------------------------------------------------------------------- driving

def _finished(path: Path) -> dict | None:
    marker = path.with_name(path.name + ".json")
    if marker.is_file() and path.is_file():
        record = json.loads(marker.read_text())
        if record["shard"]["bytes"] == path.stat().st_size:
            return record
    return None


def _run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    """Write the unfinished shards in parallel with a progress bar; returns every shard's record in job order."""
    from tqdm import tqdm

    records = {job["path"]: _finished(Path(job["path"])) for job in jobs}
    todo = [job for job in jobs if records[job["path"]] is None]
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="shard", desc="prepare", file=sys.stderr) as bar:
        if workers > 1 and len(todo) > 1:
            with mp.get_context("fork").Pool(min(workers, len(todo))) as pool:
                for job, record in zip(todo, pool.imap(_write_shard, todo)):
                    records[job["path"]] = record
                    bar.update()
        else:
            for job in todo:
                records[job["path"]] = _write_shard(job)
                bar.update()
    return [records[job["path"]] for job in jobs]


def _finish(out: Path, records: list[dict], stats: dict, caption_fields: list[str], counted: bool = True) -> dict:
    """Write manifest.json and stats.json from the shard records and the planning stats; the manifest gets
    ``num_images`` and, when the shards' captions were ``counted`` (not ``--in-place``), ``caption_counts``."""
    failures = Counter(stats.pop("failures", {}))
    captions = Counter()
    for record in records:
        failures.update(record["failures"])
        captions.update(record["captions"])
    entries = [r["shard"] for r in records]
    counts = {"caption_counts": {f: captions[f] for f in caption_fields}} if counted else {}
    manifest = write_manifest(out / MANIFEST_FILE, entries, caption_fields=caption_fields,
                              num_images=sum(e["num_samples"] for e in entries), **counts)
    stats = {**stats, "samples": manifest["num_samples"], "shards": len(entries),
             "captions": dict(sorted(captions.items())), "failures": dict(sorted(failures.items()))}
    if "unique_images" not in stats:
        stats["unique_images"] = manifest["num_samples"]
    write_json_atomic(out / STATS_FILE, stats)
    return stats


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _group_jobs(out: Path, stem: str, groups: list[dict], samples_per_shard: int,
                caption_fields: list[str]) -> list[dict]:
    """Shard jobs ``<stem>-NNNNNN.tar`` of ``samples_per_shard`` image groups each (the last holds the rest)."""
    return [{"path": str(out / f"{stem}-{k:06d}.tar"), "samples": chunk, "caption_fields": caption_fields}
            for k, chunk in enumerate(_chunks(groups, samples_per_shard))]


def prepare_table(inputs: list[Path], out: Path, columns: dict[str, str], image_column: str,
                  image_root: Path | None = None, samples_per_shard: int = 10_000, workers: int = 1,
                  group: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    stems = [_stem(p) for p in inputs]
    if len(set(stems)) != len(stems):
        raise SystemExit(f"input files must have distinct names (they name the shards): {stems}")
    jobs, rows, images, failures = [], 0, 0, Counter()
    caption_fields = [f for f in columns if f != "url"]
    for path, stem in zip(inputs, stems):
        groups, file_stats = plan_table_file(path, columns, image_column, image_root, group)
        rows, images = rows + file_stats["rows"], images + file_stats["unique_images"]
        failures.update(file_stats["failures"])
        jobs += _group_jobs(out, stem, groups, samples_per_shard, caption_fields)
    records = _run_jobs(jobs, workers)
    return _finish(out, records, {"input": "table", "rows": rows, "unique_images": images, "failures": failures},
                   caption_fields)


def prepare_karpathy(path: Path, out: Path, image_root: Path, splits: list[str], field: str = "captions",
                     samples_per_shard: int = 10_000, workers: int = 1) -> dict:
    """Shards of the images of ``splits`` in a Karpathy-format file, each with its sentences in ``field``."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    if not field or "." in field or field in METADATA_FIELDS:
        raise SystemExit(f"--field {field!r}: a caption field name without dots, not one of {METADATA_FIELDS}")
    groups, stats = plan_karpathy_file(path, image_root, list(dict.fromkeys(splits)), field)
    out.mkdir(parents=True, exist_ok=True)
    records = _run_jobs(_group_jobs(out, _stem(path), groups, samples_per_shard, [field]), workers)
    stats = _finish(out, records, {"input": "karpathy", **stats}, [field])
    if not stats["samples"]:
        raise SystemExit(f"{path}: no usable image in split(s) {splits} (failures: {stats['failures']})")
    return stats


def prepare_img2dataset(folder: Path, out: Path, columns: dict[str, str], samples_per_shard: int = 10_000,
                        workers: int = 1, in_place: bool = False) -> dict:
    sources = sorted(folder.glob("*.tar"))
    if not sources:
        raise SystemExit(f"{folder}: no .tar shards (expected img2dataset's NNNNN.tar output)")
    with mp.get_context("fork").Pool(max(1, min(workers, len(sources)))) as pool:
        scans = pool.map(scan_shard, [str(s) for s in sources])
    counts = [count for count, _ in scans]
    downloads = Counter()
    for stats_file in sorted(folder.glob("*_stats.json")):
        s = _download_stats(stats_file)
        downloads.update({"rows": s.get("count", 0), "download_failed": s.get("failed_to_download", 0),
                          "resize_failed": s.get("failed_to_resize", 0)})
    rows = downloads.pop("rows", 0) or sum(counts)
    unreadable = [_unreadable_shard(s, count, error) for s, (count, error) in zip(sources, scans) if error]
    lost = sum(u["samples_lost"] or 0 for u in unreadable)
    failures = {k: v for k, v in {**downloads, "tar_error": lost}.items() if v}
    caption_fields = [f for f in columns if f != "url"]
    out.mkdir(parents=True, exist_ok=True)
    if in_place:
        records = [{"shard": {**shard_entry(s, n), "path": os.path.relpath(s, out)}, "failures": {}, "captions": {}}
                   for s, n in zip(sources, counts)]
    else:
        pieces = [Piece(str(s), 0, n) for s, n in zip(sources, counts) if n]
        jobs = [{"path": str(out / f"shard-{k:06d}.tar"), "pieces": chunk, "columns": columns,
                 "caption_fields": caption_fields} for k, chunk in enumerate(_split_pieces(pieces, samples_per_shard))]
        records = _run_jobs(jobs, workers)
    return _finish(out, records, {"input": "img2dataset", "rows": rows, "unreadable_shards": unreadable,
                                  "failures": failures}, caption_fields, counted=not in_place)


def _download_stats(path: Path) -> dict:
    """An img2dataset ``NNNNN_stats.json``; {} when missing or unreadable."""
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) else {}


def _unreadable_shard(source: Path, kept: int, error: str) -> dict:
    """Stats entry of an input shard that breaks off: path, error, samples kept (those before the break) and
    samples lost (img2dataset's count of samples written to it, less those kept; null without its stats file)."""
    written = _download_stats(source.with_name(f"{source.stem}_stats.json")).get("successes")
    lost = max(written - kept, 0) if isinstance(written, int) else None
    return {"path": str(source), "error": error, "samples_kept": kept, "samples_lost": lost}


def _split_pieces(pieces: list[Piece], size: int) -> list[list[Piece]]:
    """Consecutive groups of exactly ``size`` samples (the last may be smaller), cutting pieces as needed."""
    groups, current, room = [], [], size
    for piece in pieces:
        start = piece.start
        while start < piece.stop:
            take = min(room, piece.stop - start)
            current.append(Piece(piece.url, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                groups.append(current)
                current, room = [], size
    return groups + ([current] if current else [])


# ------------------------------------------------------------------------------------------------- CLI

def parse_columns(preset: str | None, pairs: list[str], defaults: dict[str, str]) -> dict[str, str]:
    """field -> column: the preset (or defaults), then ``field=column`` pairs."""
    columns = dict(PRESETS[preset] if preset else defaults)
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column or "." in field:
            raise SystemExit(f"--column {pair!r}: expected FIELD=COLUMN, e.g. raw=laion_2b")
        columns[field] = column
    return columns


def _expand(inputs: list[str]) -> list[Path]:
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".jsonl", ".json"))
        else:
            paths += [Path(p) for p in sorted(glob.glob(item))] or [path]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise SystemExit(f"input files not found: {missing or inputs}")
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="lmm-prepare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="input", required=True)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--out", required=True, type=Path, help="output folder (shards, manifest.json, stats.json)")
    output.add_argument("--samples-per-shard", type=int, default=10_000)
    output.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    common = argparse.ArgumentParser(add_help=False, parents=[output])
    common.add_argument("--preset", choices=sorted(PRESETS), help="column mapping of a known release")
    common.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                        help="feed caption/metadata FIELD from COLUMN (repeatable), e.g. laclip=laclip_caption")
    table = sub.add_parser("table", parents=[common], help="parquet / JSONL caption table(s)")
    table.add_argument("inputs", nargs="+", help="files, folders or globs")
    table.add_argument("--image-column", default="image", help="column of local image paths")
    table.add_argument("--image-root", type=Path, help="folder the image paths are relative to")
    table.add_argument("--no-group", action="store_true", help="one sample per row even if images repeat")
    karpathy = sub.add_parser("karpathy", parents=[output],
                              help="a Karpathy-split caption file (dataset_coco.json, dataset_flickr30k.json)")
    karpathy.add_argument("annotations", type=Path, help="the Karpathy-format json")
    karpathy.add_argument("--image-root", required=True, type=Path, help="folder the filepath/filename are under")
    karpathy.add_argument("--split", action="append", metavar="SPLIT",
                          help="split to take (repeatable, e.g. train and restval; default: train)")
    karpathy.add_argument("--field", default="captions", help="caption field holding each image's sentences")
    folder = sub.add_parser("img2dataset", parents=[common], help="an img2dataset output folder")
    folder.add_argument("folder", type=Path)
    folder.add_argument("--in-place", action="store_true", help="only write a manifest over the existing tars")
    args = parser.parse_args(argv)
    if args.input == "table":
        columns = parse_columns(args.preset, args.column, DEFAULT_COLUMNS)
        stats = prepare_table(_expand(args.inputs), args.out, columns, args.image_column, args.image_root,
                              args.samples_per_shard, args.workers, not args.no_group)
    elif args.input == "karpathy":
        stats = prepare_karpathy(args.annotations, args.out, args.image_root, args.split or ["train"], args.field,
                                 args.samples_per_shard, args.workers)
    else:
        columns = parse_columns(args.preset, args.column, {"url": "url", "raw": "raw"})
        stats = prepare_img2dataset(args.folder, args.out, columns, args.samples_per_shard, args.workers,
                                    args.in_place)
    print(json.dumps(stats, indent=1))
    return stats


if __name__ == "__main__":
    main()
