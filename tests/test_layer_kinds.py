"""The promise for every pinned layer kind (layers/_classes.py), one parametrisation.

Each kind is frozen inside a tiny model with half of every weight pinned (some
kept at their values, some pinned to 0.25), then checked: outputs bit for bit,
zero gradient, pins bit-exact under training with weight decay, momentum, EMA
and XLA, a `.keras` round trip in a new process, and strip loading without
kerasurgery. Keras' own `run_layer_test` runs on each pinned class too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import layers as layers_lib
from tests.helpers import bits, gradients

L = keras.layers

# kind -> (input shape, input dtype, layer factory, run_layer_test kwargs)
KINDS = {
    "Dense": ((6,), "float32", lambda: L.Dense(4, name="layer"), {"units": 4}),
    "EinsumDense": ((5, 6), "float32",
                    lambda: L.EinsumDense("abc,cd->abd", output_shape=(5, 4), bias_axes="d", name="layer"),
                    {"equation": "abc,cd->abd", "output_shape": (5, 4), "bias_axes": "d"}),
    "Embedding": ((7,), "int32", lambda: L.Embedding(20, 4, name="layer"),
                  {"input_dim": 20, "output_dim": 4}),
    "Conv1D": ((10, 3), "float32", lambda: L.Conv1D(4, 3, name="layer"), {"filters": 4, "kernel_size": 3}),
    "Conv2D": ((8, 8, 3), "float32", lambda: L.Conv2D(4, 3, name="layer"), {"filters": 4, "kernel_size": 3}),
    "Conv3D": ((5, 5, 5, 2), "float32", lambda: L.Conv3D(3, 2, name="layer"), {"filters": 3, "kernel_size": 2}),
    "Conv1DTranspose": ((6, 3), "float32", lambda: L.Conv1DTranspose(4, 3, name="layer"),
                        {"filters": 4, "kernel_size": 3}),
    "Conv2DTranspose": ((5, 5, 3), "float32", lambda: L.Conv2DTranspose(4, 3, name="layer"),
                        {"filters": 4, "kernel_size": 3}),
    "Conv3DTranspose": ((3, 3, 3, 2), "float32", lambda: L.Conv3DTranspose(3, 2, name="layer"),
                        {"filters": 3, "kernel_size": 2}),
    "DepthwiseConv1D": ((10, 3), "float32", lambda: L.DepthwiseConv1D(3, depth_multiplier=2, name="layer"),
                        {"kernel_size": 3, "depth_multiplier": 2}),
    "DepthwiseConv2D": ((8, 8, 3), "float32", lambda: L.DepthwiseConv2D(3, depth_multiplier=2, name="layer"),
                        {"kernel_size": 3, "depth_multiplier": 2}),
    "SeparableConv1D": ((10, 3), "float32", lambda: L.SeparableConv1D(4, 3, depth_multiplier=2, name="layer"),
                        {"filters": 4, "kernel_size": 3, "depth_multiplier": 2}),
    "SeparableConv2D": ((8, 8, 3), "float32", lambda: L.SeparableConv2D(4, 3, depth_multiplier=2, name="layer"),
                        {"filters": 4, "kernel_size": 3, "depth_multiplier": 2}),
    # Issue 20: gamma and beta per channel; BN's moving statistics are not pinned.
    # (GroupNormalization is BatchNormalization's table entry without the
    # statistics: tests/test_kinds.py checks it against Keras.)
    "BatchNormalization": ((4, 4, 3), "float32", lambda: L.BatchNormalization(name="layer"), {}),
    "LayerNormalization": ((3, 4), "float32", lambda: L.LayerNormalization(name="layer"), {}),
}
# Kinds without a bias: the layer's rule leaves it out.
NO_BIAS = {"Embedding", "BatchNormalization", "LayerNormalization"}
NORMALIZATIONS = ("BatchNormalization", "LayerNormalization")


def _model(kind: str) -> keras.Model:
    shape, dtype, make, _ = KINDS[kind]
    inputs = keras.Input(shape, dtype=dtype, name="x")
    h = make()(inputs)
    outputs = L.Dense(2, name="head")(L.Flatten()(h))
    model = keras.Model(inputs, outputs, name=f"tiny_{kind.lower()}")
    # Non-zero biases, so pinning a bias entry is visible.
    layer = model.get_layer("layer")
    for variable in layer.weights:
        values = np.random.default_rng(3).normal(size=variable.shape).astype("float32")
        variable.assign(np.abs(values) + 0.5 if variable.name == "moving_variance" else values)
    return model


def _data(kind: str, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    shape, dtype, _, _ = KINDS[kind]
    rng = np.random.default_rng(0)
    if dtype == "int32":
        x = rng.integers(0, 20, size=(n, *shape)).astype("int32")
    else:
        x = rng.normal(size=(n, *shape)).astype("float32")
    return x, rng.normal(size=(n, 2)).astype("float32")


PINS = {
    "layer": ks.rules.fraction(0.5, seed=0, bias=True),           # kept at their values
    "head": ks.rules.fraction(0.25, seed=1, value=0.25),          # pinned to a constant
}


def _frozen(kind: str, *, keep: bool = False) -> tuple[keras.Model, keras.Model]:
    model = _model(kind)
    pins = dict(PINS)
    if keep:
        pins["head"] = ks.rules.fraction(0.25, seed=1)
    if kind in NO_BIAS:
        pins["layer"] = ks.rules.fraction(0.5, seed=0)
    return model, ks.freeze(model, pins)


def _pinned_state(model: keras.Model) -> dict:
    return {
        (layer.name, w): s for layer in model.layers if layers_lib.is_pinned(layer)
        for w, s in layer.pin_state().items()
    }


def _assert_pins_hold(state: dict, model: keras.Model) -> None:
    now = _pinned_state(model)
    assert now.keys() == state.keys()
    for key, before in state.items():
        mask = before.mask
        assert np.array_equal(now[key].mask, mask)
        effective = now[key].effective
        assert np.array_equal(bits(effective[mask]), bits(before.effective[mask])), key


@pytest.mark.parametrize("kind", KINDS)
def test_freeze_preserves_function_and_pins_every_weight(kind):
    model, frozen = _frozen(kind, keep=True)
    x, _ = _data(kind)
    assert np.array_equal(bits(ops.convert_to_numpy(frozen(x))),
                          bits(ops.convert_to_numpy(model(x))))
    # Pinned to a constant: exactly that value where pinned, the old one elsewhere.
    original, pinned = _frozen(kind)
    head = pinned.get_layer("head").pin_state()["kernel"]
    old = ops.convert_to_numpy(original.get_layer("head").kernel)
    np.testing.assert_array_equal(head.mask, ks.rules.fraction(0.25, seed=1)(old, None).kernel)
    np.testing.assert_array_equal(bits(head.effective), bits(np.where(head.mask, np.float32(0.25), old)))
    layer = frozen.get_layer("layer")
    assert type(layer).__name__ == f"Masked{kind}"
    assert isinstance(layer, getattr(keras.layers, kind))
    # Every weight pinned at the masks the rule gives on the original weights,
    # at their own values: the effective weights are the original ones, bit for bit.
    plain = model.get_layer("layer")
    originals = {w: ops.convert_to_numpy(getattr(plain, w)) for w in layer.present_weights()}
    rule = PINS["layer"] if kind not in NO_BIAS else ks.rules.fraction(0.5, seed=0)
    state = layer.pin_state()
    assert set(state) == set(originals)
    for weight, s in state.items():
        assert int(s.mask.sum()) == round(0.5 * s.mask.size), weight
        bias = originals.get("bias")
        if weight == "bias":
            want = rule(originals[layer.pinned_weights[0]], bias).bias
        else:
            want = rule(originals[weight], bias).kernel  # each kernel as the main one
        np.testing.assert_array_equal(s.mask, want, err_msg=weight)
        np.testing.assert_array_equal(bits(s.effective), bits(originals[weight]), err_msg=weight)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_is_exactly_zero_at_pins(kind):
    _, frozen = _frozen(kind)
    x, y = _data(kind)
    layer = frozen.get_layer("layer")
    grads = gradients(frozen, x, y)  # d(mse)/d(variable), by path, on any backend
    # The same model in plain Keras layers, holding the effective weights: its
    # gradient is the one each free entry must get.
    plain = ks.strip(frozen)
    plain_grads = gradients(plain, x, y)
    plain_layer = plain.get_layer("layer")
    assert not layers_lib.is_pinned(plain_layer)
    for weight in layer.present_weights():
        grad = grads[layer.raw_variable(weight).path]
        expected = plain_grads[getattr(plain_layer, weight).path]
        mask = layer.pin_state()[weight].mask
        assert np.all(grad[mask] == 0.0)
        # Free entries get exactly the plain layer's gradient: `where` passes it
        # through unchanged, and the rest of the computation is the same.
        np.testing.assert_array_equal(bits(grad[~mask]), bits(expected[~mask]), err_msg=weight)
        assert np.count_nonzero(grad[~mask]) > 0, weight  # not vacuous: some free entries train


# Two settings cover the optimizer features that move a raw weight without a
# gradient (decoupled weight decay, momentum, EMA) on graph and XLA; the
# 11-optimizer matrix runs on Dense in test_layers.py.
SETTINGS = {
    "adamw_ema_graph": (lambda: keras.optimizers.AdamW(0.05, weight_decay=0.5, use_ema=True,
                                                       ema_overwrite_frequency=2), False),
    "sgd_nesterov_wd_xla": (lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True,
                                                         weight_decay=0.1), True),
}


@pytest.mark.parametrize("kind, setting", [
    # A normalization's weights are read like any other weight's: one setting
    # (decay, momentum, EMA) keeps the suite short.
    (kind, setting) for kind in KINDS for setting in SETTINGS
    if kind not in NORMALIZATIONS or setting == "adamw_ema_graph"
])
def test_pins_hold_bit_for_bit_through_training(kind, setting):
    _, frozen = _frozen(kind)
    x, y = _data(kind)
    state = _pinned_state(frozen)
    make, jit = SETTINGS[setting]
    frozen.compile(optimizer=make(), loss="mse", jit_compile=jit)
    frozen.fit(x, y, epochs=2, batch_size=8, verbose=0)
    _assert_pins_hold(state, frozen)
    # Every free entry moved: weight decay alone moves each non-zero one, and
    # the zero-initialised bias of `head` gets a non-zero gradient from the loss.
    for (name, weight), s in _pinned_state(frozen).items():
        before = state[(name, weight)]
        free = ~before.mask
        assert np.all(before.effective[free] != 0) or weight == "bias", (name, weight)
        assert np.all(s.effective[free] != before.effective[free]), (name, weight)


def test_round_trip_in_a_new_process_and_strip_without_kerasurgery(tmp_path):
    """Every kind at once: one child process each way keeps the suite fast."""
    expected = {}
    for kind in KINDS:
        _, frozen = _frozen(kind)
        x, _ = _data(kind)
        frozen.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5), loss="mse")
        frozen.fit(x, _data(kind)[1], epochs=1, verbose=0)
        ks.save_model(frozen, tmp_path / f"{kind}.keras")
        ks.save_model(ks.strip(frozen), tmp_path / f"{kind}.stripped.keras")
        np.save(tmp_path / f"{kind}.x.npy", x)
        np.save(tmp_path / f"{kind}.y.npy", ops.convert_to_numpy(frozen(x)))
        expected[kind] = {
            f"{name}/{w}": (s.mask, s.effective) for (name, w), s in _pinned_state(frozen).items()
        }
        np.savez(tmp_path / f"{kind}.pins.npz",
                 **{f"{k}|mask": m for k, (m, _) in expected[kind].items()},
                 **{f"{k}|eff": e for k, (_, e) in expected[kind].items()})
    reload = textwrap.dedent(f"""
        import numpy as np, keras, kerasurgery as ks
        folder = {str(tmp_path)!r}
        for kind in {list(KINDS)!r}:
            x = np.load(f"{{folder}}/{{kind}}.x.npy"); y = np.load(f"{{folder}}/{{kind}}.y.npy")
            pins = np.load(f"{{folder}}/{{kind}}.pins.npz")
            for load in (ks.load_model, keras.saving.load_model):
                model = load(f"{{folder}}/{{kind}}.keras")
                out = keras.ops.convert_to_numpy(model(x))
                assert np.array_equal(out.view("u4"), y.view("u4")), (kind, load)
                for key in {{k.split("|")[0] for k in pins.files}}:
                    name, weight = key.split("/")
                    state = model.get_layer(name).pin_state()[weight]
                    assert np.array_equal(state.mask, pins[key + "|mask"]), (kind, key)
                    assert np.array_equal(state.effective.view("u4"), pins[key + "|eff"].view("u4"))
            model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5), loss="mse")
            model.fit(x, y * 2, epochs=1, verbose=0)
            for key in {{k.split("|")[0] for k in pins.files}}:
                name, weight = key.split("/")
                state = model.get_layer(name).pin_state()[weight]
                m = pins[key + "|mask"]
                assert np.array_equal(state.effective[m].view("u4"), pins[key + "|eff"][m].view("u4"))
        print("ok")
    """)
    plain = textwrap.dedent(f"""
        import sys, numpy as np, keras
        folder = {str(tmp_path)!r}
        for kind in {list(KINDS)!r}:
            model = keras.saving.load_model(f"{{folder}}/{{kind}}.stripped.keras")
            x = np.load(f"{{folder}}/{{kind}}.x.npy"); y = np.load(f"{{folder}}/{{kind}}.y.npy")
            assert type(model.get_layer("layer")).__name__ == kind
            assert np.array_equal(keras.ops.convert_to_numpy(model(x)).view("u4"), y.view("u4")), kind
        assert not any(m.startswith("kerasurgery") for m in sys.modules)
        print("ok")
    """)
    for script in (reload, plain):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


class _LayerTest:
    """Keras' own layer test harness (serialization, training, mixed precision)."""

    @staticmethod
    def run(kind: str) -> None:
        from keras.src.testing import TestCase

        shape, dtype, _, kwargs = KINDS[kind]
        case = TestCase()
        case.setUp()
        cls = getattr(ks.layers, f"Masked{kind}")
        n_weights = len(cls.pinned_weights)  # each has a bias here but Embedding
        case.run_layer_test(
            cls,
            init_kwargs=kwargs,
            input_shape=None if dtype == "int32" else (2, *shape),
            input_data=np.ones((2, *shape), "int32") if dtype == "int32" else None,
            expected_num_trainable_weights=n_weights,
            expected_num_non_trainable_weights=2 * n_weights + len(cls.state_weights),
            supports_masking=None,
            run_mixed_precision_check=True,
        )


@pytest.mark.parametrize("kind", KINDS)
def test_keras_run_layer_test(kind):
    _LayerTest.run(kind)
