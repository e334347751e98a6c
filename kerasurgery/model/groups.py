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
`x + 3.0`); the walk (`_group_walk.py`) only asks the handlers.

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

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from kerasurgery import _keras_private
from kerasurgery import layers as layers_lib
from kerasurgery.errors import KerasurgeryError

# The public classes (`Group`, `Member`, ...) are defined with the walk and importable from here.
__all__ = ["DependencyGroups", "Fold", "Group", "Member", "dependency_groups"]

from kerasurgery.model._group_walk import (
    Member,
    Fold,
    Group,
    DependencyGroups,
    _Value,
    _Walk,
    _Unsupported,
    _channels,
    _numpy,
    _keras_class,
    _channels_last,
    _activation,
    _apply,
    _consume,
    _produce,
    _same_channels,
)


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
    return _Walk(model, _handler_for).run()


_MERGES: dict[type, Callable[[list[np.ndarray]], np.ndarray]] = {
    keras.layers.Add: lambda xs: np.sum(xs, axis=0),
    keras.layers.Subtract: lambda xs: xs[0] - xs[1],
    keras.layers.Multiply: lambda xs: np.prod(xs, axis=0),
    keras.layers.Average: lambda xs: np.mean(xs, axis=0),
    keras.layers.Maximum: lambda xs: np.max(xs, axis=0),
    keras.layers.Minimum: lambda xs: np.min(xs, axis=0),
}


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
