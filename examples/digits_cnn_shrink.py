"""Prune half the units of a small digit CNN, fine-tune, and shrink it into a smaller model.

The CNN of `digits_cnn_pruning.py` (two 3x3 convolutions of 16 and 32
filters, max-pooling, a Dense layer of 64 units and the 10-digit output),
trained on scikit-learn's bundled digits (1,797 images of 8x8 pixels, no
download), goes through the structured workflow. One difference: the output
layer gives logits (the loss applies the softmax). A softmax output layer
would prune the same way: the 64 units it reads are cut like any Dense
input; only its own units stay, as a model output does anyway.

1. `ks.prune_units(model, 0.5)`: in each dependency group (a layer's units
   with everything that reads them: the next convolution's input channels,
   the Dense rows that `Flatten` makes of each filter) the half of the units
   of smallest L2 norm is pinned at exactly 0. The output layer is a model
   output and is left alone;
2. fine-tuning with Adam: the pinned units stay exactly 0;
3. `ks.shrink(pruned)`: the units pinned at 0 are removed with their group,
   giving a plain Keras model with half the filters and units, which
   computes what the pinned model computes (up to float32 rounding);
4. the shrunk model is saved and reloaded with plain Keras (no kerasurgery),
   and `kerasurgery shrink` on the saved pinned model writes the same model.

It prints the test accuracy after each step, the parameters, and the CPU
latency (median of `--rounds` calls of `predict_on_batch` on the 450 test
images, original and shrunk in turn) of the original and the shrunk model.

Run it from a checkout:

    pip install -e ".[example]"        # scikit-learn
    python examples/digits_cnn_shrink.py --out digits_shrink_run

Options: `--epochs` (training, default 15), `--finetune-epochs` (default 5),
`--fraction` (of each group's units, default 0.5), `--rounds` (latency,
default 50), `--seed`, `--out DIR` (default: a temporary folder, deleted at
the end), `--json` (one JSON object with every number). A reduced run for
tests: `--epochs 3 --finetune-epochs 1 --rounds 3`. Exit status: 0 when the
shrunk model computes what the pinned one does and reloads exactly, 1 when
not or on a clear error, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The data, the model, and running `kerasurgery` in this process: the CNN example's.
from digits_cnn_pruning import (  # noqa: E402
    BATCH_SIZE, LAYERS, LEARNING_RATE, FAILED, OK, USAGE, _accuracy, _at_least, _CommandFailed,
    _import_keras, _missing_dependency, kerasurgery_command, load_data,
)

TOLERANCE = 1e-5  # relative: float32 sums added in another order


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the example and returns its exit status (0, 1 or 2)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else USAGE
    args.png = None
    problem = _missing_dependency(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return FAILED
    with contextlib.ExitStack() as stack:
        if args.out is None:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digits_shrink_")))
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
        prog="digits_cnn_shrink.py",
        description="Train a CNN on scikit-learn's digits, prune half the units of each "
        "dependency group (ks.prune_units), fine-tune, shrink (ks.shrink) and compare "
        "accuracy, parameters and CPU latency.")
    parser.add_argument("--out", metavar="DIR", help="folder for the model files (default: a temporary folder)")
    parser.add_argument("--epochs", type=_at_least(1), default=15, help="training epochs (default: 15)")
    parser.add_argument("--finetune-epochs", type=_at_least(1), default=5, help="fine-tuning epochs (default: 5)")
    parser.add_argument("--fraction", type=_unit_fraction, default=0.5,
                        help="fraction of each group's units to prune, 0 < F < 1 (default: 0.5)")
    parser.add_argument("--rounds", type=_at_least(1), default=50, help="latency calls per model (default: 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, weights and shuffling (default: 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every number")
    return parser


def _unit_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text!r}")
    return value


def run(args: argparse.Namespace, out: Path, say: Any = print) -> dict[str, Any]:
    """Trains, prunes units, fine-tunes, shrinks, reloads; returns every number."""
    keras = _import_keras()
    import kerasurgery as ks

    data = load_data(args.seed)
    x_test = data["test"][0]
    keras.utils.set_random_seed(args.seed)
    model = build_model()
    _compile(model)
    model.fit(*data["train"], epochs=args.epochs, batch_size=BATCH_SIZE, verbose=0)
    accuracy = {"trained": _accuracy(model, data["test"])}
    say(f"[1] trained for {args.epochs} epochs: test accuracy {accuracy['trained']:.4f}, "
        f"{model.count_params():,} parameters")

    pruned = ks.prune_units(model, args.fraction)
    accuracy["pruned"] = _accuracy(pruned, data["test"])
    say(f"[2] ks.prune_units(model, {args.fraction}): test accuracy {accuracy['pruned']:.4f}")

    keras.utils.set_random_seed(args.seed + 1)
    _compile(pruned)
    pruned.fit(*data["train"], epochs=args.finetune_epochs, batch_size=BATCH_SIZE, verbose=0)
    accuracy["finetuned"] = _accuracy(pruned, data["test"])
    pruned_path = out / "digits_cnn.units_pruned.keras"
    ks.save_model(pruned, pruned_path, overwrite=True)
    say(f"[3] fine-tuned {args.finetune_epochs} epochs, pins held: test accuracy "
        f"{accuracy['finetuned']:.4f}; saved {pruned_path.name}")

    small = ks.shrink(pruned)
    accuracy["shrunk"] = _accuracy(small, data["test"])
    pinned_out = keras.ops.convert_to_numpy(pruned(x_test, training=False))
    small_out = keras.ops.convert_to_numpy(small(x_test, training=False))
    error = float(np.max(np.abs(small_out - pinned_out)) / np.max(np.abs(pinned_out)))
    say(f"[4] ks.shrink: test accuracy {accuracy['shrunk']:.4f}; largest difference from the "
        f"pinned model's outputs {error:.1e} (relative)")

    shrunk_path = out / "digits_cnn.shrunk.keras"
    keras.saving.save_model(small, shrunk_path)
    reloaded = keras.saving.load_model(shrunk_path, compile=False)
    reload_exact = bool(np.array_equal(
        keras.ops.convert_to_numpy(reloaded(x_test, training=False)), small_out))
    cli_path = out / "digits_cnn.cli_shrunk.keras"
    report = kerasurgery_command("shrink", pruned_path, "-o", cli_path, "--force", say=say)
    by_cli = keras.saving.load_model(cli_path, compile=False)
    cli_exact = all(np.array_equal(a, b) for a, b in zip(by_cli.get_weights(), small.get_weights()))
    say(f"[5] saved {shrunk_path.name}, reloaded with plain Keras: outputs "
        f"{'bit for bit the same' if reload_exact else 'DIFFERENT'}; `kerasurgery shrink` wrote "
        f"{'the same weights' if cli_exact else 'DIFFERENT weights'}")

    latency = latencies([model, small], x_test, args.rounds)
    units = {name: [_units(model.get_layer(name)), _units(small.get_layer(name))] for name in LAYERS}
    params = {"original": int(model.count_params()), "shrunk": int(small.count_params())}
    summary = {
        "ok": bool(error <= TOLERANCE and reload_exact and cli_exact),
        "seed": args.seed, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
        "fraction": args.fraction, "backend": keras.backend.backend(),
        "accuracy": accuracy,
        "relative_error": error,
        "reload_exact": reload_exact,
        "cli_same_weights": cli_exact,
        "units": units,
        "parameters": params,
        "latency_ms": {"original": latency[0], "shrunk": latency[1], "rounds": args.rounds,
                       "batch": len(x_test)},
        "left_alone": report["left_alone"],
        "files": {"pruned": str(pruned_path), "shrunk": str(shrunk_path), "cli_shrunk": str(cli_path)},
    }
    say(_report(summary))
    return summary


def build_model() -> Any:
    """`digits_cnn_pruning.build_model` with logits out: the softmax is the loss's."""
    import keras

    layers = keras.layers
    inputs = keras.Input((8, 8, 1), name="pixels")
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name=LAYERS[0])(inputs)
    h = layers.Conv2D(32, 3, padding="same", activation="relu", name=LAYERS[1])(h)
    h = layers.MaxPooling2D(2, name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(64, activation="relu", name=LAYERS[2])(h)
    outputs = layers.Dense(10, name=LAYERS[3])(h)
    return keras.Model(inputs, outputs, name="digits_cnn")


def _compile(model: Any) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def _units(layer: Any) -> int:
    config = layer.get_config()
    return int(config["units"] if "units" in config else config["filters"])


def latencies(models: list[Any], x: np.ndarray, rounds: int) -> list[float]:
    """Median ms of `predict_on_batch(x)` per model, the models called in turn after a warm-up."""
    for model in models:
        model.predict_on_batch(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, kept in zip(models, times):
            start = time.perf_counter()
            model.predict_on_batch(x)
            kept.append(time.perf_counter() - start)
    return [statistics.median(kept) * 1000 for kept in times]


def _report(summary: dict[str, Any]) -> str:
    a, p, t = summary["accuracy"], summary["parameters"], summary["latency_ms"]
    lines = [
        "",
        f"{'test accuracy':<34}{'':>10}",
        f"  {'trained':<32}{a['trained']:>10.4f}",
        f"  {'units pruned (' + format(summary['fraction'], '.0%') + ')':<32}{a['pruned']:>10.4f}",
        f"  {'fine-tuned':<32}{a['finetuned']:>10.4f}",
        f"  {'shrunk':<32}{a['shrunk']:>10.4f}",
        "units per layer (original -> shrunk): " + ", ".join(
            f"{name} {before} -> {after}" for name, (before, after) in summary["units"].items()),
        f"{'':<24}{'original':>12}{'shrunk':>12}{'ratio':>8}",
        f"{'parameters':<24}{p['original']:>12,}{p['shrunk']:>12,}{p['shrunk'] / p['original']:>8.3f}",
        f"{'CPU ms (' + str(t['batch']) + ' images)':<24}{t['original']:>12.2f}{t['shrunk']:>12.2f}"
        f"{t['shrunk'] / t['original']:>8.3f}",
        f"{'ok' if summary['ok'] else 'FAILED'}: shrunk vs pinned outputs within "
        f"{summary['relative_error']:.1e} (<= {TOLERANCE:g}), reload "
        f"{'exact' if summary['reload_exact'] else 'NOT exact'}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
