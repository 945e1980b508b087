"""Benchmark loaders on small files in each standard format, and choosing benchmarks from the eval config."""
from __future__ import annotations

import json

import pytest

from lmm.config import BenchmarkFiles, ConfigError, EvalConfig
from lmm.eval.benchmarks import BENCHMARKS, load_benchmark, load_coco_captions, load_karpathy, missing_images
from lmm.eval.evaluation import resolve_benchmarks


def karpathy_entry(image_id_key, image_id, filename, split, refs, filepath=None):
    entry = {image_id_key: image_id, "filename": filename, "split": split, "sentids": list(range(len(refs))),
             "sentences": [{"raw": r, "tokens": r.lower().split(), "sentid": i} for i, r in enumerate(refs)]}
    if filepath:
        entry["filepath"] = filepath
    return entry


@pytest.fixture
def coco_file(tmp_path):
    """``dataset_coco.json``: cocoid, filepath train2014/val2014, splits train/restval/val/test."""
    images = [karpathy_entry("cocoid", 391895, "COCO_val2014_000000391895.jpg", "test",
                             ["A man with a red helmet on a small moped on a dirt road.", "Man riding a motor bike.",
                              "A man riding on the back of a motorcycle.", "A dirt path with a young person on a bike.",
                              "A man in a red shirt and a red hat is on a motorcycle on a hill side."], "val2014"),
              karpathy_entry("cocoid", 522418, "COCO_val2014_000000522418.jpg", "val",
                             ["A woman cutting a cake."] * 5, "val2014"),
              karpathy_entry("cocoid", 184613, "COCO_train2014_000000184613.jpg", "restval", ["A boy and a cow."] * 5,
                             "train2014"),
              karpathy_entry("cocoid", 60623, "COCO_val2014_000000060623.jpg", "test",
                             ["A young girl inhales with the intent of blowing out a candle."] * 4 + ["A cake."],
                             "val2014")]
    for i, entry in enumerate(images):
        entry["imgid"] = i
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


@pytest.fixture
def flickr_file(tmp_path):
    """``dataset_flickr30k.json``: imgid only, no filepath."""
    images = [karpathy_entry("imgid", 0, "1000092795.jpg", "train", ["Two young guys with shaggy hair."] * 5),
              karpathy_entry("imgid", 1, "10002456.jpg", "test", ["Several men in hard hats are operating a giant "
                                                                  "pulley system.", "Workers look down from up above."]),
              karpathy_entry("imgid", 2, "1000268201.jpg", "test",
                             ["A child in a pink dress is climbing stairs."] * 5)]
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return path


@pytest.fixture
def nocaps_file(tmp_path):
    """``nocaps_val_4500_captions.json``: COCO captions format with a domain per image."""
    data = {"info": {"description": "nocaps validation"}, "licenses": [],
            "images": [{"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "in-domain", "height": 1024,
                        "width": 768, "open_images_id": "0013ea2087020901"},
                       {"id": 1, "file_name": "0023f5a1a0ebf4e4.jpg", "domain": "out-domain", "height": 683,
                        "width": 1024, "open_images_id": "0023f5a1a0ebf4e4"}],
            "annotations": [{"image_id": i % 2, "id": i, "caption": f"caption {i} of image {i % 2}"}
                            for i in range(20)]}
    path = tmp_path / "nocaps_val_4500_captions.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_karpathy_test_split_with_all_references(coco_file, tmp_path):
    images = load_benchmark(BENCHMARKS["coco"], coco_file, tmp_path / "coco")
    assert [img.image_id for img in images] == [391895, 60623]
    assert len(images[0].references) == 5 and images[0].references[1] == "Man riding a motor bike."
    assert images[0].path == tmp_path / "coco" / "val2014" / "COCO_val2014_000000391895.jpg"
    assert [img.image_id for img in load_karpathy(coco_file, tmp_path, split="restval")] == [184613]
    assert [img.image_id for img in load_benchmark(BENCHMARKS["coco"], coco_file, tmp_path, max_images=1)] == [391895]


def test_flickr30k_karpathy_uses_imgid_and_no_filepath(flickr_file, tmp_path):
    images = load_benchmark(BENCHMARKS["flickr30k"], flickr_file, tmp_path / "flickr30k-images")
    assert [(img.image_id, img.path.name, len(img.references)) for img in images] == [(1, "10002456.jpg", 2),
                                                                                      (2, "1000268201.jpg", 5)]
    assert images[0].path.parent == tmp_path / "flickr30k-images"


def test_nocaps_gathers_every_caption_and_the_domain(nocaps_file, tmp_path):
    images = load_benchmark(BENCHMARKS["nocaps"], nocaps_file, tmp_path / "val")
    assert [(img.image_id, img.domain, len(img.references)) for img in images] == [(0, "in-domain", 10),
                                                                                  (1, "out-domain", 10)]
    assert images[1].references[0] == "caption 1 of image 1" and images[1].path == tmp_path / "val" / \
        "0023f5a1a0ebf4e4.jpg"


def test_bad_files_give_clear_errors(tmp_path, coco_file, nocaps_file):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_karpathy(tmp_path / "absent.json", tmp_path)
    with pytest.raises(ValueError, match="no images in split 'dev'"):
        load_karpathy(coco_file, tmp_path, split="dev")
    with pytest.raises(ValueError, match="missing top-level key"):
        load_coco_captions(coco_file, tmp_path)  # a Karpathy file is not COCO captions format
    data = json.loads(nocaps_file.read_text())
    data["annotations"].append({"image_id": 7, "id": 99, "caption": "stray"})
    nocaps_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unlisted image ids"):
        load_coco_captions(nocaps_file, tmp_path)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == 0]
    nocaps_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image 1 has no annotations"):
        load_coco_captions(nocaps_file, tmp_path)


def test_missing_images_are_listed(coco_file, tmp_path):
    images = load_benchmark(BENCHMARKS["coco"], coco_file, tmp_path)
    (tmp_path / "val2014").mkdir()
    images[0].path.write_bytes(b"x")
    assert missing_images(images) == [images[1].path]


def test_benchmarks_are_chosen_from_the_eval_config(coco_file, nocaps_file):
    own = EvalConfig(dataset_json=str(coco_file), image_root="/coco", benchmark="demo_world_test")
    [target] = resolve_benchmarks(own)
    assert target.benchmark.name == "demo_world_test" and target.benchmark.format == "karpathy"
    paper = EvalConfig(dataset_json=str(coco_file), image_root="/coco",
                       benchmarks={"nocaps": BenchmarkFiles(str(nocaps_file), "/nocaps")})
    assert [t.benchmark.name for t in resolve_benchmarks(paper)] == ["coco_karpathy_test"]
    assert [t.benchmark.name for t in resolve_benchmarks(paper, ["nocaps", "coco"])] == ["nocaps_val",
                                                                                         "coco_karpathy_test"]
    assert [t.benchmark.name for t in resolve_benchmarks(EvalConfig(benchmarks=paper.benchmarks))] == ["nocaps_val"]
    with pytest.raises(ConfigError, match="eval.benchmarks.flickr30k.annotations=<path to dataset_flickr30k.json>"):
        resolve_benchmarks(paper, ["flickr30k"])
    with pytest.raises(ConfigError, match="unknown benchmark 'textcaps'"):
        resolve_benchmarks(paper, ["textcaps"])
    with pytest.raises(ConfigError, match="nothing to evaluate on"):
        resolve_benchmarks(EvalConfig())
    with pytest.raises(ConfigError, match="unknown benchmark"):
        resolve_benchmarks(EvalConfig(benchmarks={"cocoo": BenchmarkFiles("x", "y")}))


def test_default_protocol_is_emus_zero_shot_coco():
    config = EvalConfig()
    assert config.prompt.endswith("[ASSISTANT]: the image depicts a photo of")
    assert (config.num_beams, config.max_new_tokens, config.min_new_tokens, config.length_penalty) == (5, 20, 8, -1.0)
