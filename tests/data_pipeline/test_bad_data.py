"""Bad data is skipped and counted by reason, reaches tensorboard, and stops the run past the bound; never a crash
or a hang. Every case is a real tar on disk."""
import json

import pytest
import webdataset as wds
from shard_factory import captions, jpeg, to_tensor, write_shards
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data_pipeline.captions import CaptionSelector
from data_pipeline.loader import CaptionStream, DataStopped, build_train_loader
from data_pipeline.manifest import Piece, load_manifest, subset, write_manifest
from data_pipeline.sequence import SequenceLayout
from data_pipeline.shard_reader import LOST, read_piece, read_pieces
from lmm.training.loader_state import LoaderProgress
from lmm.training.metrics import MetricsLogger

GOOD = {"__key__": "good", "jpg": jpeg(), "json": json.dumps(captions("good")).encode()}
BAD_SAMPLES = {
    "bad_image": {"jpg": b"\xff\xd8 not really a jpeg", "json": b'{"raw": "fine"}'},
    "missing_image": {"json": b'{"raw": "no picture"}'},
    "missing_caption": {"jpg": jpeg(), "json": b'{"synthetic": "only another field"}'},
    "empty_caption": {"jpg": jpeg(), "json": b'{"raw": "   "}'},
    "caption_too_long": {"jpg": jpeg(), "json": json.dumps({"raw": "word " * 1000}).encode()},
    "caption_not_utf8": {"jpg": jpeg(), "txt": b"caf\xe9 in latin-1"},
    "bad_json": {"jpg": jpeg(), "json": b'{"raw": "unterminated'},
}


def write_tar(path, samples):
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)


def stream_over(manifest, tokenizer, num_samples=None):
    shards = load_manifest(manifest)
    pieces = subset(shards, num_samples or sum(s.num_samples for s in shards))
    return CaptionStream(pieces, CaptionSelector("raw", max_chars=2000), to_tensor, SequenceLayout(tokenizer, 4, 16),
                         0, 1, micro_batch_size=1, seed=0, shuffle_buffer=4)


def take_good(stream, count):
    """The first ``count`` usable examples' keys and the position after the last."""
    it = iter(stream)
    examples = [next(it) for _ in range(count)]
    return [e["key"] for e in examples], examples[-1]["position"][1]


@pytest.mark.parametrize("reason", sorted(BAD_SAMPLES))
def test_each_bad_sample_is_skipped_and_counted(tmp_path, tokenizer, reason):
    write_tar(tmp_path / "a.tar", [GOOD, {"__key__": "bad", **BAD_SAMPLES[reason]}])
    manifest = write_manifest(tmp_path / "manifest.json", [{"path": "a.tar", "num_samples": 2}])
    keys, position = take_good(stream_over(tmp_path / "manifest.json", tokenizer), 3)  # three epochs' good sample
    assert manifest["num_samples"] == 2 and keys == ["good"] * 3
    assert position["skipped"] == {reason: position["seen"] - 3} and position["skipped"][reason] >= 2


def test_corrupt_missing_and_short_shards_lose_the_rest_of_the_shard(tmp_path, tokenizer):
    write_shards(tmp_path, [3], prefix="ok")
    (tmp_path / "garbage.tar").write_bytes(b"\x13\x37" * 5000)
    entries = [{"path": "ok000.tar", "num_samples": 3}, {"path": "garbage.tar", "num_samples": 4},
               {"path": "missing.tar", "num_samples": 2}, {"path": "ok000.tar", "num_samples": 5}]  # 2 too many
    write_manifest(tmp_path / "manifest.json", entries)
    keys, position = take_good(stream_over(tmp_path / "manifest.json", tokenizer), 12)  # 2 epochs of 6 good
    assert sorted(keys[:6]) == sorted(["ok000_0000", "ok000_0001", "ok000_0002"] * 2)
    assert position["skipped"] == {"tar_error": position["seen"] - 12} and position["skipped"]["tar_error"] >= 8


def test_truncated_tar_keeps_the_samples_before_the_cut(tmp_path, tokenizer):
    write_shards(tmp_path, [8])
    data = (tmp_path / "s000.tar").read_bytes()
    (tmp_path / "s000.tar").write_bytes(data[: len(data) // 2 + 300])  # cut inside a member
    keys, position = take_good(stream_over(tmp_path / "manifest.json", tokenizer), 5)
    good = sorted(set(keys))
    assert 2 <= len(good) < 8 and good == [f"s000_{i:04d}" for i in range(len(good))]
    assert position["skipped"]["tar_error"] >= 8 - len(good) - 1  # the sample cut in half may lack its json
    assert sum(position["skipped"].values()) == position["seen"] - 5


def test_lost_samples_name_their_shard_once_on_stderr(tmp_path, capsys):
    write_shards(tmp_path, [8])
    shard = tmp_path / "s000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 300])
    items = list(read_pieces([Piece(str(shard), 0, 8), Piece(str(shard), 5, 8)]))  # the second range: no 2nd line
    first_lost = items.index(LOST)
    assert len(items) == 11 and 2 <= first_lost < 8 and all(x is LOST for x in items[first_lost:])
    assert list(read_piece(Piece(str(tmp_path / "gone.tar"), 3, 5))) == [LOST, LOST]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert str(shard) in lines[0] and f"from sample {first_lost} on" in lines[0] and "TarError" in lines[0]
    assert str(tmp_path / "gone.tar") in lines[1] and "from sample 3 on" in lines[1] and "FileNotFound" in lines[1]


def test_all_bad_data_stops_with_a_clear_error_instead_of_hanging(tmp_path, tokenizer):
    (tmp_path / "garbage.tar").write_bytes(b"\x00\x01" * 3000)
    write_manifest(tmp_path / "manifest.json", [{"path": "garbage.tar", "num_samples": 50}])
    loader = build_train_loader(stream_over(tmp_path / "manifest.json", tokenizer), num_workers=1)
    with pytest.raises(DataStopped, match="without one usable sample"):
        next(iter(loader))


def test_skip_counts_reach_tensorboard_and_the_bound_stops_the_run(tmp_path, tokenizer):
    position = {"epoch": 0, "window": 0, "emitted": 0, "seen": 5000, "skipped": {"bad_image": 30, "tar_error": 10},
                "shard": None, "offset": 0}
    progress = LoaderProgress(2, [position, {**position, "skipped": {"empty_caption": 5}}], max_skip_fraction=0.01)
    scalars = progress.skip_scalars()  # 45 of 10,000 skipped: under 1 %
    assert scalars == {"data/skipped/tar_error": 10.0, "data/skipped/empty_caption": 5.0,
                       "data/skipped/bad_image": 30.0, "data/skip_fraction": 0.0045}
    logger = MetricsLogger(tmp_path / "tb", enabled=True)
    logger.log(scalars, samples_seen=10_000, step=1)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.value for e in events.Scalars("data/skipped/bad_image")] == [30.0]

    strict = LoaderProgress(2, progress.positions, max_skip_fraction=0.004)
    with pytest.raises(DataStopped, match=r"45 of 10,000 samples read \(0.45%\).*bad_image=30"):
        strict.skip_scalars()
    few = dict(position, seen=500)  # under MIN_SAMPLES_FOR_SKIP_BOUND: not judged yet
    assert LoaderProgress(1, [few], max_skip_fraction=0.01).skip_scalars()["data/skip_fraction"] == 40 / 500


def test_bad_samples_in_a_training_stream_are_counted_through_batches(tmp_path, tokenizer):
    bad = [{"__key__": f"bad{i}", **BAD_SAMPLES[r]} for i, r in enumerate(sorted(BAD_SAMPLES))]
    goods = [{**GOOD, "__key__": f"good{i}"} for i in range(9)]
    write_tar(tmp_path / "a.tar", goods + bad)
    write_manifest(tmp_path / "manifest.json", [{"path": "a.tar", "num_samples": 16}])
    stream = stream_over(tmp_path / "manifest.json", tokenizer)
    stream.micro_batch_size = 3
    progress = LoaderProgress(1, min_samples=10**9)
    it = iter(build_train_loader(stream, num_workers=1))
    for _ in range(3):  # the 9 good samples of epoch 0
        progress.observe(next(it))
    seen, skipped = progress.skip_totals()
    assert sum(skipped.values()) == seen - 9 and set(k for k, v in skipped.items() if v) <= set(BAD_SAMPLES)
