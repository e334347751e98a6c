"""`load_model` / `save_model`: format detection, safe loading, atomic writes."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import keras

from kerasurgery import layers as _layers  # noqa: F401  (registers MaskedDense)
from kerasurgery.errors import KerasurgeryError, ModelFileError
from kerasurgery.formats import KERAS, H5, detect_format, format_for_suffix

# Longest piece of an underlying library's message we pass on: Keras appends
# whole configs to some of its errors.
_MAX_DETAIL = 300


def load_model(
    path: str | os.PathLike, *, safe_mode: bool = True, compile: bool = True
) -> keras.Model:
    """Loads a `.keras` or `.h5` model (written by Keras 3 or Keras 2).

    The format is read from the file's first bytes, not trusted from its
    suffix. `safe_mode=True` refuses files that would run code (Lambda layers).
    When the saved training configuration cannot be restored, as happens with
    many Keras 2 `.h5` files, the model is loaded without it and a
    `UserWarning` says why.

    Args:
        path: The model file.
        safe_mode: Refuse to deserialize code. Only turn off for trusted files.
        compile: Restore the saved training configuration if there is one.

    Returns:
        The model, with `MaskedDense` layers where the file has them.

    Raises:
        ModelFileError: the file is missing, unreadable, not a model, corrupt,
            or refused by safe mode. The message names the file.
    """
    path = Path(path)
    fmt = detect_format(path)
    with _named_for_keras(path, fmt) as readable:
        try:
            return _load(readable, safe_mode=safe_mode, compile=compile)
        except Exception as first:
            if not compile:
                raise _load_error(path, first) from None
            try:
                model = _load(readable, safe_mode=safe_mode, compile=False)
            except Exception as second:
                raise _load_error(path, second) from None
            warnings.warn(
                f"{path}: the saved training configuration could not be restored "
                f"({_detail(first)}); the model was loaded without it.",
                stacklevel=2,
            )
            return model


def _load(path: Path, *, safe_mode: bool, compile: bool) -> keras.Model:
    # Keras warns about optimizer state it skips; the caller cannot act on it.
    with _quiet():
        model = keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
    if not isinstance(model, keras.Model):
        raise ModelFileError(f"{path}: does not hold a Keras model.")
    return model


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


def _load_error(path: Path, error: Exception) -> KerasurgeryError:
    if isinstance(error, KerasurgeryError):
        return type(error)(f"{path}: {error}")
    message = str(error)
    if "safe_mode" in message or "safe mode" in message:
        return ModelFileError(
            f"{path}: refused by safe mode, the file would run code "
            f"({_detail(error)}). Load it without safe mode only if you trust it."
        )
    return ModelFileError(f"{path}: cannot load the model: {_detail(error)}")


def _detail(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    cut = text.find("Full object config")
    if cut > 0:
        text = text[:cut].rstrip(" .,") + "."
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return text


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
    disk and moved over the target with `os.replace`, so a failed or
    interrupted save leaves any earlier file at `path` as it was. A replaced
    file keeps its permissions.

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
    if path.exists() and not overwrite:
        raise ModelFileError(f"{path}: already exists (pass overwrite=True to replace it).")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelFileError(f"{path}: the folder {folder} does not exist.")
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=folder
        )
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write in {folder}: {e.strerror}.") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _quiet():  # Keras calls .h5 "legacy" on every save.
            model.save(tmp, overwrite=True)
        _fsync(tmp)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, KerasurgeryError):
            raise ModelFileError(f"{path}: saving failed: {_detail(e)}") from None
        raise
    _fsync_folder(folder)
    return path


def _mode_for(path: Path) -> int:
    """Permissions for the new file: those of the file it replaces, else umask's."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
