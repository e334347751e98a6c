"""The pinned layer classes and the registry from Keras class to pinned class.

Each pinned class is its Keras class with `PinMixin` in front, so
`isinstance(layer, keras.layers.Dense)` still holds for a `MaskedDense`: code
that looks for Dense layers (Keras' own `quantize`, a KerasHub block, a user's
script) still finds them, and a layer can be pinned in place inside a parent
that keeps calling it. What could bypass the pins by reaching the raw variable
(`quantize`, `enable_lora`) is refused by the mixin.
"""

from __future__ import annotations

import keras

from kerasurgery.layers._mechanism import PinMixin
from kerasurgery.pins import Axes

_KERNEL_BIAS = ("kernel", "bias")
# Convolution kernels are (*spatial, inputs, filters); transposed ones
# (*spatial, filters, inputs); depthwise ones (*spatial, inputs, multiplier),
# whose outputs are numbered input * multiplier + m, as the bias numbers them.
_CONV = Axes(inputs=(-2,), units=(-1,))
_CONV_TRANSPOSE = Axes(inputs=(-1,), units=(-2,))
_DEPTHWISE = Axes(inputs=(-2,), units=(-2, -1))


class _FixedAxes:
    axes: Axes

    def pin_axes(self, weight: str) -> Axes:
        # Also called with a plain Keras layer as `self`, before it is pinned.
        return type(self).axes if isinstance(self, _FixedAxes) else _axes_of(self)


def _registered(cls: type) -> type:
    return keras.saving.register_keras_serializable(package="kerasurgery", name=cls.__name__)(cls)


@_registered
class MaskedDense(_FixedAxes, PinMixin, keras.layers.Dense):
    """A `Dense` layer with some kernel and bias entries pinned.

    The layer computes exactly what `Dense` computes, with the kernel and bias
    replaced by their *effective* values:

        kernel = where(kernel_pin_mask, kernel_pin_value, raw_kernel)

    The raw kernel is the trainable variable; the pin masks and values are
    non-trainable variables. A pinned entry therefore receives an exactly zero
    gradient, and whatever an optimizer does to the raw variable there (weight
    decay, momentum, EMA), the entry the layer computes with stays bit for bit
    at its pinned value. Regularizers apply to the effective weights.

    Constructed from `Dense`'s arguments alone, nothing is pinned; use
    `kerasurgery.freeze` to pin entries of a model's layers.

    Args:
        pin_storage: Maps `"kernel"` / `"bias"` to `"shared"` (every pinned
            entry has one value, stored once) or `"per_entry"`.
        pinned_kernel_values: The kernel's storage, as kerasurgery 0.1.0
            configs give it.
        **kwargs: `Dense`'s arguments.

    Example:

    ```python
    layer = kerasurgery.MaskedDense(4, activation="relu")
    y = layer(np.ones((2, 3)))  # nothing pinned: exactly like Dense(4)
    layer.pins().kernel.any()   # False
    ```
    """

    pinned_weights = _KERNEL_BIAS
    axes = Axes(inputs=(0,), units=(1,))


@_registered
class MaskedEinsumDense(PinMixin, keras.layers.EinsumDense):
    """An `EinsumDense` layer with some kernel and bias entries pinned (see `MaskedDense`).

    Its inputs and units are the kernel axes that the equation shares with
    the input and with the output.
    """

    pinned_weights = _KERNEL_BIAS

    def pin_axes(self, weight: str) -> Axes:
        operands, output = self.equation.replace(" ", "").split("->")
        source, kernel = operands.split(",")
        units = tuple(i for i, c in enumerate(kernel) if c in output)
        bias_axes = self.bias_axes or ""
        bias_labels = [c for c in output if c in bias_axes]
        return Axes(
            inputs=tuple(i for i, c in enumerate(kernel) if c in source and c not in output),
            units=units,
            bias_follows_units=bias_labels == [kernel[i] for i in units],
        )


@_registered
class MaskedEmbedding(_FixedAxes, PinMixin, keras.layers.Embedding):
    """An `Embedding` layer with some rows or entries of its matrix pinned (see `MaskedDense`).

    Its inputs are the rows (token ids: `rules.inputs` keeps a pretrained
    vocabulary fixed while new tokens learn), its units the features.
    """

    pinned_weights = ("embeddings",)
    axes = Axes(inputs=(0,), units=(1,), contracted=False)


@_registered
class MaskedConv1D(_FixedAxes, PinMixin, keras.layers.Conv1D):
    """A `Conv1D` layer with some kernel and bias entries pinned (see `MaskedDense`)."""

    pinned_weights = _KERNEL_BIAS
    axes = _CONV


@_registered
class MaskedConv2D(_FixedAxes, PinMixin, keras.layers.Conv2D):
    """A `Conv2D` layer with some kernel and bias entries pinned (see `MaskedDense`)."""

    pinned_weights = _KERNEL_BIAS
    axes = _CONV


@_registered
class MaskedConv3D(_FixedAxes, PinMixin, keras.layers.Conv3D):
    """A `Conv3D` layer with some kernel and bias entries pinned (see `MaskedDense`)."""

    pinned_weights = _KERNEL_BIAS
    axes = _CONV


@_registered
class MaskedConv1DTranspose(_FixedAxes, PinMixin, keras.layers.Conv1DTranspose):
    """A `Conv1DTranspose` layer with some kernel and bias entries pinned."""

    pinned_weights = _KERNEL_BIAS
    axes = _CONV_TRANSPOSE


@_registered
class MaskedConv2DTranspose(_FixedAxes, PinMixin, keras.layers.Conv2DTranspose):
    """A `Conv2DTranspose` layer with some kernel and bias entries pinned."""

    pinned_weights = _KERNEL_BIAS
    axes = _CONV_TRANSPOSE


@_registered
class MaskedConv3DTranspose(_FixedAxes, PinMixin, keras.layers.Conv3DTranspose):
    """A `Conv3DTranspose` layer with some kernel and bias entries pinned."""

    pinned_weights = _KERNEL_BIAS
    axes = _CONV_TRANSPOSE


@_registered
class MaskedDepthwiseConv1D(_FixedAxes, PinMixin, keras.layers.DepthwiseConv1D):
    """A `DepthwiseConv1D` layer with some kernel and bias entries pinned."""

    pinned_weights = _KERNEL_BIAS
    axes = _DEPTHWISE


@_registered
class MaskedDepthwiseConv2D(_FixedAxes, PinMixin, keras.layers.DepthwiseConv2D):
    """A `DepthwiseConv2D` layer with some kernel and bias entries pinned."""

    pinned_weights = _KERNEL_BIAS
    axes = _DEPTHWISE


@_registered
class MaskedSeparableConv1D(PinMixin, keras.layers.SeparableConv1D):
    """A `SeparableConv1D` layer with depthwise, pointwise and bias entries pinned."""

    pinned_weights = ("depthwise_kernel", "pointwise_kernel", "bias")

    def pin_axes(self, weight: str) -> Axes:
        # Inputs are the depthwise kernel's channels, units the pointwise
        # kernel's filters; the other kernel has no such axis.
        if weight == "depthwise_kernel":
            return Axes(inputs=(-2,), units=())
        return Axes(inputs=(), units=(-1,))


@_registered
class MaskedSeparableConv2D(PinMixin, keras.layers.SeparableConv2D):
    """A `SeparableConv2D` layer with depthwise, pointwise and bias entries pinned."""

    pinned_weights = ("depthwise_kernel", "pointwise_kernel", "bias")

    def pin_axes(self, weight: str) -> Axes:
        # Inputs are the depthwise kernel's channels, units the pointwise
        # kernel's filters; the other kernel has no such axis.
        if weight == "depthwise_kernel":
            return Axes(inputs=(-2,), units=())
        return Axes(inputs=(), units=(-1,))


def _axes_of(layer: keras.layers.Layer) -> Axes:
    from kerasurgery.layers import pinned_class_for

    return pinned_class_for(layer).axes


PINNED_CLASSES: tuple[type, ...] = (
    MaskedDense, MaskedEinsumDense, MaskedEmbedding,
    MaskedConv1D, MaskedConv2D, MaskedConv3D,
    MaskedConv1DTranspose, MaskedConv2DTranspose, MaskedConv3DTranspose,
    MaskedDepthwiseConv1D, MaskedDepthwiseConv2D,
    MaskedSeparableConv1D, MaskedSeparableConv2D,
)
