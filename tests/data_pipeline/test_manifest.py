"""Nested subsets and the epoch plan, from the manifest alone (the shards named here do not exist)."""
import json

import numpy as np
import pytest

from data_pipeline.manifest import EpochPlan, ShardEntry, load_manifest, subset, write_manifest


def manifest_of(tmp_path, sizes):
    write_manifest(tmp_path / "manifest.json", [{"path": f"never-opened-{i}.tar", "num_samples": n}
                                                for i, n in enumerate(sizes)])
    return load_manifest(tmp_path)  # a folder means its manifest.json


def sample_ids(pieces):
    return [(p.url, i) for p in pieces for i in range(p.start, p.stop)]


def test_subsets_are_nested_prefixes_of_the_manifest(tmp_path):
    shards = manifest_of(tmp_path, [100, 37, 250, 1, 80])
    small, medium, full = (sample_ids(subset(shards, n)) for n in (120, 300, 468))
    assert len(small) == 120 and len(medium) == 300 and len(full) == 468
    assert medium[:120] == small and full[:300] == medium and len(set(full)) == 468
    assert subset(shards, 120)[-1].stop == 20  # the last shard is cut
    assert shards[0].url == str(tmp_path / "never-opened-0.tar")


def test_asking_for_more_than_the_manifest_holds_fails_before_training(tmp_path):
    shards = manifest_of(tmp_path, [10, 10])
    with pytest.raises(ValueError, match="data.num_samples=21 but the manifest holds only 20 samples"):
        subset(shards, 21)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        load_manifest(tmp_path / "elsewhere.json")


def test_epoch_plan_gives_every_slot_an_equal_contiguous_share(tmp_path):
    pieces = subset(manifest_of(tmp_path, [13, 2, 40, 7, 7, 29, 1, 18]), 110)
    for slots in (1, 3, 8, 17):
        plan = EpochPlan(pieces, slots, seed=4, epoch=2)
        shares = [sample_ids(plan.slot_range(s)) for s in range(slots)]
        assert {len(share) for share in shares} == {110 // slots}  # drop 110 % slots, never pad
        everything = [i for share in shares for i in share]
        assert len(set(everything)) == len(everything) and set(everything) <= set(sample_ids(pieces))
        index, offset = plan.slot_starts()  # the vectorised plan agrees with the per-slot one
        for s in range(slots):
            first = plan.slot_range(s)[0]
            piece = pieces[plan.order[index[s]]]
            assert (first.url, first.start) == (piece.url, piece.start + offset[s])


def test_epoch_plan_reshuffles_each_epoch_and_agrees_across_processes(tmp_path):
    pieces = subset(manifest_of(tmp_path, [5] * 40), 200)
    orders = [EpochPlan(pieces, 4, seed=0, epoch=e).order.tolist() for e in range(3)]
    assert len({tuple(o) for o in orders}) == 3
    assert EpochPlan(pieces, 4, seed=0, epoch=1).order.tolist() == orders[1]
    with pytest.raises(ValueError, match="cannot feed 300"):
        EpochPlan(pieces, 300, seed=0, epoch=0)


def test_planning_100m_samples_over_8192_slots_is_fast_and_small():
    shards = [ShardEntry(f"s3://bucket/shard-{i:06d}.tar", 10_000) for i in range(10_000)]
    import time
    start = time.perf_counter()
    plan = EpochPlan(subset(shards, 100_000_000), 1024 * 8, seed=0, epoch=0)
    index, offset = plan.slot_starts()
    elapsed = time.perf_counter() - start
    assert plan.samples_per_slot == 100_000_000 // 8192 and len(index) == 8192
    assert elapsed < 2.0  # the benchmark records the figure (well under 1 s when the machine is not shared)
    assert json.dumps(plan.slot_range(8191)[-1].url).startswith('"s3://')
    assert isinstance(offset, np.ndarray)
