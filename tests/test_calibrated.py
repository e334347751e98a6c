"""Wanda and SparseGPT against transcriptions of the authors' code, and `ks.prune` on models.

The references below are the papers' PyTorch code, transcribed line by line
(only the `.float()` casts became `.to(dtype)`, so they run in float64 too,
and SparseGPT's per-block masks are collected to be compared):

- Wanda: `WrappedGPT.add_batch` (lib/layerwrapper.py) and the mask of
  `prune_wanda` (lib/prune.py) of locuslab/wanda at 8e8fc87;
- SparseGPT: `SparseGPT.add_batch` and `fasterprune` (sparsegpt.py) of
  IST-DASLab/sparsegpt at 147d215, in `benchmarks/_reference.py`, which
  `benchmarks/bench_calibrated.py` times.

They work on torch's `W` of shape (out, in); Keras kernels are (in, out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerasurgery import calibrated
from kerasurgery.errors import PinError

torch = pytest.importorskip("torch")

from benchmarks._reference import SparseGPT  # noqa: E402  (the benchmark times the same one)


# -- the references, transcribed ----------------------------------------------


class _WrappedGPT:
    """lib/layerwrapper.py of locuslab/wanda (for an nn.Linear)."""

    def __init__(self, columns: int) -> None:
        self.scaler_row = torch.zeros((columns,), dtype=torch.float32)
        self.nsamples = 0

    def add_batch(self, inp) -> None:
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def _reference_wanda_mask(W, scaler_row, sparsity_ratio: float, prune_n: int = 0, prune_m: int = 0):
    """The mask of `prune_wanda` (lib/prune.py), `use_variant=False`."""
    W_metric = torch.abs(W) * torch.sqrt(scaler_row.reshape((1, -1)))
    W_mask = torch.zeros_like(W_metric) == 1
    if prune_n != 0:
        for ii in range(W_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = W_metric[:, ii:(ii + prune_m)].float()
                W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    else:
        sort_res = torch.sort(W_metric, dim=-1, stable=True)
        indices = sort_res[1][:, :int(W_metric.shape[1] * sparsity_ratio)]
        W_mask.scatter_(1, indices, True)
    return W_mask


# -- random layers --------------------------------------------------------------


def _layer(seed: int, inputs: int, units: int, batches: int = 3, tokens: int = 40, *, dead=()):
    """A kernel (inputs, units) and calibration batches (samples, tokens, inputs).

    Inputs of uneven scale (a few "outlier features"), so that the score and
    the Hessian matter.
    """
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(inputs, units))
    scale = np.exp(rng.normal(size=inputs))
    batches = [rng.normal(size=(2, tokens, inputs)) * scale for _ in range(batches)]
    for x in batches:
        x[..., list(dead)] = 0.0
    return kernel, batches


def _ours_norms(batches) -> np.ndarray:
    norms = calibrated.RunningNorms(batches[0].shape[-1])
    for x in batches:
        norms.update(x.reshape(-1, x.shape[-1]))
    return norms.value


def _ours_hessian(batches, dtype) -> np.ndarray:
    hessian = calibrated.RunningHessian(batches[0].shape[-1], dtype)
    for x in batches:
        hessian.update(x.reshape(-1, x.shape[-1]), samples=x.shape[0])
    return hessian.value


@pytest.mark.parametrize("seed,inputs,units", [(0, 64, 48), (1, 200, 7), (2, 32, 96)])
@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.3])
def test_wanda_mask_equals_the_reference(seed, inputs, units, sparsity):
    kernel, batches = _layer(seed, inputs, units)
    kernel = kernel.astype(np.float32)
    wrapped = _WrappedGPT(inputs)
    for x in batches:
        wrapped.add_batch(torch.from_numpy(x.astype(np.float32)))
    expected = _reference_wanda_mask(torch.from_numpy(kernel.T.copy()), wrapped.scaler_row, sparsity)

    mask = calibrated.wanda_mask(kernel, _ours_norms(batches), sparsity=sparsity)

    np.testing.assert_array_equal(mask, expected.numpy().T)
    assert (mask.sum(axis=0) == int(inputs * sparsity)).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_wanda_n_of_m_mask_equals_the_reference(n, m):
    kernel, batches = _layer(3, 64, 40)
    kernel = kernel.astype(np.float32)
    wrapped = _WrappedGPT(64)
    for x in batches:
        wrapped.add_batch(torch.from_numpy(x.astype(np.float32)))
    expected = _reference_wanda_mask(torch.from_numpy(kernel.T.copy()), wrapped.scaler_row, 0, n, m)

    mask = calibrated.wanda_mask(kernel, _ours_norms(batches), n_of_m=(n, m))

    np.testing.assert_array_equal(mask, expected.numpy().T)
    assert (mask.reshape(-1, m, 40).sum(axis=1) == n).all()


def _reference_sparsegpt(kernel, batches, dtype, **kwargs):
    ref = SparseGPT(torch.from_numpy(kernel.T.copy()), dtype)
    for x in batches:
        ref.add_batch(torch.from_numpy(x).to(dtype))
    W = ref.fasterprune(**kwargs)
    return W.numpy().T, ref.mask.numpy().T


@pytest.mark.parametrize("seed,inputs,units,sparsity", [
    (0, 64, 48, 0.5),     # one block
    (1, 300, 24, 0.5),    # blocks of 128, 128 and 44
    (2, 256, 40, 0.7),
    (3, 160, 16, 0.25),
])
def test_sparsegpt_float64_matches_the_reference(seed, inputs, units, sparsity):
    kernel, batches = _layer(seed, inputs, units, tokens=200)
    expected, expected_mask = _reference_sparsegpt(kernel, batches, torch.float64, sparsity=sparsity)

    weights, mask = calibrated.sparsegpt(kernel, _ours_hessian(batches, "float64"), sparsity=sparsity)

    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-12)
    assert (weights[mask] == 0).all()
    assert not np.allclose(weights[~mask], kernel[~mask])  # the kept weights were updated


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_sparsegpt_n_of_m_matches_the_reference(n, m):
    kernel, batches = _layer(4, 256, 24, tokens=200)
    expected, expected_mask = _reference_sparsegpt(
        kernel, batches, torch.float64, sparsity=0, prunen=n, prunem=m
    )

    weights, mask = calibrated.sparsegpt(kernel, _ours_hessian(batches, "float64"), n_of_m=(n, m))

    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-12)
    assert (mask.reshape(-1, m, 24).sum(axis=1) == n).all()


def test_sparsegpt_dead_inputs_match_the_reference():
    kernel, batches = _layer(5, 96, 16, tokens=200, dead=(3, 50, 51))
    expected, expected_mask = _reference_sparsegpt(kernel, batches, torch.float64, sparsity=0.5)

    weights, mask = calibrated.sparsegpt(kernel, _ours_hessian(batches, "float64"), sparsity=0.5)

    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-12)
    assert (weights[[3, 50, 51]] == 0).all()


def test_sparsegpt_float32_stays_close_to_the_float32_reference():
    kernel, batches = _layer(6, 256, 32, tokens=200)
    kernel = kernel.astype(np.float32)
    batches = [x.astype(np.float32) for x in batches]
    expected, expected_mask = _reference_sparsegpt(kernel, batches, torch.float32, sparsity=0.5)

    weights, mask = calibrated.sparsegpt(kernel, _ours_hessian(batches, "float32"), sparsity=0.5)

    assert weights.dtype == np.float32
    np.testing.assert_array_equal(mask, expected_mask)
    # float32 rounding of different BLAS/LAPACK calls: measured <= 1e-6.
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-5)


def test_sparsegpt_reconstructs_the_layer_output_better_than_wanda_keeps_it():
    kernel, batches = _layer(7, 128, 32, tokens=200)
    x = np.concatenate([b.reshape(-1, 128) for b in batches])
    weights, mask = calibrated.sparsegpt(kernel, _ours_hessian(batches, "float64"), sparsity=0.5)
    wanda = np.where(calibrated.wanda_mask(kernel, _ours_norms(batches), sparsity=0.5), 0.0, kernel)
    masked = np.where(mask, 0.0, kernel)  # SparseGPT's mask without its update

    def error(w):
        return float(np.sum((x @ kernel - x @ w) ** 2))

    assert error(weights) < error(masked)
    assert error(weights) < error(wanda)


def test_running_hessian_is_two_x_transpose_x_over_samples():
    _, batches = _layer(8, 12, 3)
    x = np.concatenate([b.reshape(-1, 12) for b in batches])
    samples = sum(len(b) for b in batches)
    np.testing.assert_allclose(_ours_hessian(batches, "float64"), 2 * x.T @ x / samples, rtol=1e-12)
    np.testing.assert_allclose(_ours_norms(batches), np.sum(x**2, axis=0), rtol=1e-12)


def test_as_matrix_round_trips_and_puts_units_last():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(4, 3, 5))  # EinsumDense "abc,cde->abde"-like: units (1, 2)
    matrix = calibrated.as_matrix(kernel, (1, 2))
    assert matrix.shape == (4, 15)
    np.testing.assert_array_equal(matrix[2], kernel[2].ravel())
    np.testing.assert_array_equal(calibrated.from_matrix(matrix, kernel.shape, (1, 2)), kernel)
    conv = rng.normal(size=(3, 3, 4, 6))
    np.testing.assert_array_equal(calibrated.as_matrix(conv, (-1,)), conv.reshape(36, 6))


@pytest.mark.parametrize("kwargs,match", [
    ({}, "Expected `sparsity` or `n_of_m`"),
    ({"sparsity": 1.5}, "between 0 and 1"),
    ({"n_of_m": (3, 2)}, "0 <= n <= m"),
    ({"n_of_m": (2, 3)}, "not a multiple of m=3"),
    ({"n_of_m": "2:4"}, "pair"),
])
def test_bad_arguments_are_refused(kwargs, match):
    kernel, batches = _layer(9, 64, 4)
    with pytest.raises(PinError, match=match):
        calibrated.wanda_mask(kernel, _ours_norms(batches), **kwargs)
    with pytest.raises(PinError, match=match):
        calibrated.sparsegpt(kernel, _ours_hessian(batches, "float64"), **kwargs)


# -- ks.prune on models -----------------------------------------------------------

import keras  # noqa: E402
from keras import ops  # noqa: E402

import kerasurgery as ks  # noqa: E402
from kerasurgery import layers as layers_lib  # noqa: E402
from kerasurgery.errors import KerasurgeryError, LayerSelectionError  # noqa: E402
from kerasurgery.model import prune as prune_module  # noqa: E402
from kerasurgery.model.surgery import walk_layers  # noqa: E402
from tests.helpers import bits  # noqa: E402


def _np(x):
    return ops.convert_to_numpy(x)


def _mlp(seed: int = 0) -> keras.Model:
    """16 -> a(32) -> b(32) -> c(8) on a + b: a residual graph."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,), name="x")
    a = keras.layers.Dense(32, activation="relu", name="a")(inputs)
    b = keras.layers.Dense(32, activation="tanh", name="b")(a)
    c = keras.layers.Dense(8, name="c")(keras.layers.Add(name="sum")([a, b]))
    return keras.Model(inputs, c, name="mlp")


def _x(rows: int = 100, width: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, width)) * np.exp(rng.normal(size=width))).astype("float32")


def _pinned(model) -> dict:
    return {path: layer for path, layer in walk_layers(model) if layers_lib.is_pinned(layer)}


def _masks(model) -> dict[str, np.ndarray]:
    return {path: layer.pins().kernel for path, layer in _pinned(model).items()}


def _expected(method: str, kernel: np.ndarray, batches: list[np.ndarray], **rule):
    """What the algorithm gives for a kernel matrix from the layer's input batches."""
    if method == "wanda":
        norms = calibrated.RunningNorms(kernel.shape[0])
        for x in batches:
            norms.update(x)
        mask = calibrated.wanda_mask(kernel, norms.value, **rule)
        return np.where(mask, np.zeros((), kernel.dtype), kernel), mask
    hessian = calibrated.RunningHessian(kernel.shape[0], "float32")
    for x in batches:
        hessian.update(x, samples=len(x))
    return calibrated.sparsegpt(kernel, hessian.value, **rule)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_each_layer_is_pruned_from_inputs_that_passed_the_pruned_layers_before_it(method):
    model, x = _mlp(), _x()
    pruned = ks.prune(model, x, method=method, sparsity=0.5, batch_size=25)

    dense_inputs_differ = False
    for name in ("a", "b", "c"):
        # The layer's inputs in the pruned model, batch by batch.
        upstream = keras.Model(pruned.input, pruned.get_layer(name).input)
        batches = [_np(upstream(x[i:i + 25])) for i in range(0, 100, 25)]
        kernel = model.get_layer(name).get_weights()[0]
        weights, mask = _expected(method, kernel, batches, sparsity=0.5)
        layer = pruned.get_layer(name)
        np.testing.assert_array_equal(layer.pins().kernel, mask, err_msg=name)
        np.testing.assert_array_equal(bits(_np(layer.kernel)), bits(weights.astype("float32")), err_msg=name)
        # Statistics from the dense model's activations would prune otherwise.
        original = keras.Model(model.input, model.get_layer(name).input)
        dense = [_np(original(x[i:i + 25])) for i in range(0, 100, 25)]
        dense_inputs_differ |= not np.array_equal(_expected(method, kernel, dense, sparsity=0.5)[1], mask)
    assert dense_inputs_differ
    # The input model is left as it was.
    assert not _pinned(model)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), _mlp().get_weights()))


def test_wanda_keeps_the_kept_weights_and_pins_the_pruned_ones_at_zero():
    model, x = _mlp(), _x()
    pruned = ks.prune(model, x, method="wanda", sparsity=0.5)
    for name in ("a", "b", "c"):
        layer, kernel = pruned.get_layer(name), model.get_layer(name).get_weights()[0]
        mask = layer.pins().kernel
        assert (mask.sum(axis=0) == kernel.shape[0] // 2).all()
        np.testing.assert_array_equal(_np(layer.kernel)[~mask], kernel[~mask])
        assert (_np(layer.kernel)[mask] == 0).all()
        np.testing.assert_array_equal(layer.pins().bias, np.zeros(layer.bias.shape, bool))


def test_sparsegpt_result_trains_with_the_pruned_entries_exactly_zero():
    model, x = _mlp(), _x()
    pruned = ks.prune(model, x, method="sparsegpt", n_of_m=(2, 4))
    masks = _masks(pruned)
    pruned.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss="mse")
    pruned.fit(x, np.ones((100, 8), "float32"), epochs=2, verbose=0)
    for path, layer in _pinned(pruned).items():
        kernel = _np(layer.kernel)
        assert (kernel[masks[path]] == 0).all() and np.all(kernel[~masks[path]] != 0)
        assert (masks[path].reshape(-1, 4, kernel.shape[1]).sum(axis=1) == 2).all()


def _sequential(model: keras.Model) -> keras.Sequential:
    seq = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu", name="a"),
                            keras.layers.Dense(32, activation="tanh", name="b")], name="seq")
    for name in ("a", "b"):
        seq.get_layer(name).set_weights(model.get_layer(name).get_weights())
    return seq


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(32, activation="relu", name="a")
        self.second = keras.layers.Dense(32, activation="tanh", name="b")

    def call(self, x):
        return self.second(self.first(x))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sequential_nested_and_subclassed_models_prune_alike(method):
    model, x = _mlp(), _x()
    seq = _sequential(model)
    inputs = keras.Input((16,), name="x")
    nested = keras.Model(inputs, keras.layers.Dense(4, name="head")(seq(inputs)), name="outer")
    sub = _Subclassed()
    sub(x[:1])
    sub.first.set_weights(model.get_layer("a").get_weights())
    sub.second.set_weights(model.get_layer("b").get_weights())

    expected = _masks(ks.prune(seq, x, method=method, sparsity=0.5))
    assert list(expected) == ["a", "b"]
    got_nested = _masks(ks.prune(nested, x, method=method, sparsity=0.5, layers="seq/*"))
    assert list(got_nested) == ["seq/a", "seq/b"]
    # A subclassed model is one block: SparseGPT still goes layer by layer;
    # Wanda takes both layers' norms from the dense block (as `prune_wanda`).
    got_sub = _masks(ks.prune(sub, x, method=method, sparsity=0.5))
    dense_b = _expected("wanda", model.get_layer("b").get_weights()[0],
                        [_np(model.get_layer("a")(x[i:i + 32])) for i in range(0, 100, 32)],
                        sparsity=0.5)[1]
    for name in ("a", "b"):
        np.testing.assert_array_equal(got_nested[f"seq/{name}"], expected[name])
        if method == "wanda" and name == "b":
            np.testing.assert_array_equal(got_sub[name], dense_b)
            assert not np.array_equal(dense_b, expected["b"])
        else:
            np.testing.assert_array_equal(got_sub[name], expected[name])


class _TwoStep(keras.layers.Layer):
    """A custom block whose Dense layers are made in build(), the second one first."""

    def build(self, input_shape):
        self.second = keras.layers.Dense(12, name="second")
        self.first = keras.layers.Dense(24, activation="relu", name="first")
        self.first.build(input_shape)
        self.second.build((None, 24))

    def call(self, x):
        return self.second(self.first(x)) + self.second(self.first(-x))


def test_sparsegpt_goes_through_a_custom_block_in_call_order_layer_by_layer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,), name="x")
    model = keras.Model(inputs, _TwoStep(name="block")(inputs))
    x = _x()
    pruned = ks.prune(model, x, method="sparsegpt", sparsity=0.5, batch_size=50)

    block, original = pruned.get_layer("block"), model.get_layer("block")
    assert [p for p in _masks(pruned)] == ["block/second", "block/first"]  # model order
    # `first` is called twice per pass (on x and -x): both inputs count.
    first_in = [x[:50], -x[:50], x[50:], -x[50:]]
    weights, mask = _expected("sparsegpt", original.first.get_weights()[0], first_in, sparsity=0.5)
    np.testing.assert_array_equal(block.first.pins().kernel, mask)
    # `second` sees what the pruned `first` gives.
    second_in = [_np(block.first(b)) for b in first_in]
    weights, mask = _expected("sparsegpt", original.second.get_weights()[0], second_in, sparsity=0.5)
    np.testing.assert_array_equal(block.second.pins().kernel, mask)
    np.testing.assert_array_equal(bits(_np(block.second.kernel)), bits(weights))


def test_calibration_as_generator_dataset_pydataset_and_xy_pairs_prunes_the_same():
    model, x = _mlp(), _x()
    expected = _masks(ks.prune(model, x, sparsity=0.5, batch_size=20))

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return x[i * 20:(i + 1) * 20], None

    sources = {
        "generator": (x[i:i + 20] for i in range(0, 100, 20)),
        "xy pairs": ((x[i:i + 20], np.zeros(20)) for i in range(0, 100, 20)),
        "pydataset": Batches(),
        "dict": {"x": x},
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        sources["tf.data"] = tf.data.Dataset.from_tensor_slices(x).batch(20)
    for what, source in sources.items():
        got = _masks(ks.prune(model, source, sparsity=0.5, batch_size=20))
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=what)


def test_magnitude_prunes_as_the_magnitude_rules_do():
    model = _mlp()
    got = _masks(ks.prune(model, method="magnitude", sparsity=0.3))
    want = _masks(ks.freeze(model, {"*": ks.rules.smallest(0.3)}))
    got_nm = _masks(ks.prune(model, method="magnitude", n_of_m=(2, 4)))
    want_nm = _masks(ks.freeze(model, {"*": ks.rules.n_of_m(2, 4)}))
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(got[name], want[name])
        np.testing.assert_array_equal(got_nm[name], want_nm[name])


def test_earlier_pins_keep_their_values_through_sparsegpt():
    model, x = _mlp(), _x()
    mask = np.zeros((16, 32), bool)
    mask[0, :5] = True
    frozen = ks.freeze(model, {"a": ks.Pin(kernel=mask, kernel_value=0.5)})
    pruned = ks.prune(frozen, x, method="sparsegpt", sparsity=0.5)
    layer = pruned.get_layer("a")
    assert layer.pins().kernel[mask].all()
    assert (_np(layer.kernel)[mask] == 0.5).all()
    assert layer.pinned_kernel_values == "per_entry"
    assert (_np(layer.kernel)[layer.pins().kernel & ~mask] == 0).all()


def _gpt(num_layers: int = 2):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=64, num_layers=num_layers, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=12,
        name="gpt2_backbone",  # not gpt2_backbone_7 when other tests made backbones first
    )
    task = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    ids = np.random.default_rng(0).integers(1, 64, size=(12, 12)).astype("int32")
    return task, {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def test_kerashub_blocks_are_pruned_layer_by_layer_from_pruned_inputs():
    task, data = _gpt()
    pruned = ks.prune(task, data, method="wanda", n_of_m=(2, 4), layers="*transformer_layer_*",
                      batch_size=4)
    masks = _masks(pruned)
    names = ["self_attention/query", "self_attention/key", "self_attention/value",
             "self_attention/attention_output", "feedforward_intermediate_dense",
             "feedforward_output_dense"]
    assert list(masks) == [f"gpt2_backbone/transformer_layer_{i}/{n}" for i in (0, 1) for n in names]
    for path, mask in masks.items():
        layer = dict(walk_layers(pruned))[path]
        matrix = calibrated.as_matrix(mask, type(layer).pin_axes(layer, "kernel").units)
        assert (matrix.reshape(-1, 4, matrix.shape[1]).sum(axis=1) == 2).all(), path
    # Layer 1's query sees the output of the pruned layer 0, through its layer norm.
    backbone = pruned.get_layer("gpt2_backbone")
    upstream = keras.Model(backbone.input, backbone.get_layer("transformer_layer_0").output)
    block = backbone.get_layer("transformer_layer_1")
    batches = [
        _np(block._self_attention_layer_norm(upstream({k: v[i:i + 4] for k, v in data.items()})))
        for i in range(0, 12, 4)
    ]
    query = block._self_attention_layer._query_dense
    kernel = task.get_layer("gpt2_backbone").get_layer("transformer_layer_1") \
        ._self_attention_layer._query_dense.get_weights()[0]
    expected = _expected("wanda", kernel.reshape(16, -1), [b.reshape(-1, 16) for b in batches],
                         n_of_m=(2, 4))[1]
    np.testing.assert_array_equal(query.pins().kernel.reshape(16, -1), expected)
    assert not _pinned(task)
    out = _np(pruned(data)[:, -1])
    assert np.isfinite(out).all()


def test_einsum_and_convolution_inputs_become_the_rows_their_kernel_multiplies():
    rng = np.random.default_rng(0)
    cases = [
        (keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3), bias_axes="de"), (2, 5, 4)),
        (keras.layers.EinsumDense("abcd,cde->abe", output_shape=(None, 6), bias_axes="e"), (2, 5, 2, 3)),
        (keras.layers.EinsumDense("...b,bc->...c", output_shape=5), (2, 3, 4)),
        (keras.layers.Conv2D(6, 3, strides=2, padding="same", dilation_rate=1), (2, 9, 9, 4)),
        (keras.layers.Conv2D(5, (3, 2), padding="valid", dilation_rate=2), (2, 8, 8, 3)),
        (keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2), (2, 10, 3)),
        (keras.layers.Conv3D(3, 2, padding="same"), (1, 4, 4, 4, 2)),
    ]
    for layer, shape in cases:
        x = rng.normal(size=shape).astype("float32")
        out = _np(layer(x))
        pinned = ks.freeze(keras.Sequential([keras.Input(shape[1:]), layer]), {"*": ks.Pin()})
        layer = pinned.layers[0]
        units = type(layer).pin_axes(layer, "kernel").units
        kernel = calibrated.as_matrix(_np(layer.kernel), units)
        rows = _np(prune_module._rows(layer, x, kernel.shape[0]))
        bias = 0.0 if layer.bias is None else _np(layer.bias).reshape(-1)
        np.testing.assert_allclose(rows @ kernel + bias, out.reshape(-1, kernel.shape[1]),
                                   rtol=1e-5, atol=1e-5, err_msg=layer.name)


def test_a_cnn_prunes_its_convolutions_from_their_patches():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, name="depthwise"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, name="head"),
    ])
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 4)).astype("float32")
    pruned = ks.prune(model, x, method="sparsegpt", n_of_m=(2, 4), batch_size=8)
    masks = _masks(pruned)
    assert list(masks) == ["conv", "head"]  # the depthwise convolution has no patch matrix
    assert (masks["conv"].reshape(-1, 4, 8).sum(axis=1) == 2).all()
    patches = [_np(prune_module._rows(pruned.get_layer("conv"), x[i:i + 8], 36)) for i in (0, 8)]
    weights, mask = _expected("sparsegpt", model.get_layer("conv").get_weights()[0].reshape(36, 8),
                              patches, n_of_m=(2, 4))
    np.testing.assert_array_equal(masks["conv"].reshape(36, 8), mask)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"method": "obs", "sparsity": 0.5}, KerasurgeryError, "method among"),
    ({"sparsity": 0.5, "n_of_m": (2, 4)}, KerasurgeryError, "exactly one of"),
    ({}, KerasurgeryError, "exactly one of"),
    ({"sparsity": 2.0}, KerasurgeryError, "between 0 and 1"),
    ({"sparsity": 0.5, "layers": "nothing*"}, LayerSelectionError, "nothing"),
    ({"n_of_m": (2, 3)}, KerasurgeryError, "Layer 'a'.*multiple of m=3"),
    ({"sparsity": 0.5, "batch_size": 0}, KerasurgeryError, "batch_size"),
])
def test_bad_arguments_name_what_was_expected(kwargs, error, match):
    with pytest.raises(error, match=match):
        ks.prune(_mlp(), _x(), **kwargs)


def test_calibration_is_required_and_must_fit_the_model():
    with pytest.raises(KerasurgeryError, match="needs calibration"):
        ks.prune(_mlp(), method="sparsegpt", sparsity=0.5)
    with pytest.raises(KerasurgeryError, match="empty"):
        ks.prune(_mlp(), iter([]), sparsity=0.5)
    with pytest.raises(KerasurgeryError, match="lack the model's inputs"):
        task, data = _gpt(1)
        ks.prune(task, {"token_ids": data["token_ids"]}, sparsity=0.5)


def test_a_named_layer_without_input_vectors_is_refused_and_a_glob_skips_it():
    inputs = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(10, 8, name="embedding")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="dense")(h))
    ids = np.arange(20).reshape(4, 5) % 10
    with pytest.raises(LayerSelectionError, match="'embedding'.*index"):
        ks.prune(model, ids, sparsity=0.5, layers="embedding")
    with pytest.raises(LayerSelectionError, match="No layer that `prune` supports"):
        ks.prune(model, ids, sparsity=0.5, layers="emb*")
    assert list(_masks(ks.prune(model, ids, sparsity=0.5))) == ["dense"]


def test_prune_on_jax_and_torch_gives_the_tensorflow_masks(tmp_path):
    model, x = _mlp(), _x()
    model.save(tmp_path / "mlp.keras")
    np.save(tmp_path / "x.npy", x)
    expected = {m: _masks(ks.prune(model, x, method=m, sparsity=0.5)) for m in ("wanda", "sparsegpt")}
    script = textwrap.dedent(f"""
        import numpy as np, keras, kerasurgery as ks
        from kerasurgery.model.surgery import walk_layers
        model = keras.saving.load_model({str(tmp_path / "mlp.keras")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        out = {{}}
        for method in ("wanda", "sparsegpt"):
            pruned = ks.prune(model, x, method=method, sparsity=0.5)
            for name in ("a", "b", "c"):
                out[method + "/" + name] = pruned.get_layer(name).pins().kernel
        np.savez({str(tmp_path)!r} + "/" + keras.backend.backend() + ".npz", **out)
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    # Both at once: most of each run is importing its backend.
    runs = {
        backend: subprocess.Popen([sys.executable, "-c", script], env={**env, "KERAS_BACKEND": backend},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for backend in ("jax", "torch")
    }
    for backend, run in runs.items():
        _, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stderr[-3000:]
        got = np.load(tmp_path / f"{backend}.npz")
        for method, masks in expected.items():
            for name, mask in masks.items():
                np.testing.assert_array_equal(got[f"{method}/{name}"], mask,
                                              err_msg=f"{backend} {method} {name}")


def test_the_prune_command_writes_what_the_library_prunes(tmp_path, capsys):
    from kerasurgery.cli import main

    model, x = _mlp(), _x()
    model.save(tmp_path / "mlp.keras")
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    expected = _masks(ks.prune(model, x, method="sparsegpt", n_of_m=(2, 4)))

    code = main(["prune", str(tmp_path / "mlp.keras"), "--method", "sparsegpt", "--n-of-m", "2:4",
                 "--calibration", str(tmp_path / "x.npy"), "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["output"] == str(tmp_path / "mlp.pruned.keras")
    assert [layer["pinned_kernel"] for layer in document["layers"]] == [256, 512, 128]
    loaded = ks.load_model(tmp_path / "mlp.pruned.keras")
    for name, mask in expected.items():
        np.testing.assert_array_equal(loaded.get_layer(name).pins().kernel, mask)

    assert main(["prune", str(tmp_path / "mlp.keras"), "--sparsity", "0.5", "--layer", "a",
                 "--calibration", str(tmp_path / "x.npz"), "-o", str(tmp_path / "a.h5")]) == 0
    assert list(_masks(ks.load_model(tmp_path / "a.h5"))) == ["a"]
    capsys.readouterr()
    assert main(["prune", str(tmp_path / "mlp.keras"), "--sparsity", "0.5"]) == 2  # wanda needs data
    assert "--method wanda needs --calibration" in capsys.readouterr().err
    assert main(["prune", str(tmp_path / "mlp.keras"), "--calibration", str(tmp_path / "x.npy")]) == 2
    assert main(["prune", str(tmp_path / "mlp.keras"), "--sparsity", "0.5", "--calibration",
                 str(tmp_path / "mlp.keras"), "-o", str(tmp_path / "b.keras")]) == 1
    assert "not a .npy or .npz" in capsys.readouterr().err
    assert main(["prune", str(tmp_path / "mlp.keras"), "--method", "magnitude", "--sparsity", "0.5",
                 "-o", str(tmp_path / "m.keras")]) == 0
