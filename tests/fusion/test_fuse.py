"""lmm-fuse run: the paper's prompt, post-processing, skip accounting, parts, resume after a kill, and training on
the fused field -- with real shards and a real (tiny, random) LlamaForCausalLM directory."""
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from data_pipeline.captions import CaptionSelector
from data_pipeline.loader import CaptionStream, build_train_loader
from data_pipeline.manifest import Piece, load_manifest, subset
from data_pipeline.sequence import IGNORE_INDEX, SequenceLayout
from data_pipeline.shard_reader import LOST, read_piece
from data_pipeline.tokenizer import CaptionTokenizer
from launch.fuse import main
from lmm.config import ConfigError, load_config
from lmm.fusion.parts import part_from_env, part_range
from lmm.fusion.prompt import fusion_prompt, postprocess
from lmm.fusion.random_model import save_random_fuser

sys.path.insert(0, str(REPO_ROOT / "tests" / "data_pipeline"))
from shard_factory import captions, to_tensor, write_shards

# The prompt of the CapsFusion paper, copied byte for byte (two spaces between its sentences).
PAPER = ("Please merge and refine the information from the two given sentences.  Sentence 1 provides detailed "
         "real-world knowledge, yet it suffers from flaws in sentence structure and grammar.  Sentence 2 exhibits "
         "nice sentence structure, but lacking in-depth real-world details and may contain false information.  "
         "Please combine them into a new sentence, ensuring a well-structured sentence while retaining the detailed "
         "real-world information provided in Sentence 1.  Avoid simply concatenating the sentences.  "
         "Sentence 1: <raw caption> Sentence 2: <synthetic caption>")
SIZES = [8, 8, 6]
# (shard, sample) -> what is wrong with its inputs, and the skip reason it must be counted under
BROKEN = {(0, 1): ("raw", None, "missing_raw"), (1, 2): ("synthetic", None, "missing_synthetic"),
          (1, 3): ("raw", "  \n ", "empty_input"), (2, 4): ("synthetic", "", "empty_input")}
RUN = ["--batch-size", "2", "--max-new-tokens", "12"]


def fields(key: str) -> dict:
    out = captions(key)
    shard, sample = int(key[1:4]), int(key[5:])
    if (shard, sample) == (0, 5):
        out["raw"] = ["", "raw list caption"]  # a list field gives its first non-blank caption
    if (shard, sample) in BROKEN:
        name, value, _ = BROKEN[shard, sample]
        if value is None:
            del out[name]
        else:
            out[name] = value
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Input shards with broken samples, a random fuser directory, and an uninterrupted run into ``ref``."""
    root = tmp_path_factory.mktemp("fuse")
    manifest = write_shards(root / "in", SIZES, fields=fields, caption_fields=["raw", "synthetic", "capsfusion"])
    model = save_random_fuser(root / "model", [f"raw synthetic fused s00{i} a photo of a dog" for i in range(300)])
    assert main(["run", "--manifest", str(manifest), "--model", str(model), "--out", str(root / "ref"), *RUN]) == 0
    return root


def test_prompt_is_the_papers_text_byte_for_byte():
    prompt = fusion_prompt("Eiffel tower\n paris  2019 JPG", "a tall tower in a city")
    assert prompt == PAPER.replace("<raw caption>", "Eiffel tower paris 2019 JPG").replace(
        "<synthetic caption>", "a tall tower in a city")
    assert prompt.count(".  ") == 5 and prompt.endswith("JPG Sentence 2: a tall tower in a city")


@pytest.mark.parametrize("generated, max_chars, expected", [
    (" A dog runs on the beach. ", 100, "A dog runs on the beach."),
    ("Sentence 3: A dog runs.", 100, "A dog runs."),
    ("new sentence:\n\"A dog runs.\"", 100, "A dog runs."),
    ("\u201cA dog runs.\u201d", 100, "A dog runs."),
    ("A dog runs.\n\nNote: I merged the two sentences.", 100, "A dog runs."),
    ("A dog runs.\nSentence 4: ...", 100, "A dog runs."),
    ("A  dog\truns   fast.", 100, "A dog runs fast."),
    ("the dogs' ball", 100, "the dogs' ball"),
    ("A dog runs along the beach", 14, "A dog runs"),    # cut at a word boundary
    ("A dog runs, along", 11, "A dog runs"),             # ... and the comma it leaves at the end goes
    ("A dog runs along", 10, "A dog runs"),              # a cap that falls on a word's end keeps that word
    ("Supercalifragilistic", 5, "Super"),                # one longer word is cut hard
    ("", 100, None), ("  \n ", 100, None), ("Sentence 3:", 100, None), ('""', 100, None),
])
def test_postprocess(generated, max_chars, expected):
    assert postprocess(generated, max_chars) == expected


def test_parts_cover_the_shards_once_and_come_from_the_environment(monkeypatch):
    for shards, parts in ((10, 3), (3, 5), (7, 7)):
        ranges = [part_range(shards, i, parts) for i in range(parts)]
        assert [i for r in ranges for i in r] == list(range(shards))
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID",
                 "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP"):
        monkeypatch.delenv(name, raising=False)
    assert part_from_env() == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")  # --array=1-7:2, the third task
    assert part_from_env() == (2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # ... with two ranks: 8 parts
    assert part_from_env() == (5, 8)


def sidecar_rows(path: Path) -> dict:
    return {row.pop("__key__"): row for row in map(json.loads, path.read_text().splitlines())}


def test_skips_are_counted_per_shard_and_in_total(world):
    ref = world / "ref"
    stats = json.loads((ref / "stats.json").read_text())
    for shard, size in enumerate(SIZES):
        reasons = {}
        for (s, _), (_, _, reason) in BROKEN.items():
            if s == shard:
                reasons[reason] = reasons.get(reason, 0) + 1
        record = stats["shards"][shard]
        fused = sidecar_rows(ref / f"s{shard:03d}.fused.jsonl")
        assert (record["rows"], record["fused"], record["skipped"]) == (size, len(fused), reasons)
        assert len(fused) == size - sum(reasons.values())
        assert set(fused) == {f"s{shard:03d}_{i:04d}" for i in range(size) if (shard, i) not in BROKEN}
        assert all(isinstance(row["fused"], str) and row["fused"].strip() for row in fused.values())
    assert stats["total"] == {"rows": 22, "fused": 18, "skipped": {"empty_input": 2, "missing_raw": 1,
                                                                   "missing_synthetic": 1}}


def test_training_selects_the_fused_field(world):
    """The output manifest lists the new field, the config check accepts it, and the loader's stream yields the
    fused captions (joined from the sidecars) of exactly the fused samples, in the same planned order."""
    ref = world / "ref"
    manifest = json.loads((ref / "manifest.json").read_text())
    assert manifest["caption_fields"] == ["raw", "synthetic", "capsfusion", "fused"]
    assert [e["path"] for e in manifest["shards"]] == [f"../in/s{i:03d}.tar" for i in range(3)]
    load_config("configs/demo.yaml", [f"data.train_manifest={ref}", "data.caption_source=fused"])
    with pytest.raises(ConfigError, match="not a caption field"):
        load_config("configs/demo.yaml", [f"data.train_manifest={world / 'in'}", "data.caption_source=fused"])

    fused = {k: v["fused"] for i in range(3) for k, v in sidecar_rows(ref / f"s{i:03d}.fused.jsonl").items()}
    tokenizer = CaptionTokenizer(world / "model" / "tokenizer.model")
    layout = SequenceLayout(tokenizer, 2, 10_000)

    def stream(manifest_dir, source):
        return CaptionStream(subset(load_manifest(manifest_dir), 22), CaptionSelector(source), to_tensor, layout,
                             0, 1, micro_batch_size=1, seed=5, shuffle_buffer=8)

    examples = [e for e, _ in zip(stream(ref, "fused"), range(18))]
    assert {e["key"] for e in examples} == set(fused)
    for example in examples:
        labels = [t for t in example["labels"] if t != IGNORE_INDEX]
        assert labels == tokenizer.encode(fused[example["key"]]) + [tokenizer.eos_id]
    position = examples[-1]["position"][1]
    assert list(position["skipped"]) == ["missing_caption"] and sum(position["skipped"].values()) == position[
        "seen"] - 18
    # the sidecars change nothing else: another field comes out in the order the source manifest gives it
    keys = [[b["keys"] for b in islice(build_train_loader(stream(m, "capsfusion"), 0), 30)] for m in (ref, world / "in")]
    assert keys[0] == keys[1]
    # a sidecar that cannot be read loses its shard's range, as a broken tar does (tar_error), and says so
    shard = load_manifest(ref)[0]
    assert list(read_piece(Piece(shard.url, 2, 5, (str(ref / "gone.fused.jsonl"),)))) == [LOST] * 3


def test_a_generation_with_nothing_usable_is_counted(world, tmp_path):
    """A fuser whose head is all zeros writes only <unk>, which decodes to nothing: every prompt is counted as
    unusable_generation, no line is written, and the loader skips those samples as missing_caption."""
    from transformers import LlamaForCausalLM

    mute = tmp_path / "mute"
    shutil.copytree(world / "model", mute)
    model = LlamaForCausalLM.from_pretrained(mute)
    model.lm_head.weight.data.zero_()
    model.save_pretrained(mute)
    shards = write_shards(tmp_path / "in", [3], fields=fields, caption_fields=["raw", "synthetic"])
    assert main(["run", "--manifest", str(shards), "--model", str(mute), "--out", str(tmp_path / "out"),
                 "--max-new-tokens", "3"]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["total"] == {"rows": 3, "fused": 0, "skipped": {"missing_raw": 1, "unusable_generation": 2}}
    assert (tmp_path / "out" / "s000.fused.jsonl").read_text() == ""


def test_bad_requests_are_refused_before_any_work(world, capsys):
    base = ["run", "--manifest", str(world / "in"), "--model", str(world / "model")]
    assert main([*base, "--out", str(world / "ref"), "--field", "capsfusion"]) == 2
    assert "already has that caption field" in capsys.readouterr().err
    assert main([*base, "--out", str(world / "ref"), "--raw-field", "alt"]) == 2
    assert main([*base, "--out", str(world / "ref"), *RUN[:2], "--max-new-tokens", "13"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["run", "--manifest", str(world / "in"), "--model", str(world), "--out", str(world / "x")]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err


def test_chat_template_wraps_the_prompt_only_when_asked(world, tmp_path):
    from transformers import AutoTokenizer

    from lmm.fusion.generate import Fuser

    chatty = tmp_path / "chatty"
    shutil.copytree(world / "model", chatty)
    tokenizer = AutoTokenizer.from_pretrained(chatty)
    tokenizer.chat_template = ("{% for m in messages %}Please: {{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %} Sentence:{% endif %}")
    tokenizer.save_pretrained(chatty)
    prompt = fusion_prompt("raw s000_0000", "synthetic s000_0000")
    wrapped = Fuser(chatty, 4, "transformers", chat_template=True).encode([prompt])[0]
    assert wrapped == tokenizer(f"Please: {prompt} Sentence:", add_special_tokens=False)["input_ids"]
    assert Fuser(chatty, 4, "transformers").encode([prompt])[0] == tokenizer(prompt)["input_ids"]  # <s> + prompt
    with pytest.raises(ValueError, match="no chat template"):
        Fuser(world / "model", 4, "transformers", chat_template=True)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_asking_for_vllm_without_it_is_refused(world, tmp_path, capsys):
    assert main(["run", "--manifest", str(world / "in"), "--model", str(world / "model"), "--out",
                 str(tmp_path / "out"), "--backend", "vllm"]) == 2
    assert "vLLM is not installed" in capsys.readouterr().err


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def kill_in_second_shard(cmd: list[str], out: Path) -> bool:
    """Start ``cmd`` and SIGKILL it once the first shard is done and the second one's sidecar is open (its rows
    sit in the file buffer until the shard ends, so the file's size says nothing before that; the shard's
    generation takes the rest of its ~1 s); False when the run got past the second shard first."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first, second = out / "s000.fused.done.json", out / "s001.fused.jsonl.tmp"
    deadline = time.monotonic() + 300
    while not (first.is_file() and second.is_file()):
        if proc.poll() is not None or (out / "s001.fused.done.json").exists():
            output = proc.communicate()[0] if proc.poll() is not None else ""
            assert proc.returncode in (None, 0), output
            proc.kill()
            proc.wait()
            return False
        assert time.monotonic() < deadline, "the run never reached the second shard"
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    return not (out / "s001.fused.done.json").exists()


def test_a_killed_run_resumes_and_ends_with_the_uninterrupted_outputs(world, capsys):
    """SIGKILL the CLI's process while the second shard is in flight (the first one's done record is written); the
    re-run redoes only the unfinished shards, the finished one is not touched, and every output file is
    byte-identical to the uninterrupted run's; a third run finds everything done and changes nothing."""
    out = world / "killed"  # a sibling of ref/, so the manifests' relative paths are the same
    cmd = [sys.executable, "-m", "launch.fuse", "run", "--manifest", str(world / "in"), "--model",
           str(world / "model"), "--out", str(out), *RUN]
    for _ in range(5):  # on a loaded box the second shard may finish before the kill lands: try again
        shutil.rmtree(out, ignore_errors=True)
        if kill_in_second_shard(cmd, out):
            break
    assert not (out / "s001.fused.done.json").exists() and not (out / "manifest.json").exists()
    assert main(["finish", "--out", str(out)]) == 1  # names the two missing shards
    stamp = {p: (out / p).stat().st_mtime_ns for p in ("s000.fused.done.json", "s000.fused.jsonl")}

    capsys.readouterr()
    assert main(cmd[3:]) == 0
    assert "1 already done, 2 to do" in capsys.readouterr().out
    assert {p: (out / p).stat().st_mtime_ns for p in stamp} == stamp
    assert snapshot(out) == snapshot(world / "ref")

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in ("manifest.json", "stats.json")}
    assert main(cmd[3:]) == 0  # finished: no shard is touched
    assert "3 already done, 0 to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    assert snapshot(out) == snapshot(world / "ref")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
