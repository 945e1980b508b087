"""Deterministic "toy world" for the CPU demo of the CapsFusion reproduction.

Each image shows 1-3 coloured shapes on a named *scene* background (e.g. "at lake
como" = blue water with wave stripes).  The scene name stands for the real-world
knowledge that web alt-text carries and synthetic captions drop.  Every train image
gets three captions in the paper's styles:

* ``raw``        -- specific but noisy web alt-text (scrambled, partial, junk tokens);
* ``synthetic``  -- fluent but generic BLIP-style (no scene names, no counts);
* ``capsfusion`` -- fluent and specific ("two large red circles at lake como").

Held-out eval images get five varied human-style references (COCO Karpathy format).
A caption-style fine-tuning set (``style/dataset_style.json``, Karpathy format, train and
test splits) gets five references in a terse inventory style that none of the training
captions use ("lake como - objects 2 red circles, 1 small blue star"): a model
pretrained on capsfusion captions scores low against them until fine-tuned on the set.
Every sample is drawn from its own RNG seeded by ``(seed, split, index)``, so output
is reproducible and shards can be rendered in parallel.  Tar members use a fixed
mtime, so shard bytes (and their sha256) are identical across runs as well.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import multiprocessing as mp
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data_pipeline.manifest import MANIFEST_FILE, write_manifest
from data_pipeline.shard_format import CAPTION_FIELDS, write_shard

FORMAT_VERSION = 3  # 2: the style set; 3: its words are the train captions' words
NUM_REFS = 5
JPEG_QUALITY = 90
SUPERSAMPLE = 2
BG_VARIANTS = 8  # phase-shifted copies of each scene texture (cached per process)
KARPATHY_CHUNK = 32  # eval / style images rendered per parallel job

# --------------------------------------------------------------------------- vocab

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 135, 0),
    "yellow": (250, 225, 20),
    "green": (30, 170, 50),
    "blue": (35, 75, 235),
    "purple": (145, 45, 195),
    "pink": (255, 120, 200),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond")
SIZES = {"large": 0.15, "small": 0.09}  # radius as a fraction of the image size
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
PLURAL_EXCEPTIONS = {"rhombus": "rhombuses"}


@dataclass(frozen=True)
class SceneInfo:
    """A named background: knowledge words, rendering style and generic words."""

    phrase: str  # as used in fluent captions, e.g. "at lake como"
    name: str  # proper name as a noun phrase, e.g. "lake como", "the alps"
    ref_phrases: tuple[str, ...]  # human paraphrases of ``phrase``
    raw_tags: tuple[str, ...]  # alt-text variants, e.g. "#lakecomo", "italy"
    generic: tuple[str, ...]  # what a BLIP-like captioner would say about it
    excluded_colours: tuple[str, ...]  # object colours too close to the background


SCENES: dict[str, SceneInfo] = {
    "como": SceneInfo(
        "at lake como", "lake como",
        ("at lake como", "by lake como", "on the water at lake como"),
        ("#lakecomo", "como italy", "lake como italy"),
        ("blue",), ("blue", "purple")),
    "sahara": SceneInfo(
        "in the sahara", "the sahara",
        ("in the sahara", "in the sahara desert", "on the sand of the sahara"),
        ("#sahara", "sahara desert", "morocco sahara"),
        ("beige", "sandy"), ("yellow", "orange")),
    "alps": SceneInfo(
        "in the alps", "the alps",
        ("in the alps", "in the snowy alps", "high up in the alps"),
        ("#alps", "swiss alps", "alps switzerland"),
        ("white",), ("white",)),
    "park": SceneInfo(
        "in central park", "central park",
        ("in central park", "on the lawn of central park", "on the grass in central park"),
        ("#centralpark", "central park nyc", "new york central park"),
        ("green", "grass"), ("green",)),
    "tokyo": SceneInfo(
        "in tokyo at night", "tokyo",
        ("in tokyo at night", "in tokyo after dark", "on a tokyo night"),
        ("#tokyo", "tokyo night", "tokyo japan"),
        ("black", "dark"), ("blue", "purple")),
    "paris": SceneInfo(
        "on a paris street", "paris",
        ("on a paris street", "on a street in paris", "on the cobblestones of paris"),
        ("#paris", "paris france", "paris street"),
        ("gray", "stone"), ()),
}
SCENE_WORDS = frozenset(w for s in SCENES.values() for w in s.name.split()) - {"the"}

# Human-reference synonyms (references share vocabulary with capsfusion, not equal).
REF_SIZES = {"large": ("large", "big", "large"), "small": ("small", "little", "tiny")}
REF_SHAPES = {"circle": ("circle", "circle", "dot"), "square": ("square", "square", "block"),
              "diamond": ("diamond", "diamond", "rhombus")}
POSITIONS = {
    "left": ("on the left", "to the left", "on the left side"),
    "right": ("on the right", "to the right", "on the right side"),
    "top": ("near the top", "at the top", "in the upper part"),
    "bottom": ("near the bottom", "at the bottom", "in the lower part"),
    "center": ("in the middle", "in the center", "in the middle"),
}
REF_JOINERS = (" and ", " next to ", " beside ", " along with ", " and ")
REF_TEMPLATES = (
    "{objs} {scene}",
    "there {be} {objs} {scene}",
    "a photo of {objs} {scene}",
    "{scene} there {be} {objs}",
    "an image showing {objs} {scene}",
    "{objs} with {name} in the background",
)

SYNTH_GENERIC = ("shape", "object", "design", "logo", "sign")
SYNTH_TEMPLATES_ONE = (
    "a picture of a {c} {g} on a {bg} background",
    "a {c} {shape} on a {bg} background",
    "a close up of a {c} {g} on a {bg} surface",
    "a {c} {g} on a {bg} wall",
)
SYNTH_TEMPLATES_MANY = (
    "a couple of {gs} on a {bg} wall",
    "a {c} and {c2} {g} on a {bg} background",
    "an image of some colorful {gs}",
    "a group of {gs} on a {bg} background",
)

# Inventory-style references of the style split: fixed words, digit counts, canonical shape names, and only words
# the train captions use (the demo's tokenizer is trained on those: ":" or "." would be unknown pieces, and a new
# word such as "scene" splits into four pieces a 2-layer decoder with frozen weights learns poorly in 100 steps).
STYLE_SPLIT = "style"
STYLE_HEADERS = ("objects", "shapes", "designs")
STYLE_WORDS = frozenset(STYLE_HEADERS)

RAW_JUNK = ("stock photo", "free download", "hd wallpaper", "royalty free", "vector",
            "clipart", "png", "jpg", "4k", "high resolution", "best", "#art", "#design",
            "image", "pic", "background")
RAW_FILE_PREFIXES = ("img", "dsc", "photo", "image", "pic")
RAW_FILE_NUMBERS = ("0042", "0417", "1138", "2931", "3306", "4870", "5521", "6012",
                    "7734", "9180")
RAW_SEPARATORS = (" ", " ", " | ", " - ", ", ")

# -------------------------------------------------------------------------- schema


@dataclass
class DemoWorldSpec:
    """Size and seed of the generated demo world."""

    num_train: int = 4096
    num_eval: int = 500  # enough that 95% bootstrap intervals of CIDEr separate the caption sources
    samples_per_shard: int = 256
    image_size: int = 112
    seed: int = 0
    num_style_train: int = 512  # caption-style fine-tuning set: Karpathy split "train" ...
    num_style_test: int = 100  # ... and "test"


@dataclass(frozen=True)
class Group:
    """Identical objects described together ("two red circles")."""

    shape: str
    colour: str
    size: str
    count: int
    position: str | None  # only for single objects in a 1-2 object layout


@dataclass
class WorldItem:
    """One sampled image: scene graph, three-style captions and references (human-style; inventory-style for
    the style split).

    Train shards store only ``captions``; the eval and style sets store only ``references``.
    """

    scene: str
    groups: list[Group]
    objects: list[tuple[str, str, str, float, float]]  # shape, colour, size, cx, cy (0-1)
    captions: dict[str, str] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------ sampling

PARTITIONS = {1: ((1,),), 2: ((2,), (1, 1)), 3: ((3,), (2, 1), (1, 1, 1))}
SLOTS = {"left": (0.2, 0.5), "right": (0.8, 0.5), "top": (0.5, 0.2),
         "bottom": (0.5, 0.8), "center": (0.5, 0.5)}
ROWS = {2: (("left", "right"), ("top", "bottom")),
        3: (("left", "center", "right"), ("top", "center", "bottom"))}


def _item_rng(seed: int, split: str, index: int) -> random.Random:
    """Independent, reproducible RNG per sample (str seeds hash via sha512)."""
    return random.Random(f"demo-world/{seed}/{split}/{index}")


def _sample_layout(rng: random.Random, n: int) -> list[str]:
    """Slot names for ``n`` objects, ordered left-to-right / top-to-bottom."""
    if n == 1:
        return [rng.choice(list(SLOTS))]
    return list(rng.choice(ROWS[n]))


def _sample_groups(rng: random.Random, scene: str, n: int) -> list[tuple[str, str, str, int]]:
    """Distinct (shape, colour, size, count) groups whose counts sum to ``n``."""
    colours = [c for c in COLOURS if c not in SCENES[scene].excluded_colours]
    counts = rng.choice(PARTITIONS[n])
    pairs = rng.sample([(s, c) for s in SHAPES for c in colours], len(counts))
    return [(s, c, rng.choice(list(SIZES)), k) for (s, c), k in zip(pairs, counts)]


def _place(rng: random.Random, slot: str, size: str) -> tuple[float, float]:
    """Jittered centre for a slot, kept inside the image and off the row axis."""
    x, y = SLOTS[slot]
    r, j = SIZES[size], rng.uniform(-0.06, 0.06)
    if slot in ("left", "right"):
        y += j
    elif slot in ("top", "bottom"):
        x += j
    return (min(max(x, r + 0.02), 0.98 - r), min(max(y, r + 0.02), 0.98 - r))


def sample_item(seed: int, split: str, index: int) -> WorldItem:
    """Sample the scene graph, the three captions and the references (by the split's style) of one image."""
    rng = _item_rng(seed, split, index)
    scene = rng.choice(list(SCENES))
    n = rng.choice((1, 2, 3))
    specs = _sample_groups(rng, scene, n)
    members = [i for i, (*_, k) in enumerate(specs) for _ in range(k)]
    rng.shuffle(members)
    slots = _sample_layout(rng, n)
    objects, first_slot = [], {}
    for gi, slot in zip(members, slots):
        shape, colour, size, _ = specs[gi]
        objects.append((shape, colour, size, *_place(rng, slot, size)))
        first_slot.setdefault(gi, slot)
    describe_pos = n <= 2
    groups = [Group(s, c, z, k, first_slot[i] if (k == 1 and describe_pos) else None)
              for i, (s, c, z, k) in sorted(enumerate(specs), key=lambda t: members.index(t[0]))]
    item = WorldItem(scene, groups, objects)
    item.captions = {"raw": raw_caption(item, rng), "synthetic": synthetic_caption(item, rng),
                     "capsfusion": capsfusion_caption(item)}
    item.references = (style_references if split == STYLE_SPLIT else reference_captions)(item, rng)
    return item


# ------------------------------------------------------------------------ captions


def _plural(word: str) -> str:
    return PLURAL_EXCEPTIONS.get(word, word + "s")


def _with_article(words: list[str]) -> str:
    """Prefix "a"/"an" to a noun phrase."""
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _noun_phrase(g: Group, size: str | None, shape: str, position: str | None) -> str:
    """E.g. "two large red circles" / "a small blue star on the left"."""
    words = ([size] if size else []) + [g.colour, shape if g.count == 1 else _plural(shape)]
    phrase = _with_article(words) if g.count == 1 else " ".join([COUNT_WORDS[g.count], *words])
    return f"{phrase} {position}" if position else phrase


def _join(parts: list[str], rng: random.Random | None = None) -> str:
    """Join noun phrases with "and" (no commas), or random joiners if ``rng`` is given."""
    out = parts[0]
    for p in parts[1:]:
        out += (rng.choice(REF_JOINERS) if rng else " and ") + p
    return out


def capsfusion_caption(item: WorldItem) -> str:
    """Fluent and specific: every object, count, colour, size and the scene name."""
    phrases = [_noun_phrase(g, g.size, g.shape, g.position and POSITIONS[g.position][0])
               for g in item.groups]
    return f"{_join(phrases)} {SCENES[item.scene].phrase}"


def synthetic_caption(item: WorldItem, rng: random.Random) -> str:
    """Fluent but generic BLIP-style: no scene names, no counts, often no exact shape."""
    scene, g0 = SCENES[item.scene], item.groups[0]
    colours = list(dict.fromkeys(g.colour for g in item.groups))
    many = len(item.objects) > 1 and rng.random() < 0.7
    template = rng.choice(SYNTH_TEMPLATES_MANY if many else SYNTH_TEMPLATES_ONE)
    if "{c2}" in template and len(colours) < 2:
        template = SYNTH_TEMPLATES_ONE[0]
    generic = rng.choice(SYNTH_GENERIC)
    return template.format(c=g0.colour, c2=colours[-1], g=generic, gs=_plural(generic),
                           shape=g0.shape, bg=rng.choice(scene.generic))


def _raw_group_tokens(g: Group, rng: random.Random) -> list[str]:
    """Keyword soup for a group: maybe-digit count, colour, shape, maybe size."""
    count = str(g.count) if rng.random() < 0.5 else COUNT_WORDS[g.count]
    words = [g.colour, g.shape if rng.random() < 0.5 else _plural(g.shape)]
    if g.count > 1 or rng.random() < 0.3:
        words.insert(0, count if g.count > 1 else "1")
    if rng.random() < 0.4:
        words.append(g.size)
    if g.position and rng.random() < 0.3:
        words.append(g.position)
    if rng.random() < 0.4:
        rng.shuffle(words)
    return words


def raw_caption(item: WorldItem, rng: random.Random) -> str:
    """Noisy web alt-text: specific details, scrambled, partial, with junk tokens."""
    scene = SCENES[item.scene]
    groups = item.groups
    if len(groups) > 1 and rng.random() < 0.35:
        groups = rng.sample(groups, rng.randint(1, len(groups) - 1))
    chunks = [" ".join(_raw_group_tokens(g, rng)) for g in groups]
    if rng.random() < 0.85:
        chunks.append(rng.choice((scene.name, *scene.raw_tags)))
    junk = [rng.choice(RAW_JUNK) for _ in range(rng.randint(0, 2))]
    junk.append(f"{rng.choice(RAW_FILE_PREFIXES)}_{rng.choice(RAW_FILE_NUMBERS)}")
    chunks += junk
    rng.shuffle(chunks)
    return rng.choice(RAW_SEPARATORS).join(chunks)


def _reference(item: WorldItem, rng: random.Random) -> str:
    """One COCO-annotator-style reference: specific, grammatical, paraphrased."""
    scene = SCENES[item.scene]
    keep_pos = rng.random() < 0.7
    phrases = [_noun_phrase(
        g,
        None if rng.random() < 0.15 else rng.choice(REF_SIZES[g.size]),
        rng.choice(REF_SHAPES.get(g.shape, (g.shape,))),
        rng.choice(POSITIONS[g.position]) if (g.position and keep_pos) else None,
    ) for g in item.groups]
    if rng.random() < 0.3:
        rng.shuffle(phrases)
    be = "is" if len(item.objects) == 1 else "are"
    objs = _join(phrases, rng)
    if " next to " in objs or " beside " in objs or " along with " in objs:
        be = "is" if item.groups[0].count == 1 else "are"
    template = rng.choice(REF_TEMPLATES)
    return template.format(objs=objs, scene=rng.choice(scene.ref_phrases),
                           name=scene.name, be=be)


def _distinct(draw, n: int) -> list[str]:
    """``n`` distinct results of ``draw()``, in the order drawn."""
    refs: list[str] = []
    for _ in range(50 * n):
        ref = draw()
        if ref not in refs:
            refs.append(ref)
        if len(refs) == n:
            return refs
    raise RuntimeError("could not draw distinct references")  # pragma: no cover


def reference_captions(item: WorldItem, rng: random.Random, n: int = NUM_REFS) -> list[str]:
    """``n`` distinct human-style references for an item."""
    return _distinct(lambda: _reference(item, rng), n)


def _style_reference(item: WorldItem, rng: random.Random) -> str:
    """One inventory-style reference: "<scene name> - <header> <n> [size] <colour> <shape>, ..."; the header,
    the order of the groups and whether sizes are given vary."""
    sized = rng.random() < 0.5
    groups = [" ".join([str(g.count), *([g.size] if sized else []), g.colour,
                        g.shape if g.count == 1 else _plural(g.shape)]) for g in item.groups]
    rng.shuffle(groups)
    scene = SCENES[item.scene].name.removeprefix("the ")
    return f"{scene} - {rng.choice(STYLE_HEADERS)} {', '.join(groups)}"


def style_references(item: WorldItem, rng: random.Random, n: int = NUM_REFS) -> list[str]:
    """``n`` distinct inventory-style references for an item (the style split's)."""
    return _distinct(lambda: _style_reference(item, rng), n)


# ----------------------------------------------------------------------- rendering


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape centred at (cx, cy) with radius r."""
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
                 cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5))
                for k in range(10)]
    if shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        xs, ys = 16 * np.sin(ts) ** 3, -(13 * np.cos(ts) - 5 * np.cos(2 * ts)
                                         - 2 * np.cos(3 * ts) - np.cos(4 * ts))
        return [(cx + r * x / 17, cy + r * (y + 2) / 17) for x, y in zip(xs, ys)]
    raise ValueError(shape)


def _draw_object(draw: ImageDraw.ImageDraw, obj, size_px: int) -> None:
    shape, colour, size, fx, fy = obj
    cx, cy, r = fx * size_px, fy * size_px, SIZES[size] * size_px
    fill = COLOURS[colour]
    outline = tuple(int(v * 0.45) for v in fill)
    width = max(1, size_px // 90)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill, outline=outline, width=width)


def _gradient(n: int, top, bottom) -> np.ndarray:
    """Vertical colour gradient as an (n, n, 3) float array."""
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    return np.broadcast_to((1 - t) * np.array(top) + t * np.array(bottom), (n, n, 3)).copy()


@functools.cache
def _background(scene: str, n: int, variant: int) -> Image.Image:
    """Scene texture (n x n RGB); patterns scale with n, ``variant`` shifts their phase."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    ph = variant / BG_VARIANTS
    if scene == "como":  # blue water with light wave stripes
        img = _gradient(n, (120, 180, 240), (15, 55, 140))
        waves = np.sin(2 * math.pi * (yy * 9 + 0.15 * np.sin(2 * math.pi * (xx * 2 + ph)))) > 0.8
        img[waves] = img[waves] * 0.5 + 120
    elif scene == "sahara":  # sand with brown dots
        img = _gradient(n, (238, 210, 150), (205, 165, 100))
        dots = (np.hypot((xx * 12 + ph) % 1 - 0.5, (yy * 12 + 0.5 * (np.floor(xx * 12 + ph) % 2))
                         % 1 - 0.5) < 0.16)
        img[dots] = (150, 105, 60)
    elif scene == "alps":  # snowy pale gradient with diagonal hatching
        img = _gradient(n, (245, 248, 252), (175, 185, 205))
        img[((xx + yy) * 10 + ph) % 1 < 0.18] -= 40
    elif scene == "park":  # mowed lawn: alternating green bands + grass blades
        img = np.empty((n, n, 3))
        img[:] = (95, 160, 65)
        img[((xx * 4 + ph) % 1) < 0.5] = (125, 190, 85)
        img[((xx * 40) % 1 < 0.15) & ((yy * 6 + xx * 3) % 1 < 0.5)] -= 25
    elif scene == "tokyo":  # night sky with lit windows
        img = _gradient(n, (10, 12, 35), (35, 30, 70))
        lit = ((xx * 14) % 1 < 0.35) & ((yy * 14 + ph) % 1 < 0.35)
        img[lit & (((xx * 14).astype(int) + (yy * 14).astype(int)) % 3 != 0)] = (255, 220, 90)
    elif scene == "paris":  # grey cobblestone brick pattern
        img = np.empty((n, n, 3))
        img[:] = (165, 160, 152)
        row = np.floor(yy * 8 + ph)
        mortar = ((yy * 8 + ph) % 1 < 0.12) | (((xx * 6 + 0.5 * (row % 2)) % 1) < 0.08)
        img[mortar] = (95, 90, 85)
    else:
        raise ValueError(scene)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _warm_backgrounds(image_size: int) -> None:
    """Draw every scene texture once, before forking: workers share them instead of each drawing its own."""
    for scene in SCENES:
        for variant in range(BG_VARIANTS):
            _background(scene, image_size * SUPERSAMPLE, variant)


def render_item(item: WorldItem, image_size: int, seed: int, split: str, index: int) -> Image.Image:
    """Render an item (drawn at 2x, then box-downsampled for anti-aliasing)."""
    rng = random.Random(f"demo-world-pixels/{seed}/{split}/{index}")
    big = image_size * SUPERSAMPLE
    img = _background(item.scene, big, rng.randrange(BG_VARIANTS)).copy()
    draw = ImageDraw.Draw(img)
    for obj in item.objects:
        _draw_object(draw, obj, big)
    return img.reduce(SUPERSAMPLE)


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# ------------------------------------------------------------------------- writing


def _train_sample(spec: DemoWorldSpec, index: int) -> dict:
    """A webdataset sample dict with pre-encoded jpg and json bytes."""
    key = f"train_{index:08d}"
    item = sample_item(spec.seed, "train", index)
    meta = {**item.captions, "url": f"demo://train/{key}",
            "width": spec.image_size, "height": spec.image_size}
    jpg = _jpeg_bytes(render_item(item, spec.image_size, spec.seed, "train", index))
    return {"__key__": key, "jpg": jpg, "json": json.dumps(meta, sort_keys=True).encode()}


def _write_shard(args: tuple[DemoWorldSpec, Path, int, int]) -> dict:
    """Write train samples [start, stop) to one tar shard; return its manifest entry."""
    spec, path, start, stop = args
    return write_shard(path, (_train_sample(spec, i) for i in range(start, stop)))


def _pool_map(fn, jobs: list) -> list:
    """Map over jobs with a process pool (fork where available), in order.

    Runs serially in daemonic processes (e.g. DataLoader workers), which cannot fork.
    """
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1 or mp.current_process().daemon:
        return [fn(j) for j in jobs]
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=1)


def _write_train(out: Path, spec: DemoWorldSpec) -> dict:
    import webdataset  # noqa: F401  (import once before forking shard writers)

    train = out / "train"
    train.mkdir(parents=True)
    per = spec.samples_per_shard
    jobs = [(spec, train / f"shard-{k:06d}.tar", s, min(s + per, spec.num_train))
            for k, s in enumerate(range(0, spec.num_train, per))]
    shards = _pool_map(_write_shard, jobs)
    return write_manifest(train / MANIFEST_FILE, shards, caption_fields=list(CAPTION_FIELDS),
                          num_images=spec.num_train,
                          caption_counts={f: spec.num_train for f in CAPTION_FIELDS})


def _karpathy_entry(spec: DemoWorldSpec, images: Path, source: str, index: int, split: str) -> dict:
    """Render image ``index`` of the ``source`` split into ``images``; return its Karpathy-format record."""
    item = sample_item(spec.seed, source, index)
    filename = f"demo_{source}_{index:06d}.jpg"
    (images / filename).write_bytes(
        _jpeg_bytes(render_item(item, spec.image_size, spec.seed, source, index)))
    sentids = [index * NUM_REFS + j for j in range(NUM_REFS)]
    sentences = [{"raw": ref, "tokens": ref.split(), "imgid": index, "sentid": sid}
                 for ref, sid in zip(item.references, sentids)]
    return {"filepath": "images", "filename": filename, "imgid": index, "cocoid": index + 1,
            "split": split, "sentids": sentids, "sentences": sentences}


def _karpathy_chunk(args: tuple[DemoWorldSpec, Path, str, str, int, int]) -> list[dict]:
    """Records of images [start, stop) of one source split (see ``_karpathy_entry``)."""
    spec, images, source, split, start, stop = args
    return [_karpathy_entry(spec, images, source, i, split) for i in range(start, stop)]


def _write_karpathy(folder: Path, file_name: str, dataset: str, spec: DemoWorldSpec, source: str,
                    splits: list[tuple[str, int]]) -> None:
    """Render the first images of the ``source`` split into ``folder/images`` (in parallel) and write their
    Karpathy file ``folder/file_name``; ``splits`` ((name, count), ...) labels consecutive runs of them."""
    images = folder / "images"
    images.mkdir(parents=True)
    jobs, begin = [], 0
    for split, count in splits:
        jobs += [(spec, images, source, split, s, min(s + KARPATHY_CHUNK, begin + count))
                 for s in range(begin, begin + count, KARPATHY_CHUNK)]
        begin += count
    entries = [entry for chunk in _pool_map(_karpathy_chunk, jobs) for entry in chunk]
    (folder / file_name).write_text(json.dumps({"images": entries, "dataset": dataset}))


def _spec_key(spec: DemoWorldSpec) -> dict:
    return {**asdict(spec), "format_version": FORMAT_VERSION}


def generate_demo_world(out_dir: str | Path, spec: DemoWorldSpec) -> dict:
    """Generate (or reuse, if ``world.json`` matches ``spec``) the demo world.

    Returns the ``world.json`` dict: spec fields, format version and counts.
    """
    out = Path(out_dir)
    world_path = out / "world.json"
    if world_path.exists():
        world = json.loads(world_path.read_text())
        if world.get("spec") == _spec_key(spec):
            return world
        world_path.unlink()
    for sub in ("train", "eval", "style"):
        shutil.rmtree(out / sub, ignore_errors=True)
    _warm_backgrounds(spec.image_size)
    manifest = _write_train(out, spec)
    _write_karpathy(out / "eval", "dataset_coco.json", "coco", spec, "eval", [("test", spec.num_eval)])
    _write_karpathy(out / "style", "dataset_style.json", "demo_style", spec, STYLE_SPLIT,
                    [("train", spec.num_style_train), ("test", spec.num_style_test)])
    num_style = spec.num_style_train + spec.num_style_test
    world = {"spec": _spec_key(spec), **asdict(spec),
             "num_shards": len(manifest["shards"]), "num_train_samples": spec.num_train,
             "num_eval_images": spec.num_eval, "num_eval_references": spec.num_eval * NUM_REFS,
             "num_style_images": num_style, "num_style_references": num_style * NUM_REFS,
             "caption_fields": list(CAPTION_FIELDS), "scenes": [s.name for s in SCENES.values()],
             "train_manifest": "train/manifest.json", "eval_karpathy": "eval/dataset_coco.json",
             "style_karpathy": "style/dataset_style.json"}
    world_path.write_text(json.dumps(world, indent=1))  # written last: completion marker
    return world


# ------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict:
    """CLI: ``python -m data_pipeline.demo_world --out DIR [...]``."""
    defaults = DemoWorldSpec()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)
    spec = DemoWorldSpec(**{k: getattr(args, k) for k in asdict(defaults)})
    world = generate_demo_world(args.out, spec)
    print(json.dumps(world, indent=1))
    return world


if __name__ == "__main__":
    main()
