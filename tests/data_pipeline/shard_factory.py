"""Small real webdataset shards for the data-pipeline tests."""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from data_pipeline.manifest import write_manifest


COLOURS = ("red", "orange", "teal", "navy", "pink")


def jpeg(colour="red", size=16) -> bytes:
    """A JPEG with a colour gradient (so resizing and cropping change its pixels)."""
    image = Image.new("RGB", (size, size), colour)
    for x in range(size):
        for y in range(0, size, 3):
            image.putpixel((x, y), (x * 255 // size, y * 255 // size, 128))
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    return buf.getvalue()


def captions(key: str) -> dict:
    return {"raw": f"raw {key}", "synthetic": f"synthetic {key}", "capsfusion": f"fused {key}",
            "url": f"http://x/{key}", "width": 16, "height": 16}


def write_shards(folder: Path, sizes: list[int], prefix="s") -> Path:
    """Shards of ``sizes`` samples (keys ``<prefix><shard>_<i>``) and their manifest; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    images, entries = [jpeg(colour, 20) for colour in COLOURS], []
    for shard, size in enumerate(sizes):
        path = folder / f"{prefix}{shard:03d}.tar"
        with wds.TarWriter(str(path), encoder=False) as sink:
            for i in range(size):
                key = f"{prefix}{shard:03d}_{i:04d}"
                sink.write({"__key__": key, "jpg": images[i % len(images)], "json": json.dumps(captions(key)).encode()})
        entries.append({"path": path.name, "num_samples": size, "bytes": path.stat().st_size})
    write_manifest(folder / "manifest.json", entries)
    return folder / "manifest.json"


def to_tensor(image):
    return torch.zeros(3, 8, 8)
