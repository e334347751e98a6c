"""Why a model file does not load, decided by kerasurgery's own checks.

Keras says why a file does not load in prose that changes between releases.
`load_model` does not read that prose where a check can decide:

- before Keras reads the file, `check_config` refuses a config that names a
  layer class no loader can find, or connects a layer it does not define;
- when Keras has refused the file, `Failure` says why: the config does not
  rebuild, or an `.h5` file's weights do not fit the variables the config
  builds. It builds the config once more for that, with its variables as
  shapes only (`model.budget.dry_build`), once loading has failed with and
  without the training configuration: only files that do not load pay for
  the build.

What only Keras' text says (which layer of a `.keras` file refused its
weights, and why) is read by `_keras_private`, whose tests fail when Keras
changes the text.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras

from kerasurgery import _keras_private
from kerasurgery.errors import KerasurgeryError, ModelFileError, one_line
from kerasurgery.files.container import open_model_file
from kerasurgery.files.formats import H5, read_h5_list
from kerasurgery.model import budget
from kerasurgery.guards.declared import json_dicts

# Model classes that Keras' loaders know besides `keras.layers`
# (`keras.Model(inputs, outputs)` is saved as "Functional").
_MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})
# The packages whose modules Keras imports to find a class a config names.
_KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp"})
# Keras' wrappers, and the keys under which their configs hold layers.
_WRAPPERS = frozenset({"TimeDistributed", "Bidirectional"})
_HELD_LAYER_KEYS = ("layer", "forward_layer", "backward_layer")

OPT_IN = (
    "Load it with safe_mode=False (command line: --unsafe) only if you trust "
    "where the file came from."
)


def check_config(path: Path, config: dict) -> None:
    """Refuses, before Keras reads it, a model config that cannot load.

    A layer's class must be one Keras' loaders can find: registered
    (`keras.saving.register_keras_serializable`, or in a
    `keras.saving.custom_object_scope`), a Keras layer or model, or a class
    of the Keras module the config names. A Functional model's config must
    define every layer it connects.

    Raises:
        ModelFileError: naming the layer and the unknown class, or the
            connection to an undefined layer.
    """
    for node in _layer_nodes(config):
        class_name = node.get("class_name")
        if not isinstance(class_name, str):
            continue  # a malformed entry: Keras' own error says so
        unknown = _unknown_class(node, class_name)
        if unknown is not None:
            raise _cannot_load(path, f"{_named(node)}unknown layer class {class_name!r} ({unknown}).")
        missing = _undefined_connection(node)
        if missing is not None:
            raise _cannot_load(
                path, f"{_named(node)}the config connects a layer {missing!r} that it does not define."
            )


def _layer_nodes(config: Any) -> Iterator[dict]:
    """The entries of a model config that describe a layer, the model's own first.

    Those Keras' models and wrappers deserialize as layers: the config
    itself, the entries of a Sequential or Functional model's `layers`
    (Keras 2.0 lists them as the config), and the layers `TimeDistributed`
    and `Bidirectional` hold. What a custom layer's config holds is the
    custom layer's to read.
    """
    stack = [config]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield node
        inner = node.get("config")
        if isinstance(inner, list):
            stack.extend(reversed(inner))
        elif not isinstance(inner, dict):
            continue
        elif node.get("class_name") in _MODEL_CLASSES and isinstance(inner.get("layers"), list):
            stack.extend(reversed(inner["layers"]))
        elif node.get("class_name") in _WRAPPERS:
            held = [inner.get(key) for key in _HELD_LAYER_KEYS]
            stack.extend(reversed([layer for layer in held if isinstance(layer, dict)]))


def _unknown_class(node: dict, class_name: str) -> str | None:
    """Why no Keras loader can find the class of a layer entry; `None` if one can.

    Generous where Keras is strict: a class any loader could find counts as
    found, so that this check never refuses what Keras loads.
    """
    for name in (node.get("registered_name"), class_name):
        if isinstance(name, str) and keras.saving.get_registered_object(name) is not None:
            return None
    if class_name in _MODEL_CLASSES or isinstance(getattr(keras.layers, class_name, None), type):
        return None
    module = node.get("module")
    if isinstance(module, str) and module.split(".")[0] in _KERAS_PACKAGES:
        try:
            found = getattr(importlib.import_module(module), class_name, None)
        except ModuleNotFoundError:
            return f"its module {module} cannot be imported"
        except Exception:  # a broken install: Keras' own import reports it
            return None
        if isinstance(found, type):
            return None
    return "a custom layer must be registered, by importing the code that defines it, before loading"


def _undefined_connection(node: dict) -> str | None:
    """A layer name a Functional model's config connects but does not define."""
    inner = node.get("config")
    if node.get("class_name") not in _MODEL_CLASSES or not isinstance(inner, dict):
        return None
    if not isinstance(inner.get("layers"), list):
        return None
    if "input_layers" not in inner and "output_layers" not in inner:
        return None  # Sequential: its layers are connected in order
    layers = [layer for layer in inner["layers"] if isinstance(layer, dict)]
    defined = {layer.get("name") for layer in layers}
    used = [name for layer in layers for name in _inbound_names(layer.get("inbound_nodes"))]
    used += [name for key in ("input_layers", "output_layers") for name in _ends(inner.get(key))]
    return next((name for name in used if name not in defined), None)


def _inbound_names(nodes: Any) -> Iterator[str]:
    """The layers a layer entry's `inbound_nodes` connect it to."""
    if not isinstance(nodes, list):
        return
    for node in nodes:
        if isinstance(node, dict):
            # Keras 3: the call's arguments, with tensors as `__keras_tensor__`
            # entries whose `keras_history` is [layer, node, tensor].
            for entry in json_dicts(node):
                history = entry.get("config", {}).get("keras_history") if (
                    entry.get("class_name") == "__keras_tensor__"
                    and isinstance(entry.get("config"), dict)) else None
                if isinstance(history, list) and history and isinstance(history[0], str):
                    yield history[0]
        elif isinstance(node, list):
            # Keras 2: [[layer, node, tensor, kwargs], ...]
            for tensor in node:
                if isinstance(tensor, list) and tensor and isinstance(tensor[0], str):
                    yield tensor[0]


def _ends(value: Any) -> Iterator[str]:
    """The layers named by `input_layers` / `output_layers`: [layer, node, tensor] each."""
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and all(
        isinstance(n, int) for n in value[1:]
    ):
        yield value[0]
    elif isinstance(value, list):
        for item in value:
            yield from _ends(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _ends(item)


def _named(node: dict) -> str:
    inner = node.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return f"layer {name!r}: " if isinstance(name, str) else ""


class Failure:
    """A file Keras did not load, and kerasurgery's checks of why.

    Args:
        path: The file.
        fmt: Its format.
        config: Its model config.
        safe_mode: The `safe_mode` it was loaded with.
    """

    def __init__(self, path: Path, fmt: str, config: dict, *, safe_mode: bool) -> None:
        self.path = path
        self.fmt = fmt
        self.config = config
        self.safe_mode = safe_mode

    def about_the_model(self, error: BaseException) -> KerasurgeryError | None:
        """The error to raise when `error` is, at first sight, about the model
        itself (loading without the training configuration cannot fix it);
        `None` otherwise. Builds nothing: a file whose training configuration
        does not restore pays no check."""
        if isinstance(error, KerasurgeryError):
            return type(error)(f"{self.path}: {error}")
        if _keras_private.is_safe_mode_refusal(error):
            return ModelFileError(
                f"{self.path}: refused by safe mode, the file would run code "
                f"({one_line(error)}). {OPT_IN}"
            )
        failed = _keras_private.failed_object(error)
        if failed is not None:
            return _cannot_load(self.path, _failed_layer(*failed))
        return None

    def error(self, error: BaseException) -> KerasurgeryError:
        """The one-line error to raise for `error`, from the last attempt to load."""
        found = self.about_the_model(error)
        if found is not None:
            return found
        if isinstance(error, KeyError):
            # Raised bare by Keras and h5py for a config key or HDF5 entry that is not there.
            return _cannot_load(self.path, f"the file is malformed: it lacks the entry {one_line(error)}.")
        try:
            model = budget.dry_build(self.config, self.fmt, safe_mode=self.safe_mode)
        except Exception:  # Any error of user or Keras code: the config does not rebuild.
            cause = _keras_private.deserialization_cause(error)
            return _cannot_load(self.path, f"the model config does not rebuild: {one_line(cause)}")
        if self.fmt == H5:
            mismatch = _h5_mismatch(self.path, model)
            if mismatch is not None:
                return _cannot_load(self.path, mismatch)
        return _cannot_load(self.path, one_line(error))


def _failed_layer(class_name: str, name: str, detail: str) -> str:
    """What a layer of a `.keras` file that refused its weights says, in plain words."""
    shapes = _keras_private.assigned_shapes(detail)
    if shapes is not None:
        expected, stored = shapes
        return (
            f"layer {name!r} ({class_name}): a weight is stored with shape {stored}, but "
            f"the model's config makes it {expected}."
        )
    # A pinned layer's own refusal starts with "Layer 'name': ".
    return f"layer {name!r} ({class_name}): {one_line(detail.removeprefix(f'Layer {name!r}: '))}"


def _h5_mismatch(path: Path, model: Any) -> str | None:
    """Where an `.h5` file's weights do not fit the variables of `model`, else `None`.

    Pairs them as Keras' `.h5` loader does: the model's layers that have
    weights with the file's layer groups that list `weight_names`, in order,
    and each layer's variables (trainable first) with its datasets, in order.
    """
    layers = [layer for layer in getattr(model, "layers", []) if legacy_weights(layer)]
    try:
        groups = _h5_stored_shapes(path)
    except Exception:  # a damaged file: what Keras said is all there is
        return None
    if len(groups) != len(layers):
        return (
            f"the file stores the weights of {len(groups)} layers, but the model's config "
            f"makes {len(layers)} layers with weights (layer count mismatch)."
        )
    for (group, shapes), layer in zip(groups, layers):
        variables = legacy_weights(layer)
        if len(shapes) != len(variables):
            return (
                f"layer {layer.name!r}: the file stores {len(shapes)} weights for it (in "
                f"{group!r}), but the model's config makes {len(variables)} (weight count mismatch)."
            )
        for variable, shape in zip(variables, shapes):
            if tuple(variable.shape) != shape:
                return (
                    f"layer {layer.name!r}: weight {variable.path!r} is stored with shape "
                    f"{shape}, but the model's config makes it {tuple(variable.shape)}."
                )
    return None


def _h5_stored_shapes(path: Path) -> list[tuple[str, list[tuple[int, ...]]]]:
    """(layer group, [dataset shape, ...]) of each group of an `.h5` file that lists `weight_names`."""
    with open_model_file(path, H5, check_crc=False) as opened:
        root = opened.weights["model_weights"] if "model_weights" in opened.weights else opened.weights
        groups = []
        for group in read_h5_list(root, "layer_names"):
            names = read_h5_list(root[group], "weight_names")
            if names:
                groups.append((group, [tuple(root[group][name].shape) for name in names]))
        return groups


def legacy_weights(layer: keras.layers.Layer) -> list:
    """A layer's variables in the order Keras' `.h5` format stores and loads them."""
    return layer.trainable_weights + layer.non_trainable_weights


def _cannot_load(path: Path, detail: str) -> ModelFileError:
    return ModelFileError(f"{path}: cannot load the model: {detail}")
