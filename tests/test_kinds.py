"""The table of layer kinds (`kerasurgery.kinds`) against Keras itself.

Every entry is checked on layers Keras builds: its weights in saved order,
the shapes its config sizes, its output size, its pinned class (registered,
a subclass of the Keras class, saved under `kerasurgery.layers`), and its
axes, by what `rules.inputs` / `rules.units` pinned at zero do to the layer's
output. Files name the pinned classes' module `kerasurgery.layers`; files of
earlier versions (0.1.0, and development versions that wrote
`kerasurgery.layers._classes`) are read as pinned layers by the Keras-free
readers and take the TF-free path.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import kinds
from kerasurgery import layers as layers_lib
from kerasurgery.cli import commands as cli
from kerasurgery.files import container, formats
from kerasurgery.files.inspection import inspect_file
from kerasurgery.guards import declared
from kerasurgery.guards import shapes as _shapes
from tests.helpers import rewrite_keras_file

L = keras.layers
ROOT = Path(__file__).resolve().parent.parent
V010 = ROOT / "fixtures" / "kerasurgery-0.1.0"

# (layer factory, input shape without the batch axis, input dtype). Every kind
# has a case here; those with a bias also one without it.
CASES = [
    (lambda: L.Dense(4), (5,), "float32"),
    (lambda: L.Dense(3, use_bias=False), (4, 6), "float32"),
    (lambda: L.EinsumDense("abc,cd->abd", output_shape=(5, 4), bias_axes="d"), (5, 6), "float32"),
    (lambda: L.EinsumDense("ab,bc->ac", output_shape=4), (6,), "float32"),
    (lambda: L.Embedding(20, 4), (7,), "int32"),
    (lambda: L.Conv1D(4, 3), (10, 3), "float32"),
    (lambda: L.Conv1D(4, 3, use_bias=False), (10, 3), "float32"),
    (lambda: L.Conv2D(4, (3, 2)), (8, 8, 3), "float32"),
    (lambda: L.Conv3D(3, 2), (5, 5, 5, 3), "float32"),
    (lambda: L.Conv1DTranspose(4, 3), (6, 3), "float32"),
    (lambda: L.Conv2DTranspose(4, 3, use_bias=False), (5, 5, 3), "float32"),
    (lambda: L.Conv3DTranspose(3, 2), (3, 3, 3, 3), "float32"),
    (lambda: L.DepthwiseConv1D(3, depth_multiplier=2), (10, 3), "float32"),
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False), (8, 8, 3), "float32"),
    (lambda: L.SeparableConv1D(4, 3, depth_multiplier=2), (10, 3), "float32"),
    (lambda: L.SeparableConv2D(4, 3, use_bias=False), (8, 8, 3), "float32"),
    # Issue 19: the tied input/output embedding (untied: two tables).
    (lambda: L.ReversibleEmbedding(20, 4), (7,), "int32"),
    (lambda: L.ReversibleEmbedding(20, 4, tie_weights=False), (7,), "int32"),
    # Issue 20: normalizations (scale and offset per channel; BN's moving statistics are state).
    (lambda: L.BatchNormalization(), (4, 4, 3), "float32"),
    (lambda: L.BatchNormalization(center=False), (5,), "float32"),
    (lambda: L.LayerNormalization(), (3, 4), "float32"),
    (lambda: L.LayerNormalization(rms_scaling=True), (6,), "float32"),
    (lambda: L.GroupNormalization(groups=2), (4, 4, 4), "float32"),
]
IDS = [f"{type(make()).__name__}-{i}" for i, (make, _, _) in enumerate(CASES)]


def test_every_kind_has_a_case_and_a_pinned_class():
    assert {type(make()).__name__ for make, _, _ in CASES} == set(kinds.KINDS)
    assert layers_lib.supported_class_names() == list(kinds.KINDS)
    assert [cls.__name__ for cls in layers_lib.PINNED_CLASSES] == [k.pinned for k in kinds.KINDS.values()]


def _built(make, shape, dtype):
    """A built layer whose every variable holds distinct values, and its serialized config."""
    layer = make()
    layer.build((None, *shape))
    rng = np.random.default_rng(0)
    for variable in layer.weights:
        values = rng.normal(size=variable.shape).astype(variable.dtype)
        variable.assign(np.abs(values) if variable.name == "moving_variance" else values)
    entry = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    return layer, entry


@pytest.mark.parametrize("make, shape, dtype", CASES, ids=IDS)
def test_weights_in_saved_order_are_keras_own(make, shape, dtype):
    layer, entry = _built(make, shape, dtype)
    kind = kinds.KINDS[type(layer).__name__]
    present = kind.saved(entry["config"])
    assert [v.name for v in layer.weights] == present
    assert present == kind.present(entry["config"]) + list(kind.state)
    store: dict = {}
    layer.save_own_variables(store)
    assert list(store) == [str(i) for i in range(len(present))]
    for i, weight in enumerate(present):
        # The attribute the kind names is the variable saved at its place.
        assert np.array_equal(store[str(i)], ops.convert_to_numpy(getattr(layer, weight)))
    assert kind.main == present[0] and kind.kernels == tuple(w for w in kind.weights if w != "bias")
    assert ("bias" in present) == (getattr(layer, "bias", None) is not None)


@pytest.mark.parametrize("make, shape, dtype", CASES, ids=IDS)
def test_sizes_are_the_shapes_keras_builds(make, shape, dtype):
    layer, entry = _built(make, shape, dtype)
    kind = kinds.KINDS[entry["class_name"]]
    built = [tuple(v.shape) for v in layer.weights]
    input_shape = entry["build_config"]["input_shape"]
    assert _shapes.weight_shapes(kind.name, entry["config"], input_shape) == built
    assert kind.sizes(entry["config"], input_shape) == built
    # Without the input shape: the sizes the config states, the others unknown.
    # (None only where the equation needs the input's rank: EinsumDense.)
    partial = _shapes.config_shapes(kind.name, entry["config"], None)
    if partial is None:
        assert kind.config_axes is not None and len(shape) > 1
    else:
        assert [len(s) for s in partial] == [len(s) for s in built]
        for want, have in zip(partial, built):
            assert all(w is None or w == h for w, h in zip(want, have)), (want, have)
        # A normalization's sizes are all the input's.
        assert any(w is not None for s in partial for w in s) != kind.normalization
    if kind.rank:
        assert len(built[0]) == kind.rank + 2
    output = layer.compute_output_shape((None, *shape))
    if kind.config_axes is None:
        assert kind.output_size(built) == output[-1]
    else:
        assert kind.output_size(built) is None


@pytest.mark.parametrize("kind", list(kinds.KINDS.values()), ids=list(kinds.KINDS))
def test_the_pinned_class_is_registered_and_saved_under_kerasurgery_layers(kind):
    cls = getattr(layers_lib, kind.pinned)
    keras_class = getattr(keras.layers, kind.name)
    assert issubclass(cls, keras_class) and cls.keras_class is keras_class
    assert cls.kind is kind and cls.pinned_weights == kind.weights
    assert keras.saving.get_registered_name(cls) == kind.registered_name == f"kerasurgery>{kind.pinned}"
    assert keras.saving.get_registered_object(kind.registered_name) is cls
    assert cls.__module__ == kinds.PINNED_MODULE == "kerasurgery.layers"
    plain = next(make() for make, _, _ in CASES if type(make()) is keras_class)
    assert layers_lib.pinned_class_for(plain) is cls and layers_lib.is_pinnable(plain)
    assert kinds.find(kind.pinned) is kinds.find(kind.name) is kind
    assert kinds.is_pinned_class(kind.pinned) and not kinds.is_pinned_class(kind.name)
    if kind.config_axes is None:
        assert set(kind.axes) == set(kind.kernels)
    assert set(kind.grid) <= set(kind.kernels)


def _frozen_output(layer, shape, dtype, rule, x):
    model = keras.Sequential([keras.Input(shape, dtype=dtype), layer])
    frozen = ks.freeze(model, {layer.name: rule})
    return ops.convert_to_numpy(frozen(x))


@pytest.mark.parametrize("make, shape, dtype", CASES, ids=IDS)
def test_axes_select_the_inputs_and_units_keras_computes_with(make, shape, dtype):
    """Pinned at zero, a unit's output is zero and an input no longer counts."""
    layer, entry = _built(make, shape, dtype)
    kind = kinds.KINDS[entry["class_name"]]
    rng = np.random.default_rng(1)
    if dtype == "int32":
        x = rng.integers(0, 20, size=(6, *shape)).astype("int32")
    else:
        x = rng.normal(size=(6, *shape)).astype("float32")
    # Units: output unit 1 (the last output axis) is zero everywhere, unit 0 is not.
    out = _frozen_output(layer, shape, dtype, ks.rules.units([1], value=0.0), x)
    assert np.all(out[..., 1] == 0) and np.any(out[..., 0] != 0)
    axes = kind.axes_of(kind.main, entry["config"])
    pinned = _frozen_output(layer, shape, dtype, ks.rules.inputs([1], value=0.0), x)
    if not axes.inputs and all(not kind.axes_of(w, entry["config"]).inputs for w in kind.kernels):
        # A normalization reads no input axis through its weights: nothing to pin.
        assert kind.normalization
        assert np.array_equal(pinned, ops.convert_to_numpy(layer(x)))
        return
    if not axes.contracted:
        # A lookup table: its inputs are rows, so token 1 looks up zeros.
        assert np.all(pinned[x == 1] == 0) and np.all(np.any(pinned[x == 2] != 0, axis=-1))
        return
    # Inputs: with input channel 1 pinned, changing it changes nothing; channel 0 still counts.
    for channel, counts in ((1, False), (0, True)):
        moved = x.copy()
        moved[..., channel] += 3.0
        after = _frozen_output(layer, shape, dtype, ks.rules.inputs([1], value=0.0), moved)
        assert np.allclose(after, pinned, atol=1e-5) != counts, (channel, counts)


# --- saved names -----------------------------------------------------------------------------------


def _tiny() -> keras.Model:
    keras.utils.set_random_seed(5)
    x = keras.Input((6, 6, 3), name="img")
    h = L.Conv2D(4, 3, name="conv")(x)
    h = L.Flatten()(h)
    out = L.Dense(3, name="dense")(L.Dense(5, name="hidden")(h))
    return keras.Model(x, out, name="tiny")


def _config(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def _pinned_entries(config: dict) -> list[dict]:
    return [node for node in declared.json_dicts(config)
            if isinstance(node.get("registered_name"), str) and node["registered_name"].startswith("kerasurgery>")]


def test_files_name_the_pinned_classes_kerasurgery_layers_and_earlier_names_still_read(tmp_path, capsys):
    frozen = ks.freeze(_tiny(), {"*": ks.rules.fraction(0.5, seed=0)})
    path = tmp_path / "frozen.keras"
    ks.save_model(frozen, path)
    entries = _pinned_entries(_config(path))
    assert sorted(e["class_name"] for e in entries) == ["MaskedConv2D", "MaskedDense", "MaskedDense"]
    assert {e["module"] for e in entries} == {"kerasurgery.layers"}
    pins = {layer.path: layer.pinned for layer in inspect_file(path).layers}
    assert pins["conv"] > 0 and pins["dense"] > 0
    # A development version wrote the module that defined the classes.
    old = tmp_path / "old.keras"
    rewrite_keras_file(path, old, config=lambda c: [e.update(module="kerasurgery.layers._classes")
                                                    for e in _pinned_entries(c)])
    assert {e["module"] for e in _pinned_entries(_config(old))} == {"kerasurgery.layers._classes"}
    assert {layer.path: layer.pinned for layer in inspect_file(old).layers} == pins
    with container.open_model_file(old) as opened:
        exact = declared.exact_weight_entries(opened.config)
    loaded = keras.saving.load_model(old)  # Keras resolves the registered name
    assert exact == sum(int(np.prod(v.shape)) for v in loaded.weights)
    assert loaded.get_layer("conv").pins().kernel.sum() == frozen.get_layer("conv").pins().kernel.sum()
    # Taken as pinned layers by the TF-free rewrite, and written under today's name.
    out = tmp_path / "stripped.keras"
    assert cli.main(["--debug", "strip", str(old), "-o", str(out)]) == 0
    assert "strip: offline path" in capsys.readouterr().err
    assert not _pinned_entries(_config(out))
    refrozen = tmp_path / "refrozen.keras"
    assert cli.main(["--debug", "freeze", str(old), "-o", str(refrozen), "--layer", "hidden"]) == 0
    assert "freeze: offline path" in capsys.readouterr().err
    assert {e["module"] for e in _pinned_entries(_config(refrozen))} == {"kerasurgery.layers"}
    # Another module is not a pinned layer to the Keras-free readers: Keras decides.
    other = tmp_path / "other.keras"
    rewrite_keras_file(path, other, config=lambda c: [e.update(module="elsewhere") for e in _pinned_entries(c)])
    assert cli.main(["--debug", "strip", str(other), "-o", str(tmp_path / "o.keras")]) == 0
    assert "strip: Keras path" in capsys.readouterr().err


_BLOCKED = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "jax", "jaxlib", "torch", "tf_keras"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _Blocked())
from kerasurgery.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules)
assert not loaded, loaded
raise SystemExit(code)
"""


def test_0_1_0_files_take_the_tf_free_path_and_keep_their_pins(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    frozen, stripped = tmp_path / "frozen.keras", tmp_path / "stripped.keras"
    source = V010 / "frozen_mlp.keras"
    for argv in (["freeze", str(source), "-o", str(frozen), "--layer", "dense_2", "--index", "0,1", "--value", "2"],
                 ["strip", str(frozen), "-o", str(stripped)]):
        result = subprocess.run([sys.executable, "-c", _BLOCKED, "--debug", *argv],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"{argv[0]}: offline path" in result.stderr
    original = ks.load_model(source)
    model = ks.load_model(frozen)
    counts = {layer.name: {w: int(s.mask.sum()) for w, s in layer.pin_state().items()}
              for layer in model.layers if layers_lib.is_pinned(layer)}
    assert counts == {"dense_1": {"kernel": 64, "bias": 0}, "dense_2": {"kernel": 129, "bias": 0},
                      "dense_3": {"kernel": 16, "bias": 1}}
    assert ops.convert_to_numpy(model.get_layer("dense_2").kernel)[0, 1] == 2.0
    for name in ("dense_1", "dense_3"):
        before, after = original.get_layer(name).pin_state(), model.get_layer(name).pin_state()
        for weight in before:
            assert np.array_equal(before[weight].mask, after[weight].mask)
            assert before[weight].effective.tobytes() == after[weight].effective.tobytes()
    assert {e["module"] for e in _pinned_entries(_config(frozen))} == {"kerasurgery.layers"}
    plain = keras.saving.load_model(stripped)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    assert np.array_equal(plain.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("name", ["frozen_mlp.keras", "nested_frozen.keras"])
def test_0_1_0_configs_are_counted_exactly(name):
    with container.open_model_file(V010 / name) as opened:
        exact = declared.exact_weight_entries(opened.config)
    model = ks.load_model(V010 / name)
    assert exact == sum(int(np.prod(v.shape)) for v in model.weights) > 0


# --- the table needs nothing but the standard library ------------------------------------------------


def test_the_table_imports_only_the_standard_library():
    path = Path(kinds.__file__)
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    # Loaded on its own, with every package outside the standard library blocked.
    script = f"""
import importlib.util, sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in sys.stdlib_module_names:
            raise ImportError(name + " is blocked")
        return None
sys.meta_path.insert(0, _Blocked())
spec = importlib.util.spec_from_file_location("kinds", {str(path)!r})
module = sys.modules["kinds"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(len(module.KINDS))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(kinds.KINDS)


# --- ReversibleEmbedding (issue 19) ----------------------------------------------------------------


@pytest.mark.parametrize("tie_weights", [True, False])
def test_pinned_token_rows_hold_for_the_lookup_and_the_logits_projection(tie_weights):
    keras.utils.set_random_seed(3)
    layer = L.ReversibleEmbedding(20, 4, tie_weights=tie_weights, name="tokens")
    tokens = keras.Input((5,), dtype="int32")
    features = keras.Input((4,))
    model = keras.Model([tokens, features], [layer(tokens), layer(features, reverse=True)])
    frozen = ks.freeze(model, {"tokens": ks.rules.inputs([3, 7], value=0.0)})
    pinned = frozen.get_layer("tokens")
    assert type(pinned).__name__ == "MaskedReversibleEmbedding"
    assert pinned.present_weights() == (["embeddings"] if tie_weights else ["embeddings", "reverse_embeddings"])
    x = np.array([[3, 7, 1, 2, 3]], "int32")
    f = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
    looked_up, logits = (ops.convert_to_numpy(t) for t in frozen([x, f]))
    assert np.all(looked_up[0, [0, 1, 4]] == 0) and np.all(looked_up[0, [2, 3]] != 0)
    # Token 3 and 7 get a zero logit whatever the features: their rows are pinned at zero.
    assert np.all(logits[:, [3, 7]] == 0) and np.all(logits[:, [1, 2]] != 0)
    assert np.array_equal(
        ops.convert_to_numpy(pinned.embeddings)[[3, 7]], np.zeros((2, 4), "float32"))


def test_keras_hubs_reversible_embedding_is_the_same_kind():
    keras_hub = pytest.importorskip("keras_hub")
    layer = keras_hub.layers.ReversibleEmbedding(20, 4)
    assert type(layer) is not L.ReversibleEmbedding
    assert layers_lib.is_pinnable(layer)
    assert layers_lib.pinned_class_for(layer) is layers_lib.MaskedReversibleEmbedding
    layer.build()
    layers_lib.pin_in_place(layer, layers_lib.MaskedReversibleEmbedding, {}, in_config=False)
    assert isinstance(layer, L.ReversibleEmbedding)
    layers_lib.unpin_in_place(layer)
    assert type(layer) is keras_hub.layers.ReversibleEmbedding  # its own class back
