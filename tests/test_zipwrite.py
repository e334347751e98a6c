"""The archive writer of the offline `freeze`: members written in place, CRC-32 from the writes."""

from __future__ import annotations

import io
import os
import zipfile
import zlib

import h5py
import numpy as np
import pytest

from kerasurgery.files import zipwrite as _zipwrite


def test_crc_arithmetic_matches_zlib():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 1000, 1 << 20, (1 << 20) + 3):
        assert _zipwrite._zeros_crc(n) == zlib.crc32(bytes(n))
    for _ in range(20):
        a, b = rng.bytes(int(rng.integers(0, 5000))), rng.bytes(int(rng.integers(0, 5000)))
        assert _zipwrite._combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_window_crc_survives_overlapping_writes_and_gaps():
    f = io.BytesIO(b"header")
    f.seek(6)
    window = _zipwrite._Window(f, 6)
    expected = bytearray()
    rng = np.random.default_rng(1)

    def put(position: int, data: bytes) -> None:
        expected.extend(bytes(max(0, position + len(data) - len(expected))))
        expected[position:position + len(data)] = data
        window.seek(position)
        window.write(data)

    put(0, b"a" * 100)
    put(100, bytes(3 << 20))  # all zeros: its CRC is computed, not hashed
    put(100 + (3 << 20), rng.bytes(2 << 20))
    put(50, b"b" * 20)
    put(200, b"c" * 10)  # inside the zero block: that block is read back
    put(len(expected), rng.bytes((1 << 20) + 5))
    put(len(expected) - 10, b"d" * 30)  # over the end of a large write
    put(len(expected) + 100, rng.bytes(1 << 20))  # after a gap never written
    assert window.size == len(expected)
    assert window.crc() == zlib.crc32(bytes(expected))


@pytest.mark.parametrize("limit", [None, 1000], ids=["small", "zip64"])
def test_archive_reads_back_with_zipfile_and_h5py(tmp_path, monkeypatch, limit):
    if limit is not None:  # every size and offset past the limit: ZIP64 records everywhere
        monkeypatch.setattr(_zipwrite, "_LIMIT", limit)
    path = tmp_path / "a.keras"
    weights = np.random.default_rng(2).normal(size=(300, 700)).astype("float32")
    with open(path, "w+b") as f:
        archive = _zipwrite.ZipWriter(f)
        archive.add("metadata.json", b'{"keras_version": "3"}')
        with archive.member("model.weights.h5") as member, h5py.File(member, "w") as h5:
            h5.create_dataset("w", data=weights)
            h5.create_dataset("z", data=np.zeros((512, 1024), "float32"))
        archive.add("config.json", b"{}" * 700)
        archive.close()
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert z.namelist() == ["metadata.json", "model.weights.h5", "config.json"]
        assert z.read("config.json") == b"{}" * 700
        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as h5:
            assert np.array_equal(h5["w"][()], weights) and not h5["z"][()].any()
    assert os.path.getsize(path) > weights.nbytes


def test_unwritten_regions_read_and_hash_as_zeros(tmp_path):
    with open(tmp_path / "f", "w+b") as f:
        window = _zipwrite._Window(f, 0)
        window.write(b"x" * 10)
        assert not window.unwritten(5, 2 << 20)  # overlaps the write: zeros must be written
        assert window.unwritten(10, 2 << 20)  # left as a hole
        window.seek(10 + (2 << 20))
        window.write(b"y" * 5)
        expected = b"x" * 10 + bytes(2 << 20) + b"y" * 5
        assert window.crc() == zlib.crc32(expected)
        f.seek(0)
        assert f.read() == expected
