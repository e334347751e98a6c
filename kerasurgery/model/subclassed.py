"""Rebuilding a subclassed model, whose layers are Python attributes.

A subclassed model has no graph to clone: its structure lives in `__init__`
and `call`. It can still be copied when Keras can re-create it from
`get_config()` (Keras 3 records simple constructor arguments by itself). The
copy's layers are found at the same attribute paths as the original's
(`fc1`, `blocks[2]`, `encoder.proj`), replaced there before the copy is
built, and then every weight is copied path by path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras

from kerasurgery import _keras_private
from kerasurgery.errors import KerasurgeryError, one_line
from kerasurgery.model.walk import sublayers

Layer = keras.layers.Layer


def rebuild_subclassed(
    model: keras.Model,
    replace: Callable[[Layer], Layer | None],
    copy: Callable[[Layer, Layer], None],
) -> keras.Model:
    """A copy of subclassed `model` with `replace`d layers and copied weights."""
    try:
        new = model.__class__.from_config(model.get_config())
    except Exception as e:
        raise KerasurgeryError(
            f"Cannot copy subclassed model {model.name!r} ({type(model).__name__}): "
            f"it cannot be re-created from get_config() ({one_line(e, limit=200)}). "
            "Give its class a get_config() that returns its constructor arguments."
        ) from None
    old_layers = dict(_attribute_layers(model))
    new_layers = dict(_attribute_layers(new))
    if list(old_layers) != list(new_layers):
        raise KerasurgeryError(
            f"Cannot copy subclassed model {model.name!r}: a copy made from its "
            "config does not have the same layer attributes."
        )
    replaced: dict[int, Layer] = {}
    copied: set[int] = set()
    for path, old in old_layers.items():
        if id(old) not in replaced:
            if sublayers(old):
                # A block made by the copy's constructor: only its name is off.
                new_layers[path].name = old.name
                replaced[id(old)] = new_layers[path]
            else:
                replaced[id(old)] = replace(old) or copy_layer(old)
        if replaced[id(old)] is not new_layers[path]:
            _set_attribute(new, path, new_layers[path], replaced[id(old)])
            new_layers[path] = replaced[id(old)]
    # Blocks first: a block's own build() may build its layers, which must not
    # happen after their weights are copied.
    composites = [(model, new)] + [
        (o, new_layers[p]) for p, o in old_layers.items() if sublayers(o)
    ]
    for old, layer in composites:
        config = old.get_build_config() if old.built else None
        if config is not None and not layer.built:
            layer.build_from_config(config)
    for path, old in old_layers.items():
        layer = new_layers[path]
        if id(old) in copied:
            continue
        copied.add(id(old))
        if sublayers(old):
            if not old.trainable:
                layer.trainable = False
            continue  # a block: its layers are copied at their own paths
        if old.built and not layer.built:
            layer.build_from_config(old.get_build_config())
        copy(old, layer)
        layer.trainable = old.trainable
    # Weights held directly by the model or a block (not by one of its layers).
    for old, layer in composites:
        _copy_own_weights(old, layer)
        # Built when called on data, they keep no build config: every layer
        # in them is built now, as after that first call.
        layer.built = layer.built or old.built
    new.name = model.name
    new.trainable = model.trainable
    if getattr(model, "compiled", False):
        new.compile_from_config(model.get_compile_config())
    return new


def copy_layer(layer: Layer) -> Layer:
    """A new, unbuilt layer of the same class and config (name included)."""
    try:
        return layer.__class__.from_config(layer.get_config())
    except Exception:
        # A layer that cannot be rebuilt from its config, such as a Lambda
        # under Keras' safe mode, is reused when it holds no weights: the new
        # model then shares no state with the old one through it.
        if layer.weights:
            raise
        return layer


def _own_weights(layer: Layer) -> list[keras.Variable]:
    inner = {id(v) for sub in sublayers(layer) for v in sub.weights}
    return [v for v in layer.weights if id(v) not in inner]


def _copy_own_weights(old: Layer, new: Layer) -> None:
    old_own, new_own = _own_weights(old), _own_weights(new)
    if [tuple(v.shape) for v in old_own] != [tuple(v.shape) for v in new_own]:
        raise KerasurgeryError(
            f"Cannot copy the weights of {old.name!r}: its copy holds different ones."
        )
    for source, target in zip(old_own, new_own):
        target.assign(source)


def is_subclassed(model: keras.Model) -> bool:
    """Whether `model` is neither Sequential nor Functional: its structure is its Python code."""
    return not isinstance(model, keras.Sequential) and not _keras_private.is_functional(model)


Path = tuple[Any, ...]  # attribute names on layers, keys/indices in lists and dicts


def _attribute_layers(root: Layer, prefix: Path = ()) -> Iterator[tuple[Path, Layer]]:
    """(attribute path, layer) for every layer reachable through public attributes.

    Not `walk.walk_layers`: a layer is replaced where its owner holds it
    (`_set_attribute`), so this walks the attributes that hold layers, in the
    order the instance dict has them, and yields a layer at each attribute
    that holds it. Layers that themselves hold layers (custom blocks, nested
    subclassed models) are walked too; their own weights are copied per
    sub-layer.
    """
    for name, value in _keras_private.layer_attributes(root).items():
        if name.startswith("_"):
            continue
        yield from _layers_in(value, (*prefix, name))


def _layers_in(value: Any, path: Path) -> Iterator[tuple[Path, Layer]]:
    if isinstance(value, Layer):
        yield path, value
        if not isinstance(value, keras.layers.Dense):
            yield from _attribute_layers(value, path)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _layers_in(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _layers_in(item, (*path, key))


def _set_attribute(root: Layer, path: Path, old: Layer, new: Layer) -> None:
    """Puts `new` where `old` is, keeping the owner's layer order.

    Plain `setattr` would append `new` to the owner's tracked layers and leave
    `old` there: Keras' `__delattr__` does not untrack layers.
    """
    owner: Layer = root
    node: Any = root
    for key in path[:-1]:
        node = getattr(node, key) if isinstance(node, Layer) else node[key]
        if isinstance(node, Layer):
            owner = node
    key = path[-1]
    if isinstance(node, tuple):
        raise KerasurgeryError(
            f"Cannot replace layer {old.name!r}: it sits in a tuple attribute of "
            f"{owner.name!r}. Hold the layers in a list instead."
        )
    if not isinstance(node, Layer):
        node[key] = new  # a list or dict attribute of `owner`
    else:
        _keras_private.set_untracked_attribute(owner, key, new)
    _keras_private.replace_tracked_layer(owner, old, new)
