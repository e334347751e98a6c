"""A model file opened: its container checked, its config parsed, what Keras loads counted.

`open_model_file` checks the container (zip checksums, HDF5 structure, the
config's JSON) and hands over the parsed config and the open HDF5 weights, so
that a broken file fails with a message about the file rather than somewhere
inside Keras or h5py. It also counts the weight entries Keras would load into
the model's layers, walking them as Keras does (`layout.layer_entries`), so a
config that declares far more than the file stores is refused before
anything is built. The loader (`saving.load_model`), the TF-free rewrite and
`inspect`/`verify` share it; it is kept free of TensorFlow and Keras.
`formats.py` below it knows the formats; `layout.py` reads a file opened here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kerasurgery.errors import KerasurgeryError, ModelFileError, one_line
from kerasurgery.files.formats import (
    CONFIG_MEMBER, H5, KERAS, METADATA_MEMBER, WEIGHTS_MEMBER, ModelFile, _check_hdf5, _parse_config,
    detect_format, h5_text, parse_json, read_h5_list,
)
from kerasurgery.files.layout import layer_entries
from kerasurgery.files.zipwindow import open_member
from kerasurgery.guards.declared import check_declared_weights, check_sequential_depth
from kerasurgery.guards.limits import (
    MAX_ASSET_BYTES, MAX_CONFIG_BYTES, MAX_EXPANSION, MAX_MEMBERS, MAX_METADATA_BYTES,
)


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
