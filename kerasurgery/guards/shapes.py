"""The shapes of the weights Keras builds for a layer config, without Keras.

For the built-in layers whose `build` only sizes weights from the layer's
config and its input shape (the pinnable kinds, the normalizations, PReLU),
`weight_shapes` gives the shapes `build(input_shape)` creates, in the order
Keras saves them: the formulas of the Keras 3.15 layers' `build` methods.
The TF-free readers use it to check a file's stored weights against its
config before trusting either: a config that declares more than the file
stores would make Keras allocate what the file does not hold (a 700-byte
file can declare a 60000 x 60000 `EinsumDense`).
"""

from __future__ import annotations

import math
import re
from typing import Any

Shape = tuple[int, ...]

# Built-in layers that create no weights, whatever their config.
WEIGHTLESS = frozenset({
    "InputLayer", "Activation", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Flatten",
    "Reshape", "Permute", "RepeatVector", "Cropping1D", "Cropping2D", "Cropping3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "UpSampling1D", "UpSampling2D",
    "UpSampling3D", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "GlobalMaxPooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "UnitNormalization", "Add", "Subtract", "Multiply", "Average",
    "Maximum", "Minimum", "Concatenate", "Dot", "ReLU", "LeakyReLU", "ELU", "Softmax",
    "Identity", "Masking", "ActivityRegularization", "Rescaling",
})


_PLAIN_POLICIES = ("DTypePolicy", "FloatDTypePolicy")


def weight_shapes(kind: str, config: dict, input_shape: Any) -> list[Shape] | None:
    """The shapes of the weights a `kind` layer with `config` builds on `input_shape`.

    Args:
        kind: The layer's Keras class name (`Dense`, `BatchNormalization`, ...).
        config: Its `config` dict, as a `.keras` file stores it.
        input_shape: The shape it is built on (`build_config["input_shape"]`),
            `None` for the batch axis.

    Returns:
        The shapes, in the order Keras saves the layer's variables; `None` for
        a kind sized here by no formula, or an input shape or config that
        does not give every size.
    """
    if kind in WEIGHTLESS:
        return []
    shape = _shape(input_shape)
    if shape is None or not isinstance(config, dict) or _adds_weights(config):
        return None
    try:
        return _SIZERS[kind](config, shape) if kind in _SIZERS else None
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None


def _adds_weights(config: dict) -> bool:
    """Whether LoRA or quantization give the layer weights other than its own."""
    if config.get("lora_rank") or config.get("quantization_config") is not None:
        return True
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        name = (dtype.get("config") or {}).get("name") if isinstance(dtype.get("config"), dict) else None
        return dtype.get("class_name") not in _PLAIN_POLICIES or "_from_" in str(name)
    return "_from_" in str(dtype)


def entries(shapes: list[Shape]) -> int:
    return sum(math.prod(s) for s in shapes)


def _shape(value: Any) -> list[int | None] | None:
    if not isinstance(value, list) or not value or len(value) > 16:
        return None
    if all(d is None or (_is_size(d)) for d in value):
        return value
    return None


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _size(value: Any) -> int:
    if not _is_size(value):
        raise ValueError(value)
    return value


def _bias(config: dict) -> bool:
    return config.get("use_bias", True) is not False


def _dense(config: dict, shape: list) -> list[Shape]:
    units = _size(config["units"])
    return [(_size(shape[-1]), units), *([(units,)] if _bias(config) else [])]


def _embedding(config: dict, shape: list) -> list[Shape]:
    return [(_size(config["input_dim"]), _size(config["output_dim"]))]


def _channels(config: dict, shape: list) -> int:
    return _size(shape[1 if config.get("data_format") == "channels_first" else -1])


def _window(config: dict, rank: int) -> Shape:
    size = config["kernel_size"]
    size = [size] * rank if _is_size(size) else size
    if not isinstance(size, list) or len(size) != rank:
        raise ValueError(size)
    return tuple(_size(n) for n in size)


def _conv(rank: int, transpose: bool = False):
    def sizes(config: dict, shape: list) -> list[Shape]:
        filters, channels = _size(config["filters"]), _channels(config, shape)
        groups = 1 if transpose else _size(config.get("groups", 1))
        if groups == 0 or channels % groups:
            raise ValueError(groups)
        pair = (filters, channels) if transpose else (channels // groups, filters)
        return [_window(config, rank) + pair, *([(filters,)] if _bias(config) else [])]
    return sizes


def _depthwise(rank: int):
    def sizes(config: dict, shape: list) -> list[Shape]:
        channels, multiplier = _channels(config, shape), _size(config.get("depth_multiplier", 1))
        bias = [(channels * multiplier,)] if _bias(config) else []
        return [_window(config, rank) + (channels, multiplier), *bias]
    return sizes


def _separable(rank: int):
    def sizes(config: dict, shape: list) -> list[Shape]:
        channels, multiplier = _channels(config, shape), _size(config.get("depth_multiplier", 1))
        filters = _size(config["filters"])
        return [_window(config, rank) + (channels, multiplier),
                (1,) * rank + (channels * multiplier, filters),
                *([(filters,)] if _bias(config) else [])]
    return sizes


def _axis_size(shape: list, axis: Any) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool) or not -len(shape) <= axis < len(shape):
        raise ValueError(axis)
    return _size(shape[axis])


def _batch_normalization(config: dict, shape: list) -> list[Shape]:
    if config.get("renorm") or config.get("synchronized"):
        raise ValueError("renorm")
    size = (_axis_size(shape, config.get("axis", -1)),)
    flags = [config.get("scale", True) is not False, config.get("center", True) is not False, True, True]
    return [size] * sum(flags)


def _layer_normalization(config: dict, shape: list) -> list[Shape]:
    axis = config.get("axis", -1)
    axes = sorted(axis) if isinstance(axis, list) else [axis]
    size = tuple(_axis_size(shape, a) for a in axes)
    rms = bool(config.get("rms_scaling"))
    gamma = config.get("scale", True) is not False or rms
    beta = config.get("center", True) is not False and not rms
    return [size] * (gamma + beta)


def _group_normalization(config: dict, shape: list) -> list[Shape]:
    size = (_axis_size(shape, config.get("axis", -1)),)
    flags = [config.get("scale", True) is not False, config.get("center", True) is not False]
    return [size] * sum(flags)


def _normalization(config: dict, shape: list) -> list[Shape]:
    if config.get("mean") is not None:
        return []  # the given mean and variance are constants, not variables
    size = _kept(config, shape)
    return [size, size, ()]  # mean, variance, count


def _kept(config: dict, shape: list) -> Shape:
    """The sizes of the axes a `Normalization` keeps."""
    axis = config.get("axis", [-1])
    axes = axis if isinstance(axis, list) else [axis]
    keep = sorted(a + len(shape) if isinstance(a, int) and a < 0 else a for a in axes)
    return tuple(_axis_size(shape, a) for a in keep)


def constant_entries(kind: str, config: dict, input_shape: Any) -> int:
    """Entries of the tensors other than variables that `build` makes from the
    config: a `Normalization` given its mean and variance broadcasts both to
    the sizes of the axes it keeps. 0 where none, or where unknown."""
    shape = _shape(input_shape)
    if kind != "Normalization" or shape is None or not isinstance(config, dict) or (
            config.get("mean") is None):
        return 0
    try:
        return 2 * math.prod(_kept(config, shape))
    except (TypeError, ValueError):
        return 0


def _prelu(config: dict, shape: list) -> list[Shape]:
    alpha = list(shape[1:])
    for axis in config.get("shared_axes") or ():
        alpha[_size(axis) - 1] = 1
    return [tuple(_size(d) for d in alpha)]


def _einsum_dense(config: dict, shape: list) -> list[Shape]:
    """`EinsumDense`'s kernel and bias, as `_analyze_split_string` in
    keras/src/layers/core/einsum_dense.py sizes them: a kernel label takes
    its size from the output when the output has it, else from the input."""
    equation = re.sub(r"\.\.\.", "0", str(config["equation"]))
    for pattern, left in ((r"([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)$", False),
                          (r"0([a-zA-Z]+),([a-zA-Z]+)->0([a-zA-Z]+)$", True),
                          (r"([a-zA-Z]{2,})0,([a-zA-Z]+)->([a-zA-Z]+)0$", False)):
        match = re.match(pattern, equation)
        if match:
            break
    else:
        raise ValueError(equation)
    source, kernel, target = match.groups()
    partial = config["output_shape"]
    output = [shape[0], *([partial] if not isinstance(partial, list) else partial)]
    elided = len(shape) - len(source)
    if elided > 0 and left:
        output[1:1] = reversed(shape[1:elided])
    elif elided > 0:
        output.extend(shape[len(shape) - elided:])
    skip = elided if left else 0
    inputs = {c: shape[i + skip - (len(shape) if left else 0)] for i, c in enumerate(source)}
    outputs = {c: output[i + skip] for i, c in enumerate(target)}
    kernel_shape = tuple(_size(outputs[c] if c in outputs else inputs[c]) for c in kernel)
    bias_axes = config.get("bias_axes")
    if bias_axes is None:
        return [kernel_shape]
    first = min(target.index(c) for c in bias_axes)
    bias = [_size(outputs[c]) if c in bias_axes else 1 for c in target[first:]]
    return [kernel_shape, tuple(bias + ([] if left else [1] * max(elided, 0)))]


_SIZERS = {
    "Dense": _dense,
    "EinsumDense": _einsum_dense,
    "Embedding": _embedding,
    "Conv1D": _conv(1), "Conv2D": _conv(2), "Conv3D": _conv(3),
    "Conv1DTranspose": _conv(1, True), "Conv2DTranspose": _conv(2, True),
    "Conv3DTranspose": _conv(3, True),
    "DepthwiseConv1D": _depthwise(1), "DepthwiseConv2D": _depthwise(2),
    "SeparableConv1D": _separable(1), "SeparableConv2D": _separable(2),
    "BatchNormalization": _batch_normalization,
    "LayerNormalization": _layer_normalization,
    "GroupNormalization": _group_normalization,
    "PReLU": _prelu,
    "Normalization": _normalization,
}
