"""Zero-shot classification with the vision tower's own CLIP: the check that a real EVA-CLIP file was mapped right.

Why: EVA-CLIP key naming is the least tested part of weight loading, and a wrong mapping is silent (a tower whose
blocks are shuffled or left random still trains). A CLIP whose image and text towers come from the same file
classifies images it never saw by comparing them with prompts ("a photo of the small {class}."): a published
EVA-CLIP file scores far above chance on CIFAR-10 (88.85% in the issue's source); a mis-mapped or untrained one
scores near chance, and the report then says so.

What: ``load_clip`` builds the open_clip model named by ``model.vision.name`` and fills it from the
``model.vision.pretrained`` file: the image trunk through the loader training uses
(``lmm.models.vision.load_vision_weights``: open_clip layout, a bare trunk, or EVA-CLIP's own naming through timm's
converter; the mapping under test), everything else (text tower, logit scale, any visual head) in open_clip's naming
(old-style top-level text keys converted as open_clip's own loader does), strictly: a missing, extra or mis-shaped
tensor raises ``WeightsMismatchError`` naming it, and a vision-only file (``launch.convert_weights vision`` drops
the text tower) is refused. The classifier is open_clip's own ``build_zero_shot_classifier`` with its tokenizer and
its ImageNet prompt templates (``simple``: 7, ``openai``: 80); images go through open_clip's eval transform.

Data: CIFAR-10's python batches (``data_batch_1``..``5``, ``test_batch``, ``batches.meta``) or any ImageFolder
layout (``root/<class>/<image>``, torchvision's ``ImageFolder``; underscores in class folders become spaces). The
CIFAR batches are pickles, which may run code while they load (``__reduce__``); ``SafeCifarUnpickler`` resolves
exactly the globals a numpy array needs (``numpy.core.multiarray._reconstruct`` under either module spelling,
``numpy.ndarray``, ``numpy.dtype``) and refuses every other, so nothing named in the file is called but those.
"""
from __future__ import annotations

import json
import logging
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

TEMPLATES = ("simple", "openai")
NEAR_CHANCE = 1.5  # top-1 below this multiple of chance is reported as a likely mis-mapped or untrained file
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = ("test_batch",)
CIFAR_META = "batches.meta"
CIFAR_DIR = "cifar-10-batches-py"  # the folder the official archive unpacks to


# ----------------------------------------------------------------------------------------------------- CIFAR-10

def _numpy_reconstruct():
    core = getattr(np, "_core", None)  # numpy 2 (``numpy.core`` is a deprecated alias there)
    return core.multiarray._reconstruct if core is not None else np.core.multiarray._reconstruct


class SafeCifarUnpickler(pickle.Unpickler):
    """An unpickler for CIFAR's python batches that resolves only the globals a numpy array needs."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only dicts, "
                                         "lists, bytes and numpy arrays")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def read_cifar_pickle(path: Path) -> dict:
    """One CIFAR batch or meta file as a dict with ``str`` keys (the files are Python 2 pickles: bytes keys)."""
    try:
        with open(path, "rb") as f:
            data = SafeCifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: {err}") from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise ValueError(f"{path}: not a CIFAR python batch ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a CIFAR python batch (a {type(data).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_cifar10(directory: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images ``[N, 32, 32, 3]`` uint8, labels ``[N]``, class names) of CIFAR-10's python batches in
    ``directory`` (or its ``cifar-10-batches-py`` folder). ``split``: ``test`` (``test_batch``) or ``train``
    (the ``data_batch_*`` present)."""
    root = Path(directory)
    if not (root / CIFAR_META).is_file() and (root / CIFAR_DIR / CIFAR_META).is_file():
        root = root / CIFAR_DIR
    if not (root / CIFAR_META).is_file():
        raise FileNotFoundError(f"--cifar10 {directory}: no {CIFAR_META} (expected CIFAR-10's python batches)")
    if split not in ("test", "train"):
        raise ValueError(f"split must be test or train, not {split!r}")
    names = [_text(n) for n in read_cifar_pickle(root / CIFAR_META).get("label_names", [])]
    if not names:
        raise ValueError(f"{root / CIFAR_META}: no label_names")
    files = [root / n for n in (CIFAR_TEST if split == "test" else CIFAR_TRAIN) if (root / n).is_file()]
    if not files:
        wanted = ", ".join(CIFAR_TEST if split == "test" else CIFAR_TRAIN)
        raise FileNotFoundError(f"--cifar10 {root}: no {split} batch ({wanted})")
    images, labels = [], []
    for path in files:
        batch = read_cifar_pickle(path)
        data, batch_labels = batch.get("data"), batch.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: 'data' is not a uint8 array of shape [N, 3072]")
        if batch_labels is None or len(batch_labels) != len(data):
            raise ValueError(f"{path}: 'labels' missing or not one per image")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # channel planes -> HWC
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    labels = np.concatenate(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"--cifar10 {root}: labels outside 0..{len(names) - 1}")
    return np.concatenate(images), labels, names


class ArrayImages(torch.utils.data.Dataset):
    """``[N, H, W, 3]`` uint8 images with labels, through a PIL transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def image_folder(directory: str | Path, transform: Callable):
    """torchvision's ImageFolder of ``directory`` and its class names (folder names, underscores as spaces)."""
    from torchvision.datasets import ImageFolder

    if not Path(directory).is_dir():
        raise FileNotFoundError(f"--image-folder {directory}: no such directory")
    try:
        dataset = ImageFolder(str(directory), transform=transform)
    except FileNotFoundError as err:  # no class folders / no images
        raise FileNotFoundError(f"--image-folder {directory}: {err}") from err
    return dataset, [c.replace("_", " ") for c in dataset.classes]


# ------------------------------------------------------------------------------------------------------- model

def load_clip(name: str, pretrained: str | Path, device: str | torch.device = "cpu"):
    """The open_clip CLIP ``name`` with image and text towers from ``pretrained`` (see the module docstring), in
    eval mode, and open_clip's eval-time image transform for it."""
    import open_clip
    from open_clip.model import convert_to_custom_text_state_dict
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from lmm.models.vision import VisionTower, load_vision_weights, read_state_dict  # registers the project's configs
    from lmm.models.weights import WeightsMismatchError, check_tensor_shapes, state_shapes

    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model '{name}'")
    if not Path(pretrained).is_file():
        raise FileNotFoundError(f"no such checkpoint file: {pretrained}")
    source = f"zero-shot file {pretrained}"
    model = open_clip.create_model(name, device="cpu")  # random init, filled below
    load_vision_weights(VisionTower(model.visual), pretrained)  # the trunk, as training maps it
    state = read_state_dict(pretrained, source)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)  # an old CLIP file's top-level text tower
    own = model.state_dict()
    wanted = {k: v for k, v in own.items() if not k.startswith("visual.trunk.")}
    rest = {k: v for k, v in state.items() if k in wanted or not k.startswith("visual.")}
    if not any(k.startswith("text.") for k in rest):
        raise WeightsMismatchError(f"{source} holds no text tower: zero-shot needs the whole CLIP file (image and "
                                   "text towers), not a vision-only one such as launch.convert_weights writes")
    if "logit_scale" in rest and rest["logit_scale"].ndim != own["logit_scale"].ndim:
        rest["logit_scale"] = rest["logit_scale"].reshape(own["logit_scale"].shape)
    check_tensor_shapes(state_shapes(wanted), state_shapes(rest), source,
                        ignore_unexpected=("attn_mask", "position_ids"))
    model.load_state_dict({k: v for k, v in rest.items() if k in wanted}, strict=False)
    del state, rest
    model = model.to(device).eval()
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return model, preprocess


def checked_tokenizer(tokenizer: Callable, model) -> Callable:
    """``tokenizer`` refusing ids the text tower has no embedding row for (a tokenizer and model that disagree
    would otherwise fail deep inside the embedding lookup)."""
    text = getattr(model, "text", model)
    rows = text.token_embedding.num_embeddings

    def tokenize(texts):
        ids = tokenizer(texts)
        if int(ids.max()) >= rows:
            raise ValueError(f"the tokenizer gives id {int(ids.max())} but the text tower has {rows} embedding "
                             "rows: tokenizer and model do not match")
        return ids

    return tokenize


def templates_named(name: str) -> Sequence[Callable[[str], str]]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if name not in TEMPLATES:
        raise ValueError(f"templates must be one of {TEMPLATES}, not {name!r}")
    return SIMPLE_IMAGENET_TEMPLATES if name == "simple" else OPENAI_IMAGENET_TEMPLATES


# ----------------------------------------------------------------------------------------------- classification

@dataclass
class ZeroShotResult:
    model: str
    pretrained: str
    dataset: str
    templates: str
    num_images: int
    classes: list[str]
    top1: float
    top5: float | None  # None with fewer than 5 classes
    chance: float
    per_class: dict[str, dict] = field(default_factory=dict)  # name -> {"correct", "images", "accuracy"}
    warning: str | None = None

    def report(self) -> str:
        lines = [(f"zero-shot {self.model} ({self.pretrained}) on {self.dataset}: {self.num_images} images, "
                  f"{len(self.classes)} classes, {self.templates} templates"),
                 f"top-1 {100 * self.top1:6.2f}%   (chance {100 * self.chance:.2f}%)"]
        if self.top5 is not None:
            lines.append(f"top-5 {100 * self.top5:6.2f}%")
        width = max(len(c) for c in self.classes)
        lines.append("per-class top-1:")
        for name, row in self.per_class.items():
            accuracy = "   -" if row["accuracy"] is None else f"{100 * row['accuracy']:6.2f}%"
            lines.append(f"  {name:<{width}}  {row['correct']:>6}/{row['images']:<6} {accuracy}")
        if self.warning:
            lines.append(f"WARNING: {self.warning}")
        return "\n".join(lines)

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")


def near_chance_warning(top1: float, chance: float, margin: float = NEAR_CHANCE) -> str | None:
    if top1 >= margin * chance:
        return None
    return (f"top-1 {100 * top1:.2f}% is below {margin}x chance ({100 * chance:.2f}%): the weights may be "
            "mis-mapped or untrained")


@torch.no_grad()
def classify(model, tokenizer: Callable, dataset, classes: Sequence[str], templates: str = "simple",
             batch_size: int = 64, max_images: int | None = None, device: str | torch.device = "cpu",
             num_workers: int = 0, describe: dict | None = None) -> ZeroShotResult:
    """Top-1 / top-5 and per-class accuracy of ``model`` on ``dataset`` ((image tensor, label) pairs), with
    open_clip's zero-shot classifier for ``classes`` and its ``templates`` prompts."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    if max_images is not None and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(max_images))
    if len(dataset) == 0:
        raise ValueError("no images to classify")
    classifier = build_zero_shot_classifier(model, checked_tokenizer(tokenizer, model), list(classes),
                                            templates_named(templates), num_classes_per_batch=10, device=device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    k = min(5, len(classes))
    correct1 = correct5 = seen = 0
    per_correct = torch.zeros(len(classes), dtype=torch.long)
    per_total = torch.zeros(len(classes), dtype=torch.long)
    for images, labels in loader:
        features = model.encode_image(images.to(device), normalize=True)
        logits = 100.0 * features @ classifier  # open_clip's zero-shot evaluation scale
        top = logits.topk(k, dim=-1).indices.cpu()
        hit1 = top[:, 0] == labels
        correct1 += int(hit1.sum())
        correct5 += int((top == labels[:, None]).any(dim=1).sum())
        per_total += torch.bincount(labels, minlength=len(classes))
        per_correct += torch.bincount(labels[hit1], minlength=len(classes))
        seen += len(labels)
        log.info("classified %d/%d images", seen, len(dataset))
    chance = 1.0 / len(classes)
    top1 = correct1 / seen
    per_class = {name: {"correct": int(c), "images": int(t), "accuracy": (int(c) / int(t)) if t else None}
                 for name, c, t in zip(classes, per_correct, per_total)}
    describe = describe or {}
    return ZeroShotResult(model=describe.get("model", ""), pretrained=describe.get("pretrained", ""),
                          dataset=describe.get("dataset", ""), templates=templates, num_images=seen,
                          classes=list(classes), top1=top1, top5=correct5 / seen if len(classes) >= 5 else None,
                          chance=chance, per_class=per_class, warning=near_chance_warning(top1, chance))


def zero_shot(name: str, pretrained: str | Path, *, cifar10: str | Path | None = None,
              image_folder_dir: str | Path | None = None, split: str = "test", templates: str = "simple",
              batch_size: int = 64, max_images: int | None = None, device: str | torch.device = "cpu",
              tokenizer: Callable | None = None) -> ZeroShotResult:
    """Load the CLIP from ``pretrained`` and classify CIFAR-10 (``cifar10``) or an ImageFolder
    (``image_folder_dir``). ``tokenizer`` defaults to open_clip's for ``name``."""
    import open_clip

    import lmm.models.vision  # noqa: F401  (registers the project's open_clip configs, for the tokenizer)

    if (cifar10 is None) == (image_folder_dir is None):
        raise ValueError("give exactly one of a CIFAR-10 directory and an ImageFolder directory")
    templates_named(templates)  # a bad name fails before the model is built
    log.info("building %s from %s", name, pretrained)
    model, preprocess = load_clip(name, pretrained, device)
    if cifar10 is not None:
        images, labels, classes = load_cifar10(cifar10, split)
        dataset, what = ArrayImages(images, labels, preprocess), f"CIFAR-10 {split} ({cifar10})"
    else:
        dataset, classes = image_folder(image_folder_dir, preprocess)
        what = f"ImageFolder {image_folder_dir}"
    log.info("%s: %d images, %d classes", what, len(dataset), len(classes))
    tokenizer = tokenizer or open_clip.get_tokenizer(name)
    return classify(model, tokenizer, dataset, classes, templates, batch_size, max_images, device,
                    describe={"model": name, "pretrained": str(pretrained), "dataset": what})

