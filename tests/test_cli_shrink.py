"""The command line's structured pruning: `freeze --prune-units`, `inspect --units`, `shrink`.

One small CNN (a residual pair of convolutions, a BatchNormalization, a
LayerNormalization that leaves its Dense alone, a model output) is saved
once, and pruned once through the command line; each test reads what the
commands wrote and compares it with the library (`ks.prune_units`,
`dependency_groups`) and with plain Keras.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery.cli import main
from kerasurgery.files.inspection import read_weights
from tests.test_cli import assert_one_error_line, digest, listing, run, run_json

X = np.random.default_rng(3).normal(size=(4, 8, 8, 3)).astype("float32")
CONVS = ("conv_a", "conv_b", "conv_c")


def _net() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3), name="x")
    a = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(x)
    a = keras.layers.BatchNormalization(name="bn_a")(a)
    a = keras.layers.Activation("relu", name="relu_a")(a)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(a)
    c = keras.layers.Conv2D(8, 1, name="conv_c")(x)
    s = keras.layers.Add(name="add")([b, c])
    g = keras.layers.GlobalAveragePooling2D(name="gap")(s)
    h = keras.layers.Dense(6, activation="relu", name="hidden")(g)
    h = keras.layers.LayerNormalization(name="ln")(h)
    y = keras.layers.Dense(3, name="out")(h)
    model = keras.Model(x, y, name="net")
    model.compile("adam", "mse")
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """net.keras, and pruned.keras written by `freeze --prune-units 0.5` (its JSON too)."""
    folder = tmp_path_factory.mktemp("units")
    model = _net()
    model.save(folder / "net.keras")
    code = main(["freeze", str(folder / "net.keras"), "--prune-units", "0.5",
                        "-o", str(folder / "pruned.keras"), "--json"])
    assert code == 0
    return {"folder": folder, "net": folder / "net.keras", "pruned": folder / "pruned.keras",
            "model": model}


def _masks(path: Path) -> dict[str, dict[str, np.ndarray]]:
    return {p: {w: np.asarray(s.mask) for w, s in layer.weights.items()}
            for p, layer in read_weights(path).items()}


def test_freeze_prune_units_pins_what_the_library_pins(files, tmp_path, capsys):
    expected = ks.prune_units(files["model"], 0.5)
    pinned = ks.load_model(files["pruned"], compile=False)
    for name in CONVS:
        want = expected.get_layer(name).pin_state()
        got = pinned.get_layer(name).pin_state()
        assert set(got) == set(want)
        for weight in want:
            np.testing.assert_array_equal(np.asarray(got[weight].mask), np.asarray(want[weight].mask))
        assert int(np.asarray(got["bias"].mask).sum()) == 4  # round(0.5 * 8) units
    np.testing.assert_array_equal(ops.convert_to_numpy(pinned(X)), ops.convert_to_numpy(expected(X)))
    # --norm 1 ranks by L1, as the library does; --layer limits the groups.
    document = run_json(capsys, "freeze", files["net"], "--prune-units", "0.25", "--norm", "1",
                        "--layer", "conv_a", "-o", tmp_path / "l1.keras")
    want = ks.prune_units(files["model"], 0.25, norm=1, layers="conv_a")
    masks = _masks(tmp_path / "l1.keras")
    np.testing.assert_array_equal(masks["conv_a"]["kernel"],
                                  np.asarray(want.get_layer("conv_a").pin_state()["kernel"].mask))
    assert {row["path"]: row["pinned_bias"] for row in document["layers"]}["conv_a"] == 2
    assert "conv_b" not in masks or not masks["conv_b"]["kernel"].any()
    # A fraction that rounds to no unit pins nothing: a warning, the output as for any rule.
    code, out, err = run(capsys, "freeze", files["net"], "--prune-units", "0.01", "-o", tmp_path / "no.keras")
    assert code == 0 and "prune_units(0.01)" in err and "nothing is pinned" in err
    assert "kerasurgery shrink" not in out and (tmp_path / "no.keras").is_file()


def test_spec_key_prune_units_equals_the_flag(files, tmp_path, capsys):
    spec = tmp_path / "pins.toml"
    spec.write_text(textwrap.dedent("""\
        [[layer]]
        pattern = "conv_b"
        prune_units = 0.5
        norm = 1

        [[layer]]
        pattern = "hidden"
        below = 0.05
    """))
    run_json(capsys, "freeze", files["net"], "--spec", spec, "-o", tmp_path / "spec.keras")
    run_json(capsys, "freeze", files["net"], "--prune-units", "0.5", "--norm", "1", "--layer", "conv_b",
             "-o", tmp_path / "flag.keras")
    by_spec, by_flag = _masks(tmp_path / "spec.keras"), _masks(tmp_path / "flag.keras")
    for name in ("conv_b", "conv_c"):  # one residual group: both branches
        for weight, mask in by_flag[name].items():
            np.testing.assert_array_equal(by_spec[name][weight], mask)
        assert by_spec[name]["bias"].sum() == 4
    assert not by_spec.get("conv_a", {}).get("kernel", np.zeros(1)).any()
    hidden = files["model"].get_layer("hidden").get_weights()[0]
    np.testing.assert_array_equal(by_spec["hidden"]["kernel"], np.abs(hidden) < 0.05)


@pytest.mark.parametrize("argv, code, fragment", [
    (["--prune-units", "0.5", "--exclude", "conv_a"], 2, "--exclude cannot be combined"),
    (["--prune-units", "0.5", "--value", "1"], 2, "takes no value"),
    (["--prune-units", "0.5", "--bias"], 2, "prunes whole units"),
    (["--prune-units", "0.5", "--seed", "1"], 2, "seed applies"),
    (["--prune-units", "0.5", "--norm", "3"], 2, "invalid choice"),
    (["--prune-units", "0.5", "--smallest", "0.5"], 2, "not allowed with"),
    (["--prune-units", "1.5"], 1, "1.5"),
])
def test_prune_units_flag_errors(files, tmp_path, capsys, argv, code, fragment):
    got, out, err = run(capsys, "freeze", files["net"], *argv, "-o", tmp_path / "o.keras")
    assert got == code and out == "", err
    assert fragment in err and "Traceback" not in err
    if code == 1:
        assert_one_error_line(err, fragment)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("entry, fragment", [
    ("prune_units = 2", "2"),
    ("prune_units = 0.5\nnorm = 3", "norm 1 or 2"),
    ("prune_units = 0.5\nvalue = 1.0", "takes no value"),
    ("prune_units = 0.5\nbias = true", "prunes whole units"),
    ('prune_units = "half"', "must be a number"),
])
def test_spec_prune_units_errors_are_one_line(files, tmp_path, capsys, entry, fragment):
    spec = tmp_path / "bad.toml"
    spec.write_text(f'[[layer]]\npattern = "conv_a"\n{entry}\n')
    code, out, err = run(capsys, "freeze", files["net"], "--spec", spec, "-o", tmp_path / "o.keras")
    assert code == 1 and out == ""
    assert_one_error_line(err, "bad.toml", fragment)
    assert listing(tmp_path) == ["bad.toml"]


def test_inspect_units_counts_pins_and_removable_units(files, capsys):
    from kerasurgery.model.groups import dependency_groups

    plain = run_json(capsys, "inspect", files["pruned"])
    assert "units" not in plain  # costs nothing unless asked
    document = run_json(capsys, "inspect", files["pruned"], "--units")
    assert document["layers"] == plain["layers"]
    masks = _masks(files["pruned"])
    groups = dependency_groups(ks.load_model(files["pruned"], compile=False))
    rows = {row["path"]: row for row in document["units"]}
    assert list(rows) == [p for g in groups for p in g.producers] == [*CONVS, "hidden", "out"]
    for path, row in rows.items():
        layer = masks[path]
        # Pinned whole: the kernel column and the bias entry, counted from the file's masks.
        whole = np.all(layer["kernel"].reshape(-1, layer["kernel"].shape[-1]), axis=0) & layer["bias"]
        assert row["units"] == layer["kernel"].shape[-1]
        assert row["pinned_whole"] == int(whole.sum())
        assert row["removable"] == len(groups.of(path).removable_units())
    assert [rows[p]["removable"] for p in CONVS] == [4, 4, 4]
    assert rows["conv_b"]["group"] == ["conv_b", "conv_c"]
    assert (rows["hidden"]["removable"], rows["out"]["removable"]) == (0, 0)
    assert "LayerNormalization" in rows["hidden"]["left"] and rows["out"]["left"] == "a model output"
    assert {tuple(r["layers"]) for r in document["left_alone"]} == {("hidden",), ("out",), ("ln",)}
    one = run_json(capsys, "inspect", files["pruned"], "--units", "--layer", "hidden")
    assert [r["path"] for r in one["units"]] == ["hidden"]
    assert [r["layers"] for r in one["left_alone"]] == [["hidden"]]
    code, out, _ = run(capsys, "inspect", files["pruned"], "--units")
    assert code == 0 and "pinned whole" in out and "conv_b + conv_c" in out and "a model output" in out
    code, _, err = run(capsys, "inspect", files["pruned"], "--units", "--show")
    assert code == 2 and "one at a time" in err


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_shrink_writes_a_smaller_plain_keras_model_that_computes_the_same(files, tmp_path, capsys, suffix):
    before = digest(files["pruned"])
    output = tmp_path / f"small{suffix}"
    document = run_json(capsys, "shrink", files["pruned"], "-o", output)
    assert digest(files["pruned"]) == before
    small = keras.saving.load_model(output, compile=False)  # plain Keras, no kerasurgery classes
    assert not any(type(layer).__module__.startswith("kerasurgery") for layer in small.layers)
    pinned = ks.load_model(files["pruned"], compile=False)
    want, got = ops.convert_to_numpy(pinned(X)), ops.convert_to_numpy(small(X))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    rows = {row["path"]: row for row in document["layers"]}
    for path, row in rows.items():
        config = small.get_layer(path).get_config()
        assert row["units_after"] == config.get("units", config.get("filters"))
        assert row["params_after"] == small.get_layer(path).count_params()
    assert [(rows[p]["units_before"], rows[p]["units_after"]) for p in (*CONVS, "hidden", "out")] == [
        (8, 4), (8, 4), (8, 4), (6, 6), (3, 3)]
    assert document["parameters"] == {"before": files["model"].count_params(),
                                      "after": small.count_params()}
    assert document["parameters"]["after"] < document["parameters"]["before"]
    assert {tuple(r["layers"]) for r in document["left_alone"]} == {("hidden",), ("out",), ("ln",)}
    assert document["format"] == suffix.lstrip(".") and document["training_config"] is False
    if suffix == ".h5":  # the shrunk model trains as any Keras model (once: it costs seconds)
        small.compile("sgd", "mse")
        small.train_on_batch(X, np.zeros((4, 3), "float32"))


def test_shrink_table_and_default_output(files, tmp_path, capsys):
    source = tmp_path / "pruned.keras"
    source.write_bytes(files["pruned"].read_bytes())
    code, out, err = run(capsys, "shrink", source)
    assert code == 0, err
    assert (tmp_path / "pruned.shrunk.keras").is_file()
    assert "8 -> 4" in out and "left as they are" in out and "a model output" in out
    assert "12 units removed from 3 layers" in out


def test_shrink_errors_are_one_line_and_write_nothing(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.keras"
    (tmp_path / "empty.keras").write_bytes(b"")
    (tmp_path / "text.h5").write_text("not a model\n")
    for source, fragment in [
        (tmp_path / "missing.keras", "missing.keras"),
        (tmp_path / "empty.keras", "empty.keras"),
        (tmp_path / "text.h5", "text.h5"),
        (files["net"], "nothing to shrink"),  # no unit is zero: nothing to remove
    ]:
        code, stdout, err = run(capsys, "shrink", source, "-o", out)
        assert code == 1 and stdout == "", err
        assert_one_error_line(err, fragment)
    assert listing(tmp_path) == ["empty.keras", "text.h5"]
    # An existing output stays without --force; the input is never the output.
    out.write_bytes(b"keep")
    code, _, err = run(capsys, "shrink", files["pruned"], "-o", out)
    assert code == 1 and out.read_bytes() == b"keep"
    assert_one_error_line(err, "--force")
    code, _, err = run(capsys, "shrink", files["pruned"], "-o", files["pruned"], "--force")
    assert code == 1
    assert_one_error_line(err, "is the input file")
    # JSON gets the error too.
    code, stdout, _ = run(capsys, "shrink", files["net"], "-o", tmp_path / "n.keras", "--json")
    assert code == 1 and json.loads(stdout)["exit_code"] == 1
    # Ctrl-C while shrinking: 130, nothing written.
    from kerasurgery.model import shrink

    def interrupted(model):
        raise KeyboardInterrupt

    monkeypatch.setattr(shrink, "shrink", interrupted)
    code, stdout, err = run(capsys, "shrink", files["pruned"], "-o", tmp_path / "i.keras")
    assert code == 130 and stdout == "" and err == "error: interrupted.\n"
    assert not (tmp_path / "i.keras").exists()
    code, _, err = run(capsys, "shrink")
    assert code == 2 and "usage:" in err
    code, stdout, _ = run(capsys, "shrink", "--help")
    assert code == 0 and "examples:" in stdout and "130 interrupted" in stdout
