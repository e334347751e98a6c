"""Pins planned where the weights live (`kerasurgery.model.device`) equal the host path's.

A layer whose weight is split across processes is planned on its live
tensors with `keras.ops` (tests/test_distribution.py runs that case with two
processes). Here, in one process, `freeze` is made to plan every layer that
way (`surgery._on_device`), and each built-in rule must pin exactly what the
host path pins from the same weights: the same masks, stored values and
effective weights bit for bit, with ties, -0.0 and 0.0, NaN and inf, in
float32, float16 and bfloat16, for Dense, a convolution and a multi-axis
EinsumDense. tests/test_backends.py reruns this module on the other backends.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import _arrays, pruning
from kerasurgery.errors import KerasurgeryError
from kerasurgery.model import device, surgery
from kerasurgery.pins import bits

DTYPES = ["float32", "float16", "bfloat16"]
LAYERS = ("dense", "conv", "einsum")


def _make(dtype: str) -> keras.Model:
    """Dense, Conv2D and EinsumDense layers whose kernels hold ties, -0.0 and 0.0, NaN and inf."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 4))
    c = keras.layers.Conv2D(8, 3, padding="same", name="conv", dtype=dtype)(inputs)
    f = keras.layers.Flatten()(c)
    h = keras.layers.Dense(16, name="dense", dtype=dtype)(f)
    e = keras.layers.EinsumDense("ab,bcd->acd", (2, 4), bias_axes="cd", name="einsum", dtype=dtype)(h)
    model = keras.Model(inputs, e)
    rng = np.random.default_rng(1)
    for name in LAYERS:
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        values = np.round(rng.normal(size=kernel.shape) * 4) / 8  # many equal magnitudes
        flat = values.reshape(-1)
        flat[:6] = [0.0, -0.0, np.nan, np.inf, -np.inf, -0.0]
        flat[-3:] = [-np.nan, 0.0, -0.0]
        bias = (np.round(rng.normal(size=bias.shape) * 2) / 4)
        layer.set_weights([values.astype(kernel.dtype), bias.astype(kernel.dtype)])
    return model


def _rules() -> dict:
    return {
        "zeros": ks.rules.zeros(),
        "zeros_bias_value": ks.rules.zeros(bias=True, value=1.5),
        "below": ks.rules.below(0.3),
        "smallest": ks.rules.smallest(0.5),
        "smallest_bias": ks.rules.smallest(0.37, bias=True, value=-0.0),
        "n_of_m": ks.rules.n_of_m(2, 4),
        "n_of_m_3_8": ks.rules.n_of_m(3, 8),
        "inputs": ks.rules.inputs([1, 3], value=0.0),
        "units": ks.rules.units([0, 5], value=0.25),
        "entries": ks.rules.entries([(0, 0, 0, 1), (1, 2, 3, 4)], value=2.0),
        "fraction": ks.rules.fraction(0.3, seed=1, value=0.0),
        "pin_capable": ks.Pin(),  # nothing pinned: the layers become pinned classes
    }


def _pinned_as(model: keras.Model) -> dict:
    out = {}
    for name in LAYERS:
        layer = model.get_layer(name)
        if not ks.layers.is_pinned(layer):
            continue
        assert layer.pins_hold()
        out[name] = (layer.pin_storage, {
            w: (s.mask, bits(s.value), bits(s.effective)) for w, s in layer.pin_state().items()})
    return out


def _freeze_both(make, pins, monkeypatch, again=None) -> tuple[dict, dict]:
    """The pins of `freeze(make(), pins, in_place=True)` planned on the host, then on device.

    With `again`, each model is frozen a second time (pins added to pinned layers).
    """
    found = []
    for on_device in (False, True):
        with monkeypatch.context() as patch:
            if on_device:
                patch.setattr(surgery, "_on_device", lambda layer: True)
            model = ks.freeze(make(), pins, in_place=True)
            if again is not None:
                ks.freeze(model, again, in_place=True)
        found.append(_pinned_as(model))
    return found[0], found[1]


def _assert_same(host: dict, on_device: dict) -> None:
    assert host and set(host) == set(on_device)
    for name, (storage, weights) in host.items():
        assert on_device[name][0] == storage, name
        for w, arrays in weights.items():
            for what, a, b in zip(("mask", "value", "effective"), arrays, on_device[name][1][w]):
                assert a.shape == b.shape and np.array_equal(a, b), (name, w, what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", list(_rules()))
def test_every_built_in_rule_pins_on_device_what_it_pins_on_the_host(rule, dtype, monkeypatch):
    spec = _rules()[rule]
    pins = {"dense": spec, "conv": spec, "einsum": spec}
    if rule == "entries":  # indices of a 4-d kernel: the convolution's
        pins = {"conv": spec}
    if rule.startswith("n_of_m"):  # EinsumDense's 16 inputs and the convolution's 4 channels
        pins = {"dense": spec, "einsum": spec} if rule == "n_of_m_3_8" else pins
    host, on_device = _freeze_both(lambda: _make(dtype), pins, monkeypatch)
    _assert_same(host, on_device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_pin_given_as_host_arrays_and_pins_added_to_pinned_layers(dtype, monkeypatch):
    mask = np.zeros((128, 16), bool)
    mask[::5, ::3] = True
    values = np.linspace(-1, 1, 128 * 16).reshape(128, 16)
    pins = {
        "dense": ks.Pin(kernel=mask, kernel_value=values, bias=np.arange(16) % 4 == 0),
        "conv": np.arange(3 * 3 * 4 * 8).reshape(3, 3, 4, 8) % 7 == 0,  # a bare boolean mask
        "einsum": ks.rules.smallest(0.25),
    }
    again = {"dense": ks.rules.below(0.2), "conv": ks.rules.zeros(value=0.5), "einsum": ks.rules.n_of_m(1, 4)}
    host, on_device = _freeze_both(lambda: _make(dtype), pins, monkeypatch, again)
    _assert_same(host, on_device)
    assert host["dense"][0]["kernel"] == "per_entry"


def test_keeping_a_non_finite_value_refuses_the_same_way_on_device(monkeypatch):
    messages = []
    for on_device in (False, True):
        with monkeypatch.context() as patch:
            if on_device:
                patch.setattr(surgery, "_on_device", lambda layer: True)
            with pytest.raises(KerasurgeryError) as caught:
                ks.freeze(_make("float32"), {"dense": ks.rules.inputs([0])}, in_place=True)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert "non-finite pinned value" in messages[0]


@pytest.mark.parametrize("pins, named", [
    ({"dense": lambda kernel, bias: ks.Pin(kernel=kernel == 0)}, "'<lambda>'"),
    ({"*": ks.rules.smallest_units(0.5)}, "'_UnitsByNorm'"),
    ({"*": ks.rules.smallest(0.5, across_layers=True)}, "'smallest 0.5 across layers'"),
])
def test_a_rule_without_a_device_form_refuses_in_one_line(pins, named, monkeypatch):
    monkeypatch.setattr(surgery, "_on_device", lambda layer: True)
    model = _make("float32")
    with pytest.raises(KerasurgeryError, match="split across processes") as caught:
        ks.freeze(model, pins, in_place=True)  # a glob refuses too: it does not skip the layer
    message = str(caught.value)
    assert named in message and "\n" not in message
    assert not any(ks.layers.is_pinned(model.get_layer(n)) for n in LAYERS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_count_cut_is_the_cut_of_the_host_radix_selection(dtype):
    rng = np.random.default_rng(2)
    weight = (np.round(rng.normal(size=(7, 9, 5)) * 3) / 4).astype(
        _arrays.HOST.dtype(np.zeros(0, _np_dtype(dtype))))
    weight.reshape(-1)[:5] = [np.nan, np.inf, -0.0, 0.0, -np.inf]
    tensor = ops.convert_to_tensor(weight)
    for count in (0, 1, 17, 100, 157, 314, 315):
        host = pruning.smallest_cuts(lambda: iter([weight]), lambda total: count)[0]
        assert pruning.count_cut(weight, count) == host, count
        assert pruning.count_cut(tensor, count, device.DEVICE) == host, count
        expected = host.mask(weight)
        assert expected.sum() == count
        assert np.array_equal(ops.convert_to_numpy(host.mask(tensor, device.DEVICE)), expected), count


def test_first_true_and_same_bits_mean_the_same_on_device():
    rng = np.random.default_rng(3)
    mask = rng.random((6, 5, 7)) < 0.3
    for n in (0, 1, 5, int(mask.sum())):
        got = ops.convert_to_numpy(device.DEVICE.first_true(ops.convert_to_tensor(mask), n))
        assert np.array_equal(got, _arrays.HOST.first_true(mask, n)), n
    values = np.where(mask, np.float32(-0.0), rng.normal(size=mask.shape).astype("float32"))
    shared = device.DEVICE.same_bits(ops.convert_to_tensor(values), ops.convert_to_tensor(mask))
    assert bits(shared) == bits(np.float32(-0.0))
    values[np.nonzero(mask)[0][0], np.nonzero(mask)[1][0], np.nonzero(mask)[2][0]] = 0.0  # +0.0: other bits
    assert device.DEVICE.same_bits(ops.convert_to_tensor(values), ops.convert_to_tensor(mask)) is None
    assert _arrays.HOST.same_bits(values, mask) is None


def test_pins_hold_is_false_where_a_pinned_entry_computes_with_another_value():
    model = ks.freeze(_make("float32"), {"dense": ks.rules.smallest(0.5)}, in_place=True)
    layer = model.get_layer("dense")
    assert layer.pins_hold()
    raw = layer.raw_variable("kernel")
    mask = ops.convert_to_numpy(layer.kernel_pin_mask)
    moved = ops.convert_to_numpy(raw).copy()
    moved[np.unravel_index(int(np.argmax(mask)), mask.shape)] = 3.0
    raw.assign(moved)
    assert layer.pins_hold()  # a trainable layer forms its kernel: the pinned value is read
    # A frozen layer reads its settled raw weight as it is: a direct assign
    # without `settle()` puts another value under a pin, and the check sees it.
    layer.trainable = False
    assert layer.pins_hold()
    raw.assign(moved)
    assert not layer.pins_hold()
    layer.settle()
    assert layer.pins_hold()


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)
