"""Which kind of model file a path holds, and whether its container is sound.

`detect_format` tells the format from the first bytes; `open_model_file`
checks the container (zip checksums, HDF5 structure, the config's JSON) and
hands over the parsed config and the open HDF5 weights, so that a broken file
fails with a message about the file rather than somewhere inside Keras or
h5py. The loader (`read_model_config`) and `inspect`/`verify` share it; it is
kept free of TensorFlow and Keras.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kerasurgery._zipwindow import open_member
from kerasurgery.errors import ModelFileError, one_line

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
    # Zip first: a `.keras` archive stores `model.weights.h5` uncompressed, so
    # an HDF5 signature sits wherever that member starts, 512 or 4096 bytes
    # in as often as anywhere else. An HDF5 file starts with its signature or
    # with a user block, which no model writer fills with a zip header.
    if head.startswith(_ZIP_SIGNATURES):
        if not zipfile.is_zipfile(path):
            raise ModelFileError(f"{path}: is a damaged or truncated zip archive.")
        return KERAS
    if any(head[o : o + len(_HDF5_SIGNATURE)] == _HDF5_SIGNATURE for o in _HDF5_OFFSETS):
        return H5
    raise ModelFileError(
        f"{path}: is neither a `.keras` archive nor an HDF5 file."
    )


# Members of a `.keras` archive (keras/src/saving/saving_lib.py).
_CONFIG = "config.json"
_METADATA = "metadata.json"
_WEIGHTS = "model.weights.h5"
# DEFLATE cannot expand data by more than about 1032:1.
_MAX_EXPANSION = 1032
# A model config larger than this is not a model config.
_MAX_JSON_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model file opened by `open_model_file`, its container checked.

    Attributes:
        path: The file.
        format: `KERAS` or `H5`.
        config: The model config, the JSON object stored in the file.
        keras_version: The Keras version that wrote the file, if recorded.
        weights: The open HDF5 weights, valid inside the `with` block: a
            `.keras` archive's `model.weights.h5` (`None` if it has none), or
            the `.h5` file itself.
        members: The names in a `.keras` archive; empty for `.h5`.
    """

    path: Path
    format: str
    config: dict[str, Any]
    keras_version: str | None
    weights: Any
    members: frozenset[str] = frozenset()


@contextlib.contextmanager
def open_model_file(
    path: str | os.PathLike, fmt: str | None = None, *, check_crc: bool = True
) -> Iterator[ModelFile]:
    """Opens a model file, checks its container and parses its config.

    For a `.keras` archive: every member's CRC (unless `check_crc=False`), a
    `config.json` holding a JSON object, and a weights file that is sound
    HDF5, read in place from the archive rather than copied into memory. For
    an `.h5` file: that h5py can open it and that it has a `model_config` (a
    weights-only file is named as such). In both, every dataset's header must
    be readable and its data must fit inside the file, so that a corrupt or
    hostile size cannot make a reader allocate more memory than the file
    could hold.

    Args:
        path: The model file.
        fmt: Its format, if already known from `detect_format`.
        check_crc: Verify the CRC of every archive member (reads them all once).

    Yields:
        A `ModelFile`; its `weights` are closed when the block ends.

    Raises:
        ModelFileError: the file is missing, damaged, or not a saved model.
    """
    path = Path(path)
    fmt = detect_format(path) if fmt is None else fmt
    with contextlib.ExitStack() as stack:
        if fmt == KERAS:
            yield _open_keras(path, stack, check_crc)
        else:
            yield _open_h5(path, stack)


def read_model_config(path: str | os.PathLike, fmt: str) -> dict[str, Any]:
    """Checks the container of a model file and returns its model config.

    The checks are `open_model_file`'s, CRCs included.

    Args:
        path: The model file.
        fmt: Its format, from `detect_format`.

    Returns:
        The model config, as the JSON object stored in the file.

    Raises:
        ModelFileError: the container is damaged or is not a saved model.
    """
    with open_model_file(path, fmt, check_crc=True) as model:
        return model.config


def _open_keras(path: Path, stack: contextlib.ExitStack, check_crc: bool) -> ModelFile:
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        if check_crc:
            damaged = archive.testzip()
            if damaged is not None:
                raise ModelFileError(
                    f"{path}: is a damaged archive: the checksum of {damaged!r} "
                    "does not match its contents."
                )
        names = frozenset(archive.namelist())
        if _CONFIG not in names:
            raise ModelFileError(
                f"{path}: is a zip archive without {_CONFIG}, not a Keras model."
            )
        config = _parse_config(path, _read_small(path, archive, _CONFIG), _CONFIG)
        version = None
        if _METADATA in names:
            with contextlib.suppress(ValueError, RecursionError):  # Keras ignores it too.
                metadata = json.loads(_read_small(path, archive, _METADATA))
                if isinstance(metadata, dict):
                    version = h5_text(metadata.get("keras_version"))
        weights = None
        if _WEIGHTS in names:
            info = archive.getinfo(_WEIGHTS)
            if info.file_size > _MAX_EXPANSION * max(info.compress_size, 1):
                raise ModelFileError(
                    f"{path}: {_WEIGHTS} claims {info.file_size} bytes but "
                    f"only {info.compress_size} are stored."
                )
            member = stack.enter_context(contextlib.closing(open_member(archive, info, path)))
            weights = _open_hdf5(path, member, info.file_size, f"{_WEIGHTS} ", stack)
    except ModelFileError:
        raise
    except Exception as e:  # zipfile and zlib raise many kinds on damage.
        raise ModelFileError(
            f"{path}: is a damaged or truncated zip archive ({one_line(e)})."
        ) from None
    return ModelFile(path, KERAS, config, version, weights, names)


def _open_h5(path: Path, stack: contextlib.ExitStack) -> ModelFile:
    import h5py  # imported here: `detect_format` callers need no h5py.

    try:
        h5 = stack.enter_context(h5py.File(path, "r"))
    except Exception as e:
        raise ModelFileError(
            f"{path}: is a damaged or truncated HDF5 file ({one_line(e)})."
        ) from None
    try:
        raw = h5.attrs.get("model_config")
        weights_only = raw is None and (
            "layer_names" in h5.attrs or "layers" in h5 or "vars" in h5
        )
        version = h5_text(h5.attrs.get("keras_version"))
        if version is None and isinstance(h5.get("model_weights"), h5py.Group):
            version = h5_text(h5["model_weights"].attrs.get("keras_version"))
    except Exception as e:
        raise ModelFileError(f"{path}: is a damaged HDF5 file ({one_line(e)}).") from None
    if weights_only:
        raise ModelFileError(
            f"{path}: holds weights only (a `.weights.h5` file), not a model: a "
            "weights-only file has no model config. Load it with `model.load_weights()` "
            "into a model built in code, or use the file written by `model.save()`."
        )
    if raw is None:
        raise ModelFileError(
            f"{path}: is an HDF5 file without a model configuration "
            "(no `model_config` attribute), not a saved Keras model."
        )
    if getattr(raw, "shape", None) == ():  # a numpy scalar
        raw = raw.item()
    if not isinstance(raw, (str, bytes)):
        raise ModelFileError(f"{path}: has a `model_config` attribute that is not text.")
    config = _parse_config(path, raw, "model_config")
    _check_hdf5(path, h5, path.stat().st_size, "")
    return ModelFile(path, H5, config, version, h5)


def _open_hdf5(path: Path, source: Any, size: int, what: str, stack: contextlib.ExitStack) -> Any:
    """Opens HDF5 data held in a file object, and checks its structure."""
    import h5py

    try:
        h5 = stack.enter_context(h5py.File(source, "r"))
    except Exception as e:
        raise ModelFileError(f"{path}: {what}is a damaged HDF5 file ({one_line(e)}).") from None
    _check_hdf5(path, h5, size, what)
    return h5


def _read_small(path: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    if archive.getinfo(name).file_size > _MAX_JSON_BYTES:
        raise ModelFileError(f"{path}: {name} is implausibly large.")
    return archive.read(name)


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


def _parse_config(path: Path, raw: bytes | str, where: str) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: {where} is not valid JSON ({one_line(e)}).") from None
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ModelFileError(f"{path}: {where} does not describe a Keras model.")
    return config


def _check_hdf5(path: Path, h5: Any, size: int, what: str) -> None:
    """Checks that every dataset of an open HDF5 file fits in its `size` bytes."""
    import h5py

    def visit(name: str, item: Any) -> None:
        if not isinstance(item, h5py.Dataset):
            return
        stored = item.size * item.dtype.itemsize
        offset = item.id.get_offset()
        if item.compression is None and offset is not None:
            fits = offset + stored <= size
        else:  # chunked: unwritten chunks read as fill values, from no bytes at all
            fits = stored <= _MAX_EXPANSION * size
        if not fits:
            raise ModelFileError(
                f"{path}: {what}dataset {name!r} claims {stored} bytes, more than "
                "the file holds: the file is truncated or damaged."
            )

    try:
        h5.visititems(visit)
    except ModelFileError:
        raise
    except Exception as e:
        raise ModelFileError(
            f"{path}: {what}is a damaged HDF5 file ({one_line(e)})."
        ) from None
