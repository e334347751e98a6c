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

import contextlib
import io
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR64 = struct.Struct("<4sLQL")
_LIMIT = 0xFFFFFFFF
_UNIX = 3
_MODE = 0o600 << 16  # as `zipfile.writestr` sets it
_CHUNK = 16 << 20


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
                                  _LIMIT, _LIMIT, len(encoded), len(extra)) + encoded + extra)
        start = self._f.tell()
        window = _Window(self._f, start)
        yield window
        size = window.size
        crc = 0
        self._f.seek(start)
        remaining = size
        while remaining:
            block = self._f.read(min(_CHUNK, remaining))
            if not block:
                raise OSError("the archive member was cut short while it was written")
            crc = zlib.crc32(block, crc)
            remaining -= len(block)
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
            stored_size = _LIMIT if size >= _LIMIT else size
            self._f.write(_CENTRAL.pack(
                b"PK\x01\x02", version | (_UNIX << 8), version, 0, 0, self._time, self._date, crc,
                stored_size, stored_size, len(name), len(extra), 0, 0, 0, _MODE,
                min(offset, _LIMIT),
            ) + name + extra)
        end = self._f.tell()
        count, directory = len(self._members), end - start
        if start >= _LIMIT or directory >= _LIMIT or count >= 0xFFFF:
            self._f.write(_END64.pack(b"PK\x06\x06", _END64.size - 12, 45, 45, 0, 0,
                                      count, count, directory, start))
            self._f.write(_LOCATOR64.pack(b"PK\x06\x07", 0, end, 1))
        self._f.write(_END.pack(b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                                min(directory, _LIMIT), min(start, _LIMIT), 0))


class _Window(io.RawIOBase):
    """The bytes from `start` to the end of a file open for writing, as a file of its own."""

    def __init__(self, f: BinaryIO, start: int) -> None:
        self._f, self._start, self._pos, self.size = f, start, 0, 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def write(self, data: Any) -> int:
        self._f.seek(self._start + self._pos)
        n = self._f.write(data)
        self._pos += n
        self.size = max(self.size, self._pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
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
