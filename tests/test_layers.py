"""MaskedDense: the promise at the layer level, on whatever backend Keras runs."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import layers as layers_lib
from kerasurgery.errors import KerasurgeryError, PinError
from kerasurgery.pins import WeightPins
from tests.helpers import bits, gradients, train

OPTIMIZERS = {
    "sgd_nesterov": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "sgd_weight_decay": lambda: keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.5),
    "adam": lambda: keras.optimizers.Adam(0.05),
    "adamw_large_decay": lambda: keras.optimizers.AdamW(0.05, weight_decay=5.0),
    "rmsprop": lambda: keras.optimizers.RMSprop(0.05, momentum=0.5),
    "adagrad": lambda: keras.optimizers.Adagrad(0.5),
    "lion": lambda: keras.optimizers.Lion(0.05, weight_decay=1.0),
    "adam_ema": lambda: keras.optimizers.Adam(0.05, use_ema=True, ema_overwrite_frequency=2),
    "sgd_clipnorm": lambda: keras.optimizers.SGD(0.5, momentum=0.9, clipnorm=0.01),
    "adam_global_clipnorm": lambda: keras.optimizers.Adam(0.05, global_clipnorm=0.01),
    "adamax_clipvalue": lambda: keras.optimizers.Adamax(0.05, clipvalue=0.001),
}


def _dense_and_masked(units=3, **kwargs):
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    dense = keras.layers.Dense(units, **kwargs)
    dense(x)
    masked = ks.MaskedDense.from_config(dense.get_config())
    masked(x)
    masked.set_pinned_weights(
        kernel=ops.convert_to_numpy(dense.kernel),
        kernel_mask=np.zeros((4, units), bool),
        kernel_value=np.float32(0),
        bias=ops.convert_to_numpy(dense.bias) if dense.use_bias else None,
        bias_mask=np.zeros((units,), bool) if dense.use_bias else None,
        bias_value=np.zeros((units,), "float32") if dense.use_bias else None,
    )
    return dense, masked, x


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
def test_built_from_dense_config_computes_exactly_like_dense(use_bias, activation):
    dense, masked, x = _dense_and_masked(use_bias=use_bias, activation=activation)
    assert np.array_equal(bits(dense(x)), bits(masked(x)))
    pin = masked.pins()
    assert not pin.kernel.any()
    np.testing.assert_array_equal(bits(pin.kernel_value), bits(dense.kernel))
    assert masked.get_config()["units"] == 3


def test_rank_3_inputs_and_keras_masking_behave_like_dense():
    tokens = np.array([[1, 2, 0, 0], [3, 1, 2, 0]])
    embed = keras.layers.Embedding(5, 4, mask_zero=True)
    dense = keras.layers.Dense(3)
    masked = ks.MaskedDense(3, pinned_kernel_values="per_entry")
    e = embed(tokens)
    y_dense = dense(e)
    masked(e)
    masked.set_pinned_weights(
        kernel=ops.convert_to_numpy(dense.kernel), kernel_mask=np.eye(4, 3, dtype=bool),
        kernel_value=ops.convert_to_numpy(dense.kernel),
        bias=ops.convert_to_numpy(dense.bias), bias_mask=np.zeros(3, bool),
        bias_value=np.zeros(3, "float32"),
    )
    y_masked = masked(e)
    assert y_masked.shape == (2, 4, 3)
    assert np.array_equal(bits(y_dense), bits(y_masked))
    mask = masked.compute_mask(e, embed.compute_mask(tokens))
    assert np.array_equal(ops.convert_to_numpy(mask), tokens != 0)


def _question_model():
    """The original question: a 2-2-2 sigmoid MLP whose first kernel has a 0."""
    inputs = keras.Input((2,))
    h = keras.layers.Dense(2, activation="sigmoid", name="first")(inputs)
    outputs = keras.layers.Dense(2, activation="sigmoid", name="second")(h)
    model = keras.Model(inputs, outputs)
    model.get_layer("first").set_weights(
        [np.array([[0.0, 0.25], [0.2, 0.3]], "float32"), np.zeros(2, "float32")]
    )
    return model


def test_original_question_zero_gets_zero_gradient_and_stays_zero():
    frozen = ks.freeze(_question_model(), {"first": ks.rules.zeros()})
    x = np.array([[1.0, 2.0], [0.5, -1.0]], "float32")
    y = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    grads = gradients(frozen, x, y)
    g = grads["first/kernel"]
    assert g[0, 0] == 0.0
    assert np.all(np.delete(g.ravel(), 0) != 0.0)
    train(frozen, keras.optimizers.SGD(1.0, momentum=0.9), x, y, steps=20)
    kernel = ops.convert_to_numpy(frozen.get_layer("first").kernel)
    assert bits(kernel)[0, 0] == 0
    # Each free entry had a non-zero gradient (above), so each one trained.
    assert np.all(kernel.ravel()[1:] != np.array([0.25, 0.2, 0.3], "float32"))


def _frozen_mlp(mlp):
    """The pruned MLP with zeros, per-entry constants and a bias entry pinned.

    Returns the frozen model and, per layer, the `Pin` it must report, written
    out in numpy from the original weights: masks, and values that are the
    pinned value where pinned and the original weight elsewhere.
    """
    hidden_mask = np.zeros((4, 3), bool)
    hidden_mask[1, :] = True
    values = np.arange(12, dtype="float32").reshape(4, 3) / 7.0
    bias_mask = np.array([True, False, False])
    (hidden_kernel, hidden_bias), (out_kernel, out_bias) = (
        mlp.get_layer(name).get_weights() for name in ("hidden", "out"))
    frozen = ks.freeze(mlp, {
        "hidden": ks.Pin(kernel=hidden_mask, kernel_value=values, bias=bias_mask, bias_value=0.125),
        "out": ks.rules.zeros(),
    })
    expected = {
        "hidden": ks.Pin(
            kernel=hidden_mask, kernel_value=np.where(hidden_mask, values, hidden_kernel),
            bias=bias_mask, bias_value=np.where(bias_mask, np.float32(0.125), hidden_bias),
        ),
        # The zeros of `make_mlp`, +0.0, pinned at themselves; the bias has no pin.
        "out": ks.Pin(kernel=out_kernel == 0, kernel_value=out_kernel,
                      bias=np.zeros(2, bool), bias_value=out_bias),
    }
    assert np.count_nonzero(out_kernel == 0) == 1 and not np.signbit(out_kernel[1, 0])
    return frozen, expected


def _assert_pins_equal(layer, pin: ks.Pin) -> None:
    """`layer.pins()` is exactly `pin`: the same masks, and values equal bit for bit."""
    got = layer.pins()
    np.testing.assert_array_equal(got.kernel, pin.kernel)
    np.testing.assert_array_equal(bits(got.kernel_value), bits(pin.kernel_value))
    np.testing.assert_array_equal(got.bias, pin.bias)
    np.testing.assert_array_equal(bits(got.bias_value), bits(pin.bias_value))


def _assert_pins_hold(frozen, expected):
    for name, pin in expected.items():
        layer = frozen.get_layer(name)
        kernel = ops.convert_to_numpy(layer.kernel)
        assert np.array_equal(bits(kernel)[pin.kernel], bits(pin.kernel_value)[pin.kernel]), name
        if pin.bias is not None:
            bias = ops.convert_to_numpy(layer.bias)
            assert np.array_equal(bits(bias)[pin.bias], bits(pin.bias_value)[pin.bias]), name


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pins_hold_bit_exactly_under_every_optimizer(name, jit_compile, mlp, data):
    frozen, expected = _frozen_mlp(mlp)
    for layer_name, pin in expected.items():
        _assert_pins_equal(frozen.get_layer(layer_name), pin)
    before = ops.convert_to_numpy(frozen.get_layer("hidden").kernel)
    frozen.compile(optimizer=OPTIMIZERS[name](), loss="mse", jit_compile=jit_compile)
    frozen.fit(*data, epochs=3, batch_size=4, verbose=0)
    _assert_pins_hold(frozen, expected)
    after = ops.convert_to_numpy(frozen.get_layer("hidden").kernel)
    free = ~expected["hidden"].kernel
    assert np.all(after[free] != before[free]), "free entries must train"


def test_pins_hold_under_mixed_float16_with_loss_scaling(data):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        from tests.conftest import make_mlp

        frozen, expected = _frozen_mlp(make_mlp())
        assert frozen.get_layer("hidden").dtype_policy.name == "mixed_float16"
        before = ops.convert_to_numpy(frozen.get_layer("hidden").kernel)
        frozen.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=2.0), loss="mse")
        assert isinstance(frozen.optimizer, keras.optimizers.LossScaleOptimizer)
        frozen.fit(*data, epochs=2, batch_size=4, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    _assert_pins_hold(frozen, expected)
    # The steps were applied, not skipped by the loss scaling: every free entry moved.
    free = ~expected["hidden"].kernel
    assert np.all(ops.convert_to_numpy(frozen.get_layer("hidden").kernel)[free] != before[free])


def test_mixed_precision_output_equals_dense_output(data):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        from tests.conftest import make_mlp

        model = make_mlp()
        frozen = ks.freeze(model, {"*": ks.rules.zeros()})
    finally:
        keras.config.set_dtype_policy(previous)
    x = data[0]
    assert np.array_equal(bits(model(x)), bits(frozen(x)))


def test_regularizer_sees_the_effective_kernel_so_pins_get_zero_gradient():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(10.0), name="d")(inputs)
    model = keras.Model(inputs, outputs)
    mask = np.array([[True, False], [False, False], [False, True]])
    frozen = ks.freeze(model, {"d": ks.Pin(kernel=mask, kernel_value=3.0)})
    layer = frozen.get_layer("d")
    # The penalty is computed on the kernel the layer uses.
    effective = ops.convert_to_numpy(layer.kernel)
    raw = ops.convert_to_numpy(layer.raw_variable("kernel"))
    np.testing.assert_array_equal(bits(effective), bits(np.where(mask, np.float32(3.0), raw)))
    # Keras sums in float32 in its own order, numpy here in float64: equal up to rounding.
    assert float(ops.convert_to_numpy(frozen.losses[0])) == pytest.approx(
        10.0 * float(np.sum(effective.astype("float64") ** 2)), rel=1e-6
    )
    x = np.ones((4, 3), "float32")
    g = gradients(frozen, x, np.zeros((4, 2), "float32"), include_losses=True)["d/kernel"]
    assert np.all(g[mask] == 0.0)
    assert np.all(g[~mask] != 0.0)


def test_constraint_cannot_move_a_pin(data):
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, kernel_constraint=keras.constraints.NonNeg(), name="d")(inputs)
    model = keras.Model(inputs, outputs)
    mask = np.zeros((4, 2), bool)
    mask[0, 0] = True
    frozen = ks.freeze(model, {"d": ks.Pin(kernel=mask, kernel_value=-2.5)})
    train(frozen, keras.optimizers.SGD(0.5), *data, steps=5)
    kernel = ops.convert_to_numpy(frozen.get_layer("d").kernel)
    assert bits(kernel)[0, 0] == bits(np.float32(-2.5))
    assert np.all(kernel[~mask] >= 0.0)  # the constraint applies to the free entries


def test_pins_returns_numpy_masks_and_values(mlp):
    frozen, expected = _frozen_mlp(mlp)
    pin = frozen.get_layer("hidden").pins()
    assert isinstance(pin, ks.Pin)
    assert pin.kernel.dtype == np.bool_ and pin.kernel.shape == (4, 3)
    assert np.array_equal(pin.kernel_value[1], np.arange(3, 6, dtype="float32") / 7.0)
    assert pin.bias.tolist() == [True, False, False]
    assert pin.bias_value[0] == np.float32(0.125)
    for name in ("hidden", "out"):
        _assert_pins_equal(frozen.get_layer(name), expected[name])
        # The kernel the layer computes with is where(mask, value, raw), bit for bit.
        layer = frozen.get_layer(name)
        mask, value = (ops.convert_to_numpy(v) for v in layer.pin_variables("kernel"))
        raw = ops.convert_to_numpy(layer.raw_variable("kernel"))
        np.testing.assert_array_equal(
            bits(layer.kernel), bits(np.where(mask.astype(bool), value, raw)))


def test_shared_value_storage_is_a_scalar_and_per_entry_values_are_full(mlp):
    frozen, expected = _frozen_mlp(mlp)
    assert frozen.get_layer("out").pinned_kernel_values == "shared"
    assert tuple(frozen.get_layer("out").kernel_pin_value.shape) == ()
    assert bits(frozen.get_layer("out").kernel_pin_value) == bits(np.float32(0.0))  # +0.0
    assert frozen.get_layer("hidden").pinned_kernel_values == "per_entry"
    assert tuple(frozen.get_layer("hidden").kernel_pin_value.shape) == (4, 3)
    mask = expected["hidden"].kernel
    stored = ops.convert_to_numpy(frozen.get_layer("hidden").kernel_pin_value)
    np.testing.assert_array_equal(bits(stored[mask]), bits(expected["hidden"].kernel_value[mask]))
    assert frozen.get_layer("out").kernel_pin_mask.dtype == "bool"


def test_pin_variables_are_created_non_trainable(mlp):
    frozen, _ = _frozen_mlp(mlp)
    layer = frozen.get_layer("hidden")
    assert sorted(v.name for v in layer.trainable_weights) == ["bias", "kernel"]
    assert sorted(v.name for v in layer.non_trainable_weights) == [
        "bias_pin_mask", "bias_pin_value", "kernel_pin_mask", "kernel_pin_value",
    ]


def test_config_round_trip():
    layer = ks.MaskedDense(
        5, activation="relu", use_bias=False, kernel_regularizer="l2",
        pinned_kernel_values="per_entry", name="m",
    )
    clone = ks.MaskedDense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert keras.saving.get_registered_name(ks.MaskedDense) == "kerasurgery>MaskedDense"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"units": 0}, "positive integer"),
        ({"units": 2, "pinned_kernel_values": "some"}, "pinned_kernel_values"),
        # (`lora_rank` was refused here until issue 19: LoRA composes with pins now.)
        ({"units": 2, "quantization_config": "int8"}, "Received: quantization_config='int8'"),
    ],
)
def test_constructor_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ks.MaskedDense(**kwargs)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("kernel_mask", np.zeros((3, 3), bool), "wrong shape"),
        ("kernel_mask", np.zeros((4, 3), "float32"), "must be boolean"),
        ("kernel_value", np.float32(np.nan), "non-finite"),
        ("kernel", np.zeros((4, 3), "int32"), "floating point"),
    ],
)
def test_set_pinned_weights_rejects_bad_arrays(field, value, match):
    _, masked, _ = _dense_and_masked()
    good = dict(
        kernel=np.zeros((4, 3), "float32"), kernel_mask=np.zeros((4, 3), bool),
        kernel_value=np.float32(0), bias=np.zeros(3, "float32"),
        bias_mask=np.zeros(3, bool), bias_value=np.zeros(3, "float32"),
    )
    before = ops.convert_to_numpy(masked.kernel)
    with pytest.raises(PinError, match=match):
        masked.set_pinned_weights(**{**good, field: value})
    assert np.array_equal(ops.convert_to_numpy(masked.kernel), before), "nothing assigned"



# --- Outside training, pins never break silently (the side paths) -------------


def _frozen_dense():
    inputs = keras.Input((4,), name="x")
    outputs = keras.layers.Dense(3, name="d")(inputs)
    model = keras.Model(inputs, outputs)
    frozen = ks.freeze(model, {"d": ks.Pin(kernel=np.eye(4, 3, dtype=bool), kernel_value=0.5)})
    return model, frozen, frozen.get_layer("d")


def test_set_weights_refuses_a_float_mask_and_a_nan_value():
    _, _, layer = _frozen_dense()
    weights = layer.get_weights()
    variables_before = [bits(v) for v in layer.weights]
    names = [v.name for v in layer.weights]
    bad_mask = list(weights)
    bad_mask[names.index("kernel_pin_mask")] = np.ones((4, 3), "float32")
    with pytest.raises(PinError, match="kernel_pin_mask` must be boolean"):
        layer.set_weights(bad_mask)
    bad_value = list(weights)
    bad_value[names.index("kernel_pin_value")] = np.float32("nan")
    with pytest.raises(PinError, match="non-finite pinned value"):
        layer.set_weights(bad_value)
    assert np.all(ops.convert_to_numpy(layer.kernel)[np.eye(4, 3, dtype=bool)] == 0.5)
    # Refused before anything was assigned: every variable holds its old bits.
    for before, variable in zip(variables_before, layer.weights):
        np.testing.assert_array_equal(bits(variable), before, err_msg=variable.name)


def test_get_weights_and_h5_hold_the_effective_kernel_after_weight_decay(tmp_path):
    _, frozen, layer = _frozen_dense()
    frozen.compile(optimizer=keras.optimizers.AdamW(0.1, weight_decay=5.0), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    frozen.fit(x, np.ones((32, 3), "float32"), epochs=2, verbose=0)
    mask = np.eye(4, 3, dtype=bool)
    raw = ops.convert_to_numpy(layer.raw_variable("kernel"))
    assert np.all(raw[mask] != 0.5)  # the raw variable drifted under every pin
    kernel = layer.get_weights()[0]
    assert np.all(kernel[mask] == np.float32(0.5))
    np.testing.assert_array_equal(bits(kernel), bits(np.where(mask, np.float32(0.5), raw)))
    assert np.array_equal(bits(kernel), bits(layer.kernel))
    ks.save_model(frozen, tmp_path / "m.h5")
    import h5py

    with h5py.File(tmp_path / "m.h5") as f:
        stored = f["model_weights/d/d/kernel"][()]
    np.testing.assert_array_equal(bits(stored), bits(kernel))  # the effective kernel, whole


def test_a_nan_assigned_directly_is_refused_at_save_and_nothing_is_written(tmp_path):
    _, frozen, layer = _frozen_dense()
    layer.kernel_pin_value.assign(np.float32("nan"))
    with pytest.raises(KerasurgeryError, match="non-finite pinned value"):
        ks.save_model(frozen, tmp_path / "m.keras")
    assert list(tmp_path.iterdir()) == []


def test_quantize_is_refused_pointing_at_strip():
    _, frozen, _ = _frozen_dense()
    with pytest.raises(KerasurgeryError, match="strip"):
        frozen.quantize("int8")
    deep = keras.layers.Dense(2)
    deep.build((None, 3))
    layers_lib.pin_in_place(deep, ks.MaskedDense, {}, in_config=False)
    with pytest.raises(KerasurgeryError, match="strip"):
        deep.quantize("int8")


def test_loading_the_original_weights_into_the_frozen_model_says_what_to_do(tmp_path):
    model, frozen, layer = _frozen_dense()
    model.save_weights(tmp_path / "orig.weights.h5")
    with pytest.raises(ValueError, match="Load that file into the original model, then freeze it again"):
        frozen.load_weights(tmp_path / "orig.weights.h5")
    # A frozen model's own weights file round-trips with its pins.
    frozen.save_weights(tmp_path / "frozen.weights.h5")
    again = ks.freeze(model, {"d": ks.Pin(kernel=np.eye(4, 3, dtype=bool), kernel_value=0.5)})
    again.load_weights(tmp_path / "frozen.weights.h5")
    assert np.array_equal(again.get_layer("d").pins().kernel, np.eye(4, 3, dtype=bool))
    assert np.array_equal(bits(again.get_layer("d").kernel), bits(layer.kernel))


def test_a_non_finite_free_entry_is_not_called_a_pinned_value():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
    kernel = np.arange(12, dtype="float32").reshape(4, 3)
    kernel[3, 2] = np.inf
    model.get_layer("d").kernel.assign(kernel)
    mask = np.zeros((4, 3), bool)
    mask[0] = True
    frozen = ks.freeze(model, {"d": ks.Pin(kernel=mask)})  # per-entry values 0, 1, 2
    assert frozen.get_layer("d").pinned_kernel_values == "per_entry"
    assert np.array_equal(frozen.get_layer("d").pins().kernel, mask)
    np.testing.assert_array_equal(bits(frozen.get_layer("d").kernel), bits(kernel))  # inf included


def test_folded_layers_read_their_effective_weights_as_formed_on_entry():
    # `layers.folded`: for decoding loops (a pinned task's generate). Inside,
    # each weight is the tensor formed on entry, the same object at every
    # read, equal bit for bit to the effective weight; on exit the layer
    # forms its weights again, so a pin changed afterwards is read.
    layer = ks.MaskedDense(3)
    layer.build((None, 4))
    layer.raw_variable("kernel").assign(np.arange(12, dtype="float32").reshape(4, 3) - 5.5)
    mask = np.zeros((4, 3), bool)
    mask[1] = True
    layer.kernel_pin_mask.assign(mask)
    x = np.ones((2, 4), "float32")
    expected = ops.convert_to_numpy(layer(x))
    with layers_lib.folded([layer]):
        assert layer.kernel is layer.kernel and layer.bias is layer.bias
        assert np.array_equal(bits(ops.convert_to_numpy(layer.kernel)),
                              bits(ops.convert_to_numpy(layer.effective("kernel"))))
        assert np.array_equal(bits(ops.convert_to_numpy(layer(x))), bits(expected))
    mask[2] = True
    layer.kernel_pin_mask.assign(mask)
    assert not ops.convert_to_numpy(layer.kernel)[2].any()
    assert layer.kernel is not layer.kernel  # formed at each read again


def _two_layer_frozen_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="a"), keras.layers.Dense(2, name="b")])
    mask = np.zeros((4, 5), bool)
    mask[::2, 1:] = True
    values = np.full((4, 5), 0.25, "float32")
    return ks.freeze(model, {"a": ks.Pin(kernel=mask, kernel_value=values, bias=np.array([1, 0, 0, 0, 1], bool),
                                         bias_value=np.full(5, -0.5, "float32"))}), mask


def test_a_frozen_pinned_weight_is_read_as_it_is_and_holds_its_pins_bit_for_bit():
    # A raw weight that cannot train is settled: it holds the effective weight
    # and the layer reads it with no select. Trainable again, it is formed
    # with the select; training moves raw entries under the pins (AdamW's
    # decay); frozen again, it is settled again: the pins come back bit for bit.
    model, mask = _two_layer_frozen_model()
    layer = model.get_layer("a")
    expected = {w: bits(layer.effective(w)) for w in ("kernel", "bias")}
    layer.trainable = False
    assert layer.kernel is layer.raw_variable("kernel") and layer.bias is layer.raw_variable("bias")
    for w in expected:
        assert np.array_equal(bits(getattr(layer, w)), expected[w])  # raw holds the effective weight
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")
    train(model, keras.optimizers.AdamW(0.1, weight_decay=2.0), x, y, steps=3)
    for w in expected:
        assert np.array_equal(bits(getattr(layer, w)), expected[w])  # frozen: nothing moved
    layer.trainable = True
    assert layer.kernel is not layer.raw_variable("kernel")
    train(model, keras.optimizers.AdamW(0.1, weight_decay=2.0), x, y, steps=3)
    raw = ops.convert_to_numpy(layer.raw_variable("kernel"))
    assert not np.array_equal(bits(raw[mask]), expected["kernel"][mask])  # raw moved under the pins
    effective = bits(layer.effective("kernel"))
    assert np.array_equal(effective[mask], expected["kernel"][mask])
    layer.trainable = False
    assert layer.kernel is layer.raw_variable("kernel")
    assert np.array_equal(bits(layer.kernel), effective)


def test_pins_written_to_a_frozen_layer_are_read_at_once():
    # set_pin_state / set_weights / a pruning callback's pins on a frozen
    # (settled) layer: its raw weight is settled again, so the new pins are
    # what it computes with; settle() after a direct assign does the same.
    model, mask = _two_layer_frozen_model()
    layer = model.get_layer("a")
    layer.trainable = False
    state = layer.pin_state()
    new_mask = ~state["kernel"].mask
    state["kernel"] = WeightPins(state["kernel"].effective, new_mask, np.float32(0))
    layer.set_pin_state(state, raw=False)
    assert layer.kernel is layer.raw_variable("kernel")
    assert not ops.convert_to_numpy(layer.kernel)[new_mask].any()
    weights = layer.get_weights()
    weights[0] = np.ones((4, 5), "float32")
    layer.set_weights(weights)
    assert layer.kernel is layer.raw_variable("kernel")
    assert not ops.convert_to_numpy(layer.kernel)[new_mask].any()
    assert (ops.convert_to_numpy(layer.kernel)[~new_mask] == 1).all()
    layer.kernel_pin_mask.assign(np.ones((4, 5), bool))
    layer.settle()
    assert not ops.convert_to_numpy(layer.kernel).any()


def test_a_layer_frozen_while_it_cannot_train_is_settled_at_once():
    # freeze -> set_pins gives every raw weight its effective value, so a
    # layer that cannot train is read as it is from the start, its pins in it.
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="a")])
    model.get_layer("a").trainable = False
    mask = np.zeros((4, 5), bool)
    mask[1:3] = True
    frozen = ks.freeze(model, {"a": ks.Pin(kernel=mask, kernel_value=0.5)})
    layer = frozen.get_layer("a")
    assert layer.kernel is layer.raw_variable("kernel")
    kernel = ops.convert_to_numpy(layer.kernel)
    assert (kernel[mask] == 0.5).all()
    assert np.array_equal(bits(kernel[~mask]), bits(ops.convert_to_numpy(model.get_layer("a").kernel)[~mask]))
