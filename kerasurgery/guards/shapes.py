"""The shapes of the weights Keras builds for a layer config, without Keras.

For the built-in layers whose `build` only sizes weights from the layer's
config and its input shape, `weight_shapes` gives the shapes
`build(input_shape)` creates, in the order Keras saves them: the formulas of
the Keras 3.15 layers' `build` methods. The TF-free readers use it to check a
file's stored weights against its config before trusting either: a config
that declares more than the file stores would make Keras allocate what the
file does not hold (a 700-byte file can declare a 60000 x 60000
`EinsumDense`).

The pinnable kinds are sized by their entry in the table of kinds
(`kerasurgery.kinds`). The layers listed here besides them (`WEIGHTLESS`,
the normalizations, PReLU) are not pinnable kinds: they are here only so
that the configs of hostile files can be sized before Keras builds them.
"""

from __future__ import annotations

import math
from typing import Any

from kerasurgery import kinds

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
    shapes = _sized(kind, config, _shape(input_shape))
    if shapes is None or any(d is None for s in shapes for d in s):
        return None
    return shapes


def config_shapes(kind: str, config: dict, input_shape: Any = None) -> list[kinds.Shape] | None:
    """`weight_shapes`, with `None` for the sizes that the input decides and
    `input_shape` does not give (`None`: the input shape is not known).

    Returns:
        The shapes of the weights, in saved order, with the sizes the config
        states; `None` where `weight_shapes` would give `None` for any input
        shape.
    """
    if kind in WEIGHTLESS:
        return []
    shape = _shape(input_shape)
    if shape is not None:
        return _sized(kind, config, shape)
    # Unknown input: two inputs of unknown sizes and different ranks. A size
    # both give alike comes from the config alone.
    low, high = _sized(kind, config, [None] * 2), _sized(kind, config, [None] * 6)
    if low is None or high is None or [len(s) for s in low] != [len(s) for s in high]:
        return None
    return [tuple(a if a == b else None for a, b in zip(s, t)) for s, t in zip(low, high)]


def _sized(kind: str, config: Any, shape: list | None) -> list | None:
    if shape is None or not isinstance(config, dict) or _adds_weights(config) or kind not in _SIZERS:
        return None
    try:
        return _SIZERS[kind](config, shape)
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
    if all(d is None or (kinds.is_size(d)) for d in value):
        return value
    return None


def _axis_size(shape: list, axis: Any) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool) or not -len(shape) <= axis < len(shape):
        raise ValueError(axis)
    return kinds.size(shape[axis])


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
        alpha[kinds.size(axis) - 1] = 1
    return [tuple(kinds.size(d) for d in alpha)]


# The pinnable kinds size themselves (`kinds.Kind.sizes`); the layers below
# are here only to size the configs of hostile files, not to be pinned.
_SIZERS = {
    **{name: kind.sizes for name, kind in kinds.KINDS.items()},
    "PReLU": _prelu,
    "Normalization": _normalization,
}
