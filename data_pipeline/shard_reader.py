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


def _sample_members(members: Iterator[Member]) -> Iterator[tuple[int, str, str, Member]]:
    """(sample index, key, extension, member) for each member named like a sample's; a sample is a run of
    consecutive members sharing a key."""
    index, key = -1, None
    for member in members:
        parts = split_name(member.name)
        if parts is None:
            continue
        if parts[0] != key:
            key, index = parts[0], index + 1
        yield index, key, parts[1], member


def _samples_from(members: Iterator[Member], start: int) -> Iterator[dict]:
    """Samples from the ``start``-th on; members of earlier samples are passed over unread."""
    current, current_index = None, None
    for index, key, ext, member in _sample_members(members):
        if index < start:
            continue
        if index != current_index:
            if current is not None:
                yield current
            current, current_index = {"__key__": key}, index
        current[ext] = member.read()
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
        index = -1
        for index, *_ in _sample_members(members):
            pass
        return index + 1
    finally:
        _close(stream)
