"""`kerasurgery._keras_private`: each use of a private Keras name, against the installed Keras.

One test per function. Each fails with a message that names the installed
Keras release and the function that relies on the changed private thing, so
that a Keras upgrade that moves one says where to look. The last test checks
that no other module of the package names a private Keras attribute.
"""

from __future__ import annotations

import copy
import re
import warnings
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import _keras_private as private
from kerasurgery import layers as layers_lib
from kerasurgery.errors import one_line

PACKAGE = Path(__file__).resolve().parent.parent / "kerasurgery"


def changed(function: str, what: str) -> str:
    """The failure message: which Keras release, which function, what changed."""
    return (
        f"Keras {keras.__version__} changed {what}: kerasurgery/_keras_private.py "
        f"`{function}` relies on it (written against Keras 3.15.1). Update that function "
        "and its comment."
    )


def _built_dense(units: int = 2, inputs: int = 3) -> keras.layers.Dense:
    layer = keras.layers.Dense(units)
    layer.build((None, inputs))
    return layer


def _add_variable(layer: keras.layers.Layer, name: str) -> keras.Variable:
    return layer.add_weight(name=name, shape=(2,), initializer="zeros", trainable=False)


# -- a built layer's state ---------------------------------------------------


def test_unlocked_state_lets_a_built_layer_gain_variables_and_locks_it_again():
    layer = _built_dense()
    with pytest.raises(ValueError, match="already built"):
        _add_variable(layer, "refused")
    try:
        with private.unlocked_state(layer):
            added = _add_variable(layer, "added")
    except (AttributeError, ValueError) as e:
        pytest.fail(changed("unlocked_state", f"how a built layer's tracker is unlocked ({e!r})"))
    assert any(v is added for v in layer.weights), changed(
        "unlocked_state", "where a variable added to a built layer is tracked")
    with pytest.raises(ValueError, match="already built"):
        _add_variable(layer, "refused_again")


def test_untrack_variable_removes_it_from_the_weights_and_keeps_the_lock():
    layer = _built_dense()
    with private.unlocked_state(layer):
        added = _add_variable(layer, "added")
    before = len(layer.weights)
    try:
        private.untrack_variable(layer, added)
    except AttributeError as e:
        pytest.fail(changed("untrack_variable", f"`Layer._untrack_variable` ({e!r})"))
    assert len(layer.weights) == before - 1, changed("untrack_variable", "what untracking removes")
    assert not any(v is added for v in layer.weights + layer.non_trainable_variables)
    with pytest.raises(ValueError, match="already built"):
        _add_variable(layer, "refused")


def test_keras_quantize_is_the_per_instance_wrapper_that_unlocks_the_layer():
    layer = _built_dense()
    wrapper = private.keras_quantize(layer)
    assert wrapper is not None, changed(
        "keras_quantize", "`Layer.__new__`, which put a `quantize` wrapper on each instance")
    # The class's own method, called without Keras' wrapper, cannot add its
    # variables to a built layer: the reason unpinning gives the wrapper back.
    bare = _built_dense()
    private.set_quantize(bare, None)
    assert private.keras_quantize(bare) is None
    with pytest.raises(ValueError, match="already built"):
        bare.quantize("int8")
    layer.quantize("int8")
    assert layer.quantization_mode == "int8", changed("keras_quantize", "what the wrapper does")
    private.set_quantize(bare, wrapper)
    assert private.keras_quantize(bare) is wrapper


# Each pinnable Keras class, built: (constructor arguments, input shape).
_BUILT = {
    "Dense": ((2,), {}, (None, 3)),
    "EinsumDense": (("ab,bc->ac",), {"output_shape": 2, "bias_axes": "c"}, (None, 3)),
    "Embedding": ((5, 2), {}, (None, 4)),
    "Conv1D": ((2, 3), {}, (None, 8, 3)),
    "Conv2D": ((2, 3), {}, (None, 8, 8, 3)),
    "Conv3D": ((2, 3), {}, (None, 8, 8, 8, 3)),
    "Conv1DTranspose": ((2, 3), {}, (None, 8, 3)),
    "Conv2DTranspose": ((2, 3), {}, (None, 8, 8, 3)),
    "Conv3DTranspose": ((2, 3), {}, (None, 8, 8, 8, 3)),
    "DepthwiseConv1D": ((3,), {}, (None, 8, 3)),
    "DepthwiseConv2D": ((3,), {}, (None, 8, 8, 3)),
    "SeparableConv1D": ((2, 3), {}, (None, 8, 3)),
    "SeparableConv2D": ((2, 3), {}, (None, 8, 8, 3)),
    "ReversibleEmbedding": ((5, 2), {"tie_weights": False}, (None, 4)),
    "BatchNormalization": ((), {}, (None, 4, 3)),
    "LayerNormalization": ((), {}, (None, 3)),
    "GroupNormalization": ((), {"groups": 3}, (None, 4, 3)),
}


@pytest.mark.parametrize("pinned", layers_lib.PINNED_CLASSES, ids=lambda c: c.keras_class.__name__)
def test_property_attribute_names_the_variable_the_keras_class_reads(pinned):
    keras_class = pinned.keras_class
    assert keras_class.__name__ in _BUILT, f"add how to build a {keras_class.__name__} to _BUILT"
    args, kwargs, shape = _BUILT[keras_class.__name__]
    layer = keras_class(*args, **kwargs)
    layer.build(shape)
    for weight in pinned.pinned_weights:
        attribute = private.property_attribute(keras_class, weight) or weight
        held = vars(layer).get(attribute)
        if weight == "bias" and held is None:
            continue  # depthwise layers without a bias have none
        assert isinstance(held, keras.Variable), changed(
            "property_attribute", f"where `{keras_class.__name__}` keeps its `{weight}` "
            f"(not in `{attribute}`)")
        assert getattr(layer, weight) is held, changed(
            "property_attribute", f"what `{keras_class.__name__}.{weight}` returns")


# -- the layers a layer holds ------------------------------------------------


class _Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(2, name="first")
        self.second = keras.layers.Dense(2, name="second")

    def call(self, x):
        return self.second(self.first(x))


def test_tracked_layers_are_the_layers_a_custom_layer_holds_in_order():
    block = _Block()
    assert private.tracked_layers(block) == [block.first, block.second], changed(
        "tracked_layers", "where a layer tracks the layers it holds (`_layers`)")


def test_replace_tracked_layer_keeps_the_order():
    block = _Block()
    third = keras.layers.Dense(2, name="third")
    first, second = block.first, block.second
    private.set_untracked_attribute(block, "first", third)
    try:
        private.replace_tracked_layer(block, first, third)
    except (AttributeError, ValueError) as e:
        pytest.fail(changed("replace_tracked_layer", f"`_layers` ({e!r})"))
    assert block.first is third
    assert private.tracked_layers(block) == [third, second], changed(
        "replace_tracked_layer", "the list of tracked layers")


def test_layer_attributes_hold_sub_layers_on_every_backend():
    block = _Block()
    attributes = private.layer_attributes(block)
    assert attributes.get("first") is block.first and attributes.get("second") is block.second, changed(
        "layer_attributes", f"where a {keras.backend.backend()} layer keeps its sub-layers")


def test_set_untracked_attribute_does_not_track_the_layer_again():
    block = _Block()
    replacement = keras.layers.Dense(2, name="replacement")
    private.set_untracked_attribute(block, "second", replacement)
    assert block.second is replacement
    assert private.layer_attributes(block)["second"] is replacement
    assert replacement not in private.tracked_layers(block), changed(
        "set_untracked_attribute", "how setting an attribute tracks a layer")


class _FunctionalSubclass(keras.Model):
    def __init__(self, **kwargs):
        inputs = keras.Input((3,))
        super().__init__(inputs, keras.layers.Dense(2)(inputs), **kwargs)


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_is_functional_tells_graphs_from_subclassed_models():
    inputs = keras.Input((3,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    try:
        verdicts = [private.is_functional(m) for m in (functional, _FunctionalSubclass(), sequential, _Subclassed())]
    except ImportError as e:
        pytest.fail(changed("is_functional", f"the module of the `Functional` class ({e!r})"))
    assert verdicts == [True, True, False, False], changed("is_functional", "what `keras.Model(...)` returns")


class _ConfiguredFunctional(keras.Model):
    """A Functional subclass built by its own constructor, as a KerasHub backbone is."""

    def __init__(self, units=2, **kwargs):
        inputs = keras.Input((3,))
        super().__init__(inputs, keras.layers.Dense(units)(inputs), **kwargs)
        self.units = units

    def get_config(self):
        return {"units": self.units, "name": self.name}


def test_clones_as_graph_tells_which_functional_models_clone_model_keeps():
    inputs = keras.Input((3,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    configured = _ConfiguredFunctional()
    try:
        verdicts = [private.clones_as_graph(m) for m in (functional, configured)]
    except ImportError as e:
        pytest.fail(changed("clones_as_graph", f"the module of `functional_like_constructor` ({e!r})"))
    assert verdicts == [True, False], changed("clones_as_graph", "which constructors look functional")
    # What the verdict stands for: clone_model keeps one class and loses the other.
    assert type(keras.models.clone_model(functional)) is type(functional)
    assert type(keras.models.clone_model(configured)) is not _ConfiguredFunctional


def test_producing_layer_is_the_input_layer_of_an_input():
    inputs = keras.Input((3,), name="features")
    dense = keras.layers.Dense(2, name="d")
    outputs = dense(inputs)
    try:
        made_by = [private.producing_layer(t) for t in (inputs, outputs)]
    except AttributeError as e:
        pytest.fail(changed("producing_layer", f"`KerasTensor._keras_history` ({e!r})"))
    assert isinstance(made_by[0], keras.layers.InputLayer) and made_by[0].name == "features", changed(
        "producing_layer", "what a KerasTensor records of the layer that made it")
    assert made_by[1] is dense


# -- building configs --------------------------------------------------------


def _h5_config(model: keras.Model, tmp_path: Path) -> dict:
    import json

    path = ks.save_model(model, tmp_path / "m.h5")
    with h5py.File(path, "r") as h5:
        return json.loads(h5.attrs["model_config"])


def test_legacy_model_from_config_builds_h5_configs_in_safe_mode(tmp_path):
    inputs = keras.Input((2,), name="x")
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(keras.layers.Dense(2, name="d")(inputs))
    config = _h5_config(keras.Model(inputs, outputs), tmp_path)
    try:
        with pytest.raises(ValueError, match="safe_mode"):
            private.legacy_model_from_config(copy.deepcopy(config), safe_mode=True)
        model = private.legacy_model_from_config(copy.deepcopy(config), safe_mode=False)
    except ImportError as e:
        pytest.fail(changed("legacy_model_from_config", f"the legacy `.h5` deserializer ({e!r})"))
    assert [layer.name for layer in model.layers] == ["x", "d", "double"]
    x = np.arange(4, dtype="float32").reshape(2, 2)
    model.set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    assert np.array_equal(ops.convert_to_numpy(model(x)), x * 2.0)


def test_variables_left_uninitialized_leave_nothing_for_keras_to_initialize():
    from keras.src.backend.common import global_state

    def waiting() -> list:
        return list(global_state.get_global_attribute(private._UNINITIALIZED, []) or [])

    before = waiting()
    with private.variables_left_uninitialized():
        with keras.StatelessScope(initialize_variables=False):
            variable = keras.Variable(initializer="zeros", shape=(1000, 1000))
        assert any(v is variable for v in waiting()), changed(
            "variables_left_uninitialized", "where Keras lists the variables it deferred")
    assert not any(v is variable for v in waiting())
    assert len(waiting()) == len(before)
    assert tuple(variable.shape) == (1000, 1000)


# -- what Keras' errors say --------------------------------------------------


def _dense_config(**extra) -> dict:
    return {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
            "config": {"units": 2, **extra}}


def _error_of(call) -> Exception:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras' warnings about what it skips
            call()
    except Exception as e:  # what Keras raises is the subject of the test
        return e
    raise AssertionError("expected an error")


@pytest.mark.parametrize("nested", [False, True])
def test_deserialization_cause_is_the_error_from_config_raised(nested):
    config = _dense_config(bogus=1)
    if nested:
        config = {"module": "keras", "class_name": "Sequential", "registered_name": None,
                  "config": {"name": "s", "layers": [config]}}
    error = _error_of(lambda: keras.saving.deserialize_keras_object(config))
    cause = private.deserialization_cause(error)
    assert cause is not error and not isinstance(cause, TypeError), changed(
        "deserialization_cause", "how a failed `from_config` is wrapped")
    assert "bogus" in str(cause) and "config=" not in str(cause)


def _keras_file_with(tmp_path: Path, name: str, value: np.ndarray, *, frozen: bool = False) -> Path:
    """A saved 3-2 MLP whose `.keras` weights dataset ending in `name` holds `value`."""
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs))
    if frozen:
        model = ks.freeze(model, {"out": ks.rules.zeros()})
    source = ks.save_model(model, tmp_path / "source.keras")
    target = tmp_path / "edited.keras"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "model.weights.h5":
                weights = tmp_path / "weights.h5"
                weights.write_bytes(data)
                with h5py.File(weights, "a") as h5:
                    found = []
                    h5.visititems(lambda n, obj: found.append(n) if (
                        isinstance(obj, h5py.Dataset) and n.endswith(name)) else None)
                    del h5[found[0]]
                    h5[found[0]] = value
                data = weights.read_bytes()
            dst.writestr(item, data)
    return target


def test_failed_object_and_assigned_shapes_read_a_plain_layers_refusal(tmp_path):
    path = _keras_file_with(tmp_path, "vars/0", np.zeros((3, 3), "float32"))
    error = _error_of(lambda: keras.saving.load_model(path))
    failed = private.failed_object(error)
    assert failed is not None, changed("failed_object", f"how a .keras load failure reads: {one_line(error)}")
    class_name, name, detail = failed
    assert (class_name, name) == ("Dense", "out")
    assert private.assigned_shapes(detail) == ("(3, 2)", "(3, 3)"), changed(
        "assigned_shapes", f"how `Variable.assign` refuses another shape: {detail[:200]}")


def test_failed_object_reads_a_pinned_layers_own_refusal(tmp_path):
    path = _keras_file_with(tmp_path, "kernel_pin_mask", np.zeros((3, 1), bool), frozen=True)
    error = _error_of(lambda: keras.saving.load_model(path))
    failed = private.failed_object(error)
    assert failed is not None, changed("failed_object", f"how a .keras load failure reads: {one_line(error)}")
    assert failed[:2] == ("MaskedDense", "out")
    assert failed[2] == "Layer 'out': `kernel_pin_mask` has the wrong shape. Expected: (3, 2). Received: (3, 1)"
    assert private.assigned_shapes(failed[2]) is None


def test_failed_object_is_none_for_other_errors():
    assert private.failed_object(ValueError("Shape mismatch")) is None
    assert private.assigned_shapes("nothing here") is None


def test_is_safe_mode_refusal_recognizes_keras_refusing_code(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t + 1.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    error = _error_of(lambda: keras.saving.load_model(path, safe_mode=True))
    assert private.is_safe_mode_refusal(error), changed(
        "is_safe_mode_refusal", f"how safe mode refuses code: {one_line(error)}")
    assert not private.is_safe_mode_refusal(ValueError("Shape mismatch"))


@pytest.mark.parametrize("config, marker", [
    (_dense_config(bogus=1), "config="),
    ({"module": "mymodule", "class_name": "NoSuch", "registered_name": "NoSuch", "config": {}},
     "Full object config"),
    ({**_dense_config(), "config": 3}, "Full config:"),
])
def test_config_start_finds_the_config_keras_appends(config, marker):
    error = _error_of(lambda: keras.saving.deserialize_keras_object(config))
    text = " ".join(str(error).split())
    start = private.config_start(text)
    assert start is not None and text[start:].startswith(marker), changed(
        "config_start", f"how Keras appends a config to an error: {text[:200]}")
    assert "{" not in one_line(error)


# -- nothing else names a private Keras attribute ------------------------------

_PRIVATE_USES = re.compile(
    r"(?:from|import)\s+keras\.src"
    r"|\.(?:_tracker|_untrack_variable|_layers|_keras_history|_run_through_graph"
    r"|_trainable_variables|_non_trainable_variables|_modules|_kernel|_embeddings|_nodes_by_depth"
    r"|_query_dense|_key_dense|_value_dense|_output_dense|_self_attention_layer"
    r"|_feedforward_intermediate_dense|_feedforward_output_dense)\b"
    r"|[\"'](?:_tracker|_layers|_keras_history|_run_through_graph|_trainable_variables"
    r"|_non_trainable_variables|_modules)[\"']"
    r"|\b(?:global_state|SafeModeScope|saving_utils)\b"
)


def test_no_module_but_keras_private_names_a_private_keras_attribute():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py")) if path.name != "_keras_private.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _PRIVATE_USES.search(line)
    ]
    assert not found, "use kerasurgery/_keras_private.py instead:\n" + "\n".join(found)


def test_graph_nodes_run_in_call_order_and_leave_out_inputs():
    import keras

    inputs = keras.Input((3,), name="x")
    shared = keras.layers.Dense(3, name="shared")
    first = shared(inputs)
    out = keras.layers.Add(name="add")([shared(first), first])
    model = keras.Model(inputs, out)
    nodes = private.graph_nodes(model)
    assert [node.operation.name for node in nodes] == ["shared", "shared", "add"], changed(
        "graph_nodes", "Function._nodes_by_depth no longer lists the calls in run order")


def test_intercepted_call_sees_a_layers_inputs_and_restores_it():
    import keras
    import numpy as np

    layer = keras.layers.Dense(2, kernel_initializer="ones", name="d")
    seen = []
    original = layer.call

    def call(*args, **kwargs):
        seen.append(keras.ops.convert_to_numpy(args[0]))
        return original(*args, **kwargs)

    x = np.ones((1, 3), "float32")
    with private.intercepted_call(layer, call):
        y = keras.ops.convert_to_numpy(layer(x))
    assert [a.tolist() for a in seen] == [[[1.0, 1.0, 1.0]]], changed(
        "intercepted_call", "Layer.__call__ no longer calls the instance's `call`")
    assert y.tolist() == [[3.0, 3.0]]
    assert "call" not in layer.__dict__
    layer(x)
    assert len(seen) == 1


# -- the calls of a model's graph ----------------------------------------------


def _names(calls):
    return [(op.name, [private.producing_layer(t).name for t in inputs], len(outputs))
            for op, inputs, outputs in calls]


def test_graph_calls_lists_every_call_of_this_graph_producers_first():
    inputs = keras.Input((4,), name="x")
    shared = keras.layers.Dense(4, name="shared")
    a = shared(inputs)
    b = shared(a)  # the same layer called twice: two calls
    out = keras.layers.Add(name="add")([a, b])
    model = keras.Model(inputs, out)
    keras.layers.Dense(2, name="elsewhere")(out)  # a call outside the model's graph
    calls = private.graph_calls(model)
    assert _names(calls) == [("shared", ["x"], 1), ("shared", ["shared"], 1), ("add", ["shared", "shared"], 1)], \
        changed("graph_calls", "how a Functional model keeps its nodes (`_nodes_by_depth`)")
    assert calls[2][1] == [a, b] and calls[2][2] == [out]


def test_graph_calls_reads_a_sequential_model_as_a_chain():
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="d1"),
                              keras.layers.ReLU(name="r")])
    assert _names(private.graph_calls(model)) == [("d1", ["x"], 1), ("r", ["d1"], 1)], \
        changed("graph_calls", "where a Sequential model keeps its graph (`_functional`)")
    assert private.graph_calls(keras.Sequential([keras.layers.Dense(2)])) == []


def test_no_module_but_keras_private_reads_a_graph_node():
    uses = re.compile(r"\.(?:_nodes_by_depth|_inbound_nodes|_functional|_nodes)\b")
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py")) if path.name != "_keras_private.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if uses.search(line)
    ]
    assert not found, "use kerasurgery/_keras_private.py instead:\n" + "\n".join(found)


# -- layouts (issue 19) ---------------------------------------------------------------


def test_variable_layout_is_where_keras_keeps_a_variables_layout():
    variable = keras.Variable(np.zeros((2, 3), "float32"))
    assert "_layout" in vars(variable), changed("variable_layout", "where a Variable keeps its layout")
    assert private.variable_layout(variable) is None  # no distribution here
    # (tests/test_distribution.py checks real layouts on simulated devices.)


def test_add_weight_with_layout_tracks_the_variable_as_add_weight_does():
    layer = keras.layers.Dense(3, name="d")
    layer.build((None, 2))
    with private.unlocked_state(layer):
        made = private.add_weight_with_layout(
            layer, name="kernel_pin_mask", shape=(2, 3), dtype="bool", layout=None)
    assert made.path == "d/kernel_pin_mask" and not made.trainable
    assert made is layer.weights[-1] and made in layer.non_trainable_weights
    assert not np.any(ops.convert_to_numpy(made))


def test_attention_projections_are_the_einsum_dense_layers_of_multi_head_attention():
    # value_dim == key_dim: Keras 3.15's MultiHeadAttention fails on JAX
    # otherwise; a query of 6 features and a value of 5 tell the parts apart.
    layer = keras.layers.MultiHeadAttention(2, 3)
    layer(np.zeros((1, 4, 6), "float32"), np.zeros((1, 5, 5), "float32"))
    parts = private.attention_projections(layer)
    shapes = {name: tuple(part.kernel.shape) for name, part in parts.items()}
    names = {name: part.name for name, part in parts.items()}
    assert shapes == {"query": (6, 2, 3), "key": (5, 2, 3), "value": (5, 2, 3), "output": (2, 3, 6)}, (
        changed("attention_projections", "MultiHeadAttention's `_query_dense` ... `_output_dense`"))
    assert names == {"query": "query", "key": "key", "value": "value", "output": "attention_output"}, (
        changed("attention_projections", "MultiHeadAttention's `_query_dense` ... `_output_dense`"))


def test_encoder_parts_are_a_transformer_encoders_attention_and_feed_forward():
    import keras_hub

    layer = keras_hub.layers.TransformerEncoder(intermediate_dim=5, num_heads=2)
    layer(np.zeros((1, 3, 4), "float32"))
    parts = private.encoder_parts(layer)
    assert isinstance(parts["attention"], keras.layers.MultiHeadAttention), changed(
        "encoder_parts", "TransformerEncoder's `_self_attention_layer`")
    assert [tuple(parts[n].kernel.shape) for n in ("intermediate", "output")] == [(4, 5), (5, 4)], (
        changed("encoder_parts", "TransformerEncoder's `_feedforward_*_dense`"))


def test_call_arguments_keep_the_constants_an_operation_was_called_with():
    x = keras.Input((4,))
    model = keras.Model(x, keras.ops.relu6(x + 3.0) * 0.5)
    arguments = private.call_arguments(model)
    ops_called = [type(op).__name__ for op, _, _ in private.graph_calls(model)]
    assert ops_called == ["Add", "Relu6", "Multiply"], changed("call_arguments", "the graph's nodes")
    assert [(len(args), args[1:], kwargs) for args, kwargs in arguments] == [
        (2, (3.0,), {}), (1, (), {}), (2, (0.5,), {})], changed(
        "call_arguments", "`Node.arguments` (SymbolicArguments.args / .kwargs)")
    assert arguments[0][0][0] is x


def test_uncompile_leaves_no_training_config_nor_optimizer_in_either_format(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.ones((4, 2), "float32"), verbose=0)
    private.uncompile(model)
    assert not model.compiled and not hasattr(model, "optimizer")
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        with h5py.File(archive.open("model.weights.h5")) as weights:
            assert "optimizer" not in weights
    with h5py.File(tmp_path / "m.h5") as h5:
        assert "optimizer_weights" not in h5 and "training_config" not in h5.attrs
    for name in ("m.keras", "m.h5"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not keras.saving.load_model(tmp_path / name).compiled


def test_set_variable_layout_lays_the_value_out_again_and_is_read_back():
    # What `copy_model` relies on for a copy made outside a distribution scope
    # (the sharded case runs in tests/test_distribution.py on 8 devices).
    # PyTorch's backend has no distribution API; its assign never reads the layout.
    if keras.backend.backend() == "torch":
        layout = keras.distribution.TensorLayout([None, "model"])
    else:
        devices = keras.distribution.list_devices()[:1]
        mesh = keras.distribution.DeviceMesh(shape=(1,), axis_names=("model",), devices=devices)
        layout = keras.distribution.TensorLayout([None, "model"], mesh)
    variable = keras.Variable(np.arange(6, dtype="float32").reshape(2, 3))
    private.set_variable_layout(variable, layout)
    assert private.variable_layout(variable) is layout, changed(
        "set_variable_layout", "`Variable._layout`, read when a value is assigned")
    assert np.array_equal(ops.convert_to_numpy(variable), np.arange(6, dtype="float32").reshape(2, 3))
