"""Tests for the deterministic CPU-demo toy world (data_pipeline.demo_world)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_pipeline import demo_world as dw
from data_pipeline.manifest import load_manifest
from data_pipeline.prepare import main as prepare
from data_pipeline.tokenizer import caption_corpus

SPEC = dw.DemoWorldSpec(num_train=70, num_eval=12, samples_per_shard=32, image_size=112, seed=3,
                        num_style_train=9, num_style_test=4)
FILE_NAME = re.compile(r"\b(?:img|dsc|photo|image|pic)_\d{4}\b")
JUNK = re.compile(r"stock photo|free download|hd wallpaper|royalty free|#\w+|\|")
COUNT_TOKENS = {"one", "two", "three", "1", "2", "3"}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    dw.generate_demo_world(out, SPEC)
    return out


@pytest.fixture(scope="module")
def items() -> list[dw.WorldItem]:
    """Many sampled train items (texts only, no pixels) for statistical checks."""
    return [dw.sample_item(0, "train", i) for i in range(1500)]


def _karpathy(world_dir: Path, rel: str = "eval/dataset_coco.json") -> dict:
    return json.loads((world_dir / rel).read_text())


def _scene_mentioned(text: str) -> bool:
    words = set(re.findall(r"[a-z]+", text))
    return bool(words & dw.SCENE_WORDS)


def _unigram_f1(candidate: str, refs: list[str]) -> float:
    """Best unigram F1 of a candidate against any reference."""
    cand, best = Counter(candidate.split()), 0.0
    for ref in refs:
        r = Counter(ref.split())
        hits = sum((cand & r).values())
        if hits:
            p, q = hits / sum(cand.values()), hits / sum(r.values())
            best = max(best, 2 * p * q / (p + q))
    return best


# ------------------------------------------------------------------ files on disk


def test_shards_readable_with_webdataset(world_dir):
    manifest = json.loads((world_dir / "train" / "manifest.json").read_text())
    urls = [str(world_dir / "train" / s["path"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == SPEC.num_train
    for i, sample in enumerate(samples):
        assert sample["__key__"] == f"train_{i:08d}" and "." not in sample["__key__"]
        meta = sample["json"]
        assert set(dw.CAPTION_FIELDS) <= meta.keys()
        assert meta["url"].startswith("demo://")
        assert (meta["width"], meta["height"]) == (SPEC.image_size,) * 2
        assert sample["jpg"].size == (SPEC.image_size,) * 2
        assert meta["capsfusion"] == dw.sample_item(SPEC.seed, "train", i).captions["capsfusion"]


def test_manifest_matches_files(world_dir):
    train = world_dir / "train"
    manifest = json.loads((train / "manifest.json").read_text())
    assert manifest["caption_fields"] == ["raw", "synthetic", "capsfusion"]
    assert [s["path"] for s in manifest["shards"]] == ["shard-000000.tar", "shard-000001.tar",
                                                       "shard-000002.tar"]
    assert [s["num_samples"] for s in manifest["shards"]] == [32, 32, 6]
    assert manifest["num_samples"] == manifest["num_images"] == SPEC.num_train
    assert manifest["caption_counts"] == {f: SPEC.num_train for f in dw.CAPTION_FIELDS}
    for shard in manifest["shards"]:
        data = (train / shard["path"]).read_bytes()
        assert shard["bytes"] == len(data)
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()


def test_karpathy_eval_well_formed(world_dir):
    data = _karpathy(world_dir)
    assert data["dataset"] == "coco" and len(data["images"]) == SPEC.num_eval
    sentids = []
    for im in data["images"]:
        assert im["split"] == "test" and im["filepath"] == "images"
        assert len(im["sentences"]) == dw.NUM_REFS == len({s["raw"] for s in im["sentences"]})
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert s["imgid"] == im["imgid"] and s["tokens"] == s["raw"].split()
        with Image.open(world_dir / "eval" / im["filepath"] / im["filename"]) as img:
            assert img.format == "JPEG" and img.size == (SPEC.image_size,) * 2
        sentids += im["sentids"]
    assert len(set(sentids)) == len(sentids)
    assert len({im["cocoid"] for im in data["images"]}) == SPEC.num_eval


def test_caption_corpus_and_world_json(world_dir):
    corpus = list(caption_corpus(load_manifest(world_dir / "train" / "manifest.json")))
    assert len(corpus) == 3 * SPEC.num_train and all(corpus)
    world = json.loads((world_dir / "world.json").read_text())
    assert world["num_train_samples"] == SPEC.num_train and world["num_shards"] == 3
    assert world["seed"] == SPEC.seed and world["num_eval_references"] == 5 * SPEC.num_eval


def test_deterministic_bytes(world_dir, tmp_path):
    """A second generation is byte-identical (the manifests hold each shard's sha256)."""
    dw.generate_demo_world(tmp_path, SPEC)
    for rel in ("train/manifest.json", "eval/dataset_coco.json", "style/dataset_style.json"):
        assert (tmp_path / rel).read_bytes() == (world_dir / rel).read_bytes()
    for images in ("eval/images", "style/images"):
        first = sorted((world_dir / images).iterdir())
        second = sorted((tmp_path / images).iterdir())
        assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_idempotent_and_spec_sensitive(tmp_path):
    spec = dw.DemoWorldSpec(num_train=8, num_eval=2, samples_per_shard=4, seed=1, num_style_train=2,
                            num_style_test=1)
    world = dw.generate_demo_world(tmp_path, spec)
    stamp = (tmp_path / "world.json").stat().st_mtime_ns
    assert dw.generate_demo_world(tmp_path, spec) == world
    assert (tmp_path / "world.json").stat().st_mtime_ns == stamp
    other = dw.generate_demo_world(tmp_path, dw.DemoWorldSpec(num_train=4, num_eval=2, samples_per_shard=4, seed=2,
                                                              num_style_train=1, num_style_test=1))
    assert other["seed"] == 2 and other["num_shards"] == 1
    assert sorted(p.name for p in (tmp_path / "train").glob("*.tar")) == ["shard-000000.tar"]


def test_default_eval_split_size():
    assert dw.DemoWorldSpec().num_eval == 500  # the demo's CIDEr intervals are sized for 500 images
    assert (dw.DemoWorldSpec().num_style_train, dw.DemoWorldSpec().num_style_test) == (512, 100)


def test_cli(tmp_path, capsys):
    dw.main(["--out", str(tmp_path), "--num-train", "5", "--num-eval", "2",
             "--samples-per-shard", "5", "--image-size", "64", "--seed", "7",
             "--num-style-train", "3", "--num-style-test", "1"])
    world = json.loads(capsys.readouterr().out)
    assert world["image_size"] == 64 and world["num_train_samples"] == 5
    assert world["num_style_train"] == 3 and world["num_style_images"] == 4
    assert len(list(caption_corpus(load_manifest(tmp_path / "train" / "manifest.json")))) == 15


# ---------------------------------------------------------------- caption styles


def test_raw_is_noisy_but_knowledgeable(items):
    raws = [it.captions["raw"] for it in items]
    assert all(FILE_NAME.search(r) for r in raws)
    assert sum(bool(JUNK.search(r)) for r in raws) > 0.4 * len(raws)
    assert sum(_scene_mentioned(r) for r in raws) > 0.7 * len(raws)
    for style in ("synthetic", "capsfusion"):
        assert not any(FILE_NAME.search(it.captions[style]) or JUNK.search(it.captions[style])
                       for it in items)


def test_synthetic_is_generic(items):
    for it in items:
        words = set(it.captions["synthetic"].split())
        assert not words & (dw.SCENE_WORDS | COUNT_TOKENS), it.captions["synthetic"]
    exact = sum(it.groups[0].shape in it.captions["synthetic"] for it in items)
    assert exact < 0.3 * len(items)  # usually only "shape" / "object" / "design"


def test_capsfusion_is_specific(items):
    for it in items:
        cap = it.captions["capsfusion"]
        assert cap.endswith(dw.SCENES[it.scene].phrase)
        assert all(g.colour in cap.split() for g in it.groups)
        assert all(dw.COUNT_WORDS[g.count] in cap.split() for g in it.groups if g.count > 1)


def test_capsfusion_closest_to_references():
    evals = [dw.sample_item(0, "eval", i) for i in range(400)]
    score = {s: sum(_unigram_f1(it.captions[s], it.references) for it in evals) / len(evals)
             for s in dw.CAPTION_FIELDS}
    assert score["capsfusion"] > score["synthetic"] + 0.3
    assert score["capsfusion"] > score["raw"] + 0.3
    verbatim = sum(it.captions["capsfusion"] in it.references for it in evals)
    assert verbatim < 0.2 * len(evals)  # similar vocabulary, but not the same sentences


# ------------------------------------------------------------- caption-style fine-tuning set

STYLE_REFERENCE = re.compile(r"(?P<scene>[a-z ]+) - (?P<header>objects|shapes|designs) "
                             r"(?P<groups>[123] [a-z ]+(?:, [123] [a-z ]+)*)")


@pytest.fixture(scope="module")
def style_items() -> list[dw.WorldItem]:
    return [dw.sample_item(0, dw.STYLE_SPLIT, i) for i in range(600)]


def _inventory(item: dw.WorldItem, sized: bool) -> list[str]:
    """The object groups of a style reference, with or without sizes, sorted."""
    return sorted(" ".join([str(g.count), *([g.size] if sized else []), g.colour,
                            g.shape + ("s" if g.count > 1 else "")]) for g in item.groups)


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.replace(",", "").split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_style_set_is_a_karpathy_file_with_train_and_test_splits(world_dir):
    data = _karpathy(world_dir, "style/dataset_style.json")
    assert [im["split"] for im in data["images"]] == ["train"] * SPEC.num_style_train + ["test"] * SPEC.num_style_test
    for index, im in enumerate(data["images"]):
        assert im["imgid"] == index and im["filepath"] == "images"
        refs = [s["raw"] for s in im["sentences"]]
        assert refs == dw.sample_item(SPEC.seed, dw.STYLE_SPLIT, index).references and len(set(refs)) == dw.NUM_REFS
        with Image.open(world_dir / "style" / im["filepath"] / im["filename"]) as img:
            assert img.format == "JPEG" and img.size == (SPEC.image_size,) * 2
    world = json.loads((world_dir / "world.json").read_text())
    assert world["style_karpathy"] == "style/dataset_style.json"
    assert world["num_style_images"] == SPEC.num_style_train + SPEC.num_style_test == len(data["images"])
    assert world["num_style_references"] == dw.NUM_REFS * len(data["images"])


def test_style_images_are_not_train_or_eval_images(world_dir):
    style = sorted((world_dir / "style" / "images").iterdir())
    others = {p.read_bytes() for p in (world_dir / "eval" / "images").iterdir()}
    assert not others & {p.read_bytes() for p in style}
    assert all(dw.sample_item(0, dw.STYLE_SPLIT, i).objects != dw.sample_item(0, split, i).objects
               for i in range(50) for split in ("train", "eval"))


def test_style_references_share_the_style(style_items):
    headers = Counter()
    for it in style_items:
        for ref in it.references:
            match = STYLE_REFERENCE.fullmatch(ref)
            assert match, ref
            assert match["scene"] == dw.SCENES[it.scene].name.removeprefix("the ")
            groups = sorted(match["groups"].split(", "))
            assert groups in (_inventory(it, sized=False), _inventory(it, sized=True)), ref  # sizes: all or none
            headers[match["header"]] += 1
    assert set(headers) == set(dw.STYLE_HEADERS)  # light paraphrases within the style
    with_sizes = sum(any(size in ref.split() for size in dw.SIZES) for it in style_items for ref in it.references)
    assert 0.3 < with_sizes / (len(style_items) * dw.NUM_REFS) < 0.7


def test_style_references_use_only_characters_of_the_train_captions(items, style_items):
    """The demo's tokenizer is trained on the train captions: any other character would be an unknown piece."""
    train_chars = {c for it in items for caption in it.captions.values() for c in caption}
    assert {c for it in style_items for ref in it.references for c in ref} <= train_chars


def test_style_references_differ_from_capsfusion(style_items):
    shared = []
    for it in style_items:
        caption = _ngrams(it.captions["capsfusion"], 3)
        for ref in it.references:
            grams = _ngrams(ref, 3)
            assert not {g for g in grams if dw.STYLE_WORDS & set(g)} & caption, ref
            shared.append(len(grams & caption) / len(grams))
            assert not _ngrams(ref, 4) & _ngrams(it.captions["capsfusion"], 4), ref
    assert sum(shared) / len(shared) < 0.15  # the objects' names ("small blue star") at most
    eval_refs = [ref for i in range(100) for ref in dw.sample_item(0, "eval", i).references]
    assert not any(dw.STYLE_WORDS & set(ref.split()) for ref in eval_refs)  # eval keeps human-style references


def test_style_set_prepares_into_training_shards(world_dir, tmp_path):
    stats = prepare(["karpathy", str(world_dir / "style" / "dataset_style.json"), "--image-root",
                     str(world_dir / "style"), "--split", "train", "--out", str(tmp_path), "--workers", "1"])
    assert stats["samples"] == SPEC.num_style_train and stats["failures"] == {}
    assert stats["captions"] == {"captions": dw.NUM_REFS * SPEC.num_style_train}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["caption_counts"] == {"captions": dw.NUM_REFS * SPEC.num_style_train}
