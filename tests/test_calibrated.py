"""Wanda and SparseGPT against transcriptions of the authors' code, and `ks.prune` on models.

The references below are the papers' PyTorch code, transcribed line by line
(only the `.float()` casts became `.to(dtype)`, so they run in float64 too,
and SparseGPT's per-block masks are collected to be compared):

- Wanda: `WrappedGPT.add_batch` (lib/layerwrapper.py) and the mask of
  `prune_wanda` (lib/prune.py) of locuslab/wanda at 8e8fc87;
- SparseGPT: `SparseGPT.add_batch` and `fasterprune` (sparsegpt.py) of
  IST-DASLab/sparsegpt at 147d215.

They work on torch's `W` of shape (out, in); Keras kernels are (in, out).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kerasurgery import calibrated
from kerasurgery.errors import PinError

torch = pytest.importorskip("torch")


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


class _SparseGPT:
    """sparsegpt.py of IST-DASLab/sparsegpt (nn.Linear; no quantizer, no DEBUG)."""

    def __init__(self, W, dtype) -> None:
        self.W = W.clone()
        self.rows, self.columns = W.shape
        self.dtype = dtype
        self.H = torch.zeros((self.columns, self.columns), dtype=dtype)
        self.nsamples = 0

    def add_batch(self, inp) -> None:
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.to(self.dtype)
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01):
        W = self.W.clone().to(self.dtype)
        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        mask = None
        masks = []  # added: the mask of every block, to compare

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prunen == 0:
                if mask is not None:
                    mask1 = mask[:, i1:i2]
                else:
                    tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                    thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                    mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(W1) == 1

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)

                q = w.clone()
                q[mask1[:, i]] = 0

                Q1[:, i] = q

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            masks.append(mask1)

            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        return W, torch.cat(masks, dim=1)


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
    ref = _SparseGPT(torch.from_numpy(kernel.T.copy()), dtype)
    for x in batches:
        ref.add_batch(torch.from_numpy(x).to(dtype))
    W, mask = ref.fasterprune(**kwargs)
    return W.numpy().T, mask.numpy().T


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
