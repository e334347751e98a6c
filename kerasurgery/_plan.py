"""What `freeze` decides for each layer: selection, pins, storage.

`kerasurgery.freeze` (on a Keras model) and the offline rewrite of a `.keras`
file (`_offline`, no TensorFlow) both call this module, so the two cannot
disagree on which layers a key selects, how several pins merge, which masks
and values are accepted, how pinned values are stored and what the effective
weights are. Nothing here imports Keras: a plan's arrays are numpy, or, for
a layer whose weight is split across processes, live tensors handled through
the array namespace the plan carries (`PinPlan.xp`, `kerasurgery._arrays`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from kerasurgery import pins as _pins
from kerasurgery._arrays import HOST, Host
from kerasurgery.errors import (
    KerasurgeryError, LayerSelectionError, LayerSkippedWarning, NothingPinnedWarning, PinError,
)
from kerasurgery.pins import Axes, Pin

# (weight, mask, value): one pin of one weight; `None` mask = nothing.
Update = tuple[str, Any, Any]


class SlicedWeight:
    """A weight left where it lives, read a slice of rows at a time until a whole copy is asked for.

    Ranking a large weight (a 60 MB token embedding) by magnitude needs
    only a piece of it at a time (`rules.smallest`, the ranking across
    layers: `pruning.smallest_cuts`), so those read it through `pieces`
    and the host never holds it whole; anything else that needs the values
    gets the whole array (`np.asarray`, which `PinPlan.array` keeps). Its
    `shape`, `dtype`, `ndim` and `size` are the weight's.

    Args:
        shape: The weight's shape.
        dtype: Its numpy dtype.
        rows: (start, stop) -> the rows `[start:stop]` along the first axis, as numpy.
        whole: () -> the whole weight as a new numpy array.
    """

    def __init__(self, shape: Sequence[int], dtype: Any, rows: Callable[[int, int], np.ndarray],
                 whole: Callable[[], np.ndarray]) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self._rows, self._whole = rows, whole

    def pieces(self, entries: int) -> Iterator[np.ndarray]:
        """The entries in flat C order, whole rows at a time, about `entries` per piece."""
        if self.ndim == 0:
            yield self._whole().reshape(-1)
            return
        row = max(1, self.size // max(1, self.shape[0]))
        step = max(1, entries // row)
        for start in range(0, self.shape[0], step):
            yield self._rows(start, min(start + step, self.shape[0])).reshape(-1)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._whole()
        return whole if dtype is None else whole.astype(dtype, copy=False)


class PinPlan:
    """The pins one layer will have, per weight, as numpy arrays.

    `effective[w]` is the weight the layer computes with now (rules see it);
    `masks[w]` is True at pinned entries; `values[w]` is `None` while every
    pinned entry keeps its current value, or a scalar (0-d array) while every
    pinned entry holds that one value (pruning): the common cases, for which
    no weight-sized array of values is built. Otherwise it is the weight with
    the pinned entries at their values.

    A weight may be given as a `SlicedWeight`: `weight(w)` hands it as it is
    to what reads it in pieces (the magnitude rules), and `array(w)` (or
    `effective`) copies it whole, once, for anything else. Pruning a layer by
    magnitude then never holds its weight on the host, only its mask.

    `xp` is where the arrays live (`kerasurgery._arrays`): numpy arrays on
    the host (`HOST`), or the live tensors of a layer whose weights are
    split across processes (`kerasurgery.model.device`), planned with the
    same code; scalar values are host 0-d arrays either way.
    """

    def __init__(self, effective: Mapping[str, Any], masks: dict[str, Any] | None = None,
                 xp: Host = HOST) -> None:
        self.xp = xp
        self.sources: dict[str, Any] = dict(effective)
        self.masks = masks if masks is not None else {
            w: xp.zeros_mask(a) for w, a in self.sources.items()
        }
        self.values: dict[str, np.ndarray | None] = {w: None for w in self.sources}
        self._storage: dict[str, str] | None = None
        self._stored: dict[str, np.ndarray] = {}

    @property
    def effective(self) -> dict[str, np.ndarray]:
        """Every weight as a numpy array (a `SlicedWeight` is copied whole here, once)."""
        return {w: self.array(w) for w in self.sources}

    def weight(self, w: str) -> np.ndarray | SlicedWeight:
        """The weight `w` as given: a `SlicedWeight` stays one (for what reads it in pieces)."""
        return self.sources[w]

    def array(self, w: str) -> np.ndarray:
        """The weight `w` as a numpy array, kept for the next call."""
        if isinstance(self.sources[w], SlicedWeight):
            self.sources[w] = np.asarray(self.sources[w])
        return self.sources[w]

    @property
    def main(self) -> str:
        return next(iter(self.sources))

    @property
    def kernels(self) -> list[str]:
        """The weights a rule sees as a kernel: all but the bias."""
        return [w for w in self.sources if w != "bias"]

    def add(self, updates: Sequence[Update], name: str) -> PinPlan:
        """Adds pins; a later pin's values win on entries already pinned."""
        self._storage = None
        # Every update is checked before any is kept: a pin that does not fit
        # leaves the plan as it was (a layer a pattern skips stays unchanged).
        masks, values = dict(self.masks), dict(self.values)
        for weight, mask, value in updates:
            if mask is None and value is None:
                continue
            if weight not in self.sources:
                raise PinError(f"Layer {name!r} has no {weight}, but a {weight} pin was given.")
            masks[weight], values[weight] = merge(
                masks[weight], values[weight], mask, value,
                self.weight(weight), name, weight, self.xp,
            )
        self.masks, self.values = masks, values
        return self

    def storage(self) -> dict[str, str]:
        """Per weight: `SHARED` when every pinned entry has the same bits, else `PER_ENTRY`."""
        if self._storage is None:
            xp = self.xp
            self._storage, self._stored = {}, {}
            for w, mask in self.masks.items():
                values = self.array(w) if self.values[w] is None else self.values[w]
                dtype = xp.dtype(values)
                pinned = xp.any(mask)
                # A bias is small: its values are stored per entry, as in 0.1.0.
                shared = None if w == "bias" else (
                    np.zeros((), dtype) if not pinned
                    else values if not xp.shape(values) else xp.same_bits(values, mask)
                )
                self._storage[w] = _pins.SHARED if shared is not None else _pins.PER_ENTRY
                # Per entry, only pinned entries are meaningful; the rest hold
                # zeros, so a non-finite free entry is not taken for a pin.
                self._stored[w] = shared if shared is not None else xp.cast(
                    xp.where(mask, values, xp.scalar(0, dtype)), dtype)
        return self._storage

    def take(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every weight's mask and stored value; the plan lets go of its weights.

        For writing a live layer, whose raw weights take their effective
        values where they live (`PinMixin.set_pins`): the plan's copy of the
        layer's weights is released before the layer is written, so pinning
        never holds a layer's weights twice on the host.
        """
        self.storage()
        taken = {w: (self.masks[w], self._stored[w]) for w in self.masks}
        self.sources, self.values, self.masks, self._stored = {}, {}, {}, {}
        return taken

    def settled(self) -> SettledPlan | None:
        """What `take` will give, kept small until the layer is pinned; `None` when it is not small.

        Small: every weight but the bias stores one shared value (pruning,
        or pins that keep values all equal), so what is kept is the masks,
        packed eight entries to a byte, and scalars: an eighth of the pins.
        """
        if not self.xp.host:
            return None  # live tensors of a split weight: planned again where they live
        storage = self.storage()
        if any(w != "bias" and self._stored[w].ndim for w in storage):
            return None
        return SettledPlan(
            {w: (np.packbits(m.reshape(-1)), m.shape) for w, m in self.masks.items()},
            dict(storage), dict(self._stored),
        )

    def state(self) -> dict[str, _pins.WeightPins]:
        """Every weight's effective array (pinned entries at their values), mask and stored value."""
        self.storage()
        return {
            w: _pins.WeightPins(
                effective=effective(self.array(w), self.masks[w], self.values[w], self.xp),
                mask=self.masks[w],
                value=self._stored[w],
            )
            for w in self.masks
        }


@dataclasses.dataclass
class SettledPlan:
    """A layer's plan reduced to what pinning a live layer takes (`PinPlan.settled`)."""

    packed: dict[str, tuple[np.ndarray, tuple[int, ...]]]
    storage: dict[str, str]
    stored: dict[str, np.ndarray]

    def plan(self) -> PinPlan:
        """A `PinPlan` without weights whose `storage` and `take` give what the settled plan gave."""
        masks = {w: np.unpackbits(bits, count=int(np.prod(shape, dtype=np.int64))).view(bool).reshape(shape)
                 for w, (bits, shape) in self.packed.items()}
        plan = PinPlan({}, masks)
        plan._storage, plan._stored = self.storage, self.stored
        self.packed, self.storage, self.stored = {}, {}, {}
        return plan


def effective(weight: Any, mask: Any, values: Any | None, xp: Host = HOST) -> Any:
    """`weight` with the pinned entries at `values` (`None`: they keep their current values).

    Values of the weight's shape already hold the weight off the mask (`merge`
    builds them so) and are returned as they are; a scalar is filled in.
    """
    if values is None:
        return weight
    return values if xp.shape(values) else xp.where(mask, values, weight)


def merge(
    mask: Any,
    values: Any | None,
    new_mask: Any,
    new_value: Any,
    weight: Any,
    name: str,
    which: str,
    xp: Host = HOST,
) -> tuple[Any, Any | None]:
    """Adds one pin to a weight's mask and values (`None` values = current).

    On the host or where the weight lives (`xp`); a mask or values given as
    host arrays are checked on the host and put where the weight lives.
    """
    if new_mask is None:
        if new_value is not None:
            raise PinError(
                f"Layer {name!r}: a {which} value was given without a {which} mask."
            )
        return mask, values
    new_mask = checked_mask(new_mask, xp.shape(weight), name, which, xp)
    if not xp.host and isinstance(new_mask, np.ndarray):
        new_mask = xp.put(new_mask, weight)
    if new_value is None:
        if values is not None:
            values = xp.where(new_mask, weight, effective(weight, mask, values, xp))
        return _union(mask, new_mask, xp), values
    new_values = checked_value(new_value, weight, name, which, xp)
    scalar = _scalar(new_values)
    if scalar is not None and (
        (values is None and not xp.any(mask))
        or (values is not None and not xp.shape(values) and _pins.bits(values) == _pins.bits(scalar))
    ):
        return _union(mask, new_mask, xp), scalar  # every pinned entry holds this one value
    if not xp.host:  # a scalar stays one; an array goes where the weight lives
        new_values = scalar if scalar is not None else xp.put(new_values, weight)
    return _union(mask, new_mask, xp), xp.where(new_mask, new_values, effective(weight, mask, values, xp))


def _union(mask: Any, new_mask: Any, xp: Host = HOST) -> Any:
    # The first pin of a weight: its mask as it is, not a third mask-sized array.
    return xp.logical_or(mask, new_mask) if xp.any(mask) else new_mask


def _scalar(values: np.ndarray) -> np.ndarray | None:
    """The one value of `values` when it is a scalar broadcast to a shape (`checked_value`), else `None`."""
    if values.size and all(stride == 0 for stride in values.strides):
        return np.asarray(values.reshape(-1)[0])
    return None


def checked_mask(mask: Any, shape: tuple, name: str, which: str, xp: Host = HOST) -> Any:
    """A user's mask: of the weight's shape, boolean or only 0 and 1.

    A mask that a rule built where the weight lives (not a host array) is
    checked there: its shape and its boolean dtype.
    """
    if not xp.host and not isinstance(mask, (np.ndarray, np.generic, list, tuple)):
        if xp.shape(mask) != tuple(shape) or xp.dtype(mask) != np.bool_:
            raise PinError(
                f"Layer {name!r}: the {which} mask must be boolean, of shape {tuple(shape)}. "
                f"Received: {xp.dtype(mask)} of shape {xp.shape(mask)}"
            )
        return mask
    array = np.asarray(mask)
    if array.shape != tuple(shape):
        raise PinError(
            f"Layer {name!r}: the {which} mask has the wrong shape. "
            f"Expected: {tuple(shape)}. Received: {array.shape}"
        )
    if array.dtype != np.bool_:
        if not (np.issubdtype(array.dtype, np.number) and np.isin(array, (0, 1)).all()):
            raise PinError(
                f"Layer {name!r}: the {which} mask must be boolean (True = pinned) "
                f"or hold only 0 and 1. Received dtype: {array.dtype}"
            )
        array = array.astype(bool)
    return array


def checked_value(value: Any, weight: Any, name: str, which: str, xp: Host = HOST) -> np.ndarray:
    """A user's pinned value (on the host): finite, a scalar or of the weight's shape, in its dtype."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PinError(
            f"Layer {name!r}: the {which} value must be a number or an array. "
            f"Received: {value!r}"
        ) from None
    shape = xp.shape(weight)
    if array.shape not in ((), shape):
        raise PinError(
            f"Layer {name!r}: the {which} value has the wrong shape. Expected: a "
            f"scalar or {shape}. Received: {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise PinError(f"Layer {name!r}: the {which} value must be finite.")
    return np.broadcast_to(array.astype(xp.dtype(weight)), shape)


def resolve(spec: Any, plan: PinPlan, axes: Callable[[str], Axes], name: str) -> list[Update]:
    """(weight, mask, value) updates of one layer for a `Pin`, a mask or a rule.

    A `Pin`'s `kernel` is the layer's main weight. A rule sees each kernel
    (both of a separable convolution) with the layer's bias, as numpy arrays
    of the layer's current effective weights; the bias part is taken once.
    `axes(weight)` gives a weight's input and unit axes; `name` names the
    layer in messages.
    """
    if isinstance(spec, (np.ndarray, list, tuple)):
        spec = Pin(kernel=spec)
    if isinstance(spec, Pin):
        return [(plan.main, spec.kernel, spec.kernel_value), ("bias", spec.bias, spec.bias_value)]
    if not callable(spec):
        raise PinError(
            "Expected a Pin, a boolean array or a rule for layer "
            f"{name!r}. Received: {type(spec).__name__}"
        )
    updates: list[Update] = []
    bias = plan.array("bias") if "bias" in plan.sources else None
    bias_pin: Update | None = None
    if not plan.xp.host and not getattr(spec, "device", False):
        raise KerasurgeryError(
            f"Layer {name!r} is split across processes (hosts), and rule "
            f"{_rule_name(spec)!r} has no form that runs where its "
            "shards live: use zeros, below, smallest (per layer), n_of_m, inputs, units, "
            "entries, connections, fraction or a mask, or pin on one host (outside the "
            "distribution) and load the model inside the scope."
        )
    # A rule that reads its weight in pieces (`smallest`) gets it as the plan
    # holds it, so a weight left where it lives is not copied whole.
    pieces = getattr(spec, "pieces", False)
    for weight in plan.kernels:
        kernel = plan.weight(weight) if pieces else plan.array(weight)
        try:
            if not plan.xp.host:
                pin = spec(kernel, bias, axes(weight), xp=plan.xp)
            elif isinstance(spec, _pins.AxisRule):
                pin = spec(kernel, bias, axes(weight))
            else:
                pin = spec(kernel, bias)
        except PinError as e:
            raise PinError(f"Layer {name!r}: {e}") from None
        if not isinstance(pin, Pin):
            raise PinError(
                f"A rule must return a Pin. Received: {type(pin).__name__} "
                f"for layer {name!r}"
            )
        updates.append((weight, pin.kernel, pin.kernel_value))
        # The bias part of the first kernel that gives one (a separable
        # convolution's units are its pointwise kernel's).
        if bias_pin is None and pin.bias is not None:
            bias_pin = ("bias", pin.bias, pin.bias_value)
    return updates + ([bias_pin] if bias_pin else [])


def _rule_name(spec: Any) -> str:
    """A rule's name for messages: a built-in rule's own, else its function's or class's."""
    return getattr(spec, "name", None) or getattr(spec, "__name__", None) or type(spec).__name__


def rank_across(rule: Any, plan_of: Callable[[str], PinPlan], paths: Sequence[str],
                names: Mapping[str, str]) -> dict[str, list[tuple[str, Any]]]:
    """Ranks the layers at `paths` together by a rule with `across`, one layer in memory at a time.

    Args:
        rule: A rule with `across` (its `cuts(arrays)`), `bias` and `value`
            (`rules.smallest(..., across_layers=True)`).
        plan_of: path -> the layer's plan; called once per layer per pass.
        paths: The layers ranked, each once, in model order.
        names: path -> layer name, for messages.

    Returns:
        path -> [(weight, cut)]: where each kernel (and, with `bias`, each
        bias, ranked among the biases) stands in the ranking; `cut.mask(w)`
        of the layer's effective weight gives its mask when it is planned.
    """
    ranked: dict[str, list[tuple[str, Any]]] = {p: [] for p in paths}
    weights = [("kernels", lambda plan: plan.kernels)]
    if rule.bias:
        weights.append(("bias", lambda plan: ["bias"] if "bias" in plan.sources else []))
    for part, chosen in weights:
        order: list[tuple[str, str]] = []

        def arrays() -> Any:
            order.clear()
            for path in paths:
                plan = plan_of(path)
                if not plan.xp.host:
                    raise KerasurgeryError(
                        f"Layer {names[path]!r} is split across processes (hosts), and rule "
                        f"{rule.name!r} ranks layers together on the host: rank each layer "
                        "alone (`across_layers=False`), or pin on one host (outside the "
                        "distribution) and load the model inside the scope."
                    )
                for weight in chosen(plan):
                    order.append((path, weight))
                    yield plan.weight(weight)
                del plan  # before the next layer is read

        cuts = rule.across.cuts(arrays)
        if part == "bias" and len(order) < len(paths):
            missing = next(p for p in paths if (p, "bias") not in order)
            raise PinError(
                f"Rule {rule.name!r} targets the bias, but layer {names[missing]!r} has none."
            )
        for (path, weight), cut in zip(order, cuts):
            ranked[path].append((weight, cut))
    return ranked


def check_pins_argument(pins: Any) -> None:
    if not isinstance(pins, Mapping) or not pins:
        raise PinError(
            "Expected `pins` to be a non-empty mapping from layer names or "
            f"patterns to pins. Received: {pins!r}"
        )


def select(
    key: Any,
    pinnable: Mapping[str, tuple[str, str | None]],
    others: Mapping[str, tuple[str, str]],
    supported: Sequence[str],
    listing: str,
) -> list[str]:
    """The paths of the supported layers that `key` selects.

    A path (`dense`, `inner/dense`: names are unique only within one model)
    or a variable path without the variable name selects that one layer;
    otherwise a name selects every supported layer of that name, and a glob
    every supported layer whose path, variable path or name it matches.

    Args:
        key: The layer path, name or glob.
        pinnable: path -> (name, variable prefix or `None`) of the supported layers, in order.
        others: path -> (name, class name) of every layer, in order (for the message
            about a layer of an unsupported kind).
        supported: The supported Keras class names, for messages.
        listing: The supported layers as messages list them.
    """
    if not isinstance(key, str):
        raise LayerSelectionError(
            f"Expected a layer name or glob pattern. Received: {key!r}"
        )
    if key in pinnable:
        return [key]
    named = [p for p, names in pinnable.items() if key in names]
    if named:
        return named
    other = next(
        (cls for path, (name, cls) in others.items() if key in (path, name)), None
    )
    if other is not None:
        raise LayerSelectionError(
            f"Expected a layer of a supported kind "
            f"({', '.join(supported)}). Received: "
            f"layer={key!r} ({other}). Supported layers: {listing}"
        )
    matched = [
        path for path, names in pinnable.items()
        if any(n is not None and fnmatch.fnmatchcase(n, key) for n in (path, *names))
    ]
    if not matched:
        raise LayerSelectionError(
            f"No supported layer matches {key!r}. Supported layers: {listing}"
        )
    return matched


def listing(model_name: str, paths: Sequence[str], supported: Sequence[str], limit: int = 12) -> str:
    """The supported layers of a model, as selection errors list them."""
    if not paths:
        return (f"none (model {model_name!r} has no layer of a supported kind: "
                f"{', '.join(supported)})")
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(list(paths)[:limit]) + more


_GLOB = frozenset("*?[")


def _weight_layers_first(key: Any, selected: list[str], spec: Any, normalizations: Collection[str]) -> list[str]:
    """`selected` without the normalization layers a glob reaches beside weight layers.

    Normalizations became pinnable kinds so that `prune_units` can pin a
    pruned channel's scale and offset; `{"*": ks.rules.smallest(0.8)}` or
    the command line's default `--zeros` over every layer still means the
    weight layers, as it did before (pruning 80% of the gammas, or pinning
    every offset that starts at 0.0, would change what those scripts do). A
    glob that matches only normalization layers (`"bn*"`), a name or path,
    and a spec that pins nothing (`ks.Pin()`, which makes layers pin-capable
    for `GradualPruning`) select them.
    """
    if not normalizations or not by_pattern(key, selected) or _pins_nothing(spec):
        return selected
    weights = [p for p in selected if p not in normalizations]
    return weights or selected


def _pins_nothing(spec: Any) -> bool:
    return isinstance(spec, Pin) and spec.kernel is None and spec.bias is None


def by_pattern(key: str, selected: Sequence[str]) -> bool:
    """Whether `key` selected the layers at `selected` as a glob, not by their path or name.

    A layer that a glob selects and whose pins do not fit is skipped; one
    that a key names (its path, variable path or name) is an error.
    """
    return bool(_GLOB & set(key)) and not any(
        key in (path, path.rpartition("/")[2]) for path in selected
    )


@dataclasses.dataclass
class Selection:
    """One key of the `freeze` mapping: its spec, the paths it selects, and how."""

    key: Any
    spec: Any
    paths: list[str]
    by_pattern: bool
    members: set[str] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.members = set(self.paths)


class Planner:
    """The selections of one `freeze` call, and the updates each selected layer gets.

    `freeze` (`plan_each`) and the offline rewrite of a file plan one layer
    at a time, so that only one layer's weights are in memory at once; the
    rules that rank across layers read the layers one at a time too. Keys are applied in order (a later key's
    values win on shared entries); a rule with `across` ranks all the layers
    of all the keys it is given under together, each once (`rank_across`).

    A key's pins that do not fit a layer (`PinError`: n:m over 3 input
    channels, a bias rule on a layer without bias, a mask of another shape)
    are an error when the key names the layer, and skip that layer for that
    key when the key is a glob: `skipped` lists them, `report` warns of them
    (`LayerSkippedWarning`). A glob whose pins fit none of its layers is an
    error. Layers that an `exclude` pattern selects are left out first.

    Args:
        pins: The `freeze` mapping.
        select_key: key -> the paths it selects (`select`).
        exclude: Layer paths, names or globs to leave out, as `select_key` reads them.
    """

    def __init__(
        self, pins: Mapping[str, Any], select_key: Callable[[Any], list[str]], *,
        exclude: Sequence[str] = (), normalizations: Collection[str] = (),
    ) -> None:
        check_pins_argument(pins)
        excluded = excluded_paths(exclude, select_key)
        self.selections: list[Selection] = []
        for key, spec in pins.items():
            selected = _weight_layers_first(key, select_key(key), spec, normalizations)
            kept = [p for p in selected if p not in excluded]
            if not kept:
                raise LayerSelectionError(
                    f"Every layer that {key!r} selects is excluded: {_some(selected)}."
                )
            self.selections.append(Selection(key, spec, kept, by_pattern(key, kept)))
        # (selection index, path) -> why the key's pins do not fit the layer.
        self.skipped: dict[tuple[int, str], str] = {}
        # (selection index, path) -> entries the key's rule selects in the layer.
        self._selected: dict[tuple[int, str], int] = {}
        self._across: dict[int, dict[str, list[Update]]] = {}
        self._checked = False

    @property
    def paths(self) -> list[str]:
        """Every selected path once, in the order first selected; not those every key skips."""
        return list(dict.fromkeys(
            p for i, s in enumerate(self.selections) for p in s.paths if (i, p) not in self.skipped
        ))

    def rank_across(self, plan_of: Callable[[str], PinPlan], name_of: Callable[[str], str]) -> None:
        """Resolves the rules with `across` over all the layers each selects.

        With `bias`, a layer without a bias that only globs select is left out
        of the ranking (skipped); one that a key names is an error.
        """
        groups: dict[int, list[int]] = {}
        for i, selection in enumerate(self.selections):
            if getattr(selection.spec, "across", None) is not None:
                groups.setdefault(id(selection.spec), []).append(i)
        for key, indexes in groups.items():
            spec = self.selections[indexes[0]].spec
            paths = list(dict.fromkeys(p for i in indexes for p in self.selections[i].paths))
            if getattr(spec, "bias", False):
                for path in paths:
                    holding = [i for i in indexes if path in self.selections[i].members]
                    if "bias" in plan_of(path).sources or not all(
                        self.selections[i].by_pattern for i in holding
                    ):
                        continue
                    for i in holding:
                        self.skipped[(i, path)] = (
                            f"Layer {name_of(path)!r}: Rule {getattr(spec, 'name', '?')!r} targets the bias, "
                            "but the layer has none."
                        )
                paths = [p for p in paths if not all(
                    (i, p) in self.skipped for i in indexes if p in self.selections[i].members
                )]
            self._across[key] = rank_across(spec, plan_of, paths, {p: name_of(p) for p in paths})

    def updates(self, spec: Any, path: str, plan: PinPlan, axes: Callable[[str], Axes],
                name: str) -> list[Update]:
        """The updates that `spec` gives the layer at `path` (after `rank_across`)."""
        if id(spec) in self._across:
            return [(w, cut.mask(plan.weight(w)), spec.value) for w, cut in self._across[id(spec)][path]]
        return resolve(spec, plan, axes, name)

    def apply(self, path: str, plan: PinPlan, axes: Callable[[str], Axes], name: str) -> PinPlan:
        """Adds to `plan` the pins of every key that selects `path`, in key order.

        A glob's pins that do not fit the layer are skipped (until `check`
        or `plan_all` has settled which are); a named layer's raise.
        """
        for i, selection in enumerate(self.selections):
            if path not in selection.members or (i, path) in self.skipped:
                continue
            try:
                updates = self.updates(selection.spec, path, plan, axes, name)
                plan.add(updates, path)
            except PinError as e:
                if not selection.by_pattern or self._checked:
                    raise
                self.skipped[(i, path)] = str(e)
                continue
            self._selected[(i, path)] = sum(
                plan.xp.count(mask) for _, mask, _ in updates if mask is not None
            )
        return plan

    def skips_whole(self, path: str) -> bool:
        """Whether every key that selects `path` skips it (the layer is left as it is)."""
        return all((i, path) in self.skipped
                   for i, s in enumerate(self.selections) if path in s.members)

    def check(
        self,
        plan_of: Callable[[str], PinPlan],
        axes_of: Callable[[str], Callable[[str], Axes]],
        name_of: Callable[[str], str],
        *,
        keep: bool = False,
    ) -> dict[str, SettledPlan]:
        """Settles which layers the globs skip before anything is written or pinned in place.

        Plans each selected layer, one at a time, and keeps what was
        skipped: a layer skipped whole keeps its class, which decides where
        its weights are written. Without globs nothing can be skipped and,
        unless `keep`, nothing is planned here.

        Args:
            keep: Plan every layer, named ones too (so that any error comes
                before the first layer is pinned), and keep each small plan
                (`PinPlan.settled`) for pinning without planning it again.

        Returns:
            path -> settled plan, with `keep`; else empty.

        Raises:
            PinError: a glob's pins fit none of the layers it selects, or
                (with `keep`) a key's pins do not fit a layer it names.
        """
        kept: dict[str, SettledPlan] = {}
        if keep or any(s.by_pattern for s in self.selections):
            for path in self.paths:
                plan = self.apply(path, plan_of(path), axes_of(path), name_of(path))
                settled = plan.settled() if keep else None
                del plan  # its weights, before the next layer is read
                if settled is not None:
                    kept[path] = settled
        self.settle()
        return kept

    def settle(self) -> None:
        """Ends the skipping: a glob whose pins fit none of its layers raises its first layer's error."""
        for i, selection in enumerate(self.selections):
            reasons = [self.skipped[(i, p)] for p in selection.paths if (i, p) in self.skipped]
            if reasons and len(reasons) == len(selection.paths):
                if len(reasons) == 1:
                    raise PinError(reasons[0])
                raise PinError(f"{reasons[0].rstrip('.')}; the pins of {selection.key!r} fit "
                               f"none of the {len(reasons)} layers it selects.")
        self._checked = True

    def report(self) -> None:
        """Warns of each skipped layer, and of each rule that selects no entry (after planning)."""
        for (i, path), reason in self.skipped.items():
            warnings.warn(LayerSkippedWarning(path, self.selections[i].key, reason), stacklevel=4)
        for i, selection in enumerate(self.selections):
            if isinstance(selection.spec, (Pin, np.ndarray, list, tuple)):
                continue  # pins given as masks: an empty one makes a layer pin-capable
            counts = [n for (j, _), n in self._selected.items() if j == i]
            if counts and not any(counts):
                rule = getattr(selection.spec, "name", type(selection.spec).__name__)
                warnings.warn(NothingPinnedWarning(selection.key, rule, len(counts)), stacklevel=4)


def excluded_paths(exclude: Sequence[str], select_key: Callable[[Any], list[str]]) -> set[str]:
    """The paths that `exclude` selects, each pattern read as a `freeze` key is."""
    if isinstance(exclude, str):
        exclude = [exclude]
    paths: set[str] = set()
    for pattern in exclude:
        try:
            paths.update(select_key(pattern))
        except LayerSelectionError as e:
            raise LayerSelectionError(f"Cannot exclude {pattern!r}: {e}") from None
    return paths


def _some(paths: Sequence[str], limit: int = 12) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def plan_each(
    planner: Planner,
    plan_of: Callable[[str], PinPlan],
    axes_of: Callable[[str], Callable[[str], Axes]],
    name_of: Callable[[str], str],
    pin: Callable[[str, PinPlan], None],
    *,
    plan_first: bool = True,
) -> None:
    """Plans every layer that `pins` selects and hands each plan to `pin` at once (see `Planner`).

    One layer's plan is in memory at a time: `plan_of(path)` is called again
    whenever a layer is needed (the rules that rank across layers read every
    layer once per pass, `rank_across`), and a plan is dropped as soon as
    `pin` has used it, so planning a model costs about its largest layer, not
    a second copy of the model.

    Args:
        planner: The `freeze` call's selections (`Planner`), fresh.
        plan_of: path -> the layer's plan (its current effective weights and masks).
        axes_of: path -> the layer's `axes(weight)`.
        name_of: path -> the layer's name, for messages.
        pin: Called with (path, plan) for each layer to pin, in the order the
            layers were first selected; not for a layer that every key
            selecting it skips.
        plan_first: Plan every layer before the first `pin`, so that an
            error (a key's pins that do not fit, a glob's that fit none, a
            rule that raises) leaves everything unpinned. Each plan that is
            small (pruning: masks and one value; `Planner.check`) is kept,
            its masks packed to bits, and pinned as it is: only layers with
            weight-sized pinned values are planned a second time. Without
            it, an error can come after some layers were pinned (fine when
            they are a copy that is dropped).

    Warns:
        LayerSkippedWarning: per layer that a glob's pins do not fit.
        NothingPinnedWarning: per rule that selects no entry.
    """
    planner.rank_across(plan_of, name_of)
    kept = planner.check(plan_of, axes_of, name_of, keep=True) if plan_first else {}
    for path in planner.paths:
        settled = kept.pop(path, None)
        plan = (settled.plan() if settled is not None
                else planner.apply(path, plan_of(path), axes_of(path), name_of(path)))
        if not planner.skips_whole(path):
            pin(path, plan)
        del plan, settled
    planner.settle()
    planner.report()


def plan_all(
    pins: Mapping[str, Any],
    select_key: Callable[[Any], list[str]],
    plan_of: Callable[[str], PinPlan],
    axes_of: Callable[[str], Callable[[str], Axes]],
    name_of: Callable[[str], str],
    *,
    exclude: Sequence[str] = (),
) -> dict[str, PinPlan]:
    """Every plan of `plan_each`, kept: path -> plan, in the order the layers were first selected.

    A layer that every key selecting it skips is not in it.
    """
    plans: dict[str, PinPlan] = {}
    plan_each(Planner(pins, select_key, exclude=exclude), plan_of, axes_of, name_of,
              plans.__setitem__, plan_first=False)
    return plans
