"""Which kind of model file a path holds, told from its first bytes.

Kept free of TensorFlow and Keras so that `inspect` and the loader share it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from kerasurgery.errors import ModelFileError

KERAS = "keras"  # a zip archive: config.json, metadata.json, model.weights.h5
H5 = "h5"  # an HDF5 file written by Keras 3's or Keras 2's model.save

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock: the signature may sit at 0,
# 512, 1024, 2048, ... bytes.
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")

_SUFFIXES = {".keras": KERAS, ".h5": H5, ".hdf5": H5}


def format_for_suffix(path: str | os.PathLike) -> str:
    """The format a new file at `path` gets from its suffix.

    Raises:
        ModelFileError: if the suffix is not `.keras`, `.h5` or `.hdf5`.
    """
    path = Path(path)
    if path.name.endswith(".weights.h5"):
        raise ModelFileError(
            f"{path}: a `.weights.h5` name is for weights only; use `.keras` or `.h5`."
        )
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise ModelFileError(
            f"{path}: unsupported suffix {path.suffix!r}; use `.keras` or `.h5`."
        ) from None


def detect_format(path: str | os.PathLike) -> str:
    """Returns `KERAS` or `H5` for an existing model file.

    Raises:
        ModelFileError: the path is missing, a folder (a TensorFlow SavedModel
            included), empty, unreadable, or neither HDF5 nor zip.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file.")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            raise ModelFileError(
                f"{path}: is a TensorFlow SavedModel folder, which Keras 3 cannot "
                "load; re-save the model as `.keras` or `.h5` first."
            )
        raise ModelFileError(f"{path}: is a folder, not a model file.")
    try:
        with open(path, "rb") as f:
            head = f.read(_HDF5_OFFSETS[-1] + len(_HDF5_SIGNATURE))
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e.strerror}.") from None
    if not head:
        raise ModelFileError(f"{path}: is empty.")
    if any(head[o : o + len(_HDF5_SIGNATURE)] == _HDF5_SIGNATURE for o in _HDF5_OFFSETS):
        return H5
    if head.startswith(_ZIP_SIGNATURES):
        if not zipfile.is_zipfile(path):
            raise ModelFileError(f"{path}: is a damaged or truncated zip archive.")
        return KERAS
    raise ModelFileError(
        f"{path}: is neither a `.keras` archive nor an HDF5 file."
    )
