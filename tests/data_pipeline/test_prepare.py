"""The prepare command: caption tables (parquet, JSONL; COCO-style grouping; the CapsFusion-120M preset),
Karpathy caption files and img2dataset folders -> fixed-size shards, manifest (with image and caption counts) and
stats; resumable and idempotent; readable by the loader; broken input shards named in the stats instead of
stopping the run; high-bit-depth images rescaled to 8 bits."""
import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image
from shard_factory import jpeg, png16, to_tensor

from data_pipeline.captions import CaptionSelector
from data_pipeline.loader import CaptionStream
from data_pipeline.manifest import load_manifest, subset
from data_pipeline.prepare import PRESETS, _mapped_fields
from data_pipeline.prepare import main as prepare
from data_pipeline.sequence import SequenceLayout
from data_pipeline.shard_format import rgb_image, sample_fields
from data_pipeline.shard_reader import read_pieces, scan_shard


def read_all(manifest):
    """Every sample of a manifest in order, decoded by webdataset (json parsed)."""
    shards = load_manifest(manifest)
    return list(wds.WebDataset([s.url for s in shards], shardshuffle=False).decode())


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate(["red", "green", "blue", "white", "black"]):
        (folder / f"im{i}.jpg").write_bytes(jpeg(colour))
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    return folder


def coco_rows():
    """COCO-style: im0 and im1 have three captions each (one row per caption), then singles and failures."""
    rows = [{"path": f"im{i}.jpg", "caption": f"a photo number {i} take {k}", "url": f"http://x/{i}"}
            for i in (0, 1) for k in range(3)]
    rows += [{"path": "im2.jpg", "caption": "a single caption"}, {"path": "im3.jpg", "caption": "   "},
             {"path": "gone.jpg", "caption": "image does not exist"}, {"path": "http://web/x.jpg", "caption": "url"},
             {"path": "broken.jpg", "caption": "bytes are not an image"}, {"path": "im4.jpg", "caption": "last one"}]
    return rows


def check_coco_output(out, stats, rows=12, bad_rows=0):
    assert stats["rows"] == rows and stats["unique_images"] == 8 and stats["samples"] == 4
    assert stats["failures"] == {"missing_image": 1, "image_not_fetched": 1, "image_unreadable": 1, "no_caption": 1,
                                 **({"bad_row": bad_rows} if bad_rows else {})}
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["captions"] == {"raw": 8} and stats["shards"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["num_samples"] for s in manifest["shards"]] == [3, 1]  # the unreadable image left its shard short
    assert manifest["num_images"] == 4  # a listed field counts one per caption; a mapped field with none, 0
    assert manifest["caption_counts"] == {"raw": 8, "synthetic": 0, "capsfusion": 0}
    for shard in manifest["shards"]:
        data = (out / shard["path"]).read_bytes()
        assert shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
    samples = read_all(out / "manifest.json")
    assert samples[0]["json"]["raw"] == [f"a photo number 0 take {k}" for k in range(3)]
    assert samples[0]["json"]["url"] == "http://x/0" and samples[0]["json"]["width"] == 16
    assert [s["json"]["raw"] for s in samples[2:]] == ["a single caption", "last one"]
    assert all("." not in s["__key__"] for s in samples)


def test_jsonl_table_grouped_by_image_and_resumable(tmp_path, images):
    table = tmp_path / "coco.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in coco_rows()) + "\nnot json at all\n")
    args = ["table", str(table), "--out", str(tmp_path / "out"), "--column", "raw=caption", "--image-column", "path",
            "--image-root", str(images), "--samples-per-shard", "3", "--workers", "2"]
    stats = prepare(args)
    check_coco_output(tmp_path / "out", stats, rows=13, bad_rows=1)  # the unparsable line counts as a row
    manifest_bytes = (tmp_path / "out" / "manifest.json").read_bytes()
    first = tmp_path / "out" / "coco-000000.tar"
    stamp = first.stat().st_mtime_ns
    (tmp_path / "out" / "coco-000001.tar.json").unlink()  # as if interrupted before the second shard finished
    assert prepare(args)["samples"] == 4
    assert first.stat().st_mtime_ns == stamp  # finished shard skipped
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest_bytes  # identical outputs


def test_parquet_table_with_capsfusion_preset(tmp_path, images):
    rows = [{"image_url": f"http://laion/{i}.jpg", "laion_2b": f"IMG_{i} stock photo", "laion_coco": "a photo",
             "capsfusion": f"fused caption {i}", "local": f"im{i}.jpg"} for i in range(5)]
    rows[4]["capsfusion"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-00000.parquet")
    out = tmp_path / "out"
    stats = prepare(["table", str(tmp_path / "part-00000.parquet"), "--out", str(out), "--preset", "capsfusion120m",
                     "--image-column", "local", "--image-root", str(images), "--samples-per-shard", "2",
                     "--workers", "1"])
    assert stats["samples"] == 5 and stats["shards"] == 3 and stats["unique_images"] == 5
    assert stats["captions"] == {"capsfusion": 4, "raw": 5, "synthetic": 5}
    samples = read_all(out / "manifest.json")
    assert samples[1]["json"] | {"width": 0, "height": 0} == {
        "raw": "IMG_1 stock photo", "synthetic": "a photo", "capsfusion": "fused caption 1",
        "url": "http://laion/1.jpg", "width": 0, "height": 0}
    assert "capsfusion" not in samples[4]["json"]


def test_url_only_table_is_a_clear_error(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"image_url": "http://x/1.jpg", "capsfusion": "c"}]), tmp_path / "t.parquet")
    with pytest.raises(SystemExit, match="img2dataset"):
        prepare(["table", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "o"), "--preset", "capsfusion120m"])


def write_img2dataset(folder, per_tar=(4, 0, 3), extra=True):
    """img2dataset's layout: NNNNN.tar with key.jpg/.txt/.json, NNNNN_stats.json; failed downloads absent."""
    folder.mkdir()
    key = 0
    for shard, count in enumerate(per_tar):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar"), encoder=False) as sink:
            for _ in range(count):
                k = f"{shard:05d}{key:04d}"
                meta = {"url": f"http://x/{k}.jpg", "caption": f"alt text {k}", "key": k, "status": "success",
                        "width": 16, "height": 16, "original_width": 640, "original_height": 480}
                if extra:
                    meta |= {"laion_2b": f"alt text {k}", "laion_coco": f"synthetic {k}", "capsfusion": f"fused {k}"}
                sink.write({"__key__": k, "jpg": jpeg(), "txt": f"alt text {k}".encode(),
                            "json": json.dumps(meta).encode()})
                key += 1
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps(
            {"count": count + 2, "successes": count, "failed_to_download": 2, "failed_to_resize": 0}))


def test_img2dataset_folder_repacked_into_fixed_size_shards(tmp_path, tokenizer):
    write_img2dataset(tmp_path / "dl")
    stats = prepare(["img2dataset", str(tmp_path / "dl"), "--out", str(tmp_path / "out"), "--preset",
                     "capsfusion120m", "--samples-per-shard", "3", "--workers", "2"])
    assert stats["rows"] == 13 and stats["samples"] == 7 and stats["failures"] == {"download_failed": 6}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["num_samples"] for s in manifest["shards"]] == [3, 3, 1]
    assert manifest["num_images"] == 7 and manifest["caption_counts"] == {"raw": 7, "synthetic": 7, "capsfusion": 7}
    samples = read_all(tmp_path / "out" / "manifest.json")
    first = samples[0]["json"]
    assert first["raw"] == "alt text 000000000" and first["capsfusion"] == "fused 000000000"
    assert first["synthetic"] == "synthetic 000000000" and first["original_width"] == 640
    assert first["url"] == "http://x/000000000.jpg"  # the preset's image_url is absent: img2dataset's url
    assert [s["__key__"] for s in samples] == [s["json"]["source_key"] for s in samples]


def test_img2dataset_layout_read_as_is(tmp_path, tokenizer):
    """--in-place: a manifest over img2dataset's own tars; .txt is the raw caption for the loader."""
    write_img2dataset(tmp_path / "dl", extra=False)
    stats = prepare(["img2dataset", str(tmp_path / "dl"), "--out", str(tmp_path / "dl"), "--in-place"])
    assert stats["samples"] == 7 and scan_shard(str(tmp_path / "dl" / "00000.tar")) == (4, None)
    manifest = json.loads((tmp_path / "dl" / "manifest.json").read_text())
    assert manifest["num_images"] == 7 and "caption_counts" not in manifest  # the tars' jsons are not read
    pieces = subset(load_manifest(tmp_path / "dl" / "manifest.json"), 7)
    layout = SequenceLayout(tokenizer, 4, 16)
    stream = CaptionStream(pieces, CaptionSelector("raw"), to_tensor, layout, 0, 1, 1, shuffle_buffer=1)
    it = iter(stream)
    examples = [next(it) for _ in range(7)]
    assert [e["key"] for e in examples] == [f"{s:05d}{k:04d}" for s, k in [(0, 0), (0, 1), (0, 2), (0, 3),
                                                                             (2, 4), (2, 5), (2, 6)]]
    first = examples[[e["key"] for e in examples].index("000000000")]
    assert first["labels"] == layout.training_example("alt text 000000000")[1]


def test_preset_url_prefers_image_url_and_falls_back_to_url():
    columns = PRESETS["capsfusion120m"]
    assert _mapped_fields({"image_url": "http://a", "url": "http://b", "laion_2b": "c"}, columns)["url"] == "http://a"
    assert _mapped_fields({"url": "http://b", "laion_2b": "c"}, columns) == {"url": "http://b", "raw": "c"}


def broken(data: bytes, kind: str) -> bytes:
    """A broken copy of a 4-sample img2dataset tar (members key.jpg, key.json, key.txt)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        third = archive.getmembers()[6]  # sample 2's jpg
    return {"not_a_tar": b"<html>404 not found</html>\n" * 40, "zero_bytes": b"", "cut_in_first_header": data[:300],
            "cut_mid_header": data[:third.offset + 100],
            "cut_mid_member": data[:third.offset_data + third.size // 2]}[kind]


@pytest.mark.parametrize("kind, kept, error", [
    ("not_a_tar", 0, "TarError: (bad header checksum|bad number)"), ("zero_bytes", 0, "empty file"),
    ("cut_in_first_header", 0, "TarError: truncated header"),
    ("cut_mid_header", 1, "TarError: truncated header"),  # sample 1 may lack members: lost with the rest
    ("cut_mid_member", 2, "TarError: unexpected end of data")])
def test_broken_input_shard_is_named_and_the_rest_prepared(tmp_path, capsys, kind, kept, error):
    write_img2dataset(tmp_path / "dl")  # 00000.tar: 4 samples (img2dataset's stats say so), 00002.tar: 3
    shard = tmp_path / "dl" / "00000.tar"
    shard.write_bytes(broken(shard.read_bytes(), kind))
    stats = prepare(["img2dataset", str(tmp_path / "dl"), "--out", str(tmp_path / "out"), "--samples-per-shard", "2",
                     "--workers", "2"])
    [entry] = stats["unreadable_shards"]
    assert entry == {"path": str(shard), "error": entry["error"], "samples_kept": kept, "samples_lost": 4 - kept}
    assert re.match(error, entry["error"]) and str(shard) in capsys.readouterr().out  # the printed summary
    assert stats["samples"] == kept + 3 and stats["failures"] == {"download_failed": 6, "tar_error": 4 - kept}
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    keys = [s["__key__"] for s in read_all(tmp_path / "out" / "manifest.json")]
    assert keys == [f"00000{k:04d}" for k in range(kept)] + ["000020004", "000020005", "000020006"]


def test_in_place_manifest_over_a_broken_shard_without_download_stats(tmp_path):
    write_img2dataset(tmp_path / "dl")
    (tmp_path / "dl" / "00003.tar").write_bytes(b"")
    stats = prepare(["img2dataset", str(tmp_path / "dl"), "--out", str(tmp_path / "dl"), "--in-place"])
    assert stats["unreadable_shards"] == [{"path": str(tmp_path / "dl" / "00003.tar"), "error": "empty file: not a tar",
                                           "samples_kept": 0, "samples_lost": None}]  # no 00003_stats.json
    assert stats["samples"] == 7 and "tar_error" not in stats["failures"]


def grey(value: float, mode: str) -> Image.Image:
    """A 4x4 image of one value in a high-bit-depth mode."""
    if mode == "I;16B":
        return Image.frombytes(mode, (4, 4), np.full((4, 4), value, ">u2").tobytes())
    return Image.fromarray(np.full((4, 4), value, {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))


@pytest.mark.parametrize("mode, value, expected", [
    ("I;16", 32896, 128), ("I;16", 65535, 255), ("I;16B", 32896, 128), ("I", 32896, 128), ("I", 200, 200),
    ("I", 2**30, 128), ("F", 0.5, 128), ("F", 32896.0, 128)])
def test_high_bit_depth_images_are_rescaled_not_clipped(mode, value, expected):
    image = grey(value, mode)
    assert image.mode == mode and rgb_image(image).mode == "RGB"
    assert rgb_image(image).getpixel((0, 0)) == (expected,) * 3


def test_rgb_image_passes_ordinary_images_to_convert():
    rgb = Image.new("RGB", (2, 2), "red")
    assert rgb_image(rgb) is rgb
    for image in (Image.new("L", (2, 2), 77), Image.new("CMYK", (2, 2), (0, 255, 255, 0)), rgb.convert("P"),
                  Image.new("RGBA", (2, 2), (10, 20, 30, 40))):
        assert rgb_image(image).tobytes() == image.convert("RGB").tobytes()
    stretched = rgb_image(Image.fromarray(np.array([[-1.0, 0.0, 1.0]], np.float32)))  # negative: min..max
    assert [stretched.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_prepare_rescales_16_bit_images(tmp_path):
    assert Image.open(io.BytesIO(png16(32896))).convert("RGB").getpixel((0, 0)) == (255,) * 3  # convert clips
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "grey16.png").write_bytes(png16(32896))
    (folder / "rgb16.png").write_bytes(png16(32896, channels=3))  # PIL opens it as 8-bit RGB already
    grey(32896, "I;16").save(folder / "grey16.tif")  # another format: re-encoded as JPEG
    grey(0.5, "F").save(folder / "float.tif")
    names = ["grey16.png", "rgb16.png", "grey16.tif", "float.tif"]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"image": n, "raw": n}) for n in names))
    stats = prepare(["table", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "out"), "--image-root", str(folder),
                     "--workers", "1"])
    assert stats["samples"] == 4 and stats["failures"] == {}
    samples = read_all(tmp_path / "out" / "manifest.json")
    assert [next(e for e in ("png", "jpg") if e in s) for s in samples] == ["png", "png", "jpg", "jpg"]
    for sample in samples:
        image = Image.open(io.BytesIO(sample.get("png") or sample["jpg"]))
        assert image.mode == "RGB" and abs(image.getpixel((1, 1))[0] - 128) <= 1, sample["json"]["raw"]


# ------------------------------------------------------------------------------------------ karpathy input

def write_karpathy(folder, edit=None):
    """dataset_coco.json in Karpathy format over real JPEGs under ``folder/val2014``: 3 train images x 5 captions
    and 1 test image; ``edit(images)`` may change the entries before they are written."""
    (folder / "val2014").mkdir(parents=True)
    images = []
    for i, split in enumerate(["train", "train", "train", "test"]):
        name = f"COCO_val2014_{i:012d}.jpg"
        (folder / "val2014" / name).write_bytes(jpeg(["red", "green", "blue", "white"][i]))
        sentences = [{"raw": f" Image {i} caption {k}. ", "tokens": ["image"], "imgid": i} for k in range(5)]
        images.append({"filepath": "val2014", "filename": name, "split": split, "cocoid": 100 + i, "imgid": i,
                       "sentids": list(range(5 * i, 5 * i + 5)), "sentences": sentences})
    if edit:
        edit(images)
    path = folder / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def karpathy_args(path, out, *extra):
    return ["karpathy", str(path), "--image-root", str(path.parent), "--out", str(out), "--workers", "1", *extra]


def shard_fields(manifest):
    """(key, fields) of every sample of a manifest, read by the project's shard reader."""
    shards = load_manifest(manifest)
    return [(raw["__key__"], sample_fields(raw)) for raw in read_pieces(subset(shards, sum(s.num_samples for s in
                                                                                          shards)))]


def test_karpathy_file_gives_one_sample_per_image_with_its_captions(tmp_path):
    path, out = write_karpathy(tmp_path / "coco"), tmp_path / "out"
    stats = prepare(karpathy_args(path, out, "--split", "train", "--samples-per-shard", "2"))
    assert stats == {"input": "karpathy", "splits": {"train": 3}, "unique_images": 3, "sentences": 15,
                     "empty_sentences": 0, "samples": 3, "shards": 2, "captions": {"captions": 15}, "failures": {}}
    assert json.loads((out / "stats.json").read_text()) == stats
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_images"] == manifest["num_samples"] == 3 and manifest["caption_counts"] == {"captions": 15}
    assert manifest["caption_fields"] == ["captions"]
    assert [s["path"] for s in manifest["shards"]] == ["dataset_coco-000000.tar", "dataset_coco-000001.tar"]
    samples = shard_fields(out / "manifest.json")
    assert [key for key, _ in samples] == [f"dataset_coco_{i:09d}" for i in range(3)]  # not the test image
    for i, (key, fields) in enumerate(samples):
        assert fields["captions"] == [f"Image {i} caption {k}." for k in range(5)]
        assert fields["image_id"] == 100 + i and fields["width"] == 16
        assert CaptionSelector("captions").choose(key, fields)[0] in fields["captions"]
    manifest_bytes = (out / "manifest.json").read_bytes()
    assert prepare(karpathy_args(path, out, "--split", "train", "--samples-per-shard", "2")) == stats
    assert (out / "manifest.json").read_bytes() == manifest_bytes  # re-run: identical outputs


def test_karpathy_failures_and_empty_sentences_are_counted(tmp_path):
    def edit(images):
        images[0]["sentences"][2]["raw"] = "   "  # dropped and counted
        images[1]["filename"] = "gone.jpg"  # missing image
        images[3]["split"] = "restval"  # taken with --split restval
        images.append({**images[2], "filename": "broken.jpg", "cocoid": 7})  # unreadable image
        images.append({**images[2], "cocoid": 8, "sentences": [{"raw": ""}]})  # no caption left
    path = write_karpathy(tmp_path / "coco", edit)
    (tmp_path / "coco" / "val2014" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    stats = prepare(karpathy_args(path, out, "--split", "train", "--split", "restval", "--field", "coco"))
    assert stats["splits"] == {"train": 5, "restval": 1} and stats["unique_images"] == 6
    assert stats["sentences"] == 26 and stats["empty_sentences"] == 2
    assert stats["failures"] == {"missing_image": 1, "image_unreadable": 1, "no_caption": 1}
    assert stats["samples"] == 3 and stats["captions"] == {"coco": 14}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_images"] == 3 and manifest["caption_counts"] == {"coco": 14}
    samples = dict(shard_fields(out / "manifest.json"))
    assert samples["dataset_coco_000000000"]["coco"] == [f"Image 0 caption {k}." for k in (0, 1, 3, 4)]
    assert [f["image_id"] for f in samples.values()] == [100, 102, 103]


@pytest.mark.parametrize("args, error", [
    (["--split", "val"], r"no images in split\(s\) \['val'\]; the file's splits: \['test', 'train'\]"),
    (["--split", "train", "--split", "restval"], r"no images in split\(s\) \['restval'\]"),
    (["--field", "url"], "--field 'url'"),
    (["--split", "test", "--image-root", "/nonexistent"], r"no usable image .*'missing_image': 1"),
])
def test_karpathy_missing_split_or_empty_result_is_an_error(tmp_path, args, error):
    path = write_karpathy(tmp_path / "coco")
    with pytest.raises(SystemExit, match=error) as exit_info:
        prepare(karpathy_args(path, tmp_path / "out", *args))
    assert exit_info.value.code not in (0, None)  # a message: the process exits 1
