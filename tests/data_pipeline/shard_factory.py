"""Small real webdataset shards for the data-pipeline tests."""
from __future__ import annotations

import io
import json
import struct
import zlib
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


def png16(value: int, channels: int = 1, size: int = 4) -> bytes:
    """A 16-bit PNG (grey, RGB or RGBA by ``channels``) filled with ``value``, written by hand: PIL cannot write
    16-bit colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" + struct.pack(">H", value) * channels * size  # filter byte 0, then big-endian samples
    header = struct.pack(">IIBBBBB", size, size, 16, {1: 0, 3: 2, 4: 6}[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size))
            + chunk(b"IEND", b""))


def captions(key: str) -> dict:
    return {"raw": f"raw {key}", "synthetic": f"synthetic {key}", "capsfusion": f"fused {key}",
            "url": f"http://x/{key}", "width": 16, "height": 16}


def write_shards(folder: Path, sizes: list[int], prefix="s", fields=captions, **manifest_keys) -> Path:
    """Shards of ``sizes`` samples (keys ``<prefix><shard>_<i>``, json ``fields(key)``) and their manifest (with
    ``manifest_keys``); returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    images, entries = [jpeg(colour, 20) for colour in COLOURS], []
    for shard, size in enumerate(sizes):
        path = folder / f"{prefix}{shard:03d}.tar"
        with wds.TarWriter(str(path), encoder=False) as sink:
            for i in range(size):
                key = f"{prefix}{shard:03d}_{i:04d}"
                sink.write({"__key__": key, "jpg": images[i % len(images)], "json": json.dumps(fields(key)).encode()})
        entries.append({"path": path.name, "num_samples": size, "bytes": path.stat().st_size})
    write_manifest(folder / "manifest.json", entries, **manifest_keys)
    return folder / "manifest.json"


def to_tensor(image):
    return torch.zeros(3, 8, 8)
