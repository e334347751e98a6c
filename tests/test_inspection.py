"""inspection: reading saved files without TensorFlow, checked against Keras itself."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery.errors import KerasurgeryError, ModelFileError
from kerasurgery.inspection import (
    DenseWeights,
    FileInfo,
    LayerInfo,
    check_pins,
    inspect_file,
    read_dense_weights,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KERAS3_FILES = [
    "pruned_mlp.keras",
    "pruned_mlp.h5",
    "frozen_mlp.keras",
    "frozen_mlp.h5",
    "nested_frozen.keras",
    "nested_frozen.h5",
]
ALL_FILES = KERAS3_FILES + ["keras2_mlp.h5"]


def _load(path) -> keras.Model:
    return ks.load_model(path, compile=False)


def _walk(model, prefix=""):
    """(layer, path) in model order, nested models before their layers, each once."""
    seen = set()
    for layer in model.layers:
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer, prefix + layer.name
        if isinstance(layer, keras.Model):
            yield from _walk(layer, f"{prefix}{layer.name}/")


def _is_dense(layer) -> bool:
    return type(layer) is keras.layers.Dense or isinstance(layer, ks.MaskedDense)


def _np(x) -> np.ndarray:
    return ops.convert_to_numpy(x)


def _expected_info(layer, path) -> LayerInfo:
    """What inspect_file should say about `layer`, computed by Keras and numpy."""
    shape = tuple(layer.kernel.shape) if _is_dense(layer) else None
    pinned_kernel = pinned_bias = 0
    if isinstance(layer, ks.MaskedDense):
        pinned_kernel = int(np.count_nonzero(_np(layer.kernel_pin_mask)))
        if layer.use_bias:
            pinned_bias = int(np.count_nonzero(_np(layer.bias_pin_mask)))
    return LayerInfo(layer.name, type(layer).__name__, shape, pinned_kernel, pinned_bias, path)


# Reading the fixtures, compared with what Keras loads.


@pytest.mark.parametrize("name", ALL_FILES)
def test_inspect_file_matches_keras(name):
    path = FIXTURES / name
    info = inspect_file(path)
    model = _load(path)
    assert info.file == str(path)
    assert info.format == ("keras" if name.endswith(".keras") else "h5")
    assert info.keras_version == ("2.21.0" if name.startswith("keras2") else keras.__version__)
    assert info.layers == [_expected_info(layer, path) for layer, path in _walk(model)]


@pytest.mark.parametrize("name", ALL_FILES)
def test_read_dense_weights_equals_keras_bit_for_bit(name):
    path = FIXTURES / name
    weights = read_dense_weights(path)
    model = _load(path)
    dense = [(layer, path) for layer, path in _walk(model) if _is_dense(layer)]
    assert list(weights) == [path for _, path in dense]
    for layer, path in dense:
        w = weights[path]
        assert (w.name, w.path, w.class_name) == (layer.name, path, type(layer).__name__)
        assert w.kernel.dtype == np.float32 and w.bias.dtype == np.float32
        assert np.array_equal(w.kernel, _np(layer.kernel))
        assert np.array_equal(w.bias, _np(layer.bias))
        assert np.array_equal(w.kernel_value, _np(layer.kernel))
        assert np.array_equal(w.bias_value, _np(layer.bias))
        if isinstance(layer, ks.MaskedDense):
            pins = layer.pins()
            assert np.array_equal(w.kernel_mask, pins.kernel)
            assert np.array_equal(w.bias_mask, pins.bias)
        else:
            assert w.kernel_mask.dtype == bool and not w.kernel_mask.any()
            assert w.bias_mask.shape == w.bias.shape and not w.bias_mask.any()
        assert not w.kernel.flags.writeable


def test_pruned_mlp_is_half_zeros_and_frozen_mlp_pins_them():
    pruned = read_dense_weights(FIXTURES / "pruned_mlp.keras")
    assert {n: w.kernel.shape for n, w in pruned.items()} == {
        "dense_1": (8, 16), "dense_2": (16, 16), "dense_3": (16, 4),
    }
    for w in pruned.values():
        assert np.count_nonzero(w.kernel == 0) == w.kernel.size // 2
        assert np.count_nonzero(w.bias == 0) == 0
    # The frozen model pins dense_1's and dense_2's zeros, and unit 1 of dense_3.
    zeros_1 = int(np.count_nonzero(pruned["dense_1"].kernel == 0))
    zeros_2 = int(np.count_nonzero(pruned["dense_2"].kernel == 0))
    for suffix in (".keras", ".h5"):
        info = inspect_file(FIXTURES / f"frozen_mlp{suffix}")
        counts = {layer.name: (layer.pinned_kernel, layer.pinned_bias) for layer in info.layers}
        assert counts == {
            "features": (0, 0), "dense_1": (zeros_1, 0), "dense_2": (zeros_2, 0),
            "dense_3": (16, 1),
        }
        assert (zeros_1, zeros_2) == (64, 128)
        frozen = read_dense_weights(FIXTURES / f"frozen_mlp{suffix}")
        assert np.array_equal(frozen["dense_1"].kernel_mask, pruned["dense_1"].kernel == 0)
        per_entry = np.arange(1, 129, dtype="float32").reshape(8, 16) / 64
        mask = frozen["dense_1"].kernel_mask
        assert np.array_equal(frozen["dense_1"].kernel[mask], per_entry[mask])
        assert np.array_equal(frozen["dense_2"].kernel_mask, pruned["dense_2"].kernel == 0)
        assert np.all(frozen["dense_2"].kernel[frozen["dense_2"].kernel_mask] == 0)
        assert np.all(frozen["dense_3"].kernel[:, 1] == 0.5)
        assert frozen["dense_3"].bias_mask.tolist() == [False, True, False, False]
        assert frozen["dense_3"].bias[1] == 0.5


def test_to_json_is_the_documented_object():
    info = inspect_file(FIXTURES / "frozen_mlp.keras")
    assert info.to_json() == {
        "file": str(FIXTURES / "frozen_mlp.keras"),
        "format": "keras",
        "keras_version": keras.__version__,
        "layers": [
            {"name": "features", "class_name": "InputLayer", "kernel_shape": None,
             "pinned_kernel": 0, "pinned_bias": 0, "pinned": 0, "path": "features"},
            {"name": "dense_1", "class_name": "MaskedDense", "kernel_shape": [8, 16],
             "pinned_kernel": 64, "pinned_bias": 0, "pinned": 64, "path": "dense_1"},
            {"name": "dense_2", "class_name": "MaskedDense", "kernel_shape": [16, 16],
             "pinned_kernel": 128, "pinned_bias": 0, "pinned": 128, "path": "dense_2"},
            {"name": "dense_3", "class_name": "MaskedDense", "kernel_shape": [16, 4],
             "pinned_kernel": 16, "pinned_bias": 1, "pinned": 17, "path": "dense_3"},
        ],
    }
    json.dumps(info.to_json())  # serializable as it is
    assert info.layers[3].pinned == 17
    assert isinstance(info, FileInfo)


def test_nested_models_and_shared_layers_are_flattened_once():
    for suffix in (".keras", ".h5"):
        info = inspect_file(FIXTURES / f"nested_frozen{suffix}")
        assert [(layer.path, layer.class_name) for layer in info.layers] == [
            ("features", "InputLayer"), ("encoder", "Dense"), ("block", "Sequential"),
            ("block/block_dense", "MaskedDense"), ("block/block_bn", "BatchNormalization"),
            ("shared", "MaskedDense"), ("tower", "Functional"), ("tower/tower_in", "InputLayer"),
            ("tower/tower_dense", "MaskedDense"), ("head", "Dense"),
        ]
        assert [layer.name for layer in info.layers][3] == "block_dense"
        pinned = {layer.path: (layer.pinned_kernel, layer.pinned_bias) for layer in info.layers}
        assert pinned["block/block_dense"] == (16, 0)  # fraction 0.25 of 8x8
        assert pinned["shared"] == (16, 0)  # input rows 0 and 3
        assert pinned["tower/tower_dense"] == (2, 2)


def _same_names_at_three_depths():
    """'dense' in the outer model, in Sequential 'a', and in Sequential 'b' inside 'a'."""
    keras.utils.set_random_seed(0)
    b = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")], name="b")
    a = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense"), b], name="a")
    inputs = keras.Input((4,), name="x")
    outer = keras.Model(inputs, keras.layers.Dense(5, name="dense")(a(inputs)), name="outer")
    return ks.freeze(outer, {"dense": ks.rules.inputs([0])})  # the outer 'dense' only


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_layers_of_the_same_name_in_nested_models_are_told_apart_by_path(tmp_path, suffix):
    model = _same_names_at_three_depths()
    path = ks.save_model(model, tmp_path / f"same{suffix}")
    info = inspect_file(path)
    assert [(layer.name, layer.path, layer.pinned) for layer in info.layers] == [
        ("x", "x", 0), ("a", "a", 0), ("dense", "a/dense", 0), ("b", "a/b", 0),
        ("dense", "a/b/dense", 0), ("dense", "dense", 5),
    ]
    assert info.layers == [_expected_info(*layer) for layer in _walk(model)]
    weights = read_dense_weights(path)
    assert list(weights) == ["a/dense", "a/b/dense", "dense"]
    a = model.get_layer("a")
    for key, layer in (("a/dense", a.get_layer("dense")), ("a/b/dense", a.get_layer("b").get_layer("dense")),
                       ("dense", model.get_layer("dense"))):
        assert (weights[key].name, weights[key].path) == ("dense", key)
        assert np.array_equal(weights[key].kernel, _np(layer.kernel))
        assert np.array_equal(weights[key].bias, _np(layer.bias))
    assert weights["dense"].kernel_mask.sum() == 5 and not weights["a/dense"].kernel_mask.any()


def test_keras2_file_with_training_config():
    path = FIXTURES / "keras2_mlp.h5"
    with h5py.File(path) as f:
        training = json.loads(f.attrs["training_config"])
        kernels = {n: f[f"model_weights/{n}/{n}/kernel:0"][()] for n in ("dense_1", "dense_2")}
    assert training["loss"] == "mse"
    info = inspect_file(path)
    assert [(l.name, l.class_name, l.kernel_shape) for l in info.layers] == [
        ("dense_1", "Dense", (8, 16)), ("dense_2", "Dense", (16, 4)),
    ]
    weights = read_dense_weights(path)
    for name, kernel in kernels.items():
        assert np.count_nonzero(kernel == 0) == kernel.size // 2
        assert np.array_equal(weights[name].kernel, kernel)


# check_pins: what `verify` reports.


def test_check_pins_compares_every_pinned_entry_bit_for_bit(tmp_path):
    frozen = FIXTURES / "frozen_mlp.keras"
    pinned = sum(layer.pinned for layer in inspect_file(frozen).layers)
    for candidate in (frozen, FIXTURES / "frozen_mlp.h5"):
        result = check_pins(candidate, frozen)
        assert (result.ok, result.checked, result.violations) == (True, pinned, [])
    model = _load(frozen)
    layer = model.get_layer("dense_3")
    stripped = ks.strip(model)
    kernel, bias = stripped.get_layer("dense_3").get_weights()
    kernel[0, 1] = np.nextafter(kernel[0, 1], np.float32(1))  # one ulp, at a pinned entry
    bias[1] = -bias[1] - 1.0
    stripped.get_layer("dense_3").set_weights([kernel, bias])
    result = check_pins(ks.save_model(stripped, tmp_path / "moved.h5"), frozen)
    assert not result.ok and result.checked == pinned
    ulp = float(np.spacing(np.float32(_np(layer.kernel)[0, 1])))
    assert result.violations == [
        {"layer": "dense_3", "weight": "kernel", "pinned": 16, "violations": 1,
         "max_deviation": ulp, "reason": "value changed"},
        {"layer": "dense_3", "weight": "bias", "pinned": 1, "violations": 1,
         "max_deviation": 2.0, "reason": "value changed"},
    ]


def test_check_pins_refuses_a_frozen_file_that_pins_nothing():
    # The model before freezing, passed by mistake, must not make anything pass.
    with pytest.raises(KerasurgeryError, match="FROZEN has no pinned entries: is it the frozen file?"):
        check_pins(FIXTURES / "frozen_mlp.keras", FIXTURES / "pruned_mlp.keras")


# Files written here: raw weights moved by training, other layouts.


def _train_pinned_raw_away():
    """The frozen MLP after AdamW steps that move raw entries under the pins."""
    model = _load(FIXTURES / "frozen_mlp.keras")
    model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=2.0), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 8)).astype("float32"), rng.normal(size=(32, 4)).astype("float32")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    return model


def test_h5_raw_weights_are_read_as_effective_after_training(tmp_path):
    model = _train_pinned_raw_away()
    layer = model.get_layer("dense_1")
    raw, effective = _np(layer._kernel), _np(layer.kernel)
    mask = _np(layer.kernel_pin_mask)
    assert not np.array_equal(raw[mask], effective[mask])  # training moved raw entries
    assert np.array_equal(raw[~mask], effective[~mask])
    for suffix in (".h5", ".keras"):
        path = ks.save_model(model, tmp_path / f"trained{suffix}")
        weights = read_dense_weights(path)
        for masked in model.layers[1:]:
            w = weights[masked.name]
            assert np.array_equal(w.kernel, _np(masked.kernel))
            assert np.array_equal(w.bias, _np(masked.bias))
            assert np.array_equal(w.kernel_mask, _np(masked.kernel_pin_mask))
        counts = [layer.pinned for layer in inspect_file(path).layers]
        assert counts == [0, 64, 128, 17]
    with h5py.File(tmp_path / "trained.h5") as f:  # the file itself holds the raw kernel
        assert np.array_equal(f["model_weights/dense_1/dense_1/kernel"][()], raw)


def test_format_is_told_from_content_not_suffix(tmp_path):
    h5_as_keras = tmp_path / "really_h5.keras"
    zip_as_h5 = tmp_path / "really_zip.h5"
    shutil.copy(FIXTURES / "frozen_mlp.h5", h5_as_keras)
    shutil.copy(FIXTURES / "frozen_mlp.keras", zip_as_h5)
    assert inspect_file(h5_as_keras).format == "h5"
    assert inspect_file(zip_as_h5).format == "keras"
    assert inspect_file(h5_as_keras).layers == inspect_file(zip_as_h5).layers


def test_compressed_archive_reads_the_same(tmp_path):
    src = FIXTURES / "nested_frozen.keras"
    repacked = _repack(src, tmp_path / "deflated.keras", compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(repacked) as archive:
        assert archive.getinfo("model.weights.h5").compress_type == zipfile.ZIP_DEFLATED
    assert inspect_file(repacked).layers == inspect_file(src).layers
    _assert_same_weights(read_dense_weights(repacked), read_dense_weights(src))


def test_groups_found_by_recorded_name_and_by_class_order(tmp_path):
    src = FIXTURES / "pruned_mlp.keras"
    # Swapped group names: the `name` attribute Keras records wins.
    def swap(f):
        f.move("layers/dense", "layers/tmp")
        f.move("layers/dense_1", "layers/dense")
        f.move("layers/tmp", "layers/dense_1")
    swapped = _repack(src, tmp_path / "swapped.keras", edit_weights=swap)
    # No `name` attributes (files of older Keras 3): the class-order path is used.
    old = _repack(src, tmp_path / "old.keras", edit_weights=_drop_names)
    for path in (swapped, old):
        assert inspect_file(path).layers == inspect_file(src).layers
        _assert_same_weights(read_dense_weights(path), read_dense_weights(src))


def test_operations_in_a_functional_graph_are_not_layers(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    h = keras.ops.relu(keras.ops.add(keras.layers.Dense(4, name="a")(inputs), 1.0))
    model = keras.Model(inputs, keras.layers.Dense(2, name="b")(h))
    paths = [ks.save_model(model, tmp_path / f"ops{suffix}") for suffix in (".keras", ".h5")]
    # Without the recorded names, the class-order path must skip the ops too.
    paths.append(_repack(paths[0], tmp_path / "unnamed.keras", edit_weights=_drop_names))
    for path in paths:
        assert inspect_file(path).layers == [_expected_info(*layer) for layer in _walk(model)]
        assert [layer.name for layer in inspect_file(path).layers] == ["x", "a", "b"]
        weights = read_dense_weights(path)
        assert np.array_equal(weights["b"].kernel, _np(model.get_layer("b").kernel))


def test_use_bias_false_and_unbuilt_layers(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, use_bias=False, name="nobias")(inputs)
    model = keras.Model(inputs, outputs)
    frozen = ks.freeze(model, {"nobias": np.eye(3, 2, dtype=bool)})
    for m, cls in ((model, "Dense"), (frozen, "MaskedDense")):
        for suffix in (".keras", ".h5"):
            path = ks.save_model(m, tmp_path / f"{cls}{suffix}", overwrite=True)
            w = read_dense_weights(path)["nobias"]
            assert (w.class_name, w.bias, w.bias_mask, w.bias_value) == (cls, None, None, None)
            assert np.array_equal(w.kernel, _np(m.get_layer("nobias").kernel))
            layer = inspect_file(path).layers[-1]
            assert (layer.kernel_shape, layer.pinned) == ((3, 2), 2 if cls == "MaskedDense" else 0)
    unbuilt = keras.Sequential([keras.layers.Dense(4, name="later")])
    path = ks.save_model(unbuilt, tmp_path / "unbuilt.keras")
    assert inspect_file(path).layers == [LayerInfo("later", "Dense", None, 0, 0)]
    assert read_dense_weights(path) == {}


def test_no_tensorflow_or_keras_is_imported():
    code = (
        "import json, sys\n"
        "from kerasurgery.inspection import inspect_file, read_dense_weights\n"
        f"for name in {ALL_FILES!r}:\n"
        f"    inspect_file({str(FIXTURES)!r} + '/' + name)\n"
        f"    read_dense_weights({str(FIXTURES)!r} + '/' + name)\n"
        "heavy = ('tensorflow', 'keras', 'tf_keras', 'jax', 'torch')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(FIXTURES.parent)},
    )
    assert json.loads(result.stdout) == []


# Broken files: every one is a one-line ModelFileError naming the file.


def _repack(src, dst, *, compression=zipfile.ZIP_STORED, config=None, edit_weights=None,
            drop=(), replace=None):
    """Copies a `.keras` archive, changing what the test asks for."""
    with zipfile.ZipFile(src) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    if config is not None:
        if not isinstance(config, bytes):
            config = json.dumps(config).encode()
        members["config.json"] = config
    if edit_weights is not None:
        weights = Path(dst).with_suffix(".weights.h5")
        weights.write_bytes(members["model.weights.h5"])
        with h5py.File(weights, "r+") as f:
            edit_weights(f)
        members["model.weights.h5"] = weights.read_bytes()
        weights.unlink()
    members.update(replace or {})
    with zipfile.ZipFile(dst, "w", compression=compression) as archive:
        for name, data in members.items():
            if name not in drop:
                archive.writestr(name, data)
    return Path(dst)


def _drop_names(f):
    """Removes the layer names recent Keras records on `vars` groups."""
    groups = []
    f.visititems(lambda _, obj: groups.append(obj) if "name" in obj.attrs else None)
    for group in groups:
        del group.attrs["name"]
    assert groups


def _edit_h5(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return Path(dst)


def _keras_config(name="frozen_mlp.keras"):
    with zipfile.ZipFile(FIXTURES / name) as archive:
        return json.loads(archive.read("config.json"))


def _assert_same_weights(a: dict[str, DenseWeights], b: dict[str, DenseWeights]):
    assert list(a) == list(b)
    for name in a:
        for field in ("kernel", "bias", "kernel_mask", "bias_mask"):
            assert np.array_equal(getattr(a[name], field), getattr(b[name], field))


def _replace(dataset_path, shape=None, dtype=None):
    def edit(f):
        old = f[dataset_path]
        del f[dataset_path]
        shape_, dtype_ = old.shape if shape is None else shape, dtype or old.dtype
        f.create_dataset(dataset_path, data=np.zeros(shape_, dtype_))
    return edit


def _delete(dataset_path):
    def edit(f):
        del f[dataset_path]
    return edit


KERAS_MASK = "layers/masked_dense/vars/kernel_pin_mask"
H5_DENSE_1 = "model_weights/dense_1/dense_1"


def _broken_files(tmp_path):
    """name -> (path, expected message pattern)."""
    t = tmp_path
    random = t / "random.h5"
    random.write_bytes(np.random.default_rng(0).bytes(4096))
    text = t / "notes.keras"
    text.write_text("this is not a model\n" * 20)
    empty = t / "empty.keras"
    empty.touch()
    folder = t / "folder.keras"
    folder.mkdir()
    h5_data = (FIXTURES / "frozen_mlp.h5").read_bytes()
    keras_data = (FIXTURES / "frozen_mlp.keras").read_bytes()
    truncated_h5 = t / "truncated.h5"
    truncated_h5.write_bytes(h5_data[: len(h5_data) // 2])
    truncated_keras = t / "truncated.keras"
    truncated_keras.write_bytes(keras_data[: len(keras_data) // 2])
    weights_only = t / "model.weights.h5"
    keras.utils.set_random_seed(0)
    _load(FIXTURES / "pruned_mlp.keras").save_weights(weights_only)
    keras2_weights_only = t / "k2.h5"
    with h5py.File(keras2_weights_only, "w") as f:
        f.attrs["layer_names"] = [b"dense_1"]
    bare_h5 = t / "bare.h5"
    with h5py.File(bare_h5, "w") as f:
        f["x"] = np.zeros(3)
    src = FIXTURES / "frozen_mlp.keras"
    config = _keras_config()
    config["config"]["layers"][1]["config"]["units"] = 17
    per_entry = "layers/masked_dense/vars/kernel_pin_value"
    return {
        "missing": (t / "nothing.keras", "no such file"),
        "folder": (folder, "is a folder"),
        "empty": (empty, "is empty"),
        "random bytes": (random, "neither a `.keras` archive nor an HDF5 file"),
        "text": (text, "neither a `.keras` archive nor an HDF5 file"),
        "truncated h5": (truncated_h5, "damaged or truncated HDF5"),
        "truncated keras": (truncated_keras, "damaged or truncated zip"),
        "weights-only keras 3": (weights_only, "weights-only file"),
        "weights-only keras 2": (keras2_weights_only, "weights-only file"),
        "hdf5 without config": (bare_h5, "without a model configuration"),
        "zip without config.json": (
            _repack(src, t / "noconfig.keras", drop=("config.json",)), "without config.json, not a Keras model"),
        "zip without weights": (
            _repack(src, t / "noweights.keras", drop=("model.weights.h5",)),
            "without `model.weights.h5`"),
        "npz weights": (
            _repack(src, t / "npz.keras", drop=("model.weights.h5",),
                    replace={"model.weights.npz": b"PK"}), "`.npz`"),
        "damaged weights member": (
            _repack(src, t / "garbage.keras", replace={"model.weights.h5": b"\0" * 4096}),
            "model.weights.h5 is a damaged HDF5 file"),
        "bad json": (_repack(src, t / "badjson.keras", config=b'{"class_name": '),
                     "config.json is not valid JSON"),
        "json not a model": (_repack(src, t / "list.keras", config=[1, 2]),
                             "config.json does not describe a Keras model"),
        "layer without name": (
            _repack(src, t / "noname.keras", config={
                "class_name": "Functional", "config": {"layers": [{"class_name": "Dense"}]}}),
            "layer without a name"),
        "units disagree": (
            _repack(src, t / "units.keras", config=config),
            r"kernel's shape \(8, 16\) disagrees with the config \(expected \(8, 17\)\)"),
        "kernel shape": (
            _repack(src, t / "kshape.keras",
                    edit_weights=_replace("layers/masked_dense/vars/kernel", shape=(8, 15))),
            "kernel's shape"),
        "bias shape": (
            _repack(src, t / "bshape.keras", edit_weights=_replace("layers/masked_dense/vars/bias",
                                                                   shape=(3,))),
            "bias's shape"),
        "missing kernel": (
            _repack(src, t / "nokernel.keras",
                    edit_weights=_delete("layers/masked_dense/vars/kernel")),
            "weight `kernel` is missing"),
        "mask shape keras": (
            _repack(src, t / "mshape.keras", edit_weights=_replace(KERAS_MASK, shape=(16, 8))),
            "`kernel_pin_mask` must be boolean of shape"),
        "mask dtype keras": (
            _repack(src, t / "mdtype.keras", edit_weights=_replace(KERAS_MASK, dtype="uint8")),
            "`kernel_pin_mask` must be boolean"),
        "mask is a soft link": (
            _repack(src, t / "soft.keras", edit_weights=lambda f: (
                _delete("layers/masked_dense_1/vars/kernel_pin_mask")(f),
                f.__setitem__("layers/masked_dense_1/vars/kernel_pin_mask",
                              h5py.SoftLink("/" + KERAS_MASK)))),
            "`kernel_pin_mask` is missing"),
        "value shape keras": (
            _repack(src, t / "vshape.keras", edit_weights=_replace(per_entry, shape=())),
            "`kernel_pin_value` must be floating point of shape"),
        "mask shape h5": (
            _edit_h5(FIXTURES / "frozen_mlp.h5", t / "mshape.h5",
                     _replace(f"{H5_DENSE_1}/kernel_pin_mask", shape=(8, 15))),
            "`kernel_pin_mask` must be boolean of shape"),
        "mask dtype h5": (
            _edit_h5(FIXTURES / "frozen_mlp.h5", t / "mdtype.h5",
                     _replace(f"{H5_DENSE_1}/kernel_pin_mask", dtype="float32")),
            "`kernel_pin_mask` must be boolean"),
        "bias mask dtype h5": (
            _edit_h5(FIXTURES / "frozen_mlp.h5", t / "bdtype.h5",
                     _replace(f"{H5_DENSE_1}/bias_pin_mask", dtype="int8")),
            "`bias_pin_mask` must be boolean"),
        "value dtype h5": (
            _edit_h5(FIXTURES / "frozen_mlp.h5", t / "vdtype.h5",
                     _replace(f"{H5_DENSE_1}/kernel_pin_value", dtype="int32")),
            "`kernel_pin_value` must be floating point"),
        "missing layer group h5": (
            _edit_h5(FIXTURES / "pruned_mlp.h5", t / "nogroup.h5",
                     _delete("model_weights/dense_2")),
            "layer 'dense_2' .*`kernel` is missing"),
        "kernel shape h5": (
            _edit_h5(FIXTURES / "keras2_mlp.h5", t / "k2shape.h5",
                     _replace("model_weights/dense_2/dense_2/kernel:0", shape=(16, 5))),
            r"kernel's shape \(16, 5\) disagrees"),
        "bad json h5": (
            _edit_h5(FIXTURES / "pruned_mlp.h5", t / "badjson.h5",
                     lambda f: f.attrs.__setitem__("model_config", "{not json")),
            "model_config is not valid JSON"),
        "no model_weights h5": (
            _edit_h5(FIXTURES / "pruned_mlp.h5", t / "noweights.h5", _delete("model_weights")),
            "no `model_weights` group"),
    }


BROKEN = [
    "missing", "folder", "empty", "random bytes", "text", "truncated h5", "truncated keras",
    "weights-only keras 3", "weights-only keras 2", "hdf5 without config",
    "zip without config.json", "zip without weights", "npz weights", "damaged weights member",
    "bad json", "json not a model", "layer without name", "units disagree", "kernel shape",
    "bias shape", "missing kernel", "mask shape keras", "mask dtype keras", "mask is a soft link",
    "value shape keras", "mask shape h5", "mask dtype h5", "bias mask dtype h5",
    "value dtype h5", "missing layer group h5", "kernel shape h5", "bad json h5",
    "no model_weights h5",
]


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return _broken_files(tmp_path_factory.mktemp("broken"))


def test_broken_cases_are_all_listed(broken):
    assert sorted(broken) == sorted(BROKEN)


@pytest.mark.parametrize("reader", [inspect_file, read_dense_weights])
@pytest.mark.parametrize("case", BROKEN)
def test_broken_file_is_a_one_line_model_file_error(broken, case, reader):
    path, pattern = broken[case]
    with pytest.raises(ModelFileError, match=pattern) as error:
        reader(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


def test_quantized_kernel_is_refused_by_read_dense_weights_only(tmp_path):
    path = _edit_h5(FIXTURES / "pruned_mlp.h5", tmp_path / "int8.h5",
                    _replace(f"{H5_DENSE_1}/kernel", dtype="int8"))
    assert inspect_file(path).layers[1].kernel_shape == (8, 16)
    with pytest.raises(ModelFileError, match="int8 kernel"):
        read_dense_weights(path)


@pytest.mark.parametrize("which", ["kernel", "bias"])
def test_non_finite_pin_value_is_refused_by_read_dense_weights(tmp_path, which):
    def edit(f):
        f[f"{H5_DENSE_1}/{which}_pin_value"][0] = np.nan
    path = _edit_h5(FIXTURES / "frozen_mlp.h5", tmp_path / "nan.h5", edit)
    with pytest.raises(ModelFileError, match=f"`{which}_pin_value` holds a non-finite"):
        read_dense_weights(path)
    with pytest.raises(ModelFileError):
        ks.load_model(path)  # MaskedDense refuses it as well


def test_corrupt_weight_bytes_in_an_archive_fail_the_crc_check(tmp_path):
    src = FIXTURES / "frozen_mlp.keras"
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        info = archive.getinfo("model.weights.h5")
        start = data.index(b"\x89HDF", info.header_offset)  # the member's first byte
        with h5py.File(io.BytesIO(archive.read(info))) as f:
            offset = f["layers/masked_dense_1/vars/kernel"].id.get_offset()
    data[start + offset] ^= 0x01  # lowest mantissa bit of dense_2's first kernel entry
    path = tmp_path / "flipped.keras"
    path.write_bytes(data)
    assert inspect_file(path).layers == inspect_file(src).layers  # masks are intact
    with pytest.raises(ModelFileError, match="the checksum of 'model.weights.h5' does not match"):
        read_dense_weights(path)


def _claims_more_than_it_holds(tmp_path, suffix):
    """A model file whose Dense kernel and bias claim 80 MB held in a few kB.

    Chunked datasets with no chunk written read as fill values, so nothing on
    disk bounds what `dataset[()]` allocates; the config agrees with the
    shapes, so only the size check stands between a reader and the allocation.
    """
    units = 4_000_000
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs))
    path = ks.save_model(model, tmp_path / f"plain{suffix}")

    def edit(f, root, names):
        for name, shape in zip(names, ((4, units), (units,))):
            del f[f"{root}/{name}"]
            f.create_dataset(f"{root}/{name}", shape=shape, dtype="float32", chunks=True)

    def grow(config):
        config["config"]["layers"][1]["config"]["units"] = units
        return config

    if suffix == ".h5":
        def edit_h5(f):
            f.attrs["model_config"] = json.dumps(grow(json.loads(f.attrs["model_config"])))
            edit(f, "model_weights/d/d", ("kernel", "bias"))
        return _edit_h5(path, tmp_path / "huge.h5", edit_h5)
    with zipfile.ZipFile(path) as archive:
        config = grow(json.loads(archive.read("config.json")))
    return _repack(path, tmp_path / "huge.keras", config=config,
                   edit_weights=lambda f: edit(f, "layers/dense/vars", ("0", "1")))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("reader", [inspect_file, read_dense_weights])
def test_datasets_larger_than_the_file_are_refused_before_reading(tmp_path, suffix, reader):
    path = _claims_more_than_it_holds(tmp_path, suffix)
    assert path.stat().st_size < 100_000
    with pytest.raises(ModelFileError, match=r"dataset '.*' claims \d+ bytes, more than the file holds"):
        reader(path)
    with pytest.raises(ModelFileError, match="more than the file holds"):
        ks.load_model(path)  # the loader's check is the same one


def test_truncated_files_never_raise_anything_else(tmp_path):
    for name in ("frozen_mlp.keras", "nested_frozen.h5"):
        data = (FIXTURES / name).read_bytes()
        for cut in np.linspace(1, len(data) - 1, 40).astype(int):
            path = tmp_path / f"cut{cut}{Path(name).suffix}"
            path.write_bytes(data[:cut])
            with pytest.raises(ModelFileError):
                read_dense_weights(path)
