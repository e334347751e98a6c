"""Which stored weights Keras loads into which layer: the order and the names it uses.

Keras does not find a layer's weights by the layer's name. A `.keras` file
keeps them at a path made from the model's layers *in order*
(`keras/src/saving/saving_lib.py`: `layers/dense`, `layers/dense_1`, ...: the
snake-case class name, numbered per class in `model.layers` order). An `.h5`
file pairs the layers that have weights, in `model.layers` order, with the
groups listed in `attrs["layer_names"]` that have weights, in that order,
and within a group the variables of `trainable_weights + non_trainable_weights`
with the datasets of `attrs["weight_names"]`, by position
(`keras/src/legacy/saving/legacy_h5_format.py`). So a reader that wants the
weights Keras loads must know `model.layers` as Keras rebuilds it from the
config:

- `load_order`: a Sequential model's layers are its config's, in order; a
  Functional model's are the operations of its graph, sorted as
  `keras/src/ops/function.py`'s `map_graph` sorts them (by depth from the
  outputs, then by the order a depth-first walk from the outputs meets them),
  without the operations that are not layers;
- `container_keys`: the group names of a `layers` container;
- `legacy_variables`: the variables of a layer in `.h5` order, where the
  layer's kind says what they are.

Everything here reads the parsed config only (no Keras, no h5py).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from kerasurgery import kinds
from kerasurgery.guards.shapes import WEIGHTLESS

MODELS = ("Sequential", "Functional", "Model")
# Built-in layers whose variables are known by name, besides the pinnable kinds
# and the weightless ones: (trainable, non-trainable), each in creation order.
class OrderError(ValueError):
    """The config does not say in which order Keras would load its layers."""


def snake_case(name: str) -> str:
    """`keras.src.utils.naming.to_snake_case`, which names a layer's group."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def group_class(class_name: str) -> str:
    """The Python class Keras makes from a config's `class_name` (a saved
    `"Model"` is rebuilt as `Functional`; `"pkg>Name"` is `Name`)."""
    name = class_name.rpartition(">")[2]
    return "Functional" if name == "Model" else name


def container_keys(class_names: Iterable[str]) -> list[str]:
    """The group names Keras gives the objects of a list, in order: the snake
    case of each class, numbered per class (`dense`, `dense_1`, `conv2d`)."""
    counters: dict[str, int] = {}
    keys = []
    for class_name in class_names:
        key = snake_case(group_class(class_name))
        if key in counters:
            counters[key] += 1
            key = f"{key}_{counters[key]}"
        else:
            counters[key] = 0
        keys.append(key)
    return keys


def entry_name(entry: Any) -> str | None:
    """A layer entry's name: `entry["name"]`, else `entry["config"]["name"]`."""
    if not isinstance(entry, dict):
        return None
    name = entry.get("name")
    if name is None and isinstance(entry.get("config"), dict):
        name = entry["config"].get("name")
    return name if isinstance(name, str) and name else None


def is_operation(entry: dict) -> bool:
    """Whether a Functional config entry is an operation (`keras.ops.add(...)`), not a layer."""
    module = entry.get("module")
    if isinstance(module, str) and module.startswith(("keras.src.ops.", "keras.ops.")):
        return True
    # Legacy `.h5` configs drop `module`; every layer but InputLayer serializes
    # `trainable`, an operation never does (nor do models of Keras < 2.5).
    config = entry.get("config")
    class_name = str(entry.get("class_name", "")).rpartition(">")[2]
    return (
        class_name != "InputLayer"
        and isinstance(config, dict)
        and "trainable" not in config
        and "layers" not in config
    )


def load_order(model: dict, layers: list) -> list[int]:
    """The positions in `layers` (the model config's layer entries) of the
    layers of `model.layers`, in the order Keras gives them when it rebuilds
    the model from its config.

    Raises:
        OrderError: the graph of a Functional config cannot be followed (a
            missing layer or node, a cycle, a name used twice).
    """
    class_name = group_class(str(model.get("class_name")))
    if class_name == "Sequential" or not isinstance(model.get("config"), dict):
        return [i for i, entry in enumerate(layers)
                if str(entry.get("class_name", "")).rpartition(">")[2] != "InputLayer"]
    return _Graph(model["config"], layers).order()


class _Graph:
    """A Functional config's graph, walked as `map_graph` walks the rebuilt one."""

    def __init__(self, config: dict, layers: list) -> None:
        self.index: dict[str, int] = {}
        self.nodes: dict[str, list[list[tuple[str, int]]]] = {}
        self.functional: set[str] = set()
        for i, entry in enumerate(layers):
            name = entry_name(entry)
            if name is None or name in self.index:
                raise OrderError(f"the layer name {name!r} is missing or used twice")
            self.index[name] = i
            class_name = str(entry.get("class_name", "")).rpartition(">")[2]
            if group_class(class_name) == "Functional":
                self.functional.add(name)
            inbound = entry.get("inbound_nodes")
            if class_name == "InputLayer":
                self.nodes[name] = [[]]  # made with its node; it has no inputs
            elif isinstance(inbound, list):
                self.nodes[name] = [list(_node_inputs(node)) for node in inbound]
            else:
                raise OrderError(f"layer {name!r} has no `inbound_nodes`")
        self.layers = layers
        self.inputs = [self._ref(r, model_end=True) for r in _end_refs(config.get("input_layers"))]
        self.outputs = [self._ref(r, model_end=True) for r in _end_refs(config.get("output_layers"))]
        if not self.outputs:
            raise OrderError("the model config names no outputs")

    def _ref(self, ref: tuple[str, int], *, model_end: bool = False) -> tuple[str, int]:
        name, index = ref
        nodes = self.nodes.get(name)
        if nodes is None:
            raise OrderError(f"the graph names a layer {name!r} it does not define")
        if model_end and name in self.functional:
            index -= 1  # `functional_from_config`'s `get_tensor` does the same
        if not -len(nodes) <= index < len(nodes):
            raise OrderError(f"the graph names node {ref[1]} of layer {name!r}, which has "
                             f"{len(nodes)}")
        return name, index % len(nodes)

    def parents(self, node: tuple[str, int]) -> list[tuple[str, int]]:
        return [self._ref(r) for r in self.nodes[node[0]][node[1]]]

    def order(self) -> list[int]:
        visited, indices = self._walk()
        depths: dict[tuple[str, int], int] = {}
        op_depths: dict[str, int] = {}
        in_graph = set(visited)
        for node in reversed(visited):
            depth = max(depths.setdefault(node, 0), op_depths.get(node[0], 0))
            op_depths[node[0]] = depths[node] = depth
            for parent in self.parents(node):
                if parent in in_graph:
                    depths[parent] = max(depth + 1, depths.get(parent, 0))
        for name, index in self.inputs:  # inputs the outputs do not depend on
            if name not in op_depths and not self.nodes[name][index]:
                op_depths[name] = 0
                indices[name] = -1
        by_depth: dict[int, list[str]] = defaultdict(list)
        for name, depth in op_depths.items():
            by_depth[depth].append(name)
        ordered = []
        for depth in sorted(by_depth, reverse=True):
            ordered += sorted(by_depth[depth], key=lambda name: indices[name])
        return [self.index[name] for name in ordered
                if not is_operation(self.layers[self.index[name]])]

    def _walk(self) -> tuple[list[tuple[str, int]], dict[str, int]]:
        """`_build_map`: the nodes from the inputs to the outputs, depth first
        from each output in turn, and each operation's first traversal index."""
        finished: set[tuple[str, int]] = set()
        in_progress: set[tuple[str, int]] = set()
        visited: list[tuple[str, int]] = []
        indices: dict[str, int] = {}
        for output in self.outputs:
            if output in finished:
                continue
            indices.setdefault(output[0], len(indices))
            in_progress.add(output)
            stack: list[tuple[tuple[str, int], Iterator]] = [(output, iter(self.parents(output)))]
            while stack:
                node, parents = stack[-1]
                parent = next(parents, None)
                if parent is None:
                    stack.pop()
                    in_progress.discard(node)
                    finished.add(node)
                    visited.append(node)
                    continue
                if parent in finished:
                    continue
                if parent in in_progress:
                    raise OrderError(f"the graph of layer {parent[0]!r} is a cycle")
                indices.setdefault(parent[0], len(indices))
                in_progress.add(parent)
                stack.append((parent, iter(self.parents(parent))))
        return visited, indices


def _end_refs(value: Any) -> list[tuple[str, int]]:
    """The `[name, node, tensor]` triples of `input_layers` / `output_layers`, flattened."""
    found: list[tuple[str, int]] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list) and len(item) == 3 and isinstance(item[0], str):
            found.append(_triple(item))
        elif isinstance(item, dict):
            stack.extend(item[k] for k in sorted(item, reverse=True))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
    return found


def _triple(item: list) -> tuple[str, int]:
    if not isinstance(item[1], int) or isinstance(item[1], bool):
        raise OrderError(f"a node reference is malformed: {item!r}"[:200])
    return item[0], item[1]


def _node_inputs(node: Any) -> Iterator[tuple[str, int]]:
    """The tensors a node is called on, in the order `tree.flatten((args, kwargs))` lists them."""
    if isinstance(node, list):  # Keras 2: [[layer, node, tensor, kwargs], ...]
        for item in node:
            if not isinstance(item, list) or len(item) not in (3, 4) or not isinstance(item[0], str):
                raise OrderError(f"a node is malformed: {item!r}"[:200])
            yield _triple(item[:3])
        return
    if not isinstance(node, dict):
        raise OrderError(f"a node is malformed: {node!r}"[:200])
    yield from _tensors(node.get("args"))
    yield from _tensors(node.get("kwargs"))


def _tensors(value: Any) -> Iterator[tuple[str, int]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            class_name = item.get("class_name")
            config = item.get("config")
            if class_name == "__keras_tensor__" and isinstance(config, dict):
                history = config.get("keras_history")
                if isinstance(history, list) and len(history) == 3 and isinstance(history[0], str):
                    yield _triple(history)
                # a tensor without history (an input of no layer) has no parent
            elif class_name == "__tuple__" and isinstance(config, dict):
                stack.append(config.get("value"))
            elif "class_name" in item and "config" in item:
                continue  # a serialized object (an array, a dtype): no tensor
            else:
                stack.extend(item[k] for k in sorted(item, reverse=True))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def legacy_variables(entry: dict, *, trainable: bool = True) -> list[tuple[tuple[str, ...], str]] | None:
    """A layer's variables in the order Keras' `.h5` format stores and loads
    them (`trainable_weights + non_trainable_weights`): `(path below the
    layer, variable name)` each, `()` for the layer's own; `None` where the
    layer's kind does not say (a custom layer, an unknown class, a model of
    one).

    Args:
        entry: The layer's config entry (`{"class_name", "config", ...}`).
        trainable: Whether the layer's parent model is trainable.
    """
    split = _split(entry, (), trainable)
    return None if split is None else split[0] + split[1]


def _split(entry: Any, path: tuple[str, ...], trainable: bool) -> tuple[list, list] | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        return None
    config = entry["config"]
    class_name = group_class(str(entry.get("class_name")))
    trainable = trainable and config.get("trainable", True) is not False
    if class_name in ("Sequential", "Functional"):
        layers = config.get("layers")
        if not isinstance(layers, list):
            return None
        try:
            positions = load_order(entry, layers)
        except OrderError:
            return None
        own: list = []
        other: list = []
        for i in positions:
            name = entry_name(layers[i])
            split = _split(layers[i], (*path, name), trainable) if name is not None else None
            if split is None:
                return None
            if trainable:
                own += split[0]
                other += split[1]
            else:  # `weights`: layer by layer, each in creation order
                other += split[0] + split[1]
        return own, other
    names = _variables(class_name, config)
    if names is None:
        return None
    own = [(path, n) for n in names[0]]
    other = [(path, n) for n in names[1]]
    return (own, other) if trainable else ([], own + other)


def _variables(class_name: str, config: dict) -> tuple[list[str], list[str]] | None:
    """(trainable, non-trainable) variable names of a built-in layer, in creation order."""
    if class_name in WEIGHTLESS:
        return [], []
    kind = kinds.find(class_name)
    if kind is not None:
        if any(config.get(key) for key in ("lora_rank", "quantization_config", *kind.refused)):
            return None
        present, state = kind.present(config), list(kind.state)
        if kinds.is_pinned_class(class_name):
            return present, state + [f"{w}_pin_{p}" for w in present for p in ("mask", "value")]
        return present, state
    return None
