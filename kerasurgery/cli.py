"""The command line: `kerasurgery freeze | inspect | strip | verify`.

Each sub-command is a thin front over the library: it reads its flags, calls
`kerasurgery`, renders the result (rich tables for people, `--json` for
scripts) and maps errors to exit codes in one place (`main`). TensorFlow is
imported only by `freeze` and `strip`, inside the command, with its start-up
log lines kept off the terminal; `--help`, `inspect` and `verify` never import
it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kerasurgery import __version__
from kerasurgery.errors import KerasurgeryError, ModelFileError, UsageError, one_line

OK, FAILED, USAGE = 0, 1, 2

_EXAMPLES = """\
examples:
  kerasurgery freeze pruned.keras                 # pin every exact zero of every Dense layer
  kerasurgery freeze model.h5 --layer 'dense_*' --below 1e-3 --value 0 -o pinned.h5
  kerasurgery freeze model.keras --spec pins.toml # several layers, different rules
  kerasurgery inspect pruned.frozen.keras         # layers and pinned counts, no TensorFlow
  kerasurgery inspect pruned.frozen.keras --layer dense_1 --show
  kerasurgery verify finetuned.keras --against pruned.frozen.keras
  kerasurgery strip finetuned.keras               # plain Dense layers, loads without kerasurgery

exit codes: 0 success, 1 error (nothing written) or failed verification, 2 usage error,
  130 interrupted (Ctrl-C)
"""

_FREEZE_EXAMPLES = """\
examples:
  kerasurgery freeze pruned.keras                          # -> pruned.frozen.keras
  kerasurgery freeze model.h5 --below 0.01 --bias          # |w| < 0.01, bias too
  kerasurgery freeze model.keras --layer hidden --units 0,3-5 --value 0
  kerasurgery freeze model.keras --layer out --index 0,1 --index 2,0 --index 1
  kerasurgery freeze model.keras --connections wiring.npz  # 1 = trainable, 0 = pinned at 0
  kerasurgery freeze model.keras --fraction 0.5 --seed 7 -o half.keras --force
  kerasurgery freeze model.keras --spec pins.toml

A spec file holds one [[layer]] table per layer name or glob:
  [[layer]]
  pattern = "hidden"
  below = 0.01          # the rule: below | mask | connections | index | inputs | units | fraction
  bias = true           # optional; `value = 0.5` pins to 0.5; no rule key = zeros
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns its exit code (0, 1 or 2)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, and argparse's usage errors
        return _code(e)
    debug = bool(getattr(args, "debug", False))
    ui = _Ui(json_output=getattr(args, "json", False), debug=debug)
    try:
        return args.run(args, ui)
    except SystemExit as e:  # a usage error found after parsing
        return _code(e)
    except UsageError as e:  # arguments the library found contradictory: as argparse words it
        args.parser.print_usage(sys.stderr)
        print(f"{args.parser.prog}: error: {e}", file=sys.stderr)
        return USAGE
    except KerasurgeryError as e:
        if debug:
            traceback.print_exc()
        ui.error(str(e))
        return FAILED
    except KeyboardInterrupt:
        ui.error("interrupted.")
        return 130
    except BrokenPipeError:  # e.g. `kerasurgery inspect --json big.keras | head`
        _silence_stdout()
        return FAILED
    except Exception as e:
        if debug:
            traceback.print_exc()
        ui.error(
            f"unexpected {type(e).__name__}: {one_line(e)} "
            "(rerun with --debug to see the traceback, and please report it)"
        )
        return FAILED


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


# --- Arguments ---------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="kerasurgery",
        description="Pin individual Dense weights of a saved Keras model to constants.",
        epilog=_EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"kerasurgery {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and TensorFlow's log")
    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="show tracebacks and TensorFlow's log",
    )
    writing = argparse.ArgumentParser(add_help=False)
    writing.add_argument("-o", "--output", metavar="OUT", help="output file; its suffix (.keras, .h5) picks the format")
    writing.add_argument("--force", action="store_true", help="replace an existing OUT")
    writing.add_argument(
        "--unsafe", action="store_true",
        help="load with Keras' safe mode off (runs code stored in the file: trusted files only)",
    )

    freeze = commands.add_parser(
        "freeze", parents=[common, writing], formatter_class=formatter,
        help="pin Dense weights of a model file, write a new file",
        description="Rewrite Dense layers into MaskedDense layers with the chosen entries pinned.\n"
        "Default: every Dense layer, exact zeros, output IN.frozen.SUFFIX beside IN.",
        epilog=_FREEZE_EXAMPLES,
    )
    freeze.add_argument("input", metavar="IN", help="model file (.keras or .h5)")
    freeze.add_argument(
        "--layer", action="append", metavar="PATTERN", dest="layers",
        help="layer name or glob, repeatable (default: every Dense layer)",
    )
    rule = freeze.add_argument_group("rule (one of)").add_mutually_exclusive_group()
    rule.add_argument("--zeros", action="store_true", help="entries that are exactly 0 (default)")
    rule.add_argument("--below", type=_float, metavar="T", help="entries with |w| < T")
    rule.add_argument("--mask", metavar="FILE", help=".npy mask, or .npz keyed by layer name ('LAYER/bias' for biases); True = pinned")
    rule.add_argument("--connections", metavar="FILE", help=".npy or .npz (keyed by layer) matrix: 1 = trainable, 0 = pinned (at 0 unless --value)")
    rule.add_argument("--index", action="append", type=_index, metavar="I,J", help="kernel entry (I, J); a single number J is bias entry J; repeatable")
    rule.add_argument("--inputs", type=_int_list, metavar="LIST", help="whole kernel rows, e.g. 0,2,5-7")
    rule.add_argument("--units", type=_int_list, metavar="LIST", help="whole output units: kernel columns and their bias entries")
    rule.add_argument("--fraction", type=_float, metavar="F", help="a random fraction F of the entries (needs --seed)")
    rule.add_argument("--spec", metavar="FILE.toml", help="several layers with different rules (see below)")
    freeze.add_argument("--seed", type=int, metavar="S", help="seed of --fraction")
    freeze.add_argument("--value", type=_float, metavar="V", help="pin to V instead of the current values")
    freeze.add_argument("--bias", action="store_true", help="apply the rule to the bias too")
    freeze.set_defaults(run=_freeze, parser=freeze)

    inspect = commands.add_parser(
        "inspect", parents=[common], formatter_class=formatter,
        help="list layers and pinned counts (fast, no TensorFlow)",
        description="Read a model file with h5py/zipfile/json only: format, Keras version,\n"
        "every layer with its class, kernel shape and pinned counts. Layers inside nested\n"
        "models are listed by path, MODEL/NAME (--json: the \"path\" field of each layer).",
        epilog="examples:\n  kerasurgery inspect model.frozen.keras\n"
        "  kerasurgery inspect model.frozen.h5 --json\n"
        "  kerasurgery inspect model.frozen.keras --layer hidden --show\n",
    )
    inspect.add_argument("file", metavar="FILE", help="model file (.keras or .h5)")
    inspect.add_argument("--layer", metavar="NAME", help="only this layer: a path (MODEL/NAME inside nested models) or a name")
    inspect.add_argument("--show", action="store_true", help="draw the pin pattern of --layer (or of every Dense layer)")
    inspect.set_defaults(run=_inspect, parser=inspect)

    strip = commands.add_parser(
        "strip", parents=[common, writing], formatter_class=formatter,
        help="turn MaskedDense back into plain Dense (deployable)",
        description="Replace every MaskedDense by a plain Dense holding the effective weights;\n"
        "the result loads with plain Keras. Default output: IN.stripped.SUFFIX.",
        epilog="examples:\n  kerasurgery strip finetuned.keras\n"
        "  kerasurgery strip finetuned.keras -o deploy.h5 --force\n",
    )
    strip.add_argument("input", metavar="IN", help="model file (.keras or .h5)")
    strip.set_defaults(run=_strip, parser=strip)

    verify = commands.add_parser(
        "verify", parents=[common], formatter_class=formatter,
        help="check that a fine-tuned model kept every pinned value",
        description="Exit 0 when every pinned entry of FROZEN holds its pinned value, bit for bit,\n"
        "in the layer of CANDIDATE at the same path (masked or stripped, .keras or .h5);\n"
        "exit 1 with a table of violations otherwise, or when FROZEN pins nothing.\n"
        "A layer's path is its name, or MODEL/NAME inside a nested model, as `inspect`\n"
        "lists it. Reads files without TensorFlow.",
        epilog="examples:\n  kerasurgery verify finetuned.keras --against model.frozen.keras\n"
        "  kerasurgery verify deploy.h5 --against model.frozen.keras --json\n",
    )
    verify.add_argument("candidate", metavar="CANDIDATE", help="the model to check")
    verify.add_argument("--against", required=True, metavar="FROZEN", help="the frozen model whose pins must hold")
    verify.set_defaults(run=_verify, parser=verify)
    return parser


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    """'0,2,5-7' -> [0, 2, 5, 6, 7]; negative numbers count from the end."""
    result: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            first, dash, last = part[1:].partition("-")
            if dash:
                start, stop = int(part[0] + first), int(last)
                if stop < start:
                    raise ValueError
                result.extend(range(start, stop + 1))
            else:
                result.append(int(part))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected integers like 0,2,5-7, got {text!r}"
        ) from None
    return result


def _index(text: str) -> tuple[int, ...]:
    try:
        index = tuple(int(part) for part in text.split(","))
    except ValueError:
        index = ()
    if len(index) not in (1, 2):
        raise argparse.ArgumentTypeError(
            f"expected I,J (a kernel entry) or J (a bias entry), got {text!r}"
        )
    return index


def _pins_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `freeze` pins the flags describe; flag combinations that make no sense are usage errors."""
    from kerasurgery import spec

    parser = args.parser
    if args.spec is not None:
        for flag, given in (("--layer", args.layers), ("--value", args.value is not None),
                            ("--bias", args.bias), ("--seed", args.seed is not None)):
            if given:
                parser.error(f"{flag} cannot be combined with --spec: put it in the spec file")
        return spec.load_spec(args.spec)
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
    )


def _source_and_output(args: argparse.Namespace, tag: str) -> tuple[Path, Path]:
    """IN and OUT of freeze/strip, checked before TensorFlow is imported.

    Refuses an input that is not a model file and an output that saving would
    refuse, so that a mistake costs no loading and no freezing.
    """
    from kerasurgery.formats import detect_format

    source = Path(args.input)
    fmt = detect_format(source)
    output = _output_path(source, args.output, tag, fmt)
    _check_output(source, output, args.force)
    return source, output


def _output_path(source: Path, given: str | None, tag: str, fmt: str) -> Path:
    """`-o OUT`, or `<stem>.<tag><suffix>` beside the input (`fmt`: the input's format)."""
    from kerasurgery.formats import KERAS

    if given is not None:
        return Path(given)
    suffix = source.suffix if source.suffix.lower() in (".keras", ".h5", ".hdf5") else None
    if suffix is None:  # e.g. a model saved as "model.bin": name the output by its format
        suffix = ".keras" if fmt == KERAS else ".h5"
    stem = source.name[: len(source.name) - len(source.suffix)] if source.suffix else source.name
    return source.with_name(f"{stem}.{tag}{suffix}")


def _check_output(source: Path, output: Path, force: bool) -> None:
    """Refuses before any work what saving would refuse after it."""
    from kerasurgery.formats import format_for_suffix

    same = source.resolve() == output.resolve()
    with contextlib.suppress(OSError):
        same = same or (output.exists() and os.path.samefile(source, output))
    if same:
        raise ModelFileError(f"{output}: is the input file; write the result elsewhere (-o OUT).")
    if output.is_dir():
        raise ModelFileError(f"{output}: is a folder, not a model file.")
    format_for_suffix(output)
    if output.exists() and not force:
        raise ModelFileError(f"{output}: already exists; pass --force to replace it.")
    folder = output.resolve().parent
    if not folder.is_dir():
        raise ModelFileError(f"{output}: the folder {output.parent} does not exist.")
    if not os.access(folder, os.W_OK):
        raise ModelFileError(f"{output}: cannot write in {folder}: permission denied.")
    # os.access lets root write anywhere, yet /proc, read-only mounts and some
    # network file systems still refuse: create (and remove) a file to be sure.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.probe-", dir=folder)
    except OSError as e:
        raise ModelFileError(f"{output}: cannot write in {folder}: {e.strerror}.") from None
    os.close(fd)
    os.unlink(probe)


# --- Commands ----------------------------------------------------------------


def _freeze(args: argparse.Namespace, ui: _Ui) -> int:
    pins = _pins_from_args(args)
    source, output = _source_and_output(args, "frozen")
    with ui.tensorflow():
        from kerasurgery import surgery

        model, compiled = _load(source, args, ui)
        if not surgery.dense_layer_names(model):
            raise KerasurgeryError(f"{source}: the model has no Dense layer to freeze.")
        with ui.status("Pinning weights"):
            frozen = surgery.freeze(model, pins)
        _save(frozen, output, args, ui)
        layers = _dense_rows(frozen)
    document = _written(args, "freeze", source, output, compiled, ui, layers=layers)
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
    return OK


def _strip(args: argparse.Namespace, ui: _Ui) -> int:
    source, output = _source_and_output(args, "stripped")
    with ui.tensorflow():
        from kerasurgery import surgery

        model, compiled = _load(source, args, ui)
        layers = [row for row in _dense_rows(model) if row["class_name"] == "MaskedDense"]
        if not layers:
            raise KerasurgeryError(
                f"{source}: the model has no MaskedDense layer; there is nothing to strip."
            )
        with ui.status("Replacing MaskedDense layers"):
            stripped = surgery.strip(model)
        _save(stripped, output, args, ui)
    document = _written(args, "strip", source, output, compiled, ui, stripped=layers)
    if ui.json_output:
        ui.print_json(document)
        return OK
    ui.layer_table(layers, title=f"{output}: now plain Dense, with these pins baked in")
    ui.say(
        f"stripped {source} -> {output}: {len(layers)} MaskedDense "
        f"layer{'s' if len(layers) != 1 else ''} turned into Dense; "
        + ("training config kept." if compiled else "no training config.")
    )
    return OK


def _written(
    args: argparse.Namespace, verb: str, source: Path, output: Path, compiled: bool,
    ui: _Ui, **layers: Any,
) -> dict[str, Any]:
    from kerasurgery.formats import format_for_suffix

    return {
        "command": verb,
        "input": str(source),
        "output": str(output),
        "format": format_for_suffix(output),
        "training_config": compiled,
        "warnings": ui.warnings,
        **layers,
    }


def _dense_rows(model: Any) -> list[dict[str, Any]]:
    """The Dense and MaskedDense layers of a model, as `inspect --json` lists layers."""
    import keras
    import numpy as np

    from kerasurgery.layers import MaskedDense

    rows, seen = [], set()
    for layer, path in _walk(model):
        dense = type(layer) is keras.layers.Dense
        if id(layer) in seen or not (dense or isinstance(layer, MaskedDense)) or not layer.built:
            continue
        seen.add(id(layer))
        pinned_kernel = pinned_bias = 0
        if not dense:
            pinned_kernel = int(np.count_nonzero(keras.ops.convert_to_numpy(layer.kernel_pin_mask)))
            if layer.use_bias:
                pinned_bias = int(np.count_nonzero(keras.ops.convert_to_numpy(layer.bias_pin_mask)))
        rows.append({
            "name": layer.name,
            "class_name": type(layer).__name__,
            "kernel_shape": [int(n) for n in layer.kernel.shape],
            "pinned_kernel": pinned_kernel,
            "pinned_bias": pinned_bias,
            "pinned": pinned_kernel + pinned_bias,
            "path": path,
        })
    return rows


def _load(source: Path, args: argparse.Namespace, ui: _Ui) -> tuple[Any, bool]:
    from kerasurgery import saving

    if args.unsafe:
        # Only this load runs with safe mode off: Keras' process-wide switch
        # stays on, and freeze/strip reuse the layers that hold code as they are.
        ui.warn(f"--unsafe: loading {source} with safe mode off; code stored in it may run.")
    with ui.status(f"Loading {source}"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = saving.load_model(source, safe_mode=not args.unsafe, compile=True)
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            ui.warn(str(warning.message))
    return model, bool(getattr(model, "compiled", False))


def _save(model: Any, output: Path, args: argparse.Namespace, ui: _Ui) -> None:
    from kerasurgery import saving

    with ui.status(f"Saving {output}"):
        saving.save_model(model, output, overwrite=args.force)


def _walk(model: Any, prefix: str = "") -> Iterator[tuple[Any, str]]:
    """(layer, path) of every layer inside `model`; paths as `inspect` gives them."""
    for layer in getattr(model, "layers", []):
        yield layer, prefix + layer.name
        yield from _walk(layer, f"{prefix}{layer.name}/")


def _inspect(args: argparse.Namespace, ui: _Ui) -> int:
    from kerasurgery.inspection import inspect_file, read_dense_weights

    if args.show and args.json:
        args.parser.error("--show draws for people; use --json without --show")
    info = inspect_file(args.file)
    document = info.to_json()
    layers = document["layers"]
    if args.layer is not None:
        # A path picks one layer; a name, every layer of that name (nested models may repeat it).
        layers = [layer for layer in layers if args.layer in (layer["path"], layer["name"])]
        if not layers:
            names = ", ".join(layer["path"] for layer in document["layers"]) or "none"
            raise KerasurgeryError(f"{args.file}: no layer named {args.layer!r}. Layers: {names}")
        document = {**document, "layers": layers}
    if ui.json_output:
        ui.print_json(document)
        return OK
    ui.say(f"{document['file']}: {document['format']} file written by Keras {document['keras_version'] or 'unknown'}")
    ui.layer_table(layers, title=None)
    if args.show:
        weights = read_dense_weights(args.file)
        shown = [layer["path"] for layer in layers if layer["path"] in weights]
        if args.layer is not None and not shown:
            raise KerasurgeryError(
                f"{args.file}: layer {args.layer!r} is a {layers[0]['class_name']}; "
                "--show draws Dense and MaskedDense layers."
            )
        for path in shown:
            ui.pattern(weights[path])
    return OK


def _verify(args: argparse.Namespace, ui: _Ui) -> int:
    import numpy as np

    from kerasurgery.inspection import read_dense_weights

    # Layers are matched by path: equal names in different nested models are
    # different layers, and freeze and strip keep the nesting.
    frozen = read_dense_weights(args.against)
    candidate = read_dense_weights(args.candidate)
    if not any(layer.kernel_mask.any() or (layer.bias_mask is not None and layer.bias_mask.any())
               for layer in frozen.values()):
        # A wrong --against file (the model before freezing) must not pass.
        raise KerasurgeryError(
            f"{args.against}: FROZEN has no pinned entries: is it the frozen file?"
        )
    rows: list[dict[str, Any]] = []
    checked = 0
    for path, layer in frozen.items():
        for which in ("kernel", "bias"):
            mask = getattr(layer, f"{which}_mask")
            if mask is None or not mask.any():
                continue
            pinned = np.asarray(getattr(layer, f"{which}_value"))
            count = int(mask.sum())
            checked += count
            row = {"layer": path, "weight": which, "pinned": count}
            other = candidate.get(path)
            actual = None if other is None else getattr(other, which)
            if other is None:
                rows.append({**row, "violations": count, "max_deviation": None,
                             "reason": "layer missing from CANDIDATE"})
            elif actual is None:
                rows.append({**row, "violations": count, "max_deviation": None,
                             "reason": "no bias in CANDIDATE"})
            elif actual.shape != mask.shape:
                rows.append({**row, "violations": count, "max_deviation": None, "reason":
                             f"shape {list(actual.shape)} in CANDIDATE, {list(mask.shape)} in FROZEN"})
            else:
                want, got = pinned[mask], np.asarray(actual)[mask]
                wrong = ~_bit_equal(want, got)
                if wrong.any():
                    deviation = np.abs(got[wrong].astype(np.float64) - want[wrong].astype(np.float64))
                    largest = float(np.nanmax(deviation)) if not np.isnan(deviation).all() else math.nan
                    rows.append({**row, "violations": int(wrong.sum()),
                                 "max_deviation": largest, "reason": "value changed"})
    ok = not rows
    if ui.json_output:
        ui.print_json({
            "candidate": args.candidate, "against": args.against, "ok": ok,
            "checked": checked, "violations": rows,
        })
    elif ok:
        ui.say(f"ok: all {checked:,} pinned entries of {args.against} hold in {args.candidate}.", style="green")
    else:
        ui.violation_table(rows)
        total = sum(row["violations"] for row in rows)
        ui.say(f"FAILED: {total:,} of {checked:,} pinned entries do not hold in {args.candidate}.", style="bold red")
    return OK if ok else FAILED


def _bit_equal(a: Any, b: Any) -> Any:
    import numpy as np

    if a.dtype == b.dtype and a.dtype.kind == "f":
        unsigned = np.dtype(f"u{a.dtype.itemsize}")
        return a.view(unsigned) == b.view(unsigned)
    return a == b


# --- Output ------------------------------------------------------------------


class _Ui:
    """Where output goes: rich to stdout, one-line messages to stderr, JSON for scripts."""

    def __init__(self, *, json_output: bool, debug: bool) -> None:
        self.json_output = json_output
        self.debug = debug
        self.warnings: list[str] = []

    def _console(self, *, stderr: bool = False) -> Any:
        from rich.console import Console

        return Console(stderr=stderr, highlight=False)

    def error(self, message: str) -> None:
        from rich.text import Text

        line = Text("error: ", style="bold red") + Text(" ".join(message.split()), style="red")
        self._console(stderr=True).print(line, soft_wrap=True)

    def warn(self, message: str) -> None:
        from rich.text import Text

        message = " ".join(message.split())
        self.warnings.append(message)
        line = Text("warning: ", style="bold yellow") + Text(message)
        self._console(stderr=True).print(line, soft_wrap=True)

    def say(self, message: str, style: str | None = None) -> None:
        from rich.text import Text

        self._console().print(Text(message, style=style or ""), soft_wrap=True)

    def print_json(self, document: dict[str, Any]) -> None:
        print(json.dumps(document, indent=2))

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        console = self._console(stderr=True)
        if self.json_output or not console.is_terminal:
            yield
            return
        with console.status(f"{message}…"):
            yield

    @contextlib.contextmanager
    def tensorflow(self) -> Iterator[None]:
        """Imports Keras (and TensorFlow) with their native start-up log kept off the terminal."""
        if self.debug:
            import keras  # noqa: F401

            yield
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _native_stderr_silenced():
            with self.status("Starting Keras"):
                import keras  # noqa: F401
            yield

    def layer_table(self, layers: list[dict[str, Any]], title: str | None) -> None:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column, justify in (("layer", "left"), ("class", "left"), ("kernel", "right"),
                                ("pinned kernel", "right"), ("pinned bias", "right"), ("pinned %", "right")):
            table.add_column(column, justify=justify)
        for layer in layers:
            shape = layer["kernel_shape"]
            size = math.prod(shape) if shape else 0
            share = f"{100 * layer['pinned_kernel'] / size:.1f}" if size else ""
            table.add_row(
                layer["path"], layer["class_name"],
                "×".join(map(str, shape)) if shape else "",
                f"{layer['pinned_kernel']:,}" if shape else "",
                f"{layer['pinned_bias']:,}" if shape else "",
                share,
            )
        self._console().print(table)

    def violation_table(self, rows: list[dict[str, Any]]) -> None:
        from rich.table import Table

        table = Table(title="pins that do not hold", title_justify="left")
        for column in ("layer", "weight", "violations", "pinned", "largest deviation", "reason"):
            table.add_column(column, justify="right" if column in ("violations", "pinned", "largest deviation") else "left")
        for row in rows:
            deviation = row["max_deviation"]
            table.add_row(
                row["layer"], row["weight"], f"{row['violations']:,}", f"{row['pinned']:,}",
                "" if deviation is None else f"{deviation:.6g}", row["reason"],
            )
        self._console().print(table)

    def pattern(self, weights: Any) -> None:
        """Draws a layer's kernel pin mask (rows = inputs, columns = units), down-sampled."""
        import numpy as np
        from rich.text import Text

        mask = np.asarray(weights.kernel_mask, dtype=bool)
        width = max(8, shutil.get_terminal_size((80, 24)).columns - 8)
        rows, cols = mask.shape
        row_step, col_step = math.ceil(rows / 32), math.ceil(cols / width)
        grid = _block_fraction(mask, row_step, col_step)
        pinned = int(mask.sum())
        header = (f"{weights.path}: kernel {rows}×{cols}, {pinned:,} of {mask.size:,} pinned "
                  f"({100 * pinned / max(mask.size, 1):.1f}%)")
        if row_step > 1 or col_step > 1:
            header += f"; each cell = {row_step}×{col_step} entries"
        text = Text(header + "\n", style="bold")
        for line in grid:
            text += _cells(line) + Text("\n")
        if weights.bias_mask is not None:
            bias = np.asarray(weights.bias_mask, dtype=bool)[None, :]
            text += Text("bias:\n", style="bold") + _cells(_block_fraction(bias, 1, col_step)[0]) + Text("\n")
        text += Text("█ all pinned  ▓ most  ▒ some  ░ few  · none", style="dim")
        self._console().print(text, soft_wrap=True)


def _block_fraction(mask: Any, row_step: int, col_step: int) -> Any:
    import numpy as np

    counts = mask.astype(np.int64)
    rows, cols = mask.shape
    r, c = np.arange(0, rows, row_step), np.arange(0, cols, col_step)
    if not rows or not cols:
        return np.zeros((len(r), len(c)))
    sums = np.add.reduceat(np.add.reduceat(counts, r, axis=0), c, axis=1)
    sizes = np.outer(np.diff(np.append(r, rows)), np.diff(np.append(c, cols)))
    return sums / sizes


def _cells(fractions: Any) -> Any:
    from rich.text import Text

    text = Text()
    for f in fractions:
        if f == 0:
            text.append("·", style="dim")
        elif f == 1:
            text.append("█", style="cyan")
        else:
            text.append("░▒▓"[min(2, int(f * 3))], style="cyan")
    return text


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null; Python's own stderr keeps the terminal.

    TensorFlow's C++ start-up messages (absl, oneDNN, cudart) bypass Python and
    ignore TF_CPP_MIN_LOG_LEVEL, so only the descriptor can hold them back.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    original = sys.stderr
    try:
        writes_to_fd2 = original.fileno() == 2
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        writes_to_fd2 = False  # e.g. captured by a test runner: leave it be
    replacement = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        if writes_to_fd2:
            replacement = open(  # noqa: SIM115 - closed below
                os.dup(saved), "w", encoding=getattr(original, "encoding", None) or "utf-8",
                errors="backslashreplace", buffering=1,
            )
            sys.stderr = replacement
        yield
    finally:
        if replacement is not None:
            replacement.flush()
            sys.stderr = original
            replacement.close()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
