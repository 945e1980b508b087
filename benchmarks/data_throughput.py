"""Data-loader throughput: our loader vs a bare tar-read + JPEG-decode + resize loop vs webdataset's standard
(open_clip-style) pipeline, on one set of generated shards; plus planning a 100M-sample epoch over 1024 x 8 slots.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/data_throughput.py --samples 20000 --workers 2

(a) ours: CaptionStream (epoch plan, windowed shuffle, caption choice, open_clip's EVA transform, sentencepiece,
    padded batches with loss masks, loader positions) through a torch DataLoader, pixels as uint8 for the
    device-side ToTensor + Normalize; (a', with --cpu-normalize) the same with that normalisation on this CPU;
(b) bare: each of the same number of processes reads its tars (``tarfile``), decodes and resizes the JPEGs to
    224 px -- the practical limit of this machine; (b') the same loop reading the tars with our header-speed
    parser (``data_pipeline.tar_members``), which (a) uses;
(c) webdataset as open_clip's training code uses it: shard list, split_by_node/worker, tarfile_to_samples,
    sample shuffle, decode("pilrgb"), the same transform and tokenizer, batched, WebLoader.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

TARGET = 224
CPU_NORMALISED = "(a') ours, normalised on the CPU"
BARE_FAST_TAR = "(b') bare, our tar parser"


# --------------------------------------------------------------------------------------------- shards

def _jpeg(index: int, size: int) -> bytes:
    """A smooth random picture with some texture (compresses like a photo, ~15-25 kB at 256 px, q=90)."""
    rng = np.random.default_rng(index)
    small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    pixels = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_shard(job: tuple[Path, int, int, int]) -> dict:
    import webdataset as wds
    path, start, stop, size = job
    with wds.TarWriter(str(path), encoder=False) as sink:
        for i in range(start, stop):
            caption = f"a photo of object {i % 97} in scene {i % 13}"
            fields = {"raw": caption + " stock photo", "synthetic": "a picture", "capsfusion": caption}
            sink.write({"__key__": f"sample{i:08d}", "jpg": _jpeg(i, size), "json": json.dumps(fields).encode()})
    return {"path": path.name, "num_samples": stop - start, "bytes": path.stat().st_size}


def generate_shards(folder: Path, samples: int, per_shard: int, size: int, workers: int) -> Path:
    from data_pipeline.manifest import write_manifest
    jobs = [(folder / f"bench-{k:05d}.tar", s, min(s + per_shard, samples), size)
            for k, s in enumerate(range(0, samples, per_shard))]
    with mp.get_context("fork").Pool(workers) as pool:
        entries = pool.map(_write_shard, jobs)
    write_manifest(folder / "manifest.json", entries)
    return folder / "manifest.json"


# ------------------------------------------------------------------------------------------ pipelines

def eva_transform():
    """open_clip's eval transform for EVA01 towers (224 px, bicubic, shortest-side resize, OpenAI mean/std)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.transform import PreprocessCfg, image_transform_v2
    return image_transform_v2(PreprocessCfg(size=TARGET, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD,
                                            interpolation="bicubic", resize_mode="shortest"), is_train=False)


def _decode_resize(data: bytes) -> None:
    np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((TARGET, TARGET), Image.BICUBIC))


def _jpegs(url: str, fast_tar: bool):
    """The JPEG members' bytes of one shard, read with ``tarfile`` or with our parser."""
    if fast_tar:
        from data_pipeline.tar_members import iter_members
        with open(url, "rb") as stream:
            yield from (m.read() for m in iter_members(stream, seekable=True) if m.name.endswith(".jpg"))
    else:
        with tarfile.open(url, mode="r|") as tar:
            yield from (tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg"))


def _bare_worker(job: tuple[list[str], bool]) -> int:
    urls, fast_tar = job
    count = 0
    for url in urls:
        for data in _jpegs(url, fast_tar):
            _decode_resize(data)
            count += 1
    return count


def run_bare(shards: list, workers: int, fast_tar: bool = False) -> int:
    urls = [s.url for s in shards]
    with mp.get_context("fork").Pool(workers) as pool:
        return sum(pool.map(_bare_worker, [(urls[w::workers], fast_tar) for w in range(workers)]))


def run_ours(shards: list, tokenizer, workers: int, batch: int, buffer: int, normalize_on_cpu: bool) -> int:
    """Batches as the trainer gets them; ``normalize_on_cpu=False`` stops before the ToTensor + Normalize that
    ``TrainLoader`` runs on the training device (a GPU in a real run)."""
    from data_pipeline.captions import CaptionSelector
    from data_pipeline.loader import CaptionStream, TrainLoader, build_train_loader
    from data_pipeline.manifest import subset, total_samples
    from data_pipeline.sequence import SequenceLayout
    total = total_samples(shards)
    stream = CaptionStream(subset(shards, total), CaptionSelector("capsfusion"), eva_transform(),
                           SequenceLayout(tokenizer, 32, 64), 0, 1, batch, shuffle_buffer=buffer)
    slots = max(1, workers)
    batches = (total // slots // batch) * slots  # one epoch, whole batches
    seen = 0
    loader = build_train_loader(stream, workers)
    if not normalize_on_cpu:
        loader = TrainLoader(loader.loader, normalize=None)
    for _, b in zip(range(batches), loader):
        seen += len(b["keys"])
    return seen


def run_webdataset(shards: list, tokenizer, workers: int, batch: int, buffer: int) -> int:
    """open_clip's ``get_wds_dataset`` (non-resampled branch), with our transform and tokenizer."""
    import torch
    import webdataset as wds

    from data_pipeline.sequence import SequenceLayout
    layout = SequenceLayout(tokenizer, 32, 64)
    transform = eva_transform()

    def caption_ids(fields: dict):  # decode() already parsed the json
        return torch.tensor(layout.training_example(fields["capsfusion"])[0])

    pipeline = wds.DataPipeline(
        wds.SimpleShardList([s.url for s in shards]),
        wds.detshuffle(bufsize=2000, initial=500, seed=0, epoch=0),
        wds.split_by_node, wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(bufsize=buffer, initial=min(1000, buffer)),
        wds.select(lambda s: "json" in s and ("jpg" in s or "png" in s)),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="json"),
        wds.map_dict(image=transform, text=caption_ids),
        wds.to_tuple("image", "text"),
        wds.batched(batch, partial=False, collation_fn=lambda s: (torch.stack([x[0] for x in s]),
                                                                  [x[1] for x in s])))
    loader = wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers,
                           persistent_workers=workers > 0)
    return sum(len(images) for images, _ in loader)


def timed(fn, *args) -> tuple[int, float]:
    start = time.perf_counter()
    count = fn(*args)
    return count, time.perf_counter() - start


# ------------------------------------------------------------------------------------------- planning

def bench_planning(shards: int, samples: int, ranks: int, workers: int) -> tuple[float, float, float]:
    """(seconds to load the manifest, seconds to plan the epoch for every slot, peak MiB while planning)."""
    from data_pipeline.manifest import EpochPlan, load_manifest, subset, write_manifest

    def plan(entries):
        epoch = EpochPlan(subset(entries, samples), ranks * workers, seed=0, epoch=0)
        epoch.slot_starts()  # every slot's first shard and offset
        epoch.slot_range(ranks * workers - 1)  # one slot's pieces, as a worker computes them
        return epoch

    with tempfile.TemporaryDirectory() as tmp:
        per = samples // shards
        write_manifest(Path(tmp) / "manifest.json", [{"path": f"pipe:aws s3 cp s3://bucket/s-{i:06d}.tar -",
                                                      "num_samples": per, "bytes": 10**9, "sha256": "0" * 64}
                                                     for i in range(shards)])
        start = time.perf_counter()
        entries = load_manifest(Path(tmp) / "manifest.json")
        loaded = time.perf_counter()
        plan(entries)
        planned = time.perf_counter()
        tracemalloc.start()  # a second pass for memory (tracing slows it down)
        plan(entries)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return loaded - start, planned - loaded, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="dataloader workers / processes for every pipeline")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--shuffle-buffer", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds over slices of the shards")
    parser.add_argument("--cpu-normalize", action="store_true",
                        help="also time (a') ours with ToTensor + Normalize on this CPU (a CPU-only training run)")
    parser.add_argument("--dir", type=Path, help="reuse / keep shards here (default: a temporary folder)")
    args = parser.parse_args(argv)

    from data_pipeline.manifest import load_manifest
    from data_pipeline.tokenizer import CaptionTokenizer, caption_corpus, train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / "manifest.json"
        start = time.perf_counter()
        if not manifest.is_file() or json.loads(manifest.read_text())["num_samples"] != args.samples:
            generate_shards(folder, args.samples, args.per_shard, args.image_size, max(1, args.workers))
        print(f"shards: {args.samples} samples of {args.image_size} px JPEG in {folder} "
              f"({time.perf_counter() - start:.1f} s)")
        tokenizer = CaptionTokenizer(train_tokenizer(caption_corpus(load_manifest(manifest), 2000),
                                                     folder / "bench_sp.model", 200))
        shards = load_manifest(manifest)
        pipelines = {"(b) bare tar+decode+resize": (run_bare, args.workers),
                     BARE_FAST_TAR: (run_bare, args.workers, True),
                     "(a) ours, uint8 to the device": (run_ours, tokenizer, args.workers, args.batch,
                                                       args.shuffle_buffer, False),
                     "(c) webdataset open_clip-style": (run_webdataset, tokenizer, args.workers, args.batch,
                                                        args.shuffle_buffer)}
        if args.cpu_normalize:
            pipelines[CPU_NORMALISED] = (run_ours, tokenizer, args.workers, args.batch, args.shuffle_buffer, True)
        for fn, *rest in pipelines.values():  # untimed warm-up: first-use imports and plugin set-up in workers
            fn(shards[: max(1, args.workers)], *rest)
        # Interleaved rounds: every pipeline reads each slice of the shards in turn, so load from other
        # processes on the machine falls on all of them alike; figures are totals over the rounds.
        results = {name: (0, 0.0) for name in pipelines}
        for round_ in range(args.rounds):
            part = shards[round_::args.rounds]
            for name, (fn, *rest) in pipelines.items():
                count, seconds = timed(fn, part, *rest)
                results[name] = (results[name][0] + count, results[name][1] + seconds)
                print(f"  round {round_ + 1}/{args.rounds} {name:32s} {count / seconds:7.0f} samples/s", flush=True)
    rates = {name: count / seconds for name, (count, seconds) in results.items()}
    print(f"\nthroughput over all rounds, {args.workers} workers, batch {args.batch}, "
          f"shuffle buffer {args.shuffle_buffer}:")
    for name, (count, seconds) in results.items():
        print(f"  {name:32s} {count:7d} samples {seconds:7.1f} s {rates[name]:8.0f} samples/s")
    a, b, c = (rates[k] for k in ("(a) ours, uint8 to the device", "(b) bare tar+decode+resize",
                                  "(c) webdataset open_clip-style"))
    print(f"  ratios: ours/bare = {a / b:.2f}   webdataset/bare = {c / b:.2f}   ours/webdataset = {a / c:.2f}")
    print(f"  ours / (b') bare with our tar parser = {a / rates[BARE_FAST_TAR]:.2f}")
    if args.cpu_normalize:
        print(f"  ours normalised on the CPU / bare = {rates[CPU_NORMALISED] / b:.2f}")

    print("\nplanning one epoch of 100M samples in 10k shards over 1024 ranks x 8 workers:")
    for shards in (10_000, 100_000):
        load_s, plan_s, peak = bench_planning(shards, 100_000_000, 1024, 8)
        print(f"  {shards:7d} shards: load manifest {load_s:.3f} s, plan all 8192 slots {plan_s:.3f} s, "
              f"peak planning memory {peak:.2f} MiB")


if __name__ == "__main__":
    main()
