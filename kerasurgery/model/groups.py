"""Dependency groups: the weight entries that stand or fall with each output unit.

Removing output unit `c` of a `Dense` or convolution removes its kernel
column / filter and bias entry, and also every entry that reads or rescales
that channel downstream: a following `BatchNormalization`'s entries, the
input rows of every consumer (through activations, pooling, padding,
`Flatten`'s strided row blocks, `Concatenate`'s offsets, a depthwise
convolution's channel), and, across a residual `Add`, the same channel of
every other branch. This is the dependency graph of Torch-Pruning (Fang et
al., "DepGraph: Towards Any Structural Pruning", CVPR 2023) over the Keras
graph: what each layer kind does to channels is one handler per Keras class,
looked up in `_HANDLERS` (and in `_group_kinds.py`: `EinsumDense`, attention
heads, KerasHub's `TransformerEncoder`, operations on tensors such as
`x + 3.0`); the walk only asks the handlers.

A unit is not always one column: a grouped convolution's unit is the same
filter of every group (and the same input row of every group where it
reads), so that removing it keeps the groups equal; an attention head's unit
is its query, key and value columns with its rows of the output projection.

A `Group` is a value: the units of one set of coupled producers (a residual
stage's convolutions count once), each `Member` saying which entries of which
weight each unit owns. A group also says which of its units are removable
now: a unit is, when its channel is exactly zero wherever a consumer reads it
(a producer's column and bias at 0.0 with an activation that keeps 0 at 0, or a
`BatchNormalization` whose gamma and beta are 0.0), or a constant that the
consumer's bias absorbs (`Fold`: a `Dense`, or a convolution with `valid`
padding), so that removing it changes no output. Units the graph cannot remove exactly (a model output, a
channel read by a layer whose channels it does not follow, such as
`LayerNormalization`, a layer called twice, the units of a `Dense` under a
softmax) are left alone, with why. A nested model's input carries the
units of the tensor it is called on: `DependencyGroups.inputs` says which,
so that `shrink` can size that input.
"""

from __future__ import annotations

import dataclasses
import math
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


def dependency_groups(model: keras.Model) -> DependencyGroups:
    """Finds the dependency group of every prunable output unit of `model`.

    Args:
        model: A built Functional or Sequential model (nested ones are followed;
            a subclassed nested model is a layer the graph does not know).
            Pinned layers are read through their effective weights.

    Returns:
        A `DependencyGroups`: one `Group` per set of coupled producers
        (`Dense`, `Conv1D`/`2D`/`3D`, a separable convolution's pointwise part),
        in the order of the graph, and the layers the graph could not follow.

    Raises:
        KerasurgeryError: `model` is not a built Functional or Sequential model.

    Example:

    ```python
    groups = dependency_groups(model)
    print(groups.of("conv1"))  # conv1's filters, bn1's entries, conv2's input channels
    ```
    """
    if not (_keras_private.is_functional(model) or isinstance(model, keras.Sequential)):
        raise KerasurgeryError(
            f"Expected a Functional or Sequential model. Received: {type(model).__name__}"
        )
    if not _keras_private.graph_calls(model):
        raise KerasurgeryError(
            f"Model {model.name!r} has no graph yet: build it on an `Input` first."
        )
    return _Walk(model).run()


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
    def __init__(self, model: keras.Model) -> None:
        self.model = model
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
            handler = _handler_for(op)
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


def _dense_or_conv(walk, layer, path, values, inputs, outputs):
    """`Dense` and convolutions: kernel `(..., inputs / groups, filters)`."""
    _channels_last(layer)
    groups = getattr(layer, "groups", 1)
    kernel = _consume(walk, layer, path, values[0], "kernel", groups=groups)
    return [_produce(walk, layer, path, kernel, "kernel", groups=groups)]


def _conv_transpose(walk, layer, path, values, inputs, outputs):
    """Transposed convolutions: kernel `(..., filters, inputs)`."""
    _channels_last(layer)
    kernel = _consume(walk, layer, path, values[0], "kernel", axis=-1, folds=False)
    return [_produce(walk, layer, path, kernel, "kernel", axis=-2)]


def _separable(walk, layer, path, values, inputs, outputs):
    _channels_last(layer)
    value = values[0]
    depthwise = _numpy(layer, "depthwise_kernel")
    multiplier = depthwise.shape[-1]
    walk.member(value, path, "depthwise_kernel", depthwise.ndim - 2)
    pointwise = _numpy(layer, "pointwise_kernel")
    walk.member(value, path, "pointwise_kernel", pointwise.ndim - 2,
                lambda p: [i * multiplier + k for i in p for k in range(multiplier)])
    walk.read(value, path)  # a zero channel adds nothing through both kernels
    return [_produce(walk, layer, path, pointwise, "pointwise_kernel", size=(path, "filters"))]


def _depthwise(walk, layer, path, values, inputs, outputs):
    """Input channel c makes output channels c*m ... c*m+m-1: one unit."""
    _channels_last(layer)
    value = values[0]
    kernel = _numpy(layer, "kernel")
    multiplier = kernel.shape[-1]
    if kernel.shape[-2] != len(value.units):
        raise _Unsupported("kernel does not fit its input")
    spread = lambda p: [i * multiplier + k for i in p for k in range(multiplier)]  # noqa: E731
    walk.member(value, path, "kernel", kernel.ndim - 2)
    bias = _numpy(layer, "bias")
    if bias is not None:
        walk.member(value, path, "bias", 0, spread)
        walk.outputs.add((path, "bias", 0))  # pinned with the channel it adds to
    activation = _activation(layer)
    if activation is None:
        raise _Unsupported("an activation across units")
    count = kernel.shape[-2] * multiplier
    filters = kernel.reshape(-1, count)
    inputs_now = np.repeat(value.const, multiplier)
    offset = np.zeros(count) if bias is None else bias.astype(np.float64)
    # A zero channel (or a zero filter) leaves the bias; another constant
    # stays constant only where no output sees padding.
    through = inputs_now * filters.sum(axis=0) + offset if layer.padding == "valid" else np.nan
    pre = np.where((inputs_now == 0.0) | np.all(filters == 0.0, axis=0), offset, through)
    # Pinned: the input channel at zero and the bias on it at zero.
    can = np.where(np.repeat(value.can_const, multiplier) == 0.0, 0.0, np.nan)
    units = [u for u in value.units for _ in range(multiplier)]
    return [_Value(units, _apply(activation, pre), _apply(activation, can))]


def _batch_norm(walk, layer, path, values, inputs, outputs):
    """Zero where gamma and beta are: other constants depend on training or inference."""
    value = values[0]
    rank = len(inputs[0].shape)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if [a % rank for a in axes] != [rank - 1]:
        raise _Unsupported("normalizes another axis than the last")
    if not layers_lib.is_pinnable(layer):  # prune_units pins gamma and beta
        raise _Unsupported("its gamma and beta cannot be pinned (renorm=True)")
    for weight in ("gamma", "beta", "moving_mean", "moving_variance"):
        if getattr(layer, weight, None) is not None:
            walk.member(value, path, weight, 0)
    gamma, beta = _numpy(layer, "gamma"), _numpy(layer, "beta")
    size = len(value.units)
    if gamma is None or beta is None:
        return [_Value(list(value.units), np.full(size, np.nan), np.full(size, np.nan))]
    const = np.where((gamma == 0.0) & (beta == 0.0), 0.0, np.nan)
    return [_Value(list(value.units), const, np.zeros(size))]


def _elementwise(walk, layer, path, values, inputs, outputs):
    """Channel by channel: activations, pooling, padding, dropout."""
    _channels_last(layer)
    value = values[0]
    if len(value.units) != (_channels(outputs[0]) or 0):
        raise _Unsupported("changes the channel count")
    if isinstance(layer, keras.layers.Activation):
        activation = _activation(layer)
        if activation is None:
            raise _Unsupported("an activation across units")
    elif isinstance(layer, _CONSTANT_KEEPING) and getattr(layer, "padding", "valid") == "valid":
        return [value]
    elif isinstance(layer, _ZERO_KEEPING + _CONSTANT_KEEPING):
        # Padding (or dropout in training) changes a constant, never a zero.
        return [value.only_zero()]
    else:
        activation = layer
    return [_Value(list(value.units), _apply(activation, value.const),
                   _apply(activation, value.can_const))]


def _flatten(walk, layer, path, values, inputs, outputs):
    """Channels last: the flat vector holds each channel at a stride of the channel count."""
    _channels_last(layer)
    value = values[0]
    spatial = inputs[0].shape[1:-1]
    if any(size is None for size in spatial):
        raise _Unsupported("spatial size unknown")
    times = math.prod(spatial)
    return [_Value(value.units * times, np.tile(value.const, times), np.tile(value.can_const, times))]


def _merge(walk, layer, path, values, inputs, outputs):
    """A residual merge: channel c of every input is one unit.

    Inputs may broadcast over the other axes (a squeeze-and-excitation scale
    of shape (1, 1, C) times the (H, W, C) features), not over channels.
    """
    if len({_channels(t) for t in inputs} | {_channels(outputs[0])}) != 1:
        raise _Unsupported("broadcasts over channels")
    combine = _MERGES[_keras_class(layer)]
    return [_Value(_same_channels(walk, path, values), combine([v.const for v in values]),
                   combine([v.can_const for v in values]))]


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


_MERGES: dict[type, Callable[[list[np.ndarray]], np.ndarray]] = {
    keras.layers.Add: lambda xs: np.sum(xs, axis=0),
    keras.layers.Subtract: lambda xs: xs[0] - xs[1],
    keras.layers.Multiply: lambda xs: np.prod(xs, axis=0),
    keras.layers.Average: lambda xs: np.mean(xs, axis=0),
    keras.layers.Maximum: lambda xs: np.max(xs, axis=0),
    keras.layers.Minimum: lambda xs: np.min(xs, axis=0),
}


def _reshape(walk, layer, path, values, inputs, outputs):
    """A reshape that keeps the last axis keeps every entry's channel (C order).

    Its config names the channel count; `shrink` writes -1 there instead,
    which needs no other -1 in the target shape.
    """
    if _channels(inputs[0]) != _channels(outputs[0]) or _channels(outputs[0]) is None:
        raise _Unsupported("moves the channel axis")
    if -1 in tuple(layer.target_shape)[:-1]:
        raise _Unsupported("infers another axis")
    walk.reshapes.append(path)
    return [values[0]]


def _concatenate(walk, layer, path, values, inputs, outputs):
    rank = len(outputs[0].shape)
    if layer.axis % rank != rank - 1:
        raise _Unsupported("concatenates another axis than the last")
    return [_Value(
        [u for v in values for u in v.units],
        np.concatenate([v.const for v in values]),
        np.concatenate([v.can_const for v in values]),
    )]


_L = keras.layers
# A constant channel stays that constant (max pooling pads with -inf; with
# `valid` padding nothing is padded).
_CONSTANT_KEEPING = (
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D,
    _L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D,
    _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D, _L.GlobalAveragePooling3D,
    _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D, _L.GlobalMaxPooling3D,
    _L.Cropping1D, _L.Cropping2D, _L.Cropping3D,
    _L.UpSampling1D, _L.UpSampling2D, _L.UpSampling3D,
)
# Zero stays zero, other constants do not (padding, dropout while training).
_ZERO_KEEPING = (
    _L.Dropout, _L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D, _L.GaussianDropout,
    _L.ZeroPadding1D, _L.ZeroPadding2D, _L.ZeroPadding3D,
)

# One handler per Keras class (exact classes: a subclass may compute otherwise).
_HANDLERS: dict[type, Callable[..., list[_Value]]] = {
    _L.Dense: _dense_or_conv, _L.Conv1D: _dense_or_conv, _L.Conv2D: _dense_or_conv,
    _L.Conv3D: _dense_or_conv,
    _L.Conv1DTranspose: _conv_transpose, _L.Conv2DTranspose: _conv_transpose,
    _L.Conv3DTranspose: _conv_transpose,
    _L.DepthwiseConv1D: _depthwise, _L.DepthwiseConv2D: _depthwise,
    _L.SeparableConv1D: _separable, _L.SeparableConv2D: _separable,
    _L.BatchNormalization: _batch_norm,
    _L.Activation: _elementwise, _L.ReLU: _elementwise, _L.LeakyReLU: _elementwise,
    _L.ELU: _elementwise,
    **{kind: _elementwise for kind in _ZERO_KEEPING + _CONSTANT_KEEPING},
    _L.Flatten: _flatten,
    _L.Reshape: _reshape,
    **{kind: _merge for kind in _MERGES},
    _L.Concatenate: _concatenate,
}


def _handler_for(op: Any) -> Callable[..., list[_Value]] | None:
    # Attention, EinsumDense, KerasHub blocks and operations on tensors build
    # on the handlers here.
    from kerasurgery.model import _group_kinds

    if not isinstance(op, keras.layers.Layer):
        return _group_kinds.BY_NAME.get(f"{type(op).__module__}.{type(op).__qualname__}")
    kind = _keras_class(op)
    return (_HANDLERS.get(kind) or _group_kinds.BY_CLASS.get(kind)
            or _group_kinds.BY_NAME.get(f"{kind.__module__}.{kind.__qualname__}"))


def _format_indices(indices: Sequence[tuple[int, ...]], limit: int = 8) -> str:
    shown = [
        str(list(unit)) if len(unit) != 1 else str(unit[0]) for unit in indices[:limit]
    ]
    more = f", ... ({len(indices)} units)" if len(indices) > limit else ""
    return "[" + ", ".join(shown) + more + "]"
