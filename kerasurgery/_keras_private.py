"""Every use of a private Keras name, each with why no public API does it.

kerasurgery changes layers in place (as Keras' own `enable_lora` and
`quantize` do), walks layers that custom layers hold, and builds configs
without allocating their weights: a few of those steps have no public Keras
API. Each such step is one small function here, whose docstring says why it is
needed and which Keras file it relies on (line numbers of Keras 3.15.1, the
tested release). `tests/test_keras_private.py` exercises each function against
the installed Keras and fails, naming the release, when one moves or changes.
Nothing else in kerasurgery names a private Keras attribute or `keras.src`.

Where Keras' error message is the only source of a detail (which object of a
`.keras` file failed to load, and why), the pattern that reads it is here too,
with a test that fails when Keras changes the text.

Keras is imported inside the functions, not at the top: `errors.one_line`
uses `config_start`, and `errors` is imported by the Keras-free `files/`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

# -- a built layer's state -----------------------------------------------------


@contextlib.contextmanager
def unlocked_state(layer: Any) -> Iterator[None]:
    """Lets variables be added to a built `layer` inside the block.

    Keras locks a layer's tracker when `build` ends (`Layer._lock_state`,
    keras/src/layers/layer.py:441), so `add_weight` on a built layer raises.
    Pinning in place adds the mask and value variables to a built layer, as
    Keras' own `quantize` adds its scales: the wrapper `Layer.__new__` puts
    around `quantize` unlocks `_tracker` the same way (layer.py:243-258). No
    public API unlocks it.
    """
    tracker = layer._tracker
    was_locked = tracker.locked
    tracker.unlock()
    try:
        yield
    finally:
        if was_locked:
            tracker.lock()


def variable_layout(variable: Any) -> Any:
    """The layout a variable was created with under a distribution (`None` without one).

    Keras keeps it in `Variable._layout` (keras/src/backend/common/variables.py,
    set from the `layout` argument or from the distribution's layout map
    when the variable is made); Keras' own optimizers read it there to lay
    out their slots like the weights they follow
    (`BaseOptimizer.add_variable_from_reference`,
    keras/src/optimizers/base_optimizer.py:324). No public API returns it.
    """
    return getattr(variable, "_layout", None)


def add_weight_with_layout(
    layer: Any, *, name: str, shape: tuple, dtype: str, layout: Any, initializer: str = "zeros"
) -> Any:
    """`layer.add_weight(..., trainable=False)`, the variable created with `layout`.

    `Layer.add_weight` takes no layout (keras/src/layers/layer.py:524): it
    makes a `Variable` in the layer's name scope and tracks it
    (layer.py:620-635). This does the same with the `layout` argument that
    `Variable` takes, as the optimizers do for their slots, so a pin
    variable is sharded like the weight it pins whatever the layout map
    says (its keys are matched on variable paths, and `kernel_pin_mask`
    matches no key written for `kernel`).
    """
    import keras

    with keras.name_scope(layer.name, caller=layer):
        variable = keras.Variable(
            initializer=keras.initializers.get(initializer), shape=shape, dtype=dtype,
            trainable=False, name=name, layout=layout,
        )
    layer._track_variable(variable)
    return variable


def untrack_variable(layer: Any, variable: Any) -> None:
    """Removes `variable` from `layer.weights` (and, on PyTorch, its parameters).

    `Layer._untrack_variable` (layer.py:1505) is what `del layer.attribute`
    calls for a variable (`Layer.__delattr__`, layer.py:1653), but that also
    runs `gc.collect()` each time, seconds over a large model. Unpinning
    removes two variables per weight; merging LoRA removes the adapters.
    """
    layer._untrack_variable(variable)


def keras_quantize(layer: Any) -> Callable | None:
    """The `quantize` that Keras put on this layer instance, if any.

    `Layer.__new__` replaces `quantize` on every instance with a wrapper that
    checks the arguments and unlocks the tracker around the method of the
    class the layer had when it was created (layer.py:243-260). A layer that
    changes class keeps that wrapper, which would call the old class's method;
    the pin mechanism swaps it (`set_quantize`) when a layer is pinned in
    place and puts it back when it is unpinned.
    """
    return vars(layer).get("quantize")


def set_quantize(layer: Any, method: Callable | None) -> None:
    """Puts `method` as the instance's `quantize` (`None`: the class's own)."""
    if method is None:
        vars(layer).pop("quantize", None)
    else:
        vars(layer)["quantize"] = method


def property_attribute(keras_class: type, weight: str) -> str | None:
    """The private attribute behind a weight that `keras_class` reads through a property.

    The layers that LoRA and quantization change read their weight through a
    read-only property over a private attribute: `Dense.kernel` returns
    `self._kernel` (plus the LoRA product) (keras/src/layers/core/dense.py:159),
    as do `EinsumDense.kernel` (einsum_dense.py:238), the convolutions'
    `BaseConv.kernel` (convolutional/base_conv.py:228) and
    `Embedding.embeddings` over `_embeddings` (embedding.py:170). A pinned
    layer keeps its raw variable in that attribute, where the Keras class's
    own `build`, `quantize`, LoRA and saving code expect it. `None` when the
    weight is a plain attribute.
    """
    if isinstance(getattr(keras_class, weight, None), property):
        return f"_{weight}"
    return None


# -- the layers a layer holds --------------------------------------------------


def tracked_layers(layer: Any) -> list:
    """The layers `layer` holds, in the order it made them, each once.

    A model lists its layers (`Model.layers`), but a custom layer that makes
    layers in `__init__` or `build` (a KerasHub `TransformerEncoder`) has no
    public list of them: Keras tracks every layer set as an attribute in
    `layer._layers` (`Layer._initialize_tracker`, layer.py:347-391).
    """
    return list(getattr(layer, "_layers", []))


def replace_tracked_layer(owner: Any, old: Any, new: Any) -> None:
    """Puts `new` where `old` stands in `owner`'s tracked layers, keeping their order.

    Setting an attribute appends the new layer to `owner._layers` and leaves
    the old one there: Keras' `__delattr__` does not untrack layers
    (layer.py:1653).
    """
    tracked = owner._layers
    tracked[tracked.index(old)] = new


def layer_attributes(layer: Any) -> dict[str, Any]:
    """A layer's instance attributes, its sub-layers included on every backend.

    On the PyTorch backend a Keras layer is a `torch.nn.Module`
    (keras/src/backend/torch/layer.py), whose `__setattr__` keeps sub-modules
    in `_modules`, not in the instance dict.
    """
    return {**vars(layer), **getattr(layer, "_modules", {})}


def set_untracked_attribute(owner: Any, name: str, value: Any) -> None:
    """Sets an attribute without Keras tracking `value` again (see `layer_attributes`)."""
    modules = getattr(owner, "_modules", None)
    if modules is not None and name in modules:
        modules[name] = value
    else:
        object.__setattr__(owner, name, value)


def is_functional(model: Any) -> bool:
    """Whether `model` is a Functional model (a KerasHub backbone or task included).

    `keras.Model(inputs, outputs)` returns an instance of the private class
    `Functional` (keras/src/models/functional.py:27), and so do models that
    subclass it; the public `keras.Model` is also the base of subclassed
    models, which have no graph.
    """
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def clones_as_graph(model: Any) -> bool:
    """Whether `keras.models.clone_model` gives back `model`'s own class.

    Keras re-creates a Functional model's class from the cloned graph only
    when its constructor takes `(inputs, outputs)`
    (`functional_like_constructor`, keras/src/models/functional.py, used by
    `_clone_functional_model`, keras/src/models/cloning.py:413); any other
    Functional subclass (a KerasHub backbone or task) comes back as a plain
    `Functional`. Such a model is copied from its own config instead.
    """
    from keras.src.models.functional import functional_like_constructor

    return bool(functional_like_constructor(type(model)))


def producing_layer(tensor: Any) -> Any:
    """The layer (or operation) that made a symbolic tensor: an `Input`'s `InputLayer`.

    Keras records it on each `KerasTensor` as `_keras_history.operation`
    (keras/src/ops/node.py:61); a Functional model's `inputs` have no public
    link to their input layers, whose names a cloned model must keep.
    """
    return tensor._keras_history.operation


def graph_nodes(model: Any) -> list:
    """A Functional model's nodes in the order `Functional.call` runs them, inputs left out.

    `ks.prune` feeds calibration batches through a graph node by node, so each
    layer's statistics come from inputs that already passed the layers pruned
    before it. Keras keeps the run order only as `Function._nodes_by_depth`
    (keras/src/ops/function.py:82, read by `_run_through_graph` at :188);
    the public `model.layers` lists layers, not the calls of a shared layer.
    """
    by_depth = model._nodes_by_depth
    return [
        node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]
        if node.operation is not None and not node.is_input
    ]


@contextlib.contextmanager
def intercepted_call(layer: Any, call: Callable) -> Iterator[None]:
    """Routes `layer`'s calls through `call` inside the block, on that one instance.

    `Layer.__call__` runs `self.call(...)` (keras/src/layers/layer.py:1188),
    so an instance attribute `call` takes over for that layer alone; it goes
    into the instance's `__dict__`, not through `Layer.__setattr__` (which
    tracks attributes) nor torch's `Module.__setattr__`. No public hook sees
    the inputs of a layer that a custom layer calls inside its own `call`.
    """
    layer.__dict__["call"] = call
    try:
        yield
    finally:
        layer.__dict__.pop("call", None)


# -- building configs ------------------------------------------------------------


def legacy_model_from_config(config: dict, *, safe_mode: bool) -> Any:
    """Builds a model from an `.h5` file's config, as Keras' `.h5` loader does.

    Keras loads `.h5` files with its legacy deserializer, which also reads
    Keras 2 configs (`keras/src/legacy/saving/saving_utils.py:23`
    `model_from_config`, called by `legacy_h5_format.load_model_from_hdf5`);
    `keras.saving.deserialize_keras_object` does not. Its safe mode is the
    scope that `keras.saving.load_model` opens (`SafeModeScope`,
    keras/src/saving/serialization_lib.py:74); there is no public one.
    """
    from keras.src.legacy.saving import saving_utils
    from keras.src.saving.serialization_lib import SafeModeScope

    with SafeModeScope(safe_mode):
        return saving_utils.model_from_config(config)


# Keras' list of the variables a `StatelessScope(initialize_variables=False)`
# deferred (keras/src/backend/common/variables.py:556).
_UNINITIALIZED = "uninitialized_variables"


@contextlib.contextmanager
def variables_left_uninitialized() -> Iterator[None]:
    """Variables created inside (in a `keras.StatelessScope(initialize_variables=False)`)
    are left out of Keras' list of variables waiting to be initialized.

    A deferred variable is appended to a global list
    (keras/src/backend/common/variables.py:556) that the next scope to
    initialize variables fills in; the counting build of `model/budget.py`
    only wants their shapes, and must leave nothing behind that a later scope
    would allocate. Keras' global state has no public API.
    """
    from keras.src.backend.common import global_state

    waiting = list(global_state.get_global_attribute(_UNINITIALIZED, [], set_to_default=True))
    try:
        yield
    finally:
        global_state.set_global_attribute(_UNINITIALIZED, waiting)


# -- what Keras' errors say --------------------------------------------------


def deserialization_cause(error: BaseException) -> BaseException:
    """The error a class's `from_config` raised, out of the errors Keras wraps it in.

    Keras' deserializers catch what `cls.from_config(...)` raises and raise a
    `TypeError` naming the class and quoting the whole config, inside the
    `except` block (serialization_lib.py:778-784 `deserialize_keras_object`,
    keras/src/ops/operation.py:357-362 `Operation.from_config`): the original
    error is the new one's `__context__`. Nested models nest the wrappers.
    """
    while isinstance(error, TypeError) and error.__context__ is not None and not error.__suppress_context__:
        error = error.__context__
    return error


# keras/src/saving/saving_lib.py:698 `_raise_loading_failure`, after `_load_state`
# caught each object's error from `load_own_variables`: "A total of 1 objects
# could not be loaded. Example error message for object <Dense name=out,
# built=True>:\n\n{error}\n\nList of objects that could not be loaded: [...]".
# The object's repr is `Layer.__repr__` (layer.py:1616).
_FAILED_OBJECT = re.compile(
    r"Example error message for object <(?P<cls>\w+) name=(?P<name>[^,>]+)[^>]*>:\s*"
    r"(?P<detail>.*?)(?:\s*List of objects that could not be loaded:.*)?$",
    re.DOTALL,
)


def failed_object(error: BaseException) -> tuple[str, str, str] | None:
    """(class name, layer name, its error) when `error` is Keras' report that
    a `.keras` file's weights did not load into a layer; else `None`.

    Keras catches the error each object raises while loading its variables
    and raises one `ValueError` quoting the first one (saving_lib.py:698);
    the errors are not chained, so the text is the only place that says
    which layer failed and why (a shape that does not fit, or a pinned
    layer's own refusal).
    """
    match = _FAILED_OBJECT.search(str(error))
    if match is None:
        return None
    return match["cls"], match["name"].strip(), " ".join(match["detail"].split())


# keras/src/backend/common/variables.py:283-292 `Variable.assign`: "The shape of
# the target variable and the shape of the target value in
# `variable.assign(value)` must match. variable.shape=(3, 2), Received:
# value.shape=(3, 3). Target variable: ..."; PyTorch prints the value's shape
# as `torch.Size([3, 3])`.
_ASSIGNED_SHAPES = re.compile(
    r"variable\.shape=(?P<expected>\([^)]*\)), Received: value\.shape="
    r"(?:(?P<stored>\([^)]*\))|torch\.Size\(\[(?P<torch>[^\]]*)\]\))"
)


def assigned_shapes(text: str) -> tuple[str, str] | None:
    """(the variable's shape, the stored value's shape) when `text` is Keras
    refusing to assign a value of another shape to a variable; else `None`.

    A plain layer's `load_own_variables` assigns the stored arrays in order;
    only this message, quoted by `failed_object`, says which shape the file
    gave it.
    """
    match = _ASSIGNED_SHAPES.search(text)
    if match is None:
        return None
    stored = match["stored"]
    if stored is None:
        stored = str(tuple(int(n) for n in match["torch"].split(",") if n.strip()))
    return match["expected"], stored


def is_safe_mode_refusal(error: BaseException) -> bool:
    """Whether `error` is Keras refusing, in safe mode, to deserialize code.

    kerasurgery finds Lambda layers and Python lambdas in a config before
    loading (`files.formats.code_layers`); what else carries code (a
    `TorchModuleWrapper`'s pickled module, keras/src/utils/torch_utils.py:180)
    only Keras refuses, and each of its refusals tells the user how to opt
    out by naming `safe_mode` (serialization_lib.py:682, lambda_layer.py:173).
    """
    return "safe_mode" in str(error)


# Keras appends whole configs to some errors: "Full object config: {...}"
# (serialization_lib.py:766, 811, 896, 904), "Full config: {...}" (696, 728,
# 743), "config={...}" (572, 783, operation.py:361, legacy saving_utils.py:41,
# 61, 221).
_CONFIG_TAIL = re.compile(r"Full object config|Full config:|config=\{")


def config_start(text: str) -> int | None:
    """Where the config that Keras appended to an error message starts, if it did."""
    match = _CONFIG_TAIL.search(text)
    return None if match is None else match.start()


# -- the calls of a model's graph ------------------------------------------------


def graph_calls(model: Any) -> list[tuple[Any, list, list]]:
    """(operation, input tensors, output tensors) of every call in a Functional
    or Sequential model's graph, producers before their consumers.

    A layer records each call as a `Node` in `layer._inbound_nodes`
    (keras/src/ops/node.py:67), and a Functional model keeps the nodes of its
    own graph by depth in `_nodes_by_depth` (keras/src/ops/function.py:82;
    a built Sequential model holds such a Functional model in `_functional`,
    keras/src/models/sequential.py:235). The public `layer.input` and
    `layer.output` give only a layer's first call, which may belong to
    another model, and say nothing of a layer called twice; the dependency
    groups of `model/groups.py` need every call of this graph. The node's
    `input_tensors` and `outputs` are public attributes of the private class.
    """
    import keras

    graph = model._functional if isinstance(model, keras.Sequential) else model
    if graph is None:
        return []
    return [(node.operation, list(node.input_tensors), list(node.outputs)) for node in graph_nodes(graph)]


def call_arguments(model: Any) -> list[tuple[tuple, dict]]:
    """The positional and keyword arguments of each call of `graph_calls(model)`, in its order.

    A node keeps them as `node.arguments.args` / `.kwargs`
    (`SymbolicArguments`, keras/src/ops/symbolic_arguments.py): tensors and
    the constants they were called with (the `3.0` of `x + 3.0`), which
    `input_tensors` leaves out.
    """
    import keras

    graph = model._functional if isinstance(model, keras.Sequential) else model
    if graph is None:
        return []
    return [(tuple(node.arguments.args), dict(node.arguments.kwargs)) for node in graph_nodes(graph)]


def attention_projections(layer: Any) -> dict[str, Any]:
    """A `MultiHeadAttention`'s query, key, value and output `EinsumDense` layers.

    Keras keeps them as `_query_dense`, `_key_dense`, `_value_dense` and
    `_output_dense` (keras/src/layers/attention/multi_head_attention.py,
    `build`); KerasHub's `CachedMultiHeadAttention` inherits them. The
    dependency groups of `model/groups.py` read a head's entries there.
    """
    return {name: getattr(layer, f"_{name}_dense") for name in ("query", "key", "value", "output")}


def encoder_parts(layer: Any) -> dict[str, Any]:
    """A KerasHub `TransformerEncoder`'s attention and feed-forward layers.

    `_self_attention_layer` (a `MultiHeadAttention`),
    `_feedforward_intermediate_dense` and `_feedforward_output_dense` (`Dense`)
    are set in `build` (keras_hub/src/layers/modeling/transformer_encoder.py);
    `call` runs the intermediate dense straight into the output dense.
    """
    return {
        "attention": layer._self_attention_layer,
        "intermediate": layer._feedforward_intermediate_dense,
        "output": layer._feedforward_output_dense,
    }
