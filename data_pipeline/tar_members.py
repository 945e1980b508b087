"""Regular-file members of a tar stream, parsed at header speed.

The standard ``tarfile`` module builds a ``TarInfo`` (some 40 field conversions) per header; webdataset's
writers put a pax header before every member, so a two-member sample costs four of them -- about a tenth of the
time a loader worker spends per 256-px sample. This parser reads only what a shard reader needs: name, size,
type, the pax ``path`` / ``size`` overrides and GNU long names, with the same header checksum check.

Formats: ustar / POSIX (prefix field), pax (``x`` per-member and ``g`` global records), GNU (``L`` long names,
base-256 sizes), v7. Directories, links and other non-regular members are passed over. The archive ends at the
first all-zero block or at a clean end of file. A bad checksum, an unparsable field or data cut short raises
``TarError``, so the caller can count the rest of the shard as lost.

Why not ``tarfile``: through ``shard_reader`` this reads 9,500 samples/s of webdataset shards against 3,200
(``tarfile``, seekable) and 2,000 (webdataset's ``tarfile_samples``), and resumes at sample 900 of a 1,000-sample
shard in 60 ms against 195 / 520 ms; in the loader that is +10% samples/s end to end (BENCHMARKS.md, "Data
throughput", (b') vs (b)). And ``tarfile`` ends a shard silently at a corrupt header (500 of 1,000 samples, no
error), where this raises so the loss is counted and reported. ``PYTHONPATH=. .venv/bin/python
benchmarks/library_review.py --only tar`` (BENCHMARKS.md, "Library review").
"""
from __future__ import annotations

from typing import BinaryIO, Callable, Iterator

BLOCK = 512
_REGULAR = (b"0", b"\x00", b"7")  # file, old-style file, contiguous file (read as a file, like tarfile)
_PAX_MEMBER, _PAX_GLOBAL, _GNU_LONGNAME = b"x", b"g", b"L"
_USTAR_MAGIC = b"ustar\x00"  # POSIX ustar: name = prefix + "/" + name; GNU's magic is "ustar  \0"


class TarError(Exception):
    """The stream is not a readable tar from this point on (corrupt header or truncated data)."""


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """An octal header number, or GNU base-256 when the first byte's high bit is set."""
    if field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] & 0x40 else value
    digits = field.split(b"\x00", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise TarError(f"bad number field {field!r}") from None


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored == unsigned:
        return True
    high = sum(1 for b in header[:148] + header[156:] if b > 127)  # some old tars sum signed chars
    return stored == unsigned - 256 * high


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<length> <key>=<value>\\n"`` records (POSIX.1-2001)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\x00":
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarError("bad pax record") from None
        if space < 0 or length <= 0 or pos + length > len(data):
            raise TarError("bad pax record")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise TarError(f"unexpected end of data ({len(data)} of {size} bytes)")
    return data


def _skipper(stream: BinaryIO, seekable: bool) -> Callable[[int], None]:
    """Skip ``size`` bytes; raises TarError where the data is cut short (a seek past the end of the file)."""
    if seekable:
        here = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(here)

        def seek(size: int) -> None:
            if size and stream.seek(size, 1) > end:
                raise TarError(f"unexpected end of data (the file ends at byte {end})")
        return seek

    def skip(size: int) -> None:
        while size:
            size -= len(_exactly(stream, min(size, 1 << 20)))
    return skip


class Member:
    """A regular file in the archive; ``read()`` its bytes before asking the iterator for the next member, or
    they are skipped (a seek on a seekable stream, a read otherwise)."""
    __slots__ = ("name", "size", "_stream", "_read")

    def __init__(self, name: str, size: int, stream: BinaryIO):
        self.name, self.size, self._stream, self._read = name, size, stream, False

    def read(self) -> bytes:
        if self._read:
            raise TarError(f"{self.name} was already read")
        self._read = True
        return _exactly(self._stream, self.size)


def iter_members(stream: BinaryIO, seekable: bool = False) -> Iterator[Member]:
    """The regular-file members of a tar ``stream``, in archive order."""
    skip = _skipper(stream, seekable)
    global_pax: dict[str, str] = {}
    pending: dict[str, str] = {}  # overrides for the next member: pax records, GNU long name
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            if header:
                raise TarError("truncated header")
            return  # end of file without the end-of-archive blocks: accepted, as tarfile does
        if header.count(0) == BLOCK:
            return
        if not _checksum_ok(header):
            raise TarError("bad header checksum")
        size, kind = _number(header[124:136]), header[156:157]
        if kind in (_PAX_MEMBER, _PAX_GLOBAL, _GNU_LONGNAME):
            data = _exactly(stream, _padded(size))[:size]
            if kind == _GNU_LONGNAME:
                pending["path"] = _text(data)
            else:
                (pending if kind == _PAX_MEMBER else global_pax).update(_pax_records(data))
            continue
        overrides, pending = {**global_pax, **pending}, {}
        size = int(overrides.get("size", size))
        if kind not in _REGULAR:
            skip(_padded(size))
            continue
        name = overrides.get("path")
        if name is None:
            name = _text(header[:100])
            prefix = _text(header[345:500]) if header[257:263] == _USTAR_MAGIC else ""
            name = f"{prefix}/{name}" if prefix else name
        member = Member(name, size, stream)
        yield member
        skip(_padded(size) - size if member._read else _padded(size))


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK
