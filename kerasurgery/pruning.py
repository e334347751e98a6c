"""Magnitude pruning as pins: which entries to prune, in numpy only.

The selections here are shared by the one-shot rules (`kerasurgery.rules.smallest`,
`n_of_m`, `smallest_units`), the command line, spec files and the
`GradualPruning` callback (`kerasurgery.callbacks`), so that every way in
prunes the same entries. Pruned entries are pins at 0.0: they keep an exactly
zero gradient and stay exactly zero under weight decay, momentum and EMA.

Every selection is exact and reproducible: it picks exactly the number of
entries it is asked for, by smallest magnitude, NaN counting as the largest;
among equal magnitudes the lower flat index (C order) is picked first, and
across layers the earlier layer.

The selections that look at calibration inputs (Wanda, SparseGPT) are in
`kerasurgery.calibrated`; `kerasurgery.prune` applies them to a whole model.

This module needs numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from kerasurgery import _arrays
from kerasurgery._arrays import HOST, Host
from kerasurgery.errors import PinError
from kerasurgery.pins import AxisRule, Axes, Pin, Rule, Value, _dense_axes, _Rule, units


def smallest_entries(
    weights: Sequence[np.ndarray],
    count: int,
    eligible: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """Masks of the `count` entries of smallest magnitude over all `weights` together.

    Args:
        weights: Arrays of any shapes (one layer's weight, or every layer's for
            global pruning).
        count: How many entries to select in all; at most the number of
            eligible entries.
        eligible: Per array, a boolean mask of the entries that may be
            selected (`None`: all), e.g. the entries not pinned yet.

    Returns:
        One boolean mask per array, with exactly `count` True entries in all.
        Ties in magnitude go to the earlier array, then the lower flat index.
    """
    eligible = list(eligible) if eligible is not None else [None] * len(weights)
    keys = [_key(w, e) for w, e in zip(weights, eligible)]
    flat = np.concatenate([k.ravel() for k in keys]) if keys else np.zeros(0, np.float32)
    available = int(np.count_nonzero(~np.isnan(flat)))
    if not 0 <= count <= available:
        raise PinError(
            f"Cannot select {count} entries: {available} of {flat.size} are eligible."
        )
    chosen = np.zeros(flat.size, dtype=bool)
    if count:
        # The count-th smallest key; everything below it is selected, and the
        # first entries equal to it (in flat order) fill the count exactly.
        threshold = np.partition(flat, count - 1)[count - 1]
        np.less(flat, threshold, out=chosen)
        ties = np.flatnonzero(flat == threshold)[: count - int(np.count_nonzero(chosen))]
        chosen[ties] = True
    masks, start = [], 0
    for w in weights:
        masks.append(chosen[start:start + w.size].reshape(w.shape))
        start += w.size
    return masks


def _key(weight: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    """|w| as a float that sorts exactly; NaN weights as +inf, ineligible entries as NaN."""
    weight = np.asarray(weight)
    # float32 (float64 for float64 weights) holds every float16/bfloat16
    # magnitude exactly, and numpy sorts it natively.
    key = np.abs(weight.astype(np.float64 if weight.dtype == np.float64 else np.float32))
    key[np.isnan(key)] = np.inf
    if eligible is not None:
        key[~np.asarray(eligible, dtype=bool)] = np.nan
    return key


# Entries per piece when an array is ranked piece by piece: its temporaries
# (a float64 key and its digits, 2 MB each) stay small whatever the array.
_PIECE = 1 << 18


@dataclasses.dataclass(frozen=True)
class Cut:
    """Where one array stands in a ranking of many: `mask(array)` gives its selected entries.

    `key` is the bit pattern (uint64 of a float64 magnitude) of the
    threshold: every entry whose key is below it is selected, and the first
    `ties` entries (in flat order) whose key equals it.
    """

    key: int
    ties: int

    def mask(self, array: Any, xp: Host = HOST) -> Any:
        """The entries of `array` this cut selects (where `array` lives, with `xp`).

        On the host `array` may be a `_plan.SlicedWeight`: it is read a piece
        at a time (`_pieces`), never whole.
        """
        if not xp.host:
            # The threshold is a magnitude of the array's dtype (`count_cut`),
            # compared exactly in that dtype.
            dtype = xp.dtype(array)
            key = xp.key(array)
            threshold = xp.scalar(np.asarray(self.key, np.uint64).view(np.float64), dtype)
            chosen = xp.less(key, threshold)
            if self.ties:
                equal = xp.equal(key, threshold)
                # Usually every entry at the threshold is taken: no search for the first ones.
                if xp.count(equal) > self.ties:
                    equal = xp.first_true(equal, self.ties)
                chosen = xp.logical_or(chosen, equal)
            return chosen
        chosen = np.zeros(int(np.prod(np.shape(array), dtype=np.int64)), dtype=bool)
        left, start = self.ties, 0
        for piece in _pieces(array):
            keys = _key_bits(piece)
            np.less(keys, np.uint64(self.key), out=chosen[start:start + keys.size])
            if left:
                ties = np.flatnonzero(keys == np.uint64(self.key))[:left]
                chosen[start + ties] = True
                left -= ties.size
            start += keys.size
        return chosen.reshape(np.shape(array))


def _pieces(array: np.ndarray) -> Iterable[np.ndarray]:
    """`array`'s entries in flat C order, a piece at a time.

    A weight that `freeze` leaves where it lives (`_plan.SlicedWeight`)
    gives its own pieces, read a slice of rows at a time, so ranking it
    never holds it whole on the host.
    """
    if hasattr(array, "pieces"):
        yield from array.pieces(_PIECE)
        return
    flat = np.asarray(array).reshape(-1)
    for start in range(0, flat.size, _PIECE):
        yield flat[start:start + _PIECE]


def smallest_cuts(arrays: Callable[[], Iterable[np.ndarray]], count: Callable[[int], int]) -> list[Cut]:
    """Where the `count` entries of smallest magnitude over all arrays together fall, with bounded memory.

    The same selection as `smallest_entries` (NaN as the largest magnitude;
    ties to the earlier array, then the lower flat index), without holding
    more than one array and a few pieces of it at once: `arrays()` is called
    once per pass (five passes) and yields the arrays in order, so they can be
    read one at a time from a model or a file; `count(total)` is the number
    of entries to select of `total`. The threshold is found exactly
    by a radix selection on the float ordering: magnitudes as float64 (which
    holds every float16, bfloat16 and float32 exactly) have bit patterns that
    sort as the numbers do, so 16 bits of the count-th smallest key are
    settled per pass, from a histogram of the entries that share the bits
    settled so far.

    Raises:
        PinError: `count` is negative or larger than the number of entries.
    """
    prefix, rank = 0, 0  # the key's bits settled so far; its rank among the keys that share them
    for shift in (48, 32, 16, 0):
        histogram, total = np.zeros(1 << 16, np.int64), 0
        for array in arrays():
            total += int(np.prod(np.shape(array), dtype=np.int64))
            for piece in _pieces(array):
                keys = _key_bits(piece)
                if shift < 48:
                    keys = keys[(keys >> np.uint64(shift + 16)) == np.uint64(prefix)]
                histogram += np.bincount(
                    ((keys >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.intp), minlength=1 << 16)
        if shift == 48:
            rank = count(total)
            if not 0 <= rank <= total:
                raise PinError(f"Cannot select {rank} entries: {total} of {total} are eligible.")
            if not rank:
                return [Cut(0, 0) for _ in arrays()]
        below = np.cumsum(histogram)
        digit = int(np.searchsorted(below, rank))  # the first digit whose count reaches the rank
        rank -= int(below[digit - 1]) if digit else 0
        prefix = (prefix << 16) | digit
    # `rank` entries equal to the key complete the count, the earliest first.
    cuts = []
    for array in arrays():
        equal = sum(int(np.count_nonzero(_key_bits(piece) == np.uint64(prefix))) for piece in _pieces(array))
        cuts.append(Cut(prefix, min(equal, rank)))
        rank -= cuts[-1].ties
    return cuts


def count_cut(array: Any, count: int, xp: Host = HOST) -> Cut:
    """The cut of the `count` entries of smallest magnitude of one array, found by counting.

    The same cut as `smallest_cuts` gives for `[array]` (NaN as the largest
    magnitude, ties to the lower flat index), found with reductions only, so
    that it runs where a sharded array lives: the count-th smallest key is
    the smallest non-negative float of the array's dtype with at least
    `count` keys at or below it, found by a binary search over its bit
    pattern (non-negative floats sort as their bits do): one count per bit
    of the dtype (16 for float16 and bfloat16, 31 for float32).

    Raises:
        PinError: `count` is negative or larger than the number of entries.
    """
    dtype = xp.dtype(array)
    total = int(np.prod(xp.shape(array), dtype=np.int64))
    if not 0 <= count <= total:
        raise PinError(f"Cannot select {count} entries: {total} of {total} are eligible.")
    if not count:
        return Cut(0, 0)
    key = xp.key(array)
    low, high = 0, _arrays.bits_of(np.inf, dtype)
    while low < high:
        middle = (low + high) // 2
        if xp.count(xp.less_equal(key, xp.scalar(_arrays.float_of_bits(middle, dtype), dtype))) >= count:
            high = middle
        else:
            low = middle + 1
    threshold = _arrays.float_of_bits(low, dtype)
    below = xp.count(xp.less(key, xp.scalar(threshold, dtype)))
    return Cut(int(np.asarray(threshold, np.float64).view(np.uint64)), count - below)


def _key_bits(piece: np.ndarray) -> np.ndarray:
    """|w| as float64 bits (NaN as +inf): unsigned integers that sort as the magnitudes do."""
    key = np.abs(piece.astype(np.float64))
    key[np.isnan(key)] = np.inf
    return key.view(np.uint64)


def n_of_m_mask(weight: Any, n: int, m: int, inputs: tuple[int, ...], xp: Host = HOST) -> Any:
    """Pins the `n` smallest of every `m` consecutive entries along the input axes.

    The input axes (flattened in C order when there are several) are cut into
    groups of `m`; in each group, for each position along the other axes, the
    `n` entries of smallest magnitude are selected (ties: the lower index).
    An entry is selected when fewer than `n` entries of its group come
    before it (a smaller magnitude, or an equal one at a lower index): `m`
    comparisons per entry, elementwise, so that the same code runs on the
    host and where a sharded weight lives (`xp`), the other axes untouched.

    Raises:
        PinError: the input axes hold no multiple of `m` entries, or the
            weight has no input axis.
    """
    shape = xp.shape(weight)
    if not inputs:
        raise PinError("This weight has no input axis to group along.")
    ndim = len(shape)
    axes = tuple(a % ndim for a in inputs)
    length = int(np.prod([shape[a] for a in axes]))
    if length % m:
        raise PinError(
            f"The input axis of shape {tuple(shape)} holds {length} entries, "
            f"not a multiple of m={m}; n:m pruning needs whole groups."
        )
    rest = [a for a in range(ndim) if a not in axes]
    # Inputs last, flattened, then cut into groups of m.
    moved = xp.moveaxis(xp.key(weight), axes, range(len(rest), ndim))
    moved_shape = [shape[a] for a in rest] + [shape[a] for a in axes]
    grouped = xp.reshape(moved, [shape[a] for a in rest] + [length // m, m])
    entries = [xp.take(grouped, j) for j in range(m)]
    chosen = []
    for j, entry in enumerate(entries):
        before = xp.cast(xp.zeros_mask(entry), np.int32)  # entries of the group that come before it
        for k, other in enumerate(entries):
            if k != j:
                ahead = (xp.less_equal if k < j else xp.less)(other, entry)
                before = xp.add(before, xp.cast(ahead, np.int32))
        chosen.append(xp.less(before, xp.scalar(n, np.int32)))
    selected = xp.reshape(xp.stack(chosen), moved_shape)
    return xp.contiguous(xp.moveaxis(selected, range(len(rest), ndim), axes))


def unit_norms(weight: np.ndarray, units: tuple[int, ...], norm: int) -> np.ndarray:
    """The L1 or L2 norm of every output unit (`units` axes flattened in C order)."""
    weight = np.asarray(weight)
    axes = tuple(a % weight.ndim for a in units)
    rest = tuple(a for a in range(weight.ndim) if a not in axes)
    magnitude = np.abs(weight.astype(np.float64))
    moved = np.moveaxis(magnitude, axes, range(len(rest), weight.ndim))
    per_unit = moved.reshape(int(np.prod([weight.shape[a] for a in rest], dtype=int)), -1)
    if norm == 1:
        return per_unit.sum(axis=0)
    return np.sqrt(np.square(per_unit).sum(axis=0))


def polynomial_sparsity(
    step: int,
    *,
    target_sparsity: float,
    begin_step: int,
    end_step: int,
    initial_sparsity: float = 0.0,
    power: int = 3,
) -> float:
    """The sparsity of Zhu & Gupta (2017) at `step`, as tfmot's `PolynomialDecay`.

        s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_1 - t_0)) ** power

    clamped to `initial_sparsity` before `begin_step` and `target_sparsity`
    from `end_step` on.
    """
    if step >= end_step and step >= begin_step:
        return target_sparsity
    if step <= begin_step:
        return initial_sparsity
    progress = (step - begin_step) / (end_step - begin_step)
    return target_sparsity + (initial_sparsity - target_sparsity) * (1.0 - progress) ** power


def checked_fraction(value: object, what: str = "fraction") -> float:
    """A number in [0, 1], or a clear error."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PinError(f"Expected a number for {what}. Received: {value!r}") from None
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise PinError(f"Expected {what} between 0 and 1. Received: {value!r}")
    return number


# -- the rules ---------------------------------------------------------------


def smallest(
    fraction: float, *, bias: bool = False, value: Value = None, across_layers: bool = False
) -> Rule:
    """Prunes exactly `round(fraction * size)` entries of smallest `|w|` in each layer.

    Like `torch.nn.utils.prune.l1_unstructured` (per layer) and
    `global_unstructured` (`across_layers=True`), but the pruned entries are
    pins: they stay exactly 0.0 through any training.

    Args:
        fraction: Between 0 and 1: the fraction of each weight's entries to
            prune (of all selected layers' entries together with
            `across_layers`).
        bias: Prune the bias too, by the same fraction of its own entries.
        value: What pruned entries are pinned to; `None` (default) = 0.0.
        across_layers: One magnitude threshold over every layer the rule
            selects in one `freeze` call (global magnitude pruning): exactly
            `round(fraction * total)` entries in all, and no pinned `|w|`
            above a free one. The kernels of a layer count; biases (with
            `bias=True`) are ranked among biases.

    Returns:
        A rule for `kerasurgery.freeze`.

    Example:

    ```python
    pruned = kerasurgery.freeze(model, {"*": kerasurgery.rules.smallest(0.8, across_layers=True)})
    ```
    """
    fraction = checked_fraction(fraction)

    def select(w: Any, *_: object, xp: Host = HOST) -> Any:
        if not xp.host:  # where the shards live: the same cut, found by counting
            size = int(np.prod(xp.shape(w), dtype=np.int64))
            return count_cut(w, round(fraction * size), xp).mask(w, xp)
        # Ranked piece by piece: a large weight (a token embedding) costs its
        # mask and a few pieces, not four float copies (`smallest_cuts`).
        return _SmallestAcross(fraction)([w])[0]

    return _Rule(
        f"smallest {fraction}" + (" across layers" if across_layers else ""),
        select, bias, 0.0 if value is None else value,
        across=_SmallestAcross(fraction) if across_layers else None,
        device=not across_layers, pieces=True,
    )


@dataclasses.dataclass(frozen=True)
class _SmallestAcross:
    """`smallest(..., across_layers=True)`'s ranking of many weights together.

    Called on a list of arrays it gives their masks; `cuts(arrays)` ranks
    arrays read one at a time (`smallest_cuts`), which is how `freeze` and
    the offline rewrite rank a whole model without holding it twice.
    """

    fraction: float

    def __call__(self, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        cuts = self.cuts(lambda: iter(weights))
        return [cut.mask(w) for cut, w in zip(cuts, weights)]

    def cuts(self, arrays: Callable[[], Iterable[np.ndarray]]) -> list[Cut]:
        return smallest_cuts(arrays, lambda total: round(self.fraction * total))


def n_of_m(n: int, m: int, *, value: Value = None) -> Rule:
    """Prunes the `n` smallest `|w|` of every `m` consecutive entries along the input axis.

    `n_of_m(2, 4)` gives the 2:4 pattern that sparse tensor cores run. The
    input axis is a Dense kernel's rows, a convolution's input channels,
    EinsumDense's contracted axes (flattened); weights without one (a
    separable convolution's pointwise kernel, an Embedding, whose rows are
    looked up, not multiplied) are left free.

    Args:
        n: Entries pruned per group, `0 <= n <= m`.
        m: Group size; the input axis must hold a multiple of `m` entries.
        value: What pruned entries are pinned to; `None` (default) = 0.0.

    Raises:
        PinError: `n`/`m` out of range, or (when freezing) an input axis that
            is not a multiple of `m`.
    """
    n, m = _count(n, "n"), _count(m, "m")
    if m < 1 or n > m:
        raise PinError(f"Expected 0 <= n <= m and m >= 1. Received: n={n}, m={m}")

    def select(w: Any, _which: str, axes: Axes, xp: Host = HOST) -> Any:
        if not axes.inputs or not axes.contracted:
            return xp.zeros_mask(w)
        return n_of_m_mask(w, n, m, axes.inputs, xp)

    return _Rule(f"{n}:{m}", select, False, 0.0 if value is None else value, device=True)


def smallest_units(fraction: float, norm: int = 1, *, value: Value = None) -> Rule:
    """Prunes whole output units (Dense columns, convolution filters) of smallest norm.

    Like `torch.nn.utils.prune.ln_structured` over the output axis: exactly
    `round(fraction * units)` units of each layer, those whose kernel entries
    have the smallest L1 (`norm=1`) or L2 (`norm=2`) norm (ties: the lower
    unit index), are pinned whole, with their bias entries.

    Args:
        fraction: Between 0 and 1: the fraction of each layer's units to prune.
        norm: 1 or 2.
        value: What pruned entries are pinned to; `None` (default) = 0.0.
    """
    fraction = checked_fraction(fraction)
    if norm not in (1, 2) or isinstance(norm, bool):
        raise PinError(f"Expected norm 1 or 2. Received: {norm!r}")

    return _UnitsByNorm(fraction, norm, 0.0 if value is None else value)


@dataclasses.dataclass(frozen=True)
class _UnitsByNorm(AxisRule):
    fraction: float
    norm: int
    value: Value

    def __call__(self, kernel: np.ndarray, bias: np.ndarray | None, axes: Axes | None = None) -> Pin:
        axes = axes or _dense_axes(kernel)
        if not axes.units:  # e.g. a separable convolution's depthwise kernel
            return Pin(kernel=np.zeros(kernel.shape, dtype=bool))
        norms = unit_norms(kernel, axes.units, self.norm)
        chosen = smallest_entries([norms], round(self.fraction * norms.size))[0]
        whole = units(
            np.flatnonzero(chosen).tolist(), value=self.value,
            bias=bias is not None and axes.bias_follows_units,
        )
        return whole(kernel, bias, axes)


def _count(x: object, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise PinError(f"Expected an integer {what}. Received: {x!r}")
    return int(x)
