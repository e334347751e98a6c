"""`MaskedDense`: a `Dense` layer whose selected kernel and bias entries are pinned."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import activations, constraints, initializers, ops, regularizers

from kerasurgery.errors import PinError
from kerasurgery.pins import Pin

# Config values of `pinned_kernel_values`: one scalar shared by every pinned
# kernel entry (the pruning case: about 1 byte of extra state per entry), or
# one stored value per entry (at most 1 + 4 bytes per entry in float32).
SHARED = "shared"
PER_ENTRY = "per_entry"

# Dense arguments that change what `kernel` means; pins cannot be combined with
# them, so they are accepted (a Dense config carries them) only when unset.
_UNSUPPORTED_DENSE_ARGS = ("lora_rank", "lora_alpha", "quantization_config")


@keras.saving.register_keras_serializable(package="kerasurgery", name="MaskedDense")
class MaskedDense(keras.layers.Layer):
    """A densely-connected layer with some kernel and bias entries pinned.

    The layer computes exactly what `Dense` computes, with the kernel and bias
    replaced by their *effective* values:

        kernel = where(kernel_pin_mask, kernel_pin_value, raw_kernel)

    The raw kernel is the trainable variable; the pin masks and values are
    non-trainable variables. A pinned entry therefore receives an exactly zero
    gradient, and whatever an optimizer does to the raw variable there (weight
    decay, momentum, EMA), the entry the layer computes with stays bit for bit
    at its pinned value.

    Constructed from `Dense`'s arguments alone, nothing is pinned; use
    `kerasurgery.freeze` to turn `Dense` layers of a model into pinned ones.

    Args:
        units: Positive integer, dimensionality of the output space.
        activation: Activation function, as for `Dense`.
        use_bias: Whether the layer uses a bias vector.
        kernel_initializer: Initializer for the raw kernel.
        bias_initializer: Initializer for the raw bias.
        kernel_regularizer: Regularizer applied to the effective kernel (so a
            pinned entry never gets a gradient from it either).
        bias_regularizer: Regularizer applied to the effective bias.
        activity_regularizer: Regularizer applied to the output.
        kernel_constraint: Constraint applied to the raw kernel after each
            update, as for `Dense`. Pinned entries keep their values whatever
            it does; a norm constraint counts the raw entries under pins.
        bias_constraint: Constraint applied to the raw bias.
        pinned_kernel_values: `"shared"` (every pinned kernel entry has one
            value, stored once) or `"per_entry"`.
        **kwargs: Base layer arguments (`name`, `dtype`, `trainable`, ...).

    Example:

    ```python
    layer = kerasurgery.MaskedDense(4, activation="relu")
    y = layer(np.ones((2, 3)))  # nothing pinned: exactly like Dense(4)
    layer.pins().kernel.any()   # False
    ```
    """

    def __init__(
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        pinned_kernel_values: str = SHARED,
        **kwargs: Any,
    ) -> None:
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise ValueError(
                "Expected `units` to be a positive integer. "
                f"Received: units={units!r}"
            )
        if pinned_kernel_values not in (SHARED, PER_ENTRY):
            raise ValueError(
                f"Expected `pinned_kernel_values` to be {SHARED!r} or "
                f"{PER_ENTRY!r}. Received: pinned_kernel_values="
                f"{pinned_kernel_values!r}"
            )
        for arg in _UNSUPPORTED_DENSE_ARGS:
            value = kwargs.pop(arg, None)
            if value is not None:
                raise ValueError(
                    f"`MaskedDense` does not support `{arg}`: pins and "
                    "LoRA/quantization both redefine the kernel. Merge or "
                    f"remove them first. Received: {arg}={value!r}"
                )
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = units
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)
        self.pinned_kernel_values = pinned_kernel_values
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape: tuple) -> None:
        kernel_shape = (input_shape[-1], self.units)
        self._kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=self.kernel_initializer,
        )
        self.kernel_pin_mask = self.add_weight(
            name="kernel_pin_mask",
            shape=kernel_shape,
            initializer="zeros",
            dtype="bool",
            trainable=False,
        )
        self.kernel_pin_value = self.add_weight(
            name="kernel_pin_value",
            shape=() if self.pinned_kernel_values == SHARED else kernel_shape,
            initializer="zeros",
            trainable=False,
        )
        _attach_effective(self._kernel, self, "kernel")
        if self.use_bias:
            self._bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
            )
            self.bias_pin_mask = self.add_weight(
                name="bias_pin_mask",
                shape=(self.units,),
                initializer="zeros",
                dtype="bool",
                trainable=False,
            )
            self.bias_pin_value = self.add_weight(
                name="bias_pin_value",
                shape=(self.units,),
                initializer="zeros",
                trainable=False,
            )
            _attach_effective(self._bias, self, "bias")
        else:
            self._bias = None
        self.input_spec = keras.layers.InputSpec(
            min_ndim=2, axes={-1: input_shape[-1]}
        )
        self.built = True

    @property
    def kernel(self) -> Any:
        """The effective kernel: pinned entries at their values, the rest raw."""
        return self._effective("kernel", self._kernel)

    @property
    def bias(self) -> Any:
        """The effective bias, or `None` when `use_bias=False`."""
        if self._bias is None:
            return None
        return self._effective("bias", self._bias)

    def _effective(self, which: str, raw: Any) -> Any:
        mask = getattr(self, f"{which}_pin_mask")
        value = getattr(self, f"{which}_pin_value")
        # Explicit conversion: JAX's where does not accept Keras variables.
        return _pinned(
            ops.convert_to_tensor(mask),
            ops.convert_to_tensor(value),
            ops.convert_to_tensor(raw),
        )

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = ops.matmul(inputs, self.kernel)
        if self._bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        output_shape = list(input_shape)
        output_shape[-1] = self.units
        return tuple(output_shape)

    def pins(self) -> Pin:
        """Returns the layer's current pins as numpy arrays.

        Returns:
            A `Pin` whose `kernel`/`bias` are boolean masks (True = pinned) and
            whose `kernel_value`/`bias_value` are arrays of the weight's shape
            holding the pinned value at each pinned entry and the current
            effective value elsewhere. `bias` fields are `None` without a bias.
        """
        self._require_built("pins")
        kernel = ops.convert_to_numpy(self.kernel)
        pin = Pin(
            kernel=ops.convert_to_numpy(self.kernel_pin_mask).astype(bool),
            kernel_value=kernel,
        )
        if self._bias is not None:
            pin = Pin(
                kernel=pin.kernel,
                kernel_value=kernel,
                bias=ops.convert_to_numpy(self.bias_pin_mask).astype(bool),
                bias_value=ops.convert_to_numpy(self.bias),
            )
        return pin

    def set_pinned_weights(
        self,
        kernel: np.ndarray,
        kernel_mask: np.ndarray,
        kernel_value: np.ndarray | float,
        bias: np.ndarray | None = None,
        bias_mask: np.ndarray | None = None,
        bias_value: np.ndarray | None = None,
    ) -> None:
        """Assigns raw weights and pins at once (used by `freeze` and loading).

        Raises:
            PinError: if a shape or dtype does not fit the layer.
        """
        self._require_built("set_pinned_weights")
        values = {"kernel": kernel, "kernel_pin_mask": kernel_mask,
                  "kernel_pin_value": kernel_value}
        if self._bias is not None:
            values.update(bias=bias, bias_pin_mask=bias_mask,
                          bias_pin_value=bias_value)
        checked = {name: self._checked(name, value) for name, value in values.items()}
        for name, value in checked.items():
            self._variable(name).assign(value)

    def _variable(self, name: str) -> keras.Variable:
        if name in ("kernel", "bias"):
            return getattr(self, f"_{name}")
        return getattr(self, name)

    def _checked(self, name: str, value: Any) -> np.ndarray:
        """Validates one stored array against the variable it is meant for."""
        variable = self._variable(name)
        if value is None:
            raise PinError(f"Layer {self.name!r}: missing `{name}`.")
        array = np.asarray(value)
        expected_shape = tuple(variable.shape)
        if array.shape != expected_shape:
            raise PinError(
                f"Layer {self.name!r}: `{name}` has the wrong shape. "
                f"Expected: {expected_shape}. Received: {array.shape}"
            )
        if name.endswith("_mask"):
            if array.dtype != np.bool_:
                raise PinError(
                    f"Layer {self.name!r}: `{name}` must be boolean. "
                    f"Received dtype: {array.dtype}"
                )
            return array
        # Not np.floating: bfloat16 (ml_dtypes) is a float that numpy does not class as one.
        if not keras.backend.is_float_dtype(array.dtype):
            raise PinError(
                f"Layer {self.name!r}: `{name}` must be floating point. "
                f"Received dtype: {array.dtype}"
            )
        if name.endswith("_value") and not np.all(np.isfinite(array)):
            raise PinError(
                f"Layer {self.name!r}: `{name}` holds a non-finite pinned value."
            )
        return array.astype(variable.dtype, copy=False)

    def _stored_names(self) -> list[str]:
        names = ["kernel", "kernel_pin_mask", "kernel_pin_value"]
        if self._bias is not None:
            names += ["bias", "bias_pin_mask", "bias_pin_value"]
        return names

    def save_own_variables(self, store: Any) -> None:
        # The effective weights are stored (what the layer computes with), so a
        # reader of the file never sees a raw entry that training moved under a pin.
        if not self.built:
            return
        for name in self._stored_names():
            if name == "kernel":
                store[name] = ops.convert_to_numpy(self.kernel)
            elif name == "bias":
                store[name] = ops.convert_to_numpy(self.bias)
            else:
                store[name] = ops.convert_to_numpy(self._variable(name))

    def load_own_variables(self, store: Any) -> None:
        if not self.built:
            return
        names = self._stored_names()
        missing = [name for name in names if name not in store]
        if missing or len(store.keys()) != len(names):
            raise PinError(
                f"Layer {self.name!r}: the saved variables do not match a "
                f"MaskedDense layer. Expected: {names}. "
                f"Received: {sorted(store.keys())}"
            )
        checked = {name: self._checked(name, store[name][...]) for name in names}
        for name, value in checked.items():
            self._variable(name).assign(value)

    def _require_built(self, method: str) -> None:
        if not self.built:
            raise ValueError(
                f"Layer {self.name!r} is not built yet: call it on an input (or "
                f"`build` it) before `{method}()`."
            )

    def get_config(self) -> dict:
        base_config = super().get_config()
        config = {
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": constraints.serialize(self.kernel_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
            "pinned_kernel_values": self.pinned_kernel_values,
        }
        return {**base_config, **config}


def _pinned(mask: Any, value: Any, raw: Any) -> Any:
    """`where(mask, value, raw)` on tensors, in the cheapest exact form of the backend."""
    if keras.backend.backend() == "tensorflow":
        return _tf_select(mask, value, raw)
    return ops.where(mask, value, raw)


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
    variable's regularizer; on the raw kernel it would give pinned entries a
    gradient.
    """

    def __init__(self, fn: Any, layer: MaskedDense, which: str) -> None:
        self.fn = fn
        self.layer = layer
        self.which = which

    def __call__(self, raw: Any) -> Any:
        return self.fn(self.layer._effective(self.which, raw))


def _attach_effective(variable: keras.Variable, layer: MaskedDense, which: str) -> None:
    regularizer = getattr(layer, f"{which}_regularizer")
    constraint = getattr(layer, f"{which}_constraint")
    if regularizer is not None:
        variable.regularizer = _OnEffective(regularizer, layer, which)
    # A constraint projects the raw variable after each update, as for Dense.
    # It cannot see the pins: under JAX the optimizer applies it where only
    # trainable variables are readable. Pinned entries are unaffected anyway.
    variable.constraint = constraint
