"""Writing a file atomically: a temporary file beside the target, fsync, `os.replace`.

One implementation for every writer: `saving.save_model` (Keras writes the
model into the temporary) and the offline `freeze` / `strip` (which write the
bytes themselves). A failed or interrupted write leaves any earlier file at
the target as it was, a reader never sees half a file, a replaced file keeps
its permissions, and without `overwrite` a file that appears at the target
meanwhile is not replaced. SIGINT, SIGTERM and SIGHUP are held from the
temporary's creation until its cleanup is armed, so a signal at any moment
leaves nothing behind. Temporary files are named
`.<name>.<host>-<pid>.<random>.tmp<suffix>`, so a later write to the same
target removes the leftovers of a killed process. Needs the standard library
only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kerasurgery.errors import KerasurgeryError, ModelFileError, one_line

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_HELD_SIGNALS = {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                 if hasattr(signal, name)}


@contextlib.contextmanager
def atomic_path(
    path: Path,
    overwrite: bool,
    suffix: str = ".tmp.keras",
    wrapped: tuple[type[BaseException], ...] = (OSError, RuntimeError, ValueError),
) -> Iterator[Path]:
    """Yields a temporary path beside `path`; moves it over `path` when the block succeeds.

    Args:
        path: The target.
        overwrite: Replace an existing target.
        suffix: The temporary's suffix (Keras picks a format by it).
        wrapped: Errors of the block reported as a failed save
            (`ModelFileError`); others (and `KerasurgeryError`s) pass as they are.

    Raises:
        ModelFileError: the target exists without `overwrite`, the folder is
            missing or unwritable, or writing failed (with the cause).
    """
    path = Path(path)
    folder = check_target(path, overwrite, probe=False)
    _remove_stale_temporaries(path, suffix)
    tmp = _temporary_name(path, folder, suffix)
    # Blocking signals holds them for this thread only: another thread
    # (TensorFlow's) can take one, and Python then raises it here at once. So
    # the temporary is created inside the `try` that removes it, under a name
    # known before it exists: no moment leaves it behind.
    held = _hold_signals()
    ours = True
    try:
        try:
            fd = os.open(tmp, _CREATE, 0o600)
        except OSError as e:
            ours = False  # nothing was created, or the name was taken
            raise ModelFileError(f"{path}: cannot write in {folder}: {e.strerror}.") from None
        finally:
            _release_signals(held)  # one that waited is raised here, and cleaned up below
        os.close(fd)
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, _mode_for(path))
        _move(tmp, path, overwrite)
    except BaseException as e:
        if ours:
            tmp.unlink(missing_ok=True)
        if isinstance(e, wrapped) and not isinstance(e, KerasurgeryError):
            raise ModelFileError(f"{path}: saving failed: {one_line(e)}") from None
        raise
    _fsync_folder(folder)


def check_target(
    path: Path,
    overwrite: bool,
    *,
    probe: bool = True,
    exists: Callable[[Path], ModelFileError] | None = None,
) -> Path:
    """Refuses what `atomic_path` would refuse, before any work is done.

    The one place for the checks on a target: the command line makes them
    before loading anything, `atomic_path` again when it writes.

    Args:
        path: The target.
        overwrite: Replace an existing target.
        probe: Also create (and remove) a temporary beside `path`, as the
            write will: permission bits alone miss /proc, read-only mounts and
            some network file systems (and let root write anywhere).
        exists: The error for an existing target (the command line names
            `--force`); `exists_error` by default.

    Returns:
        The folder the temporary goes into.

    Raises:
        ModelFileError: the target is a folder, exists without `overwrite`,
            or its folder is missing or unwritable.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file.")
    if os.path.lexists(path) and not overwrite:  # a dangling symlink too
        raise (exists or exists_error)(path)
    # The temporary goes beside the name given, not beside a symlink's target:
    # `os.replace` replaces the link.
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelFileError(f"{path}: the folder {folder} does not exist.")
    if probe:
        if not os.access(folder, os.W_OK):
            raise ModelFileError(f"{path}: cannot write in {folder}: permission denied.")
        tmp = _temporary_name(path, folder, ".probe")
        try:
            os.close(os.open(tmp, _CREATE, 0o600))
        except OSError as e:
            raise ModelFileError(f"{path}: cannot write in {folder}: {e.strerror}.") from None
        tmp.unlink()
    return folder


def exists_error(path: Path) -> ModelFileError:
    return ModelFileError(f"{path}: already exists (pass overwrite=True to replace it).")


def _temporary_name(path: Path, folder: Path, suffix: str) -> Path:
    return folder / f".{path.name}.{_owner_tag()}.{secrets.token_hex(6)}{suffix}"


def _hold_signals() -> Any:
    """Blocks SIGINT, SIGTERM and SIGHUP for this thread; returns the old mask."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)


def _release_signals(held: Any) -> None:
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _move(tmp: Path, path: Path, overwrite: bool) -> None:
    """Puts `tmp` at `path` in one step; without `overwrite`, only if `path` is free."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        # A hard link fails if `path` exists, which `os.replace` cannot do:
        # a file created since the check above is not overwritten.
        os.link(tmp, path)
    except FileExistsError:
        raise exists_error(path) from None
    except OSError:  # No hard links on this filesystem (FAT, some network mounts).
        if os.path.lexists(path):
            raise exists_error(path) from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def _owner_tag() -> str:
    """`<host>-<pid>`: tells later saves whose temporary file this is."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _remove_stale_temporaries(path: Path, suffix: str) -> None:
    """Removes temporary files of earlier writes to `path` killed on this host."""
    host = _owner_tag().rsplit("-", 1)[0]
    prefix = f".{path.name}.{host}-"
    for stale in path.parent.glob(f"{glob.escape(prefix)}*{suffix}"):
        pid = stale.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # It exists, but belongs to another user.
        return True
    return True


def _mode_for(path: Path) -> int:
    """Permissions for the new file: those of the file it replaces, else umask's."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # Read, not set: os.umask would change it for every thread for a moment.
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
