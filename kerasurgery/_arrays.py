"""The few array operations that pin rules and plans are written against.

A rule's selection (`rules.zeros`, `below`, `smallest`, `n_of_m`, `inputs`,
`units`, ...) and a plan's merging of pins are written once, against a
namespace `xp` of the operations below. `HOST` runs them in numpy, on host
copies of the weights: the path of a model on one host, of the command line
and of the TF-free file rewrite. `kerasurgery.model.device.Device` runs the
same code with `keras.ops` on the live tensors, where a weight's shards live
(a weight split across processes under `keras.distribution`), so a rule's
device mask equals its host mask bit for bit by construction: nothing of the
weight's size is gathered on one host.

Every operation keeps the layout of the weight it is given: elementwise
operations, reductions to one number (`count`, `any`, `same_bits`) that come
back to the host as Python values, and small host arrays broadcast against
the weight (`broadcast_like`). Two operations have a host and a device form
with one meaning, documented here and tested equal:

* `first_true(mask, n)`: the first `n` True entries of `mask` in flat (C)
  order. The host reads their indices; the device finds the flat bound by
  counting (a binary search over the index, each step one reduction), since
  flattening a sharded array would move its shards.
* `same_bits(values, mask)`: the bit pattern every entry at `mask` has, or
  `None` when they differ.

This module needs numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Signed integers of each float width: bit patterns compared for equality.
_BITS = {2: np.int16, 4: np.int32, 8: np.int64}


class Host:
    """The namespace on numpy arrays (host copies of the weights)."""

    host = True

    # -- what an array is ----------------------------------------------------

    def dtype(self, x: Any) -> np.dtype:
        return np.asarray(x).dtype if not hasattr(x, "dtype") else np.dtype(x.dtype)

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(np.shape(x))

    def put(self, x: Any, like: Any) -> Any:
        """A host array `x` of `like`'s shape, where `like` lives."""
        return np.asarray(x)

    def scalar(self, value: Any, dtype: Any) -> Any:
        return np.asarray(value, dtype)

    # -- elementwise -----------------------------------------------------------

    def key(self, w: Any) -> Any:
        """|w| in the weight's dtype, NaN as +inf: what the magnitude rules rank.

        -0.0 and 0.0 are the same key; float16 and bfloat16 magnitudes are
        ranked in their own dtype, which orders them exactly.
        """
        key = np.abs(np.asarray(w))
        return np.where(np.isnan(key), np.asarray(np.inf, key.dtype), key)

    def abs(self, x: Any) -> Any:
        return np.abs(x)

    def equal(self, x: Any, y: Any) -> Any:
        return np.equal(x, y)

    def less(self, x: Any, y: Any) -> Any:
        return np.less(x, y)

    def less_equal(self, x: Any, y: Any) -> Any:
        return np.less_equal(x, y)

    def add(self, x: Any, y: Any) -> Any:
        return np.add(x, y)

    def logical_and(self, x: Any, y: Any) -> Any:
        return np.logical_and(x, y)

    def logical_or(self, x: Any, y: Any) -> Any:
        return np.logical_or(x, y)

    def where(self, c: Any, x: Any, y: Any) -> Any:
        return np.where(c, x, y)

    def cast(self, x: Any, dtype: Any) -> Any:
        return np.asarray(x).astype(dtype, copy=False)

    def zeros_mask(self, like: Any) -> Any:
        return np.zeros(np.shape(like), bool)

    def broadcast_like(self, small: np.ndarray, like: Any) -> Any:
        """`small` (a host array that broadcasts to `like`'s shape) at `like`'s shape."""
        return np.ascontiguousarray(np.broadcast_to(small, np.shape(like)))

    # -- shape -----------------------------------------------------------------

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return np.reshape(x, tuple(shape))

    def moveaxis(self, x: Any, source: Sequence[int], destination: Sequence[int]) -> Any:
        return np.moveaxis(x, tuple(source), tuple(destination))

    def take(self, x: Any, index: int) -> Any:
        """`x[..., index]`."""
        return x[..., index]

    def stack(self, xs: Sequence[Any]) -> Any:
        """Stacked along a new last axis."""
        return np.stack(xs, axis=-1)

    def contiguous(self, x: Any) -> Any:
        return np.ascontiguousarray(x)

    # -- to the host, one number -------------------------------------------------

    def count(self, mask: Any) -> int:
        return int(np.count_nonzero(mask))

    def any(self, mask: Any) -> bool:
        return bool(np.any(mask))

    def first_true(self, mask: Any, n: int) -> Any:
        mask = np.asarray(mask)
        chosen = np.zeros(mask.size, bool)
        chosen[np.flatnonzero(mask)[:n]] = True
        return chosen.reshape(mask.shape)

    def same_bits(self, values: Any, mask: Any) -> np.ndarray | None:
        """The one value (a 0-d array) every entry of `values` at `mask` holds, bit for bit; else `None`."""
        values = np.asarray(values)
        first = int(np.argmax(mask))
        # Whole-array comparisons: boolean indexing of a 50M kernel costs
        # several times more.
        b = np.ascontiguousarray(values).view(f"u{values.dtype.itemsize}")
        differs = np.not_equal(b, b.flat[first])
        np.logical_and(differs, mask, out=differs)
        return None if differs.any() else np.asarray(values.flat[first])


HOST = Host()


def bits_dtype(dtype: Any) -> Any:
    """The signed integer of a float dtype's width."""
    return _BITS[np.dtype(dtype).itemsize]


def float_of_bits(bits: int, dtype: Any) -> np.ndarray:
    """The 0-d array of `dtype` whose bit pattern is `bits`."""
    return np.asarray(bits, bits_dtype(dtype)).view(np.dtype(dtype))


def bits_of(value: Any, dtype: Any) -> int:
    """The bit pattern of `value` in `dtype`, as a Python integer."""
    return int(np.asarray(value, dtype).view(bits_dtype(dtype)))
