"""Small real webdataset shards for the data-pipeline tests."""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from data_pipeline.manifest import write_manifest


def jpeg(colour="red", size=16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG")
    return buf.getvalue()


def captions(key: str) -> dict:
    return {"raw": f"raw {key}", "synthetic": f"synthetic {key}", "capsfusion": f"fused {key}",
            "url": f"http://x/{key}", "width": 16, "height": 16}


def write_shards(folder: Path, sizes: list[int], prefix="s") -> Path:
    """Shards of ``sizes`` samples (keys ``<prefix><shard>_<i>``) and their manifest; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    image, entries = jpeg(), []
    for shard, size in enumerate(sizes):
        path = folder / f"{prefix}{shard:03d}.tar"
        with wds.TarWriter(str(path), encoder=False) as sink:
            for i in range(size):
                key = f"{prefix}{shard:03d}_{i:04d}"
                sink.write({"__key__": key, "jpg": image, "json": json.dumps(captions(key)).encode()})
        entries.append({"path": path.name, "num_samples": size, "bytes": path.stat().st_size})
    write_manifest(folder / "manifest.json", entries)
    return folder / "manifest.json"


def to_tensor(image):
    return torch.zeros(3, 8, 8)
