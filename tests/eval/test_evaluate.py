"""The eval command on a real 2-rank ZeRO-3 checkpoint: evaluated on 1 rank and on 2 ranks, every benchmark
format, result records, replacement with --force, a job run twice repeating nothing, tensorboard scalars (one
point per tag and step) and the custom-scalars layout."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launch.evaluate import main as evaluate
from lmm.torchrun import torchrun
from lmm.eval.results import REQUIRED_FIELDS, read_results

FAST = ["eval.meteor=false", "eval.batch_size=1"]  # batch 1: captions cannot depend on how ranks batch images


def by_step(results):
    return {r["step"]: r for r in read_results(results)}


def test_zero3_checkpoint_evaluates_on_one_rank(zero3_run, tmp_path):
    results = tmp_path / "results.jsonl"
    checkpoint = zero3_run / "checkpoints" / "global_step2"
    assert evaluate(["--checkpoint", str(checkpoint), "--results", str(results), *FAST]) == 0
    [record] = read_results(results)
    assert set(REQUIRED_FIELDS) <= set(record)
    assert (record["run_name"], record["caption_source"], record["num_samples"], record["step"],
            record["samples_seen"]) == ("tiny-zero3", "capsfusion", 32, 2, 32)
    assert record["zero_stage"] == 3 and record["eval_world_size"] == 1  # trained on 2 ranks
    assert record["benchmark"] == "demo_world_test" and record["checkpoint"] == str(checkpoint.resolve())
    assert len(record["config_digest"]) == 12 and len(record["protocol_digest"]) == 12
    protocol = record["protocol"]
    assert (protocol["num_beams"], protocol["max_new_tokens"], protocol["min_new_tokens"], protocol["prompt"]) == \
        (2, 8, 1, "")
    assert protocol["postprocess"] == "first sentence, final period stripped, lowercase"
    assert {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"} <= set(record["metrics"]) and "METEOR" not in record["metrics"]
    assert record["metrics"]["num_images"] == 8
    assert all(e["caption"] == e["caption"].lower() and not e["caption"].endswith(".") for e in record["examples"])


def test_two_ranks_give_the_same_result_and_replace_the_record(zero3_run, tmp_path):
    results = tmp_path / "results.jsonl"
    assert evaluate(["--checkpoint", str(zero3_run), "--results", str(results), *FAST]) == 0  # every checkpoint
    one_rank = by_step(results)
    assert sorted(one_rank) == [0, 1, 2]
    torchrun(2, "launch.evaluate", ["--checkpoint", str(zero3_run / "checkpoints" / "global_step2"), "--force",
                                    "--results", str(results), *FAST], capture=True, timeout=600)
    two_ranks = by_step(results)
    assert len(read_results(results)) == 3  # replaced, not appended
    assert two_ranks[2]["eval_world_size"] == 2
    assert two_ranks[2]["examples"] == one_rank[2]["examples"]
    assert two_ranks[2]["metrics"] == pytest.approx(one_rank[2]["metrics"], abs=1e-9)

    events = EventAccumulator(str(zero3_run / "tensorboard" / "eval"), size_guidance={"tensors": 0})
    events.Reload()
    assert sorted(e.step for e in events.Scalars("eval/demo_world_test/CIDEr")) == [0, 16, 32]  # samples seen, once
    assert "eval/demo_world_test/Bleu_4" in events.Tags()["scalars"]
    layout = custom_scalars_layout(events)
    chart = next(c for cat in layout.category if cat.title == "eval CIDEr" for c in cat.chart)
    assert chart.title == "demo_world_test" and list(chart.multiline.tag) == ["^eval/demo_world_test/CIDEr$"]


def custom_scalars_layout(events):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto.string_val[0])
    return layout


def test_every_benchmark_format_scores_the_same_captions(zero3_run, demo_world, tmp_path):
    """The demo world's eval split rewritten as Flickr30K Karpathy and NoCaps files gives identical CIDEr."""
    karpathy = json.loads((demo_world / "eval" / "dataset_coco.json").read_text())
    flickr = {"images": [{k: v for k, v in image.items() if k not in ("cocoid", "filepath")}
                         for image in karpathy["images"]]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(flickr))
    nocaps = {"images": [{"id": i, "file_name": image["filename"], "domain": ["in-domain", "out-domain"][i % 2]}
                         for i, image in enumerate(karpathy["images"])],
              "annotations": [{"image_id": i, "id": 10 * i + j, "caption": s["raw"]}
                              for i, image in enumerate(karpathy["images"]) for j, s in enumerate(image["sentences"])]}
    (tmp_path / "nocaps_val_4500_captions.json").write_text(json.dumps(nocaps))
    images = demo_world / "eval" / "images"
    results = tmp_path / "results.jsonl"
    assert evaluate(["--checkpoint", str(zero3_run / "checkpoints" / "global_step1"), "--results", str(results),
                     "--benchmark", "demo_world_test", "nocaps", "flickr30k", *FAST,
                     f"eval.benchmarks.nocaps.annotations={tmp_path / 'nocaps_val_4500_captions.json'}",
                     f"eval.benchmarks.nocaps.image_root={images}",
                     f"benchmarks.flickr30k.annotations={tmp_path / 'dataset_flickr30k.json'}",
                     f"benchmarks.flickr30k.image_root={images}"]) == 0
    records = {r["benchmark"]: r for r in read_results(results)}
    assert sorted(records) == ["demo_world_test", "flickr30k_karpathy_test", "nocaps_val"]
    cider = {name: r["metrics"]["CIDEr"] for name, r in records.items()}
    assert cider["nocaps_val"] == pytest.approx(cider["demo_world_test"], abs=1e-9)
    assert cider["flickr30k_karpathy_test"] == pytest.approx(cider["demo_world_test"], abs=1e-9)
    assert {"in-domain/CIDEr", "out-domain/CIDEr"} <= set(records["nocaps_val"]["metrics"])


def test_bad_requests_fail_before_loading(zero3_run, tmp_path, capsys):
    checkpoint = str(zero3_run / "checkpoints" / "global_step1")
    assert evaluate(["--checkpoint", checkpoint, "--benchmark", "nocaps"]) == 2
    assert "eval.benchmarks.nocaps.annotations" in capsys.readouterr().err
    assert evaluate(["--checkpoint", checkpoint, "eval.num_beam=3"]) == 2
    assert "unknown config key 'eval.num_beam'" in capsys.readouterr().err
    assert evaluate(["--watch", str(zero3_run), "num_beams=two"]) == 2
    assert "expected int" in capsys.readouterr().err
    assert evaluate(["--checkpoint", str(tmp_path)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate([])


def points_per_tag_and_step(log_dir) -> Counter:
    """How many events tensorboard reads for each (tag, step), scalars and tensors (the layout) alike."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    return Counter([(tag, e.step) for tag in tags["scalars"] for e in events.Scalars(tag)]
                   + [(tag, e.step) for tag in tags["tensors"] for e in events.Tensors(tag)])


def test_a_job_run_twice_repeats_nothing_and_force_redoes_without_duplicate_points(zero3_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(zero3_run, run, ignore=shutil.ignore_patterns("tensorboard", "eval_results.jsonl*"))
    checkpoint, results, log_dir = run / "checkpoints" / "global_step1", run / "eval_results.jsonl", \
        run / "tensorboard" / "eval"
    args = ["--checkpoint", str(checkpoint), *FAST, "eval.max_images=4"]
    assert evaluate(args) == 0  # default results file: the run's own
    [first] = read_results(results)
    points = points_per_tag_and_step(log_dir)
    assert ("eval/demo_world_test/CIDEr", 16) in points and set(points.values()) == {1}
    capsys.readouterr()

    assert evaluate(args) == 0  # the same job again: nothing evaluated, nothing written
    assert f"already evaluated: {checkpoint} on demo_world_test" in capsys.readouterr().out
    assert read_results(results) == [first] and points_per_tag_and_step(log_dir) == points

    assert evaluate([*args, "--force"]) == 0  # redone: the record and its points replaced, not appended
    [forced] = read_results(results)
    assert forced["evaluated_at"] >= first["evaluated_at"] and forced["protocol_digest"] == first["protocol_digest"]
    assert forced["metrics"] == pytest.approx(first["metrics"], abs=1e-9)
    assert points_per_tag_and_step(log_dir) == points

    assert evaluate([*args, "eval.num_beams=1"]) == 0  # another protocol is new work, no --force needed
    [greedy] = read_results(results)
    assert greedy["protocol"]["num_beams"] == 1
    assert points_per_tag_and_step(log_dir) == points  # still one point per (tag, step), now greedy's value
    events = EventAccumulator(str(log_dir))
    events.Reload()
    [cider] = events.Scalars("eval/demo_world_test/CIDEr")
    assert cider.value == pytest.approx(greedy["metrics"]["CIDEr"], rel=1e-6)
    with pytest.raises(SystemExit):
        evaluate(["--watch", str(run), "--force"])


def test_an_exported_model_directory_is_recognised(tmp_path):
    """Dispatch only: loading goes through ``lmm.eval.loading.load_exported`` (the export format's reader)."""
    from lmm.eval.evaluator import default_results_path, eval_config_for, resolve_checkpoints
    from lmm.eval.loading import is_export
    from lmm.eval.tensorboard import eval_log_dir

    (tmp_path / "lmm_export.json").write_text(json.dumps({"config": {"eval": {"num_beams": 3}}}))
    assert is_export(tmp_path) and resolve_checkpoints(tmp_path) == [tmp_path]
    assert default_results_path(tmp_path) == tmp_path / "eval_results.jsonl"
    assert eval_log_dir(tmp_path) == tmp_path / "tensorboard" / "eval"
    config = eval_config_for(tmp_path, ["eval.max_new_tokens=12"])
    assert (config.num_beams, config.max_new_tokens, config.min_new_tokens) == (3, 12, 8)  # export's, override, default
