"""Reading one member of a zip archive in place, as a seekable file.

Keras stores `model.weights.h5` uncompressed in a `.keras` archive, so HDF5
can read it through a window on the archive file: only the bytes it needs are
read, and nothing is copied into memory (a weights member is as large as the
model). `zipfile` offers no seekable view of a member, hence this module.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

from kerasurgery.errors import ModelFileError

_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


def open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> io.RawIOBase:
    """A seekable reader of one archive member.

    Keras stores members uncompressed; then HDF5 reads the member in place
    through a window on the archive file, so only the bytes it needs are read
    and none is copied. A compressed member (an archive re-packed by another
    tool) is inflated into memory.
    """
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return io.BytesIO(archive.read(info))
    raw = open(path, "rb")  # noqa: SIM115  (closed by the window)
    try:
        raw.seek(info.header_offset)
        header = raw.read(_ZIP_LOCAL_HEADER.size)
        fields = None
        if len(header) == _ZIP_LOCAL_HEADER.size:
            fields = _ZIP_LOCAL_HEADER.unpack(header)
        if fields is None or fields[0] != b"PK\x03\x04":
            raise ModelFileError(
                f"{path}: is a damaged zip archive (bad header of {info.filename!r})."
            )
        # `zipfile` (and so Keras) refuses a member whose local name is not
        # its directory name: the bytes here could be another member's.
        local = raw.read(fields[10])
        if local.decode("utf-8" if fields[3] & 0x800 else "cp437", "replace") != info.orig_filename:
            raise ModelFileError(
                f"{path}: is a damaged zip archive (the header of {info.filename!r} names "
                "another member)."
            )
        start = info.header_offset + _ZIP_LOCAL_HEADER.size + fields[10] + fields[11]
        if start + info.file_size > os.fstat(raw.fileno()).st_size:
            raise ModelFileError(
                f"{path}: is a truncated zip archive ({info.filename!r} is cut short)."
            )
    except BaseException:
        raw.close()
        raise
    return _Window(raw, start, info.file_size)


class FileRegion(io.RawIOBase):
    """Bytes `[start, start + size)` of an open file, as a seekable file.

    The one window the readers (a zip member read in place) and the offline
    writer (a member written in place, or checked while it is copied) share.
    """

    def __init__(self, f: Any, start: int, size: int) -> None:
        self._f, self._start, self.size, self._pos = f, start, size, 0

    def readable(self) -> bool:
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
        # Straight into the caller's buffer: no copy of a weight-sized block.
        got = self._f.readinto(memoryview(buffer).cast("B")[:n]) or 0
        self._pos += got
        return got


class _Window(FileRegion):
    """A zip member stored in place, read-only; closing it closes the file."""

    def close(self) -> None:
        self._f.close()
        super().close()
