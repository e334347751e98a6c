"""Model files in and out of a command: IN and OUT checked, loaded, saved, reported.

The steps every command that writes a model shares (`freeze`, `strip`,
`shrink`): IN and OUT are checked before TensorFlow is imported, the model
is loaded with its warnings shown the command line's way, saved atomically,
and the written file described for `--json`. Keras is imported only inside
the functions, so that `--help` stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

from kerasurgery.cli.render import Ui
from kerasurgery.errors import ModelFileError
from kerasurgery.files import atomic as _atomic


def source_and_output(args: argparse.Namespace, tag: str) -> tuple[Path, Path]:
    """IN and OUT of freeze/strip, checked before TensorFlow is imported.

    Refuses an input that is not a model file and an output that saving would
    refuse, so that a mistake costs no loading and no freezing.
    """
    from kerasurgery.files.container import open_model_file
    from kerasurgery.files.formats import detect_format

    source = Path(args.input)
    fmt = detect_format(source)
    output = output_path(source, args.output, tag, fmt)
    check_output(source, output, args.force)
    # The container and size checks, before TensorFlow costs seconds and
    # hundreds of MB; loading repeats them with the checksums.
    with open_model_file(source, fmt, check_crc=False):
        pass
    return source, output


def output_path(source: Path, given: str | None, tag: str, fmt: str) -> Path:
    """`-o OUT`, or `<stem>.<tag><suffix>` beside the input (`fmt`: the input's format)."""
    from kerasurgery.files.formats import KERAS

    if given is not None:
        if given.endswith(("/", os.sep)):
            # Path() drops a trailing slash: "x.keras/" would silently write "x.keras".
            raise ModelFileError(f"{given}: names a folder (it ends in '/'), not a model file.")
        return Path(given)
    suffix = source.suffix if source.suffix.lower() in (".keras", ".h5", ".hdf5") else None
    if suffix is None:  # e.g. a model saved as "model.bin": name the output by its format
        suffix = ".keras" if fmt == KERAS else ".h5"
    stem = source.name[: len(source.name) - len(source.suffix)] if source.suffix else source.name
    return source.with_name(f"{stem}.{tag}{suffix}")


def check_output(source: Path, output: Path, force: bool) -> None:
    """Refuses before any work what saving would refuse after it.

    The target checks are the atomic writer's own (`_atomic.check_target`),
    in the command line's words.
    """
    from kerasurgery.files.formats import format_for_suffix

    same = source.resolve() == output.resolve()
    with contextlib.suppress(OSError):
        same = same or (output.exists() and os.path.samefile(source, output))
    if same:
        raise ModelFileError(f"{output}: is the input file; write the result elsewhere (-o OUT).")
    if output.is_dir():  # before the suffix check: "." has no suffix
        raise ModelFileError(f"{output}: is a folder, not a model file.")
    format_for_suffix(output)
    _atomic.check_target(output, force, exists=lambda path: ModelFileError(
        f"{path}: already exists; pass --force to replace it."))


def written(
    args: argparse.Namespace, verb: str, source: Path, output: Path, compiled: bool,
    ui: Ui, **layers: Any,
) -> dict[str, Any]:
    from kerasurgery.files.formats import format_for_suffix

    return {
        "command": verb,
        "input": str(source),
        "output": str(output),
        "format": format_for_suffix(output),
        "training_config": compiled,
        "warnings": ui.warnings,
        **layers,
    }


def load(
    source: Path, args: argparse.Namespace, ui: Ui, *, compile: bool = True
) -> tuple[Any, bool]:
    from kerasurgery.model import saving

    if args.unsafe:
        # Only this load runs with safe mode off: Keras' process-wide switch
        # stays on, and freeze/strip reuse the layers that hold code as they are.
        ui.warn(f"--unsafe: loading {source} with safe mode off; code stored in it may run.")
    with ui.status(f"Loading {source}"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = saving.load_model(source, safe_mode=not args.unsafe, compile=compile)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            ui.warn(str(warning.message))
    return model, bool(getattr(model, "compiled", False))


def save(model: Any, output: Path, args: argparse.Namespace, ui: Ui) -> None:
    from kerasurgery.model import saving

    with ui.status(f"Saving {output}"):
        saving.save_model(model, output, overwrite=args.force)
