"""The streaming loader: batches, the epoch deal over ranks x workers, exact resume, caption choice, pipe: URLs."""
import json
import random
from collections import Counter

import pytest
import torch
from shard_factory import to_tensor, write_shards

from data_pipeline.captions import CaptionSelector
from data_pipeline.loader import CaptionStream, build_train_loader
from data_pipeline.manifest import load_manifest, subset
from data_pipeline.sequence import SequenceLayout
from data_pipeline.tokenizer import caption_corpus
from lmm.training.loader_state import LoaderProgress, carry_for_rank, positions_for_rank, reshard


def stream_for(pieces, tokenizer, rank=0, world_size=1, positions=None, consumed=0, source="capsfusion", mix=None,
               micro=4, buffer=16, carry=None):
    return CaptionStream(pieces, CaptionSelector(source, mix, seed=3), to_tensor, SequenceLayout(tokenizer, 4, 16),
                         rank, world_size, micro_batch_size=micro, seed=5, shuffle_buffer=buffer,
                         positions=positions, consumed_batches=consumed, carry=carry)


def demo_pieces(world, n=512):
    return subset(load_manifest(world / "train" / "manifest.json"), n)


def keys_of(loader, batches):
    it = iter(loader)
    return [k for _ in range(batches) for k in next(it)["keys"]]


def test_batches_are_padded_and_masked(demo_world, tokenizer):
    batch = next(iter(build_train_loader(stream_for(demo_pieces(demo_world), tokenizer), num_workers=0)))
    assert batch["pixels"].shape == (4, 3, 8, 8)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    padded = batch["attention_mask"] == 0
    assert (batch["labels"][padded] == -100).all()
    assert batch["data_position"]["worker"] == 0 and batch["data_position"]["position"]["seen"] == 4


def test_pixels_match_the_towers_transform_bit_for_bit(tmp_path, tokenizer):
    """Workers ship uint8 after open_clip's PIL steps; ToTensor + Normalize run batched on the training device."""
    import io

    import webdataset as wds
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    transform = image_transform_v2(PreprocessCfg(size=14, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7),
                                                 interpolation="bicubic", resize_mode="shortest"), is_train=False)
    manifest = write_shards(tmp_path, [10])
    stream = CaptionStream(subset(load_manifest(manifest), 10), CaptionSelector("raw"), transform,
                           SequenceLayout(tokenizer, 4, 16), 0, 1, micro_batch_size=5, shuffle_buffer=4)
    assert stream.normalize is not None
    batch = next(iter(build_train_loader(stream, 1)))
    images = {s["__key__"]: s["jpg"] for s in wds.WebDataset(str(tmp_path / "s000.tar"), shardshuffle=False)}
    expected = torch.stack([transform(Image.open(io.BytesIO(images[k])).convert("RGB")) for k in batch["keys"]])
    assert batch["pixels"].dtype == torch.float32 and torch.equal(batch["pixels"], expected)


def test_ranks_read_disjoint_samples_and_cover_the_epoch(demo_world, tokenizer):
    """2 ranks x 2 workers: one epoch's worth of samples is every sample exactly once."""
    per_rank = [keys_of(build_train_loader(stream_for(demo_pieces(demo_world), tokenizer, rank, 2), 2), 64)
                for rank in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 512


def test_uneven_shards_give_every_slot_the_same_share(tmp_path, tokenizer):
    """Shards of 1..23 samples, 3 ranks x 2 workers: each slot reads exactly total // 6 distinct samples."""
    sizes = [7, 23, 1, 12, 5, 19, 3, 11]
    pieces = subset(load_manifest(write_shards(tmp_path, sizes)), sum(sizes))
    share = sum(sizes) // 6
    seen = []
    for rank in range(3):
        stream = stream_for(pieces, tokenizer, rank, 3, micro=share, buffer=5)
        it = iter(build_train_loader(stream, 2))
        for _ in range(2):  # one batch per worker = its whole epoch share
            batch = next(it)
            position = batch["data_position"]["position"]
            assert position["seen"] == share and position["epoch"] == 0
            seen += batch["keys"]
    assert len(seen) == len(set(seen)) == 6 * share  # sum(sizes) % 6 samples are dropped this epoch


def simulated_run(pieces, tokenizer, cuts, batches, workers=2, ranks=2):
    """Key ledger of each rank over ``batches`` batches, restarting the loaders at every step in ``cuts`` from
    the checkpointed state exactly as the trainer does (gathered positions, JSON round trip)."""
    ledgers, state, consumed = [[] for _ in range(ranks)], None, 0
    for stop in [*cuts, batches]:
        progress = []
        for rank in range(ranks):
            positions = positions_for_rank(state, rank, ranks, workers)
            stream = stream_for(pieces, tokenizer, rank, ranks, positions, consumed, micro=3, buffer=8)
            tracker = LoaderProgress(workers, positions)
            it = iter(build_train_loader(stream, workers))
            for _ in range(stop - consumed):
                batch = next(it)
                tracker.observe(batch)
                ledgers[rank] += batch["keys"]
            progress.append(tracker.state_dict()["ranks"][0])
        state, consumed = json.loads(json.dumps({"ranks": progress})), stop
    return ledgers


def test_resume_at_random_steps_reproduces_the_key_ledger(tmp_path, tokenizer):
    """2 ranks x 2 workers over uneven shards and two epochs: interrupted runs train on exactly the keys of the
    uninterrupted run, in the same order (none repeated, none skipped)."""
    sizes = [9, 31, 4, 17, 26, 13, 8, 22]
    pieces = subset(load_manifest(write_shards(tmp_path, sizes)), 120)  # cut inside a shard; 30 per slot
    batches = 44  # 44 x 3 = 132 samples per rank: into the second epoch
    uninterrupted = simulated_run(pieces, tokenizer, [], batches)
    assert all(len(set(ledger[:60])) == 60 for ledger in uninterrupted)
    rng = random.Random(0)
    for _ in range(2):
        cuts = sorted(rng.sample(range(1, batches), 3))
        assert simulated_run(pieces, tokenizer, cuts, batches) == uninterrupted, cuts


def elastic_run(pieces, tokenizer, segments):
    """Keys read per segment ``(ranks, workers, batches per rank)``; between segments the loaders restart from the
    checkpointed state, re-dealt (``reshard``) when the layout changes, as the trainer does."""
    keys, state, consumed = [], None, 0
    for ranks, workers, batches in segments:
        if state is not None:
            state, changed = reshard(state, pieces, 5, 8, ranks, workers)
            consumed = 0 if changed else consumed
        state = json.loads(json.dumps(state))
        progress, segment = [], []
        for rank in range(ranks):
            positions = positions_for_rank(state, rank, ranks, workers)
            stream = stream_for(pieces, tokenizer, rank, ranks, positions, consumed, micro=3, buffer=8,
                                carry=carry_for_rank(state, rank))
            tracker = LoaderProgress(workers, positions, carry=state and state.get("carry"))
            it = iter(build_train_loader(stream, workers))
            for _ in range(batches):
                batch = next(it)
                tracker.observe(batch)
                segment += batch["keys"]
            progress.append(tracker.state_dict())
        state = {"ranks": [p["ranks"][0] for p in progress], **({"carry": progress[0]["carry"]}
                                                                  if "carry" in progress[0] else {})}
        consumed += batches
        keys.append(segment)
    return keys


def test_resume_on_other_ranks_and_workers_reads_the_rest_of_the_epoch_once(tmp_path, tokenizer):
    """2x2 -> 1x1 -> 2x2 -> 1x2 slots over uneven shards: the epoch's 120 samples are read exactly once, and a
    resume inside a carry-over (same layout) continues it exactly."""
    sizes = [9, 31, 4, 17, 26, 13, 8, 22]
    pieces = subset(load_manifest(write_shards(tmp_path, sizes)), 120)
    keys = elastic_run(pieces, tokenizer, [(2, 2, 4), (1, 1, 16), (2, 2, 4), (1, 2, 8)])
    every = [k for segment in keys for k in segment]
    assert [len(segment) for segment in keys] == [24, 48, 24, 24]
    assert len(every) == len(set(every)) == 120
    split = elastic_run(pieces, tokenizer, [(2, 2, 4), (1, 1, 8), (1, 1, 8), (2, 2, 4), (1, 2, 8)])
    assert [k for segment in split for k in segment] == every


def test_reshard_keeps_read_and_skip_counts_and_is_a_no_op_for_the_same_layout(tmp_path):
    pieces = subset(load_manifest(write_shards(tmp_path, [40])), 40)
    positions = [{**LoaderProgress(1).positions[0], "seen": 7, "skipped": {"bad_image": 2}, "emitted": 7}
                 for _ in range(2)]
    state = {"ranks": [[positions[0]], [positions[1]]]}
    assert reshard(state, pieces, 0, 16, 2, 1) == (state, False)
    moved, changed = reshard(state, pieces, 0, 16, 1, 3)
    assert changed and moved["ranks"][0][0]["seen"] == 14 and moved["ranks"][0][0]["skipped"] == {"bad_image": 4}
    lengths = [sum(end - begin for *_, begin, end in items) for items in moved["carry"][0]]
    assert lengths == [9, 9, 8][::-1] or sorted(lengths) == [8, 9, 9]  # 2 x (20 - 7) = 26 left, near-equal parts


def test_mixed_selection_is_seeded_and_follows_ratios(demo_world, tokenizer):
    select = CaptionSelector("mixed", {"raw": 1.0, "capsfusion": 3.0}, seed=7)
    picks = Counter(select.source_for(f"key{i}") for i in range(20000))
    assert abs(picks["capsfusion"] / 20000 - 0.75) < 0.015
    again = CaptionSelector("mixed", {"raw": 1.0, "capsfusion": 3.0}, seed=7)
    assert all(select.source_for(f"key{i}") == again.source_for(f"key{i}") for i in range(500))
    # through the stream: every trained caption is the field the key's hash chose, in the same ratio
    stream = stream_for(demo_pieces(demo_world), tokenizer, source="mixed", mix={"raw": 1.0, "capsfusion": 3.0})
    chosen = Counter(stream.select.source_for(k) for k in keys_of(build_train_loader(stream, 0), 128))
    assert abs(chosen["capsfusion"] / 512 - 0.75) < 0.06


def test_list_fields_pick_one_caption_per_key_and_epoch():
    select = CaptionSelector("raw", seed=1)
    fields = {"raw": ["a cat", "a small cat", "", "one cat", "the cat"]}
    picks = {select.choose(f"k{i}", fields)[0] for i in range(200)}
    assert picks == {"a cat", "a small cat", "one cat", "the cat"}
    assert select.choose("k1", fields, epoch=0) == select.choose("k1", fields, epoch=0)
    assert len({select.choose("k1", fields, epoch=e)[0] for e in range(20)}) > 1


def test_pipe_urls_are_read_through_webdatasets_opener(tmp_path, tokenizer):
    manifest = write_shards(tmp_path, [6, 6])
    data = json.loads(manifest.read_text())
    for entry in data["shards"]:
        entry["path"] = f"pipe:cat {tmp_path / entry['path']}"
    manifest.write_text(json.dumps(data))
    pieces = subset(load_manifest(manifest), 12)
    keys = keys_of(build_train_loader(stream_for(pieces, tokenizer, micro=4, buffer=4), 0), 3)
    assert sorted(keys) == sorted(f"s{s:03d}_{i:04d}" for s in range(2) for i in range(6))


def test_caption_corpus_reads_every_field(demo_world):
    corpus = list(caption_corpus(load_manifest(demo_world / "train" / "manifest.json"), max_samples=10))
    assert len(corpus) == 30 and all(corpus)


def test_resume_follows_moved_shards_but_refuses_a_changed_plan(tmp_path, tokenizer):
    pieces = subset(load_manifest(write_shards(tmp_path / "a", [10, 10])), 20)
    it = iter(build_train_loader(stream_for(pieces, tokenizer, buffer=6), 0))
    first, rest = next(it), [next(it)["keys"] for _ in range(3)]
    position = first["data_position"]["position"]
    (tmp_path / "a").rename(tmp_path / "b")  # shards copied elsewhere between the runs: same names, same plan
    moved = subset(load_manifest(tmp_path / "b" / "manifest.json"), 20)
    resumed = iter(build_train_loader(stream_for(moved, tokenizer, positions=[position], consumed=1, buffer=6), 0))
    assert [next(resumed)["keys"] for _ in range(3)] == rest
    changed = stream_for(moved, tokenizer, positions=[dict(position, offset=position["offset"] + 1)], consumed=1,
                         buffer=6)
    with pytest.raises(ValueError, match="resume with the manifest"):
        next(iter(build_train_loader(changed, 0)))
