"""The pin record: pins of layers that a saved config cannot name.

A layer that its parent creates in `build()` (the Dense layers of a KerasHub
`TransformerEncoder`, a custom block's projection) is re-created by Keras as a
plain layer when the file is loaded, so it stores the plain layout and its
pins travel beside the weights: a `.keras` archive written by
`kerasurgery.save_model` holds a member `kerasurgery.pins.h5` (stored, not
compressed), keyed by layer path, as KerasHub keeps LoRA weights by variable
path. Plain Keras ignores the member, so the file still loads without
kerasurgery (with the effective weights, and those layers unpinned).

Layout: root attributes `format="kerasurgery-pins"`, `version=1`; a group
`layers` with one group per layer ("0", "1", ...) whose attributes are `path`,
`class_name` and `weights` (the pinned weights, e.g. `["kernel", "bias"]`), and
whose datasets are `<weight>_pin_mask` (bool, the weight's shape) and
`<weight>_pin_value` (shape `()` when shared, else the weight's shape).

This module needs numpy, h5py and zipfile only: `inspect` and `verify` read
it without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kerasurgery.errors import ModelFileError

MEMBER = "kerasurgery.pins.h5"
FORMAT = "kerasurgery-pins"
VERSION = 1


@dataclasses.dataclass(frozen=True)
class RecordEntry:
    """The pins of one layer: weight -> (mask, value)."""

    path: str
    class_name: str
    weights: dict[str, tuple[np.ndarray, np.ndarray]]


def encode(entries: list[RecordEntry]) -> bytes:
    """The record as the bytes of an HDF5 file."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        group = f.create_group("layers")
        for i, entry in enumerate(entries):
            layer = group.create_group(str(i))
            layer.attrs["path"] = entry.path
            layer.attrs["class_name"] = entry.class_name
            layer.attrs["weights"] = list(entry.weights)
            for weight, (mask, value) in entry.weights.items():
                layer.create_dataset(f"{weight}_pin_mask", data=np.asarray(mask, bool))
                layer.create_dataset(f"{weight}_pin_value", data=np.asarray(value))
    return buffer.getvalue()


def append(archive: Path, entries: list[RecordEntry]) -> None:
    """Adds the record to a `.keras` archive (a file not yet in place)."""
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_STORED) as z:
        if MEMBER in z.namelist():
            raise ModelFileError(f"{archive}: already holds a pin record.")
        z.writestr(MEMBER, encode(entries))


def read(archive: zipfile.ZipFile, *, where: str) -> list[RecordEntry]:
    """The record of an open `.keras` archive ([] when it has none).

    Raises:
        ModelFileError: a record that is not one, or whose pins do not fit
            their own shapes (bool masks, finite values of the mask's shape or
            scalar).
    """
    if MEMBER not in archive.namelist():
        return []
    info = archive.getinfo(MEMBER)
    if info.file_size > 64 * info.compress_size + (1 << 20):
        raise ModelFileError(f"{where}: the pin record expands too much to be read.")
    with archive.open(MEMBER) as member:
        data = member.read()
    try:
        return decode(data, where=where)
    except ModelFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{where}: the pin record is damaged ({e}).") from None


def decode(data: bytes, *, where: str) -> list[RecordEntry]:
    entries = []
    with h5py.File(io.BytesIO(data), "r") as f:
        if f.attrs.get("format") != FORMAT or int(f.attrs.get("version", 0)) != VERSION:
            raise ModelFileError(f"{where}: the pin record has an unknown format.")
        layers = f["layers"]
        for key in sorted(layers, key=lambda k: int(k) if k.isdigit() else -1):
            group = layers[key]
            path = _text(group.attrs["path"])
            weights = {}
            for weight in [_text(w) for w in group.attrs["weights"]]:
                mask = _small(group[f"{weight}_pin_mask"], where)
                value = _small(group[f"{weight}_pin_value"], where)
                if mask.dtype != np.bool_:
                    raise ModelFileError(f"{where}: layer {path!r}: `{weight}_pin_mask` is not boolean.")
                if value.shape not in ((), mask.shape) or value.dtype.kind not in "fV":
                    raise ModelFileError(
                        f"{where}: layer {path!r}: `{weight}_pin_value` does not fit its mask."
                    )
                if not np.all(np.isfinite(value.astype(np.float64))):
                    raise ModelFileError(
                        f"{where}: layer {path!r}: `{weight}_pin_value` holds a non-finite pinned value."
                    )
                weights[weight] = (mask, value)
            entries.append(RecordEntry(path, _text(group.attrs["class_name"]), weights))
    return entries


def _small(dataset: Any, where: str) -> np.ndarray:
    # The record lies in memory already; a dataset cannot point outside it.
    if not isinstance(dataset, h5py.Dataset) or dataset.external or dataset.is_virtual:
        raise ModelFileError(f"{where}: the pin record holds an unsupported dataset.")
    return dataset[()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
