"""Reading a saved model file without TensorFlow or Keras: layers, shapes, pins.

`inspect_file` lists every layer of a `.keras` or `.h5` file (Keras 3 or
Keras 2) with its kernel shape and pinned counts; `read_dense_weights` returns
the effective weights and pins of every `Dense` and `MaskedDense` layer. Both
read the model config (json) and only the weights they need (h5py), so they
answer in a fraction of a second where importing TensorFlow takes seconds.

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

Keras requires a layer name to be unique within one model only, so a nested
model may hold a `dense` while the outer model holds another. A layer is
therefore identified by its path: its name for a layer of the top-level model,
`outer/inner/name` for a layer inside nested models (Keras' layer names cannot
contain "/").
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kerasurgery import formats
from kerasurgery.errors import ModelFileError, one_line
from kerasurgery.formats import KERAS, h5_text, read_h5_list

_DENSE = "Dense"
_MASKED = "MaskedDense"
_MASKED_NAMES = ("kernel_pin_mask", "kernel_pin_value", "bias_pin_mask", "bias_pin_value")
# Mask entries read at once when counting, so counting a huge mask stays
# within a few tens of MB of memory.
_COUNT_BLOCK = 1 << 24


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a saved model, as `inspect_file` reports it.

    `path` identifies the layer in the file: its name for a layer of the
    top-level model (the default), `model/.../name` inside nested models.
    """

    name: str
    class_name: str
    kernel_shape: tuple[int, ...] | None
    pinned_kernel: int
    pinned_bias: int
    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", self.name)

    @property
    def pinned(self) -> int:
        """Pinned entries of the kernel and the bias together."""
        return self.pinned_kernel + self.pinned_bias


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What `inspect_file` found in a model file."""

    file: str
    format: str
    keras_version: str | None
    layers: list[LayerInfo]

    def to_json(self) -> dict:
        """The object `kerasurgery inspect --json` prints."""
        return {
            "file": self.file,
            "format": self.format,
            "keras_version": self.keras_version,
            "layers": [
                {
                    "name": layer.name,
                    "class_name": layer.class_name,
                    "kernel_shape": (
                        None if layer.kernel_shape is None else list(layer.kernel_shape)
                    ),
                    "pinned_kernel": layer.pinned_kernel,
                    "pinned_bias": layer.pinned_bias,
                    "pinned": layer.pinned,
                    "path": layer.path,
                }
                for layer in self.layers
            ],
        }


@dataclasses.dataclass(frozen=True)
class DenseWeights:
    """The effective weights and pins of one `Dense` or `MaskedDense` layer.

    The arrays are read-only. `kernel_value` holds the pinned value at each
    pinned entry and the effective weight elsewhere, so it equals `kernel`
    (as `MaskedDense.pins()` reports it); likewise `bias_value`. `path` is
    the layer's path, as in `LayerInfo`.
    """

    name: str
    class_name: str
    kernel: np.ndarray
    bias: np.ndarray | None
    kernel_mask: np.ndarray
    bias_mask: np.ndarray | None
    kernel_value: np.ndarray
    bias_value: np.ndarray | None
    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", self.name)


def inspect_file(path: str | os.PathLike) -> FileInfo:
    """Lists the layers of a `.keras` or `.h5` model file, without TensorFlow.

    Reads the model config and, of the weights, only their shapes and the pin
    masks of `MaskedDense` layers.

    Args:
        path: A model file written by Keras 3 (`.keras`, `.h5`) or Keras 2 (`.h5`).

    Returns:
        A `FileInfo` with every layer in model order, nested models flattened
        (each nested model listed before its layers, which have paths
        `model/name`).

    Raises:
        ModelFileError: the file is missing, not a model file, corrupt, or its
            weights disagree with its config. The message names the file.

    Example:

    ```python
    info = inspect_file("fixtures/frozen_mlp.keras")
    {layer.path: layer.pinned for layer in info.layers}
    ```
    """
    with _opened(path, check_crc=False) as model:
        layers = [model.layer_info(entry) for entry in model.entries]
        return FileInfo(str(path), model.format, model.keras_version, layers)


def read_dense_weights(path: str | os.PathLike) -> dict[str, DenseWeights]:
    """Reads the effective weights and pins of every Dense and MaskedDense layer.

    Returns:
        `DenseWeights` by layer path (see `LayerInfo`), in model order: a
        layer of the top-level model under its name, a layer inside nested
        models under `model/.../name`, so equal names in different models
        are told apart.

    Raises:
        ModelFileError: as `inspect_file`; also for non-float (quantized)
            kernels, non-finite pin values, and a `.keras` archive whose
            weights fail their CRC check (Keras refuses those too).
    """
    with _opened(path, check_crc=True) as model:
        weights: dict[str, DenseWeights] = {}
        for entry in model.entries:
            if entry.class_name in (_DENSE, _MASKED) and entry.path not in weights:
                dense = model.dense_weights(entry)
                if dense is not None:
                    weights[entry.path] = dense
        return weights


@dataclasses.dataclass
class _Entry:
    """A layer of the config and the datasets of its variables, by variable name."""

    name: str
    class_name: str
    layer_config: dict  # {"class_name", "config", "build_config", ...}
    variables: dict[str, h5py.Dataset | None]  # None: two variables claim the name
    path: str


@contextlib.contextmanager
def _opened(path: str | os.PathLike, *, check_crc: bool) -> Iterator[_ModelFile]:
    """Opens a model file; any failure below becomes a one-line ModelFileError."""
    path = Path(path)
    try:
        with formats.open_model_file(path, check_crc=check_crc) as opened:
            yield _ModelFile(opened)
    except ModelFileError:
        raise
    except Exception as e:  # h5py on damaged data: the file is damaged.
        raise ModelFileError(f"{path}: cannot read the model: {one_line(e)}") from None


class _ModelFile:
    """An open model file: its format, version, and config layers with their weights."""

    def __init__(self, opened: formats.ModelFile) -> None:
        self.path = opened.path
        self.format = opened.format
        self.keras_version = opened.keras_version
        self.entries: list[_Entry] = []
        if self.format == KERAS:
            self._open_keras(opened)
        else:
            self._open_h5(opened)

    def error(self, message: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {message}")

    # .keras archives

    def _open_keras(self, opened: formats.ModelFile) -> None:
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
            self.entries.append(_Entry(name, class_name, layer_config, variables, path))
            children = _model_layers(layer_config, self, nested=True)
            if children is not None:
                inner = _container(group) if group is not None else None
                self._walk_keras(children, inner, f"{path}/")

    # .h5 files

    def _open_h5(self, opened: formats.ModelFile) -> None:
        root = _group(opened.weights, "model_weights")
        if root is None:
            raise self.error("has a model config but no `model_weights` group.")
        for layer_config, name, class_name in _model_layers(opened.config, self):
            variables = _h5_variables(_group(root, name))
            children = _model_layers(layer_config, self, nested=True)
            # A nested model's group holds its layers' variables, not its own.
            own = variables.get(None, {}) if children is None else {}
            self.entries.append(_Entry(name, class_name, layer_config, own, name))
            if children is not None:
                self._walk_h5_nested(children, variables, (name,))

    def _walk_h5_nested(self, layers: list[tuple], variables: dict, prefix: tuple) -> None:
        for layer_config, name, class_name in layers:
            path = (*prefix, name)
            children = _model_layers(layer_config, self, nested=True)
            own = _owned(variables, path) if children is None else {}
            self.entries.append(_Entry(name, class_name, layer_config, own, "/".join(path)))
            if children is not None:
                self._walk_h5_nested(children, variables, path)

    # Reading

    def layer_info(self, entry: _Entry) -> LayerInfo:
        if entry.class_name not in (_DENSE, _MASKED):
            kernel = entry.variables.get("kernel")
            shape = None if kernel is None else tuple(int(n) for n in kernel.shape)
            return LayerInfo(entry.name, entry.class_name, shape, 0, 0, entry.path)
        variables = self._dense_variables(entry)
        if variables is None:  # never built: no weights yet
            return LayerInfo(entry.name, entry.class_name, None, 0, 0, entry.path)
        shape = tuple(int(n) for n in variables["kernel"].shape)
        pinned_kernel = pinned_bias = 0
        if entry.class_name == _MASKED:
            pinned_kernel = _count_true(variables["kernel_pin_mask"])
            if "bias_pin_mask" in variables:
                pinned_bias = _count_true(variables["bias_pin_mask"])
        return LayerInfo(
            entry.name, entry.class_name, shape, pinned_kernel, pinned_bias, entry.path
        )

    def dense_weights(self, entry: _Entry) -> DenseWeights | None:
        variables = self._dense_variables(entry)
        if variables is None:
            return None
        kernel = variables["kernel"][()]
        if not np.issubdtype(kernel.dtype, np.floating):
            raise self.error(
                f"layer {entry.path!r} has a {kernel.dtype} kernel (quantized?); "
                "only floating-point kernels are supported."
            )
        bias = variables["bias"][()] if "bias" in variables else None
        kernel_mask = np.zeros(kernel.shape, bool)
        bias_mask = None if bias is None else np.zeros(bias.shape, bool)
        if entry.class_name == _MASKED:
            kernel_mask = variables["kernel_pin_mask"][()]
            kernel = np.where(kernel_mask, self._pin_value(entry, variables, "kernel"), kernel)
            if bias is not None:
                bias_mask = variables["bias_pin_mask"][()]
                bias = np.where(bias_mask, self._pin_value(entry, variables, "bias"), bias)
        arrays = [kernel, bias, kernel_mask, bias_mask]
        for array in arrays:
            if array is not None:
                array.setflags(write=False)
        return DenseWeights(entry.name, entry.class_name, kernel, bias, kernel_mask, bias_mask,
                            kernel_value=kernel, bias_value=bias, path=entry.path)

    def _pin_value(self, entry: _Entry, variables: dict, which: str) -> np.ndarray:
        value = variables[f"{which}_pin_value"][()]
        # MaskedDense refuses to load these too, so no model can compute with them.
        if not np.all(np.isfinite(value)):
            raise self.error(
                f"layer {entry.path!r}: `{which}_pin_value` holds a non-finite value."
            )
        return value.astype(variables[which].dtype)

    def _dense_variables(self, entry: _Entry) -> dict[str, h5py.Dataset] | None:
        """The datasets of a Dense/MaskedDense layer, checked against its config."""
        where = f"layer {entry.path!r} ({entry.class_name})"
        config = entry.layer_config.get("config")
        units = config.get("units") if isinstance(config, dict) else None
        use_bias = config.get("use_bias", True) if isinstance(config, dict) else None
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise self.error(f"{where} has no valid `units` in its config: {units!r}.")
        if not isinstance(use_bias, bool):
            raise self.error(f"{where} has an invalid `use_bias` in its config: {use_bias!r}.")
        variables = entry.variables
        if not variables and "build_config" not in entry.layer_config and self.format == KERAS:
            return None
        names = ["kernel"] + (["bias"] if use_bias else [])
        if entry.class_name == _MASKED:
            names += [n for n in _MASKED_NAMES if use_bias or not n.startswith("bias")]
        found = {}
        for name in names:
            dataset = variables.get(name)
            if dataset is None:
                problem = "is missing" if name not in variables else "is stored twice"
                raise self.error(f"{where}: the weight `{name}` {problem}.")
            found[name] = dataset
        if not use_bias and "bias" in variables:
            raise self.error(f"{where} has a bias, but its config says `use_bias=False`.")
        kernel = found["kernel"].shape
        expected_in = _input_dim(entry.layer_config)
        if len(kernel) != 2 or kernel[1] != units or expected_in not in (None, kernel[0]):
            expected = (expected_in if expected_in is not None else "?", units)
            raise self.error(
                f"{where}: the kernel's shape {kernel} disagrees with the config "
                f"(expected ({expected[0]}, {expected[1]}))."
            )
        if use_bias and found["bias"].shape != (units,):
            raise self.error(
                f"{where}: the bias's shape {found['bias'].shape} disagrees with the "
                f"config (expected ({units},))."
            )
        if entry.class_name == _MASKED:
            self._check_pins(found, config, where)
        return found

    def _check_pins(self, found: dict, config: dict, where: str) -> None:
        storage = config.get("pinned_kernel_values", "shared")
        value_shapes = {"shared": [()], "per_entry": [found["kernel"].shape]}.get(storage)
        if value_shapes is None:
            raise self.error(f"{where} has an invalid `pinned_kernel_values`: {storage!r}.")
        for which in ("kernel", "bias"):
            if which not in found:
                continue
            shape = found[which].shape
            mask, value = found[f"{which}_pin_mask"], found[f"{which}_pin_value"]
            if mask.shape != shape or mask.dtype != np.bool_:
                raise self.error(
                    f"{where}: `{which}_pin_mask` must be boolean of shape {shape}; "
                    f"it is {mask.dtype} of shape {mask.shape}."
                )
            allowed = value_shapes if which == "kernel" else [shape]
            if value.shape not in allowed or not np.issubdtype(value.dtype, np.floating):
                raise self.error(
                    f"{where}: `{which}_pin_value` must be floating point of shape "
                    f"{allowed[0]}; it is {value.dtype} of shape {value.shape}."
                )


def _model_layers(config: Any, model: _ModelFile, *, nested: bool = False) -> list | None:
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
    if class_name == _MASKED:
        return stored
    if class_name == _DENSE:
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


def _input_dim(layer_config: dict) -> int | None:
    build = layer_config.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if isinstance(shape, list) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


def _count_true(dataset: h5py.Dataset) -> int:
    """Counts True entries block by block: a mask is never read whole."""
    if dataset.ndim == 0:
        return int(bool(dataset[()]))
    if dataset.size == 0:
        return 0
    rows = dataset.shape[0]
    step = max(1, _COUNT_BLOCK // max(1, dataset.size // rows))
    return sum(int(np.count_nonzero(dataset[i : i + step])) for i in range(0, rows, step))


def _snake_case(name: str) -> str:
    # Mirrors keras.src.utils.naming.to_snake_case, which names the groups.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
