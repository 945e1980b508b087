import io
import json
from collections import Counter

import pytest
import torch
import webdataset as wds
from PIL import Image

from data_pipeline.captions import CaptionSelector
from data_pipeline.loader import (CaptionStream, Shard, batches_seen_by_worker, build_train_loader, caption_corpus,
                                  load_manifest)
from lmm.sequence import SequenceLayout


def to_tensor(image):
    return torch.zeros(3, 8, 8)


def stream_for(world, tokenizer, rank=0, world_size=1, consumed=0, source="capsfusion", mix=None):
    return CaptionStream(load_manifest(world / "train" / "manifest.json"), CaptionSelector(source, mix, seed=3),
                         to_tensor, SequenceLayout(tokenizer, 4, 16), rank, world_size, micro_batch_size=4,
                         seed=5, shuffle_buffer=16, consumed_batches=consumed)


def keys_of(loader, batches):
    it = iter(loader)
    return [k for _ in range(batches) for k in next(it)["keys"]]


def test_batches_are_padded_and_masked(demo_world, tokenizer):
    batch = next(iter(build_train_loader(stream_for(demo_world, tokenizer), num_workers=0)))
    assert batch["pixels"].shape == (4, 3, 8, 8)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == -100).all()


def test_ranks_read_disjoint_shards_and_cover_the_epoch(demo_world, tokenizer):
    """2 ranks x 2 workers: one epoch's worth of samples is every sample exactly once."""
    per_rank = [keys_of(build_train_loader(stream_for(demo_world, tokenizer, rank, 2), num_workers=2), 64)
                for rank in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 512


@pytest.mark.parametrize("workers,consumed", [(0, 5), (2, 7)])
def test_resume_continues_the_same_key_sequence(demo_world, tokenizer, workers, consumed):
    full = keys_of(build_train_loader(stream_for(demo_world, tokenizer, consumed=0), workers), consumed + 20)
    resumed = keys_of(build_train_loader(stream_for(demo_world, tokenizer, consumed=consumed), workers), 20)
    assert resumed == full[consumed * 4:]


def test_round_robin_accounting():
    assert [batches_seen_by_worker(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert [batches_seen_by_worker(0, w, 2) for w in range(2)] == [0, 0]


def test_mixed_selection_is_seeded_and_follows_ratios():
    select = CaptionSelector("mixed", {"raw": 1.0, "capsfusion": 3.0}, seed=7)
    picks = Counter(select.source_for(f"key{i}") for i in range(20000))
    assert abs(picks["capsfusion"] / 20000 - 0.75) < 0.015
    again = CaptionSelector("mixed", {"raw": 1.0, "capsfusion": 3.0}, seed=7)
    assert all(select.source_for(f"key{i}") == again.source_for(f"key{i}") for i in range(500))


def test_missing_or_empty_captions_are_skipped_and_counted(tmp_path, tokenizer):
    image = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(image, format="JPEG")
    captions = [{"raw": "a red square"}, {"raw": ""}, {"synthetic": "x"}, {"raw": 3}, {"raw": "ok again"}]
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        for i, fields in enumerate(captions):
            sink.write({"__key__": f"k{i}", "jpg": image.getvalue(), "json": json.dumps(fields).encode()})
        sink.write({"__key__": "broken", "jpg": b"not a jpeg", "json": b'{"raw": "fine"}'})
    stream = CaptionStream([Shard(str(tmp_path / "s.tar"), 6)], CaptionSelector("raw"), to_tensor,
                           SequenceLayout(tokenizer, 4, 16), 0, 1, 1, shuffle_buffer=1)
    it = iter(stream)
    keys = [next(it)["key"] for _ in range(4)]  # the stream repeats epochs
    assert keys == ["k0", "k4", "k0", "k4"]
    assert stream.skipped["missing_caption"] >= 3 and stream.skipped["bad_image"] >= 1


def test_img2dataset_txt_is_the_raw_caption(tmp_path, tokenizer):
    image = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(image, format="JPEG")
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        sink.write({"__key__": "000000001", "jpg": image.getvalue(), "txt": b"blue square | stock photo",
                    "json": json.dumps({"url": "http://x", "caption": "blue square | stock photo"}).encode()})
    shards = [Shard(str(tmp_path / "00000.tar"), 1)]
    example = next(iter(CaptionStream(shards, CaptionSelector("raw"), to_tensor, SequenceLayout(tokenizer, 4, 16),
                                      0, 1, 1, shuffle_buffer=1)))
    assert tokenizer.decode([i for i in example["labels"] if i >= 0]) == "blue square | stock photo"
    assert "blue square | stock photo" in list(caption_corpus(shards))


def test_too_few_shards_is_a_clear_error(demo_world, tokenizer):
    shards = load_manifest(demo_world / "train" / "manifest.json")[:1]
    stream = CaptionStream(shards, CaptionSelector("raw"), to_tensor, SequenceLayout(tokenizer, 4, 16), 0, 2, 1)
    with pytest.raises(ValueError, match="1 shards cannot feed 2 ranks"):
        next(iter(stream))
