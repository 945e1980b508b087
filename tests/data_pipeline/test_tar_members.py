"""The header-speed tar parser reads what ``tarfile`` reads, in every format webdataset / img2dataset / GNU tar
write, and fails (rather than inventing members) on corrupt or truncated archives."""
import io
import os
import subprocess
import tarfile

import pytest
import webdataset as wds

from data_pipeline.tar_members import TarError, iter_members

USTAR_NAMES = ["a.jpg", "dir/b.json", "deep/" * 30 + "prefix-split.jpg", "empty.txt"]  # ustar fits these
LONG_NAMES = ["x" * 99 + ".txt", "ünïcode-ключ.json", "p/" + "y" * 120 + "/z.png"]  # GNU / pax only


def _archive(fmt: int) -> bytes:
    names = USTAR_NAMES + ([] if fmt == tarfile.USTAR_FORMAT else LONG_NAMES)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = os.urandom(i * 700) if name != "empty.txt" else b""
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000 + i
            tar.addfile(info, io.BytesIO(data))
            if i == 2:
                folder = tarfile.TarInfo("a-folder")
                folder.type = tarfile.DIRTYPE
                tar.addfile(folder)
                link = tarfile.TarInfo("a-link")
                link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
                tar.addfile(link)
    return buf.getvalue()


def _with_tarfile(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def _ours(data: bytes, seekable: bool) -> list[tuple[str, bytes]]:
    return [(m.name, m.read()) for m in iter_members(io.BytesIO(data), seekable)]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("seekable", [True, False])
def test_reads_the_members_tarfile_reads(fmt, seekable):
    data = _archive(fmt)
    expected = _with_tarfile(data)
    assert len(expected) >= 4 and _ours(data, seekable) == expected


def test_webdataset_and_gnu_tar_output(tmp_path):
    path = tmp_path / "shard.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(5):
            sink.write({"__key__": f"s{i:04d}", "jpg": os.urandom(1000 + i), "json": b'{"raw": "x"}'})
    expected = _with_tarfile(path.read_bytes())
    assert [n for n, _ in expected][:2] == ["s0000.jpg", "s0000.json"]
    assert _ours(path.read_bytes(), True) == expected
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    for name in ("k1.jpg", "k1.txt", "sub/" + "n" * 150 + ".json"):
        (folder / name).write_bytes(os.urandom(300))
    made = tmp_path / "gnu.tar"
    subprocess.run(["tar", "-cf", str(made), "-C", str(folder), "."], check=True)
    assert _ours(made.read_bytes(), False) == _with_tarfile(made.read_bytes())


def test_unread_members_are_skipped_and_read_ones_stay_aligned():
    data = _archive(tarfile.PAX_FORMAT)
    every_other = [(m.name, m.read() if i % 2 else None) for i, m in enumerate(iter_members(io.BytesIO(data)))]
    expected = _with_tarfile(data)
    assert [n for n, _ in every_other] == [n for n, _ in expected]
    assert [d for i, (_, d) in enumerate(every_other) if i % 2] == [d for i, (_, d) in enumerate(expected) if i % 2]


def test_corrupt_and_truncated_archives_raise():
    data = _archive(tarfile.PAX_FORMAT)
    with pytest.raises(TarError, match="checksum|number"):
        _ours(b"\x13\x37" * 5000, False)
    flipped = bytearray(data)
    flipped[len(data) // 2 - len(data) // 2 % 512 + 10] ^= 0xFF  # inside some header or data block
    try:
        result = _ours(bytes(flipped), False)
        assert result != _with_tarfile(data)  # a flipped data byte changes that member's bytes
    except TarError:
        pass  # a flipped header byte fails its checksum
    with pytest.raises(TarError, match="end of data|truncated"):
        _ours(data[: len(data) // 2 + 100], False)
    assert _ours(b"", False) == []
