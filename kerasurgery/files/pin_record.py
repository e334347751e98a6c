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

One reader: `open_record` checks the member as the weights are checked (its
expansion, its size against the weights', every dataset's stored bytes, no
data outside the file) before anything is read; `inspect` and `verify` read
its datasets from there, and `read` (for `load_model`) reads them into numpy
with the value checks on top. This module needs numpy, h5py and zipfile only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import zipfile
from pathlib import Path

import h5py
import numpy as np

from kerasurgery import kinds
from kerasurgery.errors import ModelFileError, one_line
from kerasurgery.files import formats
from kerasurgery.files.formats import KERAS, PIN_RECORD_MEMBER, WEIGHTS_MEMBER, h5_text, read_h5_list
from kerasurgery.files.hdf5 import dataset as _dataset
from kerasurgery.files.hdf5 import group as _group
from kerasurgery.files.hdf5 import index_key as _index_key
from kerasurgery.files.hdf5 import int_attr as _int_attr
from kerasurgery.files.hdf5 import refuse_outside_data as _refuse_outside_data
from kerasurgery.files.zipwindow import open_member
from kerasurgery.guards.limits import MAX_EXPANSION

MEMBER = PIN_RECORD_MEMBER
PIN_RECORD = PIN_RECORD_MEMBER
FORMAT = PIN_RECORD_FORMAT = "kerasurgery-pins"
VERSION = PIN_RECORD_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RecordEntry:
    """The pins of one layer, read: weight -> (mask, value) as numpy arrays."""

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


def read(opened: formats.ModelFile) -> list[RecordEntry]:
    """The record of an opened model file, read into numpy ([] when it has none).

    Checked by `open_record` first; then every mask must be boolean and every
    value finite, of the mask's shape or a scalar.

    Raises:
        ModelFileError: a record that is not one, or whose pins do not fit
            their own shapes.
    """
    where = str(opened.path)
    with contextlib.ExitStack() as stack:
        try:
            record = open_record(opened, stack)
            entries = []
            for layer in record.values():
                weights = {}
                for weight in layer.weights:
                    mask = layer.datasets[f"{weight}_pin_mask"][()]
                    value = layer.datasets[f"{weight}_pin_value"][()]
                    _check_pins(where, layer.path, weight, mask, value)
                    weights[weight] = (mask, value)
                entries.append(RecordEntry(layer.path, layer.class_name, weights))
            return entries
        except ModelFileError:
            raise
        except Exception as e:  # h5py on damaged data
            raise ModelFileError(f"{where}: the pin record is damaged ({one_line(e)}).") from None


def _check_pins(where: str, path: str, weight: str, mask: np.ndarray, value: np.ndarray) -> None:
    if mask.dtype != np.bool_:
        raise ModelFileError(f"{where}: layer {path!r}: `{weight}_pin_mask` is not boolean.")
    if value.shape not in ((), mask.shape) or value.dtype.kind not in "fV":
        raise ModelFileError(f"{where}: layer {path!r}: `{weight}_pin_value` does not fit its mask.")
    if not np.all(np.isfinite(value.astype(np.float64))):
        raise ModelFileError(f"{where}: layer {path!r}: `{weight}_pin_value` holds a non-finite pinned value.")


@dataclasses.dataclass(frozen=True)
class RecordLayer:
    """One layer of a pin record: its class, the weights it pins, their datasets."""

    path: str
    class_name: str
    weights: tuple[str, ...]
    datasets: dict[str, h5py.Dataset]  # "kernel_pin_mask", "kernel_pin_value", ...


def open_record(opened: formats.ModelFile, stack: contextlib.ExitStack) -> dict[str, RecordLayer]:
    """The pin record of a `.keras` archive, by layer path; `{}` if it has none.

    The record stays open until `stack` closes.

    Raises:
        ModelFileError: the record is damaged, of another format or version,
            or malformed.
    """
    if opened.format != KERAS or PIN_RECORD not in opened.members:
        return {}
    path = opened.path

    def error(message: str) -> ModelFileError:
        return ModelFileError(f"{path}: {PIN_RECORD} {message}")

    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        info = archive.getinfo(PIN_RECORD)
        if info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
            raise error(f"claims {info.file_size} bytes but only {info.compress_size} are stored.")
        # A mask takes 1 byte an entry and a value at most 8, against at least 2
        # for the weight: a record larger than this pins weights the file lacks.
        weights = archive.getinfo(WEIGHTS_MEMBER).file_size if opened.weights is not None else 0
        if info.file_size > 5 * weights + (1 << 20):
            raise error(f"is {info.file_size} bytes, too large for a weights file of {weights}.")
        member = stack.enter_context(contextlib.closing(open_member(archive, info, path)))
        record = stack.enter_context(h5py.File(member, "r"))
    except ModelFileError:
        raise
    except Exception as e:
        raise error(f"is a damaged HDF5 file ({one_line(e)}).") from None
    # The same structural checks as model.weights.h5: every dataset fits in the member.
    formats._check_hdf5(path, record, info.file_size, f"{PIN_RECORD} ")
    fmt = h5_text(record.attrs.get("format"))
    if fmt != PIN_RECORD_FORMAT:
        raise error(f"is not a kerasurgery pin record (its `format` is {fmt!r}).")
    version = _int_attr(record.attrs.get("version"))
    if version != PIN_RECORD_VERSION:
        shown = version if version is not None else one_line(repr(record.attrs.get("version")))
        raise error(
            f"has version {shown}; this kerasurgery reads version "
            f"{PIN_RECORD_VERSION} (was the file written by a newer kerasurgery?)."
        )
    layers = _group(record, "layers")
    if layers is None:
        raise error("has no `layers` group.")
    result: dict[str, RecordLayer] = {}
    for key in sorted(layers, key=_index_key):
        group = _group(layers, key)
        if group is None:
            raise error(f"has a malformed entry `layers/{key}`.")
        layer_path = h5_text(group.attrs.get("path"))
        class_name = h5_text(group.attrs.get("class_name"))
        weights = tuple(read_h5_list(group, "weights"))
        where = f"entry `layers/{key}`"
        if not layer_path:
            raise error(f"{where} has no layer `path`.")
        where = f"layer {layer_path!r}"
        if class_name is None or not kinds.is_pinned_class(class_name):
            raise error(f"{where} has class {class_name!r}, which is not a pinned class.")
        order = kinds.find(class_name).weights
        if not weights or len(set(weights)) != len(weights) or any(w not in order for w in weights):
            raise error(f"{where} pins the weights {list(weights)}; a {class_name} has {list(order)}.")
        if list(weights) != [w for w in order if w in weights]:
            raise error(f"{where} lists its weights {list(weights)} out of order ({list(order)}).")
        datasets = {}
        for weight in weights:
            for name in (f"{weight}_pin_mask", f"{weight}_pin_value"):
                dataset = _dataset(group, name)
                if dataset is None:
                    raise error(f"{where}: `{name}` is missing.")
                _refuse_outside_data(dataset, lambda m: error(f"{where}: {m}"))
                datasets[name] = dataset
        if layer_path in result:
            raise error(f"pins layer {layer_path!r} twice.")
        result[layer_path] = RecordLayer(layer_path, class_name, weights, datasets)
    return result
