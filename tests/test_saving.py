"""load_model / save_model: round trips in a new process, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery.errors import ModelFileError
from tests.helpers import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained_frozen(mlp, data):
    values = np.full((4, 3), 0.75, "float32")
    values[0, 0] = -1.5
    frozen = ks.freeze(mlp, {
        "hidden": ks.Pin(kernel=np.eye(4, 3, dtype=bool), kernel_value=values,
                         bias=np.array([False, True, False])),
        "out": ks.rules.zeros(),
    })
    train(frozen, keras.optimizers.AdamW(0.1, weight_decay=4.0), *data, steps=3)
    return frozen


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_round_trip_in_a_new_process_predicts_the_same_and_keeps_pins(tmp_path, mlp, data):
    frozen = _trained_frozen(mlp, data)
    x = data[0]
    np.save(tmp_path / "x.npy", x)
    expected = ops.convert_to_numpy(frozen(x))
    paths = [ks.save_model(frozen, tmp_path / f"m{suffix}") for suffix in (".keras", ".h5")]
    result = _run(
        """
        import sys, numpy as np, kerasurgery, keras
        x = np.load(sys.argv[1])
        for i, path in enumerate(sys.argv[2:]):
            model = keras.saving.load_model(path, compile=False)
            np.save(f"{path}.pred.npy", keras.ops.convert_to_numpy(model(x)))
            for name in ("hidden", "out"):
                pin = model.get_layer(name).pins()
                np.save(f"{path}.{name}.mask.npy", pin.kernel)
                np.save(f"{path}.{name}.kernel.npy", keras.ops.convert_to_numpy(model.get_layer(name).kernel))
        """,
        str(tmp_path / "x.npy"), *map(str, paths),
    )
    assert result.returncode == 0, result.stderr
    for path in paths:
        assert np.array_equal(np.load(f"{path}.pred.npy").view("u4"), expected.view("u4")), path
        for name in ("hidden", "out"):
            layer = frozen.get_layer(name)
            assert np.array_equal(np.load(f"{path}.{name}.mask.npy"), layer.pins().kernel)
            assert np.array_equal(
                np.load(f"{path}.{name}.kernel.npy").view("u4"), ops.convert_to_numpy(layer.kernel).view("u4")
            )


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_in_process_round_trip_with_our_loader(tmp_path, mlp, data, suffix):
    frozen = _trained_frozen(mlp, data)
    path = ks.save_model(frozen, tmp_path / f"m{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ks.load_model(path)
    assert np.array_equal(ops.convert_to_numpy(loaded(data[0])).view("u4"),
                          ops.convert_to_numpy(frozen(data[0])).view("u4"))
    pin = loaded.get_layer("hidden").pins()
    assert np.array_equal(pin.bias, [False, True, False])
    assert pin.kernel_value[0, 0] == np.float32(-1.5)
    # Every pin of both layers came back: the same masks, the same values bit for bit.
    for name in ("hidden", "out"):
        got, want = loaded.get_layer(name).pins(), frozen.get_layer(name).pins()
        assert np.array_equal(got.kernel, want.kernel) and np.array_equal(got.bias, want.bias), name
        assert np.array_equal(got.kernel_value.view("u4"), want.kernel_value.view("u4")), name
        assert np.array_equal(got.bias_value.view("u4"), want.bias_value.view("u4")), name


def test_stripped_model_loads_without_kerasurgery(tmp_path, mlp, data):
    stripped = ks.strip(_trained_frozen(mlp, data))
    np.save(tmp_path / "x.npy", data[0])
    paths = [ks.save_model(stripped, tmp_path / f"s{suffix}") for suffix in (".keras", ".h5")]
    result = _run(
        """
        import sys, numpy as np, keras
        x = np.load(sys.argv[1])
        for path in sys.argv[2:]:
            model = keras.saving.load_model(path, compile=False)
            assert {type(l).__name__ for l in model.layers} == {"InputLayer", "Dense"}
            np.save(f"{path}.pred.npy", keras.ops.convert_to_numpy(model(x)))
        assert not any(m.startswith("kerasurgery") for m in sys.modules), "imported kerasurgery"
        """,
        str(tmp_path / "x.npy"), *map(str, paths),
    )
    assert result.returncode == 0, result.stderr
    expected = ops.convert_to_numpy(stripped(data[0]))
    for path in paths:
        assert np.array_equal(np.load(f"{path}.pred.npy"), expected)


@pytest.mark.parametrize("first", ["keras", "tensorflow"])
def test_import_kerasurgery_does_not_import_tensorflow_and_registers_later(first):
    # TensorFlow probes for Keras with find_spec before importing it for
    # tf.keras: the probe must not use up the registration hook.
    result = _run(
        f"""
        import sys, kerasurgery
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules
        import {first}
        if "{first}" == "tensorflow":
            {first}.keras.layers.Dense(2)
        import keras
        assert keras.saving.get_registered_object("kerasurgery>MaskedDense") is kerasurgery.MaskedDense
        """
    )
    assert result.returncode == 0, result.stderr


def test_save_refuses_to_overwrite_without_permission(tmp_path, mlp):
    target = tmp_path / "m.keras"
    target.write_bytes(b"precious")
    with pytest.raises(ModelFileError, match="already exists"):
        ks.save_model(mlp, target)
    assert target.read_bytes() == b"precious"
    ks.save_model(mlp, target, overwrite=True)
    assert zipfile.is_zipfile(target)
    assert all(np.array_equal(a.view("u4"), b.view("u4"))  # the model, not just any archive
               for a, b in zip(ks.load_model(target).get_weights(), mlp.get_weights(), strict=True))


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, mlp, monkeypatch):
    target = tmp_path / "m.keras"
    target.write_bytes(b"precious")

    def broken_save(path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(mlp, "save", broken_save)
    with pytest.raises(ModelFileError, match="saving failed: disk full"):
        ks.save_model(mlp, target, overwrite=True)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_replacing_a_file_keeps_its_permissions_and_new_files_follow_umask(tmp_path, mlp):
    target = tmp_path / "m.h5"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    ks.save_model(mlp, target, overwrite=True)
    assert target.stat().st_mode & 0o777 == 0o640
    fresh = ks.save_model(mlp, tmp_path / "fresh.keras")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    "name, match",
    [("m.txt", "unsupported suffix"), ("m.weights.h5", "weights only"), ("no/such/m.keras", "does not exist")],
)
def test_save_rejects_bad_targets(tmp_path, mlp, name, match):
    with pytest.raises(ModelFileError, match=match):
        ks.save_model(mlp, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_save_into_unwritable_folder_fails_cleanly(mlp):
    # /proc refuses new files even to root, which the CI user is.
    with pytest.raises(ModelFileError, match="cannot write in /proc"):
        ks.save_model(mlp, "/proc/kerasurgery-test.keras")


@pytest.mark.parametrize("actual, named", [(".h5", ".keras"), (".keras", ".h5")])
def test_format_comes_from_the_bytes_not_the_suffix(tmp_path, mlp, data, actual, named):
    real = ks.save_model(mlp, tmp_path / f"real{actual}")
    disguised = tmp_path / f"disguised{named}"
    disguised.write_bytes(real.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ks.load_model(disguised)
    assert np.array_equal(ops.convert_to_numpy(loaded(data[0])), ops.convert_to_numpy(mlp(data[0])))


def test_unrestorable_training_config_loads_without_it_and_warns(tmp_path, mlp):
    mlp.compile(optimizer="adam", loss="mse")
    path = ks.save_model(mlp, tmp_path / "m.h5")
    with pytest.warns(UserWarning, match="training configuration could not be restored"):
        loaded = ks.load_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in mlp.layers]
    assert not loaded.compiled
    assert all(np.array_equal(a.view("u4"), b.view("u4"))
               for a, b in zip(loaded.get_weights(), mlp.get_weights(), strict=True))


def test_keras_file_keeps_its_training_config(tmp_path, mlp):
    mlp.compile(optimizer=keras.optimizers.Adam(0.0123), loss="mse")
    path = ks.save_model(ks.freeze(mlp, {"*": ks.rules.zeros()}), tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ks.load_model(path)
    assert loaded.compiled
    assert float(ops.convert_to_numpy(loaded.optimizer.learning_rate)) == np.float32(0.0123)  # stored as float32


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.keras", "no such file"),
        (lambda d: d, "is a folder"),
        (lambda d: (d / "sm").mkdir() or _write(d / "sm" / "saved_model.pb", b"x").parent, "SavedModel"),
        (lambda d: _write(d / "empty.keras", b""), "is empty"),
        (lambda d: _write(d / "text.h5", b"hello, I am text\n" * 10), "neither"),
        (lambda d: _write(d / "noise.keras", np.random.default_rng(0).bytes(4096)), "neither"),
        (lambda d: _write(d / "bad.keras", b"PK\x03\x04" + b"\0" * 60), "damaged or truncated"),
    ],
)
def test_load_errors_name_the_file_in_one_line(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(ModelFileError, match=match) as info:
        ks.load_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_load_errors_for_broken_archives(tmp_path, mlp):
    source = ks.save_model(mlp, tmp_path / "m.keras")
    no_config = tmp_path / "noconfig.keras"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(no_config, "w") as dst:
        for item in src.namelist():
            if item != "config.json":
                dst.writestr(item, src.read(item))
    bad_json = tmp_path / "badjson.keras"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(bad_json, "w") as dst:
        for item in src.namelist():
            dst.writestr(item, b"{not json" if item == "config.json" else src.read(item))
    unknown = tmp_path / "unknown.keras"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(unknown, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                data = json.dumps(json.loads(data)).replace('"Dense"', '"NoSuchLayer"').encode()
            dst.writestr(item, data)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    for path in (no_config, bad_json, unknown, truncated):
        with pytest.raises(ModelFileError) as info:
            ks.load_model(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_safe_mode_refuses_lambda_layers(tmp_path):
    inputs = keras.Input((2,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    model = keras.Model(inputs, outputs)
    for suffix in (".keras", ".h5"):
        path = ks.save_model(model, tmp_path / f"lambda{suffix}")
        with pytest.raises(ModelFileError, match="refused by safe mode"):
            ks.load_model(path)


def test_a_file_appearing_during_a_save_without_overwrite_is_kept(tmp_path, mlp, monkeypatch):
    target = tmp_path / "m.keras"
    save = mlp.save

    def save_while_another_writes(path, **kwargs):
        save(path, **kwargs)
        target.write_bytes(b"written meanwhile by someone else")

    monkeypatch.setattr(mlp, "save", save_while_another_writes)
    with pytest.raises(ModelFileError, match="already exists"):
        ks.save_model(mlp, target)
    assert target.read_bytes() == b"written meanwhile by someone else"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_saving_over_a_symlink_replaces_the_link_not_the_file_it_points_to(tmp_path, mlp):
    real = tmp_path / "real.keras"
    real.write_bytes(b"precious")
    link = tmp_path / "link.keras"
    link.symlink_to(real)
    ks.save_model(mlp, link, overwrite=True)
    assert real.read_bytes() == b"precious"
    assert not link.is_symlink() and zipfile.is_zipfile(link)
    assert all(np.array_equal(a.view("u4"), b.view("u4"))
               for a, b in zip(ks.load_model(link).get_weights(), mlp.get_weights(), strict=True))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saving_over_the_file_a_model_was_loaded_from(tmp_path, mlp, data, suffix):
    path = ks.save_model(ks.freeze(mlp, {"*": ks.rules.zeros()}), tmp_path / f"m{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ks.load_model(path)
        ks.save_model(ks.strip(loaded), path, overwrite=True)
        again = ks.load_model(path)
    assert [type(layer).__name__ for layer in again.layers] == ["InputLayer", "Dense", "Dense"]
    assert np.array_equal(ops.convert_to_numpy(again(data[0])), ops.convert_to_numpy(loaded(data[0])))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"m{suffix}"]


def test_compiled_h5_model_loads_ready_to_fit(tmp_path, mlp, data):
    mlp.compile(optimizer=keras.optimizers.Adam(0.0125), loss="mean_squared_error")
    path = ks.save_model(ks.freeze(mlp, {"*": ks.rules.zeros()}), tmp_path / "m.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loaded = ks.load_model(path)
    assert loaded.compiled
    assert float(ops.convert_to_numpy(loaded.optimizer.learning_rate)) == np.float32(0.0125)  # stored as float32
    history = loaded.fit(*data, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    # It trained, and the pinned zeros stayed +0.0.
    assert int(ops.convert_to_numpy(loaded.optimizer.iterations)) == 2
    for name in ("hidden", "out"):
        pin = loaded.get_layer(name).pins()
        zeros = mlp.get_layer(name).get_weights()[0] == 0
        assert np.array_equal(pin.kernel, zeros) and np.all(pin.kernel_value[zeros].view("u4") == 0), name


@pytest.mark.parametrize("name", ["UP.KERAS", "model.H5", "model.hdf5"])
def test_any_spelling_of_the_suffix_saves_and_loads(tmp_path, mlp, data, name):
    path = ks.save_model(mlp, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ks.load_model(path)
    assert np.array_equal(ops.convert_to_numpy(loaded(data[0])), ops.convert_to_numpy(mlp(data[0])))


V010 = Path(__file__).resolve().parent.parent / "fixtures" / "kerasurgery-0.1.0"


@pytest.mark.parametrize("name", ["frozen_mlp.keras", "frozen_mlp.h5", "nested_frozen.keras"])
def test_files_written_by_0_1_0_load_with_their_pins_in_a_new_process(name):
    """Both loaders, after a bare `import kerasurgery`, in a fresh interpreter."""
    script = textwrap.dedent(f"""
        import numpy as np, keras, kerasurgery as ks
        from kerasurgery.model.walk import walk_layers
        path = {str(V010 / name)!r}
        counts = []
        for load in (ks.load_model, keras.saving.load_model):
            model = load(path)
            pinned = {{p: l.pin_state() for p, l in walk_layers(model) if hasattr(l, "pin_state")}}
            counts.append({{p: {{w: int(s.mask.sum()) for w, s in ws.items()}} for p, ws in pinned.items()}})
            for ws in pinned.values():
                for s in ws.values():
                    value = np.broadcast_to(s.value, s.mask.shape)
                    assert np.array_equal(s.effective[s.mask].view("u4"), value[s.mask].view("u4"))
        assert counts[0] == counts[1]
        print(counts[0])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = eval(done.stdout.strip().splitlines()[-1])
    if name.startswith("frozen_mlp"):
        assert counts == {
            "dense_1": {"kernel": 64, "bias": 0},
            "dense_2": {"kernel": 128, "bias": 0},
            "dense_3": {"kernel": 16, "bias": 1},
        }
    else:
        assert counts == {
            "block/block_dense": {"kernel": 16, "bias": 0},
            "shared": {"kernel": 16, "bias": 0},
            "tower/tower_dense": {"kernel": 2, "bias": 2},
        }


# --- What a file that does not load is told, decided by checks (`load_checks`) ---------


def _edited_keras(source: Path, target: Path, edit) -> Path:
    """`source` with its config.json edited by `edit` (a function of the parsed config)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            dst.writestr(item, data)
    return target


def _layer_entry(config: dict, name: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["name"] == name)


def _connect_out_to_ghost(config: dict) -> dict:
    history = _layer_entry(config, "out")["inbound_nodes"][0]["args"][0]["config"]["keras_history"]
    history[0] = "ghost"
    return config


def _misname_output(config: dict) -> dict:
    config["config"]["output_layers"] = ["ghost", 0, 0]
    return config


def _unknown_argument(config: dict) -> dict:
    _layer_entry(config, "out")["config"]["bogus"] = 1
    return config


def _unimportable_module(config: dict) -> dict:
    _layer_entry(config, "out")["module"] = "keras.no_such_module"
    _layer_entry(config, "out")["class_name"] = "Gone"
    return config


# A graph that names a layer it does not define is refused by the file reader
# (files/order.py) before Keras is asked; the others by load_checks after it.
_GHOST = ("cannot tell in which order Keras rebuilds the layers of the model: the graph names a "
          "layer 'ghost' it does not define.")


@pytest.mark.parametrize("edit, message", [
    (_connect_out_to_ghost, _GHOST),
    (_misname_output, _GHOST),
    (_unimportable_module, "cannot load the model: "
     "layer 'out': unknown layer class 'Gone' (its module keras.no_such_module cannot be imported)."),
    (_unknown_argument, "cannot load the model: "
     "the model config does not rebuild: Unrecognized keyword arguments passed to Dense: {'bogus': 1}"),
])
def test_config_errors_are_told_in_plain_words(tmp_path, mlp, edit, message):
    path = _edited_keras(ks.save_model(mlp, tmp_path / "m.keras"), tmp_path / "edited.keras", edit)
    for compile in (True, False):
        with pytest.raises(ModelFileError) as info:
            ks.load_model(path, compile=compile)
        assert str(info.value) == f"{path}: {message}"


def test_h5_weight_count_mismatch_is_told_in_plain_words(tmp_path, mlp):
    import h5py

    path = ks.save_model(mlp, tmp_path / "m.h5")
    with h5py.File(path, "a") as h5:
        group = h5["model_weights"]["out"]
        group.attrs["weight_names"] = group.attrs["weight_names"][:1]
    with pytest.raises(ModelFileError) as info:
        ks.load_model(path)
    assert str(info.value) == (
        f"{path}: layer 'out' has 2 weights, but its `.h5` group lists 1."
    )


class Doubled(keras.layers.Layer):
    """A custom layer that is not registered with Keras."""

    def call(self, x):
        return x * 2.0


def test_an_unregistered_layer_is_named_and_loads_in_a_custom_object_scope(tmp_path, mlp, data):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, Doubled(name="doubled")(mlp(inputs)))
    path = ks.save_model(model, tmp_path / "m.keras")
    with pytest.raises(ModelFileError) as info:
        ks.load_model(path)
    assert str(info.value) == (
        f"{path}: cannot load the model: layer 'doubled': unknown layer class 'Doubled' (a custom "
        "layer must be registered, by importing the code that defines it, before loading)."
    )
    with keras.saving.custom_object_scope({"Doubled": Doubled}):
        loaded = ks.load_model(path)
    assert np.array_equal(ops.convert_to_numpy(loaded(data[0])), ops.convert_to_numpy(model(data[0])))


def test_the_class_check_knows_every_class_keras_loads(tmp_path):
    from kerasurgery.model.load_checks import check_config

    layer_classes = [name for name in dir(keras.layers)
                     if isinstance(getattr(keras.layers, name), type)
                     and issubclass(getattr(keras.layers, name), keras.layers.Layer)]
    names = [*layer_classes, "Functional", "Model", "Sequential", *(
        f"kerasurgery>{cls.__name__}" for cls in ks.layers.PINNED_CLASSES)]
    assert len(names) > 100
    for name in names:
        for module in (None, "keras.layers"):
            check_config(tmp_path / "m.keras", {"class_name": name, "module": module, "config": {"name": "n"}})
