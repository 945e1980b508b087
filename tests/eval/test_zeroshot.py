"""``lmm-zeroshot`` on a tiny real open_clip EVA CLIP (``EVA01-tiny-14``, random weights, saved as open_clip
publishes it): CIFAR-10's python batches and an ImageFolder of demo-world shapes classify, the figures print, a
random model lands near chance and is flagged, the classifier agrees with a direct computation, the weights load
as saved (open_clip layout and EVA-CLIP's own ``visual.*`` naming alike), and a poisoned batch is refused unrun.

The tiny text tower has 64 token rows, open_clip's tokenizer 49,408 ids: the tests tokenize with open_clip's
tokenizer and fold its ids into the tiny vocabulary (start/end of text kept as the two largest, so the tower's
argmax pooling still finds the end token)."""
import json
import logging
import pickle

import numpy as np
import open_clip
import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import save_file

import lmm.models.vision  # noqa: F401  (registers EVA01-tiny-14 with open_clip)
from launch.zeroshot import main
from lmm.eval import zeroshot
from lmm.models.weights import WeightsMismatchError

MODEL = "EVA01-tiny-14"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 10  # 100 random images: a random model's top-1 averages out near chance
CLIP_TOKENIZER = open_clip.get_tokenizer(MODEL)  # open_clip's SimpleTokenizer, the tiny config's context length


def tiny_tokenizer(texts):
    ids = CLIP_TOKENIZER(texts)
    folded = 1 + ids % 61
    folded[ids == 0] = 0
    folded[ids == 49406] = 62  # start of text
    folded[ids == 49407] = 63  # end of text
    return folded


@pytest.fixture
def tiny_tokens(monkeypatch):
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name, **kw: tiny_tokenizer)


@pytest.fixture(autouse=True)
def restore_logging():
    """``main`` installs lmm's log handler on the (captured) stdout of its test: taken away afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_cifar(directory, labels_payload=None):
    """A CIFAR-10 python-batch directory in the official format: PER_CLASS random images per class in ``test_batch``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = [c for c in range(10) for _ in range(PER_CLASS)]
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels_payload or labels,
             b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    (directory / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    (directory / "batches.meta").write_bytes(pickle.dumps(
        {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": len(labels),
         b"num_vis": 3072}, protocol=4))
    return directory


def test_cifar10_prints_the_figures_and_flags_a_random_model(clip_file, tmp_path, capsys, tiny_tokens):
    cifar = write_cifar(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "zs.json"
    assert main(["--model", MODEL, "--pretrained", str(clip_file), "--cifar10", str(tmp_path), "--json", str(out),
                 "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["num_images"] == 10 * PER_CLASS and result["classes"] == CIFAR_CLASSES
    assert f"{10 * PER_CLASS} images, 10 classes" in printed and "top-1" in printed and "top-5" in printed
    assert all(f"  {c}" in printed for c in CIFAR_CLASSES)
    assert all(row["images"] == PER_CLASS for row in result["per_class"].values())
    assert sum(row["correct"] for row in result["per_class"].values()) == round(result["top1"] * result["num_images"])
    assert result["top1"] < 1.5 * result["chance"] == pytest.approx(0.15)  # random weights: near chance
    assert "WARNING: top-1" in printed and "mis-mapped or untrained" in printed
    assert result["warning"] and result["top1"] <= result["top5"]
    print(f"tiny random model, CIFAR-10 format: top-1 {result['top1']:.3f} top-5 {result['top5']:.3f}")
    assert main(["--model", MODEL, "--pretrained", str(clip_file), "--cifar10", str(cifar),
                 "--max-images", "4"]) == 0
    assert "4 images" in capsys.readouterr().out


def test_classifier_agrees_with_a_direct_computation(saved_clip, clip_file):
    model, preprocess = zeroshot.load_clip(MODEL, clip_file)
    saved = saved_clip.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    torch.manual_seed(0)
    images = [torch.rand(3, 112, 112) for _ in range(6)]
    labels = [0, 1, 2, 0, 1, 2]
    classes = ["red circle", "blue square", "green star"]
    result = zeroshot.classify(model, tiny_tokenizer, list(zip(images, labels)), classes, batch_size=4)
    templates = zeroshot.templates_named("simple")
    with torch.no_grad():
        text = torch.stack([saved_clip.encode_text(tiny_tokenizer([t(c) for t in templates]), normalize=True)
                            .mean(0) for c in classes])
        text = text / text.norm(dim=-1, keepdim=True)
        predicted = (saved_clip.encode_image(torch.stack(images), normalize=True) @ text.T).argmax(-1)
    assert result.top1 == pytest.approx((predicted == torch.tensor(labels)).float().mean().item())
    assert result.top5 is None and result.num_images == 6  # fewer than 5 classes: no top-5
    assert [result.per_class[c]["correct"] for c in classes] == [
        int(((predicted == torch.tensor(labels)) & (torch.tensor(labels) == i)).sum()) for i in range(3)]


def test_eva_clip_naming_loads_the_same_weights(saved_clip, tmp_path):
    """EVA-CLIP's own files name the trunk ``visual.*`` (no ``trunk.``): mapped by training's loader."""
    state = {k.replace("visual.trunk.", "visual."): v.clone().contiguous() for k, v in saved_clip.state_dict().items()}
    path = tmp_path / "eva_clip.pt"
    torch.save(state, path)
    model, _ = zeroshot.load_clip(MODEL, path)
    saved = saved_clip.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_demo_world_shapes_as_an_image_folder(clip_file, tmp_path):
    """Demo-world images holding one kind of shape, filed under the shape's name: the shapes are the classes."""
    from data_pipeline.demo_world import render_item, sample_item

    root, counts = tmp_path / "shapes", {}
    for index in range(60):
        item = sample_item(1, "eval", index)
        if len({g.shape for g in item.groups}) != 1 or counts.get(item.groups[0].shape, 0) >= 2:
            continue
        shape = item.groups[0].shape
        (root / shape).mkdir(parents=True, exist_ok=True)
        render_item(item, 48, 1, "eval", index).save(root / shape / f"{index}.png")
        counts[shape] = counts.get(shape, 0) + 1
    assert len(counts) >= 3
    result = zeroshot.zero_shot(MODEL, clip_file, image_folder_dir=root, tokenizer=tiny_tokenizer, batch_size=16)
    assert result.classes == sorted(counts) and result.num_images == sum(counts.values())
    assert {c: row["images"] for c, row in result.per_class.items()} == counts
    assert "per-class top-1:" in result.report()


def test_a_poisoned_batch_is_refused_unrun(clip_file, tmp_path, capsys, tiny_tokens):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    cifar = write_cifar(tmp_path / "cifar", labels_payload=[Payload()])
    with pytest.raises(ValueError, match=r"refusing to unpickle (builtins|io)\.open"):
        zeroshot.load_cifar10(cifar)
    assert main(["--model", MODEL, "--pretrained", str(clip_file), "--cifar10", str(cifar)]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err
    assert not marker.exists()


def test_bad_files_are_named(saved_clip, tmp_path, capsys):
    vision_only = tmp_path / "vision.safetensors"
    save_file({k: v.contiguous() for k, v in saved_clip.state_dict().items() if k.startswith("visual.")},
              str(vision_only))
    with pytest.raises(WeightsMismatchError, match="holds no text tower"):
        zeroshot.load_clip(MODEL, vision_only)
    state = dict(saved_clip.state_dict())
    state["text.text_projection"] = torch.zeros(8, 8)
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(WeightsMismatchError, match=r"tensor 'text\.text_projection' has shape \(8, 8\)"):
        zeroshot.load_clip(MODEL, tmp_path / "wrong.pt")
    assert main(["--model", MODEL, "--pretrained", str(tmp_path / "absent.pt"),
                 "--image-folder", str(tmp_path)]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert main(["--config", str(REPO_ROOT / "configs/demo.yaml"), "--image-folder", str(tmp_path)]) == 2
    assert "model.vision.pretrained is set" in capsys.readouterr().err  # the demo config names no file
    with pytest.raises(ValueError, match="the tokenizer gives id 49407 but the text tower has 64"):
        zeroshot.checked_tokenizer(CLIP_TOKENIZER, saved_clip)(["a photo of a cat."])
