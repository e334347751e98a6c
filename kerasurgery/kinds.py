"""The table of layer kinds: every Keras class kerasurgery pins, described once.

One `Kind` per supported Keras class says what the rest of the package needs
to know about it, and nothing else says it again:

- `weights`: its weights in the order Keras saves them (`"0"`, `"1"`, ... in a
  `.keras` file); the first is its main weight (the one `Pin.kernel` and the
  rules call "kernel"), `"bias"` is its bias, present when `has_bias(config)`;
- `axes`: which axes of each weight but the bias are its inputs and its
  outputs (units), as the rules select them (`Axes`);
- `sizes`: the shapes of its weights that `build(input_shape)` creates from
  its config (the formulas of the Keras 3.15 `build` methods), so a file can
  be checked against its config without Keras;
- `pinned`: its pinned class's name (`"Masked" + name`), registered as
  `"kerasurgery>Masked..."` and saved under the module `PINNED_MODULE`;
- `state`: weights saved after the pinnable ones that are never pinned
  (`BatchNormalization`'s moving statistics: not trainable, updated by the
  layer itself).

The pinned classes (`kerasurgery.layers`), the weight layout of files, the
sizing of configs, the TF-free rewrite, inspection and rendering all read
this table. Adding a kind is one entry in `KINDS` and its tests
(`tests/test_kinds.py` checks every entry against Keras itself).

This module imports the standard library only.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# What files carry about pinned layers and the models that hold them.
PACKAGE = "kerasurgery"  # the registered package: "kerasurgery>MaskedDense"
PINNED_PREFIX = "Masked"
# The module written into files for every pinned class, whichever file
# defines it (as Keras writes `keras.layers`, not `keras.src...`).
PINNED_MODULE = "kerasurgery.layers"
# Modules a pinned layer of a file may name: kerasurgery 0.1.0 and today
# write `kerasurgery.layers`; the development versions between them wrote
# the module that defined the classes.
PINNED_MODULES = (PINNED_MODULE, "kerasurgery.layers._classes")
# The model classes whose configs list their layers, and the modules Keras 3
# saves them under.
MODEL_CLASSES = ("Functional", "Sequential")
MODEL_MODULES = ("keras", "keras.models", "keras.src.models.functional", "keras.src.models.sequential")

BIAS = "bias"

# A weight's shape; `None` for a size the input decides where it is not known.
Shape = tuple[int | None, ...]


@dataclasses.dataclass(frozen=True)
class Axes:
    """Which axes of a weight are its inputs and its outputs (units / filters).

    `units` axes are flattened in C order to number the output units, which is
    also how the bias numbers them when `bias_follows_units`.
    """

    inputs: tuple[int, ...]
    units: tuple[int, ...]
    bias_follows_units: bool = True
    # False for a table looked up by row (Embedding): its inputs are rows, not
    # a contracted axis, so n:m sparsity does not apply.
    contracted: bool = True


def _use_bias(config: Mapping[str, Any]) -> bool:
    return config.get("use_bias", True) is not False


@dataclasses.dataclass(frozen=True, eq=False)
class Kind:
    """One supported Keras layer class (see the module docstring).

    Attributes:
        name: The Keras class (`keras.layers.<name>`).
        weights: Its weights in the order Keras saves them; the first is the
            main weight, `"bias"` the bias.
        sizes: `sizes(config, input_shape)`: the shapes `build(input_shape)`
            creates, in saved order, for a config that has a bias only when
            `has_bias(config)`. Raises `KeyError`, `IndexError`, `TypeError`,
            `ValueError` or `ZeroDivisionError` for a config it cannot size.
            Input sizes that are `None` give `None` sizes.
        axes: The input and unit axes of each weight but the bias.
        config_axes: For a kind whose axes its config decides (`EinsumDense`):
            `config_axes(config)` gives the axes of its main weight; `axes`
            is then empty.
        has_bias: Whether a layer of this config has its bias.
        rank: The spatial rank of a convolution's kernel window, else 0.
        grid: For weights drawn as a grid of (all axes but the last) × (the
            last axis): what its rows and columns are, where that says more
            than "inputs × units".
        note: What the pinned class's docstring adds for this kind.
        optional: Weights (not the bias) that a layer has only when
            `optional[weight](config)` holds.
        aliases: Other classes of this kind, as `"module:Name"`, pinned with
            the same pinned class (a module not imported yet is not looked at).
        state: Weights saved after `weights` that are never pinned (moving
            statistics); the pinned class saves and loads them as the Keras
            class does.
        normalization: A normalization's scale and offset: pinned with their
            channel (`prune_units`), never ranked by magnitude as a kernel
            (`GradualPruning`'s unstructured schedule leaves them out).
        refused: Attributes under which a layer of this kind is not pinnable
            (`BatchNormalization(renorm=True)` makes weights the table does not
            describe).
    """

    name: str
    weights: tuple[str, ...]
    sizes: Callable[[Mapping[str, Any], Sequence[int | None]], list[Shape]]
    axes: Mapping[str, Axes] = dataclasses.field(default_factory=dict)
    config_axes: Callable[[Mapping[str, Any]], Axes] | None = None
    has_bias: Callable[[Mapping[str, Any]], bool] = _use_bias
    rank: int = 0
    grid: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    note: str = ""
    # Weights other than the bias that only some configs create, each with
    # the test of its config (ReversibleEmbedding's `reverse_embeddings`).
    optional: Mapping[str, Callable[[Mapping[str, Any]], bool]] = dataclasses.field(
        default_factory=dict)
    # Other public classes of this kind ("module:Name"): exact subclasses of
    # the Keras class that add nothing (KerasHub re-exports Keras layers).
    aliases: tuple[str, ...] = ()
    state: tuple[str, ...] = ()
    normalization: bool = False
    refused: tuple[str, ...] = ()

    @property
    def pinned(self) -> str:
        """The pinned class's name: `MaskedDense`."""
        return PINNED_PREFIX + self.name

    @property
    def registered_name(self) -> str:
        """The name Keras registers the pinned class under: `kerasurgery>MaskedDense`."""
        return f"{PACKAGE}>{self.pinned}"

    @property
    def main(self) -> str:
        """The main weight: the one `Pin.kernel` pins (`kernel`, `embeddings`, ...)."""
        return self.weights[0]

    @property
    def kernels(self) -> tuple[str, ...]:
        """Every weight but the bias: those the rules see as a kernel."""
        return tuple(w for w in self.weights if w != BIAS)

    def present(self, config: Mapping[str, Any]) -> list[str]:
        """The weights a layer of this config has, in saved order."""
        bias = BIAS in self.weights and self.has_bias(config)
        return [
            w for w in self.weights
            if (w != BIAS or bias) and (w not in self.optional or self.optional[w](config))
        ]

    @property
    def saved_weights(self) -> tuple[str, ...]:
        """Every weight a layer of this kind may save, in saved order."""
        return self.weights + self.state

    def saved(self, config: Mapping[str, Any]) -> list[str]:
        """The weights a layer of this config saves, in saved order (`present` and `state`)."""
        return self.present(config) + list(self.state)

    def axes_of(self, weight: str, config: Mapping[str, Any] | None = None) -> Axes:
        """The input and unit axes of `weight` (a kernel) of a layer with `config`."""
        if self.config_axes is not None:
            return self.config_axes(config or {})
        return self.axes[weight]

    def output_size(self, shapes: Sequence[Shape]) -> int | None:
        """The size of a layer's last output axis (its units / filters), from
        its weight shapes in saved order; `None` where its config decides
        the axes (`EinsumDense`) or a size is unknown."""
        if self.config_axes is not None:
            return None
        for weight, shape in zip(self.kernels, shapes):
            units = self.axes[weight].units
            if units:
                sizes = [shape[axis] for axis in units]
                return None if None in sizes else math.prod(sizes)
        return None


# --- sizing: the formulas of the Keras 3.15 layers' `build` methods -------------


def is_size(value: Any) -> bool:
    """A size a config may state: a non-negative int (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def size(value: Any) -> int:
    """A size the config states: a non-negative int; else `ValueError`."""
    if not is_size(value):
        raise ValueError(value)
    return value


def _dim(value: Any) -> int | None:
    """A size the input gives: `None` where unknown."""
    return None if value is None else size(value)


def _times(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a * b


def _dense(config: Mapping, shape: Sequence) -> list[Shape]:
    units = size(config["units"])
    return [(_dim(shape[-1]), units), *([(units,)] if _use_bias(config) else [])]


def _embedding(config: Mapping, shape: Sequence) -> list[Shape]:
    return [(size(config["input_dim"]), size(config["output_dim"]))]


def _untied(config: Mapping) -> bool:
    return config.get("tie_weights", True) is False


def _reversible_embedding(config: Mapping, shape: Sequence) -> list[Shape]:
    rows, features = size(config["input_dim"]), size(config["output_dim"])
    return [(rows, features), *([(features, rows)] if _untied(config) else [])]


def _channels(config: Mapping, shape: Sequence) -> int | None:
    return _dim(shape[1 if config.get("data_format") == "channels_first" else -1])


def _window(config: Mapping, rank: int) -> tuple[int, ...]:
    window = config["kernel_size"]
    window = [window] * rank if is_size(window) else window
    if not isinstance(window, list) or len(window) != rank:
        raise ValueError(window)
    return tuple(size(n) for n in window)


def _conv(rank: int, transpose: bool = False) -> Callable:
    def sizes(config: Mapping, shape: Sequence) -> list[Shape]:
        filters, channels = size(config["filters"]), _channels(config, shape)
        groups = 1 if transpose else size(config.get("groups", 1))
        if groups == 0 or (channels is not None and channels % groups):
            raise ValueError(groups)
        pair = (filters, channels) if transpose else (
            None if channels is None else channels // groups, filters)
        return [_window(config, rank) + pair, *([(filters,)] if _use_bias(config) else [])]
    return sizes


def _depthwise(rank: int) -> Callable:
    def sizes(config: Mapping, shape: Sequence) -> list[Shape]:
        channels, multiplier = _channels(config, shape), size(config.get("depth_multiplier", 1))
        bias = [(_times(channels, multiplier),)] if _use_bias(config) else []
        return [_window(config, rank) + (channels, multiplier), *bias]
    return sizes


def _separable(rank: int) -> Callable:
    def sizes(config: Mapping, shape: Sequence) -> list[Shape]:
        channels, multiplier = _channels(config, shape), size(config.get("depth_multiplier", 1))
        filters = size(config["filters"])
        return [_window(config, rank) + (channels, multiplier),
                (1,) * rank + (_times(channels, multiplier), filters),
                *([(filters,)] if _use_bias(config) else [])]
    return sizes


def _axis_size(shape: Sequence, axis: Any) -> int | None:
    if not isinstance(axis, int) or isinstance(axis, bool) or not -len(shape) <= axis < len(shape):
        raise ValueError(axis)
    return _dim(shape[axis])


def _flag(config: Mapping, key: str) -> bool:
    return config.get(key, True) is not False


def _batch_normalization(config: Mapping, shape: Sequence) -> list[Shape]:
    if config.get("renorm") or config.get("synchronized"):
        raise ValueError("renorm")  # more weights, or another layer on some backends
    channels = (_axis_size(shape, config.get("axis", -1)),)
    return [channels] * (_flag(config, "scale") + _flag(config, "center") + 2)


def _normalized_axes(config: Mapping) -> list:
    axis = config.get("axis", -1)
    return sorted(axis) if isinstance(axis, list) else [axis]


def _layer_normalization(config: Mapping, shape: Sequence) -> list[Shape]:
    channels = tuple(_axis_size(shape, a) for a in _normalized_axes(config))
    return [channels] * (_ln_gamma(config) + _ln_beta(config))


def _ln_gamma(config: Mapping) -> bool:
    return _flag(config, "scale") or bool(config.get("rms_scaling"))


def _ln_beta(config: Mapping) -> bool:
    return _flag(config, "center") and not config.get("rms_scaling")


def _ln_axes(config: Mapping[str, Any]) -> Axes:
    """Every axis of gamma and beta is a normalized axis of the input: units."""
    return Axes(inputs=(), units=tuple(range(len(_normalized_axes(config)))), contracted=False)


def _group_normalization(config: Mapping, shape: Sequence) -> list[Shape]:
    channels = (_axis_size(shape, config.get("axis", -1)),)
    return [channels] * (_flag(config, "scale") + _flag(config, "center"))


def _einsum_dense(config: Mapping, shape: Sequence) -> list[Shape]:
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
    kernel_shape = tuple(_dim(outputs[c] if c in outputs else inputs[c]) for c in kernel)
    bias_axes = config.get("bias_axes")
    if bias_axes is None:
        return [kernel_shape]
    first = min(target.index(c) for c in bias_axes)
    bias = [_dim(outputs[c]) if c in bias_axes else 1 for c in target[first:]]
    return [kernel_shape, tuple(bias + ([] if left else [1] * max(elided, 0)))]


def _einsum_axes(config: Mapping[str, Any]) -> Axes:
    """The kernel axes the equation shares with the input (inputs) and with
    the output (units)."""
    operands, output = str(config.get("equation", "")).replace(" ", "").split("->")
    source, kernel = operands.split(",")
    units = tuple(i for i, c in enumerate(kernel) if c in output)
    bias_axes = config.get("bias_axes") or ""
    bias_labels = [c for c in output if c in bias_axes]
    return Axes(
        inputs=tuple(i for i, c in enumerate(kernel) if c in source and c not in output),
        units=units,
        bias_follows_units=bias_labels == [kernel[i] for i in units],
    )


# --- the table -------------------------------------------------------------------

_KERNEL_BIAS = ("kernel", BIAS)
# Convolution kernels are (*window, inputs, filters); transposed ones
# (*window, filters, inputs); depthwise ones (*window, inputs, multiplier),
# whose outputs are numbered input * multiplier + m, as the bias numbers them.
_CONV = {"kernel": Axes(inputs=(-2,), units=(-1,))}
_CONV_TRANSPOSE = {"kernel": Axes(inputs=(-1,), units=(-2,))}
_DEPTHWISE = {"kernel": Axes(inputs=(-2,), units=(-2, -1))}
# A separable convolution's inputs are its depthwise kernel's channels, its
# units its pointwise kernel's filters; the other kernel has no such axis.
_SEPARABLE = {"depthwise_kernel": Axes(inputs=(-2,), units=()),
              "pointwise_kernel": Axes(inputs=(), units=(-1,))}
_CONV_GRID = {"kernel": ("kernel positions × input channels", "filters")}
_CONV_TRANSPOSE_GRID = {"kernel": ("kernel positions × filters", "input channels")}
_DEPTHWISE_GRID = {"kernel": ("kernel positions × input channels", "depth multiplier")}
_SEPARABLE_GRID = {"depthwise_kernel": ("kernel positions × input channels", "depth multiplier"),
                   "pointwise_kernel": ("input channels × depth multiplier", "filters")}


# A normalization's scale (gamma) and offset (beta) are one entry per
# channel: the channel is their unit, and they read no input axis.
_SCALE_OFFSET = ("gamma", "beta")
_PER_CHANNEL = {w: Axes(inputs=(), units=(0,), contracted=False) for w in _SCALE_OFFSET}
_SCALE_OFFSET_OPTIONAL = {"gamma": lambda config: _flag(config, "scale"),
                          "beta": lambda config: _flag(config, "center")}
_NORMALIZATION_NOTE = (
    "Its scale (`gamma`) and offset (`beta`) can be pinned per channel (both present only "
    "with `scale` and `center`); a channel whose gamma and beta are pinned at 0.0 outputs "
    "exactly 0.0 in training and inference.")


def _conv_kind(name: str, rank: int) -> Kind:
    return Kind(name, _KERNEL_BIAS, _conv(rank), _CONV, rank=rank, grid=_CONV_GRID)


def _conv_transpose_kind(name: str, rank: int) -> Kind:
    return Kind(name, _KERNEL_BIAS, _conv(rank, transpose=True), _CONV_TRANSPOSE, rank=rank,
                grid=_CONV_TRANSPOSE_GRID)


def _depthwise_kind(name: str, rank: int) -> Kind:
    return Kind(name, _KERNEL_BIAS, _depthwise(rank), _DEPTHWISE, rank=rank, grid=_DEPTHWISE_GRID)


def _separable_kind(name: str, rank: int) -> Kind:
    return Kind(name, ("depthwise_kernel", "pointwise_kernel", BIAS), _separable(rank), _SEPARABLE,
                rank=rank, grid=_SEPARABLE_GRID,
                note="Its depthwise kernel, pointwise kernel and bias can all be pinned.")


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("Dense", _KERNEL_BIAS, _dense, {"kernel": Axes(inputs=(0,), units=(1,))}),
    Kind("EinsumDense", _KERNEL_BIAS, _einsum_dense, config_axes=_einsum_axes,
         has_bias=lambda config: bool(config.get("bias_axes")),
         note="Its inputs and units are the kernel axes that the equation shares with "
              "the input and with the output."),
    Kind("Embedding", ("embeddings",), _embedding,
         {"embeddings": Axes(inputs=(0,), units=(1,), contracted=False)},
         grid={"embeddings": ("token ids", "features")},
         note="Its inputs are the rows (token ids: `rules.inputs` keeps a pretrained "
              "vocabulary fixed while new tokens learn), its units the features."),
    _conv_kind("Conv1D", 1), _conv_kind("Conv2D", 2), _conv_kind("Conv3D", 3),
    _conv_transpose_kind("Conv1DTranspose", 1), _conv_transpose_kind("Conv2DTranspose", 2),
    _conv_transpose_kind("Conv3DTranspose", 3),
    _depthwise_kind("DepthwiseConv1D", 1), _depthwise_kind("DepthwiseConv2D", 2),
    _separable_kind("SeparableConv1D", 1), _separable_kind("SeparableConv2D", 2),
    # The tied input/output embedding of KerasHub's language models (GPT-2,
    # Gemma, Llama): tied, the logits projection reads the table itself, so a
    # pinned token row is pinned for both; untied, its `reverse_embeddings`
    # (features x tokens) has the tokens on its columns.
    Kind("ReversibleEmbedding", ("embeddings", "reverse_embeddings"), _reversible_embedding,
         {"embeddings": Axes(inputs=(0,), units=(1,), contracted=False),
          "reverse_embeddings": Axes(inputs=(1,), units=(0,), contracted=False)},
         grid={"embeddings": ("token ids", "features"),
               "reverse_embeddings": ("features", "token ids")},
         optional={"reverse_embeddings": _untied},
         aliases=("keras_hub.layers:ReversibleEmbedding",),
         note="Its inputs are the token ids: the rows of `embeddings` and the columns of "
              "`reverse_embeddings` (present when `tie_weights=False`). With tied weights "
              "the logits projection reads `embeddings` too, so a pinned token row is pinned "
              "for the lookup and the projection alike."),
    # Issue 20: the normalizations, so that a pruned channel stays exactly zero
    # through them. Moving statistics are state, never pinned.
    Kind("BatchNormalization", _SCALE_OFFSET, _batch_normalization, _PER_CHANNEL,
         optional=_SCALE_OFFSET_OPTIONAL, state=("moving_mean", "moving_variance"),
         normalization=True, refused=("renorm",),
         note=_NORMALIZATION_NOTE + " The moving mean and variance are not pinned; "
              "`renorm=True` layers are not pinnable."),
    Kind("LayerNormalization", _SCALE_OFFSET, _layer_normalization, config_axes=_ln_axes,
         optional={"gamma": _ln_gamma, "beta": _ln_beta}, normalization=True,
         note=_NORMALIZATION_NOTE + " Its units are the normalized axes' entries."),
    Kind("GroupNormalization", _SCALE_OFFSET, _group_normalization, _PER_CHANNEL,
         optional=_SCALE_OFFSET_OPTIONAL, normalization=True, note=_NORMALIZATION_NOTE),
)}
"""Every supported Keras class, by name, in the order messages list them."""


def find(class_name: str) -> Kind | None:
    """The kind of a Keras class or of its pinned class (`Dense`, `MaskedDense`), else `None`."""
    kind = KINDS.get(class_name)
    if kind is None and class_name.startswith(PINNED_PREFIX):
        kind = KINDS.get(class_name[len(PINNED_PREFIX):])
    return kind


def kind_of(class_name: str) -> str | None:
    """The supported Keras class of `class_name` (`"Dense"` for `"MaskedDense"`), else `None`."""
    kind = find(class_name)
    return None if kind is None else kind.name


def is_pinned_class(class_name: str) -> bool:
    """Whether `class_name` names a pinned class (`MaskedDense`, `MaskedConv2D`, ...)."""
    kind = find(class_name)
    return kind is not None and class_name == kind.pinned


def pinned_kind(entry: Mapping[str, Any]) -> Kind | None:
    """The kind of a layer's serialized config (`{"module", "class_name", "registered_name",
    "config"}`) when it names a pinned class as kerasurgery saves one, else `None`."""
    cls = entry.get("class_name")
    if not isinstance(cls, str) or not is_pinned_class(cls):
        return None
    kind = find(cls)
    if entry.get("module") not in PINNED_MODULES or entry.get("registered_name") != kind.registered_name:
        return None
    return kind


def saved_orders() -> list[tuple[str, ...]]:
    """The distinct saved weight orders of the kinds, in table order."""
    return list(dict.fromkeys(kind.saved_weights for kind in KINDS.values()))


def kernel_names() -> tuple[str, ...]:
    """Every weight name but the bias that some kind has (`kernel`, `embeddings`, ...)."""
    return tuple(dict.fromkeys(w for kind in KINDS.values() for w in kind.kernels))


def pinned_class_names() -> list[str]:
    """The pinned classes' names (`MaskedDense`, ...), in table order."""
    return [kind.pinned for kind in KINDS.values()]
