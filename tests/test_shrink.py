"""`ks.prune_units` and `ks.shrink`: the smaller model computes what the pruned one computes."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import kerasurgery as ks
from kerasurgery import layers as layers_lib
from kerasurgery.errors import NothingPinnedWarning, PinError
from kerasurgery.model.groups import dependency_groups
from kerasurgery.model.walk import walk_layers
from tests.helpers import assert_pins_held_and_free_moved

L = keras.layers
RTOL = 1e-5  # float32 reassociation: fewer terms, summed in another order


def _randomize(model: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for w in model.weights:
        values = rng.normal(size=w.shape) * 0.5
        if "variance" in w.name:
            values = np.abs(values) + 0.5
        w.assign(values.astype("float32"))


def _dense_chain():
    return keras.Sequential([
        keras.Input((6,)), L.Dense(8, activation="relu", name="d1"),
        L.Dropout(0.5), L.Dense(6, activation="tanh", name="d2"), L.Dense(3, name="out"),
    ])


def _conv_bn():
    x = keras.Input((8, 8, 3))
    y = L.Conv2D(6, 3, padding="same", name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.ReLU()(y)
    y = L.MaxPooling2D()(y)
    y = L.Conv2D(4, 3, name="conv2", activation="relu")(y)
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(y)))


def _residual():
    x = keras.Input((8, 8, 3))
    a = L.Activation("relu")(L.BatchNormalization(name="bn0")(L.Conv2D(6, 3, padding="same", name="c0")(x)))
    b = L.BatchNormalization(name="bn1")(L.Conv2D(6, 1, name="c1")(a))
    c = L.ZeroPadding2D()(L.Conv2D(6, 3, name="c2", padding="same")(a))
    s = L.Add()([a, b, L.Cropping2D(1)(c)])
    s = L.Maximum()([s, L.Subtract()([s, b])])
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(L.ReLU()(s))))


def _concatenate():
    x = keras.Input((5,))
    a = L.Dense(4, activation="relu", name="a")(x)
    b = L.Dense(6, activation="gelu", name="b")(x)
    return keras.Model(x, L.Dense(2, name="out")(L.Concatenate()([a, b, x])))


def _flatten():
    x = keras.Input((6, 6, 2))
    y = L.Conv2D(5, 3, name="conv", activation="relu")(x)
    y = L.Flatten()(L.AveragePooling2D(2)(y))
    return keras.Model(x, L.Dense(3, name="out")(L.Dense(7, name="hidden", activation="silu")(y)))


def _depthwise():
    x = keras.Input((8, 8, 3))
    y = L.Conv2D(6, 1, name="expand", activation="relu6")(x)
    y = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(y)
    y = L.SeparableConv2D(5, 3, name="sep", activation="relu")(y)
    y = L.DepthwiseConv2D(3, name="dw_bn")(y)
    y = L.BatchNormalization(name="bn")(y)
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(y)))


def _nested():
    # Pruned groups feed both nested models' inputs: each is rebuilt on fewer channels.
    i = keras.Input((6,), name="inner_in")
    inner = keras.Model(i, L.Dense(4, name="i2")(L.Dense(4, activation="relu", name="i1")(i)),
                        name="inner")
    seq = keras.Sequential([keras.Input((4,), name="seq_in"),
                            L.Dense(6, activation="relu", name="d")], name="seq")
    x = keras.Input((5,))
    h = L.Dense(6, activation="relu", name="d0")(x)
    return keras.Model(x, L.Dense(2, name="out")(seq(inner(h))))


def _softmax_head():
    x = keras.Input((8,))
    return keras.Model(x, L.Dense(4, activation="softmax", name="head")(
        L.Dense(16, activation="relu", name="hidden")(x)))


def _squeeze_excite():
    x = keras.Input((8, 8, 3))
    y = L.BatchNormalization(name="bn")(L.Conv2D(8, 3, padding="same", name="conv")(x))
    y = L.Activation("swish")(y)
    se = L.Reshape((1, 1, 8), name="se_reshape")(L.GlobalAveragePooling2D(name="se_pool")(y))
    se = L.Conv2D(2, 1, activation="swish", name="se_reduce")(se)
    se = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    y = L.Multiply(name="excite")([y, se])  # (8, 8, 8) times (1, 1, 8)
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(y)))


def _transposed():
    x = keras.Input((5, 5, 3))
    y = L.Conv2DTranspose(6, 3, strides=2, name="up", activation="relu")(x)
    y = L.Conv2DTranspose(4, 2, padding="same", name="up2")(y)
    y = L.Conv1DTranspose(5, 3, name="up1d", activation="tanh")(L.Reshape((121, 4))(y))
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalMaxPooling1D()(y)))


def _grouped():
    # Unit j of a grouped convolution is filter j of each group; its input
    # channels couple row by row across the groups.
    x = keras.Input((6, 6, 4))
    y = L.Conv2D(8, 1, name="stem", activation="relu")(x)
    y = L.Conv2D(12, 3, groups=4, padding="same", name="g1", activation="relu")(y)
    y = L.Conv1D(6, 3, groups=2, name="g2")(L.Reshape((36, 12))(y))
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(y)))


def _einsum():
    x = keras.Input((4, 6))
    y = L.EinsumDense("abc,cd->abd", (4, 8), bias_axes="d", activation="relu", name="e1")(x)
    y = L.EinsumDense("...b,bc->...c", 5, bias_axes="c", activation="gelu", name="e2")(y)
    y = L.EinsumDense("abc,cde->abde", (4, 2, 3), name="heads")(y)  # reads cleanly, writes (2, 3)
    y = L.Dense(6, name="d")(L.Reshape((4, 6))(y))
    y = L.EinsumDense("abc,cd->ad", (3,), name="e3")(y)  # reads `c` at every `b`
    return keras.Model(x, L.Dense(2, name="out")(y))


def _attention():
    x = keras.Input((5, 6))
    h = L.Dense(8, activation="relu", name="embed")(x)
    # (value_dim != key_dim: Keras 3.15's MultiHeadAttention fails on JAX)
    a = L.MultiHeadAttention(4, 3, name="mha")(h, h)
    h = L.Add()([h, a])  # the attention output's channels join the residual group
    m = L.MultiHeadAttention(3, 2, name="cross")(h, x)  # reads `x` as key and value
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling1D()(L.Concatenate()([h, m]))))


def _tensor_ops():
    # MobileNetV3's hard-swish written with operators and keras.ops: operation
    # nodes in the graph, not layers.
    x = keras.Input((6, 6, 3))
    y = L.Conv2D(8, 3, name="conv")(x)
    y = y * keras.ops.relu6(y + 3.0) * (1.0 / 6.0)
    y = L.Conv2D(6, 1, name="proj")(keras.ops.maximum(y, -1.0))
    s = L.Conv2D(6, 1, name="scale")(L.GlobalAveragePooling2D(keepdims=True)(y))
    y = y * keras.ops.sigmoid(s) - y  # a tensor (1, 1, 6) broadcast over the others
    return keras.Model(x, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(y)))


MODELS = {
    "dense_chain": _dense_chain, "conv_bn": _conv_bn, "residual": _residual,
    "concatenate": _concatenate, "flatten": _flatten, "depthwise": _depthwise, "nested": _nested,
    "squeeze_excite": _squeeze_excite, "transposed": _transposed, "grouped": _grouped,
    "einsum": _einsum, "attention": _attention,
    "tensor_ops": _tensor_ops,
}


def _inputs(model: keras.Model, n: int = 4) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, *model.input_shape[1:])).astype("float32")


def _close(a: np.ndarray, b: np.ndarray) -> None:
    scale = max(float(np.abs(a).max()), 1e-30)
    assert float(np.abs(a - b).max()) <= RTOL * scale, float(np.abs(a - b).max()) / scale


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shrink_after_prune_units_computes_the_same_with_fewer_parameters(name):
    model = MODELS[name]()
    _randomize(model)
    pruned = ks.prune_units(model, 0.5)
    small = ks.shrink(pruned)
    x = _inputs(model)
    _close(pruned.predict(x, verbose=0), small.predict(x, verbose=0))
    assert small.count_params() < model.count_params()
    assert not any(layers_lib.is_pinned(layer) for _, layer in walk_layers(small))
    # Every pruned unit was removable, and is gone: what is left is not zero.
    for group in dependency_groups(small):
        assert len(group.removable_units()) in (0, group.units), group


def test_prune_units_pins_exactly_round_fraction_units_of_each_group():
    model = _residual()
    _randomize(model)
    pruned = ks.prune_units(model, 0.5)  # 6 units a group: 3
    layers = dict(walk_layers(pruned))
    for path in ("c0", "c1", "c2"):  # one residual group: the same 3 channels in each
        pins = layers[path].pins()
        columns = np.flatnonzero(pins.kernel.all(axis=(0, 1, 2)))
        assert pins.kernel.sum() == 3 * np.prod(pins.kernel.shape[:-1])
        assert np.array_equal(columns, np.flatnonzero(pins.bias))
        assert np.all(pins.kernel_value[..., columns] == 0.0)
        assert np.all(pins.bias_value[columns] == 0.0)
    chosen = np.flatnonzero(layers["c0"].pins().bias)
    assert np.array_equal(chosen, np.flatnonzero(layers["c1"].pins().bias))
    for bn in ("bn0", "bn1"):  # pinned on exactly the chosen channels (issue 20)
        for weight, state in layers[bn].pin_state().items():
            assert np.array_equal(np.flatnonzero(state.mask), chosen), (bn, weight)
            assert np.all(state.effective[chosen] == 0.0)
    # The output layer's units are a model output: not pruned.
    assert not layers_lib.is_pinned(layers["out"])
    assert [len(g.removable_units()) for g in dependency_groups(pruned)] == [3, 0]


def test_pruned_channels_stay_exactly_zero_through_batch_norm_while_fine_tuning():
    """Kernel columns, bias, gamma and beta pinned: AdamW cannot revive the channel (issue 20)."""
    model = _conv_bn()
    _randomize(model)
    pruned = ks.prune_units(model, 0.5)
    layers = dict(walk_layers(pruned))
    before = {p: layers[p].pin_state() for p in ("conv", "bn")}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")
    pruned.compile(keras.optimizers.AdamW(0.05, weight_decay=0.1), "mse")
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0)
    channels = np.flatnonzero(before["bn"]["gamma"].mask)
    assert len(channels) == 3
    assert_pins_held_and_free_moved(before, layers)
    probe = keras.Model(pruned.input, pruned.get_layer("bn").output)
    for training in (True, False):
        out = keras.ops.convert_to_numpy(probe(x, training=training))
        assert np.all(out[..., channels] == 0.0) and np.all(np.any(out != 0.0, axis=(0, 1, 2))[
            np.setdiff1d(np.arange(6), channels)])
    assert [len(g.removable_units()) for g in dependency_groups(pruned)][0] == 3


def test_prune_units_ranks_units_by_the_norm_of_the_whole_group():
    model = keras.Sequential([keras.Input((2,)), L.Dense(3, name="d1"), L.Dense(1, name="out")])
    model.layers[0].kernel.assign(np.array([[1.0, 0.1, 0.5], [0.0, 0.0, 0.0]]))
    model.layers[0].bias.assign(np.zeros(3))
    # Unit 0 has the largest column but the smallest row in the next layer.
    model.layers[1].kernel.assign(np.array([[0.01], [1.0], [1.0]]))
    pins = dict(walk_layers(ks.prune_units(model, 1 / 3)))["d1"].pins()
    assert np.array_equal(pins.bias, [True, False, False])


def test_prune_units_with_layers_prunes_only_the_matching_groups():
    model = _dense_chain()
    _randomize(model)
    layers = dict(walk_layers(ks.prune_units(model, 0.5, layers="d2")))
    assert not layers_lib.is_pinned(layers["d1"])
    assert layers["d2"].pins().bias.sum() == 3


def test_prune_units_refuses_a_bad_fraction_or_norm_and_warns_when_nothing_is_pruned():
    model = _dense_chain()
    with pytest.raises(PinError, match="between 0 and 1"):
        ks.prune_units(model, 1.5)
    with pytest.raises(PinError, match="norm 1 or 2"):
        ks.prune_units(model, 0.5, norm=3)
    with pytest.warns(NothingPinnedWarning):
        assert ks.prune_units(model, 0.01) is model


@pytest.mark.parametrize("name, units", [
    # A softmax head reads its input rows like any Dense: only its own units stay.
    ("softmax_head", {"hidden": 8, "head": 4}),
    # A nested model's InputLayer follows the units fed to it (Functional and Sequential).
    ("nested", {"d0": 3, "inner/i1": 2, "inner/i2": 2, "seq/d": 3, "out": 2}),
])
def test_shrink_cuts_before_a_softmax_head_and_into_nested_inputs_and_reloads(
        tmp_path, name, units):
    model = {"softmax_head": _softmax_head, "nested": _nested}[name]()
    _randomize(model)
    pruned = ks.prune_units(model, 0.5)
    # Half of each prunable group is pinned, and the other half is what `shrink` leaves.
    pinned = {path: int(layer.pins().bias.sum()) for path, layer in walk_layers(pruned)
              if layers_lib.is_pinned(layer)}
    assert pinned == {path: n for path, n in units.items() if path not in ("head", "out")}
    small = ks.shrink(pruned)
    assert {path: layer.units for path, layer in walk_layers(small)
            if isinstance(layer, L.Dense)} == units
    x = _inputs(model)
    got = small.predict(x, verbose=0)
    _close(pruned.predict(x, verbose=0), got)
    if name == "nested":
        nested = dict(walk_layers(small))
        assert nested["inner"].input_shape == (None, 3) and nested["seq"].input_shape == (None, 2)
    small.save(tmp_path / "small.keras")
    reloaded = keras.saving.load_model(tmp_path / "small.keras")
    assert np.array_equal(reloaded.predict(x, verbose=0), got)


@keras.saving.register_keras_serializable("test_shrink")
class _Block(keras.Model):
    """A Functional model rebuilt from its own argument: no config lists its InputLayer."""

    def __init__(self, width, **kwargs):
        x = keras.Input((width,), name="block_in")
        super().__init__(x, L.Dense(3, name="b1")(x), **kwargs)
        self.width = width

    def get_config(self):
        return {"width": self.width, "name": self.name}


def test_shrink_keeps_the_units_feeding_a_nested_model_no_config_can_make_smaller():
    x = keras.Input((5,))
    d0 = L.Dense(6, activation="relu", name="d0")(x)
    model = keras.Model(x, L.Dense(2, name="out")(L.Dense(4, name="d1")(_Block(6, name="block")(d0))))
    _randomize(model)
    pruned = ks.prune_units(model, 0.5)
    small = ks.shrink(pruned)
    assert [layer.units for layer in small.layers if isinstance(layer, L.Dense)] == [6, 2, 2]
    x = _inputs(model)
    _close(pruned.predict(x, verbose=0), small.predict(x, verbose=0))


def test_shrink_keeps_one_unit_of_a_group_that_is_all_zero():
    model = _dense_chain()
    _randomize(model)
    small = ks.shrink(ks.prune_units(model, 1.0))
    assert [layer.units for layer in small.layers if isinstance(layer, L.Dense)] == [1, 1, 3]
    x = _inputs(model)
    _close(ks.prune_units(model, 1.0).predict(x, verbose=0), small.predict(x, verbose=0))


def test_shrink_removes_units_that_are_zero_by_value_in_a_plain_model():
    model = _dense_chain()
    _randomize(model)
    d1 = model.get_layer("d1")
    kernel = keras.ops.convert_to_numpy(d1.kernel)
    kernel[:, [1, 4]] = 0.0
    d1.kernel.assign(kernel)
    bias = keras.ops.convert_to_numpy(d1.bias)
    bias[[1, 4]] = 0.0
    d1.bias.assign(bias)
    small = ks.shrink(model)
    assert small.get_layer("d1").units == 6 and small.get_layer("d2").kernel.shape == (6, 6)
    x = _inputs(model)
    _close(model.predict(x, verbose=0), small.predict(x, verbose=0))


APPLICATIONS = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35, classifier_activation=None),
    "ResNet50": lambda: keras.applications.ResNet50(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None),
    # Dense blocks: each layer's BatchNormalization reads the concatenation of
    # every earlier layer's channels.
    "DenseNet121": lambda: keras.applications.DenseNet121(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None),
    # Hard-swish as operations on tensors: `x * relu6(x + 3.0) * (1 / 6)`.
    "MobileNetV3Small": lambda: keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=10, minimalistic=False,
        classifier_activation=None),
}


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_a_shrunk_application_computes_the_same_and_reloads_with_plain_keras(tmp_path, name):
    model = APPLICATIONS[name]()
    _randomize(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = ks.prune_units(model, 0.5)
    small = ks.shrink(pruned)
    x = _inputs(model, 2)
    # Called eagerly: tracing `predict` would cost more than the call.
    expected = keras.ops.convert_to_numpy(pruned(x, training=False))
    got = keras.ops.convert_to_numpy(small(x, training=False))
    _close(expected, got)
    assert small.count_params() < 0.6 * model.count_params()
    if name != "MobileNetV2":
        return  # saving is the same code for every application: once keeps the suite quick
    path = tmp_path / "small.keras"
    small.save(path)
    reloaded = keras.saving.load_model(path)
    assert np.array_equal(keras.ops.convert_to_numpy(reloaded(x, training=False)), got)


_RELOAD = """
import sys, numpy as np, keras
x = np.load(sys.argv[2])
for path in sys.argv[3:]:
    model = keras.saving.load_model(path, compile=False)
    out = model.predict(x, verbose=0)
    assert np.array_equal(out, np.load(sys.argv[1])), path
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    kernels = {l.name: np.array(l.kernel) for l in model.layers if hasattr(l, "kernel")}
    losses = model.fit(x, np.zeros_like(out), epochs=3, batch_size=len(x), verbose=0).history["loss"]
    assert losses[-1] < losses[0], (path, losses)
    still = [n for n, k in kernels.items() if np.array_equal(k, np.array(model.get_layer(n).kernel))]
    assert not still, (path, still)
assert not any(name.startswith("kerasurgery") for name in sys.modules)
print("ok")
"""


def test_a_shrunk_model_saves_as_keras_and_h5_and_trains_without_kerasurgery(tmp_path):
    model = _residual()
    _randomize(model)
    small = ks.shrink(ks.prune_units(model, 0.5))
    x = _inputs(model)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "out.npy", small.predict(x, verbose=0))
    paths = [str(tmp_path / "small.keras"), str(tmp_path / "small.h5")]
    for path in paths:
        small.save(path)
    done = subprocess.run(
        [sys.executable, "-c", _RELOAD, str(tmp_path / "out.npy"), str(tmp_path / "x.npy"), *paths],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def _constant_units():
    x = keras.Input((7, 7, 2))
    y = L.Conv2D(4, 1, activation="sigmoid", name="s")(x)
    y = L.MaxPooling2D(name="pool")(L.Conv2D(5, 3, name="valid", activation="relu")(y))
    d = L.Dense(3, activation="softplus", name="soft")(L.Flatten()(y))
    return keras.Model(x, L.Dense(2, name="out")(L.Dense(4, name="hidden")(d)))


def test_shrink_folds_constant_units_into_the_consumers_bias():
    model = _constant_units()
    _randomize(model)
    for name, units in (("s", [0, 2]), ("soft", [1])):
        layer = model.get_layer(name)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        kernel[..., units] = 0.0
        layer.kernel.assign(kernel)
    groups = dependency_groups(model)
    assert groups.of("s").removable_units() == [0, 2]  # sigmoid(b) into `valid`'s bias
    assert groups.of("soft").removable_units() == [1]  # softplus(b) into `hidden`'s bias
    small = ks.shrink(model)
    assert small.get_layer("valid").kernel.shape == (3, 3, 2, 5)
    assert small.get_layer("hidden").kernel.shape == (2, 4)
    x = _inputs(model)
    _close(model.predict(x, verbose=0), small.predict(x, verbose=0))


def test_prune_units_prunes_units_whose_constant_a_bias_absorbs():
    model = _constant_units()
    _randomize(model)
    pruned = ks.prune_units(model, 0.5)
    assert dict(walk_layers(pruned))["s"].pins().bias.sum() == 2
    small = ks.shrink(pruned)
    assert small.get_layer("s").filters == 2
    x = _inputs(model)
    _close(pruned.predict(x, verbose=0), small.predict(x, verbose=0))


def test_bert_prunes_heads_and_feed_forward_units_exactly_through_fit_and_shrinks_the_feed_forward():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30, num_layers=2, num_heads=4, hidden_dim=8, intermediate_dim=12,
        max_sequence_length=6, dropout=0.0)
    _randomize(backbone)
    rng = np.random.default_rng(2)
    x = {"token_ids": rng.integers(0, 30, (4, 6)), "segment_ids": np.zeros((4, 6), "int32"),
         "padding_mask": np.ones((4, 6), bool)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = ks.prune_units(backbone, 0.5)
    groups = dependency_groups(pruned)
    block = "transformer_layer_1"
    heads = groups.of(f"{block}/self_attention_layer")
    assert heads.units == 4 and len(heads.removable_units()) == 2
    assert len(groups.of(f"{block}/feedforward_intermediate_dense").removable_units()) == 6
    value = dict(walk_layers(pruned))[f"{block}/self_attention_layer/value"]
    before = keras.ops.convert_to_numpy(value.kernel)
    pruned.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", run_eagerly=True)  # no tracing
    pruned.fit(x, {"sequence_output": np.ones((4, 6, 8)), "pooled_output": np.ones((4, 8))},
               epochs=1, verbose=0)
    # Training moved the kept heads; the pruned ones are still exactly zero.
    assert not np.array_equal(keras.ops.convert_to_numpy(value.kernel), before)
    assert dependency_groups(pruned).of(f"{block}/self_attention_layer").removable == heads.removable
    small = ks.shrink(pruned)
    assert type(small) is type(backbone)
    # Every block loses the same 6 of 12 feed-forward units; the head count
    # also sets each head's size (hidden_dim // num_heads): heads stay, pinned.
    assert (small.get_config()["intermediate_dim"], small.get_config()["num_heads"]) == (6, 4)
    expected, got = pruned(x), small(x)
    for key in expected:
        _close(keras.ops.convert_to_numpy(expected[key]), keras.ops.convert_to_numpy(got[key]))
