"""Dependency groups of attention heads, `EinsumDense`, KerasHub blocks and
operations on tensors: the handlers `model/groups.py` looks up after its own.

Each builds on the producer / consumer primitives of `groups.py` (`_consume`
reads channels along a kernel axis, `_produce` makes units along another), so
a head, an einsum's output axis or a feed-forward unit is a unit like a
`Dense` column, with the same pins, checks and removal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from kerasurgery import _keras_private
from kerasurgery.model._group_walk import (
    _channels,
    _consume,
    _numpy,
    _produce,
    _same_channels,
    _Unsupported,
    _Value,
    _Walk,
)


def _einsum_dense(walk, layer, path, values, inputs, outputs):
    """`EinsumDense` whose equation reads the input's last axis along one
    kernel axis and writes the output's last axis from another (`ab,bc->ac`,
    `abc,cd->abd`, `...b,bc->...c`, `abc,cde->abde`); other equations are
    left alone. Only a two-axis kernel with a bias on its units folds a
    constant channel (what `shrink` adds to a bias is rows times constants)."""
    equation = layer.equation
    source, kernel_labels, output = _einsum_parts(equation)
    read, written = source[-1], output[-1]
    if not read.isalpha() or kernel_labels.count(read) != 1 or read in output:
        raise _Unsupported(f"equation {equation!r} does not read the input's last axis "
                           f"along one kernel axis")
    if not written.isalpha() or kernel_labels.count(written) != 1 or written in source:
        raise _Unsupported(f"equation {equation!r} does not write the output's last axis "
                           f"from one kernel axis")
    bias_axes = layer.bias_axes or ""
    if bias_axes and bias_axes[-1] != written:
        raise _Unsupported(f"bias axes {bias_axes!r} do not end with the units' axis")
    folds = len(kernel_labels) == 2 and bias_axes == written
    kernel = _consume(walk, layer, path, values[0], "kernel", axis=kernel_labels.index(read),
                      folds=folds)
    return [_produce(walk, layer, path, kernel, "kernel", axis=kernel_labels.index(written),
                     size=(path, "output_shape"))]


def _einsum_parts(equation: str) -> tuple[str, str, str]:
    """`"abc,cd->abd"` -> ("abc", "cd", "abd"); an ellipsis reads as one "." label."""
    inputs, output = equation.replace("...", ".").split("->")
    source, kernel = inputs.split(",")
    return source.strip(), kernel.strip(), output.strip()


def _attention(walk, layer, path, values, inputs, outputs):
    """`MultiHeadAttention`: heads are units (`_heads`), and so are its output
    channels. The query input is read along the query kernel's first axis,
    the value input along the key and value kernels' first axis, and the
    output projection makes channels like a `Dense`.
    """
    if len(inputs) > 3 or (len(inputs) == 3 and inputs[2] is not inputs[1]):
        raise _Unsupported("called with a key or mask other than the value")
    parts = _keras_private.attention_projections(layer)
    for name, value in (("query", values[0]), ("key", values[1]), ("value", values[1])):
        _consume(walk, parts[name], f"{path}/{parts[name].name}", value, "kernel", axis=0,
                 folds=False)
    _heads(walk, layer, path, path)
    output = parts["output"]
    kernel = _numpy(output, "kernel")
    return [_produce(walk, output, f"{path}/{output.name}", kernel, "kernel",
                     size=(path, "output_shape"))]


def _heads(walk: _Walk, layer: Any, path: str, sized_by: str | None) -> None:
    """Head `h` of an attention layer is one unit: its query, key and value
    kernel columns and biases and the output kernel's rows for it.

    It adds nothing to the output when its value projection is zero (what
    `prune_units` pins) or its output rows are, and removing it leaves every
    other head's softmax as it was. `sized_by`: the layer whose config
    `num_heads` counts the heads, or None where no config can say fewer heads
    of the same size (`shrink` then keeps them, pinned at zero).
    """
    parts = _keras_private.attention_projections(layer)
    paths = {name: f"{path}/{sub.name}" for name, sub in parts.items()}
    zero_value = _zero_slices(parts["value"], "kernel", 1) & _zero_slices(parts["value"], "bias", 0)
    zero_rows = _zero_slices(parts["output"], "kernel", 0)
    walk.outputs.update({(paths["value"], "kernel", 1), (paths["value"], "bias", 0)})
    walk.sizes[paths["value"]] = None if sized_by is None else (sized_by, "num_heads")
    for head in range(_numpy(parts["value"], "kernel").shape[1]):
        unit = walk.new_unit(path, head)
        for name in ("query", "key", "value"):
            walk.units[unit].members += [(paths[name], "kernel", 1, (head,)),
                                         (paths[name], "bias", 0, (head,))]
        walk.units[unit].members.append((paths["output"], "kernel", 0, (head,)))
        now = 0.0 if zero_value[head] or zero_rows[head] else np.nan
        walk.units[unit].reads.append(
            (paths["output"], False, (head,), np.array([now]), np.array([0.0])))


def _transformer_encoder(walk, layer, path, values, inputs, outputs):
    """KerasHub's `TransformerEncoder`: heads, and feed-forward units from the
    intermediate dense into the output dense. Its input and output channels
    pass a residual sum and a `LayerNormalization` across channels: left alone.
    """
    parts = _keras_private.encoder_parts(layer)
    walk.leave(values[0], f"normalized across channels in {path!r}")
    # Its config sizes each head as hidden_dim // num_heads: fewer heads
    # would make them larger.
    _heads(walk, parts["attention"], f"{path}/{parts['attention'].name}", None)
    intermediate, output = parts["intermediate"], parts["output"]
    kernel = _numpy(intermediate, "kernel")
    hidden = _produce(walk, intermediate, f"{path}/{intermediate.name}", kernel, "kernel",
                      size=(path, "intermediate_dim"))
    _consume(walk, output, f"{path}/{output.name}", hidden, "kernel")
    return [_Value.opaque(_channels(t) or 0) for t in outputs]


def _zero_slices(layer: Any, weight: str, axis: int) -> np.ndarray:
    """For each index along `axis`, whether the weight's slice there is all 0.0."""
    values = _numpy(layer, weight)
    if values is None:
        return np.ones(1, bool)
    return np.all(np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1) == 0.0, axis=1)


def _operation(walk, op, path, values, inputs, outputs):
    """An operation on tensors in a Functional graph (`x + 3.0`, `keras.ops.relu6(x)`,
    `x * y`), entry by entry: channel `c` of every tensor argument is one unit,
    and a constant argument must hold one value for every channel (a scalar,
    or size 1 on the last axis). The constants of each channel follow by
    running the operation itself on them."""
    args, kwargs = walk.arguments
    if any(isinstance(v, keras.KerasTensor) for v in kwargs.values()):
        raise _Unsupported("a tensor passed by keyword")
    channels = _channels(outputs[0])
    if any(_channels(t) != channels for t in inputs):
        raise _Unsupported("broadcasts over channels")
    constants = [a for a in args if not isinstance(a, keras.KerasTensor)]
    if any(np.ndim(c) and np.shape(c)[-1] != 1 for c in constants):
        raise _Unsupported("a constant with a value per channel")
    if len(outputs) != 1 or not channels:
        raise _Unsupported("not one output with channels")

    def run(consts: list[np.ndarray]) -> np.ndarray:
        known = np.all([np.isfinite(c) for c in consts], axis=0)
        out = np.full(channels, np.nan)
        if known.any():
            feed = iter(consts)
            called = [ops.convert_to_tensor(next(feed)[known].astype("float32")[None, :])
                      if isinstance(a, keras.KerasTensor) else a for a in args]
            out[known] = ops.convert_to_numpy(op(*called, **kwargs))[0]
        return out

    return [_Value(_same_channels(walk, path, values), run([v.const for v in values]),
                   run([v.can_const for v in values]))]


# By qualified class name: operations on tensors that act entry by entry
# (their classes live in keras.src, which nothing here imports), and KerasHub's layers.
BY_NAME: dict[str, Callable[..., list[_Value]]] = {
    **{f"keras.src.ops.nn.{name}": _operation for name in (
        "Relu", "Relu6", "Sigmoid", "HardSigmoid", "Silu", "HardSilu", "Gelu", "LeakyRelu",
        "Elu", "Selu", "Celu", "Softplus", "Softsign")},
    **{f"keras.src.ops.numpy.{name}": _operation for name in (
        "Absolute", "Negative", "Square", "Sqrt", "Exp", "Tanh", "Clip", "Add", "Subtract",
        "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power")},
    # KerasHub's layers: nothing here imports KerasHub.
    "keras_hub.src.layers.modeling.transformer_encoder.TransformerEncoder": _transformer_encoder,
    "keras_hub.src.layers.modeling.cached_multi_head_attention.CachedMultiHeadAttention":
        _attention,
}

# By exact Keras class (a subclass may compute otherwise).
BY_CLASS: dict[type, Callable[..., list[_Value]]] = {
    keras.layers.EinsumDense: _einsum_dense, keras.layers.MultiHeadAttention: _attention,
}
