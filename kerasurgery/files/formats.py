"""Which kind of model file a path holds, and whether its container is sound.

`detect_format` tells the format from the first bytes; `open_model_file`
checks the container (zip checksums, HDF5 structure, the config's JSON) and
hands over the parsed config and the open HDF5 weights, so that a broken file
fails with a message about the file rather than somewhere inside Keras or
h5py. The loader (`saving.load_model`) and `inspect`/`verify` share it; it is
kept free of TensorFlow and Keras.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kerasurgery.guards.declared import check_declared_weights, check_sequential_depth
from kerasurgery.guards.limits import (
    MAX_ASSET_BYTES, MAX_CHUNK_BYTES, MAX_CONFIG_BYTES, MAX_EXPANSION, MAX_JSON_CONTAINERS,
    MAX_JSON_DEPTH, MAX_MEMBERS, MAX_METADATA_BYTES,
)
from kerasurgery.files.zipwindow import open_member
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
    detected = detect_format(path)  # always: it refuses a file that is two containers
    if fmt is not None and fmt != detected:
        raise ModelFileError(f"{path}: is not a {'.keras archive' if fmt == KERAS else '.h5 file'}.")
    fmt = detected
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
        _check_members(path, archive)
        if check_crc:
            damaged = archive.testzip()
            if damaged is not None:
                raise ModelFileError(
                    f"{path}: is a damaged archive: the checksum of {damaged!r} "
                    "does not match its contents."
                )
        names = frozenset(archive.namelist())
        if CONFIG_MEMBER not in names:
            raise ModelFileError(
                f"{path}: is a zip archive without {CONFIG_MEMBER}, not a Keras model."
            )
        config = _parse_config(path, _read_small(path, archive, CONFIG_MEMBER), CONFIG_MEMBER)
        version = None
        # Keras never reads metadata.json: one too large or malformed only
        # leaves the version unknown.
        if METADATA_MEMBER in names and archive.getinfo(METADATA_MEMBER).file_size <= MAX_METADATA_BYTES:
            with contextlib.suppress(KerasurgeryError):
                metadata = parse_json(archive.read(METADATA_MEMBER), METADATA_MEMBER)
                if isinstance(metadata, dict):
                    version = h5_text(metadata.get("keras_version"))
        weights = None
        stored = 0
        if WEIGHTS_MEMBER in names:
            info = archive.getinfo(WEIGHTS_MEMBER)
            member = stack.enter_context(contextlib.closing(open_member(archive, info, path)))
            weights = _open_hdf5(path, member, info.file_size, f"{WEIGHTS_MEMBER} ", stack)
            entries = _check_hdf5(path, weights, info.file_size, f"{WEIGHTS_MEMBER} ")
            if "model_config" in weights.attrs:  # an `.h5` model inside: a second reading
                raise ModelFileError(
                    f"{path}: its {WEIGHTS_MEMBER} is a whole `.h5` model (it has a "
                    "`model_config`), which Keras reads instead of the archive when the file "
                    "is named `.h5`: refused."
                )
        check_sequential_depth(path, config)
        opened = ModelFile(path, KERAS, config, version, weights, names)
        stored = _owned_entries(opened, entries) if weights is not None else 0
        check_declared_weights(path, config, stored)
    except ModelFileError:
        raise
    except Exception as e:  # zipfile and zlib raise many kinds on damage.
        raise ModelFileError(
            f"{path}: is a damaged or truncated zip archive ({one_line(e)})."
        ) from None
    return dataclasses.replace(opened, stored_entries=stored)


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
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelFileError(
            f"{path}: its model_config is {len(raw):,} bytes, more than the "
            f"{MAX_CONFIG_BYTES >> 20} MB a model config may take."
        )
    config = _parse_config(path, raw, "model_config")
    entries = _check_hdf5(path, h5, path.stat().st_size, "")
    check_sequential_depth(path, config)
    opened = ModelFile(path, H5, config, version, h5)
    try:
        stored = _owned_entries(opened, entries)
    except ModelFileError:
        raise
    except Exception as e:  # h5py on damaged attributes
        raise ModelFileError(f"{path}: is a damaged HDF5 file ({one_line(e)}).") from None
    check_declared_weights(path, config, stored)
    return dataclasses.replace(opened, stored_entries=stored)


def _open_hdf5(path: Path, source: Any, size: int, what: str, stack: contextlib.ExitStack) -> Any:
    """Opens HDF5 data held in a file object, and checks its structure."""
    import h5py

    try:
        h5 = stack.enter_context(h5py.File(source, "r"))
    except Exception as e:
        raise ModelFileError(f"{path}: {what}is a damaged HDF5 file ({one_line(e)}).") from None
    return h5


def _check_members(path: Path, archive: zipfile.ZipFile) -> None:
    """Refuses, before anything is read, members that claim more than DEFLATE
    can expand their stored bytes to, and archives of implausibly many members."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ModelFileError(
            f"{path}: is a zip archive of {len(infos):,} members; a Keras model has a few."
        )
    _check_spans(path, infos)
    names: set[str] = set()
    for info in infos:
        if info.filename in names:
            raise ModelFileError(
                f"{path}: holds two members named {info.filename!r}; which one a reader "
                "takes is not defined, so the archive is refused."
            )
        names.add(info.filename)
    assets = sum(info.file_size for info in infos if info.filename.startswith("assets/"))
    if assets > MAX_ASSET_BYTES:
        raise ModelFileError(
            f"{path}: its assets (vocabularies, tokenizer files) take {assets:,} bytes "
            f"uncompressed, more than the {MAX_ASSET_BYTES >> 20} MB assets may take."
        )
    for info in infos:
        if info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
            raise ModelFileError(
                f"{path}: {info.filename!r} claims {info.file_size:,} bytes but only "
                f"{info.compress_size:,} are stored (more than compression can expand "
                "to): the archive is damaged or hostile."
            )


def _check_spans(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuses members whose stored bytes overlap: one compressed stream behind
    many members would be inflated once for each (a reader checks each CRC)."""
    spans = []
    with open(path, "rb") as f:
        for info in infos:
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise ModelFileError(
                    f"{path}: is a damaged zip archive (bad header of {info.filename!r}).")
            name, extra = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
            end = info.header_offset + 30 + name + extra + info.compress_size
            spans.append((info.header_offset, end, info.filename))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ModelFileError(
                f"{path}: the members {first!r} and {second!r} share stored bytes "
                "(overlapping members, as in a zip bomb): refused."
            )


def _read_small(path: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    """A config member, refused by its declared size before it is read:
    `zipfile` never inflates more than the declared size."""
    size = archive.getinfo(name).file_size
    if size > MAX_CONFIG_BYTES:
        raise ModelFileError(
            f"{path}: {name} is {size:,} bytes uncompressed, more than the "
            f"{MAX_CONFIG_BYTES >> 20} MB a model config may take."
        )
    return archive.read(name)


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


def _owned_entries(model: ModelFile, entries: dict[str, int]) -> int:
    """The entries of the datasets Keras loads into the model's layers.

    Only these count toward what a file stores (`check_declared_weights`):
    a dataset that no layer loads (beside the layers, inside a built-in
    layer's group, the optimizer's) would otherwise raise the allowance for
    what the config may make Keras build. `.h5`: the datasets each group of
    `layer_names` lists in `weight_names`. `.keras`: the `vars` of each layer
    group Keras loads (`layout.layer_entries`), and the model's own.
    """
    if model.weights is None:
        return 0
    from kerasurgery.files.layout import layer_entries  # layout reads this module

    # The walk also refuses a file whose weights Keras would load into other
    # layers than their names say: `load_model` refuses what the readers refuse.
    layers = layer_entries(model)
    names: set[str] = set()
    if model.format == H5:
        root = model.weights.get("model_weights")
        for layer in [*read_h5_list(root, "layer_names"), "top_level_model_weights"] if root else []:
            group = root.get(layer)
            if group is not None and hasattr(group, "attrs"):
                names.update(f"model_weights/{layer}/{w}" for w in read_h5_list(group, "weight_names"))
    else:
        groups = ["/"] + [entry.group for entry in layers if entry.group]
        for group in groups:
            variables = model.weights.get(f"{group.rstrip('/')}/vars")
            if variables is not None and hasattr(variables, "keys"):
                names.update(f"{variables.name.strip('/')}/{key}" for key in variables.keys())
    return sum(entries.get(name.strip("/"), 0) for name in names)
