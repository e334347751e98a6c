"""`freeze` and `strip`: rewriting a model's Dense layers and copying weights.

Both rebuild the model with `keras.models.clone_model` (recursively, so nested
models and shared layers keep their structure), replace the chosen layers and
copy every weight, trainable or not, from the original. Subclassed models are
re-created from their config and rewritten attribute by attribute
(`_subclassed.py`). The original model is left untouched and shares no
variable with the result.
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
from kerasurgery.errors import KerasurgeryError, LayerSelectionError, PinError
from kerasurgery.layers import PER_ENTRY, SHARED, MaskedDense
from kerasurgery.pins import Pin, Rule

PinSpec = Union[Pin, np.ndarray, Rule]

# Config keys of MaskedDense that plain Dense does not know.
_MASKED_ONLY_KEYS = ("pinned_kernel_values",)


def freeze(model: keras.Model, pins: Mapping[str, PinSpec]) -> keras.Model:
    """Returns a copy of `model` with the selected Dense entries pinned.

    Args:
        model: A built Keras model: Sequential or Functional (nested models and
            shared layers included), or subclassed (re-created from its
            `get_config()`, its Dense attributes swapped).
        pins: Maps a layer path (`"dense"`, `"inner/dense"` inside a nested
            model), name, or glob pattern (`"dense*"`) to a `Pin`, a
            boolean kernel mask (= `Pin(kernel=mask)`), or a rule such as
            `kerasurgery.rules.zeros()`. Several keys may select one layer: their
            pins add up, a later key's values winning on shared entries. A layer
            that is already a `MaskedDense` keeps its pins and gains the new ones.

    Returns:
        A new model of the same structure, names, trainable flags and dtype
        policies, whose selected layers are `MaskedDense`. With values left at
        their current values it computes exactly what `model` computes. A
        compiled model's compile configuration is carried over (with a fresh
        optimizer state).

    Raises:
        LayerSelectionError: a key matches no Dense layer, or names a layer that
            is not Dense. The message lists the Dense layers' paths.
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
    dense_layers = dict(_dense_layers(model))
    plans: dict[int, _Plan] = {}
    for key, spec in pins.items():
        for layer in _select(model, key, dense_layers):
            plan = plans.get(id(layer)) or _Plan.of(layer)
            plans[id(layer)] = plan.add(_resolve(spec, layer, plan), layer.name)

    replaced: set[int] = set()

    def replace(layer: keras.layers.Layer) -> keras.layers.Layer | None:
        plan = plans.get(id(layer))
        if plan is None:
            return None
        replaced.add(id(layer))
        config = {**layer.get_config(), "pinned_kernel_values": plan.storage()}
        for key in ("lora_rank", "lora_alpha", "quantization_config"):
            config.pop(key, None)
        return MaskedDense.from_config(config)

    def copy(old: keras.layers.Layer, new: keras.layers.Layer) -> None:
        plan = plans.get(id(old))
        if plan is None:
            new.set_weights(old.get_weights())
        else:
            plan.assign(new)

    frozen = _rebuild(model, replace, copy)
    missed = [path for path, layer in dense_layers.items()
              if id(layer) in plans and id(layer) not in replaced]
    if missed:
        raise KerasurgeryError(
            f"Cannot reach layer(s) {', '.join(map(repr, missed))} of model "
            f"{model.name!r}: they sit inside a subclassed model nested in a "
            "Functional or Sequential one. Freeze that inner model instead."
        )
    return frozen


def strip(model: keras.Model) -> keras.Model:
    """Returns a copy of `model` with every `MaskedDense` turned into a `Dense`.

    Each `Dense` has the same name and configuration and holds the effective
    weights (pinned entries at their pinned values), so the result predicts
    exactly what `model` predicts and loads with plain Keras.

    Raises:
        KerasurgeryError: if `model` is not a Sequential or Functional model.
    """
    _require_rewritable(model, "strip")

    def replace(layer: keras.layers.Layer) -> keras.layers.Layer | None:
        if not isinstance(layer, MaskedDense):
            return None
        config = layer.get_config()
        for key in _MASKED_ONLY_KEYS:
            config.pop(key, None)
        return keras.layers.Dense.from_config(config)

    def copy(old: keras.layers.Layer, new: keras.layers.Layer) -> None:
        if isinstance(old, MaskedDense):
            weights = [ops.convert_to_numpy(old.kernel)]
            if old.use_bias:
                weights.append(ops.convert_to_numpy(old.bias))
            new.set_weights(weights)
        else:
            new.set_weights(old.get_weights())

    return _rebuild(model, replace, copy)


class _Plan:
    """The pins one layer will have, as numpy arrays.

    `*_value` is `None` while every pinned entry keeps its current value (the
    common case), so no kernel-sized array of values is built for it.
    """

    def __init__(
        self,
        kernel: np.ndarray,
        bias: np.ndarray | None,
        kernel_mask: np.ndarray,
        bias_mask: np.ndarray | None,
    ) -> None:
        self.kernel = kernel
        self.bias = bias
        self.kernel_mask = kernel_mask
        self.bias_mask = bias_mask
        self.kernel_value: np.ndarray | None = None
        self.bias_value: np.ndarray | None = None
        self._storage: str | None = None
        self._shared_value: np.ndarray | None = None

    @classmethod
    def of(cls, layer: keras.layers.Layer) -> _Plan:
        if getattr(layer, "quantization_mode", None):
            raise PinError(
                f"Layer {layer.name!r} is quantized ({layer.quantization_mode}); "
                "pins need a float kernel. Freeze the float model instead."
            )
        # A MaskedDense's effective weights hold its pinned values at its pins.
        kernel = ops.convert_to_numpy(layer.kernel)
        bias = ops.convert_to_numpy(layer.bias) if layer.use_bias else None
        if isinstance(layer, MaskedDense):
            kernel_mask = ops.convert_to_numpy(layer.kernel_pin_mask).astype(bool)
            bias_mask = None if bias is None else ops.convert_to_numpy(layer.bias_pin_mask).astype(bool)
        else:
            kernel_mask = np.zeros(kernel.shape, bool)
            bias_mask = None if bias is None else np.zeros(bias.shape, bool)
        return cls(kernel, bias, kernel_mask, bias_mask)

    def add(self, pin: Pin, name: str) -> _Plan:
        self._storage = None
        self.kernel_mask, self.kernel_value = _merge(
            self.kernel_mask, self.kernel_value, pin.kernel, pin.kernel_value,
            self.kernel, name, "kernel",
        )
        if pin.bias is not None or pin.bias_value is not None:
            if self.bias is None:
                raise PinError(f"Layer {name!r} has no bias, but a bias pin was given.")
            self.bias_mask, self.bias_value = _merge(
                self.bias_mask, self.bias_value, pin.bias, pin.bias_value,
                self.bias, name, "bias",
            )
        return self

    def storage(self) -> str:
        """`SHARED` when every pinned kernel entry has the same bits, else `PER_ENTRY`."""
        if self._storage is None:
            self._shared_value = None
            values = self.kernel if self.kernel_value is None else self.kernel_value
            first = int(np.argmax(self.kernel_mask)) if self.kernel_mask.any() else None
            if first is None:
                self._shared_value = np.zeros((), values.dtype)
            else:
                # Whole-array comparisons: boolean indexing of a 50M kernel
                # costs several times more.
                bits = _bits(values)
                differs = np.not_equal(bits, bits.flat[first])
                np.logical_and(differs, self.kernel_mask, out=differs)
                if not differs.any():
                    self._shared_value = np.asarray(values.flat[first])
            self._storage = PER_ENTRY if self._shared_value is None else SHARED
        return self._storage

    def assign(self, layer: MaskedDense) -> None:
        if self.storage() == SHARED:
            kernel_value = self._shared_value
        else:
            kernel_value = self.kernel if self.kernel_value is None else self.kernel_value
        bias_value = self.bias if self.bias_value is None else self.bias_value
        # The raw kernel starts equal to the effective kernel, so the file and
        # the variables agree until training moves raw entries under the pins.
        layer.set_pinned_weights(
            kernel=_effective(self.kernel, self.kernel_mask, self.kernel_value),
            kernel_mask=self.kernel_mask,
            kernel_value=kernel_value,
            bias=None if self.bias is None else _effective(self.bias, self.bias_mask, self.bias_value),
            bias_mask=self.bias_mask,
            bias_value=bias_value,
        )


def _effective(weight: np.ndarray, mask: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    return weight if values is None else np.where(mask, values, weight)


def _bits(array: np.ndarray) -> np.ndarray:
    """The raw bits, so that -0.0 and 0.0 (and NaN payloads) count as different."""
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


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


def _resolve(spec: PinSpec, layer: keras.layers.Layer, plan: _Plan) -> Pin:
    if isinstance(spec, Pin):
        return spec
    if isinstance(spec, (np.ndarray, list, tuple)):
        return Pin(kernel=spec)
    if callable(spec):
        try:
            pin = spec(plan.kernel, plan.bias)
        except PinError as e:
            raise PinError(f"Layer {layer.name!r}: {e}") from None
        if not isinstance(pin, Pin):
            raise PinError(
                f"A rule must return a Pin. Received: {type(pin).__name__} "
                f"for layer {layer.name!r}"
            )
        return pin
    raise PinError(
        "Expected a Pin, a boolean array or a rule for layer "
        f"{layer.name!r}. Received: {type(spec).__name__}"
    )


def _select(
    model: keras.Model, key: str, dense_layers: dict[str, keras.layers.Layer]
) -> list[keras.layers.Layer]:
    """The Dense layers `key` selects.

    A path (`dense`, `inner/dense`: names are unique only within one model)
    selects that one layer; otherwise a name selects every Dense layer of that
    name, and a glob every Dense layer whose path or name it matches.
    """
    if not isinstance(key, str):
        raise LayerSelectionError(
            f"Expected a layer name or glob pattern. Received: {key!r}"
        )
    available = ", ".join(dense_layers) or f"none (model {model.name!r} has no Dense layer)"
    if key in dense_layers:
        return [dense_layers[key]]
    named = [layer for layer in dense_layers.values() if layer.name == key]
    if named:
        return named
    other = next(
        (layer for path, layer in walk_layers(model) if key in (path, layer.name)), None
    )
    if other is not None:
        raise LayerSelectionError(
            f"Expected a `Dense` layer. Received: layer={key!r} "
            f"({type(other).__name__}). Dense layers: {available}"
        )
    matched = [
        layer for path, layer in dense_layers.items()
        if fnmatch.fnmatchcase(path, key) or fnmatch.fnmatchcase(layer.name, key)
    ]
    if not matched:
        raise LayerSelectionError(
            f"No Dense layer matches {key!r}. Dense layers: {available}"
        )
    return matched


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


def _dense_layers(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """(path, layer) of the Dense and MaskedDense layers of `model`, in order."""
    return [
        (path, layer) for path, layer in walk_layers(model)
        if type(layer) is keras.layers.Dense or isinstance(layer, MaskedDense)
    ]


def dense_layer_names(model: keras.Model) -> list[str]:
    """Paths of the Dense and MaskedDense layers of `model`, nested ones included."""
    return [path for path, _ in _dense_layers(model)]


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
    replace: Callable[[keras.layers.Layer], keras.layers.Layer | None],
    copy: Callable[[keras.layers.Layer, keras.layers.Layer], None],
) -> keras.Model:
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
        if new is old or isinstance(old, keras.Model):
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
