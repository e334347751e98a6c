"""Prune a small digit CNN two ways, with the pruned weights pinned at exactly 0.

A CNN (two 3x3 convolutions and a Dense head) trained on scikit-learn's
bundled digits (1,797 images of 8x8 pixels, no download) is pruned along two
routes, each fine-tuned with AdamW and weight decay:

(a) gradual pruning to 90% during fine-tuning: `kerasurgery.freeze(model,
    {"*": Pin()})` makes every layer pin-capable, and the `GradualPruning`
    callback grows pins at 0.0 on Zhu & Gupta's polynomial schedule over the
    first half of the fine-tuning epochs; the second half recovers with the
    pins fixed. Its "before fine-tuning" accuracy is that of the same
    fraction cut in one shot (`kerasurgery.rules.smallest`), for reference;
(b) 2:4 sparsity in one shot, `kerasurgery freeze --n-of-m 2:4` on the saved
    model (the two smallest |w| of every four consecutive inputs), then
    fine-tuning.

Both routes prune the same layers: those whose input axis (a convolution's
input channels, a Dense kernel's rows) holds a multiple of 4 entries, as 2:4
groups need. The first convolution sees one input channel, so it stays dense
(it holds 144 of the 38,160 kernel entries).

Each route is checked the same way: `kerasurgery verify` (every pin held),
`kerasurgery strip`, a reload with plain Keras, the test accuracy again, and
the exact zeros counted in the stripped kernels against the pinned entries.
For comparison, each route's fine-tuning is repeated with plain Keras and
nothing pinned: (a) the same schedule, with the smallest entries set to 0 by
hand at the same steps; (b) the same 2:4 entries set to 0 by hand before
fine-tuning. The table shows how many of those zeros survive.

Run it from a checkout:

    pip install -e ".[example]"        # scikit-learn and matplotlib
    python examples/digits_cnn_pruning.py --out digits_cnn_run --png digits_cnn.png

Options: `--epochs` (training, default 15), `--finetune-epochs` (default 10,
at least 2; route (a) prunes during the first half), `--sparsity` (route (a)'s
target, default 0.9), `--seed`, `--out DIR` (default: a temporary folder,
deleted at the end), `--png FILE` (fine-tuning accuracy curves and the
sparsity schedule; needs matplotlib), `--json` (one JSON object with every
number, for scripts). A reduced run for tests: `--epochs 3 --finetune-epochs 2`.
Exit status: 0 when both verifies pass and the sparsity is exactly the pinned
entries, 1 when not or on a clear error, 2 on a usage error.

The `kerasurgery` commands run in this process through
`kerasurgery.cli.commands(argv)`, the function the `kerasurgery` executable calls,
with the arguments a user would type (each is printed as a shell command):
subprocesses would start TensorFlow again for every command, seconds each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

OK, FAILED, USAGE = 0, 1, 2
LAYERS = ("conv_1", "conv_2", "hidden", "digit")
N, M = 2, 4
LEARNING_RATE = 1e-3
FINETUNE_LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
BATCH_SIZE = 32
TRAIN_BATCHES = 34


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
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digits_cnn_")))
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
        prog="digits_cnn_pruning.py",
        description="Train a CNN on scikit-learn's digits; prune it gradually (to 90% by "
        "default) and 2:4 in one shot, the pruned weights pinned at 0; fine-tune, verify, "
        "strip, and compare with the same fine-tuning in plain Keras.",
    )
    parser.add_argument("--out", metavar="DIR", help="folder for the model files (default: a temporary folder, deleted at the end)")
    parser.add_argument("--epochs", type=_at_least(1), default=15, help="training epochs before pruning (default: 15)")
    parser.add_argument("--finetune-epochs", type=_at_least(2), default=10, help="fine-tuning epochs of each route; gradual pruning runs during the first half (default: 10)")
    parser.add_argument("--sparsity", type=_fraction, default=0.9, help="target sparsity of gradual pruning, 0 < S < 1 (default: 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, initial weights and shuffling (default: 0)")
    parser.add_argument("--png", metavar="FILE", help="save the fine-tuning accuracy curves and the sparsity schedule (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with every number instead of the report")
    return parser


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


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
    """Trains, prunes both ways, fine-tunes, verifies and strips; returns every number."""
    keras = _import_keras()

    data = load_data(args.seed)
    say(f"digits: {len(data['train'][0])} training, {len(data['validation'][0])} validation and "
        f"{len(data['test'][0])} test images of 8x8 pixels; seed {args.seed}, Keras backend "
        f"{keras.backend.backend()}")

    keras.utils.set_random_seed(args.seed)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*data["train"], epochs=args.epochs, batch_size=BATCH_SIZE, verbose=0)
    dense_path = out / "digits_cnn.dense.keras"
    _save(model, dense_path)
    dense = {"test": _accuracy(model, data["test"]), "validation": _accuracy(model, data["validation"])}
    say(f"\n[1] trained conv 3x3x16 - conv 3x3x32 - maxpool - dense 64 - dense 10 for "
        f"{args.epochs} epochs: test accuracy {dense['test']:.4f}; saved {dense_path.name}")

    kernels = {name: model.get_layer(name).get_weights()[0] for name in LAYERS}
    pruned = [name for name, k in kernels.items() if k.shape[-2] % M == 0]
    skipped = {name: k.shape[-2] for name, k in kernels.items() if name not in pruned}
    for name, inputs in skipped.items():
        say(f"    {name} is left dense in both routes: its input axis holds {inputs} "
            f"entr{'y' if inputs == 1 else 'ies'}, not a multiple of {M}, so it has no {N}:{M} groups")
    say(f"    pruned layers: {', '.join(pruned)} "
        f"({sum(kernels[n].size for n in pruned):,} of {sum(k.size for k in kernels.values()):,} kernel entries)")

    gradual = gradual_route(args, data, dense_path, pruned, out, say)
    n_of_m = n_of_m_route(args, data, dense_path, pruned, out, say)

    summary = {
        "ok": bool(gradual["verify"]["ok"] and gradual["sparsity"]["kept"]
                   and n_of_m["verify"]["ok"] and n_of_m["sparsity"]["kept"]
                   and n_of_m["groups"]["exact"] == n_of_m["groups"]["total"]),
        "seed": args.seed,
        "epochs": args.epochs,
        "finetune_epochs": args.finetune_epochs,
        "backend": keras.backend.backend(),
        "samples": {split: len(xy[0]) for split, xy in data.items()},
        "layers": {name: {"kernel_shape": list(k.shape), "size": int(k.size), "pruned": name in pruned}
                   for name, k in kernels.items()},
        "pruned_layers": pruned,
        "dense_accuracy": dense,
        "gradual": gradual,
        "n_of_m": n_of_m,
        "files": {"dense": str(dense_path), **{f"gradual_{k}": v for k, v in gradual.pop("files").items()},
                  **{f"n_of_m_{k}": v for k, v in n_of_m.pop("files").items()}},
        "png": None,
    }
    if args.png:
        save_figure(args.png, summary)
        summary["png"] = str(args.png)
    say(_report(summary))
    return summary


def gradual_route(args: argparse.Namespace, data: dict, dense_path: Path, pruned: list[str],
                  out: Path, say: Any) -> dict[str, Any]:
    """Route (a): GradualPruning to `args.sparsity` while fine-tuning, with and without pins."""
    import keras

    import kerasurgery as ks

    steps_per_epoch = -(-len(data["train"][0]) // BATCH_SIZE)
    schedule_epochs = args.finetune_epochs // 2
    # The last pruning step is the last step of the schedule's epochs, so the
    # model saved after them holds every pin the recovery epochs must keep.
    schedule = dict(target_sparsity=args.sparsity, begin_step=0,
                    end_step=schedule_epochs * steps_per_epoch - 1,
                    frequency=max(1, steps_per_epoch // 4), layers=pruned)
    say(f"\n(a) gradual pruning to {args.sparsity:.0%} with ks.callbacks.GradualPruning: steps "
        f"{schedule['begin_step']} to {schedule['end_step']}, every {schedule['frequency']} steps "
        f"({schedule_epochs} epochs), then {args.finetune_epochs - schedule_epochs} epochs with the pins fixed")

    dense = keras.saving.load_model(dense_path)
    one_shot = ks.freeze(dense, {name: ks.rules.smallest(args.sparsity) for name in pruned})
    one_shot_accuracy = _accuracy(one_shot, data["test"])
    say(f"    for reference, the same {args.sparsity:.0%} cut in one shot "
        f"(ks.rules.smallest({args.sparsity})), no training: test accuracy {one_shot_accuracy:.4f}")

    keras.utils.set_random_seed(args.seed + 1)  # fine-tuning does not depend on the steps above
    model = ks.freeze(keras.saving.load_model(dense_path), {"*": ks.Pin()})
    pruning = ks.callbacks.GradualPruning(**schedule)
    record = _recorder(data["validation"])  # after `pruning`: the logs hold its "sparsity"
    schedule_path = out / "digits_cnn.gradual.schedule_end.keras"
    accuracy = {"pruned_one_shot": one_shot_accuracy}

    def at_schedule_end(model: Any) -> None:
        accuracy["end_of_schedule"] = _accuracy(model, data["test"])
        _save(model, schedule_path)

    finetune(model, data, args.finetune_epochs, [pruning, record], split_at=schedule_epochs,
             at_split=at_schedule_end)
    accuracy["finetuned"] = _accuracy(model, data["test"])
    finetuned_path = out / "digits_cnn.gradual.finetuned.keras"
    _save(model, finetuned_path)
    say(f"    test accuracy {accuracy['end_of_schedule']:.4f} at the end of the schedule "
        f"(saved {schedule_path.name}), {accuracy['finetuned']:.4f} after fine-tuning")

    verify = kerasurgery_command("verify", finetuned_path, "--against", schedule_path, say=say)
    _say_verify(verify, say)
    inspected = kerasurgery_command("inspect", finetuned_path, say=say)
    pinned = {row["name"]: row["pinned_kernel"] for row in inspected["layers"] if row["name"] in LAYERS}
    masks = {name: np.asarray(model.get_layer(name).pins().kernel) for name in LAYERS}
    stripped_path = out / "digits_cnn.gradual.stripped.keras"
    stripped, classes = _strip(finetuned_path, stripped_path, say)
    accuracy["stripped"] = _accuracy(stripped, data["test"])
    sparsity = measure_sparsity(stripped, masks, pinned)
    say(f"    reloaded {stripped_path.name} with plain Keras ({', '.join(classes)}): "
        f"test accuracy {accuracy['stripped']:.4f}; {sparsity['zeros']:,} exact zeros, "
        f"{sparsity['pruned_sparsity']:.4%} of the pruned layers' kernels")

    # Plain Keras: the same schedule, but the entries are set to 0 by hand
    # (what a pruning loop without masks does), and nothing keeps them there.
    keras.utils.set_random_seed(args.seed + 1)
    control = keras.saving.load_model(dense_path)
    zeroing = _zeroing_by_schedule(pruning, pruned)
    control_record = _recorder(data["validation"])
    finetune(control, data, args.finetune_epochs, [zeroing, control_record], split_at=schedule_epochs)
    plain = {"accuracy": _accuracy(control, data["test"]),
             **_count_zeros(control, pruned),
             "zeros_after_last_zeroing": zeroing.zeros_after_last,
             "validation_curve": control_record.curve,
             "step_sparsity": zeroing.step_sparsity}
    say(f"    plain Keras, same schedule, zeros set by hand: test accuracy {plain['accuracy']:.4f}, "
        f"{plain['zeros']:,} exact zeros left of the {plain['zeros_after_last_zeroing']:,} set at the last step")

    return {
        "schedule": {**schedule, "steps_per_epoch": steps_per_epoch, "schedule_epochs": schedule_epochs,
                     "power": pruning.power, "initial_sparsity": pruning.initial_sparsity},
        "accuracy": accuracy,
        "validation_curve": record.curve,
        "step_sparsity": record.step_sparsity,
        "epoch_sparsity": record.epoch_sparsity,
        "scheduled_sparsity": [pruning.sparsity_at(step) for step in range(len(record.step_sparsity))],
        "pinned": pinned,
        "sparsity": sparsity,
        "verify": {key: verify[key] for key in ("ok", "checked", "violations")},
        "stripped_layer_classes": classes,
        "without_pins": plain,
        "files": {"schedule_end": str(schedule_path), "finetuned": str(finetuned_path),
                  "stripped": str(stripped_path)},
    }


def n_of_m_route(args: argparse.Namespace, data: dict, dense_path: Path, pruned: list[str],
                 out: Path, say: Any) -> dict[str, Any]:
    """Route (b): `kerasurgery freeze --n-of-m 2:4` in one shot, then fine-tuning, with and without pins."""
    import keras

    import kerasurgery as ks

    say(f"\n(b) {N}:{M} sparsity in one shot, then {args.finetune_epochs} epochs of fine-tuning")
    frozen_path = out / "digits_cnn.2of4.frozen.keras"
    layer_args = [word for name in pruned for word in ("--layer", name)]
    report = kerasurgery_command("freeze", dense_path, "-o", frozen_path, "--force", *layer_args,
                                 "--n-of-m", f"{N}:{M}", say=say)
    pinned = {row["name"]: row["pinned_kernel"] for row in report["layers"] if row["name"] in LAYERS}

    keras.utils.set_random_seed(args.seed + 1)
    model = ks.load_model(frozen_path)
    masks = {name: np.asarray(model.get_layer(name).pins().kernel) for name in pruned}
    accuracy = {"pruned": _accuracy(model, data["test"])}
    record = _recorder(data["validation"])
    finetune(model, data, args.finetune_epochs, [record])
    accuracy["finetuned"] = _accuracy(model, data["test"])
    finetuned_path = out / "digits_cnn.2of4.finetuned.keras"
    _save(model, finetuned_path)
    say(f"    test accuracy {accuracy['pruned']:.4f} after pruning, "
        f"{accuracy['finetuned']:.4f} after fine-tuning")

    verify = kerasurgery_command("verify", finetuned_path, "--against", frozen_path, say=say)
    _say_verify(verify, say)
    stripped_path = out / "digits_cnn.2of4.stripped.keras"
    stripped, classes = _strip(finetuned_path, stripped_path, say)
    accuracy["stripped"] = _accuracy(stripped, data["test"])
    sparsity = measure_sparsity(stripped, masks, pinned)
    groups = count_groups(stripped, pruned)
    say(f"    reloaded {stripped_path.name} with plain Keras: test accuracy {accuracy['stripped']:.4f}; "
        f"{groups['exact']:,} of {groups['total']:,} groups of {M} inputs have exactly {N} zeros")

    # Plain Keras: the same entries set to 0 by hand, the same fine-tuning.
    keras.utils.set_random_seed(args.seed + 1)
    control = keras.saving.load_model(dense_path)
    for name, mask in masks.items():
        layer = control.get_layer(name)
        kernel, *rest = layer.get_weights()
        layer.set_weights([np.where(mask, np.zeros((), kernel.dtype), kernel), *rest])
    control_pruned = _accuracy(control, data["test"])
    control_record = _recorder(data["validation"])
    finetune(control, data, args.finetune_epochs, [control_record])
    plain = {"accuracy_pruned": control_pruned, "accuracy": _accuracy(control, data["test"]),
             **_count_zeros(control, pruned), "groups": count_groups(control, pruned),
             "validation_curve": control_record.curve}
    say(f"    plain Keras, same entries zeroed by hand, same fine-tuning: test accuracy "
        f"{plain['accuracy']:.4f}, {plain['zeros']:,} of {sparsity['pinned']:,} zeros left, "
        f"{plain['groups']['exact']:,} groups still {N}:{M}")

    return {
        "accuracy": accuracy,
        "validation_curve": record.curve,
        "pinned": pinned,
        "sparsity": sparsity,
        "groups": groups,
        "verify": {key: verify[key] for key in ("ok", "checked", "violations")},
        "stripped_layer_classes": classes,
        "without_pins": plain,
        "files": {"frozen": str(frozen_path), "finetuned": str(finetuned_path),
                  "stripped": str(stripped_path)},
    }


def load_data(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits as 8x8x1 images in [0, 1], split stratified:
    450 test images (25%), 1,088 training images, 259 validation images.

    1,088 is 34 whole batches of 32: a smaller last batch would make
    TensorFlow trace each model's training step a second time (a second or
    two per model on a small CPU).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = digits.target.astype("int32")
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, train_size=TRAIN_BATCHES * BATCH_SIZE, stratify=y_rest, random_state=seed)
    return {"train": (x_train, y_train), "validation": (x_val, y_val), "test": (x_test, y_test)}


def build_model() -> Any:
    import keras

    layers = keras.layers
    inputs = keras.Input((8, 8, 1), name="pixels")
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name=LAYERS[0])(inputs)
    h = layers.Conv2D(32, 3, padding="same", activation="relu", name=LAYERS[1])(h)
    h = layers.MaxPooling2D(2, name="pool")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(64, activation="relu", name=LAYERS[2])(h)
    outputs = layers.Dense(10, activation="softmax", name=LAYERS[3])(h)
    return keras.Model(inputs, outputs, name="digits_cnn")


def finetune(model: Any, data: dict, epochs: int, callbacks: list, split_at: int | None = None,
             at_split: Callable[[Any], None] | None = None) -> None:
    """AdamW with weight decay, which pulls every raw weight, pinned or not, each step.

    With `split_at`, `fit` runs twice, to that epoch and on from it, and
    `at_split(model)` runs in between; the optimizer (and its step count,
    which GradualPruning follows) carries over.
    """
    import keras

    model.compile(
        optimizer=keras.optimizers.AdamW(FINETUNE_LEARNING_RATE, weight_decay=WEIGHT_DECAY),
        loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = data["train"]
    for start, stop in ([(0, split_at), (split_at, epochs)] if split_at else [(0, epochs)]):
        model.fit(x, y, initial_epoch=start, epochs=stop, batch_size=BATCH_SIZE, verbose=0,
                  callbacks=callbacks)
        if stop == split_at and at_split is not None:
            at_split(model)


def _recorder(validation: tuple[np.ndarray, np.ndarray]) -> Any:
    """A callback that records the validation accuracy before fine-tuning and
    after each epoch, and the logged "sparsity" (GradualPruning's) per step and epoch."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[float] = []
            self.step_sparsity: list[float] = []
            self.epoch_sparsity: list[float] = []

        def on_train_begin(self, logs: Any = None) -> None:
            if not self.curve:
                self.curve.append(_accuracy(self.model, validation))

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if logs and "sparsity" in logs:
                self.step_sparsity.append(float(logs["sparsity"]))

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.curve.append(_accuracy(self.model, validation))
            if logs and "sparsity" in logs:
                self.epoch_sparsity.append(float(logs["sparsity"]))

    return Recorder()


def _zeroing_by_schedule(schedule: Any, names: list[str]) -> Any:
    """A plain Keras callback: at GradualPruning's pruning steps, set the
    smallest |w| of each kernel to 0 (the count the schedule asks for) with
    `assign`; nothing keeps them at 0 afterwards. Records the exact-zero
    fraction of the kernels after every step."""
    import keras
    from keras import ops

    class ZeroBySchedule(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0
            self.step_sparsity: list[float] = []
            self.zeros_after_last = 0

        def on_train_begin(self, logs: Any = None) -> None:
            self.step = int(ops.convert_to_numpy(self.model.optimizer.iterations))

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            s = schedule
            if not (s.begin_step <= self.step <= s.end_step and
                    ((self.step - s.begin_step) % s.frequency == 0 or self.step == s.end_step)):
                return
            _sync(self.model)
            target = s.sparsity_at(self.step)
            for name in names:
                variable = self.model.get_layer(name).kernel
                kernel = ops.convert_to_numpy(variable)
                smallest = np.argsort(np.abs(kernel), axis=None, kind="stable")[:round(target * kernel.size)]
                kernel.flat[smallest] = 0.0
                variable.assign(kernel)
            self.zeros_after_last = _count_zeros(self.model, names)["zeros"]

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.step += 1
            _sync(self.model)
            self.step_sparsity.append(_count_zeros(self.model, names)["sparsity"])

    return ZeroBySchedule()


def _sync(model: Any) -> None:
    # Under JAX, `fit` keeps the weights in its own state and writes them
    # back only when asked: ask before reading or assigning them mid-fit.
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def measure_sparsity(model: Any, masks: dict[str, np.ndarray], pinned: dict[str, int]) -> dict[str, Any]:
    """Counts the exact zeros of each kernel and compares them with the pinned entries.

    A layer keeps its sparsity when its exact zeros are exactly its pinned
    entries (`masks`; `pinned` holds the counts `kerasurgery` reported).
    """
    import keras

    layers, totals = {}, {"zeros": 0, "pinned": 0, "size": 0, "pruned_zeros": 0, "pruned_size": 0}
    for name in LAYERS:
        kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
        is_zero = kernel == 0.0
        mask = masks.get(name, np.zeros(kernel.shape, bool))
        row = {
            "zeros": int(is_zero.sum()),
            "pinned": int(pinned.get(name, 0)),
            "size": int(kernel.size),
            "sparsity": int(is_zero.sum()) / kernel.size,
            "kept": bool(np.array_equal(is_zero, mask) and int(mask.sum()) == pinned.get(name, 0)),
        }
        layers[name] = row
        for key in ("zeros", "pinned", "size"):
            totals[key] += row[key]
        if row["pinned"]:
            totals["pruned_zeros"] += row["zeros"]
            totals["pruned_size"] += row["size"]
    return {
        "layers": layers,
        **totals,
        "sparsity": totals["zeros"] / totals["size"],
        "pruned_sparsity": totals["pruned_zeros"] / max(totals["pruned_size"], 1),
        "kept": all(row["kept"] for row in layers.values()),
    }


def count_groups(model: Any, names: list[str]) -> dict[str, Any]:
    """Groups of M consecutive inputs (per output unit and kernel position), by their number of zeros."""
    import keras

    histogram = np.zeros(M + 1, dtype=int)
    for name in names:
        kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
        # Inputs are the second-to-last axis of Dense and Conv2D kernels.
        groups = np.moveaxis(kernel == 0.0, -2, -1).reshape(-1, M)
        histogram += np.bincount(groups.sum(axis=1), minlength=M + 1)
    return {"total": int(histogram.sum()), "exact": int(histogram[N]),
            "by_zeros": [int(c) for c in histogram]}


def _count_zeros(model: Any, names: list[str]) -> dict[str, Any]:
    from keras import ops

    kernels = [ops.convert_to_numpy(model.get_layer(name).kernel) for name in names]
    zeros, size = sum(int((k == 0.0).sum()) for k in kernels), sum(k.size for k in kernels)
    return {"zeros": zeros, "size": size, "sparsity": zeros / size}


def _strip(finetuned: Path, stripped: Path, say: Any) -> tuple[Any, list[str]]:
    """`kerasurgery strip`, then a reload with plain Keras (no kerasurgery classes needed)."""
    import keras

    kerasurgery_command("strip", finetuned, "-o", stripped, "--force", say=say)
    model = keras.saving.load_model(stripped, compile=False)
    return model, sorted({type(layer).__name__ for layer in model.layers})


def _save(model: Any, path: Path) -> None:
    import kerasurgery as ks

    ks.save_model(model, path, overwrite=True)


def _say_verify(verify: dict[str, Any], say: Any) -> None:
    say(f"    {'ok' if verify['ok'] else 'FAILED'}: {verify['checked']:,} pinned entries checked, "
        f"{sum(row['violations'] for row in verify['violations']):,} changed")


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
    report = None
    with contextlib.suppress(ValueError):
        report = json.loads(captured.getvalue())
    if code != OK and not (words[0] == "verify" and isinstance(report, dict)):
        raise _CommandFailed(f"`kerasurgery {' '.join(words)}` exited with status {code}")
    if not isinstance(report, dict):
        raise _CommandFailed(f"`kerasurgery {' '.join(words)} --json` printed no JSON object")
    return report


def _accuracy(model: Any, xy: tuple[np.ndarray, np.ndarray]) -> float:
    import keras

    x, y = xy
    # A direct call, not `predict`: predict traces a new function per model.
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
    a, b = summary["gradual"], summary["n_of_m"]
    target = a["schedule"]["target_sparsity"]
    dense = summary["dense_accuracy"]["test"]
    rows = [
        ("dense", f"{dense:.4f}", f"{dense:.4f}"),
        ("pruned, before fine-tuning", f"{a['accuracy']['pruned_one_shot']:.4f} *", f"{b['accuracy']['pruned']:.4f}"),
        ("end of the pruning schedule", f"{a['accuracy']['end_of_schedule']:.4f}", "-"),
        ("pruned + fine-tuned, pins", f"{a['accuracy']['finetuned']:.4f}", f"{b['accuracy']['finetuned']:.4f}"),
        ("stripped, plain Keras reload", f"{a['accuracy']['stripped']:.4f}", f"{b['accuracy']['stripped']:.4f}"),
        ("fine-tuned without pins", f"{a['without_pins']['accuracy']:.4f}", f"{b['without_pins']['accuracy']:.4f}"),
    ]
    head_a, head_b = f"(a) gradual {target:.0%}", f"(b) {N}:{M} one-shot"
    lines = ["", f"test accuracy ({summary['samples']['test']} images)   {head_a:>17} {head_b:>17}"]
    lines += [f"  {label:<30} {x:>17} {y:>17}" for label, x, y in rows]
    lines += [f"  * the same {target:.0%} cut in one shot (rules.smallest), no training", "",
              "exact zeros in the stripped kernels / pinned entries",
              f"  {'layer':<8} {'size':>7}  {'(a) zeros':>10} {'pinned':>7} {'sparsity':>9}"
              f"  {'(b) zeros':>10} {'pinned':>7} {'sparsity':>9}"]
    for name in LAYERS:
        ra, rb = a["sparsity"]["layers"][name], b["sparsity"]["layers"][name]
        lines.append(f"  {name:<8} {ra['size']:>7,}  {ra['zeros']:>10,} {ra['pinned']:>7,} {ra['sparsity']:>9.4%}"
                     f"  {rb['zeros']:>10,} {rb['pinned']:>7,} {rb['sparsity']:>9.4%}")
    sa, sb = a["sparsity"], b["sparsity"]
    lines += [
        f"  {'total':<8} {sa['size']:>7,}  {sa['zeros']:>10,} {sa['pinned']:>7,} {sa['sparsity']:>9.4%}"
        f"  {sb['zeros']:>10,} {sb['pinned']:>7,} {sb['sparsity']:>9.4%}",
        f"  {'pruned layers':<17}  {sa['pruned_sparsity']:>28.4%}  {sb['pruned_sparsity']:>28.4%}",
        f"  zeros = pinned entries, layer by layer: (a) {'yes' if sa['kept'] else 'NO'}, "
        f"(b) {'yes' if sb['kept'] else 'NO'}; (b) groups of {M} with exactly {N} zeros: "
        f"{b['groups']['exact']:,} of {b['groups']['total']:,}",
        "",
        "the same fine-tuning in plain Keras, nothing pinned (exact zeros left in the pruned layers)",
        f"  (a) zeros set by hand at each pruning step: {a['without_pins']['zeros']:,} of "
        f"{a['without_pins']['size']:,} left ({a['without_pins']['sparsity']:.2%}); "
        f"{a['without_pins']['zeros_after_last_zeroing']:,} right after the last step; pinned run: {sa['pruned_zeros']:,}",
        f"  (b) the {sb['pinned']:,} {N}:{M} entries zeroed by hand: {b['without_pins']['zeros']:,} left "
        f"({b['without_pins']['sparsity']:.2%}), {b['without_pins']['groups']['exact']:,} of "
        f"{b['without_pins']['groups']['total']:,} groups still {N}:{M}; pinned run: {sb['pruned_zeros']:,}",
    ]
    if summary["png"]:
        lines.append(f"figure: {summary['png']}")
    verdict = "ok" if summary["ok"] else "FAILED"
    lines.append(f"{verdict}: verify (a) {'passed' if a['verify']['ok'] else 'failed'} "
                 f"({a['verify']['checked']:,} pins), (b) {'passed' if b['verify']['ok'] else 'failed'} "
                 f"({b['verify']['checked']:,} pins)")
    return "\n".join(lines)


def save_figure(path: str | os.PathLike, summary: dict[str, Any]) -> None:
    """Left: validation accuracy while fine-tuning. Right: route (a)'s sparsity per step."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    a, b = summary["gradual"], summary["n_of_m"]
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    for curve, label, style in [
        (a["validation_curve"], "(a) gradual, pins", "-o"),
        (a["without_pins"]["validation_curve"], "(a) gradual, plain Keras", ":o"),
        (b["validation_curve"], f"(b) {N}:{M}, pins", "-s"),
        (b["without_pins"]["validation_curve"], f"(b) {N}:{M}, plain Keras", ":s"),
    ]:
        left.plot(range(len(curve)), curve, style, label=label, markersize=4)
    left.axhline(summary["dense_accuracy"]["validation"], linestyle="--", color="gray", label="dense")
    left.axvline(a["schedule"]["schedule_epochs"], color="lightgray", linewidth=1)
    left.set_xlabel("fine-tuning epoch")
    left.set_ylabel("validation accuracy")
    left.set_title("fine-tuning (AdamW, weight decay)")
    left.legend(loc="lower right")

    steps = range(len(a["step_sparsity"]))  # step t: pruned at its start, logged at its end
    right.plot(steps, a["scheduled_sparsity"], color="gray", linestyle="--", label="schedule s(t)")
    right.plot(steps, a["step_sparsity"], label="pinned zeros (logs['sparsity'])")
    right.plot(steps, a["without_pins"]["step_sparsity"], label="exact zeros after the step, plain Keras")
    right.axvline(a["schedule"]["end_step"], color="lightgray", linewidth=1)
    right.set_xlabel("optimizer step")
    right.set_ylabel("sparsity of the pruned layers")
    right.set_title(f"(a) GradualPruning to {a['schedule']['target_sparsity']:.0%}")
    right.legend(loc="center right")
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
