"""`load_model` / `save_model`: format detection, safe loading, atomic writes."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from kerasurgery import _compat  # noqa: F401  (refuses an unsupported Keras first)

import keras
import numpy as np
from keras import ops

from kerasurgery.files import atomic as _atomic
from kerasurgery.model import budget as _budget
from kerasurgery.files import pin_record as _pin_record
from kerasurgery import layers as _layers  # also registers the pinned layers with Keras
from kerasurgery import pins as _pins
from kerasurgery.errors import KerasurgeryError, ModelFileError, one_line
from kerasurgery.model import generation, load_checks
from kerasurgery.model.walk import walk_layers
from kerasurgery.files.container import open_model_file
from kerasurgery.files.formats import (
    H5,
    KERAS,
    code_layers,
    detect_format,
    format_for_suffix,
    stored_weight_dtypes,
)



def load_model(
    path: str | os.PathLike, *, safe_mode: bool = True, compile: bool = True
) -> keras.Model:
    """Loads a `.keras` or `.h5` model (written by Keras 3 or Keras 2).

    The format is read from the file's first bytes, not trusted from its
    suffix, and the container is checked before Keras reads it (zip checksums,
    HDF5 structure, the config's JSON). `safe_mode=True` refuses files that
    would run code (Lambda layers) before anything is deserialized. A config
    that declares far more weights (or metric state) than the file stores is
    refused before Keras builds it (`_budget`), and one that names a layer
    class no loader knows before Keras reads it (`load_checks`). When the
    saved training configuration cannot be restored, as happens with many
    Keras 2 `.h5` files, the model is loaded without it and a `UserWarning`
    says why. Loading never writes next to the file.

    Args:
        path: The model file.
        safe_mode: Refuse to deserialize code. Only turn off for trusted files.
        compile: Restore the saved training configuration if there is one.

    Returns:
        The model, with `MaskedDense` layers where the file has them.

    Raises:
        ModelFileError: the file is missing, unreadable, not a model, corrupt,
            holds weights that do not fit its config, declares far more than
            it stores, or is refused by safe mode. The message is one line
            and names the file.
    """
    path = Path(path)
    fmt = detect_format(path)
    with open_model_file(path, fmt, check_crc=True) as opened:
        config, stored = opened.config, opened.stored_entries
        record = _pin_record.read(opened)  # checked here, applied once Keras has loaded
    if safe_mode:
        _refuse_code(path, config)
    load_checks.check_config(path, config)
    _budget.check_buildable(path, config, fmt, stored, safe_mode=safe_mode, compile=compile)
    with _named_for_keras(path, fmt) as readable:
        try:
            model = _load(readable, safe_mode=safe_mode, compile=compile)
        except Exception as first:
            # Loading without the training configuration is not tried when
            # the model is at fault already (a `.keras` layer refused its
            # weights, safe mode refused code): such a file fails fast.
            failure = load_checks.Failure(path, fmt, config, safe_mode=safe_mode)
            about_the_model = failure.about_the_model(first)
            if about_the_model is not None:
                raise about_the_model from None
            if not compile:
                raise failure.error(first) from None
            try:
                model = _load(readable, safe_mode=safe_mode, compile=False)
            except Exception as second:
                raise failure.error(second) from None
            warnings.warn(
                f"{path}: the saved training configuration could not be restored "
                f"({one_line(first)}); the model was loaded without it.",
                stacklevel=2,
            )
    if fmt == H5:
        _check_h5_weights(path, model)
        if getattr(model, "compiled", False):
            _rebuild_h5_optimizer(model)
    else:
        _restore_record(path, model, record)
    generation.fold_pins_in_generate(model)
    return model


def _restore_record(path: Path, model: keras.Model, entries: list[_pin_record.RecordEntry]) -> None:
    """Pins, in place, the layers whose pins the file keeps in its pin record.

    Keras has loaded them as plain layers holding the effective weights; the
    record adds their masks and values. The stored weights must already hold
    the pinned values at the pins (as `save_model` writes them): a file whose
    weights disagree with its record is refused rather than silently changed.
    """
    if not entries:
        return
    found = dict(walk_layers(model))
    for entry in entries:
        layer = found.get(entry.path)
        cls = None if layer is None else _layers.pinned_class_for(layer)
        if cls is None or cls.__name__ != entry.class_name:
            raise ModelFileError(
                f"{path}: the pin record names layer {entry.path!r} ({entry.class_name}), "
                "which the model does not have."
            )
        storage = {
            w: _pins.SHARED if value.shape == () else _pins.PER_ENTRY
            for w, (_, value) in entry.weights.items()
        }
        if not _layers.is_pinned(layer):
            _layers.pin_in_place(layer, cls, storage, in_config=False)
        if sorted(entry.weights) != sorted(layer.present_weights()):
            raise ModelFileError(
                f"{path}: the pin record of layer {entry.path!r} names the weights "
                f"{sorted(entry.weights)}; the layer has {sorted(layer.present_weights())}."
            )
        state = {}
        for weight, (mask, value) in entry.weights.items():
            effective = ops.convert_to_numpy(layer.raw_variable(weight))
            if mask.shape != effective.shape:
                raise ModelFileError(
                    f"{path}: the pin record of layer {entry.path!r} does not fit its "
                    f"`{weight}` {effective.shape}."
                )
            pinned = np.broadcast_to(value.astype(effective.dtype), mask.shape)
            if not np.array_equal(_pins.bits(np.where(mask, pinned, effective)), _pins.bits(effective)):
                raise ModelFileError(
                    f"{path}: layer {entry.path!r}: the stored `{weight}` disagrees with "
                    "its pinned values in the pin record."
                )
            state[weight] = _pins.WeightPins(effective=effective, mask=mask, value=value)
        try:
            layer.set_pin_state(state, raw=False)
        except KerasurgeryError as e:
            raise ModelFileError(f"{path}: {e}") from None


def _rebuild_h5_optimizer(model: keras.Model) -> None:
    """Gives a model loaded from `.h5` an optimizer that can train it.

    Keras 3.15's `.h5` loader builds the restored optimizer from the model's
    own (empty) `_trainable_variables` of a Sequential or Functional model,
    so the first `fit` fails with "Unknown variable". Compiling again from the
    same compile config gives a fresh optimizer of the same kind and settings;
    the saved optimizer state could not be used by that broken one anyway.
    """
    model.compile_from_config(model.get_compile_config())


def _load(path: Path, *, safe_mode: bool, compile: bool) -> keras.Model:
    # Keras warns about optimizer state it skips; the caller cannot act on it.
    with _quiet():
        model = keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
    if not isinstance(model, keras.Model):
        raise ModelFileError("does not hold a Keras model.")
    return model


def _refuse_code(path: Path, config: dict) -> None:
    """Refuses, in safe mode, a config whose layers carry Python code."""
    try:
        layers = code_layers(config)
    except RecursionError:
        raise ModelFileError(f"{path}: the model config is nested too deeply to check.") from None
    if layers:
        named = ", ".join(f"{name!r} ({class_name})" for name, class_name in layers)
        noun = "layer" if len(layers) == 1 else "layers"
        raise ModelFileError(
            f"{path}: refused by safe mode: {noun} {named} would run Python code "
            f"stored in the file. {load_checks.OPT_IN}"
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences Keras' own warnings (Python warnings and absl log lines)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


def _check_h5_weights(path: Path, model: keras.Model) -> None:
    """Refuses an `.h5` file whose stored weights Keras had to cast or let pass.

    Keras' `.h5` loader assigns stored arrays to the model's variables by
    order, casting each: a float array stored where a `MaskedDense` keeps a
    boolean pin mask would silently become a mask (every non-zero entry
    pinned). It also bypasses `MaskedDense.load_own_variables`, which checks
    the pins of a `.keras` file. So this pairs stored datasets with variables
    the way Keras does, refuses a boolean/number mismatch, and checks that
    every pinned value is finite.
    """
    stored = stored_weight_dtypes(path)
    layers = [layer for layer in model.layers if load_checks.legacy_weights(layer)]
    for (_, dtypes), layer in zip(stored, layers):
        for variable, dtype in zip(load_checks.legacy_weights(layer), dtypes):
            kept = str(variable.dtype)
            if (kept == "bool") != (dtype == np.bool_):
                raise ModelFileError(
                    f"{path}: layer {layer.name!r}: weight {variable.path!r} is "
                    f"stored as {dtype}, but the layer keeps it as {kept}; "
                    "refusing to cast it."
                )
    for _, layer in walk_layers(model):
        if not _layers.is_pinned(layer) or not layer.built:
            continue
        for which in layer.present_weights():
            value = getattr(layer, f"{which}_pin_value", None)
            if value is not None and not np.all(np.isfinite(ops.convert_to_numpy(value))):
                raise ModelFileError(
                    f"{path}: layer {layer.name!r}: `{which}_pin_value` holds a "
                    "non-finite pinned value."
                )


@contextlib.contextmanager
def _named_for_keras(path: Path, fmt: str) -> Iterator[Path]:
    """Yields a path whose suffix tells Keras the real format of `path`."""
    wanted = ".keras" if fmt == KERAS else ".h5"
    if path.suffix == wanted or (fmt == H5 and path.suffix == ".hdf5"):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kerasurgery-") as folder:
        link = Path(folder) / f"model{wanted}"
        link.symlink_to(path.resolve())
        yield link


def save_model(
    model: keras.Model, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Saves `model` atomically; the suffix (`.keras`, `.h5`) picks the format.

    The model is written to a temporary file in the target's folder, flushed to
    disk and moved over the target with `os.replace` (the folder is flushed
    too), so a failed or interrupted save leaves any earlier file at `path` as
    it was, and a reader never sees half a model. A replaced file keeps its
    permissions; a symlink at `path` is replaced, not the file it points to.
    Without `overwrite`, a file that appears at `path` while saving is not
    replaced either.

    A process killed while saving (SIGKILL, power loss) can leave its
    temporary file, `.<name>.<host>-<pid>.<random>.tmp<suffix>`, beside the
    target. The next save to that target on the same host removes those whose
    process is gone.

    Args:
        model: The model to save.
        path: Target file, ending in `.keras`, `.h5` or `.hdf5`.
        overwrite: Replace an existing file at `path`.

    Returns:
        The path written.

    Raises:
        ModelFileError: unsupported suffix, existing target without
            `overwrite`, missing or unwritable folder, or a failed save.
    """
    path = Path(path)
    format_for_suffix(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file.")
    if os.path.lexists(path) and not overwrite:  # a dangling symlink too
        raise _atomic.exists_error(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelFileError(f"{path}: the folder {folder} does not exist.")
    for variable in model.variables:
        _layers.require_one_process(variable, f"{path}: variable {variable.path!r}", "save")
    # Before the temporary exists: it takes a while for large layers, and a
    # signal (Ctrl-C, SIGTERM) during it must leave nothing behind.
    record = _record_of(model, path)
    # Keras raises all kinds of errors while saving: each is a failed save.
    with _atomic.atomic_path(path, overwrite, _temp_suffix(path), wrapped=(Exception,)) as tmp:
        hidden = [layer for _, layer in walk_layers(model)
                  if _layers.is_pinned(layer) and not layer.in_config]
        with _quiet(), _layers.keyed_as_plain(hidden):  # Keras calls .h5 "legacy" on every save.
            model.save(tmp, overwrite=True)
        if record:
            _pin_record.append(tmp, record)
    return path


def _record_of(model: keras.Model, path: Path) -> list[_pin_record.RecordEntry]:
    """The pins that the file's config cannot carry (layers made by their parents)."""
    entries = []
    for layer_path, layer in walk_layers(model):
        if not _layers.is_pinned(layer):
            continue
        if format_for_suffix(path) == H5:
            # The legacy format stores variables, not what the layer reads:
            # the raw weights at the pins are set to the pinned values, which
            # changes nothing the layer computes.
            for weight in layer.present_weights():
                layer.raw_variable(weight).assign(layer.effective(weight))
        if layer.in_config:
            continue
        if format_for_suffix(path) == H5:
            raise ModelFileError(
                f"{path}: layer {layer_path!r} sits inside a custom layer; the .h5 "
                "format cannot store its pins. Save as .keras."
            )
        state = layer.pin_state()
        entries.append(_pin_record.RecordEntry(
            layer_path, type(layer).__name__,
            {w: (s.mask, s.value) for w, s in state.items()},
        ))
    return entries






def _temp_suffix(path: Path) -> str:
    """`.tmp.keras` or `.tmp.h5`: Keras accepts only these lower-case suffixes,
    while the target may be spelled `MODEL.KERAS` or `model.hdf5`."""
    return ".tmp.keras" if format_for_suffix(path) == KERAS else ".tmp.h5"
