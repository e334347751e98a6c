"""Helpers shared by the test modules: gradients, short training runs, bit views,
the reference n:m selection, the examples loaded as modules, and saved files
rewritten."""

from __future__ import annotations

import importlib.util
import json
import struct
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import ops


def gradients(model, x, y, *, include_losses: bool = False) -> dict[str, np.ndarray]:
    """d(mse [+ model.losses])/d(variable) for every trainable variable, by path."""
    variables = model.trainable_variables
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = _loss(model(x, training=True), y)
            if include_losses:
                loss = loss + ops.sum(ops.stack(model.losses))
        grads = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        trainable = [v.value for v in variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def f(values):
            out, _, losses = model.stateless_call(
                values, non_trainable, x, training=True, return_losses=True
            )
            loss = _loss(out, y)
            if include_losses:
                loss = loss + sum(losses)
            return loss

        grads = jax.grad(f)(trainable)
    elif backend == "torch":
        model.zero_grad()
        loss = _loss(model(x, training=True), y)
        if include_losses:
            loss = loss + sum(model.losses)
        loss.backward()
        grads = [v.value.grad for v in variables]
    else:  # pragma: no cover - numpy/openvino cannot train
        raise NotImplementedError(backend)
    return {v.path: ops.convert_to_numpy(g) for v, g in zip(variables, grads)}


def _loss(prediction, y):
    return ops.mean(ops.square(ops.subtract(prediction, y)))


def train(model, optimizer, x, y, *, steps: int = 5, jit_compile="auto") -> None:
    """Compiles `model` with `optimizer` and MSE, then takes `steps` full-batch steps."""
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    model.fit(x, y, epochs=steps, batch_size=len(x), verbose=0)


def bits(x) -> np.ndarray:
    """The bit patterns of a float array: equal bits are bit-for-bit equal values.

    Viewed as unsigned integers of the same width (float32 as uint32, float16
    and bfloat16 as uint16, float64 as uint64).
    """
    x = np.ascontiguousarray(ops.convert_to_numpy(x))
    return x.view(f"u{x.itemsize}")


def n_of_m_mask(weight, n: int, m: int, axis: int) -> np.ndarray:
    """The `n` smallest |w| of every `m` consecutive entries along `axis` (ties: lower index).

    The documented n:m selection written out independently of `kerasurgery`,
    for the tests of the rules and of the examples to compare against.
    """
    moved = np.moveaxis(np.abs(np.asarray(weight).astype(np.float64)), axis, -1)
    groups = moved.reshape(*moved.shape[:-1], -1, m)
    chosen = np.zeros(groups.shape, bool)
    np.put_along_axis(chosen, np.argsort(groups, axis=-1, kind="stable")[..., :n], True, axis=-1)
    return np.moveaxis(chosen.reshape(moved.shape), -1, axis)


# -- KerasHub --------------------------------------------------------------------


def tiny_bert_classifier(seed: int = 0):
    """A KerasHub BertTextClassifier of 2 blocks, hidden 32, vocabulary 100, 16 tokens.

    Built from constructor arguments (no download), small enough for a test,
    and with every kind of layer a real BERT has.
    """
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=16,
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)


def bert_inputs(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """`batch` random sequences of 16 tokens for `tiny_bert_classifier`."""
    return {
        "token_ids": rng.integers(0, 100, size=(batch, 16)).astype("int32"),
        "segment_ids": np.zeros((batch, 16), "int32"),
        "padding_mask": np.ones((batch, 16), "int32"),
    }


# -- the examples ----------------------------------------------------------------


def load_example(path: Path):
    """The example script at `path` as a module, so its tests call `main(argv)` in-process."""
    spec = importlib.util.spec_from_file_location(f"{path.stem}_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


# -- saved files -----------------------------------------------------------------


def rewrite_keras_file(source: Path, target: Path, *, config=None, members=None) -> None:
    """Copies the `.keras` archive `source` to `target`, changed as a test needs.

    `config(dict)` edits `config.json` in place; `members` maps member names
    to the bytes they are replaced with. Every other member, and the order
    and zip headers of all of them, is copied as it is, so a test changes
    exactly what it names.
    """
    members = members or {}
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(target, "w") as b:
        for info in a.infolist():
            data = members.get(info.filename, a.read(info))
            if config is not None and info.filename == "config.json":
                document = json.loads(data)
                config(document)
                data = json.dumps(document).encode()
            b.writestr(info, data)


def assert_pins_held_and_free_moved(before: dict, layers: dict) -> None:
    """Every pinned entry of `before` (path -> weight -> `pin_state` entry) is bit
    for bit what it was in `layers` (path -> layer), with the same mask, and the
    free entries of every such weight moved."""
    for path, state in before.items():
        for weight, pins in state.items():
            after = layers[path].pin_state()[weight]
            assert np.array_equal(after.mask, pins.mask), (path, weight)
            assert np.array_equal(bits(after.effective[pins.mask]), bits(pins.effective[pins.mask])), (path, weight)
            assert not np.array_equal(after.effective[~pins.mask], pins.effective[~pins.mask]), (path, weight)


def save_pin_states(path: Path, states: dict) -> None:
    """Saves `states` (path -> weight -> `pin_state` entry) as `path` (.npz) for a new
    process: keys `layer|weight|mask` and `layer|weight|effective`."""
    np.savez(path, **{
        f"{p}|{w}|{k}": getattr(s, k) for p, ws in states.items() for w, s in ws.items()
        for k in ("mask", "effective")
    })
