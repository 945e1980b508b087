"""Read a range of samples from one tar shard, jumping over the samples before it without reading their data.

Shards open through webdataset's URL opener (``webdataset.gopen``): local paths, ``pipe:`` commands (object
stores through their CLIs) and the URL schemes it knows. A seekable (local) shard skips samples by reading tar
headers only; a stream (``pipe:``) has to read the skipped bytes, but never decodes them.

A corrupt, truncated or missing shard never raises: every sample of the range that could not be read is
returned as ``LOST`` (skip reason ``tar_error``), so a range always yields exactly the planned number of items.
"""
from __future__ import annotations

from typing import Iterator

import webdataset as wds

from data_pipeline.manifest import Piece
from data_pipeline.shard_format import split_name
from data_pipeline.tar_members import Member, iter_members

LOST = None  # placeholder for a planned sample that could not be read


def _open(url: str):
    stream = wds.gopen(url, "rb")
    seekable = getattr(stream, "seekable", lambda: False)()
    return stream, iter_members(stream, seekable)


def _close(stream) -> None:
    try:
        stream.close()
    except Exception:  # a pipe closed early exits with SIGPIPE; its status does not matter here
        pass


def _samples_from(members: Iterator[Member], start: int) -> Iterator[dict]:
    """Samples from the ``start``-th on; members of earlier samples are passed over unread."""
    index, current, key = -1, None, None
    for member in members:
        parts = split_name(member.name)
        if parts is None:
            continue
        if parts[0] != key:
            if current is not None:
                yield current
            key, index = parts[0], index + 1
            current = {"__key__": key} if index >= start else None
        if current is not None:
            current[parts[1]] = member.read()
    if current is not None:
        yield current


def read_piece(piece: Piece) -> Iterator[dict | None]:
    """Exactly ``piece.stop - piece.start`` items: sample dicts (member bytes by extension) or LOST."""
    wanted = piece.stop - piece.start
    produced = 0
    stream = None
    try:
        stream, members = _open(piece.url)
        if wanted > 0:
            for sample in _samples_from(members, piece.start):
                produced += 1
                yield sample
                if produced == wanted:
                    break
    except Exception:  # corrupt or truncated tar, missing file, failed pipe: the rest of the piece is lost
        pass
    finally:
        if stream is not None:
            _close(stream)
    for _ in range(wanted - produced):
        yield LOST


def read_pieces(pieces: list[Piece]) -> Iterator[dict | None]:
    for piece in pieces:
        yield from read_piece(piece)


def count_samples(url: str) -> int:
    """Samples in a shard, from its tar headers (no member data is read from a local shard)."""
    stream, members = _open(url)
    try:
        keys, last = 0, None
        for member in members:
            parts = split_name(member.name)
            if parts is not None and parts[0] != last:
                keys, last = keys + 1, parts[0]
        return keys
    finally:
        _close(stream)
