"""Which kind of model file a path holds, and how its parts are read.

`detect_format` tells the format from the first bytes; the members of a
`.keras` archive, the `ModelFile` an opened file is, the checked reading of
its JSON and HDF5 (`parse_json`, `_check_hdf5`, `read_h5_list`) are here.
Opening a file (`container.open_model_file`) builds on them, as do the
readers of its layout and pin record. Kept free of TensorFlow and Keras.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

from kerasurgery.guards.limits import (
    MAX_CHUNK_BYTES, MAX_CONFIG_BYTES, MAX_EXPANSION, MAX_JSON_CONTAINERS, MAX_JSON_DEPTH,
)
from kerasurgery.errors import KerasurgeryError, ModelFileError, one_line

KERAS = "keras"  # a zip archive: config.json, metadata.json, model.weights.h5
H5 = "h5"  # an HDF5 file written by Keras 3's or Keras 2's model.save

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock: the library looks for the
# signature at 0, 512, 1024, 2048, ... (every power of two) bytes.
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
    hdf5 = _hdf5_signatures(path)
    is_zip = zipfile.is_zipfile(path)
    # Zip first: a `.keras` archive stores `model.weights.h5` uncompressed, so
    # an HDF5 signature sits wherever that member starts, 512 or 4096 bytes
    # in as often as anywhere else. An HDF5 file starts with its signature or
    # with a user block, which no model writer fills with a zip header.
    if head.startswith(_ZIP_SIGNATURES):
        if not is_zip:
            raise ModelFileError(f"{path}: is a damaged or truncated zip archive.")
        stray = sorted(set(hdf5) - _hdf5_members(path))
        if stray:
            raise _polyglot(path, stray[0])
        return KERAS
    if hdf5:
        if is_zip:
            raise _polyglot(path, hdf5[0])
        return H5
    raise ModelFileError(
        f"{path}: is neither a `.keras` archive nor an HDF5 file."
    )


def _hdf5_signatures(path: Path) -> list[int]:
    """The offsets at which the HDF5 library would find a file's superblock:
    0, 512, 1024, ... (each power of two), up to the file's end."""
    found = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + len(_HDF5_SIGNATURE) <= size:
            f.seek(offset)
            if f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                found.append(offset)
            offset = 512 if offset == 0 else offset * 2
    return found


def _hdf5_members(path: Path) -> set[int]:
    """Where the data of the archive's stored HDF5 members starts (the weights,
    the pin record): an HDF5 signature there is that member's, not a second
    container."""
    starts = set()
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
            for info in archive.infolist():
                if info.filename not in (WEIGHTS_MEMBER, PIN_RECORD_MEMBER) or (
                        info.compress_type != zipfile.ZIP_STORED):
                    continue
                f.seek(info.header_offset + 26)
                lengths = f.read(4)
                if len(lengths) == 4:
                    name, extra = int.from_bytes(lengths[:2], "little"), int.from_bytes(lengths[2:], "little")
                    starts.add(info.header_offset + 30 + name + extra)
    except (OSError, ValueError, zipfile.BadZipFile):
        pass  # the container checks say what is wrong
    return starts


def _polyglot(path: Path, offset: int) -> ModelFileError:
    return ModelFileError(
        f"{path}: is both a zip archive and an HDF5 file (an HDF5 superblock at byte "
        f"{offset:,}): Keras reads it as one or the other by its name, so it is refused."
    )


def stored_data_bytes(path: str | os.PathLike) -> int:
    """The bytes of data a model file holds once inflated: the declared sizes
    of a zip's members (each capped at what DEFLATE can expand its stored
    bytes to), else the file's size; 0 for a file that cannot be read."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return sum(min(info.file_size, MAX_EXPANSION * info.compress_size)
                           for info in archive.infolist())
        return os.path.getsize(path)
    except (OSError, ValueError, zipfile.BadZipFile):
        return 0


# Members of a `.keras` archive (keras/src/saving/saving_lib.py), and the
# pin record that `kerasurgery.save_model` adds (`files/pin_record.py`).
CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
PIN_RECORD_MEMBER = "kerasurgery.pins.h5"
@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model file opened by `container.open_model_file`, its container checked.

    Attributes:
        path: The file.
        format: `KERAS` or `H5`.
        config: The model config, the JSON object stored in the file.
        keras_version: The Keras version that wrote the file, if recorded.
        weights: The open HDF5 weights, valid inside the `with` block: a
            `.keras` archive's `model.weights.h5` (`None` if it has none), or
            the `.h5` file itself.
        members: The names in a `.keras` archive; empty for `.h5`.
        stored_entries: The entries of the weight datasets Keras loads into
            the model's layers (`_owned_entries`), each checked to be backed
            by bytes stored in the file.
    """

    path: Path
    format: str
    config: dict[str, Any]
    keras_version: str | None
    weights: Any
    members: frozenset[str] = frozenset()
    stored_entries: int = 0


def parse_json(raw: bytes | str, where: str) -> Any:
    """Parses JSON from a model file within the caps on its size and shape.

    Counting brackets bounds the objects the parser may create before it
    creates any (brackets inside strings count too: the bound only grows).

    Raises:
        KerasurgeryError: `raw` is larger than `MAX_CONFIG_BYTES`, holds more
            than `MAX_JSON_CONTAINERS` objects and lists, nests them deeper
            than `MAX_JSON_DEPTH`, or is not JSON.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise KerasurgeryError(f"{where} is {len(raw):,} bytes, more than a model config may take.")
    opening = (b"[", b"{") if isinstance(raw, bytes) else ("[", "{")
    containers = raw.count(opening[0]) + raw.count(opening[1])
    if containers > MAX_JSON_CONTAINERS:
        raise KerasurgeryError(
            f"{where} holds {containers:,} JSON objects and lists, more than the "
            f"{MAX_JSON_CONTAINERS:,} a model config may hold."
        )
    try:
        value = json.loads(raw)
    except RecursionError:
        value = None
        depth = MAX_JSON_DEPTH + 1
    except ValueError as e:
        raise KerasurgeryError(f"{where} is not valid JSON ({one_line(e)}).") from None
    else:
        depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise KerasurgeryError(
            f"{where} nests JSON more than {MAX_JSON_DEPTH} levels deep; no model config does."
        )
    return value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:
            stack.extend((child, depth + 1) for child in node)
    return deepest


def code_layers(config: Any) -> list[tuple[str, str]]:
    """(name, class name) of each layer whose config holds Python code.

    Keras 3 stores a Python lambda (a Lambda layer's function, or a lambda
    anywhere else in a config) as `{"class_name": "__lambda__", ...}`; Keras 2
    marks a Lambda layer's function with `"function_type": "lambda"`. Such code
    runs when the model is deserialized, which is what safe mode refuses.

    Args:
        config: A model config, as stored in the file.

    Returns:
        The layers that carry code, each once, named by the innermost layer
        entry of the config that holds the code.

    Raises:
        RecursionError: the config is nested deeper than Python can walk.
    """
    found: list[tuple[str, str]] = []

    def walk(node: Any, layer: tuple[str, str]) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, layer)
            return
        if not isinstance(node, dict):
            return
        carries_code = node.get("class_name") == "__lambda__" or any(
            node.get(key) == "lambda" for key in _CODE_TYPE_KEYS
        )
        if carries_code and layer not in found:
            found.append(layer)
        for key, value in node.items():
            if key == "layers" and isinstance(value, list):
                for entry in value:
                    walk(entry, _layer_of(entry, layer))
            else:
                walk(value, layer)

    walk(config, _layer_of(config, ("?", "?")))
    return found


# Keras 2 Lambda config keys that say a function is serialized bytecode.
_CODE_TYPE_KEYS = ("function_type", "output_shape_type", "mask_type")


def _layer_of(entry: Any, default: tuple[str, str]) -> tuple[str, str]:
    """(name, class name) of a layer entry of a config, else `default`."""
    if isinstance(entry, dict) and isinstance(entry.get("config"), dict):
        name = entry["config"].get("name")
        if isinstance(name, str):
            return (name, str(entry.get("class_name")))
    return default


def stored_weight_dtypes(path: str | os.PathLike) -> list[tuple[str, list[Any]]]:
    """The dtypes of the weights an `.h5` model file stores, in Keras' order.

    Keras' `.h5` loader pairs the layers that have weights with the groups
    listed in `layer_names` that have `weight_names`, in order, and a layer's
    variables with the datasets in `weight_names`, in order.

    Returns:
        `(group name, [dataset dtype, ...])` for each group with weights.

    Raises:
        ModelFileError: the file's weight layout cannot be read.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            group = h5["model_weights"] if "model_weights" in h5 else h5
            result = []
            for name in read_h5_list(group, "layer_names"):
                weights = read_h5_list(group[name], "weight_names")
                if weights:
                    result.append((name, [group[name][w].dtype for w in weights]))
            return result
    except Exception as e:
        raise ModelFileError(
            f"{path}: cannot read the stored weights ({one_line(e)})."
        ) from None


def read_h5_list(group: Any, name: str) -> list[str]:
    """A list-of-names attribute of an HDF5 group (`layer_names`, `weight_names`).

    Keras splits a large one into `name0`, `name1`, ... chunks; they are joined.
    """
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
    items = [item for chunk in chunks for item in _elements(chunk)]
    return [text for text in map(h5_text, items) if text is not None]


def _elements(chunk: Any) -> list[Any]:
    if isinstance(chunk, (str, bytes)) or getattr(chunk, "shape", None) == ():
        return [chunk]
    return list(chunk)


def h5_text(value: Any) -> str | None:
    """An HDF5 attribute (bytes, str, or a numpy scalar of either) as text."""
    if value is None:
        return None
    if getattr(value, "shape", None) == ():  # a numpy scalar
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def shown(text: Any) -> str:
    """Text read from a file, safe to put in a message: each character that is
    not printable (an escape sequence, a newline) as Python writes it in a
    string literal. Names are data: a message must not let them move the
    terminal's cursor or recolour it."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _parse_config(path: Path, raw: bytes | str, where: str) -> dict[str, Any]:
    try:
        config = parse_json(raw, where)
    except KerasurgeryError as e:
        raise ModelFileError(f"{path}: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ModelFileError(f"{path}: {where} does not describe a Keras model.")
    return config


def _check_hdf5(path: Path, h5: Any, size: int, what: str) -> dict[str, int]:
    """Checks that every object of an open HDF5 file can be read within its `size` bytes.

    Refused: data outside the file (external storage, virtual datasets,
    external or soft links), data beyond the end of the file, data that was
    never written (it would read as the fill value, from no bytes at all) or
    that claims more than its stored bytes can expand to, chunks larger than
    the data they hold (a reader inflates a whole chunk), variable-length
    data (strings, lists: each entry a Python object, stored anywhere in the
    file), and an object reached by more than one link (a walk that follows
    links would read it again for each: `K` groups that each link the next
    twice reach the last one `2**K` times). Each is checked once, before any
    reader reads a byte of data; no model writer makes any of them.

    Returns:
        The entries of each dataset, by its path (each dataset has one).
    """
    import h5py

    entries: dict[str, int] = {}

    def refuse(name: str, problem: str) -> ModelFileError:
        return ModelFileError(f"{path}: {what}dataset {name!r} {problem}")

    def outside(name: str) -> ModelFileError:
        return refuse(name, "keeps its data outside the file (an external or virtual dataset, "
                      "or an external link), which a model file never does; refused.")

    def linked(name: str, item: Any) -> None:
        links = h5py.h5o.get_info(item.id).rc
        if links > 1:
            raise ModelFileError(
                f"{path}: {what}object {name!r} is reached by {links} links; a model file "
                "links each object once, and a reader following links would read it again "
                "for each: refused."
            )

    def visit(name: str, item: Any) -> None:
        linked(name, item)
        if not isinstance(item, h5py.Dataset):
            return
        plist = item.id.get_create_plist()
        if item.is_virtual or plist.get_external_count() > 0:
            raise outside(name)
        kind = item.id.get_type()
        if item.dtype.kind == "O" or any(
                kind.detect_class(c) for c in (h5py.h5t.VLEN, h5py.h5t.REFERENCE)):
            raise refuse(name, "holds variable-length data (strings or lists), which no "
                         "model's weights are: refused before reading it.")
        count = math.prod(item.shape or ())
        declared = count * item.dtype.itemsize
        storage = item.id.get_storage_size()
        offset = item.id.get_offset()
        if offset is not None and offset + storage > size:
            raise refuse(name, f"claims {declared} bytes, more than the file holds: the file "
                         "is truncated or damaged.")
        capacity = storage * (MAX_EXPANSION if plist.get_nfilters() else 1)
        if declared > capacity:
            raise refuse(name, f"claims {declared} bytes, more than the file holds ({storage} "
                         "stored for it): it was never written, or the file is truncated or "
                         "damaged.")
        if plist.get_layout() == h5py.h5d.CHUNKED:
            chunk = math.prod(plist.get_chunk()) * item.dtype.itemsize
            if chunk > max(declared, MAX_CHUNK_BYTES):
                raise refuse(name, f"holds {declared} bytes in chunks of {chunk}; a reader "
                             "inflates a whole chunk, so the file is refused.")
        entries[name] = count

    def link(name: str, info: Any) -> ModelFileError | None:
        # Returned, not raised: h5py turns an error raised in this callback into another.
        if isinstance(info, h5py.ExternalLink):
            return outside(name)
        if isinstance(info, h5py.SoftLink):
            return ModelFileError(f"{path}: {what}holds a soft link at {name!r}, which a model "
                                  "file never does (Keras refuses to follow it); refused.")
        return None

    try:
        refused = h5.visititems_links(link)
        if refused is not None:
            raise refused
        linked("/", h5)
        h5.visititems(visit)
    except ModelFileError:
        raise
    except Exception as e:
        raise ModelFileError(
            f"{path}: {what}is a damaged HDF5 file ({one_line(e)})."
        ) from None
    return entries
