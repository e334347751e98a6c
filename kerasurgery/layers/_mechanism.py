"""The one pin mechanism shared by every pinned layer class.

Keras 3 builds `Dense`, `EinsumDense`, the convolutions and `Embedding` around
one contract, the one LoRA composes: the layer computes with a weight it reads
through an attribute (`kernel`, `bias`, `embeddings`, `depthwise_kernel`, ...).
A pinned class is the Keras class with `PinMixin` in front: the mixin turns
each such attribute into a read-only property that returns the *effective*
weight

    where(weight_pin_mask, weight_pin_value, raw)

and adds the non-trainable mask and value variables. The raw variable stays
the trainable one. A pinned entry therefore gets an exactly zero gradient, and
whatever an optimizer does to the raw variable there (weight decay, momentum,
EMA), the layer never reads it.

A layer becomes pinned in one of two ways, with the same result:

* constructed from its config (`MaskedDense(...)`, or Keras loading a file
  whose config names `kerasurgery>MaskedDense`): `build` adds the pin
  variables after the Keras class built its own;
* pinned in place (`pin_in_place`): an already built Keras layer changes
  class and gains the pin variables, as `enable_lora` and `quantize` change a
  layer in place. This is how layers that a parent creates in `build()` (the
  Dense layers of a KerasHub `TransformerEncoder`) are pinned.

A weight that cannot train is read as it is. When a raw variable is not
trainable (a layer frozen by `layer.trainable = False`, every layer but the
adapted ones under KerasHub's `backbone.enable_lora`), nothing moves it, so
the layer makes it hold its effective weight once (`settle`: raw :=
`where(mask, value, raw)`, where the weight lives) and then reads the raw
variable directly: no select per step or per token, and the same values bit
for bit. Every kerasurgery method that writes pins or weights settles again,
and a weight made trainable again is formed with the select from its next
read. Assigning a frozen layer's mask, value or raw variable directly
(`pin_variables(w)[0].assign(...)`) must be followed by `settle()`.

What a layer saves in its own variable store depends on whether Keras will
rebuild it as a pinned layer when loading: a layer that a saved config names
(`in_config`) stores the effective weights with its masks and values under
named keys (the layout of kerasurgery 0.1.0); a layer that its parent
re-creates as a plain Keras layer stores exactly the plain layout (effective
weights under "0", "1", ...), so the file still loads with plain Keras, and
its pins travel in the file's pin record instead (`saving.py`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import keras
import numpy as np
from keras import ops

from kerasurgery import _keras_private
from kerasurgery import pins as _pins
from kerasurgery.errors import KerasurgeryError, PinError

SHARED = _pins.SHARED
PER_ENTRY = _pins.PER_ENTRY

# Arguments of the Keras classes that change what a weight means; a pinned
# layer accepts them (Keras configs carry them) only when unset. LoRA
# (`lora_rank`) composes with pins: `where(mask, value, raw + lora)`.
_UNSUPPORTED_ARGS = ("quantization_config",)
# The LoRA factors Keras adds (Dense, EinsumDense, convolutions: kernel;
# Embedding: embeddings).
_LORA_FACTORS = ("lora_kernel_a", "lora_kernel_b", "lora_embeddings_a", "lora_embeddings_b")


class PinMixin:
    """Pins on the weights named in `pinned_weights` of a Keras layer class.

    Subclasses list their weights in the order Keras stores them
    (`("kernel", "bias")`); the first is the layer's main weight (the one the
    rules call `kernel`), a weight named `bias` is the bias.
    """

    pinned_weights: ClassVar[tuple[str, ...]] = ()
    # Weights saved after the pinned ones and never pinned (moving statistics).
    state_weights: ClassVar[tuple[str, ...]] = ()
    keras_class: ClassVar[type]
    # weight -> the attribute that holds its raw variable
    _raw_attrs: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.pinned_weights:
            return
        cls.keras_class = next(
            base for base in cls.__mro__[1:]
            if issubclass(base, keras.layers.Layer) and not issubclass(base, PinMixin)
        )
        raw_attrs = {}
        for weight in cls.pinned_weights:
            # Where Keras itself reads the weight through a property (the LoRA
            # contract: `kernel` over `_kernel`), the raw variable stays where
            # Keras' own methods expect it; otherwise the property shadows a
            # plain attribute and keeps the raw variable under another name.
            keras_attr = _keras_private.property_attribute(cls.keras_class, weight)
            raw = keras_attr or f"_raw_{weight}"
            raw_attrs[weight] = raw
            setattr(cls, weight, _effective_property(weight, raw, settable=keras_attr is None))
        cls._raw_attrs = raw_attrs

    def __init__(
        self,
        *args: Any,
        pin_storage: dict[str, str] | None = None,
        pinned_kernel_values: str | None = None,
        **kwargs: Any,
    ) -> None:
        for arg in _UNSUPPORTED_ARGS:
            value = kwargs.pop(arg, None)
            if value is not None:
                raise ValueError(
                    f"`{type(self).__name__}` does not support `{arg}`: pins and "
                    "LoRA/quantization both redefine the weights. Merge or "
                    f"remove them first. Received: {arg}={value!r}"
                )
        storage = dict(pin_storage or {})
        if pinned_kernel_values is not None:  # configs written by kerasurgery 0.1.0
            if pinned_kernel_values not in (SHARED, PER_ENTRY):
                raise ValueError(
                    f"Expected `pinned_kernel_values` to be {SHARED!r} or "
                    f"{PER_ENTRY!r}. Received: pinned_kernel_values="
                    f"{pinned_kernel_values!r}"
                )
            storage.setdefault(self.pinned_weights[0], pinned_kernel_values)
        for weight, kind in storage.items():
            if weight not in self.pinned_weights or kind not in (SHARED, PER_ENTRY):
                raise ValueError(
                    f"Expected `pin_storage` to map weights of {self.pinned_weights} "
                    f"to {SHARED!r} or {PER_ENTRY!r}. Received: {pin_storage!r}"
                )
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_pin_storage", storage)
        object.__setattr__(self, "_in_config", True)

    def build(self, input_shape: Any = None) -> None:
        super().build(input_shape)
        self._add_pin_variables(self._pin_storage)

    @property
    def pinned_kernel_values(self) -> str:
        """How the main weight's pinned values are stored: `"shared"` or `"per_entry"`."""
        return self._pin_storage.get(self.pinned_weights[0], SHARED)

    @property
    def pin_storage(self) -> dict[str, str]:
        """How each weight's pinned values are stored: `"shared"` or `"per_entry"`."""
        return dict(self._pin_storage)

    @property
    def in_config(self) -> bool:
        """Whether a saved config names this layer by its pinned class.

        Keras then rebuilds it pinned when loading. Otherwise (a layer that a
        custom layer or a subclassed model creates itself) its parent
        re-creates it as a plain Keras layer, and its pins travel in the
        file's pin record.
        """
        return self._in_config

    # -- the state ---------------------------------------------------------

    def _add_pin_variables(self, storage: dict[str, str]) -> None:
        """Creates the mask and value variables of every weight the layer has."""
        object.__setattr__(self, "_pin_storage", {})
        with _keras_private.unlocked_state(self):
            for weight in self.pinned_weights:
                raw = self.raw_variable(weight)
                if raw is None:
                    continue
                kind = storage.get(weight, SHARED if weight != "bias" else PER_ENTRY)
                self._pin_storage[weight] = kind
                shape = tuple(raw.shape)
                # Variables that must never train are created non-trainable,
                # and laid out like the weight they pin (as optimizers lay
                # out their slots); a shared value is one replicated scalar.
                mask = _pin_variable(self, f"{weight}_pin_mask", shape, "bool", raw)
                value = _pin_variable(
                    self, f"{weight}_pin_value", () if kind == SHARED else shape, raw.dtype, raw
                )
                object.__setattr__(self, f"{weight}_pin_mask", mask)
                object.__setattr__(self, f"{weight}_pin_value", value)
                _regularize_effective(raw, self, weight)

    def raw_variable(self, weight: str) -> keras.Variable | None:
        """The trainable variable behind `weight` (`None` when the layer has none)."""
        return self.__dict__.get(self._raw_attrs[weight])

    def _read(self, weight: str) -> Any:
        """What the `weight` property returns outside `folded`: the raw variable once settled, else formed."""
        settled = self.__dict__.get("_settled", ())
        if weight in settled:
            if not self.raw_variable(weight).trainable:
                return self.raw_variable(weight)
            settled.discard(weight)  # trainable again: training may move it under its pins
        return self.effective(weight)

    def settle(self) -> None:
        """Makes each raw weight that cannot train hold its effective weight, and read as it is.

        For every present weight whose raw variable is not trainable (and that
        LoRA does not adapt): raw := `where(mask, value, raw)`, computed where
        the weight lives; from then on the layer reads the raw variable with
        no select, until the weight is made trainable again. The layer's own
        methods that write pins or weights call it; call it after assigning a
        frozen layer's variables directly.
        """
        self._settle(assign=True)

    def _settle(self, *, assign: bool) -> None:
        # `assign=False`: the caller has just made every raw weight hold its effective one.
        settled = set()
        for weight in self.present_weights():
            raw = self.raw_variable(weight)
            if raw.trainable or self._lora_composed(weight) is not raw:
                continue
            if assign:
                _assign_pinned(raw, *self.pin_variables(weight))  # = raw.assign(self.effective(weight))
            settled.add(weight)
        object.__setattr__(self, "_settled", settled)

    def hold_effective(self) -> None:
        """Makes each raw weight hold its effective weight, for code that then reads it as it is.

        raw := `where(mask, value, raw)` for every weight LoRA does not
        adapt, as `settle` does for frozen weights; a trainable raw weight
        keeps training as before (the entries it changes are pinned, and the
        layer never reads them while training). On JAX a weight whose raw,
        mask and value arrays are the ones held last time is left as it is
        (JAX arrays are immutable: an assign makes a new one), so holding
        again after no change costs nothing. The weights that hold are
        `holding` until the next call: `folded(..., held=True)` reads them as
        they are. A pinned task's `generate` holds its layers before each call
        (`model/generation.py`).
        """
        held = self.__dict__.setdefault("_held", {})
        holding = set()
        for weight in self.present_weights():
            raw = self.raw_variable(weight)
            if self._lora_composed(weight) is not raw:
                held.pop(weight, None)
                continue
            if not self.holds(weight):
                mask, value = self.pin_variables(weight)
                _assign_pinned(raw, mask, value)
                held[weight] = _array_refs(raw, mask, value)
            holding.add(weight)
        object.__setattr__(self, "holding", frozenset(holding))

    def holds(self, weight: str) -> bool:
        """Whether the raw `weight` holds its effective weight since `hold_effective`, unchanged.

        Known on JAX only (its arrays are replaced, not written, by an
        assign); read eagerly, outside any traced function.
        """
        refs = self.__dict__.get("_held", {}).get(weight)
        if refs is None:
            return False
        now = (self.raw_variable(weight), *self.pin_variables(weight))
        return all(ref() is not None and ref() is v.value for ref, v in zip(refs, now))

    @property
    def trainable(self) -> bool:
        return self.keras_class.trainable.fget(self)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self.keras_class.trainable.fset(self, value)
        if f"{self.pinned_weights[0]}_pin_mask" in self.__dict__:
            self.settle()  # frozen: read as it is; trainable: formed again

    def pin_variables(self, weight: str) -> tuple[keras.Variable, keras.Variable]:
        return getattr(self, f"{weight}_pin_mask"), getattr(self, f"{weight}_pin_value")

    def present_weights(self) -> list[str]:
        """The pinned weights this layer has (`bias` only with `use_bias`)."""
        return [w for w in self.pinned_weights if self.raw_variable(w) is not None]

    def _saved(self) -> list[tuple[str, Any]]:
        """(name, what is stored) of every weight the layer saves, in saved order:
        the effective pinned weights, then the state weights as they are."""
        pinned = [(w, self.effective(w)) for w in self.present_weights()]
        return pinned + [(w, getattr(self, w)) for w in self.state_weights]

    def effective(self, weight: str, raw: Any = None) -> Any:
        """The effective tensor of `weight` (of `raw`, if given, instead of the variable).

        With LoRA enabled, the main weight's raw tensor is `raw + lora` (the
        Keras class's own property composes it), so pinned entries stay at
        their values while the LoRA factors train.
        """
        if raw is None:
            raw = self._lora_composed(weight)
        if f"{weight}_pin_mask" not in self.__dict__:
            return raw  # while the Keras class builds its own weights
        mask, value = self.pin_variables(weight)
        # Explicit conversion: JAX's where does not accept Keras variables.
        return _pinned(
            ops.convert_to_tensor(mask), ops.convert_to_tensor(value), ops.convert_to_tensor(raw)
        )

    def _lora_composed(self, weight: str) -> Any:
        raw = self.raw_variable(weight)
        if getattr(self, "lora_enabled", False) and weight == self.pinned_weights[0] \
                and self._raw_attrs[weight] == f"_{weight}":
            # Keras' property: the raw variable plus the scaled LoRA product.
            return getattr(self.keras_class, weight).fget(self)
        return raw

    def _zero_lora(self) -> None:
        # As Keras does after loading a LoRA layer's merged weights
        # (Dense.load_own_variables): the loaded raw weight is the effective
        # one, so the factors start from zero.
        for name in _LORA_FACTORS:
            factor = self.__dict__.get(name)
            if factor is not None:
                factor.assign(ops.zeros(factor.shape, factor.dtype))

    def pins(self) -> _pins.Pin:
        """Returns the layer's current pins as numpy arrays.

        Returns:
            A `Pin` whose `kernel`/`bias` are boolean masks (True = pinned) of
            the main weight and of the bias, and whose `kernel_value`/
            `bias_value` hold the pinned value at each pinned entry and the
            current effective value elsewhere. `bias` fields are `None`
            without a bias. `pin_state()` has every weight.
        """
        self._require_built("pins")
        state = self.pin_state()
        main = state[self.pinned_weights[0]]
        bias = state.get("bias")
        return _pins.Pin(
            kernel=main.mask, kernel_value=main.effective,
            bias=None if bias is None else bias.mask,
            bias_value=None if bias is None else bias.effective,
        )

    def pin_state(self) -> dict[str, _pins.WeightPins]:
        """Every present weight's effective values, mask and stored value, as numpy."""
        self._require_built("pin_state")
        state = {}
        for weight in self.present_weights():
            mask, value = self.pin_variables(weight)
            require_one_process(self.raw_variable(weight), f"Layer {self.name!r}: `{weight}`", "read the pins of")
            state[weight] = _pins.WeightPins(
                effective=ops.convert_to_numpy(self.effective(weight)),
                mask=ops.convert_to_numpy(mask).astype(bool),
                value=ops.convert_to_numpy(value),
            )
        return state

    def set_pin_state(self, state: dict[str, _pins.WeightPins], *, raw: bool = True) -> None:
        """Assigns masks, values (and, with `raw`, the raw weights) of every weight.

        Everything is checked before anything is assigned.

        Raises:
            PinError: a shape, dtype or value does not fit the layer.
        """
        self._assign_pin_state(state, raw=raw)
        self.settle()

    def _assign_pin_state(self, state: dict[str, _pins.WeightPins], *, raw: bool) -> None:
        """`set_pin_state` without `settle`."""
        self._require_built("set_pin_state")
        assignments = []
        for weight in self.present_weights():
            if weight not in state:
                raise PinError(f"Layer {self.name!r}: missing the pins of `{weight}`.")
            mask_var, value_var = self.pin_variables(weight)
            pins = state[weight]
            prefix = f"Layer {self.name!r}: `{weight}"
            mask = _pins.checked_stored_mask(pins.mask, tuple(mask_var.shape), f"{prefix}_pin_mask`")
            value = _pins.checked_stored_value(
                pins.value, tuple(value_var.shape), value_var.dtype, f"{prefix}_pin_value`"
            )
            assignments += [(mask_var, mask), (value_var, value)]
            if raw:
                raw_var = self.raw_variable(weight)
                weights = _pins.checked_stored_weight(
                    pins.effective, tuple(raw_var.shape), raw_var.dtype, f"{prefix}`"
                )
                assignments.append((raw_var, weights))
        for variable, value in assignments:
            variable.assign(value)
        if raw and getattr(self, "lora_enabled", False):
            self._zero_lora()  # the raw weights assigned are the effective ones

    def set_pins(self, pins: dict[str, tuple[Any, Any]]) -> None:
        """Assigns masks and stored values, then each raw weight its effective value.

        `pins` maps every present weight to (mask, stored value); it is
        emptied once they are assigned, so that its host arrays are gone
        before the raw weights are computed. The raw weights are computed
        where they live (`where(mask, value, raw)`, LoRA merged and its
        factors restarted at zero), so nothing of the weight's size goes
        through the host: what `freeze` does to a live layer. Equal, bit for
        bit, to `set_pin_state` with the plan's effective weights.

        The masks and values may be live tensors (planned where a weight
        split across processes lives, `kerasurgery.model.device`): they are
        checked and assigned there.

        Raises:
            PinError: a shape, dtype or value does not fit the layer.
        """
        if all(isinstance(a, np.ndarray) for pair in pins.values() for a in pair):
            self._assign_pin_state({w: _pins.WeightPins(None, *pins.pop(w)) for w in list(pins)}, raw=False)
        else:
            self._set_live_pins(pins)
        for weight in self.present_weights():
            raw = self.raw_variable(weight)
            if self._lora_composed(weight) is raw:
                _assign_pinned(raw, *self.pin_variables(weight))
            else:  # LoRA merged: `where(mask, value, raw + lora)`
                raw.assign(self.effective(weight))
        if getattr(self, "lora_enabled", False):
            self._zero_lora()
        self._settle(assign=False)  # every raw weight was just given its effective value

    def _set_live_pins(self, pins: dict[str, tuple[Any, Any]]) -> None:
        """`set_pin_state(..., raw=False)` for masks and values that are tensors: checked where they live."""
        assignments = []
        for weight in self.present_weights():
            if weight not in pins:
                raise PinError(f"Layer {self.name!r}: missing the pins of `{weight}`.")
            mask, value = pins.pop(weight)
            mask_var, value_var = self.pin_variables(weight)
            prefix = f"Layer {self.name!r}: `{weight}"
            for what, array, variable in (("mask", mask, mask_var), ("value", value, value_var)):
                if isinstance(array, np.ndarray):
                    continue  # a host scalar or a user's array: checked below as on the host
                if tuple(array.shape) != tuple(variable.shape):
                    raise PinError(f"{prefix}_pin_{what}` has the wrong shape. Expected: "
                                   f"{tuple(variable.shape)}. Received: {tuple(array.shape)}")
            if isinstance(mask, np.ndarray):
                mask = _pins.checked_stored_mask(mask, tuple(mask_var.shape), f"{prefix}_pin_mask`")
            elif keras.backend.standardize_dtype(mask.dtype) != "bool":
                raise PinError(f"{prefix}_pin_mask` must be boolean. Received dtype: {mask.dtype}")
            if isinstance(value, np.ndarray):
                value = _pins.checked_stored_value(
                    value, tuple(value_var.shape), value_var.dtype, f"{prefix}_pin_value`")
            elif not bool(ops.convert_to_numpy(ops.all(ops.isfinite(value)))):
                raise PinError(f"{prefix}_pin_value` holds a non-finite pinned value.")
            assignments += [(mask_var, mask), (value_var, value)]
        for variable, value in assignments:
            variable.assign(value)

    def pins_hold(self) -> bool:
        """Whether every pinned entry computes with its pinned value, bit for bit.

        Checked on what the layer computes with (its `kernel`, ...: a settled
        weight's raw variable as it is), where the weights live: its bits
        against the stored value's bits at the mask, reduced to one boolean,
        so a weight split across processes is verified without being
        gathered (each process runs the same check and reads the same
        answer). `-0.0` and `0.0` differ.
        """
        self._require_built("pins_hold")
        for weight in self.present_weights():
            mask, value = self.pin_variables(weight)
            effective = ops.convert_to_tensor(getattr(self, weight))
            integer = {2: "int16", 4: "int32", 8: "int64"}[np.dtype(
                _float_dtype(effective.dtype)).itemsize]
            value = ops.cast(ops.convert_to_tensor(value), effective.dtype)
            differs = ops.not_equal(ops.view(effective, integer), ops.view(value, integer))
            if bool(ops.convert_to_numpy(ops.any(ops.logical_and(mask, differs)))):
                return False
        return True

    def set_pinned_weights(
        self,
        kernel: np.ndarray,
        kernel_mask: np.ndarray,
        kernel_value: Any,
        bias: np.ndarray | None = None,
        bias_mask: np.ndarray | None = None,
        bias_value: np.ndarray | None = None,
    ) -> None:
        """Assigns the main weight and the bias with their pins (the 0.1.0 form of `set_pin_state`).

        Raises:
            PinError: if a shape or dtype does not fit the layer.
        """
        state = {self.pinned_weights[0]: _pins.WeightPins(kernel, kernel_mask, kernel_value)}
        if "bias" in self.present_weights():
            if bias is None or bias_mask is None or bias_value is None:
                raise PinError(f"Layer {self.name!r}: missing `bias`, `bias_mask` or `bias_value`.")
            state["bias"] = _pins.WeightPins(bias, bias_mask, bias_value)
        self.set_pin_state(state)

    # -- what users read and write -----------------------------------------

    def get_weights(self) -> list[np.ndarray]:
        # The effective weights stand where the raw ones are: what users read
        # is what the layer computes with, never a raw entry training moved.
        effective = {id(self.raw_variable(w)): w for w in self.present_weights()}
        for v in self.weights:
            require_one_process(v, f"Layer {self.name!r}: `{v.name}`", "read the weights of")
        return [
            ops.convert_to_numpy(self.effective(effective[id(v)])) if id(v) in effective
            else ops.convert_to_numpy(v)
            for v in self.weights
        ]

    def set_weights(self, weights: list[Any]) -> None:
        variables = self.weights
        if len(weights) != len(variables):
            raise ValueError(
                f"Layer {self.name!r} expected {len(variables)} weights "
                f"({[v.name for v in variables]}). Received: {len(weights)}"
            )
        named = {id(v): v.name for v in variables}
        checked = []
        for variable, value in zip(variables, weights):
            name = named[id(variable)]
            where = f"Layer {self.name!r}: `{name}`"
            shape, dtype = tuple(variable.shape), variable.dtype
            if name.endswith("_pin_mask"):
                value = _pins.checked_stored_mask(value, shape, where)
            elif name.endswith("_pin_value"):
                value = _pins.checked_stored_value(value, shape, dtype, where)
            checked.append((variable, value))
        for variable, value in checked:
            variable.assign(value)
        self.settle()

    def save_own_variables(self, store: Any) -> None:
        if not self.built:
            return
        self._check_pins_sound()
        if not self._in_config:
            # The parent re-creates a plain Keras layer: store what it loads.
            for i, (_, tensor) in enumerate(self._saved()):
                store[str(i)] = ops.convert_to_numpy(tensor)
            return
        for weight, tensor in self._saved():
            store[weight] = ops.convert_to_numpy(tensor)
        for weight in self.present_weights():
            mask, value = self.pin_variables(weight)
            store[f"{weight}_pin_mask"] = ops.convert_to_numpy(mask)
            store[f"{weight}_pin_value"] = ops.convert_to_numpy(value)

    def load_own_variables(self, store: Any) -> None:
        if not self.built:
            return
        present = self.present_weights()
        keys = set(store.keys())
        named = [k for w in present for k in (w, f"{w}_pin_mask", f"{w}_pin_value")]
        named += list(self.state_weights)
        plain = [str(i) for i in range(len(present) + len(self.state_weights))]
        if keys == set(named):
            self._load_state_weights(store, list(self.state_weights))
            state = {
                w: _pins.WeightPins(
                    effective=store[w][...], mask=store[f"{w}_pin_mask"][...],
                    value=store[f"{w}_pin_value"][...],
                )
                for w in present
            }
        elif keys == set(plain):
            # The plain layout (a Keras layer's weights, or a layer whose pins
            # the file keeps in its pin record): the weights are loaded and
            # the current pins kept, so loading the original model's weights
            # into a frozen model leaves every pin in place.
            self._load_state_weights(store, plain[len(present):])
            for i, w in enumerate(present):
                raw = self.raw_variable(w)
                raw.assign(_pins.checked_stored_weight(
                    store[str(i)][...], tuple(raw.shape), raw.dtype, f"Layer {self.name!r}: `{w}`"
                ))
            if getattr(self, "lora_enabled", False):
                self._zero_lora()
            self.settle()
            return
        elif not keys:
            # Keras keys a weights file by layer class (`layers/dense`), so a
            # file saved from the unfrozen model has nothing under this one.
            raise PinError(
                f"Layer {self.name!r}: the weights file has no weights for this pinned "
                f"layer (a file saved from the unfrozen model keys it by its Keras "
                "class). Load that file into the original model, then freeze it again."
            )
        else:
            raise PinError(
                f"Layer {self.name!r}: the saved variables do not match a "
                f"{type(self).__name__} layer. Expected: {named} (or {plain}). "
                f"Received: {sorted(keys)}"
            )
        self.set_pin_state(state)

    def _load_state_weights(self, store: Any, keys: list[str]) -> None:
        """Assigns the state weights (moving statistics) from `keys` of `store`, in order."""
        for key, weight in zip(keys, self.state_weights):
            variable = getattr(self, weight)
            variable.assign(_pins.checked_stored_weight(
                store[key][...], tuple(variable.shape), variable.dtype,
                f"Layer {self.name!r}: `{weight}`"))

    def _check_pins_sound(self) -> None:
        # A direct `assign` can put anything into the variables; refuse to
        # write a file that could not be loaded again.
        for weight in self.present_weights():
            mask, value = self.pin_variables(weight)
            if str(mask.dtype) != "bool":
                raise PinError(f"Layer {self.name!r}: `{weight}_pin_mask` is not boolean.")
            if not np.all(np.isfinite(ops.convert_to_numpy(value))):
                raise PinError(
                    f"Layer {self.name!r}: `{weight}_pin_value` holds a non-finite "
                    "pinned value; set finite values before saving."
                )

    # -- refused ------------------------------------------------------------

    def quantize(self, mode: Any = None, *args: Any, **kwargs: Any) -> None:
        if not isinstance(self, PinMixin):
            # Called through the wrapper Keras made when the layer was created
            # pinned, after `unpin_in_place`: quantize as the Keras class does.
            return type(self).quantize(self, mode, *args, **kwargs)
        raise KerasurgeryError(
            f"Layer {self.name!r} has pins; quantizing it would drop them. Quantize "
            "`kerasurgery.strip(model)` instead (plain layers with the effective weights)."
        )

    def enable_lora(self, *args: Any, **kwargs: Any) -> None:
        """Keras' LoRA, composed with the pins: `where(mask, value, raw + lora)`.

        The raw weight stops training and the LoRA factors train, as for the
        Keras class; a pinned entry keeps its value whatever they learn.
        `kerasurgery.strip` merges the factors into the plain weight.
        """
        super().enable_lora(*args, **kwargs)

    def _require_built(self, method: str) -> None:
        if not self.built:
            raise ValueError(
                f"Layer {self.name!r} is not built yet: call it on an input (or "
                f"`build` it) before `{method}()`."
            )

    def get_config(self) -> dict:
        base_config = super().get_config()
        config = {"pin_storage": dict(self._pin_storage)}
        return {**base_config, **config}


def _float_dtype(dtype: Any) -> Any:
    name = keras.backend.standardize_dtype(dtype)
    if name == "bfloat16":
        import ml_dtypes  # a dependency of Keras

        return ml_dtypes.bfloat16
    return name


def _pin_variable(layer: PinMixin, name: str, shape: tuple, dtype: Any, raw: keras.Variable) -> keras.Variable:
    """A non-trainable zero variable of `layer`, sharded like `raw` where `raw` is sharded."""
    layout = _keras_private.variable_layout(raw)
    if layout is not None:
        if shape != tuple(raw.shape):  # a shared scalar value: replicated
            layout = keras.distribution.TensorLayout(
                (None,) * len(shape), getattr(layout, "device_mesh", None))
        return _keras_private.add_weight_with_layout(
            layer, name=name, shape=shape, dtype=dtype, layout=layout)
    return layer.add_weight(name=name, shape=shape, initializer="zeros", dtype=dtype, trainable=False)


def _effective_property(weight: str, raw_attr: str, *, settable: bool) -> property:
    def fget(self: PinMixin) -> Any:
        if self.__dict__.get(raw_attr) is None:
            return None
        folded = self.__dict__.get("_folded")
        if folded is not None:
            return folded[weight]
        return self._read(weight)

    def fset(self: PinMixin, value: Any) -> None:
        # The Keras class's own `build` assigns its raw variable here.
        if not settable or f"{weight}_pin_mask" in self.__dict__:
            raise AttributeError(
                f"`{weight}` of a pinned layer is read-only: it is the effective "
                f"weight. Assign to `raw_variable({weight!r})` or use `set_weights`."
            )
        object.__setattr__(self, raw_attr, value)

    return property(fget, fset, doc=f"The effective `{weight}`: pinned entries at their values.")


def pin_in_place(layer: keras.layers.Layer, cls: type, storage: dict[str, str], *, in_config: bool) -> None:
    """Turns a built Keras layer into an instance of its pinned class `cls`, nothing pinned yet.

    The layer keeps its identity, variables and place in its parent; it gains
    the mask and value variables (all False / zero) of each weight.
    """
    if getattr(layer, "quantization_mode", None):
        raise PinError(f"Layer {layer.name!r}: cannot pin a quantized layer; pin the float model.")
    if getattr(layer, "lora_enabled", False):
        _merge_lora(layer)
    for weight, raw_attr in cls._raw_attrs.items():
        if raw_attr != f"_{weight}" and weight in layer.__dict__:
            layer.__dict__[raw_attr] = layer.__dict__.pop(weight)
    # Keras wraps `quantize` per instance when the layer is created; its
    # wrapper would call the plain class's method. Kept for `unpin_in_place`.
    object.__setattr__(layer, "_keras_quantize", _keras_private.keras_quantize(layer))
    # Unpinned, the layer gets its own class back (KerasHub's subclass of a
    # Keras class, a kind's alias), not the Keras class of its kind.
    object.__setattr__(layer, "_plain_class", type(layer))
    layer.__class__ = cls
    _keras_private.set_quantize(layer, cls.quantize.__get__(layer))
    object.__setattr__(layer, "_in_config", in_config)
    layer._add_pin_variables(storage)


@contextlib.contextmanager
def folded(layers: Iterable[PinMixin], *, held: bool = False) -> Iterator[None]:
    """Inside the block, each of `layers` reads its weights as they were on entry.

    On entry every pinned layer forms its effective weights once
    (`where(mask, value, raw)`, LoRA merged); inside, its `kernel`, `bias`,
    ... properties return those tensors instead of forming them again on
    each read. For code that runs the model many times over weights that do
    not change, such as a decoding loop: a loop that carries the variables
    as loop state (KerasHub's samplers on JAX) would otherwise form every
    effective weight again on every iteration, since XLA on CPU does not
    hoist the select out of the loop. Entered inside a traced function
    (`jax.jit`, `tf.function`), the weights are formed from the traced
    variable values, once per trace. Nothing inside may change the weights.

    With `held`, the weights a layer is `holding` (its last
    `hold_effective`: their raw variables hold the effective weights) are
    read as the variables, with no select at all; the caller must hold the
    layers again before each later call of what it traced (a pinned task's
    `generate` does).
    """
    entered = []
    try:
        for layer in layers:
            holding = layer.__dict__.get("holding", ()) if held else ()
            effective = {w: layer.raw_variable(w) if w in holding else layer.effective(w)
                         for w in layer.present_weights()}
            object.__setattr__(layer, "_folded", effective)
            entered.append(layer)
        yield
    finally:
        for layer in entered:
            object.__setattr__(layer, "_folded", None)


@contextlib.contextmanager
def keyed_as_plain(layers: Iterable[PinMixin]) -> Iterator[None]:
    """Inside the block, Keras saves each of `layers` under its plain class's key.

    A `.keras` file keys the weights of the layers that a list holds (a
    model's `layers`, a block's list of layers) by their class names
    (`layers/embedding_1`, keras/src/saving/saving_lib.py:983), and the
    model that loads it looks them up under the names of the layers it
    makes. A pinned layer whose parent re-creates it as a plain Keras layer
    (a KerasHub backbone's `segment_embedding`) must be found under the
    plain name: while saving, it wears a subclass of its pinned class named
    as its Keras class.
    """
    worn = []
    try:
        for layer in layers:
            cls = type(layer)
            layer.__class__ = _plain_named(cls)
            worn.append((layer, cls))
        yield
    finally:
        for layer, cls in worn:
            layer.__class__ = cls


@functools.cache
def _plain_named(cls: type) -> type:
    plain = cls.keras_class
    return type(plain.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": plain.__name__})


def _merge_lora(layer: keras.layers.Layer) -> None:
    """Folds a LoRA layer's adapters into its weight, as a plain layer of the same config."""
    weight = "kernel" if "lora_kernel_a" in layer.__dict__ else "embeddings"
    merged = ops.convert_to_numpy(getattr(layer, weight))  # Keras' property composes the adapters
    layer.__dict__[f"_{weight}"].assign(merged)
    _drop_lora(layer)


def _drop_lora(layer: keras.layers.Layer) -> None:
    """Removes a LoRA layer's adapters (already merged) and lets its weight train again."""
    for name in _LORA_FACTORS:
        if name in layer.__dict__:
            _keras_private.untrack_variable(layer, layer.__dict__.pop(name))
    for name in ("_kernel", "_embeddings"):
        if isinstance(layer.__dict__.get(name), keras.Variable):
            layer.__dict__[name].trainable = layer.trainable
    object.__setattr__(layer, "lora_enabled", False)
    object.__setattr__(layer, "lora_rank", None)
    object.__setattr__(layer, "lora_alpha", None)


def unpin_in_place(layer: PinMixin) -> None:
    """Turns a pinned layer back into its plain Keras class, holding the effective weights.

    The effective weights are computed where the weights live (a weight split
    across processes included) and assigned to the raw variables.
    """
    effective = {w: layer.effective(w) for w in layer.present_weights()}
    cls = layer.__dict__.pop("_plain_class", None) or layer.keras_class
    for weight in layer.present_weights():
        for variable in layer.pin_variables(weight):
            _keras_private.untrack_variable(layer, variable)
        del layer.__dict__[f"{weight}_pin_mask"]
        del layer.__dict__[f"{weight}_pin_value"]
        raw = layer.raw_variable(weight)
        raw.assign(effective[weight])
        if isinstance(raw.regularizer, _OnEffective):
            raw.regularizer = raw.regularizer.fn
    if getattr(layer, "lora_enabled", False):
        _drop_lora(layer)  # merged: the effective weight holds raw + lora
    raw_attrs = type(layer)._raw_attrs
    if "_keras_quantize" in layer.__dict__:
        # Pinned in place: Keras' own wrapper of the plain class's `quantize`
        # comes back. A layer made pinned keeps Keras' wrapper of
        # `PinMixin.quantize`, which quantizes once the layer is plain again.
        _keras_private.set_quantize(layer, layer.__dict__.pop("_keras_quantize"))
    layer.__class__ = cls
    for weight, raw_attr in raw_attrs.items():
        if raw_attr != f"_{weight}":
            layer.__dict__[weight] = layer.__dict__.pop(raw_attr, None)
    for attr in ("_pin_storage", "_in_config", "_settled", "_folded", "_held", "holding"):
        layer.__dict__.pop(attr, None)


def _pinned(mask: Any, value: Any, raw: Any) -> Any:
    """`where(mask, value, raw)` on tensors, in the cheapest exact form of the backend."""
    if keras.backend.backend() == "tensorflow":
        return _tf_select(mask, value, raw)
    return ops.where(mask, ops.cast(value, raw.dtype), raw)


def _assign_pinned(raw: Any, mask: Any, value: Any) -> None:
    """`raw.assign(where(mask, value, raw))`, written over `raw`'s own buffer on JAX.

    A JAX array is immutable: assigning the effective weight makes a new
    buffer while the old one is still held, so pinning a layer would hold
    its weight twice (a 60 MB token embedding: 60 MB more peak memory than
    its pins). Donating the old buffer to a compiled `where` lets XLA write
    the result in its place, as Keras' own JAX trainer donates the model's
    variables to each training step. The result is the same `_pinned`, bit
    for bit. Other backends keep the plain assign (their variables are
    written in place; the `where` result is a temporary of the weight's size).

    The buffer is donated only when the variable alone holds its array: a
    variable assigned another's value (Keras' EMA copies its averages over
    the model's weights) shares one array object, which donating would
    delete under the other. JAX itself copies instead of donating while a
    numpy view of the buffer is alive.
    """
    array = _sole_array(raw) if keras.backend.backend() == "jax" else None
    if array is None:
        raw.assign(_pinned(ops.convert_to_tensor(mask), ops.convert_to_tensor(value),
                           ops.convert_to_tensor(raw)))
        return
    raw.assign(_donating_pinned()(array, mask.value, value.value))


def _array_refs(*variables: Any) -> tuple | None:
    """Weak references to the variables' current arrays (JAX: immutable, replaced by every assign).

    Weak, so that they keep no old weight alive and leave `_sole_array`'s
    count as it is. `None` on other backends, whose variables are written
    in place: there a held weight is never known to be unchanged.
    """
    if keras.backend.backend() != "jax":
        return None
    return tuple(weakref.ref(v.value) for v in variables)


def _sole_array(variable: Any) -> Any:
    """`variable`'s array when nothing but the variable holds it, else `None`."""
    array = variable.value
    # Counted against an object held the same way (one attribute, one local
    # name), so that the interpreter's own way of counting does not matter.
    probe = object()
    holder = types.SimpleNamespace(value=probe)  # noqa: F841  (the one attribute)
    return array if sys.getrefcount(array) <= sys.getrefcount(probe) else None


@functools.cache
def _donating_pinned() -> Any:
    # One jitted function for the process: JAX caches what it compiles per
    # function object (and per shape), not per call.
    import jax

    return jax.jit(lambda raw, mask, value: _pinned(mask, value, raw), donate_argnums=0)


def _tf_select(mask: Any, value: Any, raw: Any) -> Any:
    # `ops.where` runs TensorFlow's SelectV2, whose broadcasting CPU kernel is
    # about 3x slower than the v1 `Select` kernel (operands of one shape) on
    # the same data. In graph mode the forward and backward selects of a
    # 1024x1024 kernel cost ~1.5 ms of CPU per step with SelectV2 and ~0.9 ms
    # with Select, as much as multiplying by a 0/1 matrix; a 3 x 1024 MLP step
    # went from ~1.08x to ~1.04x plain Dense (benchmarks/bench_step.py).
    # `Select` needs the value at full shape, so a shared scalar is filled
    # first (one cheap write). Its gradient sends exact zeros to the pinned
    # entries of `raw`, as SelectV2's does, and XLA compiles it alike.
    import tensorflow as tf

    value = tf.cast(value, raw.dtype)
    if value.shape.rank == 0:
        value = tf.fill(tf.shape(raw), value)
    return tf.raw_ops.Select(condition=mask, x=value, y=raw)


class _OnEffective:
    """Applies a regularizer to the effective weight instead of the raw one.

    Keras hands the raw variable (or, under JAX, its current value) to a
    variable's regularizer; on the raw weight it would give pinned entries a
    gradient.
    """

    def __init__(self, fn: Any, layer: PinMixin, weight: str) -> None:
        self.fn = fn
        self.layer = layer
        self.weight = weight

    def __call__(self, raw: Any) -> Any:
        return self.fn(self.layer.effective(self.weight, raw))


def _regularize_effective(raw: keras.Variable, layer: PinMixin, weight: str) -> None:
    regularizer = getattr(raw, "regularizer", None)
    if regularizer is not None and not isinstance(regularizer, _OnEffective):
        raw.regularizer = _OnEffective(regularizer, layer, weight)
    # A constraint projects the raw variable after each update, as for the
    # Keras class. It cannot see the pins: under JAX the optimizer applies it
    # where only trainable variables are readable. Pinned entries are
    # unaffected anyway.


def require_one_process(variable: Any, where: str, action: str) -> None:
    """Refuses, in one line, to read a weight that is split across processes (hosts).

    Under `keras.distribution.initialize` (JAX, several processes) a variable
    laid out across the processes' devices cannot be read whole by any of
    them. `freeze(..., in_place=True)` plans such a weight where its shards
    live (`kerasurgery.model.device`) and `pins_hold` verifies it there; what
    returns or writes whole arrays (a copy, `pin_state`, `get_weights`,
    `save_model`) works from host (numpy) copies, so it says so instead of
    JAX's "Fetching value ... non-addressable devices" traceback. A pinned
    model loaded inside the scope trains with its pins on every process.

    Raises:
        KerasurgeryError: `variable` has shards on another process.
    """
    value = getattr(variable, "value", variable)
    if getattr(value, "is_fully_addressable", True) is False:
        raise KerasurgeryError(
            f"{where} is split across processes (hosts), and kerasurgery cannot {action} "
            "a weight that no process holds whole yet: work where the shards live "
            "(`freeze`/`strip` with `in_place=True`, `layer.pins_hold()`), or do it on one "
            "host (outside the distribution) and load the model inside the scope."
        )
