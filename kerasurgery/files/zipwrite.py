"""Writing a `.keras` archive whose weights member HDF5 writes in place.

`zipfile` writes a member as a stream, but HDF5 seeks while it writes, so
`keras` (and `zipfile`) would have the weights written to memory or to a
temporary file first and then copied into the archive: the model's bytes are
written twice. Here the archive is laid out by hand (members stored, not
compressed, as Keras stores them): the weights member's local header is
written first with room for its ZIP64 sizes, HDF5 writes the member's data
through a window on the archive file, and the header is completed once the
size and CRC-32 are known. ZIP64 records are added where sizes or offsets
need them, so the archive may exceed 4 GiB.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import io
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from kerasurgery.files.zipwindow import FileRegion

_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR64 = struct.Struct("<4sLQL")
_LIMIT = 0xFFFFFFFF  # sizes and offsets from here on need ZIP64 records
_MARK = 0xFFFFFFFF  # "see the ZIP64 record"
_UNIX = 3
_MODE = 0o600 << 16  # as `zipfile.writestr` sets it
_CHUNK = 16 << 20
_LARGE = 1 << 20  # a write of this many bytes or more is hashed as it is written


class ZipWriter:
    """Writes members one after the other into an open, empty binary file."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._members: list[tuple[bytes, int, int, int, bool]] = []  # name, offset, size, crc, zip64
        t = time.localtime()
        self._time = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
        self._date = ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday

    def add(self, name: str, data: bytes) -> None:
        """A member written whole."""
        encoded = name.encode("ascii")
        offset = self._f.tell()
        crc = zlib.crc32(data)
        self._f.write(_LOCAL.pack(b"PK\x03\x04", 20, 0, 0, self._time, self._date, crc,
                                  len(data), len(data), len(encoded), 0) + encoded)
        self._f.write(data)
        self._members.append((encoded, offset, len(data), crc, False))

    @contextlib.contextmanager
    def member(self, name: str) -> Iterator[io.RawIOBase]:
        """A member written through a seekable window (`h5py.File(window, "w")`)."""
        encoded = name.encode("ascii")
        offset = self._f.tell()
        extra = struct.pack("<2H2Q", 1, 16, 0, 0)
        self._f.write(_LOCAL.pack(b"PK\x03\x04", 45, 0, 0, self._time, self._date, 0,
                                  _MARK, _MARK, len(encoded), len(extra)) + encoded + extra)
        start = self._f.tell()
        window = _Window(self._f, start)
        yield window
        size = window.size
        crc = window.crc()
        self._f.seek(offset + 14)
        self._f.write(struct.pack("<L", crc))
        self._f.seek(offset + _LOCAL.size + len(encoded) + 4)
        self._f.write(struct.pack("<2Q", size, size))
        self._f.seek(start + size)
        self._members.append((encoded, offset, size, crc, True))

    def close(self) -> None:
        """Writes the central directory and the end records."""
        start = self._f.tell()
        for name, offset, size, crc, _ in self._members:
            fields: list[int] = []
            if size >= _LIMIT:
                fields += [size, size]
            if offset >= _LIMIT:
                fields.append(offset)
            extra = struct.pack(f"<2H{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
            version = 45 if fields else 20
            stored_size = _MARK if size >= _LIMIT else size
            self._f.write(_CENTRAL.pack(
                b"PK\x01\x02", version | (_UNIX << 8), version, 0, 0, self._time, self._date, crc,
                stored_size, stored_size, len(name), len(extra), 0, 0, 0, _MODE,
                _MARK if offset >= _LIMIT else offset,
            ) + name + extra)
        end = self._f.tell()
        count, directory = len(self._members), end - start
        if start >= _LIMIT or directory >= _LIMIT or count >= 0xFFFF:
            self._f.write(_END64.pack(b"PK\x06\x06", _END64.size - 12, 45, 45, 0, 0,
                                      count, count, directory, start))
            self._f.write(_LOCATOR64.pack(b"PK\x06\x07", 0, end, 1))
        zip64 = start >= _LIMIT or directory >= _LIMIT
        self._f.write(_END.pack(b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                                _MARK if zip64 else directory, _MARK if zip64 else start, 0))


class _Window(FileRegion):
    """The bytes from `start` to the end of a file open for writing, as a file of its own.

    It keeps the CRC-32 of each large write (HDF5 writes a dataset's data in
    one call, once), so that `crc()` reads back only the rest: metadata, and
    any large write that a later write overlapped. An all-zero write (a
    fresh optimizer's slots) is not even hashed: the CRC of zeros is computed.
    """

    def __init__(self, f: BinaryIO, start: int) -> None:
        super().__init__(f, start, 0)
        self._large: dict[int, tuple[int, int | None]] = {}  # offset -> (length, crc; None: zeros)
        self._small: list[tuple[int, int]] = []  # (offset, length) of the other writes

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._f.seek(self._start + self._pos)
        n = self._f.write(data)
        if n >= _LARGE:
            view = memoryview(data).cast("B")[:n]
            words = np.frombuffer(view[: n - n % 8], np.uint64)
            zeros = not words.any() and not any(view[n - n % 8:])
            self._large[self._pos] = (n, None if zeros else zlib.crc32(view))
        else:
            self._small.append((self._pos, n))
        self._pos += n
        self.size = max(self.size, self._pos)
        return n

    def unwritten(self, offset: int, length: int) -> bool:
        """Whether no byte of `[offset, offset + length)` was written; if so, it is taken as zeros.

        A region never written reads as zeros (a hole in the new file), and
        its CRC-32 is computed rather than read, unless a later write lands in it.
        """
        end = offset + length
        written = [(o, n) for o, (n, _) in self._large.items()] + self._small
        if any(o < end and offset < o + n for o, n in written):
            return False
        if length >= _LARGE:
            self._large[offset] = (length, None)
        self.size = max(self.size, end)
        return True

    def crc(self) -> int:
        """The CRC-32 of the window's bytes (`zlib.crc32` of all of them)."""
        self._f.flush()
        # Large writes that a later write overlapped are read back like the rest.
        starts = sorted(self._large)
        for offset, length in self._small:
            i = bisect.bisect_right(starts, offset + length - 1) - 1
            while i >= 0 and starts[i] + self._large[starts[i]][0] > offset:
                self._large.pop(starts[i], None)
                i -= 1
        known = {offset: (length, _zeros_crc(length) if crc is None else crc)
                 for offset, (length, crc) in self._large.items()}
        crc = _region_crc(self, known)
        if crc is None:
            raise OSError("the archive member was cut short while it was written")
        return crc

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self._small.append((min(size, self.size), abs(size - self.size) + 1))
        if size < self.size:
            self._f.flush()
            self._f.truncate(self._start + size)
        elif size > self.size:
            self._f.seek(self._start + size - 1)
            self._f.write(b"\0")
        self.size = size
        return size

    def flush(self) -> None:
        self._f.flush()


class CheckedMember(FileRegion):
    """A stored (uncompressed) archive member read in place, its CRC-32 checked from the reads.

    Checking a member's CRC first (`ZipFile.testzip`) reads the whole
    member once more before HDF5 reads it; here each large read is hashed as
    it is read and `verify()` reads back only what HDF5 did not read in
    large blocks.
    """

    def __init__(self, path: Any, start: int, size: int, expected: int) -> None:
        super().__init__(open(path, "rb"), start, size)  # noqa: SIM115  (closed with the member)
        self._expected = expected
        self._read: dict[int, tuple[int, int]] = {}  # offset -> (length, crc)

    def readinto(self, buffer: Any) -> int:
        position = self._pos
        got = super().readinto(buffer)
        if got >= _LARGE and position not in self._read:
            self._read[position] = (got, zlib.crc32(memoryview(buffer).cast("B")[:got]))
        return got

    def verify(self) -> bool:
        """Whether the member's bytes have the CRC-32 the archive records for them."""
        return _region_crc(self, self._read) == self._expected

    def close(self) -> None:
        self._f.close()
        super().close()


def _region_crc(region: FileRegion, known: dict[int, tuple[int, int]]) -> int | None:
    """The CRC-32 of a region's bytes: the blocks whose CRC is `known`
    (offset -> (length, crc)) are combined in, the rest is read back; `None`
    if the file ends before the region does."""
    crc, position = 0, 0
    for offset in sorted(known):
        length, block = known[offset]
        if offset < position or offset + length > region.size:
            continue  # overlaps a block already counted: read back with the rest
        crc = _read_crc(region, crc, position, offset)
        if crc is None:
            return None
        crc, position = _combine(crc, block, length), offset + length
    return _read_crc(region, crc, position, region.size)


def _read_crc(region: FileRegion, crc: int, start: int, end: int) -> int | None:
    """`crc` continued over the region's bytes `[start, end)`, read from its file."""
    region._f.seek(region._start + start)
    remaining = end - start
    while remaining > 0:
        block = region._f.read(min(_CHUNK, remaining))
        if not block:
            return None
        crc = zlib.crc32(block, crc)
        remaining -= len(block)
    return crc


def member_start(path: Any, header_offset: int) -> int | None:
    """Where a member's data starts, from its local header; `None` if the header is not one."""
    with open(path, "rb") as f:
        f.seek(header_offset)
        header = f.read(_LOCAL.size)
    if len(header) != _LOCAL.size or header[:4] != b"PK\x03\x04":
        return None
    fields = _LOCAL.unpack(header)
    return header_offset + _LOCAL.size + fields[9] + fields[10]


# CRC-32 arithmetic (zlib's crc32_combine): appending n zero bytes to a
# message is a linear map of its CRC register, the 2**k-byte maps are
# squared from the one-bit map once, and n is applied by its binary digits.


def _times(matrix: list[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


@functools.lru_cache(maxsize=1)
def _zero_byte_powers() -> list[list[int]]:
    """`powers[k]`: the map of the CRC register for 2**k zero bytes."""
    bit = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    matrix = bit
    for _ in range(3):  # 8 bits: one byte
        matrix = [_times(matrix, row) for row in matrix]
    powers = [matrix]
    for _ in range(63):
        matrix = [_times(matrix, row) for row in matrix]
        powers.append(matrix)
    return powers


def _shift(crc: int, length: int) -> int:
    """The register after `length` more zero bytes."""
    powers = _zero_byte_powers()
    k = 0
    while length:
        if length & 1:
            crc = _times(powers[k], crc)
        length >>= 1
        k += 1
    return crc


def _combine(crc1: int, crc2: int, length2: int) -> int:
    """`zlib.crc32(a + b)` from `crc32(a)`, `crc32(b)` and `len(b)`."""
    return _shift(crc1, length2) ^ crc2


def _zeros_crc(length: int) -> int:
    """`zlib.crc32(bytes(length))`."""
    return _shift(0xFFFFFFFF, length) ^ 0xFFFFFFFF
