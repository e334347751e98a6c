"""One-shot pruning from calibration inputs: Wanda and SparseGPT, in numpy only.

Both look at what a layer's kernel multiplies. A kernel is seen as a matrix
`W` of shape (inputs, units): Keras' own orientation, the transpose of the
papers' torch `weight` (out, in). Rows are the inputs (a Dense kernel's rows; a
convolution's `kh * kw * in` patch entries; EinsumDense's contracted axes,
flattened), columns the output units (`as_matrix`). `X` is the matrix of the
layer's inputs, one row per token (patch, sample), one column per input.

What a layer's calibration leaves behind is small and accumulated as it
arrives, never the stacked inputs: the squared L2 norm of every input column
for Wanda (`RunningNorms`), the Hessian `2 X^T X / n` for SparseGPT
(`RunningHessian`). The model-level driver that feeds them, block by block,
is `kerasurgery.model.prune`.

Each algorithm is one function, transcribed from the authors' code (Wanda:
`lib/prune.py` and `lib/layerwrapper.py` of locuslab/wanda; SparseGPT:
`sparsegpt.py`, `SparseGPT.add_batch` and `fasterprune`, of IST-DASLab/sparsegpt)
and tested against a transcription of that code run in PyTorch
(tests/test_calibrated.py). This module needs numpy only.
"""

from __future__ import annotations

import numpy as np

from kerasurgery.errors import PinError


class RunningNorms:
    """The squared L2 norm of every input over the calibration rows seen so far (Wanda).

    Accumulated in float64 as batches arrive; `value` is `||X_j||_2^2` per
    input `j`. (The reference keeps the mean over samples; a constant factor
    does not change which entries of a unit rank lowest.)
    """

    def __init__(self, inputs: int) -> None:
        self.value = np.zeros(inputs, np.float64)
        self.rows = 0

    def update(self, x: np.ndarray) -> None:
        """Adds the rows of `x`, shape (rows, inputs)."""
        x = np.asarray(x, dtype=np.float64)
        self.value += np.einsum("ij,ij->j", x, x)
        self.rows += x.shape[0]


class RunningHessian:
    """The Hessian `H = 2 X^T X / n` of the layer-wise squared error, kept running (SparseGPT).

    As the reference's `add_batch`: on a batch of `b` samples, `H *= n / (n + b)`,
    `n += b`, `H += (2 / n) x^T x`, so that `H` is the sum over every row seen
    so far divided by the number of samples `n`, without holding them. The
    scale matters where inputs are dead (their `H_ii` is set to 1) and for
    the dampening, so `n` counts what the reference counts: sequences
    (images) for a layer whose input has a sequence (spatial) axis.

    Args:
        inputs: The number of inputs (rows of the kernel matrix).
        dtype: float32 (as the reference) or float64.
    """

    def __init__(self, inputs: int, dtype: str = "float32") -> None:
        self.value = np.zeros((inputs, inputs), dtype)
        self.samples = 0

    def update(self, x: np.ndarray, samples: int | None = None) -> None:
        """Adds the rows of `x`, shape (rows, inputs), from `samples` samples (default: one a row)."""
        x = np.asarray(x, dtype=self.value.dtype)
        samples = x.shape[0] if samples is None else samples
        if not samples:
            return
        self.value *= self.samples / (self.samples + samples)
        self.samples += samples
        x = x * np.sqrt(2.0 / self.samples).astype(x.dtype)
        self.value += x.T @ x


def wanda_mask(
    kernel: np.ndarray,
    norms: np.ndarray,
    *,
    sparsity: float | None = None,
    n_of_m: tuple[int, int] | None = None,
) -> np.ndarray:
    """The Wanda mask of a kernel matrix: True where `|W_ij| * ||X_i||_2` ranks lowest.

    Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for
    Large Language Models" (ICLR 2024, arXiv:2306.11695), Eq. (1): the score of
    weight (i, j) is `|W_ij| * ||X_i||_2`, the L2 norm of input `i` over every
    calibration token; entries are compared within each output unit (a column
    here, a row of the paper's `W`). Unstructured: the `int(inputs *
    sparsity)` lowest scores of every unit (stable sort, so ties go to the
    lower input index). n:m: the `n` lowest of every `m` consecutive inputs of
    every unit. The kept weights are not changed.

    Args:
        kernel: The kernel matrix, (inputs, units).
        norms: `||X_i||_2^2` per input (`RunningNorms.value`).
        sparsity: The fraction of every unit's inputs to prune.
        n_of_m: `(n, m)` instead of `sparsity`.

    Returns:
        A boolean mask of `kernel`'s shape, True = pruned.
    """
    kernel = np.asarray(kernel)
    score = np.abs(kernel.astype(np.float64)) * np.sqrt(np.asarray(norms, np.float64))[:, None]
    mask = np.zeros(score.shape, dtype=bool)
    if n_of_m is not None:
        n, m = checked_n_of_m(n_of_m, kernel.shape[0])
        if n:
            # Per unit, groups of m consecutive inputs (lib/prune.py: topk over
            # W_metric[:, ii:ii+m], largest=False).
            groups = score.reshape(-1, m, score.shape[1])
            lowest = np.argsort(groups, axis=1, kind="stable")[:, :n]
            np.put_along_axis(mask.reshape(groups.shape), lowest, True, axis=1)
        return mask
    count = int(score.shape[0] * _checked_sparsity(sparsity))
    lowest = np.argsort(score, axis=0, kind="stable")[:count]
    np.put_along_axis(mask, lowest, True, axis=0)
    return mask


def sparsegpt(
    kernel: np.ndarray,
    hessian: np.ndarray,
    *,
    sparsity: float | None = None,
    n_of_m: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT: prune a kernel matrix and update its kept weights to reconstruct its output.

    Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
    Pruned in One-Shot" (ICML 2023, arXiv:2301.00774), Algorithm 1, as
    `SparseGPT.fasterprune` of IST-DASLab/sparsegpt computes it, with the
    paper's `W` (units, inputs) transposed to Keras' (inputs, units):

    1. Inputs whose Hessian diagonal is 0 (never active) get `H_ii = 1` and
       their weights set to 0; `H` is dampened by `percdamp` times the mean
       of its diagonal.
    2. `U`: the upper Cholesky factor of `H^-1` (`U^T U = H^-1`).
    3. Inputs are visited in blocks of `blocksize`. Unstructured: in each
       block, the entries with `w^2 / U_ii^2` at or below the
       `int(size * sparsity)`-th smallest (0-based) of the block are pruned
       (the reference's `<=`: one entry more than the fraction, more with
       ties; where the reference prunes one entry at sparsity 0, this prunes
       none). n:m: at every `m`-th input, the `n` entries of smallest
       `w^2 / U_ii^2` among the next `m` inputs of each unit, using the
       weights as updated so far.
    4. Input by input, the pruned entries are set to 0 and their error
       `(w - q) / U_ii` is spread over the remaining inputs of the block
       (the OBS update `-err * U_i,k`), then over the inputs after the block
       at once (lazy batch update).

    Computes in `hessian`'s dtype (float32 as the reference, or float64).

    Args:
        kernel: The kernel matrix, (inputs, units).
        hessian: `2 X^T X / n`, (inputs, inputs) (`RunningHessian.value`).
        sparsity: The fraction of each block's entries to prune.
        n_of_m: `(n, m)` instead of `sparsity`; `m` must divide `blocksize`.
        blocksize: Inputs per block (128 in the paper).
        percdamp: The dampening, relative to the mean of H's diagonal.

    Returns:
        `(weights, mask)`: the updated kernel matrix (pruned entries 0.0) in
        the Hessian's dtype, and the boolean mask of pruned entries.

    Raises:
        PinError: a bad sparsity or n:m, or a Hessian that is not positive
            definite after dampening.
    """
    dtype = np.asarray(hessian).dtype
    W = np.array(kernel, dtype=dtype)  # (inputs, units): the reference's W.T
    inputs = W.shape[0]
    if n_of_m is not None:
        n, m = checked_n_of_m(n_of_m, inputs)
        if blocksize % m:
            raise PinError(f"SparseGPT's n:m needs m to divide the block size {blocksize}. Received: m={m}")
    else:
        n, m = 0, 0
        sparsity = _checked_sparsity(sparsity)
    H = np.array(hessian, dtype=dtype)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[dead, :] = 0
    diagonal = np.arange(inputs)
    H[diagonal, diagonal] += percdamp * np.mean(np.diag(H))
    try:
        # cholesky -> cholesky_inverse -> cholesky(upper=True) of the reference.
        lower = np.linalg.cholesky(H)
        lower_inv = np.linalg.inv(lower)
        U = np.linalg.cholesky(lower_inv.T @ lower_inv).T
    except np.linalg.LinAlgError:
        raise PinError(
            "SparseGPT: the Hessian of the calibration inputs is not positive "
            "definite even after dampening; give more calibration data."
        ) from None
    mask = np.zeros(W.shape, dtype=bool)
    zero = np.zeros((), dtype)
    for i1 in range(0, inputs, blocksize):
        i2 = min(i1 + blocksize, inputs)
        W1 = W[i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = np.diag(U1)[:, None]
        if not m:
            if sparsity == 0:
                mask1 = np.zeros(W1.shape, dtype=bool)
            else:
                score = W1**2 / d1**2
                flat = np.sort(score, axis=None)
                mask1 = score <= flat[min(int(score.size * sparsity), score.size - 1)]
        else:
            mask1 = np.zeros(W1.shape, dtype=bool)
        for i in range(i2 - i1):
            w = W1[i]
            d = U1[i, i]
            if m and i % m == 0:
                score = W1[i:i + m] ** 2 / d1[i:i + m] ** 2
                lowest = np.argsort(score, axis=0, kind="stable")[:n]
                np.put_along_axis(mask1[i:i + m], lowest, True, axis=0)
            q = np.where(mask1[i], zero, w)
            Q1[i] = q
            err = (w - q) / d
            W1[i:] -= np.outer(U1[i, i:], err)
            Err1[i] = err
        W[i1:i2] = Q1
        mask[i1:i2] = mask1
        W[i2:] -= U[i1:i2, i2:].T @ Err1
    return W, mask


def as_matrix(weight: np.ndarray, units: tuple[int, ...]) -> np.ndarray:
    """A kernel as the matrix the algorithms see: (inputs, units).

    The rows are the kernel's other axes flattened in C order (a Conv2D
    kernel (kh, kw, in, out): `kh * kw * in` rows; EinsumDense: its
    contracted axes), the columns its `units` axes flattened in C order.
    """
    weight = np.asarray(weight)
    axes = tuple(a % weight.ndim for a in units)
    rest = [a for a in range(weight.ndim) if a not in axes]
    moved = np.moveaxis(weight, axes, range(len(rest), weight.ndim))
    columns = int(np.prod([weight.shape[a] for a in axes], dtype=int))
    return moved.reshape(-1, columns)


def from_matrix(matrix: np.ndarray, shape: tuple[int, ...], units: tuple[int, ...]) -> np.ndarray:
    """The inverse of `as_matrix`: the matrix back in the kernel's `shape`."""
    ndim = len(shape)
    axes = tuple(a % ndim for a in units)
    rest = [a for a in range(ndim) if a not in axes]
    moved = np.asarray(matrix).reshape([shape[a] for a in rest + list(axes)])
    return np.ascontiguousarray(np.moveaxis(moved, range(len(rest), ndim), axes))


def _checked_sparsity(sparsity: object) -> float:
    from kerasurgery.pruning import checked_fraction

    if sparsity is None:
        raise PinError("Expected `sparsity` or `n_of_m`. Received neither.")
    return checked_fraction(sparsity, "sparsity")


def checked_n_of_m(n_of_m: object, inputs: int) -> tuple[int, int]:
    """`(n, m)` as integers with `0 <= n <= m`, `m >= 1`, `m` dividing `inputs`; or a clear error."""
    try:
        n, m = n_of_m  # type: ignore[misc]
    except (TypeError, ValueError):
        raise PinError(f"Expected `n_of_m` as a pair (n, m). Received: {n_of_m!r}") from None
    if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in (n, m)):
        raise PinError(f"Expected integers n and m. Received: n_of_m={n_of_m!r}")
    n, m = int(n), int(m)
    if m < 1 or not 0 <= n <= m:
        raise PinError(f"Expected 0 <= n <= m and m >= 1. Received: n={n}, m={m}")
    if inputs % m:
        raise PinError(
            f"n:m pruning needs the inputs in whole groups: {inputs} inputs is "
            f"not a multiple of m={m}."
        )
    return n, m
