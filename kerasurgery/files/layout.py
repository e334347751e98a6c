"""Where a saved model file keeps each layer's variables, at any depth.

`layer_entries` walks a file opened by `container.open_model_file` and pairs
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
  class and numbered per class in the order Keras rebuilds `model.layers`
  (`dense`, `dense_1`, ...: `kerasurgery.files.order`); Keras finds them by
  that path alone, so a group whose recorded `name` is another layer's is
  refused, never matched by name. A layer's own sublayers (inside a custom
  layer, never inside a built-in one) sit under the attribute that holds
  them (`_self_attention_layer/query_dense`), and lists of them in
  containers named after the attribute. A plain layer stores its
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
  the pins (`w_pin_mask`, `w_pin_value`), at any depth. Keras ignores these
  names: it pairs the groups of `layer_names` with the layers, and the
  datasets of `weight_names` with the variables, by position. So the groups
  must be listed in the layers' order, and each dataset must sit where Keras
  expects the variable its name gives (`order.legacy_variables`); inside a
  custom layer, where only its code knows that order, the weights are
  `uncertain` and the readers refuse to read them.

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
import numpy as np

from kerasurgery import kinds
from kerasurgery.files import formats, order
from kerasurgery.guards.limits import MAX_LAYER_DEPTH
from kerasurgery.guards.shapes import WEIGHTLESS
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
# Built-in layers that hold no other layer: Keras loads nothing below their
# `vars`, so groups there are not layers, whatever they hold.
_LEAVES = frozenset({*WEIGHTLESS, "BatchNormalization", "LayerNormalization",
                     "GroupNormalization", "PReLU", *kinds.KINDS,
                     *(kind.pinned for kind in kinds.KINDS.values())})


def _may_hold_layers(class_name: str) -> bool:
    """Whether Keras may load sublayers of a layer of `class_name` (its code may make them)."""
    return class_name not in _LEAVES


def weight_order(class_name: str, names: Iterable[str] = ()) -> tuple[str, ...]:
    """The weights of `class_name` in the order Keras stores them.

    For a class of no pinnable kind, the pinnable order that holds every one
    of `names` (the named weights of an `.h5` layer), else `()`.
    """
    kind = kinds.find(class_name)
    if kind is not None:
        return kind.saved_weights
    names = set(names)
    for saved in kinds.saved_orders():
        if names and names <= set(saved):
            return saved
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
    group: str | None = None  # `.keras`: the HDF5 group Keras loads the layer from
    # The dtype of the layer's variables, which Keras casts the stored weights
    # to: from the layer's dtype policy, or (a layer only the weights show)
    # its parent's; `None` where no policy says.
    dtype: str | None = None
    uncertain: str | None = None  # why the weights Keras loads into it are not known

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
    the layers it names. Each layer gets the datasets Keras loads into it
    (`kerasurgery.files.order`), never others that carry its name.

    Raises:
        ModelFileError: the config is not a model's, the weights are not
            where the format keeps them, Keras would load another layer's
            weights into a layer (groups or datasets listed out of Keras'
            order, a group recorded under another layer's name), two groups
            claim one layer, a dataset keeps its data outside the file, or
            the pin record names a layer the weights do not hold.
    """
    return _Walk(opened, record or {}).entries


def variable_dtype(layer_config: Any) -> str | None:
    """The dtype of a layer's variables by its config's dtype policy
    (`"mixed_float16"` keeps float32 variables); `None` where the config
    names no float policy Keras is known to make (a quantized one, say)."""
    config = layer_config.get("config") if isinstance(layer_config, dict) else None
    if not isinstance(config, dict):
        return None
    policy = config.get("dtype", _FLOATX)
    if policy is None:
        policy = _FLOATX
    if isinstance(policy, dict):
        if policy.get("class_name") not in _FLOAT_POLICIES:
            return None
        inner = policy.get("config")
        policy = inner.get("name") if isinstance(inner, dict) else None
    if not isinstance(policy, str):
        return None
    if policy.startswith("mixed_"):
        return "float32"  # mixed precision computes in float16, keeps float32 variables
    return policy if policy in _FLOATS else None


_FLOATX = "float32"  # Keras' default `floatx`
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_FLOAT_POLICIES = ("DTypePolicy", "FloatDTypePolicy", "Policy")


def loaded_as(array: np.ndarray, dtype: str | None, *, exact: bool) -> np.ndarray:
    """A stored float array as Keras holds it once loaded into a variable of
    `dtype` (`Variable.assign` casts it): in native byte order, and narrowed
    (float64 to float32) as a cast rounds, so `1e-300` is `0.0` and `-1e-300`
    is `-0.0`.

    Args:
        array: The stored array (any float dtype, either byte order).
        dtype: The variable's dtype (`Entry.dtype`).
        exact: Whether `dtype` is the layer's own (from its config); a dtype
            inherited from a parent must equal the stored one.

    Raises:
        ValueError: Keras' result cannot be told here: a dtype that is not
            the layer's own and differs from the stored one, a target numpy
            does not have, or a cast to a subnormal number (which some
            backends flush to zero).
    """
    stored = array.dtype
    if stored.kind != "f":
        return array
    if not stored.isnative:
        array = array.astype(stored.newbyteorder("="))
    target = np.dtype(dtype) if dtype in ("float16", "float32", "float64") else None
    if dtype is None or array.dtype == target:
        return array
    if not exact or target is None:
        raise ValueError(f"is stored as {stored}, and which dtype Keras loads it into "
                         f"({dtype}?) cannot be told here")
    with np.errstate(over="ignore"):
        cast = array.astype(target)
    if target.itemsize < array.dtype.itemsize:
        subnormal = (cast != 0) & (np.abs(cast) < np.finfo(target).tiny)
        if subnormal.any():
            raise ValueError(f"is stored as {stored}; cast to the layer's {dtype} some of it is "
                             "subnormal, which backends round differently")
    return cast


class _Walk:
    """Walks a model config alongside the file's weight groups, as Keras loads them."""

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
        paths: set[str] = set()
        for entry in self.entries:
            if entry.path in paths:
                raise self.error(
                    f"two groups of weights claim layer {entry.path!r}; Keras loads one "
                    "of them, and which cannot be told without it."
                )
            paths.add(entry.path)

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
        dtype = variable_dtype(opened.config) or _FLOATX
        self._children(opened.weights, opened.config, children, "", 0, dtype,
                       sublayers=children is None)

    def _children(self, group: h5py.Group | None, layer_config: dict,
                  config_children: list | None, prefix: str, depth: int, dtype: str | None,
                  *, sublayers: bool) -> None:
        """The layers inside a layer (or the model): those its config names, then,
        for a layer whose code may hold others (`sublayers`), those its weights show."""
        if depth > MAX_LAYER_DEPTH:
            raise self.error(f"nests layers more than {MAX_LAYER_DEPTH} deep.")
        container = None
        if config_children is not None:
            container = _container(group)
            for layer_config_, name, class_name, child, key in self._match(
                    config_children, container, prefix):
                self._layer(child, name, class_name, layer_config_, prefix + name, CONFIG, depth,
                            variable_dtype(layer_config_) or dtype)
        if group is None or not sublayers:
            return
        hints = None
        for key, child, listed in self._saveables(group, container, depth):
            name = _vars_name(child) or key
            if hints is None:
                hints = _layer_configs_in(layer_config)
            class_name, child_config = _infer(key, listed, name, layer_config, hints)
            self._layer(child, name, class_name, child_config, prefix + name, WEIGHTS, depth,
                        variable_dtype(child_config) or dtype)

    def _match(self, layers: list[tuple], container: h5py.Group | None,
               prefix: str) -> Iterator[tuple]:
        """`(layer_config, name, class_name, group, key)` for the layers a model
        config names: the group Keras loads each from, by the layer's position.

        Keras names a layer's group after its class, numbered per class in
        `model.layers` order, and finds it by that path alone; the `name`
        attribute it records there must then be the layer's own."""
        keys = order.container_keys(class_name for _, _, class_name in layers)
        for (layer_config, name, class_name), key in zip(layers, keys):
            group = _group(container, key)
            recorded = None if group is None else _vars_name(group)
            if recorded is not None and recorded != name:
                raise self.error(
                    f"Keras loads the weights stored for layer {recorded!r} (group "
                    f"{group.name!r}) into layer {prefix + name!r}, by its position; refused "
                    "(a file whose groups are reordered or renamed is not read by name)."
                )
            yield layer_config, name, class_name, group, key

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
               path: str, source: str, depth: int, dtype: str | None) -> None:
        if group is not None:
            self._seen.add(group.id)
        record = self.record.pop(path, None)
        if record is not None:
            class_name = record.class_name
        variables = self._keras_variables(class_name, layer_config, _group(group, "vars"),
                                          path, record, source)
        self.entries.append(Entry(name, class_name, layer_config, variables, path, source,
                                  record is not None, None if group is None else group.name,
                                  dtype))
        children = _model_layers(layer_config, self, nested=True)
        self._children(group, layer_config, children, f"{path}/", depth + 1, dtype,
                       sublayers=children is None and _may_hold_layers(class_name))

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
            # Saved as the plain layer saves them: the pinned weights, then its state.
            saved = [*record.weights, *kinds.find(record.class_name).state]
            expected = [str(i) for i in range(len(saved))]
            if sorted(stored, key=_index_key) != expected:
                raise self.error(
                    f"{PIN_RECORD} pins the weights {list(record.weights)} of {where}, but "
                    f"{WEIGHTS_MEMBER} stores {sorted(stored, key=_index_key)} for it."
                )
            variables: dict = {w: stored[str(i)] for i, w in enumerate(saved)}
            variables.update(record.datasets)
            return variables
        kind = kinds.find(class_name)
        if kind is not None:
            names = present_weights(kind, layer_config)
            if names is None:  # no config: as many as are stored
                count = next(i for i in range(len(stored) + 1) if str(i) not in stored)
                names = list(kind.saved_weights[:count])
            return {n: stored[str(i)] for i, n in enumerate(names) if str(i) in stored}
        if source == WEIGHTS:
            return stored  # not a pinnable kind: by the keys the file uses
        config = layer_config.get("config")
        if isinstance(config, dict) and "kernel_initializer" in config and "0" in stored:
            # Other layers with a kernel (LSTM cells, ...) create it first.
            return {"kernel": stored["0"]}
        return {}


    def _h5(self, opened: formats.ModelFile) -> None:
        root = _group(opened.weights, "model_weights")
        if root is None:
            raise self.error("has a model config but no `model_weights` group.")
        listed = read_h5_list(root, "layer_names")
        if len(set(listed)) != len(listed):
            twice = next(name for name in listed if listed.count(name) > 1)
            raise self.error(f"`layer_names` lists {twice!r} twice.")
        layers = _model_layers(opened.config, self)
        source = CONFIG
        if _layer_list(opened.config) is None:
            # A subclassed model: the groups Keras wrote for its layers.
            source = WEIGHTS
            layers = [({}, name, UNKNOWN) for name in listed if name != "top_level_model_weights"]
        else:
            self._h5_order(root, listed, [name for _, name, _ in layers])
        inner = opened.config.get("config")
        trainable = not (isinstance(inner, dict) and inner.get("trainable") is False)
        dtype = variable_dtype(opened.config) or _FLOATX
        for layer_config, name, class_name in layers:
            group = _group(root, name)
            self._positions: dict[int, int] = {}
            by_owner = self._h5_variables(group, name)
            children = _model_layers(layer_config, self, nested=True)
            claimed: set = set()
            layer_dtype = variable_dtype(layer_config) or dtype
            if children is None:
                own, claimed = _own(by_owner, name)
                node = _Node((name,), name, class_name, layer_config, own, source, layer_dtype)
            else:
                node = _Node((name,), name, class_name, layer_config, {}, source, layer_dtype)
                self._h5_tree(node, children, by_owner, claimed)
            self._h5_deep(node, {o: v for o, v in by_owner.items()
                                 if o is not None and o not in claimed})
            weight_names = read_h5_list(group, "weight_names") if group is not None else []
            self._h5_positions(node, weight_names, trainable)
            self._emit(node)

    def _h5_order(self, root: h5py.Group, listed: list[str], names: list[str]) -> None:
        """Refuses groups of weights that Keras would pair with other layers.

        Keras pairs the groups of `layer_names` that list weights with the
        model's layers that have weights, both in order: each group must be
        that of a layer of the model, in the model's order."""
        weighted = []
        for name in listed:
            group = _group(root, name)
            if group is not None and read_h5_list(group, "weight_names"):
                weighted.append(name)
        known = set(names)
        stray = [name for name in weighted if name not in known]
        if stray:
            raise self.error(
                f"`layer_names` lists weights for {stray[0]!r}, which is no layer of the "
                "model; Keras pairs the groups with the layers by position: refused."
            )
        present = set(weighted)
        expected = [name for name in names if name in present]
        if weighted != expected:
            at = next(i for i, (a, b) in enumerate(zip(weighted, expected)) if a != b)
            raise self.error(
                f"`layer_names` lists the weights of {weighted[at]!r} where the model has "
                f"layer {expected[at]!r}; Keras pairs them by position, so it would load "
                "one layer's weights into another: refused."
            )

    def _h5_variables(self, group: h5py.Group | None, name: str) -> dict:
        """A top-level layer's datasets: `{None: {var: ds}}` for all of them, and
        `{owner path: {var: ds}}` by the path in their names (`("inner", "dense")`
        for `inner/dense/kernel`), for telling apart the layers inside it.
        `self._positions` maps each dataset to its position in `weight_names`."""
        if group is None:
            return {}
        by_owner: dict[tuple[str, ...] | None, dict] = {}
        for index, weight_name in enumerate(read_h5_list(group, "weight_names")):
            parts = weight_name.split("/")
            variable = re.sub(r":\d+$", "", parts[-1])
            dataset = _dataset(group, weight_name)
            if dataset is not None:
                self.checked(dataset, f"layer {name!r}")
                self._positions[id(dataset)] = index
            for owner in (None, tuple(parts[:-1])):
                variables = by_owner.setdefault(owner, {})
                variables[variable] = None if variable in variables else dataset
        return by_owner

    def _h5_positions(self, top: _Node, weight_names: list[str], trainable: bool) -> None:
        """Checks that each dataset read by its name is the one Keras loads, by
        position, into the variable of that name.

        Keras assigns the datasets of `weight_names` to the layer's
        `trainable_weights + non_trainable_weights` in order. Where every
        layer in the group is of a kind whose variables are known, that order
        is `order.legacy_variables`; a dataset elsewhere is refused. Inside a
        custom layer only its code knows the order: the layers there are
        marked `uncertain`.
        """
        if not weight_names:
            return  # nothing stored: nothing to misread (a missing weight is refused later)
        nodes, stack = [], [top]
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node.children)
        expected = order.legacy_variables(top.layer_config, trainable=trainable) if (
            top.source == CONFIG) else None
        if expected is None:
            for node in nodes:
                if node.variables:
                    node.uncertain = (
                        f"its weights sit in the `.h5` group of {top.name!r} "
                        f"({formats.shown(top.class_name)}), whose variables Keras pairs with the stored "
                        "datasets in an order only the layer's code knows"
                    )
            return
        assigned = {}
        for node in nodes:
            for variable, dataset in node.variables.items():
                if dataset is not None:
                    assigned[(node.path[1:], variable)] = self._positions.get(id(dataset))
        where = f"layer {top.name!r}"
        if len(expected) != len(weight_names):
            raise self.error(
                f"{where} has {len(expected)} weights, but its `.h5` group lists "
                f"{len(weight_names)}."
            )
        for index, (owner, variable) in enumerate(expected):
            if assigned.get((owner, variable)) != index:
                shown = "/".join((top.name, *owner, variable))
                raise self.error(
                    f"{where}: Keras loads the dataset {weight_names[index]!r} into `{shown}` "
                    "(it pairs them by position in `weight_names`, not by name): refused."
                )

    def _h5_tree(self, node: _Node, layers: list[tuple], by_owner: dict, claimed: set) -> None:
        for layer_config, name, class_name in layers:
            path = (*node.path, name)
            children = _model_layers(layer_config, self, nested=True)
            dtype = variable_dtype(layer_config) or node.dtype
            if children is None:
                own, used = _owned(by_owner, path)
                claimed |= used
                child = _Node(path, name, class_name, layer_config, own, CONFIG, dtype)
            else:
                child = _Node(path, name, class_name, layer_config, {}, CONFIG, dtype)
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
                    node = _Node(path[:n], path[n - 1], class_name, layer_config, {}, WEIGHTS,
                                 variable_dtype(layer_config) or parent.dtype)
                    parent.children.append(node)
                    nodes[path[:n]] = node
            node = nodes[path]
            for name, dataset in variables.items():
                node.variables[name] = None if name in node.variables else dataset

    def _emit(self, node: _Node) -> None:
        self.entries.append(Entry(node.name, node.class_name, node.layer_config,
                                  node.variables, "/".join(node.path), node.source,
                                  dtype=node.dtype, uncertain=node.uncertain))
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
    dtype: str | None = None
    children: list[_Node] = dataclasses.field(default_factory=list)
    uncertain: str | None = None


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
    result, positions = [], []
    sequential = order.group_class(class_name) == "Sequential"
    for position, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
            raise model.error(f"has a malformed layer in its config: {one_line(layer)}")
        name = order.entry_name(layer)
        if name is None:
            raise model.error(f"has a layer without a name in its config: {one_line(layer)}")
        layer_class = layer["class_name"].rpartition(">")[2]  # "kerasurgery>MaskedDense"
        registered = layer.get("registered_name")
        if isinstance(registered, str) and registered.startswith(f"{kinds.PACKAGE}>") and (
                registered.rpartition(">")[2] != layer_class):
            # Keras makes the class registered under `registered_name`, and
            # names the layer's group after that class, not `class_name`.
            raise model.error(
                f"layer {name!r} is a {formats.shown(layer_class)} by its `class_name` but a "
                f"{formats.shown(registered)} by its `registered_name`, which Keras makes: refused."
            )
        if sequential and layer_class == "InputLayer":
            continue  # not one of `Sequential.layers`
        if not sequential and order.is_operation(layer):
            continue  # `keras.ops.add(...)` in a Functional graph: no weights, not a layer
        result.append((layer, name, layer_class))
        positions.append(position)
    where = "the model" if not nested else f"model {order.entry_name(config)!r}"
    try:
        loaded = order.load_order(config, layers)
    except order.OrderError as e:
        raise model.error(
            f"cannot tell in which order Keras rebuilds the layers of {where}: {one_line(e)}."
        ) from None
    if loaded != positions:
        at = next((i for i, (a, b) in enumerate(zip(loaded, positions)) if a != b),
                  min(len(loaded), len(positions)))
        listed = result[at][1] if at < len(result) else "nothing"
        rebuilt = order.entry_name(layers[loaded[at]]) if at < len(loaded) else "nothing"
        raise model.error(
            f"{where} lists layer {listed!r} where Keras, rebuilding its graph, has "
            f"{rebuilt!r}; Keras finds a layer's weights by its position, so the file "
            "would not load as it reads: refused."
        )
    return result


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
    """The weights a layer of `kind` saves, by its serialized config; `None` without one."""
    config = layer_config.get("config") if isinstance(layer_config, dict) else None
    if not isinstance(config, dict):
        return None
    return kind.saved(config)


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


_snake_case = order.snake_case


# The pinnable classes by the group key Keras gives them in a list (`dense_1`).
_SNAKE_KINDS = {
    _snake_case(name): name
    for kind in kinds.KINDS.values()
    for name in (kind.name, kind.pinned)
}
