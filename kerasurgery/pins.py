"""`Pin` and the rules that build pin masks from a layer's weights.

A rule is a callable that takes a layer's current (effective) kernel and bias
as numpy arrays and returns the `Pin` for that layer. Scripts pass rules to
`kerasurgery.freeze`; the command line builds the same rules from its flags, so
both share one implementation. This module needs numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, Union

import numpy as np

from kerasurgery._arrays import HOST, Host
from kerasurgery.errors import PinError
from kerasurgery.kinds import Axes

Value = Union[float, np.ndarray, None]

# How a weight's pinned values are stored: one scalar shared by every pinned
# entry (the pruning case: about 1 byte of extra state per entry), or one
# stored value per entry (at most 1 + 4 bytes per entry in float32).
SHARED = "shared"
PER_ENTRY = "per_entry"


def saved_storage(config: Mapping[str, Any], present: Sequence[str]) -> dict[str, str] | None:
    """How a pinned layer saved with `config` stores the pinned values of each
    of its `present` weights (main weight first), as its `build` sets it up.

    The config's `pin_storage`, or kerasurgery 0.1.0's `pinned_kernel_values`
    (the main weight's); a weight neither names is `SHARED`, the bias
    `PER_ENTRY`. `None` when the config's storage is malformed (the layer
    would refuse it).
    """
    storage = config.get("pin_storage")
    if storage is None:
        storage = {}
    if not isinstance(storage, Mapping):
        return None
    storage = dict(storage)
    if config.get("pinned_kernel_values") is not None and present:
        storage.setdefault(present[0], config["pinned_kernel_values"])
    if any(not isinstance(w, str) or v not in (SHARED, PER_ENTRY) for w, v in storage.items()):
        return None
    return {w: storage.get(w, PER_ENTRY if w == "bias" else SHARED) for w in present}


@dataclasses.dataclass(frozen=True)
class WeightPins:
    """One weight's pin state in numpy: what a layer holds and a file stores.

    `effective` is what the layer computes with; `mask` is True at pinned
    entries; `value` is a scalar (shared) or an array of the weight's shape.
    """

    effective: np.ndarray
    mask: np.ndarray
    value: np.ndarray


def bits(array: np.ndarray) -> np.ndarray:
    """The raw bits, so that -0.0 and 0.0 (and NaN payloads) count as different."""
    array = np.asarray(array)
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def shared_value(values: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The one value every pinned entry holds (same bits), or `None` if they differ.

    With nothing pinned, a zero of the values' dtype.
    """
    if not mask.any():
        return np.zeros((), values.dtype)
    return HOST.same_bits(values, mask)


def checked_stored_mask(value: Any, shape: tuple, where: str) -> np.ndarray:
    """A stored or assigned pin mask: boolean, of the weight's shape."""
    array = np.asarray(value)
    if array.shape != tuple(shape):
        raise PinError(f"{where} has the wrong shape. Expected: {tuple(shape)}. Received: {array.shape}")
    if array.dtype != np.bool_:
        raise PinError(f"{where} must be boolean. Received dtype: {array.dtype}")
    return array


def checked_stored_value(value: Any, shape: tuple, dtype: Any, where: str) -> np.ndarray:
    """Stored or assigned pinned values: floating point, finite, of the expected shape."""
    array = checked_stored_weight(value, shape, dtype, where)
    if not np.all(np.isfinite(array)):
        raise PinError(f"{where} holds a non-finite pinned value.")
    return array


def checked_stored_weight(value: Any, shape: tuple, dtype: Any, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.shape != tuple(shape):
        raise PinError(f"{where} has the wrong shape. Expected: {tuple(shape)}. Received: {array.shape}")
    # Not np.floating: bfloat16 (ml_dtypes) is a float that numpy does not class as one.
    if array.dtype.kind not in "fV" and "float" not in str(array.dtype):
        raise PinError(f"{where} must be floating point. Received dtype: {array.dtype}")
    return array.astype(str(dtype), copy=False) if str(array.dtype) != str(dtype) else array


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


class AxisRule:
    """A rule that is also told its weight's axes: `rule(kernel, bias, axes)`.

    `freeze` passes the axes of the layer's class (`Axes`); called by a script
    on bare arrays, a rule assumes Dense's (rows = inputs, last axis = units).
    """


@dataclasses.dataclass(frozen=True)
class _Rule(AxisRule):
    """A named rule: `select(weight, which, axes)` gives the mask of one weight.

    A rule with `across` looks at every layer it selects in one `freeze` call
    at once (global magnitude pruning): `across(weights)` gives one mask per
    weight, for the kernels of all layers together and then for their biases.

    A rule with `device` has its selection written against an array
    namespace (`select(weight, which, axes, xp=...)`, `kerasurgery._arrays`):
    called with `xp`, it computes its mask where the weight lives (a weight
    split across processes), with the same code as on the host.
    """

    name: str
    select: Any
    bias: bool | None = False  # None: the bias too, when the layer has one
    value: Value = None
    across: Any = None
    device: bool = False
    # `select` reads a weight through `pruning._pieces` only, so it may be
    # given a `_plan.SlicedWeight` instead of a whole numpy array.
    pieces: bool = False

    def __call__(
        self, kernel: Any, bias: Any | None, axes: Axes | None = None, *, xp: Host = HOST
    ) -> Pin:
        axes = axes or _dense_axes(kernel)
        kernel_mask = self._mask(kernel, "kernel", axes, xp)
        bias_mask = None
        if self.bias or (self.bias is None and bias is not None):
            if bias is None:
                raise PinError(f"Rule {self.name!r} targets the bias, but the layer has none.")
            bias_mask = self._mask(bias, "bias", axes, xp)
        value = self.value
        return Pin(
            kernel=kernel_mask,
            bias=bias_mask,
            kernel_value=value,
            bias_value=value if bias_mask is not None else None,
        )

    def _mask(self, w: Any, which: str, axes: Axes, xp: Host) -> Any:
        if xp.host:
            return _as_mask(self.select(w, which, axes), np.shape(w), self.name)
        mask = self.select(w, which, axes, xp=xp)
        if xp.shape(mask) != xp.shape(w):
            raise PinError(
                f"Rule {self.name!r} built a mask of the wrong shape. "
                f"Expected: {xp.shape(w)}. Received: {xp.shape(mask)}"
            )
        return mask


def _dense_axes(kernel: Any) -> Axes:
    # A rule called by a script on a bare array: rows are inputs, the last axis units.
    ndim = len(np.shape(kernel)) if isinstance(kernel, np.ndarray) else len(tuple(kernel.shape))
    return Axes(inputs=(0,) if ndim > 1 else (), units=(ndim - 1,))


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
    return _Rule("zeros", lambda w, *_, xp=HOST: xp.equal(w, xp.scalar(0, xp.dtype(w))), bias, value,
                 device=True)


def below(threshold: float, *, bias: bool = False, value: Value = None) -> Rule:
    """Pins every entry with `|w| < threshold` (magnitude pruning).

    Raises:
        PinError: if `threshold` is negative or not finite.
    """
    threshold = _finite(threshold, "threshold")
    if threshold < 0:
        raise PinError(f"Expected a threshold >= 0. Received: {threshold}")

    def select(w: Any, *_: Any, xp: Host = HOST) -> Any:
        # Compared in the weight's dtype (as numpy compares a float16 array
        # with a Python float), on the host and where the shards live alike.
        return xp.less(xp.abs(w), xp.scalar(threshold, xp.dtype(w)))

    return _Rule(f"below {threshold}", select, bias, value, device=True)


def fraction(f: float, *, seed: int, bias: bool = False, value: Value = None) -> Rule:
    """Pins a random fraction `f` of the entries, the same ones for the same seed.

    Exactly `round(f * size)` entries of each weight are pinned.
    """
    f = _finite(f, "fraction")
    if not 0.0 <= f <= 1.0:
        raise PinError(f"Expected a fraction between 0 and 1. Received: {f}")

    def select(w: Any, which: str, _axes: Axes, xp: Host = HOST) -> Any:
        # One stream per weight, so pinning the bias too leaves the kernel's
        # choice unchanged. The choice depends on the shape alone: made on
        # the host, and put where the weight lives.
        shape = xp.shape(w)
        size = int(np.prod(shape, dtype=np.int64))
        rng = np.random.default_rng([seed, 0 if which == "kernel" else 1])
        chosen = rng.permutation(size)[: round(f * size)]
        mask = np.zeros(size, dtype=bool)
        mask[chosen] = True
        return xp.put(mask.reshape(shape), w)

    return _Rule(f"fraction {f} (seed {seed})", select, bias, value, device=True)


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

    def select(w: Any, *_: Any, xp: Host = HOST) -> Any:
        if pinned.shape != xp.shape(w):
            raise PinError(
                "The connections matrix does not fit the kernel. "
                f"Expected: {xp.shape(w)}. Received: {pinned.shape}"
            )
        return xp.put(pinned, w)

    return _Rule("connections", select, False, value, device=True)


def entries(
    kernel: Iterable[Sequence[int]] = (), *, bias: Iterable[int] = (), value: Value = None
) -> Rule:
    """Pins single entries: kernel index tuples (`(row, column)` for Dense, one
    number per axis for any kernel) and bias indices."""
    kernel_index = [tuple(int(i) for i in index) for index in kernel]
    bias_index = [int(i) for i in bias]

    def select(w: Any, which: str, _axes: Axes, xp: Host = HOST) -> Any:
        shape = xp.shape(w)
        mask = np.zeros(shape, dtype=bool)
        chosen = kernel_index if which == "kernel" else [(i,) for i in bias_index]
        for index in chosen:
            if len(index) != len(shape):
                raise PinError(
                    f"Expected a {which} index of {len(shape)} numbers for shape "
                    f"{shape}. Received: {index}"
                )
            mask[_checked_index(index, shape, which)] = True
        return xp.put(mask, w)

    return _Rule("entries", select, bool(bias_index), value, device=True)


def inputs(rows: Iterable[int], *, value: Value = None) -> Rule:
    """Pins everything that reads the given inputs: Dense kernel rows, a
    convolution's input channels, an Embedding's rows (token ids)."""
    rows = [int(r) for r in rows]

    def select(w: Any, _: str, axes: Axes, xp: Host = HOST) -> Any:
        return _along(w, axes.inputs, rows, "input", xp)

    return _Rule("inputs", select, False, value, device=True)


def units(columns: Iterable[int], *, value: Value = None, bias: bool | None = None) -> Rule:
    """Pins whole output units: Dense kernel columns, a convolution's filters,
    EinsumDense output entries, each with its bias entry.

    Args:
        columns: Output unit indices (output axes flattened in C order).
        value: `None` keeps current values; a number pins them to it.
        bias: `None` (default) pins the bias entries when the layer has a bias;
            `True` requires one; `False` leaves the bias free.
    """
    columns = [int(c) for c in columns]

    def select(w: Any, which: str, axes: Axes, xp: Host = HOST) -> Any:
        if which == "bias":
            if not axes.bias_follows_units:
                raise PinError("This layer's bias is not indexed by its output units; pass bias=False.")
            return _along(w, tuple(range(len(xp.shape(w)))), columns, "unit", xp)
        return _along(w, axes.units, columns, "unit", xp)

    return _Rule("units", select, bias, value, device=True)


def _along(w: Any, axes: tuple[int, ...], indices: list[int], what: str, xp: Host = HOST) -> Any:
    """A mask that is True wherever the (flattened) `axes` index is in `indices`.

    The choice is a small host array along `axes` (1 elsewhere), broadcast
    to the weight where the weight lives.
    """
    shape = xp.shape(w)
    if not axes:
        return xp.zeros_mask(w)  # e.g. the depthwise kernel's units
    axes = tuple(a % len(shape) for a in axes)
    n = int(np.prod([shape[a] for a in axes]))
    chosen = np.zeros(n, dtype=bool)
    for i in indices:
        _checked_index((i,), (n,), what)
        chosen[i] = True
    # The axes' entries in the order given (flattened in C order), put in
    # the weight's axis order, with 1 along every other axis.
    small = np.transpose(chosen.reshape([shape[a] for a in axes]), np.argsort(axes))
    small = small.reshape([shape[a] if a in axes else 1 for a in range(len(shape))])
    return xp.broadcast_like(small, w)


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
