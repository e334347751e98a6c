"""`freeze` and `strip`: pins changed in place, on the model or on its copy.

One mechanism serves both paths: the chosen layers are pinned (or unpinned)
in place, at any depth (`layers.pin_in_place`), as Keras' `enable_lora` and
`quantize` change layers. With `in_place=True` that happens to the model's
own layers: nothing is copied, the model's variables stay the same objects
(with their layouts) and only mask and value variables are added. Without
it, the model is first copied as its own class (`copy_model`) and the copy
is changed: the original is left untouched and shares no variable with the
result.

A copy keeps the model's class: Sequential and Functional models (nested
ones and shared layers included) are cloned with `keras.models.clone_model`;
a Functional subclass that clone would turn into a plain `Functional` (a
KerasHub backbone or task) is re-created from its own `get_config()`; a
subclassed model from its config too (`subclassed.py`). Every weight,
trainable or not, is copied, and so is the compile state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from kerasurgery import _compat  # noqa: F401  (refuses an unsupported Keras first)

import keras
import numpy as np
from keras import ops

from kerasurgery import _keras_private
from kerasurgery.model import generation
from kerasurgery.model.subclassed import copy_layer, is_subclassed, rebuild_subclassed
# `walk_layers`, `pinnable_layers`, `variable_prefix` stay importable from here too.
from kerasurgery.model.walk import pinnable_layers, sublayers, variable_prefix, walk_layers
from kerasurgery import layers as layers_lib
from kerasurgery import _plan
from kerasurgery.model import device
from kerasurgery.errors import KerasurgeryError, PinError
from kerasurgery.pins import Axes, Pin, Rule

PinSpec = Union[Pin, np.ndarray, Rule]


def freeze(
    model: keras.Model,
    pins: Mapping[str, PinSpec],
    *,
    exclude: Sequence[str] = (),
    in_place: bool = False,
) -> keras.Model:
    """Returns `model` (or a copy of it) with the selected weight entries pinned.

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
            gains the new ones. A glob's pins that do not fit a layer (n:m
            over 3 input channels) skip that layer with a
            `LayerSkippedWarning`; a key that names the layer raises.
        exclude: Layer paths, names or globs (read as keys are) to leave
            out of every key's selection.
        in_place: Pin the model's own layers and return `model` itself: no
            copy, its variables stay the same objects (a sharded model keeps
            its layouts), only mask and value variables are added. Its
            compiled train/predict functions are dropped so that the next
            call traces the pinned layers. An error (a key's pins that do
            not fit, a rule that raises) leaves the model as it was.

    Returns:
        `model` itself with `in_place`, else a new model of `model`'s class
        (a KerasHub task keeps its backbone, preprocessor, `generate()` and
        sampler) with the same structure, names, trainable flags and dtype
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
    _plan.check_pins_argument(pins)
    pinnable = pinnable_layers(model)
    normalizations = [path for path, layer in pinnable.items()
                      if layers_lib.pinned_class_for(layer).kind.normalization]
    planner = _plan.Planner(pins, lambda key: _select(model, key, pinnable), exclude=exclude,
                            normalizations=normalizations)
    frozen = model if in_place else copy_model(model)
    copies = dict(walk_layers(frozen))
    visible = _config_visible(frozen)
    pinned: list[str] = []

    def pin(path: str, plan: _plan.PinPlan) -> None:
        layer = copies[path]
        if layers_lib.is_pinned(layer):
            layers_lib.unpin_in_place(layer)  # to store its pins as the plan says
        layers_lib.pin_in_place(
            layer, layers_lib.pinned_class_for(layer), plan.storage(),
            in_config=id(layer) in visible,
        )
        # The raw weights start equal to the effective ones, so the file and
        # the variables agree until training moves raw entries under the pins.
        layer.set_pins(plan.take())
        pinned.append(path)

    # One layer planned and pinned at a time (`plan_each`). In place, every
    # layer is planned before the first is pinned, so that an error leaves
    # the model as it was; the small plans (pruning) are kept, not redone.
    _plan.plan_each(
        planner,
        lambda path: _plan_of(pinnable[path]),
        lambda path: _axes_of(pinnable[path]),
        lambda path: pinnable[path].name,
        pin,
        plan_first=in_place,
    )
    if in_place and pinned:
        _forget_traced_functions(frozen)
    generation.fold_pins_in_generate(frozen)
    return frozen


def strip(model: keras.Model, *, in_place: bool = False, keep_optimizer: bool = False) -> keras.Model:
    """Returns a copy of `model` (or `model`) with every pinned layer turned back into its Keras class.

    Each layer keeps its name and configuration and holds the effective
    weights (pinned entries at their pinned values), so the result predicts
    exactly what `model` predicts and loads with plain Keras.

    A stripped model is a deployment model: by default it is left as if it
    had never been compiled, so a saved file holds the weights and the
    architecture alone (a ResNet50 trained with Adam would otherwise carry
    two optimizer slots per weight) and loads in plain Keras with no
    warning. `compile` it again to train it. A KerasHub task compiles itself
    when it is made, so it comes back compiled with its class's defaults.

    Args:
        model: A built Keras model.
        in_place: Unpin the model's own layers and return `model` itself: its
            raw variables stay the same objects and take the effective
            weights; the mask and value variables are dropped.
        keep_optimizer: Keep the compile state: the result is compiled as
            `model` is (a copy with a fresh optimizer, `in_place` with
            `model`'s own optimizer and its slots), and a saved file carries
            the training config and the optimizer's state, ready to `fit`.

    Raises:
        KerasurgeryError: if `model` is not a built Keras model.
    """
    _require_rewritable(model, "strip")
    stripped = model if in_place else copy_model(model)
    if not keep_optimizer and getattr(stripped, "compiled", False):
        _drop_compile_state(stripped)
    unpinned = False
    for _, layer in walk_layers(stripped):
        if layers_lib.is_pinned(layer):
            layers_lib.unpin_in_place(layer)
            unpinned = True
    if in_place and unpinned:
        _forget_traced_functions(stripped)
    generation.unfold_pins_in_generate(stripped)
    return stripped


def _drop_compile_state(model: keras.Model) -> None:
    """Leaves `model` uncompiled; a KerasHub task is compiled afresh, as its constructor does.

    A task (any class that overrides `compile`) compiles itself when it is
    made, and so when it is loaded: left uncompiled, its file would hold no
    optimizer state for the optimizer it gets on load, and Keras would warn.
    Its fresh optimizer is unbuilt, so it holds no slots either.
    """
    sampler = getattr(model, "sampler", None)
    _keras_private.uncompile(model)
    if type(model).compile is not keras.Model.compile:
        model.compile()
        if sampler is not None:
            model.sampler = sampler


def copy_model(model: keras.Model) -> keras.Model:
    """A copy of `model` as its own class, sharing no variable with it.

    Its layers are pinned where `model`'s are. See the module docstring for
    how each kind of model is copied.

    Raises:
        KerasurgeryError: `model` cannot be re-created from its config.
    """
    if _keras_private.is_functional(model) and not _keras_private.clones_as_graph(model):
        copy = _copy_as_own_class(model)
    else:
        copy = _rebuild(model, _copy_state)
    _keep_layouts(model, copy)
    return copy


def _keep_layouts(old: keras.Model, new: keras.Model) -> None:
    """Lays out each variable of the copy `new` as its source in `old` is laid out.

    A copy made inside a distribution scope gets its layouts from the
    layout map already; one made outside it would hold every variable on
    one device, and training it inside the scope would fail ("Received
    incompatible devices for jitted computation"). With the source's
    layouts the copy is sharded as the source is, as an in-place freeze
    keeps it, and the pins added to it next take them too. Weights come in
    the same order in both (`_copy_state` copies them by position), and so
    do the variables of two built optimizers; what the copy holds beyond
    (its compiled metrics) is replicated on the source's mesh.
    """
    pairs = list(zip(old.weights, new.weights))
    optimizers = getattr(old, "optimizer", None), getattr(new, "optimizer", None)
    if all(o is not None and o.built for o in optimizers):
        pairs += zip(optimizers[0].variables, optimizers[1].variables)
    mesh = None
    for source, target in pairs:
        layout = _keras_private.variable_layout(source)
        if layout is None or tuple(source.shape) != tuple(target.shape):
            continue
        mesh = layout.device_mesh
        if _keras_private.variable_layout(target) is None:
            _keras_private.set_variable_layout(target, layout)
    if mesh is None:
        return
    rest = list(new.variables) + list(new.metrics_variables)
    if optimizers[1] is not None:
        rest += optimizers[1].variables
    for variable in rest:
        if _keras_private.variable_layout(variable) is None:
            replicated = keras.distribution.TensorLayout([None] * len(variable.shape), mesh)
            _keras_private.set_variable_layout(variable, replicated)


def _forget_traced_functions(model: keras.Model) -> None:
    """Drops what a model traced before its layers changed class.

    Keras caches its compiled train/test/predict functions (and KerasHub its
    `generate_function`) after the first call; they would keep computing
    with the layers as they were traced. Each is rebuilt on the next call.
    """
    for attr in ("train_function", "test_function", "predict_function", "generate_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


def _copy_as_own_class(model: keras.Model) -> keras.Model:
    """A Functional subclass (a KerasHub backbone or task) re-created from its own config.

    `clone_model` would return a plain `Functional` (no `generate()`, no
    `backbone`), and cloning layer by layer would call the `get_config()` of
    every block, which some KerasHub blocks do not implement; the model's own
    config re-creates all of them as its constructor makes them. A KerasHub
    task's preprocessor is shared, not re-created: it holds no weights, and
    its vocabulary lives in assets that its config leaves out.
    """
    config = model.get_config()
    preprocessor = getattr(model, "preprocessor", None)
    shared = isinstance(config, dict) and "preprocessor" in config and preprocessor is not None
    if shared:
        config = {**config, "preprocessor": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = type(model).from_config(config)
    except Exception as e:
        raise KerasurgeryError(
            f"Could not copy model {model.name!r} ({type(model).__name__}) from its "
            f"config: {e}. Use `in_place=True` to pin the model itself."
        ) from None
    if shared:
        new.preprocessor = preprocessor
    _copy_state(model, new)
    olds = [model] + [layer for _, layer in walk_layers(model)]
    news = [new] + [layer for _, layer in walk_layers(new)]
    for old, layer in zip(olds, news):  # parents first: a child's own flag wins
        if layer.trainable != old.trainable:
            layer.trainable = old.trainable
    _copy_compile_state(model, new)
    return new


def _copy_compile_state(old: keras.Model, new: keras.Model) -> None:
    """Compiles `new` as `old` was compiled (a fresh optimizer), custom `compile` included.

    Keras' `compile_from_config` refuses a class that overrides `compile`
    (a KerasHub task); its `compile` takes Keras' arguments, and a KerasHub
    causal LM's sampler, which its compile config leaves out, is carried too.
    """
    if not getattr(old, "compiled", False):
        return
    config = keras.saving.deserialize_keras_object(old.get_compile_config())
    new.compile(**config)
    if getattr(old, "sampler", None) is not None and hasattr(new, "sampler"):
        new.sampler = old.sampler


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
                target, type(source), source.pin_storage, in_config=source.in_config
            )
        if getattr(source, "lora_enabled", False) and not getattr(target, "lora_enabled", False):
            # LoRA enabled after the model was made (`backbone.enable_lora`).
            target.enable_lora(source.lora_rank, lora_alpha=source.lora_alpha)
    new.set_weights(_raw_weights(old))


def _kind(layer: keras.layers.Layer) -> str:
    cls = type(layer).keras_class if layers_lib.is_pinned(layer) else type(layer)
    return cls.__name__


def _raw_weights(layer: keras.layers.Layer) -> list[np.ndarray]:
    # Every variable as it is (a pinned layer's `get_weights` gives effective
    # weights, which equal the raw ones wherever the layer reads them).
    for v in layer.weights:
        layers_lib.require_one_process(v, f"Layer {layer.name!r}: `{v.name}`", "copy")
    return [ops.convert_to_numpy(v) for v in layer.weights]


def _config_visible(model: keras.Model) -> set[int]:
    """Layers that a saved config of `model` names by class (so Keras rebuilds them pinned).

    Those are the layers of Sequential/Functional models (nested ones too) and
    the layers that wrappers (`TimeDistributed`, `Bidirectional`) hold; a
    layer that a custom layer or a subclassed model creates itself is re-created
    by its parent as a plain Keras layer.
    """
    every = [model] + [layer for _, layer in walk_layers(model)]
    visible: set[int] = {id(model)}
    grown = True
    while grown:  # once, unless a layer comes first inside a custom layer and again in a model
        grown = False
        for layer in every:
            if id(layer) not in visible:
                continue
            for child in _named_by_config(layer):
                if id(child) not in visible:
                    visible.add(id(child))
                    grown = True
    visible.discard(id(model))
    return visible


def _named_by_config(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers that `layer`'s own config names (and Keras rebuilds from it)."""
    if isinstance(layer, keras.Sequential) or (
        _keras_private.is_functional(layer) and _keras_private.clones_as_graph(layer)
    ):
        return sublayers(layer)
    if isinstance(layer, keras.layers.Wrapper):
        held = [getattr(layer, a, None) for a in ("layer", "forward_layer", "backward_layer")]
        return [child for child in held if isinstance(child, keras.layers.Layer)]
    return []


def _plan_of(layer: keras.layers.Layer) -> _plan.PinPlan:
    """A layer's current effective weights and pins, as the start of its plan.

    On host copies; a layer with a weight split across processes is planned
    where its shards live instead (`device.plan_of`).
    """
    if getattr(layer, "quantization_mode", None):
        raise PinError(
            f"Layer {layer.name!r} is quantized ({layer.quantization_mode}); "
            "pins need float weights. Freeze the float model instead."
        )
    if _on_device(layer):
        return device.plan_of(layer)
    if layers_lib.is_pinned(layer):
        state = layer.pin_state()
        return _plan.PinPlan(
            {w: s.effective for w, s in state.items()}, {w: s.mask for w, s in state.items()}
        )
    # A LoRA layer's property gives its merged weight.
    pinned = layers_lib.pinned_class_for(layer)
    weights = {w: getattr(layer, w, None) for w in pinned.pinned_weights}
    weights = {w: x for w, x in weights.items() if x is not None}
    for w, x in weights.items():
        layers_lib.require_one_process(x, f"Layer {layer.name!r}: `{w}`", "pin")
    return _plan.PinPlan({w: _sliced(x) if _size(x) > _SLICE else _host(x) for w, x in weights.items()})


# Entries per slice that `_host` copies (4 MB of float32).
_SLICE = 1 << 20


def _host(x: Any) -> np.ndarray:
    """`x` (a variable or tensor) as a new numpy array, copied a slice at a time.

    `ops.convert_to_numpy` of a JAX array caches a second host copy on the
    array, which a variable keeps until it is assigned again: planning a
    model would leave a copy of every layer behind. Slices are copies that
    take their caches with them.
    """
    shape = tuple(x.shape)
    if not shape or shape[0] <= 1:
        return ops.convert_to_numpy(ops.copy(x))
    step = max(1, _SLICE // max(1, int(np.prod(shape[1:]))))
    first = ops.convert_to_numpy(x[:step])
    out = np.empty(shape, first.dtype)
    out[:step] = first
    for start in range(step, shape[0], step):
        out[start:start + step] = ops.convert_to_numpy(x[start:start + step])
    return out


def _sliced(x: Any) -> _plan.SlicedWeight:
    """A large weight left where it lives: a rule that ranks it reads it a slice at a time.

    A layer pruned by magnitude then costs the host its mask and a slice,
    not a copy of its weight (a 60 MB embedding); a rule that needs the
    whole array still gets one copy (`_host`), as before.
    """
    shape = tuple(x.shape)

    def rows(start: int, stop: int) -> np.ndarray:
        # One slice op for every piece of one size (the start is an
        # argument, not part of the op): a compiled op per size, not per piece.
        return ops.convert_to_numpy(
            ops.slice(ops.convert_to_tensor(x), (start,) + (0,) * (len(shape) - 1), (stop - start,) + shape[1:]))

    return _plan.SlicedWeight(shape, rows(0, 1).dtype, rows, lambda: _host(x))


def _size(x: Any) -> int:
    return int(np.prod(tuple(x.shape), dtype=np.int64))


def _on_device(layer: keras.layers.Layer) -> bool:
    # A module-level function, so that tests can plan every layer on device.
    return device.is_split(layer)


def _axes_of(layer: keras.layers.Layer) -> Callable[[str], Axes]:
    cls = layers_lib.pinned_class_for(layer)
    return lambda weight: cls.pin_axes(layer, weight)


def _select(model: keras.Model, key: Any, pinnable: dict[str, keras.layers.Layer]) -> list[str]:
    """The paths of the supported layers that `key` selects (`_plan.select`)."""
    supported = layers_lib.supported_class_names()
    aliases = {path: (layer.name, variable_prefix(layer)) for path, layer in pinnable.items()}
    others = {path: (layer.name, type(layer).__name__) for path, layer in walk_layers(model)}
    listing = _plan.listing(model.name, list(pinnable), supported)
    return _plan.select(key, aliases, others, supported, listing)


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
            new: keras.layers.Layer = (
                _clone(layer, replace, clones) if isinstance(layer, keras.Sequential)
                or _keras_private.clones_as_graph(layer) else _copy_as_own_class(layer)
            )
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
    layer = _keras_private.producing_layer(tensor)
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
