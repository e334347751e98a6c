"""`prune_units`: structured pruning by dependency group, removable by `shrink`."""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from kerasurgery import pruning, rules
from kerasurgery.errors import NothingPinnedWarning, PinError
from kerasurgery.kinds import Axes
from kerasurgery.model.groups import Group, Member, dependency_groups
from kerasurgery.model.walk import walk_layers
from kerasurgery.pins import AxisRule, Pin

# Statistics, not learned: they say nothing of a unit's importance.
_NOT_SCORED = ("moving_mean", "moving_variance")
# What a following normalization multiplies and adds: pinned at 0.0 on the
# channel, so that a pruned channel leaves it at exactly zero in training as
# in inference (whatever the batch statistics), and fine-tuning cannot revive it.
_SCALE_OFFSET = ("gamma", "beta")


def prune_units(
    model: keras.Model, fraction: float, *, norm: int = 2, layers: str | Sequence[str] = "*"
) -> keras.Model:
    """Pins the units of smallest norm of each dependency group at zero.

    For each group that pins can make removable (`Group.prunable`), its units
    are ranked by the L1 or L2 norm of every entry they own (the producers'
    kernel columns and biases, the following normalizations' gamma and beta,
    the consumers' input rows: Torch-Pruning's group importance, Fang et al.
    2023, eq. 3 with the norm in place of the saliency), and exactly
    `round(fraction * units)` of them (ties: the lower unit) are pruned: the
    producers' kernel columns and bias entries, and a depthwise convolution's
    bias on the channel, are pinned at 0.0 (`ks.freeze` with `ks.Pin`
    masks); a residual group's units count once for all its branches. A
    following `BatchNormalization`'s gamma and beta are pinned at 0.0 on the
    channel (`ks.rules.units`), so the channel's normalized output is exactly
    0.0 in training and inference and stays so through fine-tuning.

    Args:
        model: A built Functional or Sequential model.
        fraction: Between 0 and 1: the fraction of each group's units to prune.
        norm: 1 or 2.
        layers: A layer path, name or glob (or several): the groups one of whose
            producers matches are pruned. `"*"` (default): every group.

    Returns:
        A new model (`ks.freeze`'s copy) in which every pruned unit is exactly
        zero wherever it is read, so that `ks.shrink` removes it. With nothing
        to prune (`round(fraction * units)` is 0 everywhere), `model` itself,
        with a `NothingPinnedWarning`.

    Raises:
        PinError: `fraction` is not in [0, 1] or `norm` is not 1 or 2.
        KerasurgeryError: `model` is not a built Functional or Sequential model.
    """
    fraction = pruning.checked_fraction(fraction)
    norm = checked_norm(norm)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    groups, live = selected_groups(model, patterns)
    pins = unit_pins(groups, live, [round(fraction * g.units) for g in groups], norm)
    if not pins:
        warnings.warn(NothingPinnedWarning(
            ", ".join(patterns), f"prune_units({fraction})",
            sum(len(g.producers) for g in groups),
        ), stacklevel=2)
        return model
    from kerasurgery.model.surgery import freeze

    return freeze(model, pins)


def checked_norm(norm: object) -> int:
    """`norm` if it is 1 or 2; else `PinError`."""
    if norm not in (1, 2) or isinstance(norm, bool):
        raise PinError(f"Expected norm 1 or 2. Received: {norm!r}")
    return int(norm)


def selected_groups(
    model: keras.Model, patterns: Sequence[str]
) -> tuple[list[Group], dict[str, keras.layers.Layer]]:
    """The prunable groups of `model` one of whose producers matches a pattern,
    and path -> layer of every layer of `model`."""
    live = dict(walk_layers(model))
    groups = [g for g in dependency_groups(model) if g.prunable and _selected(g, patterns, live)]
    return groups, live


def unit_pins(
    groups: Sequence[Group], live: dict[str, keras.layers.Layer], counts: Sequence[int], norm: int
) -> dict[str, AxisRule]:
    """Path -> the rule that pins, at 0.0, the `counts[i]` units of smallest
    norm of `groups[i]` (`group_norms`) wherever they are read or made.

    Shared by `prune_units` and the structured `GradualPruning`: one ranking,
    one set of pins. Units already removable (pinned by an earlier call) count
    towards `counts[i]` and are pinned again, so a growing count only adds units.
    """
    masks: dict[tuple[str, str], np.ndarray] = {}
    channels: dict[str, set[int]] = {}
    for group, count in zip(groups, counts):
        if not count:
            continue
        # Units already removable (pinned at zero by an earlier pass) stay chosen
        # and count; the rest are ranked.
        done = np.array(group.removable, bool)
        need = max(count - int(done.sum()), 0)
        scores = group_norms(group, live, norm)
        new = pruning.smallest_entries([scores], need, [~done])[0]
        chosen = np.flatnonzero(new | done).tolist()
        for member in group.members:
            indices = [i for unit in chosen for i in member.indices[unit]]
            if member.weight in _SCALE_OFFSET:
                channels.setdefault(member.layer, set()).update(indices)
            elif _is_pinned_part(member, group, live):
                weight = _numpy(live[member.layer], member.weight)
                mask = masks.setdefault(
                    (member.layer, member.weight), np.zeros(weight.shape, bool)
                )
                where: list = [slice(None)] * weight.ndim
                where[member.axis] = indices
                mask[tuple(where)] = True
    pins: dict[str, AxisRule] = {
        path: _Columns(masks.get((path, _main_weight(live[path]))), masks.get((path, "bias")))
        for path in dict.fromkeys(path for path, _ in masks)
    }
    # A normalization's scale and offset: both pinned on the channel.
    pins.update({path: rules.units(sorted(c), value=0.0) for path, c in channels.items()})
    return pins


@dataclasses.dataclass(frozen=True, eq=False)
class _Columns(AxisRule):
    """Pins the given output columns and bias entries of one layer at 0.0.

    A rule rather than a `Pin`: a separable convolution's units are its
    pointwise kernel's, and a `Pin`'s kernel is a layer's first weight (the
    depthwise kernel); a rule is shown each kernel with its axes.
    """

    kernel: np.ndarray | None
    bias: np.ndarray | None

    def __call__(self, kernel: np.ndarray, bias: np.ndarray | None, axes: Axes | None = None) -> Pin:
        ours = (
            self.kernel is not None and kernel.shape == self.kernel.shape
            and (axes is None or bool(axes.units))
        )
        return Pin(
            kernel=self.kernel if ours else None, kernel_value=0.0 if ours else None,
            bias=self.bias, bias_value=None if self.bias is None else 0.0,
        )


def group_norms(group: Group, layers: dict[str, keras.layers.Layer], norm: int) -> np.ndarray:
    """The L1 or L2 norm of every unit of `group` over all the entries it owns."""
    power = np.zeros(group.units, np.float64)
    for member in group.members:
        if member.weight in _NOT_SCORED:
            continue
        weight = np.abs(_numpy(layers[member.layer], member.weight).astype(np.float64))
        for unit, indices in enumerate(member.indices):
            entries = np.take(weight, list(indices), axis=member.axis)
            power[unit] += np.sum(entries if norm == 1 else np.square(entries))
    return power if norm == 1 else np.sqrt(power)


def _is_pinned_part(member: Member, group: Group, live: dict[str, keras.layers.Layer]) -> bool:
    """A producer's output entries (`Member.output`: kernel columns / filters /
    a head's value projection, and their bias), or a depthwise convolution's
    bias on the channel.

    A producer that also reads the group (a residual branch) reads it along
    another axis of the same kernel, and a head's query and key need no pin
    once its values are zero: those members are not outputs.
    """
    return member.output


def _main_weight(layer: keras.layers.Layer) -> str:
    return "pointwise_kernel" if hasattr(layer, "pointwise_kernel") else "kernel"


def _numpy(layer: keras.layers.Layer, weight: str) -> np.ndarray:
    return ops.convert_to_numpy(getattr(layer, weight))


def _selected(group: Group, patterns: list[str], live: dict[str, keras.layers.Layer]) -> bool:
    return any(
        fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(live[path].name, p)
        for path in group.producers for p in patterns
    )
