"""The command line: `kerasurgery freeze | inspect | strip | verify | prune | shrink`.

Each sub-command is a thin front over the library: it reads its flags
(`_arguments`), calls `kerasurgery`, renders the result (`_render`: rich
tables for people, `--json` for scripts) and maps errors to exit codes in one
place (`main`): 0 success, 1 a clear error or a failed `verify`, 2 a usage
error, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP. TensorFlow is imported only by
the commands that load a model (`freeze`, `strip`, `prune`, `shrink`,
`inspect --units`), inside the command, with its start-up log lines kept off
the terminal; `--help`, `inspect` and `verify` never import it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kerasurgery.cli import arguments as _arguments
from kerasurgery.cli import model_io as _io
from kerasurgery.cli import structured as _structured
from kerasurgery.cli.arguments import FAILED, INTERRUPTED, OK, USAGE  # noqa: F401  (the exit codes, here too)
from kerasurgery.cli.render import Ui, printable
from kerasurgery.errors import (
    KerasurgeryError, LayerSkippedWarning, NothingPinnedWarning, UsageError, one_line,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns its exit code.

    0 success, 1 a clear error, 2 a usage error, 128 + the signal number when
    interrupted: 130 (SIGINT, Ctrl-C), 143 (SIGTERM), 129 (SIGHUP). A signal
    during a save removes the temporary file and leaves any earlier output
    intact. Called without `argv` (as the installed program), a signal that
    arrives after the command finished still exits 128 + its number.
    """
    top_level = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = _signals_interrupt()
    try:
        code = _main(argv)
    except KeyboardInterrupt as e:  # one that came while an error was being reported
        code = _interrupted_code(e)
    finally:
        _restore_signals(previous, exit_late=top_level)
    if top_level and previous is not None:
        # Python puts back the default SIGINT action while it shuts down, and
        # TensorFlow's teardown takes a while: a Ctrl-C then would kill the
        # process (-2) after a complete run. Everything is written and closed.
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that it cleans up as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _signals_interrupt() -> dict[int, Any] | None:
    """Makes SIGTERM and SIGHUP raise `Terminated` (SIGINT raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may handle signals
    previous = {}
    for signum in (signal.SIGINT, *_SIGNALS):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                      else _raise_terminated)
    return previous


def _restore_signals(previous: dict[int, Any] | None, *, exit_late: bool) -> None:
    if previous is None:
        return
    for signum, handler in previous.items():
        signal.signal(signum, _exit_late if exit_late else handler)


def _exit_late(signum: int, frame: Any) -> None:
    # The command is done and its output complete: a signal now ends the
    # process at once with the code it stands for, not with a traceback.
    _exit_now(128 + signum)


def _interrupted_code(error: KeyboardInterrupt) -> int:
    return 128 + (error.signum if isinstance(error, Terminated) else signal.SIGINT)


def _main(argv: list[str]) -> int:
    wants_json = "--json" in argv
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = _arguments.build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, and argparse's usage errors
        sys.stderr.write(captured.getvalue())
        code = _code(e)
        if wants_json and code != OK:
            _print_json_error(_argparse_message(captured.getvalue()), code)
        return code
    sys.stderr.write(captured.getvalue())
    debug = bool(getattr(args, "debug", False))
    ui = Ui(json_output=getattr(args, "json", False), debug=debug)

    def fail(message: str, code: int) -> int:
        if ui.json_output:
            _print_json_error(message, code)
        return code

    try:
        return _COMMANDS[args.command](args, ui)
    except SystemExit as e:  # a usage error found after parsing
        return fail("usage error", _code(e))
    except UsageError as e:  # arguments the library found contradictory: as argparse words it
        args.parser.print_usage(sys.stderr)
        print(printable(f"{args.parser.prog}: error: {e}"), file=sys.stderr)
        return fail(str(e), USAGE)
    except KerasurgeryError as e:
        if debug:
            traceback.print_exc()
        ui.error(str(e))
        return fail(str(e), FAILED)
    except KeyboardInterrupt as e:
        name = "terminated" if isinstance(e, Terminated) else "interrupted"
        if isinstance(e, Terminated):
            name += f" ({signal.Signals(e.signum).name})"
        ui.error(f"{name}.")
        return fail(f"{name}.", _interrupted_code(e))
    except BrokenPipeError:  # e.g. `kerasurgery inspect --json big.keras | head`
        _silence_stdout()
        return FAILED
    except Exception as e:
        if debug:
            traceback.print_exc()
        message = (f"unexpected {type(e).__name__}: {one_line(e)} "
                   "(rerun with --debug to see the traceback, and please report it)")
        ui.error(message)
        return fail(message, FAILED)


def _print_json_error(message: str, code: int) -> None:
    """`{"error", "exit_code"}` on stdout, beside the line on stderr, for scripts."""
    with contextlib.suppress(OSError, ValueError):
        print(json.dumps({"error": " ".join(message.split()), "exit_code": code}, indent=2))
        sys.stdout.flush()


def _argparse_message(text: str) -> str:
    lines = [line for line in text.splitlines() if ": error: " in line]
    return lines[-1].split(": error: ", 1)[1] if lines else "usage error"


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush
    # does not raise a second time.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _code(exit: SystemExit) -> int:
    if exit.code is None:
        return OK
    return exit.code if isinstance(exit.code, int) else USAGE


def _pins_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `freeze` pins the flags describe; flag combinations that make no sense are usage errors."""
    from kerasurgery.cli import spec

    from kerasurgery.files.formats import stored_data_bytes

    # No mask or connections array can need more bytes than this: a weight
    # takes at least 2 bytes an entry, a float64 matrix 8.
    limit = 8 * stored_data_bytes(args.input) + (64 << 20)
    if args.exclude and args.prune_units is not None:
        raise UsageError("--exclude cannot be combined with --prune-units: select the "
                         "groups to prune with --layer")
    if args.spec is not None:
        for flag, given in (("--layer", args.layers), ("--value", args.value is not None),
                            ("--bias", args.bias), ("--seed", args.seed is not None),
                            ("--across-layers", args.across_layers),
                            ("--norm", args.norm is not None)):
            if given:
                raise UsageError(f"{flag} cannot be combined with --spec: put it in the spec file")
        return spec.load_spec(args.spec, max_array_bytes=limit)
    rule, argument = "zeros", None
    for name in spec.RULES[1:]:
        if getattr(args, name) is not None:
            rule, argument = name, getattr(args, name)
    # Contradicting rule arguments raise UsageError there: exit 2 in `main`.
    return spec.pins_for(
        rule, argument,
        patterns=args.layers or ["*"],
        value=args.value,
        bias=True if args.bias else None,
        seed=args.seed,
        across_layers=args.across_layers,
        norm=args.norm,
        max_array_bytes=limit,
    )


# --- Commands ----------------------------------------------------------------


def _freeze(args: argparse.Namespace, ui: Ui) -> int:
    pins = _pins_from_args(args)
    source, output = _io.source_and_output(args, "frozen")
    with _freeze_warnings(ui) as skipped:
        # Unit pruning needs the dependency groups, which need the live model.
        written = None if _structured.unit_pruning(pins) else _offline(args, ui, "freeze", source, output, pins)
        if written is not None:
            layers, compiled = written.rows, written.compiled
        else:
            layers, compiled = _freeze_with_keras(args, ui, source, output, pins)
    document = _io.written(args, "freeze", source, output, compiled, ui, layers=layers, skipped=skipped)
    if ui.json_output:
        ui.print_json(document)
        return OK
    kernel = sum(layer["pinned_kernel"] for layer in layers)
    bias = sum(layer["pinned_bias"] for layer in layers)
    ui.layer_table(layers, title=str(output))
    ui.say(
        f"froze {source} -> {output}: {kernel:,} kernel and {bias:,} bias entries pinned; "
        + ("training config kept." if compiled else "no training config.")
    )
    if _structured.unit_pruning(pins) and kernel:
        ui.say(f"the pruned units are pinned at 0: `kerasurgery shrink {output}` removes them.")
    return OK


@contextlib.contextmanager
def _freeze_warnings(ui: Ui) -> Any:
    """Renders what `freeze` warns of: a note per layer a pattern skipped, a warning per rule that pins nothing.

    Yields the list of skipped layers that `--json` reports
    (`{"layer", "pattern", "reason"}`), filled when the block ends.
    """
    skipped: list[dict[str, str]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayerSkippedWarning)
        warnings.simplefilter("always", NothingPinnedWarning)
        yield skipped
    for warning in caught:
        message = warning.message
        if isinstance(message, LayerSkippedWarning):
            skipped.append({"layer": message.path, "pattern": message.key, "reason": message.reason})
            ui.note(f"left layer {message.path!r} as it is ({message.key!r} selects it by "
                    f"pattern): {message.reason}")
        elif isinstance(message, NothingPinnedWarning):
            ui.warn(str(message))
        else:  # not ours: as Python would have shown it
            warnings.showwarning(message, warning.category, warning.filename, warning.lineno)


def _offline(
    args: argparse.Namespace, ui: Ui, verb: str, source: Path, output: Path, pins: Any = None
) -> Any:
    """Runs freeze/strip on a `.keras` file without TensorFlow where it can (`_offline`).

    Returns what it wrote, or `None` when the file needs Keras; `--debug` says which path ran.
    """
    from kerasurgery.files import offline

    reason = offline.offline_reason(source, output, unsafe=args.unsafe)
    if reason is None:
        try:
            with ui.status(f"Writing {output}"):
                if verb == "freeze":
                    exclude = {"exclude": args.exclude} if args.exclude else {}
                    written = offline.freeze_file(source, output, pins, overwrite=args.force, **exclude)
                else:
                    written = offline.strip_file(source, output, overwrite=args.force,
                                                 keep_optimizer=args.keep_optimizer)
        except offline.NotOffline as e:
            reason = str(e)
        else:
            if ui.debug:
                print(f"kerasurgery: {verb}: offline path (numpy, h5py; no TensorFlow)", file=sys.stderr)
            return written
    if ui.debug:
        print(printable(f"kerasurgery: {verb}: Keras path ({reason})"), file=sys.stderr)
    return None


def _freeze_with_keras(
    args: argparse.Namespace, ui: Ui, source: Path, output: Path, pins: Any
) -> tuple[list[dict[str, Any]], bool]:
    with ui.tensorflow():
        from kerasurgery.model import surgery
        from kerasurgery.model.walk import pinnable_layers

        model, compiled = _io.load(source, args, ui)
        if not pinnable_layers(model):
            from kerasurgery.layers import supported_class_names

            raise KerasurgeryError(
                f"{source}: the model has no layer of a supported kind to freeze "
                f"({', '.join(supported_class_names())})."
            )
        with ui.status("Pinning weights"):
            exclude = {"exclude": args.exclude} if args.exclude else {}
            units = _structured.unit_pruning(pins)
            rules = {key: rule for key, rule in pins.items() if key not in units}
            frozen = surgery.freeze(model, rules, **exclude) if rules or not units else model
            frozen = _structured.prune_units(frozen, units)
        _io.save(frozen, output, args, ui)
        layers = _dense_rows(frozen)
    return layers, compiled


def _strip(args: argparse.Namespace, ui: Ui) -> int:
    source, output = _io.source_and_output(args, "stripped")
    written = _offline(args, ui, "strip", source, output)
    if written is not None:
        layers, compiled = written.rows, written.compiled
    else:
        layers, compiled = _strip_with_keras(args, ui, source, output)
    document = _io.written(args, "strip", source, output, compiled, ui, stripped=layers)
    if ui.json_output:
        ui.print_json(document)
        return OK
    from kerasurgery.kinds import kind_of

    # The rows describe the input's pinned layers; the output holds their Keras classes.
    plain = [{**layer, "class_name": kind_of(layer["class_name"]) or layer["class_name"]}
             for layer in layers]
    ui.layer_table(plain, title=f"{output}: pinned layers now plain Keras layers, "
                   "their pinned entries baked in at their pinned values", pinned="baked-in")
    ui.say(
        f"stripped {source} -> {output}: {len(layers)} pinned "
        f"layer{'s' if len(layers) != 1 else ''} turned into plain Keras layers; "
        + ("training config and optimizer state kept." if compiled
           else "no training config (--keep-optimizer keeps it).")
    )
    return OK


def _strip_with_keras(
    args: argparse.Namespace, ui: Ui, source: Path, output: Path
) -> tuple[list[dict[str, Any]], bool]:
    with ui.tensorflow():
        from kerasurgery.kinds import is_pinned_class
        from kerasurgery.model import surgery

        model, compiled = _io.load(source, args, ui)
        layers = [row for row in _dense_rows(model) if is_pinned_class(row["class_name"])]
        if not layers:
            raise KerasurgeryError(
                f"{source}: the model has no pinned layer; there is nothing to strip."
            )
        with ui.status("Turning pinned layers back into Keras layers"):
            stripped = surgery.strip(model, keep_optimizer=args.keep_optimizer)
        _io.save(stripped, output, args, ui)
    return layers, compiled and args.keep_optimizer


def _dense_rows(model: Any) -> list[dict[str, Any]]:
    """The layers of a supported kind, at any depth, as `inspect --json` lists layers."""
    import numpy as np

    from kerasurgery import layers as layers_lib
    from kerasurgery.model.walk import pinnable_layers

    rows = []
    for path, layer in pinnable_layers(model).items():
        cls = layers_lib.pinned_class_for(layer)
        main = cls.pinned_weights[0]
        pinned_kernel = pinned_bias = 0
        if layers_lib.is_pinned(layer):
            for weight, state in layer.pin_state().items():
                count = int(np.count_nonzero(state.mask))
                if weight == "bias":
                    pinned_bias = count
                else:
                    pinned_kernel += count
        rows.append({
            "name": layer.name,
            "class_name": type(layer).__name__,
            "kernel_shape": [int(n) for n in getattr(layer, main).shape],
            "pinned_kernel": pinned_kernel,
            "pinned_bias": pinned_bias,
            "pinned": pinned_kernel + pinned_bias,
            "path": path,
        })
    return rows


def _inspect(args: argparse.Namespace, ui: Ui) -> int:
    from kerasurgery.files.inspection import inspect_file, read_weights

    if args.show and args.json:
        raise UsageError("--show draws for people; use --json without --show")
    if args.show and args.units:
        raise UsageError("--show and --units are two views; ask for one at a time")
    info = inspect_file(args.file)
    document = info.to_json(totals=True)
    layers = document["layers"]
    if args.layer is not None:
        # A path picks one layer; a name, every layer of that name (nested models may repeat it).
        layers = [layer for layer in layers if args.layer in (layer["path"], layer["name"])]
        if not layers:
            names = ", ".join(layer["path"] for layer in document["layers"]) or "none"
            raise KerasurgeryError(f"{args.file}: no layer named {args.layer!r}. Layers: {names}")
        document = {k: v for k, v in document.items() if k != "totals"}
        document["layers"] = layers
    if args.units:
        document.update(_structured.units_of(args, ui))
    if ui.json_output:
        ui.print_json(document)
        return OK
    ui.say(f"{document['file']}: {document['format']} file written by Keras {document['keras_version'] or 'unknown'}")
    ui.layer_table(layers, title=None, totals=document.get("totals"))
    if args.units:
        ui.units_table(document["units"], document["left_alone"])
    if args.show:
        weights = read_weights(args.file, [layer["path"] for layer in layers])
        shown = [layer["path"] for layer in layers if layer["path"] in weights]
        if args.layer is not None and not shown:
            raise KerasurgeryError(
                f"{args.file}: layer {args.layer!r} is a {layers[0]['class_name']} and has "
                "no weights to draw; --show draws layers with weights (Dense, "
                "convolutions, EinsumDense, Embedding and their pinned classes)."
            )
        for path in shown:
            ui.pattern(weights[path])
    return OK


def _verify(args: argparse.Namespace, ui: Ui) -> int:
    from kerasurgery.files.inspection import check_pins

    result = check_pins(args.candidate, args.against)
    if ui.json_output:
        ui.print_json({
            "candidate": args.candidate, "against": args.against, "ok": result.ok,
            "checked": result.checked, "violations": result.violations,
        })
    elif result.ok:
        ui.say(f"ok: all {result.checked:,} pinned entries of {args.against} hold in "
               f"{args.candidate}.", style="green")
    else:
        ui.violation_table(result.violations)
        total = sum(row["violations"] for row in result.violations)
        ui.say(f"FAILED: {total:,} of {result.checked:,} pinned entries do not hold in "
               f"{args.candidate}.", style="bold red")
    return OK if result.ok else FAILED


def _prune(args: argparse.Namespace, ui: Ui) -> int:
    """`kerasurgery prune`: `kerasurgery.prune` from a calibration file, written beside IN."""
    import numpy as np

    if args.method != "magnitude" and args.calibration is None:
        raise UsageError(f"--method {args.method} needs --calibration X.npy|X.npz")
    source, output = _io.source_and_output(args, "pruned")
    calibration = None
    if args.calibration is not None:
        try:
            loaded = np.load(args.calibration, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    loaded = dict(loaded)
                if not all(isinstance(v, np.ndarray) for v in loaded.values()):
                    raise ValueError("it holds members that are not arrays")
            calibration = loaded
        except (OSError, ValueError) as e:
            raise KerasurgeryError(f"{args.calibration}: not a .npy or .npz of arrays ({one_line(e)}).") from None
    with ui.tensorflow():
        from kerasurgery.model.prune import prune

        model, compiled = _io.load(source, args, ui)
        with ui.status(f"Pruning with {args.method}"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pruned = prune(model, calibration, method=args.method, sparsity=args.sparsity,
                           n_of_m=args.n_of_m, layers=args.layers or "*", batch_size=args.batch_size)
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                ui.warn(str(warning.message))
        _io.save(pruned, output, args, ui)
        layers = [row for row in _dense_rows(pruned) if row["pinned"]]
    document = _io.written(args, "prune", source, output, compiled, ui, layers=layers)
    if ui.json_output:
        ui.print_json(document)
        return OK
    ui.layer_table(layers, title=str(output))
    kernel = sum(layer["pinned_kernel"] for layer in layers)
    ui.say(f"pruned {source} -> {output} with {args.method}: {kernel:,} kernel entries pinned at 0.")
    return OK


_COMMANDS = {
    "freeze": _freeze, "inspect": _inspect, "strip": _strip, "verify": _verify, "prune": _prune,
    "shrink": _structured.shrink,
}
