"""The prepare command: caption tables (parquet, JSONL; COCO-style grouping; the CapsFusion-120M preset) and
img2dataset folders -> fixed-size shards, manifest and stats; resumable and idempotent; readable by the loader."""
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from data_pipeline.captions import CaptionSelector
from data_pipeline.loader import CaptionStream
from data_pipeline.manifest import load_manifest, subset
from data_pipeline.prepare import main as prepare
from data_pipeline.shard_reader import count_samples
from lmm.sequence import SequenceLayout
from shard_factory import jpeg, to_tensor


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
    samples = read_all(tmp_path / "out" / "manifest.json")
    first = samples[0]["json"]
    assert first["raw"] == "alt text 000000000" and first["capsfusion"] == "fused 000000000"
    assert first["synthetic"] == "synthetic 000000000" and first["original_width"] == 640
    assert [s["__key__"] for s in samples] == [s["json"]["source_key"] for s in samples]


def test_img2dataset_layout_read_as_is(tmp_path, tokenizer):
    """--in-place: a manifest over img2dataset's own tars; .txt is the raw caption for the loader."""
    write_img2dataset(tmp_path / "dl", extra=False)
    stats = prepare(["img2dataset", str(tmp_path / "dl"), "--out", str(tmp_path / "dl"), "--in-place"])
    assert stats["samples"] == 7 and [count_samples(str(tmp_path / "dl" / "00000.tar"))] == [4]
    pieces = subset(load_manifest(tmp_path / "dl" / "manifest.json"), 7)
    layout = SequenceLayout(tokenizer, 4, 16)
    stream = CaptionStream(pieces, CaptionSelector("raw"), to_tensor, layout, 0, 1, 1, shuffle_buffer=1)
    it = iter(stream)
    examples = [next(it) for _ in range(7)]
    assert [e["key"] for e in examples] == [f"{s:05d}{k:04d}" for s, k in [(0, 0), (0, 1), (0, 2), (0, 3),
                                                                             (2, 4), (2, 5), (2, 6)]]
    first = examples[[e["key"] for e in examples].index("000000000")]
    assert first["labels"] == layout.training_example("alt text 000000000")[1]
