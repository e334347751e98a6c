"""Where a saved model file keeps each layer's variables.

`layer_entries` walks the model config of a file opened by
`formats.open_model_file` and pairs every layer with the HDF5 datasets of its
variables, without reading them; `inspection` checks and reads them.

Where the weights live:

- `.keras` (a zip): `config.json`, `metadata.json`, `model.weights.h5`. Layer
  variables sit in `layers/<snake_case class name>[_N]/vars/`, nested models'
  in `.../layers/<...>/layers/...`; recent Keras also writes the layer name in
  the `vars` group's `name` attribute, which is preferred when present. `Dense`
  stores `0` (kernel) and `1` (bias); `MaskedDense` stores named, effective
  weights.
- `.h5`: `model_config` attribute, and `model_weights/<top-level layer>/` with a
  `weight_names` attribute listing variable paths (`dense/kernel` in Keras 3,
  `dense/kernel:0` in Keras 2). A nested model's group holds all of its
  layers' variables, told apart by the layer names in their paths (the
  longest match wins). `MaskedDense` weights here are raw: the effective
  kernel is computed from the pins.

A layer's path (`Entry.path`, see `inspection`) is its name in the top-level
model and `outer/.../name` inside nested models.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import h5py

from kerasurgery import formats
from kerasurgery.errors import ModelFileError, one_line
from kerasurgery.formats import KERAS, h5_text, read_h5_list

DENSE = "Dense"
MASKED = "MaskedDense"


@dataclasses.dataclass
class Entry:
    """A layer of the config and the datasets of its variables, by variable name."""

    name: str
    class_name: str  # without a registered package: "MaskedDense"
    layer_config: dict  # {"class_name", "config", "build_config", ...}
    variables: dict[str, h5py.Dataset | None]  # None: two variables claim the name
    path: str  # the name; "model/.../name" inside nested models


def layer_entries(opened: formats.ModelFile) -> list[Entry]:
    """Every layer of an open model file, in model order, with its datasets.

    Nested models are flattened, each listed before its layers.

    Raises:
        ModelFileError: the config is not a model's, or the weights are not
            where the format keeps them.
    """
    return _Walk(opened).entries


class _Walk:
    """Walks a model config alongside the file's weight groups."""

    def __init__(self, opened: formats.ModelFile) -> None:
        self.path = opened.path
        self.entries: list[Entry] = []
        if opened.format == KERAS:
            self._keras(opened)
        else:
            self._h5(opened)

    def error(self, message: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {message}")

    # .keras archives

    def _keras(self, opened: formats.ModelFile) -> None:
        if opened.weights is None:
            if "model.weights.npz" in opened.members:
                raise self.error("stores its weights as `.npz`, which is not supported.")
            raise self.error("is a `.keras` archive without `model.weights.h5`.")
        root = _container(opened.weights)
        self._walk_keras(_model_layers(opened.config, self), root, "")

    def _walk_keras(self, layers: list[tuple], container: h5py.Group | None, prefix: str) -> None:
        counters: dict[str, int] = {}
        by_name: dict[str, h5py.Group] | None = None
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
            vars_group = _group(group, "vars")
            variables = _keras_variables(class_name, layer_config, vars_group)
            path = prefix + name
            self.entries.append(Entry(name, class_name, layer_config, variables, path))
            children = _model_layers(layer_config, self, nested=True)
            if children is not None:
                inner = _container(group) if group is not None else None
                self._walk_keras(children, inner, f"{path}/")

    # .h5 files

    def _h5(self, opened: formats.ModelFile) -> None:
        root = _group(opened.weights, "model_weights")
        if root is None:
            raise self.error("has a model config but no `model_weights` group.")
        for layer_config, name, class_name in _model_layers(opened.config, self):
            variables = _h5_variables(_group(root, name))
            children = _model_layers(layer_config, self, nested=True)
            # A nested model's group holds its layers' variables, not its own.
            own = variables.get(None, {}) if children is None else {}
            self.entries.append(Entry(name, class_name, layer_config, own, name))
            if children is not None:
                self._walk_h5_nested(children, variables, (name,))

    def _walk_h5_nested(self, layers: list[tuple], variables: dict, prefix: tuple) -> None:
        for layer_config, name, class_name in layers:
            path = (*prefix, name)
            children = _model_layers(layer_config, self, nested=True)
            own = _owned(variables, path) if children is None else {}
            self.entries.append(Entry(name, class_name, layer_config, own, "/".join(path)))
            if children is not None:
                self._walk_h5_nested(children, variables, path)


def _model_layers(config: Any, model: _Walk, *, nested: bool = False) -> list | None:
    """`(layer_config, name, class_name)` of a model config's layers.

    Returns `None` for a nested entry that is not a Sequential/Functional model;
    raises for a top-level config that is not one.
    """
    if not isinstance(config, dict):
        if nested:
            raise model.error(f"has a malformed layer in its config: {one_line(config)}")
        raise model.error("has a config that is not a Keras model config.")
    inner = config.get("config")
    class_name = config.get("class_name")
    if isinstance(inner, list) and class_name == "Sequential":
        inner = {"layers": inner}  # Keras < 2.2.3 wrote a Sequential as its list of layers.
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
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


def _keras_variables(class_name: str, layer_config: dict, vars_group: h5py.Group | None) -> dict:
    """A `.keras` layer's datasets, keyed `kernel`/`bias`/... where known."""
    if vars_group is None:
        return {}
    stored = {key: _dataset(vars_group, key) for key in vars_group}
    stored = {key: value for key, value in stored.items() if value is not None}
    if class_name == MASKED:
        return stored
    if class_name == DENSE:
        config = layer_config.get("config")
        use_bias = config.get("use_bias", True) if isinstance(config, dict) else True
        renamed = {"kernel": stored["0"]} if "0" in stored else {}
        if use_bias is not False and "1" in stored:
            renamed["bias"] = stored["1"]
        return renamed
    # Other layers with a kernel (Conv*, EinsumDense) create it first.
    config = layer_config.get("config")
    if isinstance(config, dict) and "kernel_initializer" in config and "0" in stored:
        return {"kernel": stored["0"]}
    return {}


def _h5_variables(group: h5py.Group | None) -> dict[tuple[str, ...] | None, dict]:
    """A top-level layer's datasets: `{None: {var: ds}}` for its own variables, and
    `{owner path: {var: ds}}` by the path in their names (`("inner", "dense")`
    for `inner/dense/kernel`), for the layers inside it (a nested model)."""
    if group is None:
        return {}
    by_owner: dict[tuple[str, ...] | None, dict] = {}
    for weight_name in read_h5_list(group, "weight_names"):
        parts = weight_name.split("/")
        variable = re.sub(r":\d+$", "", parts[-1])
        dataset = _dataset(group, weight_name)
        for owner in (None, tuple(parts[:-1])):
            variables = by_owner.setdefault(owner, {})
            variables[variable] = None if variable in variables else dataset
    return by_owner


def _owned(by_owner: dict, path: tuple[str, ...]) -> dict:
    """The datasets of the nested layer at `path`, from `_h5_variables`.

    Variable names carry the scope they were built in, which need not be the
    layer's path (a Functional model's layers are built outside it): the
    owners ending in the layer's name are candidates, and the one sharing the
    longest tail with `path` wins. Candidates that tie are merged, so a
    variable claimed by both reads as stored twice rather than as either.
    """
    best, found = 0, {}
    for owner, variables in by_owner.items():
        if not owner or owner[-1] != path[-1]:
            continue
        shared = next((n for n in range(len(owner), 0, -1) if path[-n:] == owner[-n:]), 0)
        if shared > best:
            best, found = shared, dict(variables)
        elif shared == best:
            for name, dataset in variables.items():
                found[name] = None if name in found else dataset
    return found


def _container(group: h5py.Group | None) -> h5py.Group | None:
    """The group holding a model's layer groups (`_layer_checkpoint_dependencies`
    in `.keras` files of Keras 2.13-2.15)."""
    layers = _group(group, "layers")
    return layers if layers is not None else _group(group, "_layer_checkpoint_dependencies")


def _group(parent: h5py.Group | None, name: str) -> h5py.Group | None:
    obj = _child(parent, name)
    return obj if isinstance(obj, h5py.Group) else None


def _dataset(parent: h5py.Group, name: str) -> h5py.Dataset | None:
    obj = _child(parent, name)
    return obj if isinstance(obj, h5py.Dataset) else None


def _child(parent: h5py.Group | None, name: str) -> Any:
    """`parent[name]` following hard links only: a soft or external link could
    point anywhere, even into another file."""
    current = parent
    for part in name.split("/"):
        if current is None or not part or part not in current:
            return None
        if not isinstance(current.get(part, getlink=True), h5py.HardLink):
            return None
        current = current[part]
    return current


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
