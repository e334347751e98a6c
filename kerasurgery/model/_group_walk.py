"""The walk that finds dependency groups, and the primitives its handlers build on.

`groups.py` holds the handlers of the Keras layer kinds and `dependency_groups`;
`_group_kinds.py` the handlers of attention, `EinsumDense`, KerasHub blocks and
operations on tensors. Both build on what is here: the values a tensor's
channels carry (`_Value`), the union-find over units (`_Walk`), and the
producer / consumer steps (`_produce` makes units along a kernel axis,
`_consume` reads channels along another), so every kind of unit gets the same
pins, checks and removal. The walk asks a handler for each call of the graph
(`handler_for`, given by `groups.py`); it knows no layer kind itself.
"""


from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from kerasurgery import _keras_private
from kerasurgery import layers as layers_lib
from kerasurgery.errors import KerasurgeryError
from kerasurgery.model.walk import walk_layers

# Activations that act entry by entry; those mapping 0.0 to 0.0 keep a removed
# channel at exactly zero.
_ELEMENTWISE = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish",
    "tanh", "mish", "hard_silu", "hard_swish", "softsign", "sigmoid", "hard_sigmoid",
    "softplus", "exponential",
}


# KerasHub's entry-by-entry activations (BERT's tanh-approximated GELU).
_HUB_ELEMENTWISE = {"keras_hub.src.utils.keras_utils.gelu_approximate"}


@dataclasses.dataclass(frozen=True)
class Member:
    """The entries of one weight that the units of a group own.

    Attributes:
        layer: The layer's path (as `walk_layers` names it).
        weight: The weight's name (`kernel`, `bias`, `gamma`, `pointwise_kernel`, ...).
        axis: The axis of the weight the indices run along.
        indices: For each unit of the group, its indices along `axis`.
    """

    layer: str
    weight: str
    axis: int
    indices: tuple[tuple[int, ...], ...]
    # A producer's own output entries (kernel columns / filters / heads and
    # their bias): what `prune_units` pins at zero.
    output: bool = False

    def __repr__(self) -> str:
        return f"{self.layer}:{self.weight}[axis {self.axis}] {_format_indices(self.indices)}"


@dataclasses.dataclass(frozen=True)
class Fold:
    """A removed unit's constant output, which a consumer's bias absorbs.

    Attributes:
        layer: The consumer's path (a `Dense`, or a convolution with `valid`
            padding, with a bias).
        positions: The consumer's input rows / channels the unit holds.
        values: The constant at each of those positions.
    """

    layer: str
    positions: tuple[int, ...]
    values: tuple[float, ...]

    def __repr__(self) -> str:
        return f"{self.layer}:bias += {_format_indices([self.positions])} x {list(self.values)[:8]}"


@dataclasses.dataclass(frozen=True)
class Group:
    """The coupled output units of one set of producers, with everything they own.

    Attributes:
        producers: Paths of the layers whose output units make the group (one,
            or every branch of a residual sum).
        members: Every weight entry the units own, unit by unit.
        removable: For each unit, whether it is exactly zero wherever it is
            read, so that removing it changes no output.
        prunable: Whether pinning the producers' units (and setting the
            normalizations' gamma and beta) at 0.0 makes a unit removable.
        left: Why no unit of the group can be removed (empty when they can).
        folds: For each unit, the constants its consumers' biases absorb when
            it is removed (empty where it is zero wherever it is read).
    """

    producers: tuple[str, ...]
    members: tuple[Member, ...]
    removable: tuple[bool, ...]
    prunable: bool
    left: tuple[str, ...] = ()
    folds: tuple[tuple[Fold, ...], ...] = ()

    @property
    def units(self) -> int:
        return len(self.removable)

    def removable_units(self) -> list[int]:
        """The units `shrink` removes: none when the group is left alone."""
        if self.left:
            return []
        return [unit for unit, ok in enumerate(self.removable) if ok]

    def __repr__(self) -> str:
        state = f"left: {'; '.join(self.left)}" if self.left else (
            f"{len(self.removable_units())} removable")
        lines = [f"Group({' + '.join(self.producers)}: {self.units} units, {state})"]
        lines += [f"  {member!r}" for member in self.members]
        removable = set(self.removable_units())
        lines += [f"  unit {unit}: {fold!r}" for unit, folds in enumerate(self.folds)
                  if unit in removable for fold in folds]
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class DependencyGroups:
    """Every group of a model, and the layers whose channels the graph does not follow."""

    groups: tuple[Group, ...]
    unknown: tuple[tuple[str, str], ...]  # (layer path, why)
    # The `Reshape` layers that keep the channel axis last (and its count in their config).
    reshapes: tuple[str, ...] = ()
    # Producer path -> (the path of the layer whose config counts its output
    # entries, that config entry): `mha/attention_output` -> (`mha`, `output_shape`);
    # None where no config can count fewer.
    sizes: dict[str, tuple[str, str] | None] = dataclasses.field(default_factory=dict)
    # The `InputLayer` path of each nested model's input (`inner/input_layer`)
    # -> for each of its channels, the (group producers, unit) it carries, or
    # None: a nested model is rebuilt from its own input shapes.
    inputs: dict[str, tuple[tuple[tuple[str, ...], int] | None, ...]] = dataclasses.field(
        default_factory=dict)

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def of(self, producer: str) -> Group:
        """The group `producer` (a layer path) makes units for."""
        for group in self.groups:
            if producer in group.producers:
                return group
        raise KerasurgeryError(
            f"Layer {producer!r} makes no group. Producers: {[g.producers for g in self.groups]}"
        )

    def __repr__(self) -> str:
        parts = [repr(group) for group in self.groups]
        parts += [f"Unknown({path}: {why})" for path, why in self.unknown]
        return "\n".join(parts)


# -- the walk ------------------------------------------------------------------


@dataclasses.dataclass
class _Value:
    """A tensor's last axis, channel by channel: which unit it carries (or None)."""

    units: list[int | None]
    # Each channel's value where it does not depend on the input (NaN where
    # it does): now, and once its units are pinned at zero.
    const: np.ndarray
    can_const: np.ndarray

    @classmethod
    def opaque(cls, size: int) -> _Value:
        return cls([None] * size, np.full(size, np.nan), np.full(size, np.nan))

    def only_zero(self) -> _Value:
        """The same channels through a layer that keeps 0.0 but no other constant."""
        return _Value(list(self.units), _zero_or_nan(self.const), _zero_or_nan(self.can_const))

    def positions(self) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        for position, unit in enumerate(self.units):
            if unit is not None:
                found.setdefault(unit, []).append(position)
        return found


@dataclasses.dataclass
class _Unit:
    producer: str
    index: int
    members: list[tuple[str, str, int, tuple[int, ...]]] = dataclasses.field(default_factory=list)
    # Every consumer that reads it: (reader, its bias can absorb a constant,
    # positions, the constants now, the constants once pinned).
    reads: list[tuple[str, bool, tuple[int, ...], np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=list)
    left: list[str] = dataclasses.field(default_factory=list)


class _Walk:
    def __init__(self, model: keras.Model, handler_for: Callable[[Any], Callable[..., list[_Value]] | None]) -> None:
        self.model = model
        self.handler_for = handler_for
        self.paths = {id(layer): path for path, layer in walk_layers(model)}
        self.units: list[_Unit] = []
        self.parent: list[int] = []
        self.values: dict[int, _Value] = {}
        self.unknown: dict[str, str] = {}
        self.reshapes: list[str] = []
        self.arguments: tuple[tuple, dict] = ((), {})
        self.outputs: set[tuple[str, str, int]] = set()
        # Producer path -> the config entry that counts its output entries,
        # which `shrink` lowers.
        self.sizes: dict[str, tuple[str, str] | None] = {}
        # A nested model's InputLayer path -> the channels fed to it.
        self.inputs: dict[str, _Value] = {}

    # union-find over units: a residual sum makes its branches' units one
    def find(self, unit: int) -> int:
        while self.parent[unit] != unit:
            self.parent[unit] = self.parent[self.parent[unit]]
            unit = self.parent[unit]
        return unit

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)
        return min(a, b)

    def new_unit(self, producer: str, index: int) -> int:
        self.units.append(_Unit(producer, index))
        self.parent.append(len(self.parent))
        return len(self.units) - 1

    def value(self, tensor: Any) -> _Value:
        found = self.values.get(id(tensor))
        if found is None:
            found = _Value.opaque(_channels(tensor) or 0)
            self.values[id(tensor)] = found
        return found

    def leave(self, value: _Value, why: str) -> None:
        for unit in value.positions():
            self.units[unit].left.append(why)

    def member(self, value: _Value, path: str, weight: str, axis: int,
               spread: Callable[[list[int]], list[int]] = lambda p: p) -> None:
        for unit, positions in value.positions().items():
            self.units[unit].members.append((path, weight, axis, tuple(spread(positions))))

    def read(self, value: _Value, reader: str, *, folds: bool = False) -> None:
        for unit, positions in value.positions().items():
            self.units[unit].reads.append(
                (reader, folds, tuple(positions), value.const[positions], value.can_const[positions])
            )

    def run(self) -> DependencyGroups:
        calls = _flat_calls(self.model)
        counts: dict[int, int] = {}
        for kind, op, *_ in calls:
            if kind == "call":
                counts[id(op)] = counts.get(id(op), 0) + 1
        for kind, op, inputs, outputs, arguments in calls:
            if kind == "alias":
                for source, target in zip(inputs, outputs):
                    self.values[id(target)] = self.value(source)
                    if op is not None:  # into a nested model: its InputLayer
                        layer = _keras_private.producing_layer(target)
                        self.inputs[f"{self.paths[id(op)]}/{layer.name}"] = self.value(source)
                continue
            path = self.paths.get(id(op), getattr(op, "name", type(op).__name__))
            values = [self.value(t) for t in inputs]
            handler = self.handler_for(op)
            self.arguments = arguments  # what an operation on tensors was called with
            why = None
            if counts[id(op)] > 1 and op.weights:
                why = f"called {counts[id(op)]} times"
            elif handler is None:
                why = _unknown_why(op)
            else:
                try:
                    produced = handler(self, op, path, values, inputs, outputs)
                except _Unsupported as e:
                    why, produced = str(e), None
            if why is not None:
                self.unknown[path] = why
                for value in values:
                    self.leave(value, f"read by {path!r} ({type(op).__name__}: {why})")
                produced = [_Value.opaque(_channels(t) or 0) for t in outputs]
            for tensor, value in zip(outputs, produced):
                self.values[id(tensor)] = value
        for tensor in self.model.outputs:
            self.leave(self.value(tensor), "a model output")
        groups, where = self._groups()
        inputs = {
            path: tuple(None if u is None else where[self.find(u)] for u in value.units)
            for path, value in self.inputs.items()
        }
        return DependencyGroups(groups, tuple(self.unknown.items()), tuple(self.reshapes),
                                dict(self.sizes), inputs)

    def _groups(self) -> tuple[tuple[Group, ...], dict[int, tuple[tuple[str, ...], int]]]:
        """The groups, and where each root unit went: (group producers, unit)."""
        roots: dict[int, list[int]] = {}
        for unit in range(len(self.units)):
            roots.setdefault(self.find(unit), []).append(unit)
        by_producers: dict[tuple[str, ...], list[list[int]]] = {}
        where: dict[int, tuple[tuple[str, ...], int]] = {}
        for root in sorted(roots):
            producers = tuple(dict.fromkeys(self.units[u].producer for u in roots[root]))
            where[root] = (producers, len(by_producers.get(producers, [])))
            by_producers.setdefault(producers, []).append(roots[root])
        groups = tuple(
            _group(producers, [[self.units[u] for u in unit] for unit in units], self.outputs)
            for producers, units in by_producers.items())
        return groups, where


def _group(producers: tuple[str, ...], units: list[list[_Unit]],
           outputs: set[tuple[str, str, int]]) -> Group:
    keys: dict[tuple[str, str, int], None] = {}
    per_unit: list[dict[tuple[str, str, int], set[int]]] = []
    for parts in units:
        entries: dict[tuple[str, str, int], set[int]] = {}
        for part in parts:
            for path, weight, axis, indices in part.members:
                keys[(path, weight, axis)] = None
                entries.setdefault((path, weight, axis), set()).update(indices)
        per_unit.append(entries)
    members = [
        Member(*key, tuple(tuple(sorted(entries.get(key, ()))) for entries in per_unit),
               output=key in outputs)
        for key in keys
    ]
    reads = [[r for part in parts for r in part.reads] for parts in units]
    left = tuple(dict.fromkeys(why for parts in units for part in parts for why in part.left))
    return Group(
        producers=producers,
        members=tuple(members),
        removable=tuple(all(_absorbed(r[3], r[1]) for r in unit) for unit in reads),
        prunable=not left and all(_absorbed(r[4], r[1]) for unit in reads for r in unit),
        left=left,
        folds=tuple(
            tuple(Fold(reader, positions, tuple(float(v) for v in const))
                  for reader, _, positions, const, _ in unit if np.any(const != 0.0))
            for unit in reads
        ),
    )


def _absorbed(const: np.ndarray, folds: bool) -> bool:
    """A read that removing the unit leaves exact: of zeros, or of constants a bias absorbs."""
    return bool(np.all(const == 0.0) or (folds and np.all(np.isfinite(const))))


def _zero_or_nan(const: np.ndarray) -> np.ndarray:
    return np.where(const == 0.0, 0.0, np.nan)


def _flat_calls(model: keras.Model) -> list[tuple[str, Any, list, list, Any]]:
    """The calls of `model`'s graph with nested models opened: ("call", layer,
    inputs, outputs, (args, kwargs)), and ("alias", nested model, outer, inner,
    None) where a nested model's inputs stand for the outer tensors (and
    ("alias", None, inner, outer, None) where its outputs come back)."""
    nested_counts: dict[int, int] = {}
    raw = _keras_private.graph_calls(model)
    for op, _, _ in raw:
        nested_counts[id(op)] = nested_counts.get(id(op), 0) + 1
    flat: list[tuple[str, Any, list, list, Any]] = []
    for (op, inputs, outputs), arguments in zip(raw, _keras_private.call_arguments(model)):
        nested = (_keras_private.is_functional(op) or isinstance(op, keras.Sequential))
        if nested and nested_counts[id(op)] == 1 and _keras_private.graph_calls(op):
            inner_inputs, inner_outputs = list(op.inputs), list(op.outputs)
            if len(inner_inputs) == len(inputs) and len(inner_outputs) == len(outputs):
                flat.append(("alias", op, inputs, inner_inputs, None))
                flat += _flat_calls(op)
                flat.append(("alias", None, inner_outputs, outputs, None))
                continue
        flat.append(("call", op, inputs, outputs, arguments))
    return flat


class _Unsupported(Exception):
    """A known kind used in a way the graph does not follow (channels first, groups)."""


def _channels(tensor: Any) -> int | None:
    shape = getattr(tensor, "shape", None)
    if not shape:
        return None
    return shape[-1]


def _numpy(layer: keras.layers.Layer, weight: str) -> np.ndarray | None:
    value = getattr(layer, weight, None)
    return None if value is None else ops.convert_to_numpy(value)


def _keras_class(layer: Any) -> type:
    if layers_lib.is_pinned(layer):
        return type(layer).keras_class
    return type(layer)


def _unknown_why(op: Any) -> str:
    if isinstance(op, (keras.layers.LayerNormalization, keras.layers.GroupNormalization)):
        return "normalizes across channels"
    return "a kind whose channels the graph does not follow"


def _channels_last(layer: Any) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _Unsupported("channels first")


def _activation(layer: Any) -> Callable | None:
    """The layer's activation if it acts entry by entry (identity without one), else None."""
    fn = getattr(layer, "activation", None)
    if fn is None:
        return lambda x: x
    name = getattr(fn, "__name__", "")
    try:
        known = name in _ELEMENTWISE and keras.activations.get(name) is fn
    except ValueError:
        known = False
    known = known or f"{getattr(fn, '__module__', '')}.{name}" in _HUB_ELEMENTWISE
    return fn if known else None


def _activation_name(layer: Any) -> str:
    fn = getattr(layer, "activation", None)
    return getattr(fn, "__name__", type(fn).__name__)


def _apply(fn: Callable, const: np.ndarray) -> np.ndarray:
    """`fn` on the constant channels, in float32 as the model computes; NaN stays NaN."""
    out = np.full(const.shape, np.nan)
    known = np.isfinite(const)
    if known.any():
        values = ops.convert_to_tensor(const[known].astype("float32")[None, :])
        out[known] = ops.convert_to_numpy(fn(values))[0]
    return out


# -- what each kind does to channels ----------------------------------------------


def _consume(walk: _Walk, layer: Any, path: str, value: _Value, weight: str,
             axis: int = -2, groups: int = 1, folds: bool = True) -> np.ndarray:
    """A layer that reads channels along one axis of its kernel (`axis`).

    Its bias absorbs a constant channel when every output sees the whole
    kernel window on it: a `Dense`, or a convolution with `valid` padding
    (`folds`: not a transposed one, whose border outputs see fewer taps). A
    grouped convolution reads channel `c` with row `c % (channels / groups)`
    of group `c // (channels / groups)`: the channels at the same row of
    every group are one unit, so that removing it keeps the groups equal.
    """
    kernel = _numpy(layer, weight)
    axis %= kernel.ndim
    per = kernel.shape[axis]
    if per * groups != len(value.units):
        raise _Unsupported(f"{weight} reads {per * groups} inputs of {len(value.units)}")
    if groups > 1:
        _couple(walk, value, path, [[row + g * per for g in range(groups)] for row in range(per)])
    walk.member(value, path, weight, axis, lambda p: sorted({i % per for i in p}))
    folds = (folds and groups == 1 and getattr(layer, "bias", None) is not None
             and getattr(layer, "padding", "valid") == "valid")
    walk.read(value, path, folds=folds)
    return kernel


def _couple(walk: _Walk, value: _Value, path: str, sets: list[list[int]]) -> None:
    """Makes the units at each set of positions of `value` one unit."""
    for positions in sets:
        known = [value.units[p] for p in positions if value.units[p] is not None]
        if known and len(known) < len(positions):
            walk.units[known[0]].left.append(
                f"coupled by {path!r} with a channel no layer here makes")
        for other in known[1:]:
            walk.union(known[0], other)


def _produce(walk: _Walk, layer: Any, path: str, kernel: np.ndarray, weight: str,
             axis: int = -1, groups: int = 1, size: tuple[str, str] | None = None) -> _Value:
    """Output units along `axis` of the kernel; with `groups`, unit `j` is
    entry `j` of every group (the groups' outputs are contiguous). `size`:
    the layer path and config entry that count them (the layer's own
    `units` or `filters` by default). Under an activation that is not
    entry by entry (softmax) the units are made, and left alone."""
    activation = _activation(layer)
    axis %= kernel.ndim
    count = kernel.shape[axis]
    per = count // groups
    columns = np.moveaxis(kernel, axis, -1).reshape(-1, count)
    pre = _bias_constant(_numpy(layer, "bias"), count)
    pre[~np.all(columns == 0.0, axis=0)] = np.nan
    bias_axis = _numpy(layer, "bias").ndim - 1 if getattr(layer, "bias", None) is not None else None
    walk.outputs.add((path, weight, axis))
    if bias_axis is not None:
        walk.outputs.add((path, "bias", bias_axis))
    walk.sizes[path] = size or (path, _size_key(layer))
    made = []
    for index in range(per):
        unit = walk.new_unit(path, index)
        entries = tuple(index + g * per for g in range(groups))
        walk.units[unit].members.append((path, weight, axis, entries))
        if bias_axis is not None:
            walk.units[unit].members.append((path, "bias", bias_axis, entries))
        made.append(unit)
    units: list[int | None] = [made[f % per] for f in range(count)]
    if activation is None:
        # Its inputs were read like any consumer's (a zero or folded input
        # leaves the pre-activation as it was), but a softmax over the units
        # changes every unit when one goes: only its own units stay.
        why = f"its activation {_activation_name(layer)!r} is not known to act entry by entry"
        for unit in made:
            walk.units[unit].left.append(why)
        return _Value(units, np.full(count, np.nan), np.full(count, np.nan))
    return _Value(units, _apply(activation, pre), _apply(activation, np.zeros(count)))


def _bias_constant(bias: np.ndarray | None, count: int) -> np.ndarray:
    """What a unit with a zero kernel column outputs: its bias, where that is
    one number for the whole channel (a bias over other axes too may vary)."""
    if bias is None:
        return np.zeros(count)
    if bias.shape[-1] != count:
        raise _Unsupported("a bias over other axes than the units")
    rows = bias.reshape(-1, count).astype(np.float64)
    return np.where(np.all(rows == rows[0], axis=0), rows[0], np.nan)


def _size_key(layer: Any) -> str:
    config = layer.get_config()
    return "units" if "units" in config else "filters"


def _same_channels(walk: _Walk, path: str, values: list[_Value]) -> list[int | None]:
    """Channel `c` of every input is one unit (the inputs' units made one)."""
    units: list[int | None] = []
    for position in range(len(values[0].units)):
        found = [v.units[position] for v in values]
        known = [u for u in found if u is not None]
        if not known:
            units.append(None)
            continue
        if len(known) < len(found):
            walk.units[known[0]].left.append(f"merged by {path!r} with a channel no layer here makes")
        root = known[0]
        for other in known[1:]:
            root = walk.union(root, other)
        units.append(root)
    return units


def _format_indices(indices: Sequence[tuple[int, ...]], limit: int = 8) -> str:
    shown = [
        str(list(unit)) if len(unit) != 1 else str(unit[0]) for unit in indices[:limit]
    ]
    more = f", ... ({len(indices)} units)" if len(indices) > limit else ""
    return "[" + ", ".join(shown) + more + "]"
