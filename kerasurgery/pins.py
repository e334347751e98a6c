"""`Pin` and the rules that build pin masks from a layer's weights.

A rule is a callable that takes a layer's current (effective) kernel and bias
as numpy arrays and returns the `Pin` for that layer. Scripts pass rules to
`kerasurgery.freeze`; the command line builds the same rules from its flags, so
both share one implementation. This module needs numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, Union

import numpy as np

from kerasurgery.errors import PinError

Value = Union[float, np.ndarray, None]


@dataclasses.dataclass(frozen=True)
class Pin:
    """What to pin in one layer.

    Args:
        kernel: Boolean array of the kernel's shape, True = pinned; `None` pins
            nothing in the kernel.
        bias: Boolean array of the bias's shape, True = pinned; `None` pins
            nothing in the bias.
        kernel_value: `None` keeps the current values of the pinned entries; a
            scalar or an array of the kernel's shape pins them to those values.
        bias_value: The same for the bias.

    Example:

    ```python
    mask = np.array([[True, False], [False, False]])
    model = kerasurgery.freeze(model, {"dense": Pin(kernel=mask, kernel_value=0.0)})
    ```
    """

    kernel: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel_value: Value = None
    bias_value: Value = None


class Rule(Protocol):
    """Builds a `Pin` from a layer's current kernel and bias (numpy arrays)."""

    def __call__(self, kernel: np.ndarray, bias: np.ndarray | None) -> Pin: ...


@dataclasses.dataclass(frozen=True)
class _Rule:
    """A named rule: `select(weight)` gives the mask of one weight."""

    name: str
    select: Any
    bias: bool | None = False  # None: the bias too, when the layer has one
    value: Value = None

    def __call__(self, kernel: np.ndarray, bias: np.ndarray | None) -> Pin:
        kernel_mask = _as_mask(self.select(kernel, "kernel"), kernel.shape, self.name)
        bias_mask = None
        if self.bias or (self.bias is None and bias is not None):
            if bias is None:
                raise PinError(f"Rule {self.name!r} targets the bias, but the layer has none.")
            bias_mask = _as_mask(self.select(bias, "bias"), bias.shape, self.name)
        value = self.value
        return Pin(
            kernel=kernel_mask,
            bias=bias_mask,
            kernel_value=value,
            bias_value=value if bias_mask is not None else None,
        )


def _as_mask(mask: Any, shape: tuple, rule: str) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise PinError(
            f"Rule {rule!r} built a mask of the wrong shape. "
            f"Expected: {tuple(shape)}. Received: {mask.shape}"
        )
    return mask


def zeros(*, bias: bool = False, value: Value = None) -> Rule:
    """Pins every entry that is exactly zero (a pruned model's zeros).

    Args:
        bias: Apply the rule to the bias too.
        value: `None` keeps the zeros; a number pins them to it instead.
    """
    return _Rule("zeros", lambda w, _: w == 0, bias, value)


def below(threshold: float, *, bias: bool = False, value: Value = None) -> Rule:
    """Pins every entry with `|w| < threshold` (magnitude pruning).

    Raises:
        PinError: if `threshold` is negative or not finite.
    """
    threshold = _finite(threshold, "threshold")
    if threshold < 0:
        raise PinError(f"Expected a threshold >= 0. Received: {threshold}")
    return _Rule(f"below {threshold}", lambda w, _: np.abs(w) < threshold, bias, value)


def fraction(f: float, *, seed: int, bias: bool = False, value: Value = None) -> Rule:
    """Pins a random fraction `f` of the entries, the same ones for the same seed.

    Exactly `round(f * size)` entries of each weight are pinned.
    """
    f = _finite(f, "fraction")
    if not 0.0 <= f <= 1.0:
        raise PinError(f"Expected a fraction between 0 and 1. Received: {f}")

    def select(w: np.ndarray, which: str) -> np.ndarray:
        # One stream per weight, so pinning the bias too leaves the kernel's
        # choice unchanged.
        rng = np.random.default_rng([seed, 0 if which == "kernel" else 1])
        chosen = rng.permutation(w.size)[: round(f * w.size)]
        mask = np.zeros(w.size, dtype=bool)
        mask[chosen] = True
        return mask.reshape(w.shape)

    return _Rule(f"fraction {f} (seed {seed})", select, bias, value)


def connections(matrix: Any, *, value: Value = 0.0) -> Rule:
    """Pins the kernel entries whose connection is absent (0) in `matrix`.

    Args:
        matrix: Array of the kernel's shape; 1 = trainable connection, 0 = no
            connection (pinned). Only 0 and 1 (or booleans) are accepted.
        value: What an absent connection is pinned to (default 0.0); `None`
            keeps the current weight.
    """
    matrix = np.asarray(matrix)
    if matrix.dtype != np.bool_:
        if matrix.size and not np.isin(matrix, (0, 1)).all():
            raise PinError("A connections matrix may hold only 0 and 1.")
    pinned = matrix == 0

    def select(w: np.ndarray, _: str) -> np.ndarray:
        if pinned.shape != w.shape:
            raise PinError(
                "The connections matrix does not fit the kernel. "
                f"Expected: {w.shape}. Received: {pinned.shape}"
            )
        return pinned

    return _Rule("connections", select, False, value)


def entries(
    kernel: Iterable[Sequence[int]] = (), *, bias: Iterable[int] = (), value: Value = None
) -> Rule:
    """Pins single entries: kernel `(row, column)` pairs and bias indices."""
    kernel_index = [tuple(int(i) for i in pair) for pair in kernel]
    bias_index = [int(i) for i in bias]
    for pair in kernel_index:
        if len(pair) != 2:
            raise PinError(f"Expected a kernel index as (row, column). Received: {pair}")

    def select(w: np.ndarray, which: str) -> np.ndarray:
        mask = np.zeros(w.shape, dtype=bool)
        chosen = kernel_index if which == "kernel" else [(i,) for i in bias_index]
        for index in chosen:
            mask[_checked_index(index, w.shape, which)] = True
        return mask

    return _Rule("entries", select, bool(bias_index), value)


def inputs(rows: Iterable[int], *, value: Value = None) -> Rule:
    """Pins whole kernel rows: every connection from the given input features."""
    rows = [int(r) for r in rows]

    def select(w: np.ndarray, _: str) -> np.ndarray:
        mask = np.zeros(w.shape, dtype=bool)
        for r in rows:
            mask[_checked_index((r,), w.shape[:1], "input")] = True
        return mask

    return _Rule("inputs", select, False, value)


def units(columns: Iterable[int], *, value: Value = None, bias: bool | None = None) -> Rule:
    """Pins whole output units: kernel columns and their bias entries.

    Args:
        columns: Output unit indices.
        value: `None` keeps current values; a number pins them to it.
        bias: `None` (default) pins the bias entries when the layer has a bias;
            `True` requires one; `False` leaves the bias free.
    """
    columns = [int(c) for c in columns]

    def select(w: np.ndarray, which: str) -> np.ndarray:
        mask = np.zeros(w.shape, dtype=bool)
        n = w.shape[-1]
        for c in columns:
            _checked_index((c,), (n,), "unit")
            mask[..., c] = True
        return mask

    return _Rule("units", select, bias, value)


def _checked_index(index: tuple, shape: tuple, what: str) -> tuple:
    if len(index) != len(shape) or not all(-n <= i < n for i, n in zip(index, shape)):
        raise PinError(
            f"The {what} index {index if len(index) > 1 else index[0]} is out of "
            f"range for shape {tuple(shape)}."
        )
    return index


def _finite(x: Any, what: str) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise PinError(f"Expected a number for {what}. Received: {x!r}") from None
    if not np.isfinite(x):
        raise PinError(f"Expected a finite {what}. Received: {x}")
    return x
