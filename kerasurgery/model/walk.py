"""The one walk of a live model: every layer at any depth, each once, with its path.

`freeze`, `strip`, saving (the pin record, the `.h5` checks), the callbacks
and the command line all find layers through `walk_layers`, so they agree on
what a model holds and on what each layer is called.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras

from kerasurgery import _keras_private
from kerasurgery import layers as layers_lib


def walk_layers(model: keras.layers.Layer) -> Iterator[tuple[str, keras.layers.Layer]]:
    """(path, layer) for every layer inside `model`, each once, depth first, in order.

    A layer's path is its name prefixed by the names of the layers that hold
    it below `model`, joined by "/": `dense` at top level, `inner/dense` in a
    nested model `inner`, `bert_backbone/transformer_layer_0/feedforward_intermediate_dense`
    inside the custom layer `transformer_layer_0`; `kerasurgery inspect`
    names layers the same way. This is Keras' `variable.path` without the
    variable name wherever the holders build their layers inside their own
    name scope (custom layers, nested Sequential models), but not for the
    layers of a nested Functional model, which Keras builds when that model
    is made, outside its scope: `inner/dense` here, `dense` in the variable
    path (`variable_prefix` gives that one; keys may use either).

    A layer held twice (a shared layer, a layer a custom block also keeps as
    an attribute) comes once, at its first path. A model lists its layers
    (`Model.layers`: no `InputLayer` for a Sequential model); any other layer
    contributes the layers it tracks.
    """
    seen: set[int] = set()
    stack = [(layer.name, layer) for layer in reversed(sublayers(model))]
    while stack:
        path, current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield path, current
        stack.extend((f"{path}/{layer.name}", layer) for layer in reversed(sublayers(current)))


def sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers `layer` holds directly, in order (`[]` for a layer holding none)."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return _keras_private.tracked_layers(layer)


def variable_prefix(layer: keras.layers.Layer) -> str | None:
    """The layer's Keras variable path without the variable name (`block/dense`).

    Read from the first variable of a layer that holds weights of its own
    (every pinnable layer); `None` for a layer without weights.
    """
    weights = layer.weights  # the layer's own variables come first
    if not weights:
        return None
    return weights[0].path.rpartition("/")[0] or None


def pinnable_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Path -> layer for every built layer of a supported kind in `model`, at any depth, in order."""
    return {
        path: layer for path, layer in walk_layers(model)
        if layers_lib.is_pinnable(layer) and layer.built
    }
