"""The command line's arguments: sub-commands, flags, help texts, value types; its exit codes.

`parser()` builds the argparse parser; `cli.main` runs what it parsed. Flag
values are checked here only for their form (a number, a list like 0,2,5-7);
whether flags make sense together is the library's to say (`UsageError`).
"""

from __future__ import annotations

import argparse
import math

# The exit codes.
OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130  # 128 + SIGINT; SIGTERM 143, SIGHUP 129

from kerasurgery import __version__

_EXAMPLES = """\
examples:
  kerasurgery freeze pruned.keras                 # pin every exact zero of every supported layer
  kerasurgery freeze model.h5 --layer 'dense_*' --below 1e-3 --value 0 -o pinned.h5
  kerasurgery freeze model.keras --spec pins.toml # several layers, different rules
  kerasurgery inspect pruned.frozen.keras         # layers and pinned counts, no TensorFlow
  kerasurgery inspect pruned.frozen.keras --layer dense_1 --show
  kerasurgery verify finetuned.keras --against pruned.frozen.keras
  kerasurgery strip finetuned.keras               # plain Keras layers, loads without kerasurgery
  kerasurgery freeze model.keras --prune-units 0.5 -o pruned.keras  # half the units of each group
  kerasurgery shrink pruned.keras -o small.keras  # remove the units pinned at zero: a smaller model
"""

# The exit codes of `cli.main`, as the README lists them; every --help ends with them.
EXIT_CODES = """\
exit codes: 0 success, 1 error (nothing written) or failed verification, 2 usage error,
  130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP)
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
  kerasurgery freeze model.keras --smallest 0.8 --across-layers  # global magnitude pruning, 80%
  kerasurgery freeze model.keras --layer 'conv*' --n-of-m 2:4     # 2:4 sparsity along input channels
  kerasurgery freeze model.keras --smallest-units 0.25 --norm 2   # prune a quarter of the filters
  kerasurgery freeze model.keras --prune-units 0.5                 # half the units of each dependency group
  kerasurgery freeze model.keras --n-of-m 2:4 --exclude 'stem/*'  # leave the stem dense

A layer that a glob (or the default, every supported layer) selects and the
rule does not fit (n:m over 3 input channels, --bias on a layer without one)
is left as it is, with a note; a layer named by --layer is an error.

A spec file holds one [[layer]] table per layer name or glob:
  [[layer]]
  pattern = "hidden"
  below = 0.01          # the rule: below | mask | connections | index | inputs | units | fraction
                        #   | smallest | n_of_m | smallest_units | prune_units
  bias = true           # optional; `value = 0.5` pins to 0.5; no rule key = zeros
"""



def build_parser() -> argparse.ArgumentParser:
    """The `kerasurgery` parser; `args.command` names the sub-command, `args.parser` its parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="kerasurgery",
        description="Pin individual weights of a saved Keras model (Dense, EinsumDense,\n"
        "convolutions, Embedding, at any depth) to constants, and prune by magnitude.",
        epilog=_EXAMPLES + "\n" + EXIT_CODES,
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
        help="pin or prune weights of a model file, write a new file",
        description="Rewrite the selected layers (Dense, EinsumDense, convolutions, Embedding, at any\n"
        "depth) into pinned layers (MaskedDense, MaskedConv2D, ...) with the chosen entries pinned.\n"
        "Default: every supported layer, exact zeros, output IN.frozen.SUFFIX beside IN.",
        epilog=_FREEZE_EXAMPLES + "\n" + EXIT_CODES,
    )
    freeze.add_argument("input", metavar="IN", help="model file (.keras or .h5)")
    freeze.add_argument(
        "--layer", action="append", metavar="PATTERN", dest="layers",
        help="layer path, name or glob, repeatable (default: every supported layer)",
    )
    freeze.add_argument(
        "--exclude", action="append", metavar="PATTERN", dest="exclude",
        help="leave out the layers this path, name or glob selects (as --layer reads it), repeatable",
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
    rule.add_argument("--smallest", type=_float, metavar="F", help="prune: the fraction F of entries of smallest |w| in each layer, pinned at 0")
    rule.add_argument("--n-of-m", type=_n_of_m, metavar="N:M", help="prune: the N smallest |w| of every M consecutive inputs, pinned at 0 (2:4)")
    rule.add_argument("--smallest-units", type=_float, metavar="F", help="prune: the fraction F of output units (filters) of smallest norm, pinned at 0")
    rule.add_argument("--prune-units", type=_float, metavar="F",
                      help="prune: the fraction F of the units of each dependency group (a layer's "
                      "units with everything that reads them, residual branches together), "
                      "pinned at 0 so that `shrink` removes them")
    rule.add_argument("--spec", metavar="FILE.toml", help="several layers with different rules (see below)")
    freeze.add_argument("--seed", type=int, metavar="S", help="seed of --fraction")
    freeze.add_argument("--across-layers", action="store_true", help="--smallest: one ranking over all selected layers (global pruning)")
    freeze.add_argument("--norm", type=int, choices=(1, 2), help="--smallest-units (default 1), --prune-units (default 2): rank units by their L1 or L2 norm")
    freeze.add_argument("--value", type=_float, metavar="V", help="pin to V instead of the current values")
    freeze.add_argument("--bias", action="store_true", help="apply the rule to the bias too")
    freeze.set_defaults(parser=freeze)

    inspect = commands.add_parser(
        "inspect", parents=[common], formatter_class=formatter,
        help="list layers and pinned counts (fast, no TensorFlow)",
        description="Read a model file with h5py/zipfile/json only: format, Keras version,\n"
        "every layer with its class, kernel shape and pinned counts. Layers inside nested\n"
        "models are listed by path, MODEL/NAME (--json: the \"path\" field of each layer).",
        epilog="examples:\n  kerasurgery inspect model.frozen.keras\n"
        "  kerasurgery inspect model.frozen.h5 --json\n"
        "  kerasurgery inspect model.frozen.keras --layer hidden --show\n"
        "  kerasurgery inspect pruned.keras --units     # removable units (loads Keras)\n\n" + EXIT_CODES,
    )
    inspect.add_argument("file", metavar="FILE", help="model file (.keras or .h5)")
    inspect.add_argument("--layer", metavar="NAME", help="only this layer: a path (MODEL/NAME inside nested models) or a name")
    inspect.add_argument("--show", action="store_true", help="draw the pin pattern of --layer (or of every pinnable layer)")
    inspect.add_argument(
        "--units", action="store_true",
        help="also load the model with Keras and list, per layer, its units, those pinned whole "
        "and those `shrink` would remove (slower: imports TensorFlow)",
    )
    inspect.set_defaults(parser=inspect)

    strip = commands.add_parser(
        "strip", parents=[common, writing], formatter_class=formatter,
        help="turn pinned layers back into plain Keras layers (deployable)",
        description="Replace every pinned layer (MaskedDense, MaskedConv2D, ...) by its plain Keras\n"
        "class holding the effective weights;\n"
        "the result loads with plain Keras. It holds no training config and no optimizer\n"
        "state (a deployment file) unless --keep-optimizer. Default output: IN.stripped.SUFFIX.",
        epilog="examples:\n  kerasurgery strip finetuned.keras\n"
        "  kerasurgery strip finetuned.keras -o deploy.h5 --force\n"
        "  kerasurgery strip finetuned.keras --keep-optimizer   # compiled, ready to fit\n\n" + EXIT_CODES,
    )
    strip.add_argument("input", metavar="IN", help="model file (.keras or .h5)")
    strip.add_argument("--keep-optimizer", action="store_true",
                       help="keep the training config and the optimizer's state (a fresh one), "
                       "so the file loads compiled")
    strip.set_defaults(parser=strip)

    verify = commands.add_parser(
        "verify", parents=[common], formatter_class=formatter,
        help="check that a fine-tuned model kept every pinned value",
        description="Exit 0 when every pinned entry of FROZEN holds its pinned value, bit for bit,\n"
        "in the layer of CANDIDATE at the same path (masked or stripped, .keras or .h5);\n"
        "exit 1 with a table of violations otherwise, or when FROZEN pins nothing.\n"
        "A layer's path is its name, or MODEL/NAME inside a nested model, as `inspect`\n"
        "lists it. Reads files without TensorFlow.",
        epilog="examples:\n  kerasurgery verify finetuned.keras --against model.frozen.keras\n"
        "  kerasurgery verify deploy.h5 --against model.frozen.keras --json\n\n" + EXIT_CODES,
    )
    verify.add_argument("candidate", metavar="CANDIDATE", help="the model to check")
    verify.add_argument("--against", required=True, metavar="FROZEN", help="the frozen model whose pins must hold")
    verify.set_defaults(parser=verify)

    shrink = commands.add_parser(
        "shrink", parents=[common, writing], formatter_class=formatter,
        help="remove the units pinned at zero: a smaller plain Keras model",
        description="Remove every unit (Dense unit, convolution filter) that is exactly zero wherever\n"
        "it is read, with its dependency group: the following normalization's entries and the\n"
        "input rows or channels of every layer that reads it, residual branches together.\n"
        "The result holds plain Keras layers, loads without kerasurgery and computes what IN\n"
        "computes (up to float32 rounding); it is saved without a training config.\n"
        "Default output: IN.shrunk.SUFFIX.",
        epilog="examples:\n  kerasurgery freeze model.keras --prune-units 0.5 -o pruned.keras\n"
        "  kerasurgery shrink pruned.keras -o small.keras\n"
        "  kerasurgery shrink finetuned.keras -o small.h5 --force --json\n\n" + EXIT_CODES,
    )
    shrink.add_argument("input", metavar="IN", help="model file (.keras or .h5)")
    shrink.set_defaults(parser=shrink)

    prune = commands.add_parser(
        "prune", parents=[common, writing], formatter_class=formatter,
        help="prune in one shot from calibration inputs (Wanda, SparseGPT)",
        description="Prune every Dense, EinsumDense and convolution (or --layer) block by block\n"
        "from the inputs in --calibration, pinned at 0. Default output: <stem>.pruned<suffix> beside IN.",
        epilog="examples:\n  kerasurgery prune model.keras --method wanda --sparsity 0.5 --calibration x.npy\n"
        "  kerasurgery prune lm.keras --method sparsegpt --n-of-m 2:4 --calibration batch.npz\n",
    )
    prune.add_argument("input", metavar="IN", help="model file (.keras or .h5)")
    prune.add_argument("--method", choices=("wanda", "sparsegpt", "magnitude"), default="wanda",
                       help="wanda (default): |w| x input norm; sparsegpt: also updates the kept weights")
    amount = prune.add_mutually_exclusive_group(required=True)
    amount.add_argument("--sparsity", type=_float, metavar="F", help="prune the fraction F of each layer")
    amount.add_argument("--n-of-m", type=_n_of_m, metavar="N:M", help="N of every M consecutive inputs (2:4)")
    prune.add_argument("--calibration", metavar="X.npy|X.npz",
                       help="model inputs: an array, or arrays keyed by input name (not needed for magnitude)")
    prune.add_argument("--layer", action="append", metavar="PATTERN", dest="layers",
                       help="layer path, name or glob, repeatable (default: every supported layer)")
    prune.add_argument("--batch-size", type=int, default=32, metavar="B", help="calibration batch size")
    prune.set_defaults(parser=prune)
    return parser


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int_list(text: str) -> list[int | range]:
    """'0,2,5-7' -> [0, 2, range(5, 8)]; negative numbers count from the end.

    Ranges stay ranges: the rule checks them against the layer's size before
    expanding them, so `0-100000000` costs nothing until then.
    """
    result: list[int | range] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if len(part) > 40:
                raise ValueError
            first, dash, last = part[1:].partition("-")
            if dash:
                start, stop = int(part[0] + first), int(last)
                if stop < start:
                    raise ValueError
                result.append(range(start, stop + 1))
            else:
                result.append(int(part))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"expected integers like 0,2,5-7, got {_shown(text)!r}"
        ) from None
    return result


def _shown(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _n_of_m(text: str) -> tuple[int, int]:
    n, colon, m = text.partition(":")
    if not (colon and n.isdigit() and m.isdigit() and len(text) <= 20):
        raise argparse.ArgumentTypeError(f"expected N:M like 2:4, got {text!r}")
    return int(n), int(m)


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
