"""`shrink`: remove every unit whose channel is exactly zero, with its whole group.

A unit pinned at zero (its kernel column and bias entry at 0.0, or a following
`BatchNormalization`'s gamma and beta at 0.0) adds exactly nothing wherever it
is read, so removing it and every entry of its dependency group
(`model/groups.py`) leaves every output as it was, up to the order in which
float32 sums are added. The result is a plain Keras model of the same
topology with smaller layers: `Dense` layers with fewer `units`,
convolutions with fewer `filters`, `EinsumDense` with a smaller last
`output_shape` entry, `MultiHeadAttention` with fewer `num_heads`, and the
layers that read them built on fewer channels. A layer that a model builds
from its own arguments (a KerasHub backbone's `TransformerEncoder`s) is sized
in that model's config (`intermediate_dim`), one count for every block: each
loses the fewest units any of them can lose. Where no config can say the
smaller size (a `TransformerEncoder`'s heads, whose size is
`hidden_dim // num_heads`), the units stay, pinned at zero.

A removed unit whose output is a non-zero constant (the sigmoid of a zero
input, a bias pinned at a non-zero value) is folded: the bias of each
consumer that reads it (a `Dense`, or a convolution with `valid` padding,
whose every output sees the whole window) gains the constant times the
removed kernel rows. Where a consumer cannot absorb it (`same` padding sees
zeros at the border, no bias, a normalization whose output depends on
training), the unit stays.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from kerasurgery import layers as layers_lib
from kerasurgery.errors import KerasurgeryError
from kerasurgery.model.groups import DependencyGroups, dependency_groups
from kerasurgery.model.walk import walk_layers


def shrink(model: keras.Model) -> keras.Model:
    """Returns a smaller plain Keras model without the units that are exactly zero.

    Every unit of a dependency group that is exactly zero wherever it is read
    is removed with its group: the producers' kernel columns and bias
    entries, the normalizations' entries, the consumers' input rows or
    channels, across residual sums and concatenations. One unit of each group
    stays even when all are zero, so that no layer has zero units. Units the
    graph cannot remove exactly (model outputs, channels read by layers whose
    channels it does not follow) stay.

    Args:
        model: A built Functional or Sequential model, pinned (`ks.freeze`,
            `ks.prune_units`) or plain.

    Returns:
        A new, uncompiled Keras model of the same topology and layer names,
        with no pinned layers (it loads with plain Keras), that computes what
        `model` computes up to float32 reassociation.

    Raises:
        KerasurgeryError: `model` is not a built Functional or Sequential model,
            or its config cannot be rebuilt.

    Example:

    ```python
    pruned = ks.prune_units(model, 0.5)
    small = ks.shrink(pruned)
    small.count_params() < model.count_params()  # True
    ```
    """
    groups = dependency_groups(model)
    source = _plain(model)
    holders = _config_holders(source, groups)
    removed = _same_counts(groups, removed_units(groups), holders)
    deletions = _deletions(groups, removed)
    folds = _folded_biases(source, groups, removed)
    sizes = _new_sizes(source, groups, removed, holders)
    for path in groups.reshapes:  # (1, 1, C) -> (1, 1, -1): whatever C becomes
        target = list(dict(walk_layers(source))[path].target_shape)
        sizes[path] = {"target_shape": (*target[:-1], -1)}
    config = keras.saving.serialize_keras_object(source)
    _edit_config(config["config"], "", sizes)
    try:
        # The config comes from the live model, whose own code it names:
        # nothing untrusted is deserialized.
        small = keras.saving.deserialize_keras_object(config, safe_mode=False)
    except Exception as e:
        raise KerasurgeryError(f"Could not rebuild model {model.name!r} smaller: {e}") from None
    _copy_weights(source, small, deletions, folds)
    return small


def removed_units(groups: DependencyGroups) -> dict[tuple[str, ...], list[int]]:
    """The units `shrink` removes from each group (keyed by its producers).

    All the removable units of a group but, when every unit is removable, the
    last one, which stays so that the producers keep a unit.
    """
    removed = {}
    for group in groups:
        units = group.removable_units()
        if len(units) == group.units:
            units = units[:-1]
        if units:
            removed[group.producers] = units
    return removed


def _config_holders(
    model: keras.Model, groups: DependencyGroups
) -> dict[str, tuple[str, str] | None]:
    """Producer path -> (the path of the config that sizes it, the entry), or
    None where no config can say its new size.

    A layer's own config sizes it, unless the innermost model holding it is
    rebuilt from its own arguments (a KerasHub backbone: `intermediate_dim`
    and `num_heads` for every `TransformerEncoder` it makes), which then
    must name the entry. The model itself is the path "".
    """
    layers = {"": model, **dict(walk_layers(model))}
    configs: dict[str, dict] = {}  # a Functional model's config lists every layer: once each

    def config(path: str) -> dict:
        if path not in configs:
            configs[path] = layers[path].get_config()
        return configs[path]

    found: dict[str, tuple[str, str] | None] = {}
    for producer, sized in groups.sizes.items():
        if sized is None:
            found[producer] = None
            continue
        path, key = sized
        holder = path
        parts = path.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            enclosing = "/".join(parts[:depth])
            if isinstance(layers.get(enclosing), keras.Model):
                if not isinstance(config(enclosing).get("layers"), list):
                    holder = enclosing
                break
        found[producer] = (holder, key) if key in config(holder) else None
    return found


def _same_counts(
    groups: DependencyGroups,
    removed: dict[tuple[str, ...], list[int]],
    holders: dict[str, tuple[str, str] | None],
) -> dict[tuple[str, ...], list[int]]:
    """Removes from each group only what one config entry can say for all.

    Groups sized by the same entry (every block of a backbone) lose the
    fewest units any of them can lose; a group no config can size loses none.
    Keeping a removable unit is always exact: it stays zero.
    """
    keys = {group.producers: {holders[m.layer] for m in group.members
                              if m.output and m.weight != "bias"}
            for group in groups}
    fewest: dict[tuple[str, str] | None, int] = {}
    for producers, found in keys.items():
        for key in found:
            fewest[key] = min(fewest.get(key, 1 << 62), len(removed.get(producers, [])))
    fewest[None] = 0
    kept = {}
    for producers, units in removed.items():
        count = min([fewest[key] for key in keys[producers]], default=len(units))
        if count:
            kept[producers] = units[:count]
    return kept


def _plain(model: keras.Model) -> keras.Model:
    if any(layers_lib.is_pinned(layer) for _, layer in walk_layers(model)):
        from kerasurgery.model.surgery import strip

        return strip(model)
    return model


def _deletions(
    groups: DependencyGroups, removed: dict[tuple[str, ...], list[int]]
) -> dict[tuple[str, str], dict[int, list[int]]]:
    """(layer path, weight) -> {axis: indices to delete} over every removed unit.

    A weight may be cut along two axes: a residual branch's kernel reads the
    group it also writes.
    """
    found: dict[tuple[str, str], dict[int, set[int]]] = {}
    for group in groups:
        for unit in removed.get(group.producers, []):
            for member in group.members:
                axes = found.setdefault((member.layer, member.weight), {})
                axes.setdefault(member.axis, set()).update(member.indices[unit])
    return {
        key: {axis: sorted(indices) for axis, indices in axes.items()}
        for key, axes in found.items()
    }


def _folded_biases(
    model: keras.Model, groups: DependencyGroups, removed: dict[tuple[str, ...], list[int]]
) -> dict[str, np.ndarray]:
    """Consumer path -> what its bias gains from the constants of the removed units."""
    layers = dict(walk_layers(model))
    gains: dict[str, np.ndarray] = {}
    for group in groups:
        for unit in removed.get(group.producers, []):
            for fold in group.folds[unit]:
                kernel = ops.convert_to_numpy(layers[fold.layer].kernel).astype(np.float64)
                rows = np.take(kernel, list(fold.positions), axis=kernel.ndim - 2)
                values = np.asarray(fold.values).reshape(-1, 1)
                gain = (rows * values).sum(axis=tuple(range(kernel.ndim - 1)))
                gains[fold.layer] = gains.get(fold.layer, 0.0) + gain
    return gains


def _new_sizes(
    model: keras.Model,
    groups: DependencyGroups,
    removed: dict[tuple[str, ...], list[int]],
    holders: dict[str, tuple[str, str] | None],
) -> dict[str, dict[str, Any]]:
    """Config path -> the entries that say the new unit counts.

    A count falls by the producer's output entries the removed units hold
    (a unit coupled across a grouped convolution's groups holds several); a
    shape entry (`EinsumDense`'s `output_shape`) counts them in its last entry.
    """
    layers = {"": model, **dict(walk_layers(model))}
    sizes: dict[str, dict[str, Any]] = {}
    for group in groups:
        units = removed.get(group.producers, [])
        for member in group.members:
            if not units or not member.output or member.weight == "bias":
                continue
            path, key = holders[member.layer]
            weight = getattr(layers[member.layer], member.weight)
            count = weight.shape[member.axis] - sum(len(member.indices[u]) for u in units)
            old = sizes.get(path, {}).get(key)
            if old is None:
                old = layers[path].get_config()[key]
            sizes.setdefault(path, {})[key] = (
                [*old[:-1], count] if isinstance(old, (list, tuple)) else count)
    return sizes


def _edit_config(config: dict, path: str, sizes: dict[str, dict[str, Any]]) -> None:
    """Puts the new sizes into a serialized model's config, at any depth:
    the layer lists of Functional and Sequential models, and the serialized
    objects a model's arguments hold (a KerasHub task's `backbone`)."""
    if path in sizes:
        config.update(sizes[path])
    nested = [entry for entry in config.get("layers", None) or [] if isinstance(entry, dict)]
    nested += [value for key, value in config.items() if key != "layers" and isinstance(value, dict)]
    for entry in nested:
        inner = entry.get("config")
        if not (isinstance(inner, dict) and "class_name" in entry and "name" in inner):
            continue
        # Built on the old shapes: Keras builds each layer again when the
        # model calls it on the smaller inputs.
        entry.pop("build_config", None)
        _edit_config(inner, f"{path}/{inner['name']}" if path else inner["name"], sizes)


def _copy_weights(
    source: keras.Model,
    small: keras.Model,
    deletions: dict[tuple[str, str], dict[int, list[int]]],
    folds: dict[str, np.ndarray],
) -> None:
    old = dict(walk_layers(source))
    # Each variable under the path of the innermost layer that holds it
    # (`mha/value` for a head's kernel): the walk gives holders first.
    owner = {id(v): path for path, layer in old.items() for v in layer.weights}
    done: list[str] = []
    for path, layer in walk_layers(small):
        if isinstance(layer, keras.Model) or any(path.startswith(d + "/") for d in done):
            continue
        done.append(path)  # a layer's set_weights covers the layers it holds
        arrays = []
        for variable in old[path].weights:
            array = ops.convert_to_numpy(variable)
            holder = owner[id(variable)]
            if variable.name == "bias" and holder in folds:
                array = (array.astype(np.float64) + folds[holder]).astype(array.dtype)
            for axis, indices in deletions.get((holder, variable.name), {}).items():
                array = np.delete(array, indices, axis=axis)
            arrays.append(array)
        shapes = [tuple(v.shape) for v in layer.weights]
        if shapes != [a.shape for a in arrays]:
            raise KerasurgeryError(
                f"Layer {path!r}: the smaller layer holds weights of shapes {shapes}, "
                f"the cut weights have {[a.shape for a in arrays]}."
            )
        layer.set_weights(arrays)
