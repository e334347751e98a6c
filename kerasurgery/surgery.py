"""`freeze` and `strip`: one copy of the model, then pins changed in place.

Both copy the model with `keras.models.clone_model` (recursively, so nested
models and shared layers keep their structure; subclassed models are
re-created from their config, `_subclassed.py`), copy every weight, trainable
or not, and then pin (or unpin) the chosen layers of the copy in place, at any
depth (`layers.pin_in_place`). The original model is left untouched and
shares no variable with the result.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Union

from kerasurgery import _compat  # noqa: F401  (refuses an unsupported Keras first)

import keras
import numpy as np
from keras import ops

from kerasurgery._subclassed import copy_layer, is_subclassed, rebuild_subclassed
from kerasurgery import layers as layers_lib
from kerasurgery import pins as _pins
from kerasurgery.errors import KerasurgeryError, LayerSelectionError, PinError
from kerasurgery.layers import PER_ENTRY, SHARED
from kerasurgery.pins import Axes, Pin, Rule

PinSpec = Union[Pin, np.ndarray, Rule]


def freeze(model: keras.Model, pins: Mapping[str, PinSpec]) -> keras.Model:
    """Returns a copy of `model` with the selected weight entries pinned.

    Every supported layer can be pinned (`Dense`, `EinsumDense`, the
    convolutions, `Embedding`; see `kerasurgery.layers`), wherever it sits:
    at top level, in nested models, in wrappers, or inside custom layers that
    create it in `build()` (a KerasHub `TransformerEncoder`). The copy's layers
    are pinned in place, so their parents keep calling them.

    Args:
        model: A built Keras model: Sequential or Functional (nested models and
            shared layers included), or subclassed (re-created from its
            `get_config()`).
        pins: Maps a layer path (`"dense"`, `"inner/dense"`,
            `"bert_backbone/transformer_layer_0/feedforward_intermediate_dense"`),
            a variable path without the variable name
            (`"transformer_layer_0/feedforward_intermediate_dense"`), a name, or
            a glob over any of them (`"*"`: every supported layer) to a `Pin`, a
            boolean mask of the layer's main weight (= `Pin(kernel=mask)`), or
            a rule such as `kerasurgery.rules.zeros()`. Several keys may select
            one layer: their pins add up, a later key's values winning on
            shared entries. A layer that is already pinned keeps its pins and
            gains the new ones.

    Returns:
        A new model of the same structure, names, trainable flags and dtype
        policies, whose selected layers are pinned (`MaskedDense`, ...). With
        values left at their current values it computes exactly what `model`
        computes. A compiled model's compile configuration is carried over
        (with a fresh optimizer state).

    Raises:
        LayerSelectionError: a key matches no supported layer, or names a layer
            of an unsupported kind. The message lists the supported layers.
        KerasurgeryError: a subclassed model cannot be re-created from its
            config.
        PinError: a mask or value does not fit its layer.

    Example:

    ```python
    frozen = kerasurgery.freeze(model, {"dense_1": kerasurgery.rules.zeros()})
    frozen.compile(optimizer="adamw", loss="mse")
    frozen.fit(x, y)  # the zeros of dense_1 stay exactly zero
    ```
    """
    _require_rewritable(model, "freeze")
    if not isinstance(pins, Mapping) or not pins:
        raise PinError(
            "Expected `pins` to be a non-empty mapping from layer names or "
            f"patterns to pins. Received: {pins!r}"
        )
    pinnable = pinnable_layers(model)
    plans: dict[int, _Plan] = {}
    paths: dict[int, str] = {}
    selections = []
    for key, spec in pins.items():
        selected = _select(model, key, pinnable)
        for path, layer in selected:
            plans.setdefault(id(layer), _Plan.of(layer))
            paths[id(layer)] = path
        selections.append((spec, selected))
    across = _resolve_across(selections, plans)
    for spec, selected in selections:
        for path, layer in selected:
            plan = plans[id(layer)]
            updates = across[id(spec)][id(layer)] if id(spec) in across else _resolve(spec, layer, plan)
            plan.add(updates, path)
    frozen = _rebuild(model, _copy_state)
    copies = dict(walk_layers(frozen))
    visible = _config_visible(frozen)
    for key, plan in plans.items():
        layer = copies[paths[key]]
        if layers_lib.is_pinned(layer):
            layers_lib.unpin_in_place(layer)  # to store its pins as the plan says
        layers_lib.pin_in_place(
            layer, layers_lib.pinned_class_for(layer), plan.storage(),
            in_config=id(layer) in visible,
        )
        plan.assign(layer)
    return frozen


def strip(model: keras.Model) -> keras.Model:
    """Returns a copy of `model` with every pinned layer turned back into its Keras class.

    Each layer keeps its name and configuration and holds the effective
    weights (pinned entries at their pinned values), so the result predicts
    exactly what `model` predicts and loads with plain Keras.

    Raises:
        KerasurgeryError: if `model` is not a built Keras model.
    """
    _require_rewritable(model, "strip")
    stripped = _rebuild(model, _copy_state)
    for _, layer in walk_layers(stripped):
        if layers_lib.is_pinned(layer):
            layers_lib.unpin_in_place(layer)
    return stripped


def _copy_state(old: keras.layers.Layer, new: keras.layers.Layer) -> None:
    """Copies every weight of `old` (its sub-layers' too) into its copy `new`.

    A copy made from a config holds plain Keras layers where the parent
    creates them in `build()`; those that are pinned in `old` are pinned in
    place in `new` first, so both hold the same variables.
    """
    # By position: sub-layers that a parent names itself (`softmax_1`) may be
    # named differently in the copy.
    olds = [old] + [layer for _, layer in walk_layers(old)]
    news = [new] + [layer for _, layer in walk_layers(new)]
    if [_kind(layer) for layer in olds] != [_kind(layer) for layer in news]:
        raise KerasurgeryError(
            f"Cannot copy layer {old.name!r}: its copy made from its config holds other layers."
        )
    for source, target in zip(olds, news):
        if layers_lib.is_pinned(source) and not layers_lib.is_pinned(target):
            layers_lib.pin_in_place(
                target, type(source), dict(source._pin_storage), in_config=source._in_config
            )
    new.set_weights(_raw_weights(old))


def _kind(layer: keras.layers.Layer) -> str:
    cls = type(layer).keras_class if layers_lib.is_pinned(layer) else type(layer)
    return cls.__name__


def _raw_weights(layer: keras.layers.Layer) -> list[np.ndarray]:
    # Every variable as it is (a pinned layer's `get_weights` gives effective
    # weights, which equal the raw ones wherever the layer reads them).
    return [ops.convert_to_numpy(v) for v in layer.weights]


def _config_visible(model: keras.Model) -> set[int]:
    """Layers that a saved config of `model` names by class (so Keras rebuilds them pinned).

    Those are the layers of Sequential/Functional models (nested ones too) and
    the layers that wrappers (`TimeDistributed`, `Bidirectional`) hold; a
    layer that a custom layer or a subclassed model creates itself is re-created
    by its parent as a plain Keras layer.
    """
    visible: set[int] = set()
    stack: list[keras.layers.Layer] = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model) and not is_subclassed(layer):
            children = list(layer.layers)
        elif isinstance(layer, keras.layers.Wrapper) and id(layer) in visible:
            children = [getattr(layer, a, None) for a in ("layer", "forward_layer", "backward_layer")]
        else:
            continue
        for child in children:
            if isinstance(child, keras.layers.Layer) and id(child) not in visible:
                visible.add(id(child))
                stack.append(child)
    return visible


class _Plan:
    """The pins one layer will have, per weight, as numpy arrays.

    `values[w]` is `None` while every pinned entry keeps its current value (the
    common case), so no weight-sized array of values is built for it.
    """

    def __init__(self, layer: keras.layers.Layer, effective: dict[str, np.ndarray],
                 masks: dict[str, np.ndarray]) -> None:
        self.layer = layer
        self.effective = effective
        self.masks = masks
        self.values: dict[str, np.ndarray | None] = {w: None for w in effective}
        self._storage: dict[str, str] | None = None
        self._stored: dict[str, np.ndarray] = {}

    @classmethod
    def of(cls, layer: keras.layers.Layer) -> _Plan:
        if getattr(layer, "quantization_mode", None):
            raise PinError(
                f"Layer {layer.name!r} is quantized ({layer.quantization_mode}); "
                "pins need float weights. Freeze the float model instead."
            )
        pinned = layers_lib.pinned_class_for(layer)
        if layers_lib.is_pinned(layer):
            state = layer.pin_state()
            effective = {w: s.effective for w, s in state.items()}
            masks = {w: s.mask for w, s in state.items()}
        else:
            # A LoRA layer's property gives its merged weight.
            effective = {
                w: ops.convert_to_numpy(getattr(layer, w))
                for w in pinned.pinned_weights if getattr(layer, w, None) is not None
            }
            masks = {w: np.zeros(a.shape, bool) for w, a in effective.items()}
        return cls(layer, effective, masks)

    @property
    def main(self) -> str:
        return next(iter(self.effective))

    def axes(self, weight: str) -> Axes:
        return layers_lib.pinned_class_for(self.layer).pin_axes(self.layer, weight)

    def add(self, updates: list[tuple[str, Any, Any]], name: str) -> _Plan:
        self._storage = None
        for weight, mask, value in updates:
            if mask is None and value is None:
                continue
            if weight not in self.effective:
                raise PinError(f"Layer {name!r} has no {weight}, but a {weight} pin was given.")
            self.masks[weight], self.values[weight] = _merge(
                self.masks[weight], self.values[weight], mask, value,
                self.effective[weight], name, weight,
            )
        return self

    def storage(self) -> dict[str, str]:
        """Per weight: `SHARED` when every pinned entry has the same bits, else `PER_ENTRY`."""
        if self._storage is None:
            self._storage, self._stored = {}, {}
            for w, mask in self.masks.items():
                values = self.effective[w] if self.values[w] is None else self.values[w]
                # A bias is small: its values are stored per entry, as in 0.1.0.
                shared = None if w == "bias" else _pins.shared_value(values, mask)
                self._storage[w] = SHARED if shared is not None else PER_ENTRY
                # Per entry, only pinned entries are meaningful; the rest hold
                # zeros, so a non-finite free entry is not taken for a pin.
                self._stored[w] = shared if shared is not None else np.where(mask, values, 0).astype(values.dtype)
        return self._storage

    def assign(self, layer: Any) -> None:
        self.storage()
        # The raw weights start equal to the effective ones, so the file and
        # the variables agree until training moves raw entries under the pins.
        layer.set_pin_state({
            w: _pins.WeightPins(
                effective=_effective(self.effective[w], self.masks[w], self.values[w]),
                mask=self.masks[w],
                value=self._stored[w],
            )
            for w in self.masks
        })


def _effective(weight: np.ndarray, mask: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    return weight if values is None else np.where(mask, values, weight)


def _merge(
    mask: np.ndarray,
    values: np.ndarray | None,
    new_mask: Any,
    new_value: Any,
    weight: np.ndarray,
    name: str,
    which: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Adds one pin to a weight's mask and values (`None` values = current)."""
    if new_mask is None:
        if new_value is not None:
            raise PinError(
                f"Layer {name!r}: a {which} value was given without a {which} mask."
            )
        return mask, values
    new_mask = _checked_mask(new_mask, weight.shape, name, which)
    if new_value is None:
        if values is not None:
            values = np.where(new_mask, weight, values)
        return mask | new_mask, values
    new_values = _checked_value(new_value, weight, name, which)
    return mask | new_mask, np.where(new_mask, new_values, weight if values is None else values)


def _checked_mask(mask: Any, shape: tuple, name: str, which: str) -> np.ndarray:
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


def _checked_value(value: Any, weight: np.ndarray, name: str, which: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PinError(
            f"Layer {name!r}: the {which} value must be a number or an array. "
            f"Received: {value!r}"
        ) from None
    if array.shape not in ((), weight.shape):
        raise PinError(
            f"Layer {name!r}: the {which} value has the wrong shape. Expected: a "
            f"scalar or {weight.shape}. Received: {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise PinError(f"Layer {name!r}: the {which} value must be finite.")
    return np.broadcast_to(array.astype(weight.dtype), weight.shape)


def _resolve(spec: PinSpec, layer: keras.layers.Layer, plan: _Plan) -> list[tuple[str, Any, Any]]:
    """(weight, mask, value) updates for one layer: a Pin's `kernel` is its main weight."""
    if isinstance(spec, (np.ndarray, list, tuple)):
        spec = Pin(kernel=spec)
    if isinstance(spec, Pin):
        return [(plan.main, spec.kernel, spec.kernel_value), ("bias", spec.bias, spec.bias_value)]
    if not callable(spec):
        raise PinError(
            "Expected a Pin, a boolean array or a rule for layer "
            f"{layer.name!r}. Received: {type(spec).__name__}"
        )
    # A rule sees each main weight (both kernels of a separable convolution)
    # with the layer's bias; the bias part is taken once.
    updates: list[tuple[str, Any, Any]] = []
    bias = plan.effective.get("bias")
    bias_pin: tuple[str, Any, Any] | None = None
    for weight in [w for w in plan.effective if w != "bias"]:
        try:
            if isinstance(spec, _pins.AxisRule):
                pin = spec(plan.effective[weight], bias, plan.axes(weight))
            else:
                pin = spec(plan.effective[weight], bias)
        except PinError as e:
            raise PinError(f"Layer {layer.name!r}: {e}") from None
        if not isinstance(pin, Pin):
            raise PinError(
                f"A rule must return a Pin. Received: {type(pin).__name__} "
                f"for layer {layer.name!r}"
            )
        updates.append((weight, pin.kernel, pin.kernel_value))
        # The bias part of the first kernel that gives one (a separable
        # convolution's units are its pointwise kernel's).
        if bias_pin is None and pin.bias is not None:
            bias_pin = ("bias", pin.bias, pin.bias_value)
    return updates + ([bias_pin] if bias_pin else [])


def _resolve_across(
    selections: list[tuple[Any, list[tuple[str, keras.layers.Layer]]]], plans: dict[int, _Plan]
) -> dict[int, dict[int, list[tuple[str, Any, Any]]]]:
    """Updates of the rules that rank every layer they select together (`across`).

    Returns `{id(rule): {id(layer): updates}}`. The same rule object under
    several keys ranks the layers of all those keys together, each once.
    """
    layers_of: dict[int, dict[int, keras.layers.Layer]] = {}
    rules: dict[int, Any] = {}
    for spec, selected in selections:
        if getattr(spec, "across", None) is None:
            continue
        rules[id(spec)] = spec
        for _, layer in selected:
            layers_of.setdefault(id(spec), {})[id(layer)] = layer
    result: dict[int, dict[int, list[tuple[str, Any, Any]]]] = {}
    for key, rule in rules.items():
        chosen = [plans[i] for i in layers_of[key]]
        updates: dict[int, list[tuple[str, Any, Any]]] = {id(p.layer): [] for p in chosen}
        kernels = [(p, w) for p in chosen for w in p.effective if w != "bias"]
        masks = rule.across([p.effective[w] for p, w in kernels])
        for (p, w), mask in zip(kernels, masks):
            updates[id(p.layer)].append((w, mask, rule.value))
        if rule.bias:
            with_bias = [p for p in chosen if "bias" in p.effective]
            missing = [p.layer.name for p in chosen if "bias" not in p.effective]
            if missing:
                raise PinError(
                    f"Rule {rule.name!r} targets the bias, but layer {missing[0]!r} has none."
                )
            masks = rule.across([p.effective["bias"] for p in with_bias])
            for p, mask in zip(with_bias, masks):
                updates[id(p.layer)].append(("bias", mask, rule.value))
        result[key] = updates
    return result


def _select(
    model: keras.Model, key: str, pinnable: dict[str, keras.layers.Layer]
) -> list[tuple[str, keras.layers.Layer]]:
    """The (path, layer) pairs of the supported layers that `key` selects.

    A path (`dense`, `inner/dense`: names are unique only within one model)
    or a variable path without the variable name selects that one layer;
    otherwise a name selects every supported layer of that name, and a glob
    every supported layer whose path, variable path or name it matches.
    """
    if not isinstance(key, str):
        raise LayerSelectionError(
            f"Expected a layer name or glob pattern. Received: {key!r}"
        )
    available = _listing(model, pinnable)
    if key in pinnable:
        return [(key, pinnable[key])]
    aliases = {path: (layer.name, variable_prefix(layer)) for path, layer in pinnable.items()}
    named = [(p, pinnable[p]) for p, names in aliases.items() if key in names]
    if named:
        return named
    other = next(
        (layer for path, layer in walk_layers(model) if key in (path, layer.name)), None
    )
    if other is not None:
        raise LayerSelectionError(
            f"Expected a layer of a supported kind "
            f"({', '.join(layers_lib.supported_class_names())}). Received: "
            f"layer={key!r} ({type(other).__name__}). Supported layers: {available}"
        )
    matched = [
        (path, pinnable[path]) for path, names in aliases.items()
        if any(n is not None and fnmatch.fnmatchcase(n, key) for n in (path, *names))
    ]
    if not matched:
        raise LayerSelectionError(
            f"No supported layer matches {key!r}. Supported layers: {available}"
        )
    return matched


def _listing(model: keras.Model, pinnable: dict[str, keras.layers.Layer], limit: int = 12) -> str:
    if not pinnable:
        return (f"none (model {model.name!r} has no layer of a supported kind: "
                f"{', '.join(layers_lib.supported_class_names())})")
    paths = list(pinnable)
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def variable_prefix(layer: keras.layers.Layer) -> str | None:
    """The layer's Keras variable path without the variable name (`block/dense`)."""
    variables = getattr(layer, "_trainable_variables", []) + getattr(layer, "_non_trainable_variables", [])
    if not variables:
        return None
    return variables[0].path.rpartition("/")[0] or None


def walk_layers(model: keras.layers.Layer) -> Iterator[tuple[str, keras.layers.Layer]]:
    """(path, layer) for every layer inside `model`, each once, in order.

    The path is the layer's name, prefixed by the names of the models (or
    custom blocks) that hold it below `model`: `dense`, `inner/dense`. This is
    also how `kerasurgery inspect` names layers.
    """
    seen: set[int] = set()
    stack = [(layer.name, layer) for layer in reversed(_sublayers(model))]
    while stack:
        path, current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield path, current
        stack.extend(
            (f"{path}/{layer.name}", layer) for layer in reversed(_sublayers(current))
        )


def _sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    # A custom layer holding layers (a subclassed model's block) has no public
    # list of them; Keras tracks them in `_layers`.
    return list(getattr(layer, "_layers", []))


def pinnable_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Path -> layer for every layer of a supported kind in `model`, at any depth, in order."""
    return {
        path: layer for path, layer in walk_layers(model)
        if layers_lib.is_pinnable(layer) and layer.built
    }


def dense_layer_names(model: keras.Model) -> list[str]:
    """Paths of the supported layers of `model` (kept under its 0.1.0 name)."""
    return list(pinnable_layers(model))


def _require_rewritable(model: Any, verb: str) -> None:
    if not isinstance(model, keras.Model):
        raise KerasurgeryError(
            f"Expected a Keras model to {verb}. Received: {type(model).__name__}"
        )
    if not model.built:
        raise KerasurgeryError(
            f"Model {model.name!r} is not built: call it on data or build it first."
        )


def _rebuild(
    model: keras.Model,
    copy: Callable[[keras.layers.Layer, keras.layers.Layer], None],
) -> keras.Model:
    def replace(layer: keras.layers.Layer) -> None:
        return None  # layers are copied as they are; pins change in place after

    if is_subclassed(model):
        return rebuild_subclassed(model, replace, copy)
    clones: dict[int, tuple[keras.layers.Layer, keras.layers.Layer]] = {}
    with warnings.catch_warnings():
        # clone_model warns about compile state it restores itself.
        warnings.simplefilter("ignore")
        try:
            clone = _clone(model, replace, clones)
        except KerasurgeryError:
            raise
        except Exception as e:
            raise KerasurgeryError(
                f"Could not rebuild model {model.name!r}: {e}"
            ) from None
    for old, new in clones.values():
        # Operations of a Functional graph (`x[:, 0]`) are cloned too.
        if new is old or isinstance(old, keras.Model) or not isinstance(old, keras.layers.Layer):
            continue
        if old.built and not new.built:
            new.build_from_config(old.get_build_config())
        copy(old, new)
        new.trainable = old.trainable
    _copy_model_flags(model, clone)
    return clone


def _clone(
    model: keras.Model,
    replace: Callable[[keras.layers.Layer], keras.layers.Layer | None],
    clones: dict[int, tuple[keras.layers.Layer, keras.layers.Layer]],
) -> keras.Model:
    """Clones one level; nested models recurse here so their inputs keep names.

    `clones` maps every layer cloned so far, at any depth, to its clone, so a
    layer shared between a nested model and its parent stays one layer.
    """

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        if id(layer) in clones:
            return clones[id(layer)][1]
        if isinstance(layer, keras.Model) and not is_subclassed(layer):
            new: keras.layers.Layer = _clone(layer, replace, clones)
        else:
            new = replace(layer) or copy_layer(layer)
        clones[id(layer)] = (layer, new)
        return new

    if isinstance(model, keras.Sequential):
        # Sequential cloning keeps its input layer's name by itself.
        return keras.models.clone_model(model, clone_function=clone_function)
    # Functional cloning would name new inputs after their tensors
    # (`keras_tensor_7`), not their layers; dict-fed models need the names.
    inputs = keras.tree.map_structure(_named_input, model.input)
    return keras.models.clone_model(
        model, input_tensors=inputs, clone_function=clone_function
    )


def _named_input(tensor: Any) -> Any:
    layer = tensor._keras_history.operation
    return keras.Input(
        batch_shape=tensor.shape,
        dtype=tensor.dtype,
        sparse=getattr(tensor, "sparse", False),
        name=layer.name,
    )


def _copy_model_flags(old: keras.Model, new: keras.Model) -> None:
    """Nested models are rebuilt by Keras, not from config: carry their flags."""
    old_models = [old] + [layer for _, layer in walk_layers(old) if isinstance(layer, keras.Model)]
    new_models = [new] + [layer for _, layer in walk_layers(new) if isinstance(layer, keras.Model)]
    for o, n in zip(old_models, new_models):
        if not o.trainable:
            n.trainable = False
