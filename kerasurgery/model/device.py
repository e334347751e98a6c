"""Pins planned where a weight's shards live: the array namespace on `keras.ops`.

Under `keras.distribution.initialize` (JAX, several processes) a weight laid
out across the processes' devices cannot be read whole by any of them.
`freeze(..., in_place=True)` plans such a layer on its live tensors instead
of host copies: the built-in rules and the plan's merging are written once
against an array namespace (`kerasurgery._arrays`), and `Device` runs them
with `keras.ops`. Every operation is elementwise on the weight (its result
is laid out like the weight), a reduction to one number that each process
reads back, or a small host array broadcast against the weight; nothing of
the weight's size is gathered on one host, and every process runs the same
operations in the same order, as the distribution needs. The masks are
equal, bit for bit, to those the host path computes from the same weights
(tests/test_device.py).

Nothing here is JAX-specific: on one process, on any backend, `freeze` can
be made to plan this way (the tests do so) and pins the same entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from kerasurgery import _arrays
from kerasurgery import layers as layers_lib
from kerasurgery._plan import PinPlan


class Device:
    """The namespace of `kerasurgery._arrays.Host`, on live tensors with `keras.ops`."""

    host = False

    # -- what an array is ----------------------------------------------------

    def dtype(self, x: Any) -> np.dtype:
        if isinstance(x, (np.ndarray, np.generic)):
            return x.dtype
        name = keras.backend.standardize_dtype(x.dtype)
        if name == "bfloat16":
            import ml_dtypes  # a dependency of Keras

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(name)

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(int(n) for n in x.shape)

    def put(self, x: Any, like: Any) -> Any:
        """A host array `x` of `like`'s shape, laid out as `like` is (it follows `like`'s sharding)."""
        x = np.asarray(x)
        laid_out = ops.zeros_like(like, dtype="bool")
        if x.dtype == np.bool_:
            return ops.logical_or(laid_out, x)
        return ops.where(laid_out, like, x.astype(self.dtype(like)))

    def scalar(self, value: Any, dtype: Any) -> Any:
        return ops.convert_to_tensor(np.asarray(value, dtype))

    # -- elementwise -----------------------------------------------------------

    def key(self, w: Any) -> Any:
        key = ops.abs(w)
        return ops.where(ops.isnan(key), self.scalar(np.inf, self.dtype(w)), key)

    def abs(self, x: Any) -> Any:
        return ops.abs(x)

    def equal(self, x: Any, y: Any) -> Any:
        return ops.equal(x, y)

    def less(self, x: Any, y: Any) -> Any:
        return ops.less(x, y)

    def less_equal(self, x: Any, y: Any) -> Any:
        return ops.less_equal(x, y)

    def add(self, x: Any, y: Any) -> Any:
        return ops.add(x, y)

    def logical_and(self, x: Any, y: Any) -> Any:
        return ops.logical_and(x, y)

    def logical_or(self, x: Any, y: Any) -> Any:
        return ops.logical_or(x, y)

    def where(self, c: Any, x: Any, y: Any) -> Any:
        return ops.where(c, x, y)

    def cast(self, x: Any, dtype: Any) -> Any:
        return ops.cast(x, keras.backend.standardize_dtype(np.dtype(dtype).name))

    def zeros_mask(self, like: Any) -> Any:
        return ops.zeros_like(like, dtype="bool")

    def broadcast_like(self, small: np.ndarray, like: Any) -> Any:
        return ops.logical_or(self.zeros_mask(like), small)

    # -- shape -----------------------------------------------------------------

    def reshape(self, x: Any, shape: Sequence[int]) -> Any:
        return ops.reshape(x, tuple(shape))

    def moveaxis(self, x: Any, source: Sequence[int], destination: Sequence[int]) -> Any:
        return ops.moveaxis(x, tuple(source), tuple(destination))

    def take(self, x: Any, index: int) -> Any:
        return ops.take(x, index, axis=-1)

    def stack(self, xs: Sequence[Any]) -> Any:
        return ops.stack(list(xs), axis=-1)

    def contiguous(self, x: Any) -> Any:
        return x

    # -- to the host, one number -------------------------------------------------

    def count(self, mask: Any) -> int:
        if isinstance(mask, (np.ndarray, list, tuple)):
            return int(np.count_nonzero(mask))
        # int32: a weight of fewer than 2**31 entries (JAX runs without int64).
        return int(ops.convert_to_numpy(ops.sum(ops.cast(mask, "int32"))))

    def any(self, mask: Any) -> bool:
        if isinstance(mask, (np.ndarray, list, tuple)):
            return bool(np.any(mask))
        return bool(ops.convert_to_numpy(ops.any(mask)))

    def first_true(self, mask: Any, n: int) -> Any:
        """The first `n` True entries of `mask` in flat (C) order, found by counting.

        The smallest flat bound with `n` True entries before it, by a binary
        search over the flat index; "before" is compared axis by axis with
        small host ranges, so nothing is flattened and every full-size
        operand is laid out like `mask`.
        """
        shape = self.shape(mask)
        low, high = 0, int(np.prod(shape, dtype=np.int64))
        while low < high:
            middle = (low + high) // 2
            if self.count(self._before(mask, shape, middle)) >= n:
                high = middle
            else:
                low = middle + 1
        return self._before(mask, shape, low)

    def _before(self, mask: Any, shape: tuple[int, ...], bound: int) -> Any:
        """`mask` where the flat index is below `bound`: index < bound, compared axis by axis."""
        if bound >= int(np.prod(shape, dtype=np.int64)):
            return mask
        digits = np.unravel_index(bound, shape) if shape else ()
        chosen = None
        prefix = mask  # mask where the index so far equals the bound's digits
        for axis, digit in enumerate(digits):
            along = np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(shape))])
            part = ops.logical_and(prefix, along < digit)
            chosen = part if chosen is None else ops.logical_or(chosen, part)
            prefix = ops.logical_and(prefix, along == digit)
        return chosen if chosen is not None else self.zeros_mask(mask)

    def same_bits(self, values: Any, mask: Any) -> np.ndarray | None:
        """The one value every entry at `mask` holds, bit for bit, else `None`: two reductions."""
        dtype = self.dtype(values)
        integer = _arrays.bits_dtype(dtype)
        bits = ops.view(values, np.dtype(integer).name)
        info = np.iinfo(integer)
        low = ops.min(ops.where(mask, bits, self.scalar(info.max, integer)))
        high = ops.max(ops.where(mask, bits, self.scalar(info.min, integer)))
        low, high = int(ops.convert_to_numpy(low)), int(ops.convert_to_numpy(high))
        return _arrays.float_of_bits(low, dtype) if low == high else None


DEVICE = Device()


def is_split(layer: keras.layers.Layer) -> bool:
    """Whether a weight of `layer` has shards on another process (no process holds it whole)."""
    names = layers_lib.pinned_class_for(layer).pinned_weights
    variables = [layer.raw_variable(w) if layers_lib.is_pinned(layer) else getattr(layer, w, None)
                 for w in names]
    return any(getattr(getattr(v, "value", v), "is_fully_addressable", True) is False
               for v in variables if v is not None)


def plan_of(layer: keras.layers.Layer) -> PinPlan:
    """A layer's current effective weights and pins as live tensors: the start of its plan."""
    if layers_lib.is_pinned(layer):
        weights = layer.present_weights()
        return PinPlan(
            {w: ops.convert_to_tensor(layer.effective(w)) for w in weights},
            {w: ops.convert_to_tensor(layer.pin_variables(w)[0]) for w in weights},
            DEVICE,
        )
    # A LoRA layer's property gives its merged weight.
    names = layers_lib.pinned_class_for(layer).pinned_weights
    weights = {w: getattr(layer, w, None) for w in names}
    return PinPlan({w: ops.convert_to_tensor(x) for w, x in weights.items() if x is not None}, xp=DEVICE)
