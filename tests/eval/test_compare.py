"""The before/after comparison command on the tiny ZeRO-3 run's checkpoints: its files hold the scorer's numbers and
the paired interval, the same model twice changes nothing, ``--image-ids`` chooses the caption table's rows, and
bad requests exit 2 with one line before any weight is read; the markdown cells escape ``|``."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from launch.compare import main as compare
from lmm.eval.benchmarks import EvalImage, load_karpathy
from lmm.eval.bootstrap import bootstrap_interval, paired_difference_interval
from lmm.eval.compare import caption_table, escape_cell, shown_images
from lmm.eval.scoring import score_with_per_image

FAST = ["eval.meteor=false", "eval.tokenizer=python"]


def checkpoint(run: Path, step: int) -> str:
    return str(run / "checkpoints" / f"global_step{step}")


def cells(line: str) -> list[str]:
    """The cells of a markdown table row (split on unescaped ``|``)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"[+-]?\d+\.\d+", text)]


@pytest.fixture(scope="module")
def compared(zero3_run, tmp_path_factory):
    """Step 0 (before) against step 2 (after) on the run's own eval set (8 images), run once; (out dir, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("compare")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert compare([checkpoint(zero3_run, 0), checkpoint(zero3_run, 2), "--out", str(out), *FAST]) == 0
    return out, printed.getvalue()


def test_the_files_hold_the_scorers_numbers_and_the_paired_interval(compared, demo_world):
    out, printed = compared
    result = json.loads((out / "compare.json").read_text())
    markdown = (out / "compare.md").read_text()
    assert markdown in printed
    models = result["models"]
    assert [(m["run_name"], m["step"], m["samples_seen"]) for m in models.values()] == \
        [("tiny-zero3", 0, 0), ("tiny-zero3", 2, 32)]
    assert models["after"]["path"].endswith("global_step2")
    proto = result["protocol"]  # the after run's eval section: the tiny overrides
    assert (proto["num_beams"], proto["max_new_tokens"], proto["min_new_tokens"], proto["batch_size"],
            proto["split"], proto["same_for_both"]) == (2, 8, 1, 8, "test", True)

    images = load_karpathy(demo_world / "eval" / "dataset_coco.json", demo_world / "eval")[:8]  # eval.max_images=8
    references = {img.image_id: img.references for img in images}
    assert [c["image_id"] for c in result["captions"]] == list(references)  # the same images for both
    scored = {label: score_with_per_image(references, {c["image_id"]: c[label] for c in result["captions"]},
                                          "python", with_meteor=False) for label in ("before", "after")}
    for label, (metrics, per_image) in scored.items():
        assert result["metrics"][label] == pytest.approx(metrics, abs=1e-12)
        assert result["intervals"][label]["CIDEr"] == pytest.approx(bootstrap_interval(per_image["CIDEr"]))
    (before, before_images), (after, after_images) = scored["before"], scored["after"]
    assert result["metrics"]["delta"]["CIDEr"] == pytest.approx(after["CIDEr"] - before["CIDEr"], abs=1e-12)
    low, high = paired_difference_interval(before_images["CIDEr"], after_images["CIDEr"])
    assert result["intervals"]["delta"]["CIDEr"] == pytest.approx([low, high])
    assert result["delta_beyond_interval"]["CIDEr"] == (low > 0 or high < 0)

    rows = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")}
    assert numbers(rows["CIDEr"]) == pytest.approx(
        [100 * v for v in (before["CIDEr"], *bootstrap_interval(before_images["CIDEr"]), after["CIDEr"],
                           *bootstrap_interval(after_images["CIDEr"]), after["CIDEr"] - before["CIDEr"], low, high)],
        abs=0.006)  # x100, 2 decimals
    for name in ("Bleu_1", "Bleu_4"):
        assert numbers(rows[name]) == pytest.approx([100 * before[name], 100 * after[name],
                                                     100 * (after[name] - before[name])], abs=0.006)
    assert ("excludes 0" if result["delta_beyond_interval"]["CIDEr"] else "includes 0") in markdown
    assert len(result["rows"]) == 8  # --show 10, but only 8 images
    captions = {c["image_id"]: c for c in result["captions"]}
    for row in result["rows"]:
        assert (row["before"], row["after"]) == (captions[row["image_id"]]["before"],
                                                 captions[row["image_id"]]["after"])
        assert row["ground_truth"] == references[row["image_id"]][0]


def test_the_same_model_twice_changes_nothing_and_image_ids_choose_the_rows(zero3_run, demo_world, tmp_path, capsys):
    step2 = checkpoint(zero3_run, 2)
    assert compare([step2, step2, "--out", str(tmp_path), "--dataset-json", str(demo_world / "eval" /
                    "dataset_coco.json"), "--image-root", str(demo_world / "eval"), "--max-images", "4",
                    "--image-ids", "3,1", *FAST, "num_beams=1"]) == 0
    result = json.loads((tmp_path / "compare.json").read_text())
    assert result["eval_set"]["num_images"] == 4 and result["protocol"]["num_beams"] == 1
    assert set(result["metrics"]["delta"].values()) == {0.0}
    assert result["intervals"]["delta"]["CIDEr"] == [0.0, 0.0]
    assert result["delta_beyond_interval"] == {"CIDEr": False, "ROUGE_L": False}
    assert [row["image_id"] for row in result["rows"]] == [3, 1]
    markdown = capsys.readouterr().out
    assert "includes 0" in markdown
    table = markdown[markdown.index("| image id |"):].splitlines()
    assert [cells(line)[0] for line in table[2:4]] == ["3", "1"]


def test_bad_requests_exit_2_with_one_line_before_loading(zero3_run, tmp_path, capsys):
    step2, out = checkpoint(zero3_run, 2), str(tmp_path / "out")
    for args, message in [([str(tmp_path), step2], f"before model {tmp_path} is neither a complete checkpoint"),
                          ([step2, step2, "--image-ids", "1,999"], "image id(s) 999 not among the 8 compared images"),
                          ([step2, step2, "--split", "val"], "no images in split 'val'"),
                          ([step2, step2, "--dataset-json", "x.json"], "--dataset-json needs --image-root")]:
        assert compare([*args, "--out", out, *FAST]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not Path(out).exists()
    with pytest.raises(SystemExit):
        compare([step2, "--out", out])  # one model only


@pytest.mark.unit
def test_markdown_cells_escape_pipes():
    assert escape_cell("a | b\nc") == "a \\| b c"
    table = caption_table([{"image_id": 7, "ground_truth": "x|y", "before": "a | b", "after": "|"}])
    assert cells(table.splitlines()[-1]) == ["7", "x\\|y", "a \\| b", "\\|"]  # still four cells


@pytest.mark.unit
def test_shown_images_are_sampled_with_a_fixed_seed_or_chosen_by_id():
    images = [EvalImage(i, Path(f"{i}.jpg"), [f"ref {i}"]) for i in range(100, 130)]
    shown = shown_images(images, 5)
    assert len(shown) == 5 and shown == shown_images(images, 5)
    assert [img.image_id for img in shown] == sorted(img.image_id for img in shown)  # in eval order
    assert shown_images(images, 50) == images
    assert [img.image_id for img in shown_images(images, 5, ["120", "101"])] == [120, 101]
    with pytest.raises(ValueError, match="7 not among the 30"):
        shown_images(images, 5, ["101", "7"])
