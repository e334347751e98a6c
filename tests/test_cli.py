"""End-to-end tests of the command line: `main([...])` in-process, a few real processes.

Most cases call `main` in this process (TensorFlow is imported once); a
handful run `python -m kerasurgery` to check what a user sees: exit codes, no
traceback, no TensorFlow log lines, and no TensorFlow import for `--help`,
`inspect` and `verify`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery.cli import main
from kerasurgery.files.inspection import read_dense_weights
from tests.conftest import make_mlp

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
X = np.random.default_rng(1).normal(size=(32, 4)).astype("float32")
Y = np.random.default_rng(2).normal(size=(32, 2)).astype("float32")
# Biases with one exact zero each, so bias rules have something to tell apart.
BIASES = {"hidden": np.array([0.1, 0.0, -0.2], "float32"), "out": np.array([0.0, -0.3], "float32")}
TF_LOG_MARKERS = ("absl::InitializeLog", "I0000", "oneDNN", "cudart", "cpu_feature_guard", "Traceback")


# --- helpers -----------------------------------------------------------------


def base_model() -> keras.Model:
    """The 4-3-2 pruned MLP of conftest, with non-zero biases, compiled for AdamW."""
    model = make_mlp()
    for name, bias in BIASES.items():
        layer = model.get_layer(name)
        layer.set_weights([layer.get_weights()[0], bias])
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.25),
        loss=keras.losses.MeanSquaredError(),
    )
    return model


def weights_of(model: keras.Model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        name: tuple(model.get_layer(name).get_weights()) for name in ("hidden", "out")
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """`base.keras` / `base.h5`, saved once, and their weights as numpy arrays."""
    folder = tmp_path_factory.mktemp("base")
    model = base_model()
    paths = {}
    for suffix in (".keras", ".h5"):
        paths[suffix] = folder / f"base{suffix}"
        model.save(paths[suffix])
    return {"paths": paths, "weights": weights_of(model), "digest": {
        s: digest(p) for s, p in paths.items()
    }}


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(capsys, *argv: str | os.PathLike) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def predict(path: Path) -> np.ndarray:
    model = ks.load_model(path, compile=False)
    return ops.convert_to_numpy(model(X))


def reference_predictions(expected: dict, weights: dict) -> np.ndarray:
    """A plain model with the pinned entries set to their values, by numpy."""
    model = base_model()
    for name, (kernel, bias) in weights.items():
        k_mask, k_value, b_mask, b_value = expected.get(name, (None, None, None, None))
        if k_mask is not None and k_value is not None:
            kernel = np.where(k_mask, np.float32(k_value), kernel)
        if b_mask is not None and b_value is not None:
            bias = np.where(b_mask, np.float32(b_value), bias)
        model.get_layer(name).set_weights([kernel, bias])
    return ops.convert_to_numpy(model(X))


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- freeze: every rule --------------------------------------------------------

# Each case: (extra argv, a function of (weights, tmp_path) that writes any
# file the argv names and returns {layer: (kernel mask, kernel value, bias mask,
# bias value)} computed with numpy; value None = the current values).


def _zeros(w, _):
    return {n: (k == 0, None, None, None) for n, (k, b) in w.items()}


def _zeros_bias_value(w, _):
    return {n: (k == 0, 0.5, b == 0, 0.5) for n, (k, b) in w.items()}


def _below(w, _):
    return {n: (np.abs(k) < 0.3, None, np.abs(b) < 0.3, None) for n, (k, b) in w.items()}


def _index(w, _):
    k = np.zeros((3, 2), bool)
    k[0, 1] = k[2, 0] = True
    return {"out": (k, 0.0, np.array([False, True]), 0.0)}


def _inputs(w, _):
    k = np.zeros((4, 3), bool)
    k[[0, 2, 3]] = True
    return {"hidden": (k, 0.25, None, None)}


def _units(w, _):
    k = np.zeros((4, 3), bool)
    k[:, 1] = True
    return {"hidden": (k, -1.0, np.array([False, True, False]), -1.0)}


def _fraction(w, _):
    expected = {}
    for name, (k, b) in w.items():
        pin = ks.rules.fraction(0.5, seed=3, bias=True)(k, b)
        assert pin.kernel.sum() == round(k.size / 2) and pin.bias.sum() == round(b.size / 2)
        expected[name] = (pin.kernel, None, pin.bias, None)
    return expected


def _mask_npy(w, tmp_path):
    mask = np.abs(w["hidden"][0]) > 0.4
    np.save(tmp_path / "mask.npy", mask)
    return {"hidden": (mask, 2.0, None, None)}


def _mask_npz(w, tmp_path):
    mask = np.eye(3, 2, dtype=bool)
    bias_mask = np.array([True, False])
    np.savez(tmp_path / "masks.npz", **{"out": mask, "out/bias": bias_mask})
    return {"out": (mask, None, bias_mask, None)}


def _connections(w, tmp_path):
    matrix = np.ones((3, 2), np.int8)
    matrix[1] = 0  # input 1 is not connected to the output layer
    np.save(tmp_path / "wiring.npy", matrix)
    return {"out": (matrix == 0, 0.0, None, None)}


def _connections_npz_value(w, tmp_path):
    hidden = np.tril(np.ones((4, 3), np.int8))
    np.savez(tmp_path / "wiring.npz", hidden=hidden)
    return {"hidden": (hidden == 0, 0.5, None, None)}


def _spec(w, tmp_path):
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "out.npy", np.array([[1, 0], [1, 1], [0, 1]]))
    (tmp_path / "pins.toml").write_text(textwrap.dedent("""
        [[layer]]
        pattern = "hidden"
        rule = "below"
        below = 0.3
        bias = true
        value = 0.0

        [[layer]]
        pattern = "out"
        connections = "arrays/out.npy"
    """))
    k_out = np.array([[0, 1], [0, 0], [1, 0]], bool)
    k, b = w["hidden"]
    return {"hidden": (np.abs(k) < 0.3, 0.0, np.abs(b) < 0.3, 0.0), "out": (k_out, 0.0, None, None)}


RULE_CASES = {
    "default-zeros": ([], _zeros),
    "zeros-bias-value": (["--zeros", "--bias", "--value", "0.5"], _zeros_bias_value),
    "below-bias": (["--below", "0.3", "--bias"], _below),
    "index": (["--layer", "out", "--index", "0,1", "--index", "2,0", "--index", "1", "--value", "0"], _index),
    "inputs": (["--layer", "hidden", "--inputs", "0,2-3", "--value", "0.25"], _inputs),
    "units": (["--layer", "h*", "--units", "1", "--value", "-1"], _units),
    "fraction": (["--fraction", "0.5", "--seed", "3", "--bias"], _fraction),
    "mask-npy": (["--layer", "hidden", "--mask", "mask.npy", "--value", "2"], _mask_npy),
    "mask-npz": (["--mask", "masks.npz"], _mask_npz),
    "connections": (["--layer", "out", "--connections", "wiring.npy"], _connections),
    "connections-npz-value": (["--connections", "wiring.npz", "--value", "0.5"], _connections_npz_value),
    "spec": (["--spec", "pins.toml"], _spec),
}


@pytest.mark.parametrize("case", RULE_CASES, ids=list(RULE_CASES))
def test_freeze_rule(case, base, tmp_path, capsys, monkeypatch):
    argv, expected_of = RULE_CASES[case]
    monkeypatch.chdir(tmp_path)  # the rule files are written here, named relatively
    weights = base["weights"]
    expected = expected_of(weights, tmp_path)
    out = tmp_path / "out.keras"

    report = run_json(capsys, "freeze", base["paths"][".keras"], "-o", out, *argv)

    # Counts reported, and read back from the file, equal the numpy counts.
    counts = {layer["name"]: (layer["pinned_kernel"], layer["pinned_bias"]) for layer in report["layers"]}
    inspected = run_json(capsys, "inspect", out)
    assert counts == {
        l["name"]: (l["pinned_kernel"], l["pinned_bias"]) for l in inspected["layers"] if l["kernel_shape"]
    }
    for name in weights:
        k_mask, _, b_mask, _ = expected.get(name, (None, None, None, None))
        want = (0 if k_mask is None else int(k_mask.sum()), 0 if b_mask is None else int(b_mask.sum()))
        assert counts[name] == want, name
    # The masks and effective weights in the file are exactly the expected ones.
    stored = read_dense_weights(out)
    for name, (kernel, bias) in weights.items():
        k_mask, k_value, b_mask, b_value = expected.get(name, (None, None, None, None))
        k_mask = np.zeros(kernel.shape, bool) if k_mask is None else k_mask
        b_mask = np.zeros(bias.shape, bool) if b_mask is None else b_mask
        np.testing.assert_array_equal(stored[name].kernel_mask, k_mask)
        np.testing.assert_array_equal(stored[name].bias_mask, b_mask)
        k_value = kernel if k_value is None else np.float32(k_value)
        b_value = bias if b_value is None else np.float32(b_value)
        assert np.array_equal(stored[name].kernel, np.where(k_mask, k_value, kernel))
        assert np.array_equal(stored[name].bias, np.where(b_mask, b_value, bias))
    # The frozen model predicts exactly what a plain model with those entries set predicts.
    assert np.array_equal(predict(out), reference_predictions(expected, weights))
    assert digest(base["paths"][".keras"]) == base["digest"][".keras"]


def test_freeze_units_on_a_model_mixing_bias_and_no_bias_layers(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(3, use_bias=False, name="nobias")(inputs)
    outputs = keras.layers.Dense(2, name="out")(h)
    keras.Model(inputs, outputs).save(tmp_path / "mixed.keras")
    report = run_json(capsys, "freeze", tmp_path / "mixed.keras", "--units", "0")
    counts = {l["name"]: (l["pinned_kernel"], l["pinned_bias"]) for l in report["layers"]}
    assert counts == {"nobias": (4, 0), "out": (3, 1)}
    stored = read_dense_weights(tmp_path / "mixed.frozen.keras")
    assert stored["nobias"].bias_mask is None
    np.testing.assert_array_equal(stored["nobias"].kernel_mask, [[True, False, False]] * 4)
    np.testing.assert_array_equal(stored["out"].kernel_mask, [[True, False]] * 3)
    assert stored["out"].bias_mask.tolist() == [True, False]
    # --bias asks for the bias explicitly: a layer named without one is an error
    # (one that a glob selects is skipped: see the command-line section at the end).
    code, _, err = run(capsys, "freeze", tmp_path / "mixed.keras", "-o", tmp_path / "b.keras",
                       "--units", "0", "--bias", "--layer", "nobias")
    assert code == 1
    assert_one_error_line(err, "nobias", "targets the bias, but the layer has none")


# --- freeze: defaults, formats, training config ----------------------------------


def test_freeze_defaults_zeros_every_dense_layer_beside_the_input(base, tmp_path, capsys):
    source = tmp_path / "model.keras"
    shutil.copy(base["paths"][".keras"], source)
    code, out, err = run(capsys, "freeze", source)
    assert code == 0, err
    assert err == ""
    assert listing(tmp_path) == ["model.frozen.keras", "model.keras"]
    assert "model.frozen.keras" in out and "4 kernel and 0 bias entries pinned" in out
    stored = read_dense_weights(tmp_path / "model.frozen.keras")
    for name, (kernel, _) in base["weights"].items():
        assert stored[name].class_name == "MaskedDense"
        np.testing.assert_array_equal(stored[name].kernel_mask, kernel == 0)
        assert not stored[name].bias_mask.any()
    # Pins at their current values: the function is unchanged, bit for bit.
    assert np.array_equal(predict(tmp_path / "model.frozen.keras"), predict(source))
    assert digest(source) == base["digest"][".keras"]


@pytest.mark.parametrize("source_suffix, name, expected", [
    (".h5", "model.h5", "model.frozen.h5"),
    (".keras", "model.bin", "model.frozen.keras"),  # the format, not the odd suffix
    (".h5", "model", "model.frozen.h5"),
])
def test_freeze_default_output_name(base, tmp_path, capsys, source_suffix, name, expected):
    shutil.copy(base["paths"][source_suffix], tmp_path / name)
    code, _, err = run(capsys, "freeze", tmp_path / name)
    assert code == 0, err
    assert listing(tmp_path) == sorted([name, expected])
    stored = read_dense_weights(tmp_path / expected)  # the frozen model, in the input's format
    assert {n: (w.class_name, w.kernel_mask.tolist()) for n, w in stored.items()} == {
        n: ("MaskedDense", (k == 0).tolist()) for n, (k, _) in base["weights"].items()}


@pytest.mark.parametrize("command", ["freeze", "strip"])
def test_the_input_format_is_read_once_by_the_command_line(base, tmp_path, capsys, monkeypatch, command):
    from kerasurgery.files import formats

    source = tmp_path / "model.bin"  # no telling suffix: the output is named by the format
    if command == "strip":
        run_json(capsys, "freeze", base["paths"][".keras"], "-o", tmp_path / "f.keras")
        shutil.move(tmp_path / "f.keras", source)
    else:
        shutil.copy(base["paths"][".keras"], source)
    calls = []
    real = formats.detect_format

    def counted(path):
        calls.append(sys._getframe(1).f_globals["__name__"])
        return real(path)

    monkeypatch.setattr(formats, "detect_format", counted)
    code, _, err = run(capsys, command, source)
    assert code == 0, err
    written = tmp_path / f"model.{command.replace('freeze', 'frozen').replace('strip', 'stripped')}.keras"
    stored = read_dense_weights(written)
    assert {n: w.class_name for n, w in stored.items()} == {
        n: "MaskedDense" if command == "freeze" else "Dense" for n in base["weights"]}
    for n, (kernel, _) in base["weights"].items():
        assert np.array_equal(stored[n].kernel.view("u4"), kernel.view("u4")), n  # zeros pinned as they are
    assert [caller for caller in calls if caller.startswith("kerasurgery.cli.")] == ["kerasurgery.cli.model_io"]


@pytest.mark.parametrize("source, target", [(".h5", ".h5"), (".keras", ".h5"), (".h5", ".keras")])
def test_freeze_across_formats_keeps_function_and_training_config(base, tmp_path, capsys, source, target):
    out = tmp_path / f"out{target}"
    report = run_json(capsys, "freeze", base["paths"][source], "-o", out)
    assert report["format"] == target.lstrip(".") and report["training_config"] is True
    assert report["warnings"] == []
    assert np.array_equal(predict(out), predict(base["paths"][source]))
    model = ks.load_model(out)  # ready to fit, like the input was
    assert model.compiled
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.optimizer.weight_decay == 0.25


def test_freeze_without_restorable_training_config_warns_once(tmp_path, capsys):
    model = make_mlp()
    model.compile(optimizer="adam", loss="mse")  # Keras 3 cannot restore "mse" from .h5
    model.save(tmp_path / "m.h5")
    code, out, err = run(capsys, "freeze", tmp_path / "m.h5", "-o", tmp_path / "f.keras")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "training configuration" in lines[0]
    assert "no training config" in out


def test_freeze_keras2_fixture(tmp_path, capsys):
    source = FIXTURES / "keras2_mlp.h5"
    before = digest(source)
    original = ks.load_model(source, compile=False)
    zeros = {l.name: int((l.get_weights()[0] == 0).sum()) for l in original.layers if l.weights}
    out = tmp_path / "k2.keras"
    report = run_json(capsys, "freeze", source, "-o", out)
    assert {l["name"]: l["pinned_kernel"] for l in report["layers"] if l["kernel_shape"]} == zeros
    stored = read_dense_weights(out)
    for layer in original.layers:
        if layer.weights:
            assert np.array_equal(stored[layer.name].kernel_mask, layer.get_weights()[0] == 0), layer.name
    assert zeros == {"dense_1": 64, "dense_2": 32}  # the fixture's zeros: not vacuous
    assert np.array_equal(
        ops.convert_to_numpy(ks.load_model(out)(np.ones((3, 8), "float32"))),
        ops.convert_to_numpy(original(np.ones((3, 8), "float32"))),
    )
    assert digest(source) == before


@pytest.mark.parametrize("name", ["frozen_mlp.keras", "frozen_mlp.h5", "nested_frozen.keras"])
def test_inspect_counts_equal_the_models_own_pins(name, capsys):
    path = FIXTURES / name
    report = run_json(capsys, "inspect", path)
    model = ks.load_model(path, compile=False)
    masked = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []))
        if isinstance(layer, ks.MaskedDense):
            pin = layer.pins()
            masked[layer.name] = (int(pin.kernel.sum()), int(pin.bias.sum()))
    reported = {
        l["name"]: (l["pinned_kernel"], l["pinned_bias"])
        for l in report["layers"] if l["class_name"] == "MaskedDense"
    }
    assert reported == masked
    assert masked == ({"dense_1": (64, 0), "dense_2": (128, 0), "dense_3": (16, 1)}  # the fixtures' pins
                      if name.startswith("frozen_mlp") else
                      {"block_dense": (16, 0), "shared": (16, 0), "tower_dense": (2, 2)})
    assert report["format"] == path.suffix.lstrip(".")


# --- freeze: nothing lost ------------------------------------------------------


def test_existing_output_is_untouched_without_force(base, tmp_path, capsys):
    out = tmp_path / "out.keras"
    out.write_bytes(b"precious weights")
    code, _, err = run(capsys, "freeze", base["paths"][".keras"], "-o", out)
    assert code == 1
    assert_one_error_line(err, str(out), "--force")
    assert out.read_bytes() == b"precious weights"
    assert listing(tmp_path) == ["out.keras"]

    code, _, err = run(capsys, "freeze", base["paths"][".keras"], "-o", out, "--force")
    assert code == 0, err
    assert np.array_equal(read_dense_weights(out)["hidden"].kernel_mask, base["weights"]["hidden"][0] == 0)


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
def test_output_equal_to_input_is_refused_even_with_force(base, tmp_path, capsys, spelling):
    source = tmp_path / "sub" / "model.keras"
    source.parent.mkdir()
    shutil.copy(base["paths"][".keras"], source)
    if spelling == "same":
        out = source
    elif spelling == "dotted":
        out = tmp_path / "sub" / ".." / "sub" / "." / "model.keras"
    elif spelling == "symlink":
        out = tmp_path / "link.keras"
        out.symlink_to(source)
    else:
        out = tmp_path / "hard.keras"
        os.link(source, out)
    for command in ("freeze", "strip"):
        code, _, err = run(capsys, command, source, "-o", out, "--force")
        assert code == 1
        assert_one_error_line(err, "is the input file")
    assert digest(source) == base["digest"][".keras"]


@pytest.mark.parametrize("output, message", [
    ("missing/out.keras", "does not exist"),
    ("out.txt", "unsupported suffix"),
    ("out.weights.h5", "weights only"),
    (".", "is a folder"),
])
def test_bad_output_paths_fail_before_any_work(base, tmp_path, capsys, output, message):
    before = listing(tmp_path)
    code, _, err = run(capsys, "freeze", base["paths"][".keras"], "-o", tmp_path / output)
    assert code == 1
    assert_one_error_line(err, message)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("command", ["freeze", "strip"])
def test_unwritable_output_folder_fails_before_loading(base, tmp_path, capsys, monkeypatch, command):
    from kerasurgery.model import saving

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(saving, "load_model", never)
    # /proc refuses new files even to root, whom os.access lets write anywhere.
    code, out, err = run(capsys, command, base["paths"][".keras"], "-o", "/proc/out.keras")
    assert code == 1 and out == ""
    assert_one_error_line(err, "/proc/out.keras", "cannot write in /proc")
    # A folder the user may not write to (as a non-root user sees it).
    folder = tmp_path / "locked"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if Path(p) == folder and mode & os.W_OK else real_access(p, mode, **kw)))
    code, out, err = run(capsys, command, base["paths"][".keras"], "-o", folder / "out.keras")
    assert code == 1 and out == ""
    assert_one_error_line(err, "cannot write in", str(folder))
    assert listing(folder) == []


def _bad_inputs(tmp_path: Path, base) -> dict[str, Path]:
    keras_bytes = base["paths"][".keras"].read_bytes()
    h5_bytes = base["paths"][".h5"].read_bytes()
    files = {
        "empty.keras": b"",
        "text.h5": b"just some text\n",
        "random.keras": np.random.default_rng(0).bytes(4096),
        "truncated.keras": keras_bytes[: len(keras_bytes) // 2],
        "truncated.h5": h5_bytes[: len(h5_bytes) // 2],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "noconfig.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    base_model().save_weights(tmp_path / "weights_only.weights.h5")
    (tmp_path / "folder.keras").mkdir()
    (tmp_path / "savedmodel").mkdir()
    (tmp_path / "savedmodel" / "saved_model.pb").write_bytes(b"")
    return {
        "missing": tmp_path / "missing.keras",
        **{name.split(".")[0]: tmp_path / name for name in files},
        "noconfig": tmp_path / "noconfig.keras",
        "weights_only": tmp_path / "weights_only.weights.h5",
        "folder": tmp_path / "folder.keras",
        "savedmodel": tmp_path / "savedmodel",
    }


@pytest.mark.parametrize("command", ["freeze", "strip"])
def test_bad_inputs_exit_1_with_one_line_and_write_nothing(base, tmp_path, capsys, command):
    inputs = _bad_inputs(tmp_path, base)
    before = listing(tmp_path)
    for label, path in inputs.items():
        code, out, err = run(capsys, command, path, "-o", tmp_path / "out.keras")
        assert code == 1, (label, err)
        assert_one_error_line(err, path.name)
        assert out == ""
    assert listing(tmp_path) == before
    code, _, err = run(capsys, "freeze", inputs["savedmodel"], "-o", tmp_path / "o.keras")
    assert "SavedModel" in err


def test_bad_inputs_for_inspect_and_verify(base, tmp_path, capsys):
    inputs = _bad_inputs(tmp_path, base)
    for label, path in inputs.items():
        for argv in (["inspect", path], ["verify", path, "--against", base["paths"][".keras"]],
                     ["verify", base["paths"][".keras"], "--against", path]):
            code, out, err = run(capsys, *argv)
            assert code == 1, (label, argv, err)
            assert_one_error_line(err, path.name)


def test_model_without_dense_layer(tmp_path, capsys):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Activation("relu", name="act")])
    model.save(tmp_path / "nodense.keras")
    code, _, err = run(capsys, "freeze", tmp_path / "nodense.keras", "-o", tmp_path / "o.keras")
    assert code == 1
    assert_one_error_line(err, "no layer of a supported kind")
    assert not (tmp_path / "o.keras").exists()


def test_layer_pattern_matching_nothing_lists_the_dense_layers(base, tmp_path, capsys):
    code, _, err = run(capsys, "freeze", base["paths"][".keras"], "-o", tmp_path / "o.keras",
                       "--layer", "conv*")
    assert code == 1
    assert_one_error_line(err, "conv*", "hidden, out")
    assert listing(tmp_path) == []


def test_rule_that_does_not_fit_names_layer_and_shapes(base, tmp_path, capsys):
    np.save(tmp_path / "mask.npy", np.ones((5, 5), bool))
    code, _, err = run(capsys, "freeze", base["paths"][".keras"], "-o", tmp_path / "o.keras",
                       "--layer", "hidden", "--mask", tmp_path / "mask.npy")
    assert code == 1
    assert_one_error_line(err, "hidden", "(4, 3)", "(5, 5)")
    code, _, err = run(capsys, "freeze", base["paths"][".keras"], "-o", tmp_path / "o.keras",
                       "--units", "7")
    assert code == 1
    assert_one_error_line(err, "7")
    assert listing(tmp_path) == ["mask.npy"]


@pytest.fixture
def keras_safe_mode_restored():
    """Puts back Keras' process-wide safe-mode switch if a test left it off."""
    from keras.src.backend.common import global_state

    before = global_state.get_global_attribute("safe_mode_saving")
    yield
    global_state.set_global_attribute("safe_mode_saving", before)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_unsafe_files_are_refused_unless_asked(tmp_path, capsys, suffix, keras_safe_mode_restored):
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2.0, name="double"),
        keras.layers.Dense(2, name="d"),
    ])
    source = tmp_path / f"lambda{suffix}"
    model.save(source)
    code, _, err = run(capsys, "freeze", source, "-o", tmp_path / "o.keras")
    assert code == 1
    assert_one_error_line(err, "--unsafe")
    assert not (tmp_path / "o.keras").exists()

    code, _, err = run(capsys, "freeze", source, "-o", tmp_path / "o.keras", "--unsafe")
    assert code == 0, err
    # The random kernel holds no exact zero: freeze says that it pinned nothing.
    assert err.startswith("warning: --unsafe") and len(err.splitlines()) == 2
    assert err.splitlines()[1].startswith("warning: Rule 'zeros' selects no entry in the layer that '*' selects")
    assert read_dense_weights(tmp_path / "o.keras")["d"].class_name == "MaskedDense"
    x = np.ones((2, 4), "float32")
    frozen = ks.load_model(tmp_path / "o.keras", safe_mode=False)
    assert np.array_equal(ops.convert_to_numpy(frozen(x)), ops.convert_to_numpy(model(x)))
    code, _, err = run(capsys, "strip", tmp_path / "o.keras", "-o", tmp_path / f"s{suffix}", "--unsafe")
    assert code == 0, err
    stripped = ks.load_model(tmp_path / f"s{suffix}", safe_mode=False)
    assert np.array_equal(ops.convert_to_numpy(stripped(x)), ops.convert_to_numpy(model(x)))
    # --unsafe applied to that one load: Keras' safe mode is still on in this process.
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(tmp_path / "o.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        keras.layers.Lambda.from_config(model.get_layer("double").get_config())


# --- usage errors, unexpected errors, --debug ------------------------------------


@pytest.mark.parametrize("argv", [
    [],
    ["melt", "x.keras"],
    ["freeze"],
    ["freeze", "x.keras", "--below", "abc"],
    ["freeze", "x.keras", "--below", "nan"],
    ["freeze", "x.keras", "--below", "0.1", "--units", "1"],
    ["freeze", "x.keras", "--fraction", "0.5"],
    ["freeze", "x.keras", "--seed", "1"],
    ["freeze", "x.keras", "--inputs", "0", "--bias"],
    ["freeze", "x.keras", "--index", "0,1", "--bias"],
    ["freeze", "x.keras", "--connections", "c.npy", "--bias"],
    ["freeze", "x.keras", "--index", "1,2,3"],
    ["freeze", "x.keras", "--inputs", "a,b"],
    ["freeze", "x.keras", "--units", "5-2"],
    ["freeze", "x.keras", "--spec", "p.toml", "--layer", "hidden"],
    ["freeze", "x.keras", "--spec", "p.toml", "--value", "1"],
    ["inspect"],
    ["inspect", "x.keras", "--show", "--json"],
    ["verify", "x.keras"],
    ["strip", "x.keras", "--below", "1"],
])
def test_usage_errors_exit_2(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert "usage:" in err and "Traceback" not in err
    assert listing(tmp_path) == []


def test_usage_errors_of_the_library_exit_2_with_the_usage(base, tmp_path, capsys, monkeypatch):
    from kerasurgery.cli import spec
    from kerasurgery.errors import UsageError

    def contradiction(*args, **kwargs):
        raise UsageError("these arguments contradict each other")

    monkeypatch.setattr(spec, "pins_for", contradiction)
    code, out, err = run(capsys, "freeze", base["paths"][".keras"], "-o", tmp_path / "o.keras")
    assert code == 2 and out == ""
    assert err.startswith("usage: kerasurgery freeze")
    assert err.strip().splitlines()[-1] == (
        "kerasurgery freeze: error: these arguments contradict each other"
    )
    assert listing(tmp_path) == []


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "examples:" in out and "kerasurgery freeze" in out and "verify" in out
    assert "130 interrupted (Ctrl-C)" in out
    for command in ("freeze", "inspect", "strip", "verify"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "examples:" in out, command
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"kerasurgery {ks.__version__}"


def test_unexpected_errors_are_one_line_unless_debug(base, tmp_path, capsys, monkeypatch):
    from kerasurgery.model import surgery

    def boom(model, pins):
        raise RuntimeError("boom")

    monkeypatch.setattr(surgery, "freeze", boom)  # .h5: the Keras path, where it runs
    code, _, err = run(capsys, "freeze", base["paths"][".h5"], "-o", tmp_path / "o.h5")
    assert code == 1
    assert_one_error_line(err, "RuntimeError: boom", "--debug")
    code, _, err = run(capsys, "freeze", base["paths"][".h5"], "-o", tmp_path / "o.h5", "--debug")
    assert code == 1
    assert "Traceback" in err and "boom" in err
    code, _, err = run(capsys, "--debug", "freeze", base["paths"][".h5"], "-o", tmp_path / "o.h5")
    assert code == 1 and "Traceback" in err
    assert listing(tmp_path) == []


def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(base, tmp_path, capsys, monkeypatch):
    from kerasurgery.model import surgery

    def interrupted(model, pins):
        raise KeyboardInterrupt

    monkeypatch.setattr(surgery, "freeze", interrupted)
    code, out, err = run(capsys, "freeze", base["paths"][".h5"], "-o", tmp_path / "o.h5")
    assert code == 130 and out == ""
    assert err == "error: interrupted.\n"
    assert listing(tmp_path) == []


# --- inspect ---------------------------------------------------------------------


def test_inspect_table_and_json(base, tmp_path, capsys):
    out = tmp_path / "f.h5"
    run_json(capsys, "freeze", base["paths"][".h5"], "-o", out, "--below", "0.3", "--bias")
    report = run_json(capsys, "inspect", out)
    assert set(report) == {"file", "format", "keras_version", "layers", "totals"}
    assert report["format"] == "h5" and report["keras_version"] == keras.__version__
    layers = {l["name"]: l for l in report["layers"]}
    for name, (kernel, bias) in base["weights"].items():
        assert layers[name]["kernel_shape"] == list(kernel.shape)
        assert layers[name]["pinned_kernel"] == int((np.abs(kernel) < 0.3).sum())
        assert layers[name]["pinned_bias"] == int((np.abs(bias) < 0.3).sum())
        assert layers[name]["pinned"] == layers[name]["pinned_kernel"] + layers[name]["pinned_bias"]
        assert layers[name]["zeros"] == int((kernel == 0).sum()) and layers[name]["size"] == kernel.size
    kernels = [kernel for kernel, _ in base["weights"].values()]
    assert report["totals"] == {
        "layers": len(report["layers"]), "size": sum(k.size for k in kernels),
        "zeros": sum(int((k == 0).sum()) for k in kernels),
        "pinned_kernel": sum(int((np.abs(k) < 0.3).sum()) for k in kernels),
        "pinned_bias": sum(int((np.abs(b) < 0.3).sum()) for _, b in base["weights"].values()),
        "pinned": sum(l["pinned"] for l in report["layers"]),
    }
    code, text, _ = run(capsys, "inspect", out)
    assert code == 0
    assert "h5 file written by Keras" in text and "hidden" in text and "MaskedDense" in text
    assert "zeros %" in text and "total" in text
    only = run_json(capsys, "inspect", out, "--layer", "out")
    assert [l["name"] for l in only["layers"]] == ["out"]
    code, _, err = run(capsys, "inspect", out, "--layer", "nope")
    assert code == 1
    assert_one_error_line(err, "'nope'", "hidden")


def test_inspect_show_draws_the_exact_pattern_of_a_small_layer(base, tmp_path, capsys):
    out = tmp_path / "f.keras"
    run_json(capsys, "freeze", base["paths"][".keras"], "-o", out)
    code, text, _ = run(capsys, "inspect", out, "--layer", "hidden", "--show")
    assert code == 0
    kernel = base["weights"]["hidden"][0]
    rows = ["".join("█" if z else "·" for z in row) for row in kernel == 0]
    lines = text.splitlines()
    start = lines.index(f"hidden: kernel 4×3, 3 of 12 pinned (25.0%)")
    assert lines[start + 1 : start + 5] == rows
    assert lines[start + 5 : start + 7] == ["bias:", "···"]


def test_inspect_show_downsamples_a_large_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    model = keras.Sequential([keras.Input((100,)), keras.layers.Dense(300, name="wide")])
    model.save(tmp_path / "wide.keras")
    out = tmp_path / "wide.frozen.keras"
    run_json(capsys, "freeze", tmp_path / "wide.keras", "-o", out, "--inputs", "0-49")
    code, text, _ = run(capsys, "inspect", out, "--layer", "wide", "--show")
    assert code == 0
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("wide: kernel 100×300"))
    assert "each cell = 4×5 entries" in lines[start]
    grid = lines[start + 1 : start + 26]  # ceil(100 / 4) = 25 rows of ceil(300 / 5) = 60 cells
    assert all(len(row) == 60 for row in grid)
    assert grid[:12] == ["█" * 60] * 12
    assert grid[12] == "▒" * 60  # rows 48-51: half pinned
    assert grid[13:] == ["·" * 60] * 12
    assert lines[start + 26] == "bias:"


def test_inspect_show_refuses_a_layer_without_kernel(base, capsys):
    code, _, err = run(capsys, "inspect", base["paths"][".keras"], "--layer", "x", "--show")
    assert code == 1
    assert_one_error_line(err, "InputLayer")


# --- strip -------------------------------------------------------------------------


@pytest.mark.parametrize("target", [".keras", ".h5"])
def test_strip_bakes_pins_into_plain_dense(base, tmp_path, capsys, target):
    frozen = tmp_path / "model.keras"
    run_json(capsys, "freeze", base["paths"][".keras"], "-o", frozen, "--units", "0", "--value", "0.5")
    if target == ".keras":
        code, out, err = run(capsys, "strip", frozen)
        stripped = tmp_path / "model.stripped.keras"
        assert "2 pinned layers turned into plain Keras layers" in out
        assert "no training config (--keep-optimizer keeps it)" in out
    else:
        stripped = tmp_path / "deploy.h5"
        code, out, err = run(capsys, "strip", frozen, "-o", stripped, "--json", "--keep-optimizer")
        report = json.loads(out)
        assert report["output"] == str(stripped) and report["format"] == "h5"
        assert report["training_config"] is True
        assert [(l["name"], l["pinned_kernel"], l["pinned_bias"]) for l in report["stripped"]] == [
            ("hidden", 4, 1), ("out", 3, 1),
        ]
    assert code == 0, err
    report = run_json(capsys, "inspect", stripped)
    assert {l["class_name"] for l in report["layers"] if l["kernel_shape"]} == {"Dense"}
    assert all(l["pinned"] == 0 for l in report["layers"])
    assert np.array_equal(predict(stripped), predict(frozen))
    assert read_dense_weights(stripped)["hidden"].kernel[:, 0].tolist() == [0.5] * 4
    # Unit 0 of each layer (kernel column and bias entry) is 0.5, the rest as it was.
    for name, (kernel, bias) in base["weights"].items():
        layer = read_dense_weights(stripped)[name]
        assert layer.class_name == "Dense" and not layer.kernel_mask.any(), name
        expected_kernel, expected_bias = kernel.copy(), bias.copy()
        expected_kernel[:, 0] = expected_bias[0] = 0.5
        assert np.array_equal(layer.kernel.view("u4"), expected_kernel.view("u4")), name
        assert np.array_equal(layer.bias.view("u4"), expected_bias.view("u4")), name


def test_strip_of_a_plain_model_writes_nothing(base, tmp_path, capsys):
    code, _, err = run(capsys, "strip", base["paths"][".keras"], "-o", tmp_path / "s.keras")
    assert code == 1
    assert_one_error_line(err, "no pinned layer")
    assert listing(tmp_path) == []


# --- verify ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetuned(base, tmp_path_factory) -> dict:
    """A frozen model, honestly fine-tuned with AdamW weight decay, masked and stripped."""
    folder = tmp_path_factory.mktemp("finetune")
    frozen = folder / "frozen.keras"
    assert main(["freeze", str(base["paths"][".keras"]), "-o", str(frozen),
                 "--below", "0.3", "--bias", "--value", "0", "--json"]) == 0
    model = ks.load_model(frozen)
    assert model.compiled and model.optimizer.weight_decay == 0.25
    model.fit(X, Y, epochs=5, batch_size=8, verbose=0)
    masked = folder / "tuned.keras"
    ks.save_model(model, masked)
    stripped = folder / "tuned_plain.h5"
    assert main(["strip", str(masked), "-o", str(stripped), "--json"]) == 0
    return {"frozen": frozen, "masked": masked, "stripped": stripped, "folder": folder}


def test_verify_passes_on_an_honestly_finetuned_model(finetuned, capsys):
    before = read_dense_weights(finetuned["frozen"])
    after = read_dense_weights(finetuned["masked"])
    pinned = sum(int(w.kernel_mask.sum() + w.bias_mask.sum()) for w in before.values())
    # Training moved every free entry, so the check below is not vacuous.
    for name in before:
        free = ~before[name].kernel_mask
        assert np.all(before[name].kernel[free] != after[name].kernel[free]), name
    for candidate in (finetuned["masked"], finetuned["stripped"]):
        report = run_json(capsys, "verify", candidate, "--against", finetuned["frozen"])
        assert report["ok"] is True and report["violations"] == []
        assert report["checked"] == pinned > 0  # > 0: a FROZEN file with pins, so the pass means something
        code, text, _ = run(capsys, "verify", candidate, "--against", finetuned["frozen"])
        assert code == 0 and f"all {pinned} pinned entries" in text


def _tampered(finetuned, name: str, changes) -> Path:
    model = ks.load_model(finetuned["stripped"], compile=False)
    layer = model.get_layer("hidden")
    kernel, bias = layer.get_weights()
    changes(kernel, bias)
    layer.set_weights([kernel, bias])
    path = finetuned["folder"] / name
    ks.save_model(model, path, overwrite=True)
    return path


def test_verify_fails_on_a_tampered_model(finetuned, capsys):
    mask = read_dense_weights(finetuned["frozen"])["hidden"].kernel_mask
    rows, cols = np.nonzero(mask)

    def tamper(kernel, bias):
        kernel[rows[0], cols[0]] += 0.125
        kernel[rows[1], cols[1]] = np.nextafter(kernel[rows[1], cols[1]], np.float32(1))  # one ulp

    path = _tampered(finetuned, "tampered.h5", tamper)
    code, out, err = run(capsys, "verify", path, "--against", finetuned["frozen"], "--json")
    assert code == 1 and err == ""
    report = json.loads(out)
    assert report["ok"] is False
    assert report["violations"] == [{
        "layer": "hidden", "weight": "kernel", "pinned": int(mask.sum()),
        "violations": 2, "max_deviation": 0.125, "reason": "value changed",
    }]
    code, text, _ = run(capsys, "verify", path, "--against", finetuned["frozen"])
    assert code == 1
    assert "hidden" in text and "FAILED: 2 of" in text


def test_verify_json_stays_valid_json_when_pins_turned_nan(finetuned, capsys):
    mask = read_dense_weights(finetuned["frozen"])["hidden"].kernel_mask
    rows, cols = np.nonzero(mask)

    def tamper(kernel, bias):
        kernel[rows[0], cols[0]] = np.nan

    path = _tampered(finetuned, "nan.keras", tamper)
    code, out, _ = run(capsys, "verify", path, "--against", finetuned["frozen"], "--json")
    assert code == 1

    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    report = json.loads(out, parse_constant=refuse)
    assert report["violations"] == [{
        "layer": "hidden", "weight": "kernel", "pinned": int(mask.sum()),
        "violations": 1, "max_deviation": None,
        "reason": "value changed (some to NaN or infinity)",
    }]


def test_verify_reports_missing_layers_and_shape_mismatches(finetuned, tmp_path, capsys):
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(5, name="hidden")(inputs)  # 4x5 where FROZEN has 4x3
    h = keras.layers.Dense(3, name="mid")(h)
    outputs = keras.layers.Dense(2, name="out", use_bias=False)(h)
    keras.Model(inputs, outputs).save(tmp_path / "other.keras")
    inputs = keras.Input((4,), name="x")
    keras.Model(inputs, keras.layers.Dense(2, name="renamed")(inputs)).save(tmp_path / "renamed.keras")
    frozen = read_dense_weights(finetuned["frozen"])

    code, out, _ = run(capsys, "verify", tmp_path / "other.keras", "--against", finetuned["frozen"], "--json")
    assert code == 1
    reasons = {(v["layer"], v["weight"]): v for v in json.loads(out)["violations"]}
    assert reasons[("hidden", "kernel")]["reason"] == "shape [4, 5] in CANDIDATE, [4, 3] in FROZEN"
    assert reasons[("hidden", "bias")]["reason"] == "shape [5] in CANDIDATE, [3] in FROZEN"
    assert reasons[("out", "bias")]["reason"] == "no bias in CANDIDATE"
    assert reasons[("hidden", "kernel")]["violations"] == int(frozen["hidden"].kernel_mask.sum())

    code, out, _ = run(capsys, "verify", tmp_path / "renamed.keras", "--against", finetuned["frozen"], "--json")
    assert code == 1
    violations = json.loads(out)["violations"]
    assert {v["reason"] for v in violations} == {"layer missing from CANDIDATE"}
    assert sum(v["violations"] for v in violations) == sum(
        int(w.kernel_mask.sum() + w.bias_mask.sum()) for w in frozen.values()
    )


def test_verify_refuses_a_frozen_file_with_nothing_pinned(base, capsys):
    # A wrong --against file (here the unfrozen model) must not pass.
    for argv in ([], ["--json"]):
        code, out, err = run(capsys, "verify", base["paths"][".keras"], "--against",
                             base["paths"][".h5"], *argv)
        assert code == 1
        assert_one_error_line(err, str(base["paths"][".h5"]),
                              "FROZEN has no pinned entries: is it the frozen file?")
        if argv:  # --json: the same error as one JSON object on stdout
            document = json.loads(out)
            assert document["exit_code"] == 1
            assert document["error"].endswith("FROZEN has no pinned entries: is it the frozen file?")
        else:
            assert out == ""


def _same_names_in_two_models() -> keras.Model:
    """An outer model and the Sequential nested in it each hold a MaskedDense
    named 'dense', with output unit 0 pinned (4 kernel entries and 1 bias entry)."""
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="dense")], name="inner")
    inner = ks.freeze(inner, {"dense": ks.rules.units([0])})
    inputs = keras.Input((4,), name="x")
    outer = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inner(inputs)), name="outer")
    return ks.freeze(outer, {"dense": ks.rules.units([0])})


def _dense_at(model: keras.Model, path: str) -> keras.layers.Layer:
    for name in path.split("/"):
        model = model.get_layer(name)
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_verify_tells_apart_layers_of_the_same_name_in_nested_models(tmp_path, capsys, suffix):
    frozen = ks.save_model(_same_names_in_two_models(), tmp_path / f"dup.frozen{suffix}")
    inspected = run_json(capsys, "inspect", frozen)
    assert [(l["name"], l["path"], l["pinned"]) for l in inspected["layers"]] == [
        ("x", "x", 0), ("inner", "inner", 0), ("dense", "inner/dense", 5), ("dense", "dense", 5),
    ]
    # --layer takes a path (one layer) or a name (every layer of that name).
    assert [l["path"] for l in run_json(capsys, "inspect", frozen, "--layer", "dense")["layers"]] == [
        "inner/dense", "dense"]
    assert [l["path"] for l in run_json(capsys, "inspect", frozen, "--layer", "inner/dense")["layers"]] == [
        "inner/dense"]
    code, text, _ = run(capsys, "inspect", frozen, "--layer", "inner/dense", "--show")
    assert code == 0 and "inner/dense: kernel 4×4, 4 of 16 pinned (25.0%)" in text
    assert "dense: kernel 4×2" not in text
    stripped = tmp_path / f"dup.stripped{suffix}"
    report = run_json(capsys, "strip", frozen, "-o", stripped)
    assert [(l["name"], l["path"], l["pinned"]) for l in report["stripped"]] == [
        ("dense", "inner/dense", 5), ("dense", "dense", 5),
    ]
    for candidate in (frozen, stripped):
        report = run_json(capsys, "verify", candidate, "--against", frozen)
        assert report["ok"] is True and report["checked"] == 10 and report["violations"] == []

    for path in ("dense", "inner/dense"):
        model = ks.load_model(stripped, compile=False)
        layer = _dense_at(model, path)
        kernel, bias = layer.get_weights()
        kernel[3, 0] += 0.25  # unit 0 is pinned
        layer.set_weights([kernel, bias])
        tampered = ks.save_model(model, tmp_path / f"tampered{suffix}", overwrite=True)
        code, out, _ = run(capsys, "verify", tampered, "--against", frozen, "--json")
        assert code == 1, path
        assert json.loads(out)["violations"] == [{
            "layer": path, "weight": "kernel", "pinned": 4, "violations": 1,
            "max_deviation": 0.25, "reason": "value changed",
        }]
        code, text, _ = run(capsys, "verify", tampered, "--against", frozen)
        assert code == 1 and path in text and "FAILED: 1 of 10" in text


# --- real processes: what a user sees ------------------------------------------------

_PROBE = (
    "import sys; from kerasurgery.cli import main; code = main(sys.argv[1:]); "
    "sys.stdout.flush(); "
    "print('IMPORTED=' + ','.join(m for m in ('tensorflow', 'keras', 'jax', 'torch') "
    "if m in sys.modules), file=sys.stderr); sys.exit(code)"
)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, **extra}


def _probe(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PROBE, *map(str, argv)],
                          capture_output=True, text=True, env=_env(), timeout=120)


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["freeze", "--help"],
    ["inspect", "{frozen}", "--json"],
    ["inspect", "{frozen}", "--layer", "hidden", "--show"],
    ["verify", "{frozen}", "--against", "{frozen}"],
])
def test_help_inspect_and_verify_do_not_import_tensorflow(finetuned, argv):
    result = _probe(*(a.format(frozen=finetuned["frozen"]) for a in argv))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "IMPORTED="


def test_module_run_freeze_shows_no_tensorflow_log(base, tmp_path):
    out = tmp_path / "o.keras"
    result = subprocess.run(
        [sys.executable, "-m", "kerasurgery", "freeze", base["paths"][".keras"], "-o", out],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "4 kernel and 0 bias entries pinned" in result.stdout
    stored = read_dense_weights(out)
    for name, (kernel, _) in base["weights"].items():
        assert stored[name].class_name == "MaskedDense", name
        assert np.array_equal(stored[name].kernel_mask, kernel == 0), name


def test_module_run_errors_are_one_line_without_tensorflow_log(base, tmp_path):
    (tmp_path / "noconfig.keras").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "noconfig.keras", "w") as archive:
        archive.writestr("metadata.json", "{}")
    for argv, code in (
        (["freeze", tmp_path / "noconfig.keras", "-o", tmp_path / "o.keras"], 1),  # after TF import
        (["strip", tmp_path / "absent.keras"], 1),
        (["freeze", base["paths"][".keras"], "--below", "x"], 2),
    ):
        result = subprocess.run([sys.executable, "-m", "kerasurgery", *map(str, argv)],
                                capture_output=True, text=True, env=_env(), timeout=300)
        assert result.returncode == code, result.stderr
        assert result.stdout == ""
        assert not any(marker in result.stderr for marker in TF_LOG_MARKERS), result.stderr
        if code == 1:
            assert_one_error_line(result.stderr)
    assert not (tmp_path / "o.keras").exists()


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "kerasurgery"
    if not script.exists():
        pytest.skip("the package is not installed in this interpreter's environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "examples:" in result.stdout


# --- the command line as people use it (issue 18) --------------------------------
#
# Piped or logged output keeps every name and number whole; the freeze and
# strip tables say what the output holds; freeze warns when it pins nothing;
# a rule that does not fit a layer a glob selected skips it with a note
# (--exclude leaves layers out); every --help lists the exit codes; names are
# printed as text, never as markup or control sequences.

LONG = "a_layer_name_of_sixty_characters_that_a_table_must_keep_whole"
assert len(LONG) == 61


def table_rows(out: str) -> list[list[str]]:
    """The cells of each body and footer row of the rich tables in `out`."""
    return [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in out.splitlines() if line.startswith("│")]


def _long_named_model() -> keras.Model:
    """A Functional model holding a nested one, with 61-character names and a 1.2M-entry kernel."""
    keras.utils.set_random_seed(3)
    inner_in = keras.Input((64,))
    inner = keras.Model(inner_in, keras.layers.Dense(1200, name=f"{LONG}_1")(inner_in),
                        name=f"nested_{LONG}")
    x = keras.Input((64,), name="x")
    out = keras.layers.Dense(1024, name=f"{LONG}_2")(inner(x))
    model = keras.Model(x, out, name="long")
    rng = np.random.default_rng(3)
    for layer in (inner.layers[-1], model.layers[-1]):
        kernel, bias = layer.get_weights()
        layer.set_weights([np.where(rng.random(kernel.shape) < 0.37, 0, kernel).astype("float32"), bias])
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_piped_output_keeps_every_name_and_number_whole(tmp_path, capsys, suffix):
    model = _long_named_model()
    source = tmp_path / f"long{suffix}"
    model.save(source)
    inner_path = f"nested_{LONG}/{LONG}_1"
    kernels = {inner_path: model.layers[1].layers[-1].get_weights()[0],
               f"{LONG}_2": model.layers[-1].get_weights()[0]}
    zeros = {path: int(np.count_nonzero(k == 0)) for path, k in kernels.items()}
    assert all(n > 10_000 for n in zeros.values())  # numbers with thousands separators
    total_size = sum(k.size for k in kernels.values())
    assert total_size == 64 * 1200 + 1200 * 1024 == 1_305_600

    frozen, stripped = tmp_path / f"f{suffix}", tmp_path / f"s{suffix}"
    outputs = {}
    for name, argv in (("inspect", ["inspect", source]), ("freeze", ["freeze", source, "-o", frozen]),
                       ("inspect frozen", ["inspect", frozen]), ("strip", ["strip", frozen, "-o", stripped])):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert "…" not in out and "..." not in out
        assert max(len(line) for line in out.splitlines()) > 80  # not cut to 80 columns
        outputs[name] = out
    for name, out in outputs.items():
        rows = {row[0]: row for row in table_rows(out)}
        for path, kernel in kernels.items():
            assert path in rows, (name, out)  # the whole path, in one cell of one line
            assert rows[path][2] == "×".join(map(str, kernel.shape))
            pinned = 0 if name == "inspect" else zeros[path]
            assert rows[path][3] == f"{pinned:,}"
            assert rows[path][5] == f"{100 * pinned / kernel.size:.1f}"
    for name in ("inspect", "inspect frozen"):
        total = table_rows(outputs[name])[-1]
        pinned = 0 if name == "inspect" else sum(zeros.values())
        assert total[:4] == ["total", "5 layers", "1,305,600", f"{pinned:,}"]
        assert total[-1] == f"{100 * sum(zeros.values()) / total_size:.1f}"
    assert f"{sum(zeros.values()):,} kernel and 0 bias entries pinned" in outputs["freeze"]
    assert str(frozen) in outputs["freeze"].splitlines()[0]  # the title: the whole output path


def test_freeze_and_strip_tables_say_what_the_output_holds(base, tmp_path, capsys):
    frozen, stripped = tmp_path / "f.keras", tmp_path / "s.h5"
    code, out, err = run(capsys, "freeze", base["paths"][".keras"], "-o", frozen)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == [
        "layer", "class", "kernel", "pinned kernel", "pinned bias", "pinned %"]
    zeros = {n: int(np.count_nonzero(k == 0)) for n, (k, _) in base["weights"].items()}
    assert table_rows(out) == [
        ["hidden", "MaskedDense", "4×3", f"{zeros['hidden']}", "0", f"{100 * zeros['hidden'] / 12:.1f}"],
        ["out", "MaskedDense", "3×2", f"{zeros['out']}", "0", f"{100 * zeros['out'] / 6:.1f}"],
    ]
    code, out, err = run(capsys, "strip", frozen, "-o", stripped)
    assert code == 0, err
    assert out.splitlines()[0] == (f"{stripped}: pinned layers now plain Keras layers, their pinned "
                                   "entries baked in at their pinned values")
    header = next(line for line in out.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == [
        "layer", "class", "kernel", "baked-in kernel", "baked-in bias", "baked-in %"]
    assert [row[:4] for row in table_rows(out)] == [
        ["hidden", "Dense", "4×3", f"{zeros['hidden']}"], ["out", "Dense", "3×2", f"{zeros['out']}"]]
    assert {layer["class_name"] for layer in run_json(capsys, "inspect", stripped)["layers"]} == {"InputLayer", "Dense"}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_freeze_warns_when_nothing_is_pinned(tmp_path, capsys, suffix):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    assert not any(np.any(w == 0) for w in model.get_weights()[::2])  # no exact zero in a kernel
    source = tmp_path / f"dense{suffix}"
    model.save(source)
    message = ("Rule 'zeros' selects no entry in any of the 2 layers that '*' selects: "
               "nothing is pinned there.")
    code, out, err = run(capsys, "freeze", source, "-o", tmp_path / f"o{suffix}")
    assert code == 0
    assert err == f"warning: {message}\n"
    assert "0 kernel and 0 bias entries pinned" in out
    code, out, err = run(capsys, "freeze", source, "-o", tmp_path / f"j{suffix}", "--json")
    assert code == 0 and err == f"warning: {message}\n"
    report = json.loads(out)
    assert report["warnings"] == [message] and report["skipped"] == []
    assert [layer["pinned"] for layer in report["layers"]] == [0, 0]


def _cnn() -> keras.Model:
    """A first convolution over 3 input channels (n:m with m=4 cannot apply), then 8 and 16 channels."""
    keras.utils.set_random_seed(4)
    x = keras.Input((6, 6, 3), name="image")
    h = keras.layers.Conv2D(8, 3, name="stem")(x)
    h = keras.layers.Conv2D(8, 3, name="conv")(h)
    out = keras.layers.Dense(4, name="head")(keras.layers.Flatten(name="flat")(h))
    return keras.Model(x, out, name="cnn")


@pytest.mark.parametrize("suffix, path", [(".keras", "offline path"), (".h5", "Keras path")])
def test_a_rule_that_does_not_fit_a_globbed_layer_skips_it_with_a_note(tmp_path, capsys, suffix, path):
    from kerasurgery import _plan
    from kerasurgery.files.inspection import read_weights
    from kerasurgery.pruning import n_of_m_mask

    model = _cnn()
    source = tmp_path / f"cnn{suffix}"
    model.save(source)
    reason = ("Layer 'stem': The input axis of shape (3, 3, 3, 8) holds 3 entries, not a multiple "
              "of m=4; n:m pruning needs whole groups.")
    expected = {
        "conv": n_of_m_mask(model.get_layer("conv").get_weights()[0], 2, 4, (-2,)),
        "head": n_of_m_mask(model.get_layer("head").get_weights()[0], 2, 4, (0,)),
    }
    out_path = tmp_path / f"o{suffix}"
    code, out, err = run(capsys, "freeze", source, "-o", out_path, "--n-of-m", "2:4", "--json", "--debug")
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0].startswith(f"kerasurgery: freeze: {path}")  # both paths decide the same
    assert lines[1:] == [f"note: left layer 'stem' as it is ('*' selects it by pattern): {reason}"]
    report = json.loads(out)
    assert report["skipped"] == [{"layer": "stem", "pattern": "*", "reason": reason}]
    assert [(l["path"], l["class_name"], l["pinned_kernel"]) for l in report["layers"]] == [
        ("stem", "Conv2D", 0), ("conv", "MaskedConv2D", 288), ("head", "MaskedDense", 64)]
    stored = read_weights(out_path)
    assert stored["stem"].class_name == "Conv2D"
    assert not stored["stem"].weights["kernel"].mask.any()
    for name, mask in expected.items():
        assert np.array_equal(stored[name].weights["kernel"].mask, mask)
        assert not stored[name].weights["bias"].mask.any()
        assert np.array_equal(stored[name].weights["kernel"].effective,
                              np.where(mask, np.float32(0), model.get_layer(name).get_weights()[0]))
    # The library decides the same.
    with pytest.warns(_plan.LayerSkippedWarning, match="Skipped layer 'stem'"):
        frozen = ks.freeze(model, {"*": ks.rules.n_of_m(2, 4)})
    assert type(frozen.get_layer("stem")).__name__ == "Conv2D"
    assert np.array_equal(frozen.get_layer("conv").pins().kernel, expected["conv"])

    # Named, the layer that the rule does not fit is an error; nothing is written.
    code, _, err = run(capsys, "freeze", source, "-o", tmp_path / f"n{suffix}", "--n-of-m", "2:4",
                       "--layer", "stem", "--layer", "conv")
    assert code == 1
    assert_one_error_line(err, reason)
    assert not (tmp_path / f"n{suffix}").exists()
    # --exclude leaves it out: no note, the same pins.
    code, out, err = run(capsys, "freeze", source, "-o", tmp_path / f"e{suffix}", "--n-of-m", "2:4",
                         "--exclude", "stem", "--json")
    assert code == 0 and err == ""
    assert json.loads(out)["skipped"] == [] and json.loads(out)["layers"] == report["layers"]
    excluded = read_weights(tmp_path / f"e{suffix}")
    for name, mask in expected.items():
        assert np.array_equal(excluded[name].weights["kernel"].mask, mask)
    # A glob of --exclude, as --layer reads it (across '/'), and one that matches nothing.
    code, out, err = run(capsys, "freeze", source, "-o", tmp_path / f"g{suffix}", "--below", "10",
                         "--exclude", "[sc]*", "--json")
    assert code == 0, err
    assert [(l["path"], l["pinned_kernel"]) for l in json.loads(out)["layers"]] == [
        ("stem", 0), ("conv", 0), ("head", 32 * 4)]
    code, _, err = run(capsys, "freeze", source, "-o", tmp_path / f"x{suffix}", "--exclude", "nope")
    assert code == 1
    assert_one_error_line(err, "Cannot exclude 'nope': No supported layer matches 'nope'")
    code, _, err = run(capsys, "freeze", source, "-o", tmp_path / f"x{suffix}", "--exclude", "*")
    assert code == 1
    assert_one_error_line(err, "Every layer that '*' selects is excluded: stem, conv, head.")
    assert not (tmp_path / f"x{suffix}").exists()


def test_a_bias_rule_skips_a_globbed_layer_without_bias(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(3, use_bias=False, name="nobias")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    model.save(tmp_path / "mixed.keras")
    code, out, err = run(capsys, "freeze", tmp_path / "mixed.keras", "--units", "0", "--bias", "--json")
    assert code == 0
    assert err == ("note: left layer 'nobias' as it is ('*' selects it by pattern): Layer 'nobias': "
                   "Rule 'units' targets the bias, but the layer has none.\n")
    report = json.loads(out)
    assert [(l["name"], l["class_name"], l["pinned_kernel"], l["pinned_bias"]) for l in report["layers"]] == [
        ("nobias", "Dense", 0, 0), ("out", "MaskedDense", 3, 1)]


@pytest.mark.parametrize("argv", [["--help"], ["freeze", "--help"], ["inspect", "--help"],
                                  ["strip", "--help"], ["verify", "--help"]])
def test_every_help_lists_every_exit_code(capsys, argv):
    code, out, _ = run(capsys, *argv)
    assert code == 0
    text = " ".join(out.split())
    assert ("exit codes: 0 success, 1 error (nothing written) or failed verification, 2 usage error, "
            "130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP)") in text


ANSI = "\x1b[31mred\x1b[0m"
MARKUP = "[red]x[bold]"


def _crafted(source: Path, target: Path, old: str, new: str) -> None:
    """`source` with the layer named `old` renamed `new` in its config and weights (Keras
    refuses a '/' in a name; a file may hold one all the same)."""
    import io

    import h5py

    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["config.json"] = members["config.json"].replace(json.dumps(old)[1:-1].encode(),
                                                            json.dumps(new)[1:-1].encode())
    weights = io.BytesIO(members["model.weights.h5"])
    with h5py.File(weights, "r+") as f:
        for group in f["layers"].values():
            if group["vars"].attrs.get("name") == old:
                group["vars"].attrs["name"] = new
    members["model.weights.h5"] = weights.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_names_are_printed_as_text_never_as_markup_or_control_sequences(tmp_path, capsys, suffix):
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name=MARKUP),
                              keras.layers.Dense(2, name=ANSI)], name="names")
    source = tmp_path / f"names{suffix}"
    model.save(source)
    frozen, stripped = tmp_path / f"f{suffix}", tmp_path / f"s{suffix}"
    shown = {MARKUP: MARKUP, ANSI: "\\x1b[31mred\\x1b[0m"}
    for argv, code in (
        (["inspect", source], 0),
        (["freeze", source, "-o", frozen, "--below", "10", "--value", "0.5"], 0),
        (["inspect", frozen, "--show"], 0),
        (["verify", source, "--against", frozen], 1),  # every pin moved: a table of violations
        (["strip", frozen, "-o", stripped], 0),
        (["verify", stripped, "--against", frozen], 0),
        (["inspect", frozen, "--layer", "nope"], 1),  # the error lists the names
    ):
        got, out, err = run(capsys, *argv)
        assert got == code, err
        assert "\x1b" not in out + err and "MarkupError" not in err
        if argv[0] in ("inspect", "freeze", "strip") and code == 0:
            names = [row[0] for row in table_rows(out) if row[0] != "total"]
            assert [n for n in names if n in shown.values()] == [MARKUP, shown[ANSI]], out
        if argv[0] == "verify" and code == 1:
            assert {row[0] for row in table_rows(out)} == {MARKUP, shown[ANSI]}
        if argv[0] == "inspect" and code == 1:
            assert f"Layers: {MARKUP}, {shown[ANSI]}" in err
    # --json keeps the names exactly, escaped as JSON escapes them.
    for argv in (["inspect", frozen], ["freeze", source, "-o", tmp_path / f"j{suffix}"],
                 ["strip", frozen, "-o", tmp_path / f"js{suffix}"]):
        code, out, err = run(capsys, *argv, "--json")
        assert code == 0, err
        assert "\x1b" not in out and "\\u001b[31mred\\u001b[0m" in out
        layers = json.loads(out)["layers" if argv[0] != "strip" else "stripped"]
        assert [l["name"] for l in layers if l["class_name"] != "InputLayer"] == [MARKUP, ANSI]


def test_a_crafted_name_that_closes_a_markup_tag_is_printed_as_text(tmp_path, capsys):
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="bold"),
                              keras.layers.Dense(2, name="out")], name="names")
    model.save(tmp_path / "plain.keras")
    crafted = tmp_path / "crafted.keras"
    _crafted(tmp_path / "plain.keras", crafted, "bold", "[/bold]")
    code, out, err = run(capsys, "inspect", crafted)
    assert code == 0, err
    assert [row[0] for row in table_rows(out)] == ["[/bold]", "out", "total"]
    assert [l["name"] for l in run_json(capsys, "inspect", crafted)["layers"]] == ["[/bold]", "out"]
    code, out, err = run(capsys, "freeze", crafted, "-o", tmp_path / "f.keras", "--below", "10")
    assert code == 0, err
    assert [row[:2] for row in table_rows(out)] == [["[/bold]", "MaskedDense"], ["out", "MaskedDense"]]
