"""Our own implementations against the library that exists for them, side by side in one run (issue 14, item 5).

(a) tar: ``data_pipeline.tar_members`` + ``shard_reader`` vs ``tarfile`` vs webdataset's tar iterator -- full-read
    samples/s, the time to resume at sample k of a shard, what a corrupt header does;
(b) caption metrics: ``lmm.eval`` BLEU / ROUGE-L / CIDEr-D / METEOR / PTB tokenizer vs pycocoevalcap on the same
    input -- time, largest score difference, per-image scores, behaviour without Java or with a dead JVM;
(c) config: ``lmm/config.py`` lines by part, and its error messages vs OmegaConf structured configs on the same
    dataclasses (``pip install omegaconf``; skipped when absent);
(d) loader state: our loader positions vs torchdata's ``StatefulDataLoader`` (``pip install torchdata``; skipped when
    absent) on our ``CaptionStream`` with workers: exact mid-epoch restore, time to the first batch after it, and a
    restore on another number of workers / ranks (our ``lmm.training.loader_state.reshard``).

    PYTHONPATH=. .venv/bin/python benchmarks/library_review.py [--images 5000] [--meteor-images 1000]
        [--shards 4 --per-shard 1000 --resume-at 900] [--loader-batches 150] [--only tar,metrics,config,loader]
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeat: int = 1):
    """(best seconds of ``repeat`` calls, value of the last)."""
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


# ------------------------------------------------------------------------------------------------- shards

def _jpeg(size: int = 64) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(folder: Path, shards: int, per_shard: int, image_size: int) -> list[str]:
    """webdataset TarWriter shards (a pax header before every member, as in real shards)."""
    import webdataset as wds
    image, urls = _jpeg(image_size), []
    for k in range(shards):
        url = str(folder / f"shard-{k:05d}.tar")
        with wds.TarWriter(url, encoder=False) as sink:
            for i in range(k * per_shard, (k + 1) * per_shard):
                caption = json.dumps({"capsfusion": f"a photo of object {i % 97} in scene {i % 13}"}).encode()
                sink.write({"__key__": f"sample{i:08d}", "jpg": image, "json": caption})
        urls.append(url)
    return urls


def _tarfile_samples(url: str, start: int = 0, mode: str = "r|"):
    """Samples (``{"__key__", ext: bytes}``) from the ``start``-th on, read with ``tarfile``; ``mode="r:"`` seeks
    over the data of skipped members, ``"r|"`` streams."""
    from data_pipeline.shard_format import split_name
    with tarfile.open(url, mode=mode) as tar:
        current, index = None, -1
        for member in tar:
            parts = split_name(member.name) if member.isfile() else None
            if parts is None:
                continue
            if current is None or parts[0] != current["__key__"]:
                index += 1
                if current is not None and index - 1 >= start:
                    yield current
                current = {"__key__": parts[0]}
            if index >= start:
                current[parts[1]] = tar.extractfile(member).read()
        if current is not None and index >= start:
            yield current


def _webdataset_samples(url: str, start: int = 0, handler=None):
    import webdataset as wds
    from webdataset.tariterators import tarfile_samples
    samples = tarfile_samples([{"url": url}], handler=handler or wds.reraise_exception)
    for index, sample in enumerate(samples):
        if index >= start:
            yield sample


def tar_review(args, folder: Path) -> None:
    import webdataset as wds

    from data_pipeline.manifest import Piece
    from data_pipeline.shard_reader import LOST, read_piece
    urls = write_shards(folder, args.shards, args.per_shard, args.image_size)
    total, n = args.shards * args.per_shard, args.per_shard
    readers = {"ours (tar_members + shard_reader)": lambda url, k=0: read_piece(Piece(url, k, n)),
               "tarfile, seekable 'r:'": lambda url, k=0: _tarfile_samples(url, k, "r:"),
               "tarfile, stream 'r|'": lambda url, k=0: _tarfile_samples(url, k, "r|"),
               "webdataset tarfile_samples": lambda url, k=0: _webdataset_samples(url, k)}
    print(f"(a) tar: {args.shards} shards x {n} samples (jpg {len(_jpeg(args.image_size))} B + json, pax headers), "
          f"page cache warm; best of 3")
    keys = {}
    for name, read in readers.items():
        seconds, got = timed(lambda: [s["__key__"] for url in urls for s in read(url)], repeat=3)
        keys[name] = got
        print(f"  full read    {name:<36} {total / seconds:9.0f} samples/s")
    print(f"  same samples from every reader: {all(k == keys[next(iter(keys))] for k in keys.values())}")
    k = min(args.resume_at, n - 1)
    for name, read in readers.items():
        seconds, got = timed(lambda: [s["__key__"] for s in read(urls[0], k)], repeat=3)
        print(f"  resume at sample {k} of {n}: {name:<36} {seconds * 1000:7.2f} ms  ({len(got)} samples read)")
    # a corrupt header halfway: the sample's jpg member header gets one byte flipped
    with tarfile.open(urls[0]) as tar:
        broken_at = next(m.offset for m in tar if m.name == f"sample{n // 2:08d}.jpg")
    data = bytearray(Path(urls[0]).read_bytes())
    data[broken_at + 10] ^= 0xFF
    bad = str(folder / "corrupt.tar")
    Path(bad).write_bytes(bytes(data))
    print(f"  corrupt header at sample {n // 2} of {n} (one flipped byte):")
    devnull, stderr = open(os.devnull, "w"), sys.stderr
    sys.stderr = devnull  # the per-shard warnings of ours and webdataset's
    try:
        items = list(read_piece(Piece(bad, 0, n)))
        print(f"    ours:       {sum(i is not LOST for i in items)} samples + {sum(i is LOST for i in items)} LOST "
              f"placeholders = {len(items)} items (the planned count; counted as tar_error skips)")
        for name, reader in (("tarfile r|", lambda: _tarfile_samples(bad)),
                             ("webdataset", lambda: _webdataset_samples(bad, handler=wds.warn_and_continue))):
            got = []
            try:
                for sample in reader():
                    got.append(sample)
                outcome = "ends the shard quietly"
            except Exception as exc:
                outcome = f"raises {type(exc).__name__}: {str(exc)[:60]}"
            print(f"    {name + ':':<11} {len(got)} samples, then {outcome}")
    finally:
        sys.stderr = stderr
        devnull.close()


# ------------------------------------------------------------------------------------------------ metrics

WORDS = ("a man woman dog cat child riding holding sitting standing on in at near with the red blue old small large "
         "street beach table kitchen horse bike skateboard pizza umbrella train bus park field two three people "
         "group of next to while green white black tall young little playing walking down up front building "
         "water grass snow plate food phone car truck sign tree sky clock room bed window").split()


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, weights=[1 / (i + 1) for i in range(len(WORDS))], k=rng.randint(8, 14)))


def _raw(rng: random.Random) -> str:
    """A raw caption: capitalised, some punctuation and contractions for the tokenizer."""
    words = _sentence(rng).split()
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(["man's", "don't", "(red)", "two-story", "U.S.", "\"big\""]))
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] += ","
    return " ".join(words).capitalize() + rng.choice([".", "", " .", "!"])


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


def _with_timeout(fn, seconds: float) -> str:
    """``fn()``'s outcome as text, or that it was still blocked after ``seconds``."""
    outcome = []

    def run():
        try:
            outcome.append(f"returns {fn()!r:.60}")
        except Exception as exc:
            outcome.append(f"raises {type(exc).__name__}: {str(exc).strip().splitlines()[0][:70] if str(exc) else ''}")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else f"still blocked after {seconds:g} s"


def metrics_review(args) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from lmm.eval.bleu import bleu
    from lmm.eval.cider import cider_d
    from lmm.eval.rouge import rouge_l
    rng = random.Random(1)
    gts = {i: [_sentence(rng) for _ in range(5)] for i in range(args.images)}
    res = {i: [rng.choice(gts[i]) if rng.random() < 0.3 else _sentence(rng)] for i in range(args.images)}
    print(f"(b) caption metrics: {args.images} images x 5 references, same tokenized input (BLEU, ROUGE-L and "
          "METEOR 'ours' call pycocoevalcap since the library review; the ports' figures are in BENCHMARKS.md)")
    pairs = {"BLEU-1..4": (lambda: bleu(gts, res), lambda: Bleu(4).compute_score(gts, res, verbose=0)),
             "ROUGE-L": (lambda: rouge_l(gts, res), lambda: Rouge().compute_score(gts, res)),
             "CIDEr-D": (lambda: cider_d(gts, res), lambda: Cider().compute_score(gts, res))}
    for name, (ours, theirs) in pairs.items():
        ours_s, (corpus, per_image) = timed(ours)
        theirs_s, (corpus_p, per_image_p) = timed(theirs)
        per_image_p = np.asarray(per_image_p)
        print(f"  {name:<10} ours {ours_s:6.2f} s   pycocoevalcap {theirs_s:6.2f} s   x{theirs_s / ours_s:5.1f}   "
              f"max |diff| corpus {_max_diff(corpus, corpus_p):.1e}, per image {_max_diff(per_image, per_image_p):.1e}"
              f"   pycocoevalcap per-image scores: {per_image_p.shape[-1] == args.images}")
    tokenizer_review(args)
    meteor_review(args, gts, res)


def tokenizer_review(args) -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from lmm.eval.ptb_tokenizer import tokenize_captions
    rng = random.Random(2)
    raw = {i: [_raw(rng) for _ in range(6)] for i in range(args.images)}
    java = shutil.which("java") is not None
    ours_py_s, ours_py = timed(lambda: tokenize_captions(raw, "python"))
    line = f"  PTB tokenizer ({6 * args.images} raw captions): ours, Python port {ours_py_s:5.2f} s"
    if java:
        ours_java_s, ours_java = timed(lambda: tokenize_captions(raw, "java"))
        theirs_s, theirs = timed(lambda: PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in raw.items()}))
        line += (f"; ours, Java {ours_java_s:5.2f} s; pycocoevalcap {theirs_s:5.2f} s; "
                 f"identical tokens: python {ours_py == theirs}, java {ours_java == theirs}")
    print(line)
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = ""  # a machine without Java
    try:
        def theirs_no_java():
            return PTBTokenizer().tokenize({1: [{"caption": "A dog."}]})
        print(f"  without java on PATH: ours (auto -> python) {tokenize_captions({1: ['A dog.']})!r}; "
              f"pycocoevalcap {_with_timeout(theirs_no_java, 30)}")
    finally:
        os.environ["PATH"] = path
    tmp = tempfile.gettempdir()
    from pycocoevalcap.tokenizer import ptbtokenizer
    print(f"  pycocoevalcap writes its temporary caption file into its package folder "
          f"({Path(ptbtokenizer.__file__).parent}); ours into {tmp}")


def meteor_review(args, gts, res) -> None:
    if shutil.which("java") is None or not args.meteor_images:
        print("  METEOR: skipped (no java on PATH, or --meteor-images 0)")
        return
    from pycocoevalcap.meteor.meteor import Meteor

    from lmm.eval.meteor import MeteorScorer
    keys = list(gts)[: args.meteor_images]
    gts, res = {k: gts[k] for k in keys}, {k: res[k] for k in keys}
    one = ({keys[0]: gts[keys[0]]}, {keys[0]: res[keys[0]]})
    rows = {}
    for name, make, score in (("ours", MeteorScorer, lambda s: s.score), ("pycocoevalcap", Meteor,
                                                                          lambda s: s.compute_score)):
        start = time.perf_counter()  # one JVM at a time: JVM start and paraphrase tables, then the timed score
        scorer = make()
        score(scorer)(*one)
        load = time.perf_counter() - start
        seconds, (corpus, per_image) = timed(lambda: score(scorer)(gts, res))
        rows[name] = (scorer, load, seconds, corpus, per_image)
    ours, theirs = rows["ours"][0], rows["pycocoevalcap"][0]
    print(f"  METEOR ({len(keys)} images): JVM start + tables (first 1-image score) ours {rows['ours'][1]:5.2f} s, "
          f"pycocoevalcap {rows['pycocoevalcap'][1]:5.2f} s; then the {len(keys)} images ours {rows['ours'][2]:5.2f} s, "
          f"pycocoevalcap {rows['pycocoevalcap'][2]:5.2f} s; max |diff| corpus "
          f"{abs(rows['ours'][3] - rows['pycocoevalcap'][3]):.1e}, per image "
          f"{_max_diff(rows['ours'][4], rows['pycocoevalcap'][4]):.1e}")
    for scorer, proc in ((ours, ours._proc), (theirs, theirs.meteor_p)):
        proc.kill()
        proc.wait()
    print(f"  METEOR with a dead JVM: ours {_with_timeout(lambda: ours.score(gts, res), 20)}; "
          f"pycocoevalcap {_with_timeout(lambda: theirs.compute_score(gts, res), 20)}, then a second call "
          f"{_with_timeout(lambda: theirs.compute_score(gts, res), 5)} (its lock is still held)")
    ours.close()


# ------------------------------------------------------------------------------------------------- config

CONFIG_CASES = ["train.lr=abc", "train.lrr=1e-4", "model.llm.attn_implementation=flash", "data.mix.raw=abc",
                "train.zero_stage=7", "model.bridge.heads=5"]
PARSING = {"_check_value", "build_dataclass", "_deep_merge", "_yaml_problem", "read_yaml", "parse_override",
           "apply_overrides", "config_from_dict", "ConfigError"}


def config_review(args) -> None:
    source = (REPO / "lmm" / "config.py").read_text()
    spans = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            spans[node.name] = node.end_lineno - node.lineno + 1 + len(node.decorator_list)
    dataclass_lines = sum(v for k, v in spans.items() if k.endswith("Config") or k == "BenchmarkFiles")
    parsing = sum(spans.get(k, 0) for k in PARSING)
    print(f"(c) config: lmm/config.py {len(source.splitlines())} lines: dataclasses {dataclass_lines}, "
          f"parsing/type checks/overrides/YAML (what OmegaConf does) {parsing}, cross-field validation and run "
          f"checks {len(source.splitlines()) - dataclass_lines - parsing} (the rest, imports and docstring included)")
    from lmm.config import ConfigError, load_config
    try:
        from omegaconf import OmegaConf
        base = OmegaConf.structured(load_config(REPO / "configs" / "demo.yaml"))
    except ImportError:
        OmegaConf = None
    for override in CONFIG_CASES:
        try:
            load_config(REPO / "configs" / "demo.yaml", [override])
            ours = "accepted"
        except ConfigError as exc:
            ours = str(exc)[:90]
        theirs = "omegaconf not installed"
        if OmegaConf is not None:
            try:
                merged = OmegaConf.merge(base, OmegaConf.from_dotlist([override]))
                theirs = f"accepted ({OmegaConf.select(merged, override.split('=')[0])!r})"
            except Exception as exc:
                text = str(exc).splitlines()
                theirs = f"{type(exc).__name__}: {text[0][:60]} [{text[1].strip() if len(text) > 1 else ''}]"
        print(f"  {override:<38} ours: {ours}\n  {'':<38} OmegaConf: {theirs}")


# ------------------------------------------------------------------------------------------------- loader

class _Layout:
    """A stand-in for SequenceLayout: fixed-length ids, so the loader review needs no sentencepiece model."""

    def training_example(self, caption: str):
        ids = [len(caption), sum(map(ord, caption)) % 1000]
        return ids, ids

    def collate(self, examples):
        import torch
        return {"input_ids": torch.tensor([ids for ids, _ in examples])}


def _pixels(image):
    import torch
    return torch.from_numpy(np.array(image.convert("RGB").resize((32, 32))))


def _stream(pieces, batch, buffer, rank=0, world=1, positions=None, consumed=0, carry=None):
    from data_pipeline.captions import CaptionSelector
    from data_pipeline.loader import CaptionStream
    return CaptionStream(pieces, CaptionSelector("capsfusion"), _pixels, _Layout(), rank, world, batch, seed=0,
                         shuffle_buffer=buffer, positions=positions, consumed_batches=consumed, carry=carry)


def _take(loader, count: int) -> tuple[float, list[list[str]], list]:
    """(seconds to the first batch, keys of ``count`` batches, the batches' positions)."""
    start, first, keys, marks = time.perf_counter(), None, [], []
    for batch in loader:
        first = first or time.perf_counter() - start
        keys.append(list(batch["keys"]))
        marks.append(batch["data_position"])
        if len(keys) == count:
            break
    return first, keys, marks


def loader_review(args, folder: Path) -> None:
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader
    except ImportError:
        StatefulDataLoader = None
    import logging
    import warnings

    from torch.utils.data import DataLoader

    from data_pipeline.loader import Collator
    from data_pipeline.manifest import EpochPlan, Piece
    from lmm.training.loader_state import LoaderProgress, reshard
    logging.getLogger("torchdata").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # 3 workers on a 2-core machine
    urls = sorted(str(p) for p in folder.glob("shard-*.tar")) or write_shards(folder, args.shards, args.per_shard,
                                                                              args.image_size)
    pieces = [Piece(url, 0, args.per_shard) for url in urls]
    batch, buffer, workers, k, more = 8, 64, 2, args.loader_batches, 20
    print(f"(d) loader state: our CaptionStream, {workers} workers, micro-batch {batch}, shuffle buffer {buffer}; "
          f"stop after {k} batches, resume, compare the next {more}")

    def loader(stream, cls=DataLoader, num_workers=workers):
        return cls(stream, batch_size=batch, num_workers=num_workers, collate_fn=Collator(stream.layout))

    _, reference, marks = _take(loader(_stream(pieces, batch, buffer)), k + more)
    progress = LoaderProgress(workers)
    for mark in marks[:k]:
        progress.observe({"data_position": mark})
    state = progress.state_dict()
    first, resumed, _ = _take(loader(_stream(pieces, batch, buffer, positions=state["ranks"][0], consumed=k)), more)
    print(f"  ours (positions):          exact {resumed == reference[k:]}, first batch after resume {first:6.2f} s")
    if StatefulDataLoader is None:
        print("  StatefulDataLoader: torchdata not installed")
    else:
        dl = loader(_stream(pieces, batch, buffer), StatefulDataLoader)
        it = iter(dl)
        for _ in range(k):
            next(it)
        saved = dl.state_dict()
        del it
        again = loader(_stream(pieces, batch, buffer), StatefulDataLoader)
        again.load_state_dict(saved)
        first_sdl, resumed_sdl, _ = _take(again, more)
        print(f"  torchdata StatefulDataLoader: exact {resumed_sdl == reference[k:]}, first batch after resume "
              f"{first_sdl:6.2f} s (CaptionStream has no state_dict: it re-reads and re-decodes all {k} batches, "
              f"+{(first_sdl - first) / (k * batch) * 1000:.2f} ms per sample already trained on)")
        other = loader(_stream(pieces, batch, buffer), StatefulDataLoader, num_workers=1)
        try:
            other.load_state_dict(saved)
            next(iter(other))
            outcome = "accepted"
        except BaseException as exc:  # an AssertionError without a message
            outcome = f"{type(exc).__name__}{': ' + str(exc)[:60] if str(exc) else ' (no message)'}"
        print(f"  StatefulDataLoader state of {workers} workers loaded into 1 worker: {outcome}; it has no notion "
              "of ranks (one state per rank, resumable only on the same world size)")
    # ours on another layout: 1 rank x 2 workers -> 2 ranks x 3 workers, the rest of the epoch read from the carry
    new_world, new_workers = 2, 3
    state2, _ = reshard(state, pieces, 0, buffer, new_world, new_workers)
    consumed = {key for keys in reference[:k] for key in keys}
    carried = []
    for rank in range(new_world):  # each new worker's carry, counted by the position the batches carry
        wanted = [sum(end - begin for *_, begin, end in part) for part in state2["carry"][rank]]
        stream = _stream(pieces, batch, buffer, rank, new_world, state2["ranks"][rank], 0, state2["carry"][rank])
        got = [0] * new_workers
        for b in DataLoader(stream, batch_size=1, num_workers=new_workers, collate_fn=Collator(stream.layout)):
            worker = b["data_position"]["worker"]
            if got[worker] < wanted[worker]:
                carried += b["keys"]
                got[worker] += 1
            if got == wanted:
                break
    epoch = EpochPlan(pieces, workers, 0, 0).samples_per_slot * workers
    print(f"  ours, resharded 1x{workers} -> {new_world}x{new_workers} (rank x worker): carry {len(carried)} samples, "
          f"all distinct {len(set(carried)) == len(carried)}, none already consumed {not (set(carried) & consumed)}, "
          f"consumed + carried = epoch ({len(consumed)} + {len(carried)} = {epoch}): "
          f"{len(consumed) + len(carried) == epoch}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="images scored (5 references each)")
    parser.add_argument("--meteor-images", type=int, default=1000, help="images for METEOR (0: skip)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=96, help="px of the (random, ~20 kB at 96) JPEG")
    parser.add_argument("--resume-at", type=int, default=900)
    parser.add_argument("--loader-batches", type=int, default=150)
    parser.add_argument("--only", default="tar,metrics,config,loader")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if "tar" in parts:
            tar_review(args, Path(tmp))
        if "metrics" in parts:
            metrics_review(args)
        if "config" in parts:
            config_review(args)
        if "loader" in parts:
            loader_review(args, Path(tmp))
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
