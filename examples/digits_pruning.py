"""Prune a digit classifier by 80%, then fine-tune it with the zeros pinned.

The whole kerasurgery workflow on a small real dataset that ships inside
scikit-learn (1,797 handwritten digits, 8x8 pixels, no download):

1. train an MLP (64 -> 128 -> 64 -> 10) and measure its test accuracy;
2. prune it: set the smallest 80% (by |w|) of every Dense kernel to exactly 0,
   with numpy, and measure again;
3. save it and run `kerasurgery freeze` on the file (the zeros become pins);
4. fine-tune the frozen model with AdamW and weight decay, and measure;
5. `kerasurgery verify` the fine-tuned file against the frozen one;
6. `kerasurgery strip` it, reload the result with plain Keras, measure, and
   count its exact zeros: the sparsity kept must equal the pruned sparsity
   exactly, layer by layer.

For comparison it also fine-tunes the pruned model as plain Keras would, with
nothing pinned, and reports how much of the sparsity that leaves (only the
zeros whose gradient is always 0 survive it: weights from pixels that are
blank in every image, and into units that never activate).

Run it from a checkout:

    pip install -e ".[example]"        # scikit-learn and matplotlib
    python examples/digits_pruning.py --out digits_run --png digits.png

Options: `--epochs`, `--finetune-epochs`, `--sparsity` (default 0.8),
`--seed`, `--out DIR` (default: a temporary folder, deleted at the end),
`--png FILE` (the pin pattern of the first layer and the fine-tuning curve;
needs matplotlib), `--json` (one JSON object with every number, for scripts).
Exit status: 0 when verify passes and the sparsity is kept exactly, 1 when
either fails or on a clear error, 2 on a usage error.

The `kerasurgery` commands run in this process through
`kerasurgery.cli.commands(argv)`, the function the `kerasurgery` executable calls,
with the same arguments a user would type (each is printed as a shell command).
Running them as subprocesses would do the same work but start TensorFlow again
for every command, which costs seconds each; the command line's own tests
cover the executable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

OK, FAILED, USAGE = 0, 1, 2
LAYERS = ("hidden_1", "hidden_2", "digit")
LEARNING_RATE = 1e-3
FINETUNE_LEARNING_RATE = 5e-4
WEIGHT_DECAY = 0.05
BATCH_SIZE = 32


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the example and returns its exit status (0, 1 or 2)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help and argparse's usage errors
        return e.code if isinstance(e.code, int) else USAGE
    problem = _missing_dependency(args)
    if problem is None and args.png and not Path(args.png).resolve().parent.is_dir():
        problem = f"--png {args.png}: the folder {Path(args.png).parent} does not exist"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return FAILED
    with contextlib.ExitStack() as stack:
        if args.out is None:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digits_pruning_")))
        else:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
        try:
            summary = run(args, out, say=(lambda _: None) if args.json else print)
        except _CommandFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return FAILED
    if args.json:
        print(json.dumps(summary, indent=2))
    return OK if summary["ok"] else FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digits_pruning.py",
        description="Prune an MLP on scikit-learn's digits by magnitude, freeze the zeros "
        "with kerasurgery, fine-tune, verify, strip, and report accuracy and sparsity.",
    )
    parser.add_argument("--out", metavar="DIR", help="folder for the model files (default: a temporary folder, deleted at the end)")
    parser.add_argument("--epochs", type=_positive_int, default=30, help="training epochs before pruning (default: 30)")
    parser.add_argument("--finetune-epochs", type=_positive_int, default=15, help="fine-tuning epochs after pruning (default: 15)")
    parser.add_argument("--sparsity", type=_fraction, default=0.8, help="fraction of each Dense kernel set to 0, 0 < S < 1 (default: 0.8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, initial weights and shuffling (default: 0)")
    parser.add_argument("--png", metavar="FILE", help="save the pin pattern of the first layer and the fine-tuning curve (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every number instead of the report")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text!r}")
    return value


def _missing_dependency(args: argparse.Namespace) -> str | None:
    """Checked before any work, so a missing extra costs nothing."""
    needed = [("sklearn", "scikit-learn", "the digits dataset")]
    if args.png:
        needed.append(("matplotlib", "matplotlib", "--png"))
    for module, package, purpose in needed:
        try:
            __import__(module)
        except ImportError:
            return (f"{purpose} needs {package}, which is not installed: "
                    f"pip install {package} (or pip install 'kerasurgery[example]')")
    return None


class _CommandFailed(Exception):
    """A `kerasurgery` command exited with an error (its message is on stderr)."""


# --- The workflow --------------------------------------------------------------


def run(args: argparse.Namespace, out: Path, say: Any = print) -> dict[str, Any]:
    """Trains, prunes, freezes, fine-tunes, verifies and strips; returns every number."""
    keras = _import_keras()

    import kerasurgery as ks

    data = load_data(args.seed)
    x_train, y_train = data["train"]
    say(f"digits: {len(x_train)} training, {len(data['validation'][0])} validation and "
        f"{len(data['test'][0])} test images of 8x8 pixels; seed {args.seed}, Keras backend "
        f"{keras.backend.backend()}")

    keras.utils.set_random_seed(args.seed)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=BATCH_SIZE, verbose=0)
    accuracy = {"before_pruning": _accuracy(model, data["test"])}
    validation = {"before_pruning": _accuracy(model, data["validation"])}
    say(f"\n[1] trained 64-128-64-10 for {args.epochs} epochs: "
        f"test accuracy {accuracy['before_pruning']:.4f}")

    pruned_zeros = prune(model, args.sparsity)
    accuracy["after_pruning"] = _accuracy(model, data["test"])
    validation["after_pruning"] = _accuracy(model, data["validation"])
    pruned_path = out / "digits.pruned.keras"
    ks.save_model(model, pruned_path, overwrite=True)
    say(f"[2] set the smallest {args.sparsity:.0%} of each Dense kernel to 0: "
        f"test accuracy {accuracy['after_pruning']:.4f}; saved {pruned_path}")

    frozen_path = out / "digits.frozen.keras"
    frozen_report = kerasurgery_command(
        "freeze", pruned_path, "-o", frozen_path, "--force", say=say)
    pinned = {row["name"]: row["pinned_kernel"] for row in frozen_report["layers"]}
    say(f"    pinned {sum(pinned.values()):,} kernel entries in {len(pinned)} layers")

    keras.utils.set_random_seed(args.seed + 1)  # fine-tuning does not depend on the steps above
    frozen = ks.load_model(frozen_path)
    pattern = np.asarray(frozen.get_layer(LAYERS[0]).pins().kernel)
    curve = finetune(frozen, data, args.finetune_epochs)
    accuracy["after_finetuning"] = _accuracy(frozen, data["test"])
    validation["curve"] = curve
    finetuned_path = out / "digits.finetuned.keras"
    ks.save_model(frozen, finetuned_path, overwrite=True)
    say(f"[3] fine-tuned the frozen model for {args.finetune_epochs} epochs with "
        f"AdamW(weight_decay={WEIGHT_DECAY}): test accuracy {accuracy['after_finetuning']:.4f}")

    verify = kerasurgery_command("verify", finetuned_path, "--against", frozen_path, say=say)
    say(f"    {'ok' if verify['ok'] else 'FAILED'}: {verify['checked']:,} pinned entries checked, "
        f"{sum(row['violations'] for row in verify['violations']):,} changed")

    stripped_path = out / "digits.stripped.keras"
    kerasurgery_command("strip", finetuned_path, "-o", stripped_path, "--force", say=say)
    stripped = keras.saving.load_model(stripped_path, compile=False)
    classes = sorted({type(layer).__name__ for layer in stripped.layers})
    accuracy["stripped"] = _accuracy(stripped, data["test"])
    sparsity = measure_sparsity(stripped, pruned_zeros)
    say(f"[4] reloaded {stripped_path.name} with keras.saving.load_model (layers: "
        f"{', '.join(classes)}): test accuracy {accuracy['stripped']:.4f}")

    # What plain Keras does to the same pruned model under the same fine-tuning.
    keras.utils.set_random_seed(args.seed + 1)
    control = keras.saving.load_model(pruned_path)
    finetune(control, data, args.finetune_epochs)
    control_sparsity = measure_sparsity(control, pruned_zeros)
    control_summary = {
        "accuracy": _accuracy(control, data["test"]),
        "zeros": control_sparsity["zeros"],
        "sparsity": control_sparsity["sparsity"],
    }

    kept = sparsity["kept"] and all(
        pinned.get(name) == layer["pruned"] for name, layer in sparsity["layers"].items())
    summary = {
        "ok": bool(verify["ok"] and kept),
        "seed": args.seed,
        "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "sparsity_target": args.sparsity,
        "backend": keras.backend.backend(),
        "samples": {split: len(xy[0]) for split, xy in data.items()},
        "accuracy": accuracy,
        "validation_accuracy": validation,
        "pinned": pinned,
        "sparsity": sparsity,
        "sparsity_kept": kept,
        "verify": {"ok": verify["ok"], "checked": verify["checked"], "violations": verify["violations"]},
        "stripped_layer_classes": classes,
        "without_pins": control_summary,
        "files": {"pruned": str(pruned_path), "frozen": str(frozen_path),
                  "finetuned": str(finetuned_path), "stripped": str(stripped_path)},
        "png": None,
    }
    if args.png:
        save_figure(args.png, pattern, LAYERS[0], summary)
        summary["png"] = str(args.png)
    say(_report(summary))
    return summary


def load_data(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits, pixels scaled to [0, 1], split 60/15/25 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.2, stratify=y_rest, random_state=seed)
    return {"train": (x_train, y_train), "validation": (x_val, y_val), "test": (x_test, y_test)}


def build_model() -> Any:
    import keras

    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(128, activation="relu", name=LAYERS[0])(inputs)
    h = keras.layers.Dense(64, activation="relu", name=LAYERS[1])(h)
    outputs = keras.layers.Dense(10, activation="softmax", name=LAYERS[2])(h)
    return keras.Model(inputs, outputs, name="digits_mlp")


def prune(model: Any, sparsity: float) -> dict[str, np.ndarray]:
    """Sets the `sparsity` fraction of smallest-|w| entries of every Dense kernel to 0.

    Exactly `round(sparsity * size)` entries per kernel, ties broken by position
    (a stable sort), so the count is exact whatever the weights. Biases are
    kept. Returns each layer's boolean mask of the entries set to 0.
    """
    zeroed = {}
    for name in LAYERS:
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        count = int(round(sparsity * kernel.size))
        smallest = np.argsort(np.abs(kernel), axis=None, kind="stable")[:count]
        mask = np.zeros(kernel.size, dtype=bool)
        mask[smallest] = True
        mask = mask.reshape(kernel.shape)
        kernel[mask] = 0.0
        layer.set_weights([kernel, bias])
        zeroed[name] = mask
    return zeroed


def finetune(model: Any, data: dict[str, tuple[np.ndarray, np.ndarray]], epochs: int) -> list[float]:
    """AdamW with weight decay: it pulls every raw weight, pinned or not, each step.

    Returns the validation accuracy before fine-tuning and after each epoch.
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.AdamW(FINETUNE_LEARNING_RATE, weight_decay=WEIGHT_DECAY),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    curve = [_accuracy(model, data["validation"])]

    class _Curve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            curve.append(_accuracy(self.model, data["validation"]))

    x, y = data["train"]
    model.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, verbose=0, callbacks=[_Curve()])
    return curve


def measure_sparsity(model: Any, pruned: dict[str, np.ndarray]) -> dict[str, Any]:
    """Counts the exact zeros of each Dense kernel and compares them with the pruned entries.

    A layer keeps its sparsity when every pruned entry is still exactly 0 and
    no other entry is (so the counts, and the ratios, are equal).
    """
    import keras

    layers, zeros, size, pruned_total = {}, 0, 0, 0
    for name, mask in pruned.items():
        kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
        is_zero = kernel == 0.0
        layers[name] = {
            "zeros": int(is_zero.sum()),
            "size": int(kernel.size),
            "sparsity": int(is_zero.sum()) / kernel.size,
            "pruned": int(mask.sum()),
            "pruned_sparsity": int(mask.sum()) / kernel.size,
            "kept": bool(np.array_equal(is_zero, mask)),
        }
        zeros += layers[name]["zeros"]
        size += kernel.size
        pruned_total += layers[name]["pruned"]
    return {
        "layers": layers,
        "zeros": zeros,
        "size": size,
        "sparsity": zeros / size,
        "pruned": pruned_total,
        "pruned_sparsity": pruned_total / size,
        "kept": all(layer["kept"] for layer in layers.values()),
    }


def kerasurgery_command(*argv: str | os.PathLike, say: Any = print) -> dict[str, Any]:
    """Runs `kerasurgery ARGV --json` in this process and returns its JSON report.

    A failed `verify` (exit 1 with a report) is returned, not raised: the caller
    decides. Any other failure raises `_CommandFailed`.
    """
    from kerasurgery.cli import main as kerasurgery_main

    words = [str(a) for a in argv]
    say("    $ kerasurgery " + " ".join(words))
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = kerasurgery_main([*words, "--json"])
    text = captured.getvalue()
    report = None
    with contextlib.suppress(ValueError):
        report = json.loads(text)
    if code != OK and not (words[0] == "verify" and isinstance(report, dict)):
        raise _CommandFailed(f"`kerasurgery {' '.join(words)}` exited with status {code}")
    if not isinstance(report, dict):
        raise _CommandFailed(f"`kerasurgery {' '.join(words)} --json` printed no JSON object")
    return report


def _accuracy(model: Any, xy: tuple[np.ndarray, np.ndarray]) -> float:
    import keras

    x, y = xy
    # A direct call, not `predict`: predict traces a new function per model,
    # and this example measures four models many times.
    probabilities = keras.ops.convert_to_numpy(model(x, training=False))
    return float(np.mean(np.argmax(probabilities, axis=-1) == y))


def _import_keras() -> Any:
    """Imports Keras with TensorFlow's C++ start-up lines kept off the terminal.

    Those lines (absl, oneDNN, cudart) bypass Python and ignore
    TF_CPP_MIN_LOG_LEVEL, so only pointing file descriptor 2 elsewhere holds
    them back.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return keras


# --- Output --------------------------------------------------------------------


def _report(summary: dict[str, Any]) -> str:
    accuracy, sparsity = summary["accuracy"], summary["sparsity"]
    control = summary["without_pins"]
    lines = [
        "",
        f"test accuracy ({summary['samples']['test']} images)",
        f"  before pruning          {accuracy['before_pruning']:.4f}",
        f"  after pruning           {accuracy['after_pruning']:.4f}",
        f"  after fine-tuning       {accuracy['after_finetuning']:.4f}",
        f"  stripped, plain Keras   {accuracy['stripped']:.4f}",
        "",
        "exact zeros in the stripped model's kernels",
        f"  {'layer':<10} {'zeros':>13} {'sparsity':>9} {'pruned':>9}  kept",
    ]
    for name, layer in sparsity["layers"].items():
        lines.append(
            f"  {name:<10} {layer['zeros']:>6,}/{layer['size']:<6,} {layer['sparsity']:>9.4%} "
            f"{layer['pruned_sparsity']:>9.4%}  {'yes' if layer['kept'] else 'NO'}")
    lines += [
        f"  {'overall':<10} {sparsity['zeros']:>6,}/{sparsity['size']:<6,} {sparsity['sparsity']:>9.4%} "
        f"{sparsity['pruned_sparsity']:>9.4%}  {'yes' if sparsity['kept'] else 'NO'}",
        "",
        f"without pins (plain Keras, same fine-tuning): test accuracy {control['accuracy']:.4f}, "
        f"{control['zeros']:,} exact zeros left ({control['sparsity']:.2%} sparsity)",
    ]
    if summary["png"]:
        lines.append(f"figure: {summary['png']}")
    verdict = "ok" if summary["ok"] else "FAILED"
    lines.append(f"{verdict}: verify {'passed' if summary['verify']['ok'] else 'failed'}, "
                 f"sparsity {'kept exactly' if summary['sparsity_kept'] else 'NOT kept'}")
    return "\n".join(lines)


def save_figure(path: str | os.PathLike, pattern: np.ndarray, layer: str, summary: dict[str, Any]) -> None:
    """Left: which kernel entries of `layer` are pinned. Right: validation accuracy while fine-tuning."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    left.imshow(pattern.T, cmap="gray_r", interpolation="nearest", aspect="auto")
    left.set_title(f"{layer}: {pattern.mean():.1%} of the kernel pinned at 0 (black)")
    left.set_xlabel("input pixel (row-major 8x8)")
    left.set_ylabel("unit")

    curve = summary["validation_accuracy"]["curve"]
    right.plot(range(len(curve)), curve, marker="o", label="pruned model, zeros pinned")
    right.axhline(summary["validation_accuracy"]["before_pruning"], linestyle="--",
                  color="gray", label="before pruning")
    right.set_xlabel("fine-tuning epoch")
    right.set_ylabel("validation accuracy")
    right.set_title(f"fine-tuning with {summary['sparsity']['sparsity']:.0%} of weights pinned at 0")
    right.legend(loc="lower right")
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
