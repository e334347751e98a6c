"""Where a saved model file keeps each layer's variables, at any depth.

`layer_entries` walks a file opened by `formats.open_model_file` and pairs
every layer, at every depth, with the HDF5 datasets of its variables, without
reading them; `inspection` checks and reads them. `pin_record.open_record` opens the
pins that a `.keras` archive keeps beside its weights
(`kerasurgery.files.pin_record`).

The pinnable kinds and the order in which Keras stores their weights are the
table of kinds' (`kerasurgery.kinds`): `Dense`, `EinsumDense`, the
convolutions and the depthwise convolutions `("kernel", "bias")`; the
separable convolutions `("depthwise_kernel", "pointwise_kernel", "bias")`;
`Embedding` `("embeddings",)`. The bias is absent when the layer has none. A
pinned class is named `"Masked" + <Keras class>`.

Where the weights live:

- `.keras` (a zip): `config.json`, `metadata.json`, `model.weights.h5`. Every
  saveable object Keras visits has a group; its variables sit in the group's
  `vars` subgroup, whose `name` attribute (recent Keras) holds the layer's
  name. A model's layers sit in its `layers` container, named after their
  class (`dense`, `dense_1`, ...); a layer's own sublayers sit under the
  attribute that holds them (`_self_attention_layer/query_dense`), and lists
  of them in containers named after the attribute. A plain layer stores its
  weights as `0`, `1`, ... in the order above. A pinned layer that the config
  names stores named datasets: for each weight `w`, `w` (the effective
  weight), `w_pin_mask` (bool, the weight's shape) and `w_pin_value` (shape
  `()`: one value shared by every pinned entry, or the weight's shape: one per
  entry). A pinned layer that its parent creates in `build()` (the config does
  not name it) stores the plain layout, and its pins sit in the archive member
  `kerasurgery.pins.h5`: root attributes `format="kerasurgery-pins"`,
  `version=1`; group `layers` with one subgroup per pinned layer (attributes
  `path`, `class_name`, `weights`; datasets `w_pin_mask`, `w_pin_value`).
- `.h5`: `model_config` attribute, and `model_weights/<top-level layer>/` with a
  `weight_names` attribute listing variable paths (`dense/kernel` in Keras 3,
  `dense/kernel:0` in Keras 2). A top-level layer's group holds its own
  variables and those of every layer inside it, told apart by the scope in
  their names (`transformer_layer_0/self_attention_layer/query/kernel`). A
  pinned layer's datasets here are raw: the effective weight is computed from
  the pins (`w_pin_mask`, `w_pin_value`), at any depth.

A layer's path (`Entry.path`) is its name prefixed by the names of the layers
and models that hold it, joined by "/": `dense`, `inner/dense`,
`bert_backbone/transformer_layer_0/self_attention_layer/query`. In a `.keras`
file that is the chain of the `vars` names of the layer's group and its
ancestors. Layers that only the weights file knows (not named by the config)
get the class their parent's config names for them, or the pinned class of
the pin record, or the pinnable kind their container key names (`dense_1`
in a list); otherwise `UNKNOWN` ("?").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from typing import Any

import h5py

from kerasurgery import kinds
from kerasurgery.files import formats
from kerasurgery.guards.limits import MAX_LAYER_DEPTH
from kerasurgery.errors import ModelFileError, one_line
from kerasurgery.files.formats import KERAS, PIN_RECORD_MEMBER as PIN_RECORD, WEIGHTS_MEMBER, h5_text, read_h5_list
from kerasurgery.files.hdf5 import dataset as _dataset, group as _group, index_key as _index_key
from kerasurgery.files.hdf5 import refuse_outside_data as _refuse_outside_data
from kerasurgery.files.pin_record import RecordLayer

DENSE = "Dense"
MASKED = kinds.KINDS[DENSE].pinned
UNKNOWN = "?"  # the class of a layer that only the weights file knows
BIAS = kinds.BIAS

# Where an entry was found: named by the model config, or only in the weights.
CONFIG = "config"
WEIGHTS = "weights"

_PIN_SUFFIXES = ("_pin_mask", "_pin_value")
# Children of a model's group that hold no layers.
_NOT_LAYERS = frozenset({"vars", "optimizer"})


def weight_order(class_name: str, names: Iterable[str] = ()) -> tuple[str, ...]:
    """The weights of `class_name` in the order Keras stores them.

    For a class of no pinnable kind, the pinnable order that holds every one
    of `names` (the named weights of an `.h5` layer), else `()`.
    """
    kind = kinds.find(class_name)
    if kind is not None:
        return kind.weights
    names = set(names)
    for order in kinds.saved_orders():
        if names and names <= set(order):
            return order
    return ()


def is_pin_dataset(name: str) -> bool:
    return name.endswith(_PIN_SUFFIXES)


@dataclasses.dataclass
class Entry:
    """A layer and the datasets of its variables, by variable name.

    `variables` holds a layer's weights under their names (`kernel`, `bias`,
    ...) where its kind is known, else under the keys the file uses (`0`,
    `1`, ... in a `.keras` file), and its pin datasets (`kernel_pin_mask`,
    `kernel_pin_value`, ...) wherever the file keeps them (the pin record
    included).
    """

    name: str
    class_name: str  # without a registered package: "MaskedDense"; UNKNOWN if not known
    layer_config: dict  # {"class_name", "config", "build_config", ...}; {} if not known
    variables: dict[str, h5py.Dataset | None]  # None: two variables claim the name
    path: str  # the name; "model/.../name" inside other layers
    source: str = CONFIG  # CONFIG: named by the model config; WEIGHTS: only in the weights
    pins_from_record: bool = False  # its pins are in `kerasurgery.pins.h5`

    @property
    def weights(self) -> list[str]:
        """The names of the layer's weights (no pin datasets), in Keras' order."""
        names = [key for key in self.variables if not is_pin_dataset(key)]
        order = weight_order(self.class_name, names)
        known = [name for name in order if name in self.variables]
        rest = sorted((n for n in names if n not in known), key=_index_key)
        return known + rest

    @property
    def has_pins(self) -> bool:
        return any(key.endswith("_pin_mask") for key in self.variables)


def layer_entries(
    opened: formats.ModelFile, *, record: dict[str, RecordLayer] | None = None
) -> list[Entry]:
    """Every layer of an open model file, at every depth, with its datasets.

    A layer comes before the layers inside it: the layers its config names
    (nested models), then those only its weights show. `record` is the
    archive's pin record (`pin_record.open_record`), whose pins join the datasets of
    the layers it names.

    Raises:
        ModelFileError: the config is not a model's, the weights are not
            where the format keeps them, a dataset keeps its data outside the
            file, or the pin record names a layer the weights do not hold.
    """
    return _Walk(opened, record or {}).entries


class _Walk:
    """Walks a model config alongside the file's weight groups."""

    def __init__(self, opened: formats.ModelFile, record: dict[str, RecordLayer]) -> None:
        self.path = opened.path
        self.entries: list[Entry] = []
        self.record = dict(record)
        self._seen: set[Any] = set()
        if opened.format == KERAS:
            self._keras(opened)
        else:
            self._h5(opened)
        if self.record:
            layer = next(iter(self.record))
            raise self.error(
                f"{PIN_RECORD} pins layer {layer!r}, which {WEIGHTS_MEMBER} does not hold."
            )

    def error(self, message: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {message}")

    def checked(self, dataset: h5py.Dataset, where: str) -> h5py.Dataset:
        _refuse_outside_data(dataset, lambda m: self.error(f"{where}: {m}"))
        return dataset

    # .keras archives

    def _keras(self, opened: formats.ModelFile) -> None:
        if opened.weights is None:
            if "model.weights.npz" in opened.members:
                raise self.error("stores its weights as `.npz`, which is not supported.")
            raise self.error(f"is a `.keras` archive without `{WEIGHTS_MEMBER}`.")
        children = _model_layers(opened.config, self)
        if _layer_list(opened.config) is None:
            children = None  # a subclassed model: its layers are in the weights only
        self._children(opened.weights, opened.config, children, "", 0)

    def _children(self, group: h5py.Group | None, layer_config: dict,
                  config_children: list | None, prefix: str, depth: int) -> None:
        """The layers inside a layer (or the model): those its config names, then the rest."""
        if depth > MAX_LAYER_DEPTH:
            raise self.error(f"nests layers more than {MAX_LAYER_DEPTH} deep.")
        container = None
        if config_children is not None:
            container = _container(group)
            for layer_config_, name, class_name, child in self._match(config_children, container):
                self._layer(child, name, class_name, layer_config_, prefix + name, CONFIG, depth)
        if group is None:
            return
        hints = None
        for key, child, listed in self._saveables(group, container, depth):
            name = _vars_name(child) or key
            if hints is None:
                hints = _layer_configs_in(layer_config)
            class_name, child_config = _infer(key, listed, name, layer_config, hints)
            self._layer(child, name, class_name, child_config, prefix + name, WEIGHTS, depth)

    def _match(self, layers: list[tuple], container: h5py.Group | None) -> Iterator[tuple]:
        """`(layer_config, name, class_name, group)` for the layers a model config names."""
        counters: dict[str, int] = {}
        by_name: dict[str | None, h5py.Group] | None = None
        for layer_config, name, class_name in layers:
            # Keras names a layer's group after its class, numbered per class.
            key = _snake_case(class_name)
            counters[key] = counters.get(key, -1) + 1
            key = key if counters[key] == 0 else f"{key}_{counters[key]}"
            group = _group(container, key)
            if group is not None and _vars_name(group) not in (None, name):
                group = None
            if group is None and container is not None:
                # Config order and saved order can differ (e.g. ops in a
                # Functional graph); recent Keras records each layer's name.
                if by_name is None:
                    by_name = {_vars_name(g): g for g in _subgroups(container)}
                group = by_name.get(name)
            yield layer_config, name, class_name, group

    def _saveables(self, group: h5py.Group, skip: h5py.Group | None,
                   depth: int, listed: bool = False) -> Iterator[tuple[str, h5py.Group, bool]]:
        """`(key, group, listed)` of the saveable objects under a layer's group.

        A group with a `vars` subgroup is an object Keras saved; one without
        is a container (a list or dict attribute), whose members are named
        after their class (`listed`).
        """
        if depth > MAX_LAYER_DEPTH:
            raise self.error(f"nests layers more than {MAX_LAYER_DEPTH} deep.")
        for key in group:
            if key in _NOT_LAYERS:
                continue
            child = _group(group, key)
            if child is None or child.id in self._seen or (skip is not None and child == skip):
                continue
            if _group(child, "vars") is not None:
                yield key, child, listed
            else:
                self._seen.add(child.id)
                yield from self._saveables(child, None, depth + 1, listed=True)

    def _layer(self, group: h5py.Group | None, name: str, class_name: str, layer_config: dict,
               path: str, source: str, depth: int) -> None:
        if group is not None:
            self._seen.add(group.id)
        record = self.record.pop(path, None)
        if record is not None:
            class_name = record.class_name
        variables = self._keras_variables(class_name, layer_config, _group(group, "vars"),
                                          path, record, source)
        self.entries.append(Entry(name, class_name, layer_config, variables, path, source,
                                  record is not None))
        children = _model_layers(layer_config, self, nested=True)
        self._children(group, layer_config, children, f"{path}/", depth + 1)

    def _keras_variables(self, class_name: str, layer_config: dict, vars_group: h5py.Group | None,
                         path: str, record: RecordLayer | None, source: str) -> dict:
        """A `.keras` layer's datasets, keyed by weight name where its kind is known."""
        where = f"layer {path!r}"
        stored = {}
        if vars_group is not None:
            for key in vars_group:
                dataset = _dataset(vars_group, key)
                if dataset is not None:
                    stored[key] = self.checked(dataset, where)
        if any(key.endswith("_pin_mask") for key in stored) or (
            kinds.is_pinned_class(class_name) and record is None
        ):
            if record is not None:
                raise self.error(f"{where} keeps pins both in its weights and in {PIN_RECORD}.")
            return stored  # named: effective weights, masks and values
        if record is not None:
            expected = [str(i) for i in range(len(record.weights))]
            if sorted(stored, key=_index_key) != expected:
                raise self.error(
                    f"{PIN_RECORD} pins the weights {list(record.weights)} of {where}, but "
                    f"{WEIGHTS_MEMBER} stores {sorted(stored, key=_index_key)} for it."
                )
            variables: dict = {w: stored[str(i)] for i, w in enumerate(record.weights)}
            variables.update(record.datasets)
            return variables
        kind = kinds.find(class_name)
        if kind is not None:
            names = present_weights(kind, layer_config)
            if names is None:  # no config: as many as are stored
                count = next(i for i in range(len(stored) + 1) if str(i) not in stored)
                names = list(kind.weights[:count])
            return {n: stored[str(i)] for i, n in enumerate(names) if str(i) in stored}
        if source == WEIGHTS:
            return stored  # not a pinnable kind: by the keys the file uses
        config = layer_config.get("config")
        if isinstance(config, dict) and "kernel_initializer" in config and "0" in stored:
            # Other layers with a kernel (LSTM cells, ...) create it first.
            return {"kernel": stored["0"]}
        return {}

    # .h5 files

    def _h5(self, opened: formats.ModelFile) -> None:
        root = _group(opened.weights, "model_weights")
        if root is None:
            raise self.error("has a model config but no `model_weights` group.")
        layers = _model_layers(opened.config, self)
        source = CONFIG
        if _layer_list(opened.config) is None:
            # A subclassed model: the groups Keras wrote for its layers.
            source = WEIGHTS
            layers = [({}, name, UNKNOWN) for name in read_h5_list(root, "layer_names")
                      if name != "top_level_model_weights"]
        for layer_config, name, class_name in layers:
            by_owner = self._h5_variables(_group(root, name), name)
            children = _model_layers(layer_config, self, nested=True)
            claimed: set = set()
            if children is None:
                own, claimed = _own(by_owner, name)
                node = _Node((name,), name, class_name, layer_config, own, source)
            else:
                node = _Node((name,), name, class_name, layer_config, {}, source)
                self._h5_tree(node, children, by_owner, claimed)
            self._h5_deep(node, {o: v for o, v in by_owner.items()
                                 if o is not None and o not in claimed})
            self._emit(node)

    def _h5_variables(self, group: h5py.Group | None, name: str) -> dict:
        """A top-level layer's datasets: `{None: {var: ds}}` for all of them, and
        `{owner path: {var: ds}}` by the path in their names (`("inner", "dense")`
        for `inner/dense/kernel`), for telling apart the layers inside it."""
        if group is None:
            return {}
        by_owner: dict[tuple[str, ...] | None, dict] = {}
        for weight_name in read_h5_list(group, "weight_names"):
            parts = weight_name.split("/")
            variable = re.sub(r":\d+$", "", parts[-1])
            dataset = _dataset(group, weight_name)
            if dataset is not None:
                self.checked(dataset, f"layer {name!r}")
            for owner in (None, tuple(parts[:-1])):
                variables = by_owner.setdefault(owner, {})
                variables[variable] = None if variable in variables else dataset
        return by_owner

    def _h5_tree(self, node: _Node, layers: list[tuple], by_owner: dict, claimed: set) -> None:
        for layer_config, name, class_name in layers:
            path = (*node.path, name)
            children = _model_layers(layer_config, self, nested=True)
            if children is None:
                own, used = _owned(by_owner, path)
                claimed |= used
                child = _Node(path, name, class_name, layer_config, own, CONFIG)
            else:
                child = _Node(path, name, class_name, layer_config, {}, CONFIG)
                self._h5_tree(child, children, by_owner, claimed)
            node.children.append(child)

    def _h5_deep(self, top: _Node, deep: dict) -> None:
        """Adds the layers only the variable names show (inside custom layers) to `top`'s tree."""
        if not deep:
            return
        nodes = {}
        stack = [top]
        while stack:
            node = stack.pop()
            nodes[node.path] = node
            stack.extend(node.children)
        config_paths = list(nodes)
        named = set(config_paths)
        for owner, variables in deep.items():
            path = _resolve(owner, config_paths, top.path[0])
            if path in named:
                continue  # variables in the scope of a config layer that did not claim them
            anchor = next(path[:n] for n in range(len(path) - 1, 0, -1) if path[:n] in nodes)
            for n in range(len(anchor) + 1, len(path) + 1):
                if path[:n] not in nodes:
                    parent = nodes[path[:n - 1]]
                    hints = _layer_configs_in(parent.layer_config)
                    layer_config, class_name = hints.get(path[n - 1], ({}, UNKNOWN))
                    node = _Node(path[:n], path[n - 1], class_name, layer_config, {}, WEIGHTS)
                    parent.children.append(node)
                    nodes[path[:n]] = node
            node = nodes[path]
            for name, dataset in variables.items():
                node.variables[name] = None if name in node.variables else dataset

    def _emit(self, node: _Node) -> None:
        self.entries.append(Entry(node.name, node.class_name, node.layer_config,
                                  node.variables, "/".join(node.path), node.source))
        for child in node.children:
            self._emit(child)


@dataclasses.dataclass
class _Node:
    path: tuple[str, ...]
    name: str
    class_name: str
    layer_config: dict
    variables: dict
    source: str
    children: list[_Node] = dataclasses.field(default_factory=list)


def _layer_list(config: Any) -> list | None:
    """The `layers` of a Sequential/Functional config, else `None`."""
    if not isinstance(config, dict):
        return None
    inner = config.get("config")
    if isinstance(inner, list) and config.get("class_name") == "Sequential":
        return inner  # Keras < 2.2.3 wrote a Sequential as its list of layers.
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return layers if isinstance(layers, list) else None


def _model_layers(config: Any, model: _Walk, *, nested: bool = False) -> list | None:
    """`(layer_config, name, class_name)` of a model config's layers.

    Returns `None` for a nested entry that is not a Sequential/Functional model;
    raises for a top-level config that is not one.
    """
    if not isinstance(config, dict):
        if nested:
            raise model.error(f"has a malformed layer in its config: {one_line(config)}")
        raise model.error("has a config that is not a Keras model config.")
    class_name = config.get("class_name")
    layers = _layer_list(config)
    if layers is None:
        if nested:
            return None
        if isinstance(class_name, str):  # a single layer or a subclassed model
            return []
        raise model.error("has a config that is not a Keras model config.")
    result = []
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
            raise model.error(f"has a malformed layer in its config: {one_line(layer)}")
        layer_inner = layer.get("config")
        name = layer.get("name")
        if name is None and isinstance(layer_inner, dict):
            name = layer_inner.get("name")
        if not isinstance(name, str) or not name:
            raise model.error(f"has a layer without a name in its config: {one_line(layer)}")
        layer_class = layer["class_name"].rpartition(">")[2]  # "kerasurgery>MaskedDense"
        if class_name == "Sequential" and layer_class == "InputLayer":
            continue  # not one of `Sequential.layers`
        if _is_operation(layer, layer_class):
            continue  # `keras.ops.add(...)` in a Functional graph: no weights, not a layer
        result.append((layer, name, layer_class))
    return result


def _is_operation(layer: dict, class_name: str) -> bool:
    module = layer.get("module")
    if isinstance(module, str) and module.startswith(("keras.src.ops.", "keras.ops.")):
        return True
    # Legacy `.h5` configs drop `module`; every layer but InputLayer serializes
    # `trainable`, an operation never does (nor do models of Keras < 2.5).
    config = layer.get("config")
    return (
        class_name != "InputLayer"
        and isinstance(config, dict)
        and "trainable" not in config
        and "layers" not in config
    )


def _is_layer_config(node: Any) -> bool:
    """A serialized layer: `{"class_name", "config": {"name", "trainable", ...}}`."""
    return (
        isinstance(node, dict)
        and isinstance(node.get("class_name"), str)
        and isinstance(node.get("config"), dict)
        and isinstance(node["config"].get("name"), str)
        and "trainable" in node["config"]
    )


def _layer_configs_in(layer_config: dict) -> dict[str, tuple[dict, str]]:
    """`{name: (layer_config, class_name)}` of the layers a layer's config names
    (a wrapper's `layer`, a task's `backbone`, ...), not looking inside them."""
    found: dict[str, tuple[dict, str]] = {}
    config = layer_config.get("config") if isinstance(layer_config, dict) else None
    stack: list[Any] = [config]
    budget = 100_000  # nodes: a config is walked once per layer holding sublayers
    while stack and budget > 0:
        budget -= 1
        node = stack.pop()
        if _is_layer_config(node):
            found.setdefault(node["config"]["name"], (node, node["class_name"].rpartition(">")[2]))
        elif isinstance(node, dict):
            if node is not config and isinstance(node.get("config"), dict) and "layers" in node["config"]:
                continue  # a nested model: its layers are its own
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _infer(key: str, listed: bool, name: str, parent_config: dict,
           hints: dict[str, tuple[dict, str]]) -> tuple[str, dict]:
    """`(class_name, layer_config)` of a layer that only the weights file shows."""
    config = parent_config.get("config") if isinstance(parent_config, dict) else None
    if isinstance(config, dict) and not listed:
        attribute = config.get(key.lstrip("_"))
        if key == "forward_layer" and not _is_layer_config(attribute):
            attribute = config.get("layer")  # Bidirectional: a copy of `layer`
        if _is_layer_config(attribute):
            return attribute["class_name"].rpartition(">")[2], attribute
    if name in hints:
        layer_config, class_name = hints[name]
        return class_name, layer_config
    if listed:
        class_name = _SNAKE_KINDS.get(re.sub(r"_\d+$", "", key))
        if class_name is not None:
            return class_name, {}
    return UNKNOWN, {}


def present_weights(kind: kinds.Kind, layer_config: dict) -> list[str] | None:
    """The weights a layer of `kind` has, by its serialized config; `None` without one."""
    config = layer_config.get("config") if isinstance(layer_config, dict) else None
    if not isinstance(config, dict):
        return None
    return kind.present(config)


def _own(by_owner: dict, name: str) -> tuple[dict, set]:
    """A top-level layer's own datasets (not its sublayers'), and the owners they came from."""
    owners = [o for o in by_owner if o is not None and (not o or o[-1] == name)]
    if not owners and not any(o is not None and len(o) > 1 for o in by_owner):
        # Variables named in another scope (a layer renamed after it was built).
        return dict(by_owner.get(None, {})), {o for o in by_owner if o is not None}
    found: dict = {}
    for owner in owners:
        for variable, dataset in by_owner[owner].items():
            found[variable] = None if variable in found else dataset
    return found, set(owners)


def _owned(by_owner: dict, path: tuple[str, ...]) -> tuple[dict, set]:
    """The datasets of the nested layer at `path`, from `_h5_variables`, and their owners.

    Variable names carry the scope they were built in, which need not be the
    layer's path (a Functional model's layers are built outside it): the
    owners ending in the layer's name are candidates, and the one sharing the
    longest tail with `path` wins. Candidates that tie are merged, so a
    variable claimed by both reads as stored twice rather than as either.
    """
    best, found, used = 0, {}, set()
    for owner, variables in by_owner.items():
        if not owner or owner[-1] != path[-1]:
            continue
        shared = next((n for n in range(len(owner), 0, -1) if path[-n:] == owner[-n:]), 0)
        if shared > best:
            best, found, used = shared, dict(variables), {owner}
        elif shared == best:
            used.add(owner)
            for name, dataset in variables.items():
                found[name] = None if name in found else dataset
    return found, used


def _resolve(owner: tuple[str, ...], config_paths: list[tuple[str, ...]], top: str) -> tuple:
    """The path of the layer whose variables carry the scope `owner`.

    A scope starts at the layer that was called from outside (`transformer_layer_0`
    in `transformer_layer_0/self_attention_layer/query`): the config path that
    ends in the longest head of `owner` is where it hangs, else the top-level layer.
    """
    best: tuple[int, tuple] | None = None
    for path in config_paths:
        for n in range(min(len(owner) - 1, len(path)), 0, -1):
            if path[-n:] == owner[:n]:
                if best is None or n > best[0]:
                    best = (n, path)
                break
    if best is not None:
        return best[1] + owner[best[0]:]
    return (top, *owner[1:]) if owner and owner[0] == top else (top, *owner)


def _container(group: h5py.Group | None) -> h5py.Group | None:
    """The group holding a model's layer groups (`_layer_checkpoint_dependencies`
    in `.keras` files of Keras 2.13-2.15)."""
    layers = _group(group, "layers")
    return layers if layers is not None else _group(group, "_layer_checkpoint_dependencies")


def _subgroups(container: h5py.Group) -> Iterator[h5py.Group]:
    for key in container:
        group = _group(container, key)
        if group is not None:
            yield group


def _vars_name(group: h5py.Group) -> str | None:
    vars_group = _group(group, "vars")
    return None if vars_group is None else h5_text(vars_group.attrs.get("name"))


def _snake_case(name: str) -> str:
    # Mirrors keras.src.utils.naming.to_snake_case, which names the groups.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# The pinnable classes by the group key Keras gives them in a list (`dense_1`).
_SNAKE_KINDS = {
    _snake_case(name): name
    for kind in kinds.KINDS.values()
    for name in (kind.name, kind.pinned)
}
