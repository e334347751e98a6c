"""freeze / strip on every model shape the contract lists."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import layers as layers_lib
from kerasurgery.errors import KerasurgeryError, LayerSelectionError, PinError
from tests.helpers import train


def _np(x):
    return ops.convert_to_numpy(x)


def _sequential():
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(6, activation="relu", name="a"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dense(3, name="b"),
    ], name="seq")
    return model


def _branches():
    """Two inputs, two branches, a shared layer used twice, two outputs."""
    left = keras.Input((4,), name="left")
    right = keras.Input((4,), name="right")
    shared = keras.layers.Dense(5, activation="tanh", name="shared")
    merged = keras.layers.Concatenate(name="cat")([shared(left), shared(right)])
    out1 = keras.layers.Dense(2, name="head1")(merged)
    out2 = keras.layers.Dense(1, name="head2", use_bias=False)(merged)
    return keras.Model([left, right], [out1, out2], name="branches")


def _nested():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, activation="relu", name="inner_dense")],
        name="inner",
    )
    inputs = keras.Input((4,))
    h = inner(inputs)
    outputs = keras.layers.Dense(2, name="outer_dense")(h)
    return keras.Model(inputs, outputs, name="outer")


def _prune(model, fraction=0.5):
    """Sets the smallest-magnitude half of every Dense kernel to exactly 0."""
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Dense):
            weights = layer.get_weights()
            k = weights[0]
            k[np.abs(k) < np.quantile(np.abs(k), fraction)] = 0.0
            layer.set_weights(weights)
    return model


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _inputs(model, n=6):
    rng = np.random.default_rng(3)
    shapes = [tuple(t.shape[1:]) for t in model.inputs]
    xs = [rng.normal(size=(n, *s)).astype("float32") for s in shapes]
    return xs if len(xs) > 1 else xs[0]


def _assert_same_outputs(a, b, x):
    ya, yb = a(x, training=False), b(x, training=False)
    for u, v in zip(keras.tree.flatten(ya), keras.tree.flatten(yb)):
        assert np.array_equal(_np(u), _np(v))


MODELS = {"sequential": _sequential, "branches": _branches, "nested": _nested}


@pytest.mark.parametrize("build", MODELS.values(), ids=MODELS.keys())
def test_freeze_keeps_function_names_and_every_other_weight(build):
    model = _prune(build())
    if "bn" in [layer.name for layer in model.layers]:
        # Non-trainable statistics must be carried over, not re-initialised.
        model.get_layer("bn").set_weights([w + 0.5 for w in model.get_layer("bn").get_weights()])
    frozen = ks.freeze(model, {"*": ks.rules.zeros()})
    x = _inputs(model)
    _assert_same_outputs(model, frozen, x)
    assert frozen.name == model.name
    old, new = list(_all_layers(model)), list(_all_layers(frozen))
    assert [layer.name for layer in old] == [layer.name for layer in new]
    for o, n in zip(old, new):
        if type(o) is keras.layers.Dense:
            assert isinstance(n, ks.MaskedDense)
            kernel = o.get_weights()[0]
            assert np.array_equal(n.pins().kernel, kernel == 0)
            assert np.array_equal(_np(n.kernel).view("u4"), kernel.view("u4"))  # bit for bit
        elif not isinstance(o, keras.Model):
            # Normalizations are kinds since issue 20, but a glob over weight
            # layers leaves them as they are (`_plan._weight_layers_first`).
            assert type(n) is type(o)
            for a, b in zip(o.get_weights(), n.get_weights()):
                assert np.array_equal(a, b)
    # The result shares no variable with the original.
    assert not {id(v) for v in model.weights} & {id(v) for v in frozen.weights}


def test_shared_layer_stays_one_shared_layer():
    model = _prune(_branches())
    frozen = ks.freeze(model, {"shared": ks.rules.zeros()})
    shared = frozen.get_layer("shared")
    assert isinstance(shared, ks.MaskedDense)
    assert len(shared._inbound_nodes) == 2
    assert sum(1 for v in frozen.weights if v.path.startswith("shared/")) == 6


def test_trainable_flags_and_dtype_policies_are_kept():
    model = _nested()
    model.get_layer("inner").trainable = False
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        extra = keras.layers.Dense(2, name="half")
    finally:
        keras.config.set_dtype_policy("float32")
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, extra(model(inputs)), name="wrap")
    frozen = ks.freeze(outer, {"inner_dense": ks.rules.zeros(), "half": ks.rules.zeros()})
    assert frozen.get_layer("outer").get_layer("inner").trainable is False
    assert frozen.get_layer("outer").get_layer("inner").get_layer("inner_dense").trainable is False
    assert frozen.get_layer("outer").get_layer("outer_dense").trainable is True
    assert frozen.get_layer("half").dtype_policy.name == "mixed_bfloat16"
    assert [v.path for v in frozen.trainable_weights] == [v.path for v in outer.trainable_weights]


def test_non_trainable_dense_stays_non_trainable():
    model = _sequential()
    model.get_layer("a").trainable = False
    frozen = ks.freeze(model, {"a": ks.rules.zeros()})
    assert frozen.get_layer("a").trainable is False
    assert frozen.get_layer("b").trainable is True


def test_freezing_a_masked_layer_adds_to_its_pins(data):
    from tests.conftest import make_mlp

    model = make_mlp()
    first = ks.freeze(model, {"hidden": ks.Pin(kernel=np.eye(4, 3, dtype=bool), kernel_value=2.0)})
    train(first, keras.optimizers.Adam(0.1), *data, steps=3)
    second = ks.freeze(first, {"hidden": ks.rules.units([2], value=-1.0)})
    pin = second.get_layer("hidden").pins()
    expected = np.eye(4, 3, dtype=bool)
    expected[:, 2] = True
    assert np.array_equal(pin.kernel, expected)
    kernel = _np(second.get_layer("hidden").kernel)
    assert kernel[0, 0] == 2.0 and kernel[1, 1] == 2.0
    assert np.all(kernel[:, 2] == -1.0)
    assert pin.bias.tolist() == [False, False, True]
    assert _np(second.get_layer("hidden").bias)[2] == np.float32(-1.0)
    # Free entries keep their trained values.
    trained = _np(first.get_layer("hidden").kernel)
    assert np.array_equal(kernel[~expected], trained[~expected])


def test_keys_are_names_or_globs_and_later_keys_win():
    model = _sequential()
    mask = np.zeros((4, 6), bool)
    mask[0, 0] = True
    frozen = ks.freeze(model, {
        "[ab]": ks.rules.fraction(1.0, seed=0, value=1.0),
        "a": ks.Pin(kernel=mask, kernel_value=7.0),
    })
    assert np.all(_np(frozen.get_layer("b").kernel) == 1.0)
    kernel_a = _np(frozen.get_layer("a").kernel)
    assert np.array_equal(kernel_a, np.where(mask, np.float32(7.0), np.float32(1.0)))


def test_boolean_array_means_kernel_pin():
    model = _sequential()
    mask = np.zeros((6, 3), bool)
    mask[:, 0] = True
    frozen = ks.freeze(model, {"b": mask})
    assert np.array_equal(frozen.get_layer("b").pins().kernel, mask)
    assert np.array_equal(_np(frozen.get_layer("b").kernel).view("u4"), model.get_layer("b").get_weights()[0].view("u4"))


def test_compiled_model_stays_compiled():
    model = _sequential()
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=0.003), loss="mse", metrics=["mae"])
    frozen = ks.freeze(model, {"a": ks.rules.zeros()})
    assert frozen.compiled
    assert isinstance(frozen.optimizer, keras.optimizers.AdamW)
    assert float(_np(frozen.optimizer.learning_rate)) == np.float32(0.003)  # stored as float32
    assert frozen.optimizer is not model.optimizer


@pytest.mark.parametrize(
    "pins, error, match",
    [
        ({"nope": ks.rules.zeros()}, LayerSelectionError, r"No supported layer matches 'nope'\. Supported layers: a, b"),
        ({"bn": ks.Pin(bias=np.ones(6, bool))}, PinError, r"'bn' has no bias, but a bias pin was given"),
        ({"x*": ks.rules.zeros()}, LayerSelectionError, "No supported layer matches"),
        ({3: ks.rules.zeros()}, LayerSelectionError, "layer name or glob"),
        ({}, PinError, "non-empty mapping"),
        ({"a": np.zeros((3, 3), bool)}, PinError, r"'a': the kernel mask has the wrong shape\. Expected: \(4, 6\)\. Received: \(3, 3\)"),
        ({"a": np.full((4, 6), 2)}, PinError, "must be boolean"),
        ({"a": ks.Pin(kernel=np.ones((4, 6), bool), kernel_value=np.ones(5))}, PinError, "value has the wrong shape"),
        ({"a": ks.Pin(kernel=np.ones((4, 6), bool), kernel_value=np.inf)}, PinError, "must be finite"),
        ({"a": ks.Pin(kernel_value=1.0)}, PinError, "without a kernel mask"),
        ({"a": "zeros"}, PinError, "Expected a Pin"),
        ({"a": ks.rules.connections(np.ones((2, 2)))}, PinError, r"'a': The connections matrix does not fit"),
    ],
)
def test_bad_pins_raise_clear_errors(pins, error, match):
    with pytest.raises(error, match=match):
        ks.freeze(_sequential(), pins)


def test_bias_pin_on_layer_without_bias_is_an_error():
    with pytest.raises(PinError, match="head2.*targets the bias, but the layer has none"):
        ks.freeze(_branches(), {"head2": ks.rules.zeros(bias=True)})


class Block(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.proj = keras.layers.Dense(units, activation="relu")
        self.norm = keras.layers.LayerNormalization()

    def call(self, x):
        return self.norm(self.proj(x))

    def get_config(self):
        return {**super().get_config(), "units": self.proj.units}


class Detector(keras.Model):
    """Dense layers as attributes, in a list and inside a custom block."""

    def __init__(self, width=5, **kwargs):
        super().__init__(**kwargs)
        self.stem = keras.layers.Dense(width, activation="tanh")
        self.block = Block(width)
        self.heads = [keras.layers.Dense(2), keras.layers.Dense(3)]

    def call(self, x):
        h = self.block(self.stem(x))
        return [head(h) for head in self.heads]


def test_subclassed_model_is_frozen_in_memory(data, tmp_path):
    model = Detector()
    x = data[0]
    model(x)
    model.compile(optimizer="adam", loss=["mse", "mse"])
    names = {path: layer.name for path, layer in (
        ("stem", model.stem), ("proj", model.block.proj), ("head0", model.heads[0]))}
    _prune(model)
    model.block.norm.set_weights([w + 0.25 for w in model.block.norm.get_weights()])
    frozen = ks.freeze(model, {names["stem"]: ks.rules.zeros(),
                               names["proj"]: ks.rules.zeros(),
                               names["head0"]: ks.rules.units([1], value=0.5)})
    assert type(frozen) is Detector and frozen is not model
    assert isinstance(frozen.stem, ks.MaskedDense) and isinstance(frozen.block.proj, ks.MaskedDense)
    assert isinstance(frozen.heads[0], ks.MaskedDense) and type(frozen.heads[1]) is keras.layers.Dense
    assert frozen.stem.name == names["stem"]
    assert np.array_equal(frozen.stem.pins().kernel, model.stem.get_weights()[0] == 0)
    for a, b in zip(model.block.norm.get_weights(), frozen.block.norm.get_weights()):
        assert np.array_equal(a, b)
    assert [layer.name for layer in frozen.layers] == [layer.name for layer in model.layers]
    out_model, out_frozen = model(x), frozen(x)
    assert np.array_equal(_np(out_model[1]), _np(out_frozen[1]))
    assert np.array_equal(_np(out_model[0])[:, 0], _np(out_frozen[0])[:, 0])
    assert frozen.compiled and not {id(v) for v in model.weights} & {id(v) for v in frozen.weights}
    kernel_before = _np(frozen.stem.kernel)
    frozen.fit(x, [data[1], np.zeros((len(x), 3), "float32")], epochs=3, verbose=0)
    kernel_after = _np(frozen.stem.kernel)
    pinned = frozen.stem.pins().kernel
    assert np.array_equal(kernel_after[pinned], kernel_before[pinned])
    assert np.all(kernel_after[~pinned] != kernel_before[~pinned])
    assert np.all(_np(frozen.heads[0].kernel)[:, 1] == 0.5)
    stripped = ks.strip(frozen)
    assert type(stripped.stem) is keras.layers.Dense
    assert np.array_equal(_np(stripped(x)[0]), _np(frozen(x)[0]))
    # The documented way to keep the result: weights into a fresh instance.
    assert frozen.built is True and stripped.built is True
    stripped.save_weights(tmp_path / "detector.weights.h5")
    fresh = Detector()
    fresh(x)
    fresh.load_weights(tmp_path / "detector.weights.h5")
    assert np.array_equal(_np(fresh(x)[0]), _np(frozen(x)[0]))


def test_subclassed_model_without_a_usable_config_is_refused_clearly():
    class Opaque(keras.Model):
        def __init__(self, layer_list):
            super().__init__()
            self.body = layer_list

        def call(self, x):
            for layer in self.body:
                x = layer(x)
            return x

    model = Opaque([keras.layers.Dense(2)])
    model(np.ones((1, 3), "float32"))
    with pytest.raises(KerasurgeryError, match="cannot be re-created from get_config"):
        ks.freeze(model, {"*": ks.rules.zeros()})


def test_non_models_are_refused_clearly():
    with pytest.raises(KerasurgeryError, match="Expected a Keras model"):
        ks.strip(keras.layers.Dense(2))


@pytest.mark.parametrize("build", MODELS.values(), ids=MODELS.keys())
def test_strip_gives_plain_dense_with_effective_weights(build, data):
    model = _prune(build())
    frozen = ks.freeze(model, {"*": ks.rules.zeros()})
    stripped = ks.strip(frozen)
    x = _inputs(model)
    _assert_same_outputs(frozen, stripped, x)
    layers = list(_all_layers(stripped))
    assert not any(isinstance(layer, ks.MaskedDense) for layer in layers)
    assert [layer.name for layer in layers] == [layer.name for layer in _all_layers(model)]
    for layer in layers:
        if isinstance(layer, keras.layers.Dense):
            assert "pinned_kernel_values" not in layer.get_config()


def test_strip_after_training_keeps_effective_not_raw_weights(mlp, data):
    frozen = ks.freeze(mlp, {"*": ks.rules.zeros(value=0.5)})
    train(frozen, keras.optimizers.AdamW(0.1, weight_decay=3.0), *data, steps=4)
    layer = frozen.get_layer("hidden")
    pinned = layer.pins().kernel
    assert np.all(_np(layer._kernel)[pinned] != _np(layer.kernel)[pinned]), "raw entries differ under every pin"
    stripped = ks.strip(frozen)
    assert np.array_equal(stripped.get_layer("hidden").get_weights()[0], _np(layer.kernel))
    _assert_same_outputs(frozen, stripped, data[0])


def test_quantized_dense_is_refused():
    model = _sequential()
    model.get_layer("a").quantize("int8")
    with pytest.raises(PinError, match=r"'a' is quantized \(int8\)"):
        ks.freeze(model, {"a": ks.rules.zeros()})


def test_lora_dense_is_frozen_with_its_merged_kernel(data):
    model = _sequential()
    model.get_layer("a").enable_lora(2)
    lora_b = model.get_layer("a").lora_kernel_b
    lora_b.assign(np.full(lora_b.shape, 0.1, "float32"))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    frozen = ks.freeze(model, {"a": ks.rules.zeros()})
    assert np.array_equal(_np(frozen.get_layer("a").kernel), _np(model.get_layer("a").kernel))
    assert np.array_equal(_np(frozen(x)), _np(model(x)))


def test_model_with_a_lambda_layer_can_be_frozen_and_stripped():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, name="d")(inputs)
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(h)
    model = _prune(keras.Model(inputs, outputs))
    x = np.ones((2, 4), "float32")
    frozen = ks.freeze(model, {"d": ks.rules.zeros()})
    stripped = ks.strip(frozen)
    assert isinstance(frozen.get_layer("d"), ks.MaskedDense)
    assert np.array_equal(_np(frozen(x)), _np(model(x)))
    assert np.array_equal(_np(stripped(x)), _np(model(x)))


def test_layer_shared_between_a_nested_model_and_its_parent_stays_one_layer(data):
    shared = keras.layers.Dense(4, activation="tanh", name="shared")
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, shared(inner_in), name="inner")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="head")(shared(inner(inputs)))
    model = _prune(keras.Model(inputs, outputs, name="outer"))
    for frozen in (ks.freeze(model, {"shared": ks.rules.zeros()}), ks.strip(model)):
        layers = [layer for layer in _all_layers(frozen) if layer.name == "shared"]
        assert len(layers) == 2 and layers[0] is layers[1]
        assert len(frozen.weights) == len(model.weights) + (4 if frozen.get_layer("shared").__class__ is ks.MaskedDense else 0)
        _assert_same_outputs(model, frozen, data[0])


def test_negative_zeros_keep_their_sign_bit():
    model = _sequential()
    weights = model.get_layer("a").get_weights()
    weights[0][0, :3] = np.float32(-0.0)
    weights[0][1, :3] = np.float32(0.0)
    model.get_layer("a").set_weights(weights)
    layer = ks.freeze(model, {"a": ks.rules.zeros()}).get_layer("a")
    assert layer.pinned_kernel_values == "per_entry"
    kernel = _np(layer.kernel)
    assert np.all(np.signbit(kernel[0, :3])) and not np.any(np.signbit(kernel[1, :3]))
    shared = ks.freeze(model, {"a": ks.rules.zeros(value=0.0)}).get_layer("a")
    assert shared.pinned_kernel_values == "shared"
    assert not np.any(np.signbit(_np(shared.kernel)[:2, :3]))


class Heads(keras.Model):
    """Dense layers in a dict whose keys look like paths."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.heads = {"a.b": keras.layers.Dense(2, name="ab"), "c[0]": keras.layers.Dense(2, name="c0")}

    def call(self, x):
        return self.heads["a.b"](x) + self.heads["c[0]"](x)


def test_subclassed_layers_in_dicts_with_odd_keys(data):
    model = Heads()
    model(data[0])
    _prune(model)
    frozen = ks.freeze(model, {"ab": ks.rules.zeros()})
    assert isinstance(frozen.heads["a.b"], ks.MaskedDense)
    assert type(frozen.heads["c[0]"]) is keras.layers.Dense
    assert np.array_equal(_np(frozen(data[0])), _np(model(data[0])))


def test_equal_names_in_nested_models_are_told_apart_by_path():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="dense")], name="inner")
    inputs = keras.Input((4,))
    model = _prune(keras.Model(inputs, keras.layers.Dense(2, name="dense")(inner(inputs)), name="outer"))
    from kerasurgery.model.surgery import dense_layer_names

    assert dense_layer_names(model) == ["inner/dense", "dense"]
    every = ks.freeze(model, {"*": ks.rules.zeros()})
    assert isinstance(every.get_layer("inner").get_layer("dense"), ks.MaskedDense)
    assert isinstance(every.get_layer("dense"), ks.MaskedDense)
    # A path names one layer: "dense" is the outer one, as `inspect` lists it.
    top = ks.freeze(model, {"dense": ks.rules.zeros()})
    assert type(top.get_layer("inner").get_layer("dense")) is keras.layers.Dense
    assert isinstance(top.get_layer("dense"), ks.MaskedDense)
    # A glob matches paths and names alike.
    both = ks.freeze(model, {"den*": ks.rules.zeros()})
    assert isinstance(both.get_layer("inner").get_layer("dense"), ks.MaskedDense)
    assert isinstance(both.get_layer("dense"), ks.MaskedDense)
    by_path = ks.freeze(model, {"inner/dense": ks.rules.zeros()})
    assert isinstance(by_path.get_layer("inner").get_layer("dense"), ks.MaskedDense)
    assert type(by_path.get_layer("dense")) is keras.layers.Dense
    with pytest.raises(LayerSelectionError, match=r"Supported layers: inner/dense, dense"):
        ks.freeze(model, {"nope": ks.rules.zeros()})


def test_a_stripped_model_quantizes_as_the_plain_model_does(data):
    # The error that refuses to quantize a pinned layer points at `strip`; the
    # stripped layers (made pinned by the copy, or pinned in place) quantize.
    plain = _prune(_sequential())
    stripped = ks.strip(ks.freeze(plain, {"*": ks.rules.zeros()}))
    in_place = keras.layers.Dense.from_config(plain.get_layer("a").get_config())
    in_place.build((None, 4))
    in_place.set_weights(plain.get_layer("a").get_weights())
    ks.layers.pin_in_place(in_place, ks.MaskedDense, {}, in_config=True)
    ks.layers.unpin_in_place(in_place)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "Layer InputLayer does not have a `quantize` method"
        plain.quantize("int8")
        stripped.quantize("int8")
    in_place.quantize("int8")
    for name in ("a", "b"):
        assert stripped.get_layer(name).quantization_mode == "int8"
        for got, want in zip(stripped.get_layer(name).get_weights(), plain.get_layer(name).get_weights()):
            assert np.array_equal(got, want)
    assert in_place.quantization_mode == "int8"
    assert np.array_equal(_np(stripped(data[0])), _np(plain(data[0])))
    assert np.array_equal(_np(in_place(data[0])), _np(plain.get_layer("a")(data[0])))


class _Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2, name="block_dense")

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        return self.dense(x)


def test_walk_paths_name_the_holders_and_variable_prefixes_follow_keras():
    from kerasurgery.model.walk import variable_prefix, walk_layers

    inputs = keras.Input((4,))
    functional = keras.Model(inputs, keras.layers.Dense(3, name="f_dense")(inputs), name="functional")
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="s_dense")], name="seq")
    x = keras.Input((4,), name="x")
    model = keras.Model(x, _Block(name="block")(sequential(functional(x))), name="outer")
    walked = [(path, variable_prefix(layer)) for path, layer in walk_layers(model)]
    assert walked == [
        ("x", None),
        ("functional", "f_dense"), (f"functional/{functional.layers[0].name}", None),
        ("functional/f_dense", "f_dense"),  # built when `functional` was made, outside its scope
        ("seq", "seq/s_dense"), ("seq/s_dense", "seq/s_dense"),
        ("block", "block/block_dense"), ("block/block_dense", "block/block_dense"),
    ]
    # Every key form selects the layer: its path, its variable prefix, its name.
    for key in ("functional/f_dense", "f_dense", "seq/s_dense", "block/block_dense"):
        frozen = ks.freeze(model, {key: ks.rules.zeros()})
        pinned = [path for path, layer in walk_layers(frozen) if ks.layers.is_pinned(layer)]
        assert pinned == [next(p for p, _ in walked if p.endswith(key.rpartition("/")[2]))]


def test_a_glob_over_weight_layers_leaves_normalizations_out_unless_it_pins_nothing():
    # Normalizations are pinnable kinds (for prune_units); `{"*": rule}`
    # still means the weight layers, as before they were.
    x = keras.Input((4, 4, 3))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 1, name="c")(x))
    model = keras.Model(x, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(h)))

    def classes(frozen):
        return {name: type(frozen.get_layer(name)).__name__ for name in ("c", "bn", "d")}

    assert classes(ks.freeze(model, {"*": ks.rules.zeros()})) == {
        "c": "MaskedConv2D", "bn": "BatchNormalization", "d": "MaskedDense"}
    assert classes(ks.freeze(model, {"bn*": ks.rules.zeros()})) == {
        "c": "Conv2D", "bn": "MaskedBatchNormalization", "d": "Dense"}
    assert classes(ks.freeze(model, {"*": ks.Pin()})) == {
        "c": "MaskedConv2D", "bn": "MaskedBatchNormalization", "d": "MaskedDense"}
    gamma = ks.freeze(model, {"bn": ks.rules.smallest(0.5)}).get_layer("bn").pin_state()["gamma"]
    assert gamma.mask.tolist() == [True, True, False, False]  # all ones: ties to the lower index


# -- large weights read a slice at a time ---------------------------------------


def _tied_model():
    """Embedding, Conv1D and Dense, with ties and signed zeros planted in the embedding."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(20, 8, name="embed")(inputs)
    h = keras.layers.Conv1D(4, 3, name="conv")(h)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs, name="tied")
    table = model.get_layer("embed").get_weights()[0]
    table[:3] = 0.25
    table[0, :4] = -0.25
    table[5], table[6] = 0.0, -0.0
    model.get_layer("embed").set_weights([table])
    return model


RULES_READ_IN_SLICES = {
    "smallest": lambda: ks.rules.smallest(0.5),
    "across": lambda: ks.rules.smallest(0.4, across_layers=True),
    "zeros": lambda: ks.rules.zeros(),  # needs the whole weight: copied whole
    "value": lambda: ks.rules.zeros(value=0.5),
}


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("rule", sorted(RULES_READ_IN_SLICES))
def test_weights_read_in_slices_are_pinned_as_whole_copies_are(rule, in_place, monkeypatch):
    # Weights above `_SLICE` entries are left where they live and read a
    # slice of rows at a time (`_plan.SlicedWeight`); with a tiny `_SLICE`
    # every weight here is, and the pins, raw weights and outputs are those
    # of whole host copies, bit for bit. A magnitude rule never copies a
    # weight whole; a rule that needs the whole array gets it.
    from kerasurgery import pruning
    from kerasurgery.model import surgery
    from tests.helpers import bits

    expected = ks.freeze(_tied_model(), {"*": RULES_READ_IN_SLICES[rule]()})
    whole = []
    host = surgery._host
    monkeypatch.setattr(surgery, "_SLICE", 4)
    monkeypatch.setattr(pruning, "_PIECE", 5)
    monkeypatch.setattr(surgery, "_host", lambda x: whole.append(tuple(x.shape)) or host(x))
    model = _tied_model()
    frozen = ks.freeze(model, {"*": RULES_READ_IN_SLICES[rule]()}, in_place=in_place)

    assert (frozen is model) == in_place
    for name in ("embed", "conv", "head"):
        got, want = frozen.get_layer(name).pin_state(), expected.get_layer(name).pin_state()
        assert got.keys() == want.keys()
        for weight in want:
            assert np.array_equal(got[weight].mask, want[weight].mask), (name, weight)
            assert np.array_equal(bits(got[weight].effective), bits(want[weight].effective))
            assert np.array_equal(bits(got[weight].value), bits(want[weight].value))
    for got, want in zip(frozen.weights, expected.weights):
        assert got.path == want.path and np.array_equal(bits(got), bits(want)), got.path
    assert expected.get_layer("embed").pin_state()["embeddings"].mask.any()
    tokens = np.arange(12, dtype="int32").reshape(2, 6)
    assert np.array_equal(bits(frozen(tokens)), bits(expected(tokens)))
    copied_whole = [s for s in whole if int(np.prod(s)) > 4]
    if rule in ("smallest", "across"):
        assert copied_whole == []
    else:
        assert (20, 8) in copied_whole


# -- in place: planned once, and an error leaves the model as it was ------------------


def _as_it_is(model):
    """Everything an in-place freeze could change: classes, flags, variables and their bits."""
    from kerasurgery.model.walk import walk_layers
    from tests.helpers import bits

    layers = [(path, type(layer).__name__, layer.trainable) for path, layer in walk_layers(model)]
    variables = [(v.path, id(v), v.trainable, bits(v).tobytes()) for v in model.variables]
    return layers, variables, [id(v) for v in model.trainable_variables]


def _raises(weight, bias):
    raise RuntimeError("the rule failed")


@pytest.mark.parametrize("pins, error, match", [
    # A key that names a layer whose pins do not fit, after a key that fits.
    ({"a": ks.rules.smallest(0.5), "b": np.zeros((2, 2), bool)}, PinError, "wrong shape"),
    # A rule that raises on the second layer.
    ({"a": ks.rules.smallest(0.5), "b": _raises}, RuntimeError, "the rule failed"),
    # A glob whose pins fit none of its layers (6 inputs are no groups of 4).
    ({"*": ks.rules.smallest(0.5), "[b]": ks.rules.n_of_m(2, 4)}, PinError, "multiple of m=4"),
])
def test_in_place_freeze_that_fails_leaves_the_model_as_it_was(pins, error, match, data):
    model = _sequential()
    model(data[0][:, :4])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    expected, before = _np(model(x)), _as_it_is(model)

    with pytest.raises(error, match=match):
        ks.freeze(model, pins, in_place=True)

    assert _as_it_is(model) == before
    assert not any(layers_lib.is_pinned(layer) for layer in model.layers)
    assert np.array_equal(_np(model(x)), expected)


def test_in_place_freeze_plans_each_layer_once_unless_its_pinned_values_are_weight_sized(data):
    # Pruning keeps a layer's plan small (masks, one value): the first pass's
    # plan is pinned as it is. Values of the weight's shape are planned again.
    calls = []

    def prune(weight, bias):
        calls.append(weight.shape)
        return ks.Pin(kernel=np.abs(weight) < 0.3, kernel_value=0.0)

    def keep(weight, bias):
        calls.append(weight.shape)
        return ks.Pin(kernel=np.abs(weight) < 0.3)  # per-entry values

    for rule, planned in ((prune, 1), (keep, 2)):
        model, reference = _sequential(), _sequential()
        model(data[0][:, :4])
        reference(data[0][:, :4])
        reference.set_weights(model.get_weights())
        calls.clear()
        ks.freeze(model, {"*": rule}, in_place=True)
        assert calls == [(4, 6), (6, 3)] * planned
        copy = ks.freeze(reference, {"*": rule})
        for name in ("a", "b"):
            got, want = model.get_layer(name).pin_state(), copy.get_layer(name).pin_state()
            for weight in want:
                assert np.array_equal(got[weight].mask, want[weight].mask)
                assert np.array_equal(got[weight].effective, want[weight].effective)
                assert np.array_equal(got[weight].value, want[weight].value)
        assert model.get_layer("a").pin_storage["kernel"] == (ks.pins.SHARED if rule is prune else ks.pins.PER_ENTRY)


def test_in_place_freeze_leaves_a_variable_that_shares_the_weights_array_intact(data):
    # On JAX, assigning one variable from another shares one array object
    # (Keras' EMA copies its averages over the model's weights so); pinning
    # in place writes the raw weight over its own buffer only when nothing
    # else holds it.
    from tests.helpers import bits

    model = _sequential()
    model(data[0][:, :4])
    other = keras.Variable(np.zeros((4, 6), "float32"), trainable=False)
    other.assign(model.get_layer("a").kernel)
    before = _np(other).copy()

    ks.freeze(model, {"a": ks.rules.smallest(0.5)}, in_place=True)

    assert np.array_equal(bits(other), bits(before))
    kernel = model.get_layer("a").pin_state()["kernel"]
    assert kernel.mask.sum() == 12 and np.all(kernel.effective[kernel.mask] == 0.0)
    assert np.array_equal(_np(model.get_layer("a").raw_variable("kernel")), np.where(kernel.mask, 0.0, before))
