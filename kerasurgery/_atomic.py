"""Writing a file atomically without Keras: a temporary file beside the target, fsync, `os.replace`.

The same guarantees as `saving.save_model` (which needs Keras to write the
model itself), for writers that produce the file's bytes on their own (the
offline `freeze` / `strip`): a failed or interrupted write leaves any earlier
file at the target as it was, a reader never sees half a file, a replaced
file keeps its permissions, and without `overwrite` a file that appears at
the target meanwhile is not replaced. Temporary files are named as
`save_model` names them (`.<name>.<host>-<pid>.<random>.tmp.keras`), so
either removes the other's leftovers of a killed process.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kerasurgery.errors import KerasurgeryError, ModelFileError, one_line



@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yields a temporary path beside `path`; moves it over `path` when the block succeeds.

    The same guarantees as `saving.save_model`: the file is flushed to disk
    before `os.replace`, a replaced file keeps its permissions, and without
    `overwrite` a file that appeared meanwhile is not replaced.
    """
    if path.exists() and not overwrite:
        raise _exists(path)
    folder = path.parent if str(path.parent) else Path(".")
    _remove_stale_temporaries(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp.keras", dir=folder)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write in {folder}: {e.strerror}.") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        _move(tmp, path, overwrite)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError, ValueError)) and not isinstance(e, KerasurgeryError):
            raise ModelFileError(f"{path}: saving failed: {one_line(e)}") from None
        raise
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exists(path: Path) -> ModelFileError:
    return ModelFileError(f"{path}: already exists (pass overwrite=True to replace it).")


def _move(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:
        if path.exists():
            raise _exists(path) from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def _owner_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _remove_stale_temporaries(path: Path) -> None:
    host = _owner_tag().rsplit("-", 1)[0]
    prefix = f".{path.name}.{host}-"
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp.keras*"):
        pid = stale.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0o022)
        os.umask(mask)
        return 0o666 & ~mask
