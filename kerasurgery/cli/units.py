"""What `inspect --units` and `shrink` report about removable units, as rows.

Counting removable units needs the dependency groups (`model/groups.py`),
which need the live Keras model: this module is imported only by the
commands that load one, so that plain `inspect` stays Keras-free. The rows
are plain dicts, the same for the tables and for `--json`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kerasurgery import layers as layers_lib
from kerasurgery.model.groups import DependencyGroups, Group, Member
from kerasurgery.model.walk import walk_layers


def unit_rows(model: keras.Model, groups: DependencyGroups) -> list[dict[str, Any]]:
    """One row per producing layer: its units, those pinned whole, the removable ones.

    `removable` is the group's count (a residual stage's convolutions share
    one group, and `shrink` removes its units from all of them at once);
    `left` says why none can be, where the graph leaves the group alone.
    """
    live = dict(walk_layers(model))
    rows = []
    for group in groups:
        removable = len(group.removable_units())
        for path in group.producers:
            layer = live[path]
            rows.append({
                "path": path,
                "name": layer.name,
                "class_name": type(layer).__name__,
                "units": group.units,
                "pinned_whole": _pinned_whole(layer, path, group),
                "removable": removable,
                "group": list(group.producers),
                "left": "; ".join(group.left),
            })
    return rows


def left_alone(groups: DependencyGroups) -> list[dict[str, Any]]:
    """What the graph leaves as it is, and why: groups it cannot cut, layers it does not follow."""
    rows = [{"layers": list(group.producers), "reason": "; ".join(group.left)}
            for group in groups if group.left]
    rows += [{"layers": [path], "reason": why} for path, why in groups.unknown]
    return rows


def shrink_rows(
    before: keras.Model, after: keras.Model, groups: DependencyGroups
) -> list[dict[str, Any]]:
    """One row per producing layer: units and parameters before and after `shrink`.

    The counts are read from both models (the layers' own sizes), not from
    what `shrink` meant to remove.
    """
    old, new = dict(walk_layers(before)), dict(walk_layers(after))
    rows = []
    for group in groups:
        for path in group.producers:
            rows.append({
                "path": path,
                "class_name": _plain_class(old[path]),
                "units_before": _units(old[path]),
                "units_after": _units(new[path]),
                "params_before": int(old[path].count_params()),
                "params_after": int(new[path].count_params()),
                "left": "; ".join(group.left),
            })
    return rows


def _units(layer: keras.layers.Layer) -> int:
    config = layer.get_config()
    return int(config["units"] if "units" in config else config["filters"])


def _plain_class(layer: keras.layers.Layer) -> str:
    from kerasurgery.kinds import kind_of

    name = type(layer).__name__
    return kind_of(name) or name


def _pinned_whole(layer: keras.layers.Layer, path: str, group: Group) -> int:
    """How many of the layer's output units have every entry pinned (kernel column and bias).

    Counted over the layer's own parts of the group: its output columns (the
    last kernel axis) and bias entries, whatever value they are pinned at.
    """
    if not layers_lib.is_pinned(layer):
        return 0
    masks = {weight: np.asarray(state.mask) for weight, state in layer.pin_state().items()}
    own = [m for m in group.members if m.layer == path and _is_output_part(m, masks)]
    if not own:
        return 0
    return sum(
        all(np.take(masks[m.weight], list(m.indices[unit]), axis=m.axis).all() for m in own)
        for unit in range(group.units)
    )


def _is_output_part(member: Member, masks: dict[str, np.ndarray]) -> bool:
    mask = masks.get(member.weight)
    if mask is None:
        return False
    return member.weight == "bias" or member.axis == mask.ndim - 1
