"""What a model config declares, counted before Keras builds it.

Keras builds and initializes every layer a config declares before it reads a
single stored weight, so a small file can declare gigabytes. These checks
count the declared weights from the config alone (Keras-free; shapes from
`kerasurgery.guards.shapes`) and refuse a config that declares far more than
the file stores, and a Sequential model too deep to load in bounded time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kerasurgery import kinds
from kerasurgery.errors import ModelFileError
from kerasurgery.guards import shapes as _shapes
from kerasurgery.guards.limits import DECLARED_SLACK, FREE_ENTRIES, MAX_JSON_CONTAINERS, MAX_JSON_DEPTH, MAX_SEQUENTIAL_LAYERS
from kerasurgery.kinds import MODEL_CLASSES, MODEL_MODULES
from kerasurgery.pins import SHARED, saved_storage


def json_dicts(tree: Any, budget: int = MAX_JSON_CONTAINERS) -> Iterator[dict]:
    """Every dict of a parsed JSON tree, depth first, visiting at most `budget`
    objects and lists. A dict is yielded before its values are visited: the
    caller may change them."""
    stack = [tree]
    while stack and budget > 0:
        budget -= 1
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            yield node
            stack.extend(node.values())


def check_sequential_depth(path: Path, config: Any) -> None:
    """Refuses a Sequential model of more than `MAX_SEQUENTIAL_LAYERS` layers."""
    for node in json_dicts(config):
        layers = _listed_layers(node)
        if node.get("class_name") == "Sequential" and layers is not None and (
                len(layers) > MAX_SEQUENTIAL_LAYERS):
            raise ModelFileError(
                f"{path}: a Sequential model of {len(layers):,} layers, more than the "
                f"{MAX_SEQUENTIAL_LAYERS} kerasurgery loads (Keras' time to load one grows "
                "with the square of its layers); save it as a Functional model."
            )


def check_declared_weights(path: Path, config: Any, stored: int, declared: int | None = None) -> None:
    """Refuses a config that declares far more weight entries than the file stores.

    Keras builds and initializes every layer a config declares before it
    reads a single stored weight: a 680-byte file declaring a 25000 x 25000
    `Dense` would make it allocate 2.5 GB. The declared entries are a lower
    bound, counted for the kinds whose sizes the config states (Dense, the
    convolutions, Embedding), unless `declared` gives the exact count (from
    `kerasurgery.model.budget`, which builds the model without allocating it).

    Raises:
        ModelFileError: the declared entries exceed `DECLARED_SLACK` times
            `stored` plus `FREE_ENTRIES`.
    """
    if declared is None:
        declared = declared_weight_entries(config)
    if declared > DECLARED_SLACK * stored + FREE_ENTRIES:
        raise ModelFileError(
            f"{path}: the model config declares weights of {declared:,} entries, but the "
            f"file stores {stored:,}: refused before building the model (its layers "
            "would take memory the file does not hold)."
        )


def declared_weight_entries(config: Any) -> int:
    """A lower bound of the weight entries Keras creates when it builds `config`."""
    total = 0
    for node in json_dicts(config):
        layers = _listed_layers(node)
        if layers is not None:
            total += _entries_of_model(layers, sequential=node.get("class_name") == "Sequential")
    return total


def exact_weight_entries(config: Any) -> int | None:
    """The weight entries Keras creates when it builds `config` (and the
    constants it makes from it, `_shapes.constant_entries`), where the config
    alone states every one: Sequential and Functional models (nested
    ones too) of built-in layers, plain or pinned, that `_shapes` sizes, each
    with the input shape it was built on. `None` for any other config (the
    Keras path then counts by building, `_budget`)."""
    total, stack = 0, [(config, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH or not isinstance(node, dict) or (
            node.get("class_name") not in MODEL_CLASSES or node.get("module") not in MODEL_MODULES
            or node.get("registered_name") not in (None, node.get("class_name"))
        ):
            return None
        inner = node.get("config")
        layers = inner.get("layers") if isinstance(inner, dict) else None
        if not isinstance(layers, list):
            return None
        for layer in layers:
            if isinstance(layer, dict) and layer.get("class_name") in MODEL_CLASSES:
                stack.append((layer, depth + 1))
                continue
            entries = _exact_layer_entries(layer)
            if entries is None:
                return None
            total += entries
    return total


def _exact_layer_entries(layer: Any) -> int | None:
    if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
        return None
    cls, config = layer.get("class_name"), layer["config"]
    pinned = kinds.pinned_kind(layer)
    storage = None
    if layer.get("module") == "keras.layers" and layer.get("registered_name") is None:
        kind = cls
    elif pinned is not None:
        kind, storage = pinned.name, saved_storage(config, pinned.present(config))
        if storage is None:
            return None
    else:
        return None
    if kind in _shapes.WEIGHTLESS:
        return 0
    build = layer.get("build_config")
    input_shape = build.get("input_shape") if isinstance(build, dict) else None
    shapes = _shapes.weight_shapes(kind, config, input_shape)
    if shapes is None:
        return None
    entries = _shapes.entries(shapes) + _shapes.constant_entries(kind, config, input_shape)
    if pinned is not None:  # each pinned weight adds its mask, and one value or one per entry
        for name, shape in zip(pinned.present(config), shapes):
            size = math.prod(shape)
            entries += size + (1 if storage[name] == SHARED else size)
    return entries


def _listed_layers(node: dict) -> list | None:
    inner = node.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
        return inner["layers"]
    if node.get("class_name") == "Sequential" and isinstance(inner, list):
        return inner  # Keras < 2.2.3
    return None


def _entries_of_model(layers: list, *, sequential: bool) -> int:
    """Entries of the known kinds among a model's layers; input sizes come from
    each layer's `build_config`, the shape of the tensor it is called on, or
    the layer that feeds it (in Sequential order, or by a Functional graph)."""
    out_dims: dict[str, int] = {}
    previous: int | None = None
    total = 0
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
            previous = None
            continue
        config = layer["config"]
        kind = _kind(layer.get("class_name"))
        fed = [previous if sequential else None, *_fed_by(layer, out_dims)]
        entries, out = _layer_entries(kind, config, layer.get("build_config"), fed)
        total += entries
        name = config.get("name", layer.get("name"))
        if isinstance(name, str) and out is not None:
            out_dims[name] = out
        previous = out
    return total


def _kind(class_name: Any) -> str:
    """The Keras class a serialized layer's `class_name` names (that of its
    pinned class for a pinned one; `"kerasurgery>MaskedDense"` gives `Dense`)."""
    if not isinstance(class_name, str):
        return ""
    name = class_name.rpartition(">")[2]
    return kinds.kind_of(name) or name


def _fed_by(layer: dict, out_dims: dict[str, int]) -> list[int | None]:
    """Input sizes named by a layer's inbound nodes (Keras 3 tensor shapes,
    or the layers they come from, Keras 2 and 3)."""
    found: list[int | None] = []
    stack: list[Any] = [layer.get("inbound_nodes")]
    budget = 1000
    while stack and budget > 0:
        budget -= 1
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__" and isinstance(node.get("config"), dict):
                tensor = node["config"]
                found.append(_last(tensor.get("shape")))
                history = tensor.get("keras_history")
                if isinstance(history, list) and history and isinstance(history[0], str):
                    found.append(out_dims.get(history[0]))
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            if node and isinstance(node[0], str):  # Keras 2: [layer name, node, tensor, kwargs]
                found.append(out_dims.get(node[0]))
            else:
                stack.extend(node)
    return found


def _last(shape: Any, axis: int = -1) -> int | None:
    if isinstance(shape, list) and len(shape) >= 2:
        value = shape[axis]
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _layer_entries(kind: str, config: dict, build: Any, fed: list[int | None]) -> tuple[int, int | None]:
    """(weight entries, size of the last output axis) of one layer config; 0 and
    `None` where unknown. Sizes come from `_shapes`, on the input shape the
    layer was built on or, without one, on the largest input size known."""
    if kind == "InputLayer":
        shape = config.get("batch_shape", config.get("batch_input_shape"))
        return 0, _last(shape)
    first = config.get("data_format") == "channels_first"
    shape = build.get("input_shape") if isinstance(build, dict) else None
    shapes = _shapes.weight_shapes(kind, config, shape)
    table = kinds.KINDS.get(kind)
    if shapes is None and not first:
        known = [d for d in (_last(shape), *fed) if d]
        rank = table.rank if table is not None else 0
        guessed = [None, *[1] * rank, max(known, default=1)]
        shapes = _shapes.weight_shapes(kind, config, guessed)
    constants = _shapes.constant_entries(kind, config, shape)
    if not shapes:
        return constants, None
    out = table.output_size(shapes) if table is not None else None
    return _shapes.entries(shapes) + constants, None if first else out
