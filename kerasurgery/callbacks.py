"""Keras callbacks: `GradualPruning` (magnitude pruning that grows during `fit`)
and `ModelCheckpoint` (checkpoints that keep the pins of layers at any depth)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from kerasurgery import _compat  # noqa: F401  (refuses an unsupported Keras first)

import keras
import numpy as np
from keras import ops

from kerasurgery import _plan
from kerasurgery import layers as layers_lib
from kerasurgery import pins as _pins
from kerasurgery import pruning
from kerasurgery.errors import LayerSelectionError, PinError

__all__ = ["GradualPruning", "ModelCheckpoint"]


class GradualPruning(keras.callbacks.Callback):
    """Prunes the smallest-magnitude free entries during `fit`, on a polynomial schedule.

    The schedule is Zhu & Gupta's (2017), the one tfmot's `PolynomialDecay`
    uses: at step `t` the sparsity is

        s(t) = target + (initial - target) * (1 - (t - begin_step) / (end_step - begin_step)) ** power

    At `begin_step`, every `frequency` steps after it, and at `end_step`, each
    selected weight gets pins at 0.0 on its smallest free entries (by `|w|`;
    ties: the lower flat index) until exactly `round(s(t) * size)` of its
    entries are pinned at 0.0; already pinned entries stay pinned. Unlike
    tfmot, pruned entries are pins: from the next step on they have an exactly
    zero gradient and stay exactly 0.0 under weight decay, momentum and EMA,
    with no re-zeroing. The pins take effect within the same `fit` call on
    TensorFlow (graph and XLA), JAX and PyTorch.

    Steps are the optimizer's: `model.optimizer.iterations` when `fit`
    starts, plus the steps run since, so a second `fit` call (or a run
    resumed by `BackupAndRestore`) continues the schedule. With
    `steps_per_execution > 1`, a pruning step that falls inside an execution
    is applied when the next execution starts. The current
    sparsity (pinned zeros over all selected kernel entries) is added to the
    logs as `"sparsity"`, per batch and per epoch.

    The layers must be pinned already: `kerasurgery.freeze(model, {"*":
    kerasurgery.Pin()})` makes every supported layer pin-capable with nothing
    pinned. Kernels are pruned (both kernels of a separable convolution, an
    Embedding's matrix), biases and normalizations' scale and offset never.

    Structured (`units=True`): the schedule's sparsity is the fraction of the
    units of each dependency group (`kerasurgery.prune_units`, whose code it
    runs: the same ranking by the `norm` of everything a unit owns, the same
    pins). At each pruning step exactly `round(s(t) * units)` units of each
    prunable group whose producers `layers` matches are pinned at 0.0 (their
    producers' kernel columns and biases, the following
    `BatchNormalization`'s gamma and beta); units pinned at an earlier step
    stay pinned and count. What it prunes is removable: `kerasurgery.shrink`
    makes the smaller model afterwards. `across_layers` does not apply; the
    logged `"sparsity"` is the fraction of the selected groups' units pinned.
    A flag rather than another callback: the schedule, the steps and the
    layer patterns are the same, only what one unit of sparsity is changes
    (as `prune_units` is to `rules.smallest`).

    Args:
        target_sparsity: Final sparsity, in [0, 1].
        begin_step: First pruning step (optimizer steps).
        end_step: Last pruning step; the target is reached there.
        frequency: Steps between pruning steps (>= 1).
        initial_sparsity: Sparsity of the schedule at `begin_step`.
        power: Exponent of the schedule (3 in Zhu & Gupta).
        layers: A layer path, name or glob, or a list of them, as
            `kerasurgery.freeze` takes; `"*"` = every pinned layer.
        across_layers: One magnitude ranking over all selected layers (global
            magnitude pruning): the total sparsity follows the schedule, and
            layers end at different sparsities.
        units: Prune whole units by dependency group instead of entries.
        norm: With `units`: rank units by their L1 (1) or L2 (2) norm.

    Example:

    ```python
    model = kerasurgery.freeze(model, {"*": kerasurgery.Pin()})
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01), loss="mse")
    model.fit(x, y, epochs=10, callbacks=[
        kerasurgery.callbacks.GradualPruning(0.9, begin_step=0, end_step=1000, frequency=100)
    ])
    # Structured: half of every group's units, then the smaller model.
    model.fit(x, y, epochs=10, callbacks=[
        kerasurgery.callbacks.GradualPruning(0.5, 0, 1000, units=True)
    ])
    small = kerasurgery.shrink(model)
    ```
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int,
        end_step: int,
        frequency: int = 100,
        initial_sparsity: float = 0.0,
        power: int = 3,
        layers: str | Sequence[str] = "*",
        across_layers: bool = False,
        units: bool = False,
        norm: int = 2,
    ) -> None:
        super().__init__()
        self.target_sparsity = pruning.checked_fraction(target_sparsity, "target_sparsity")
        self.initial_sparsity = pruning.checked_fraction(initial_sparsity, "initial_sparsity")
        self.begin_step = _step(begin_step, "begin_step")
        self.end_step = _step(end_step, "end_step")
        self.frequency = _step(frequency, "frequency")
        if self.end_step < self.begin_step:
            raise PinError(
                f"Expected end_step >= begin_step. Received: begin_step={begin_step}, "
                f"end_step={end_step}"
            )
        if self.frequency < 1:
            raise PinError(f"Expected frequency >= 1. Received: frequency={frequency}")
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
            raise PinError(f"Expected a power > 0. Received: power={power!r}")
        self.power = power
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers or not all(isinstance(p, str) for p in self.layers):
            raise LayerSelectionError(
                f"Expected `layers` to be a layer path, name or glob, or a list of them. "
                f"Received: {layers!r}"
            )
        self.across_layers = bool(across_layers)
        from kerasurgery.model.units import checked_norm

        self.units = bool(units)
        self.norm = checked_norm(norm)
        if self.units and self.across_layers:
            raise PinError("GradualPruning: `across_layers` ranks entries; it does not apply "
                           "with `units=True` (each group is pruned by its own count).")
        self._selected: list[tuple[layers_lib.PinMixin, str]] = []
        self._step = 0
        self._batch_begin = 0
        self._pruned_at: int | None = None
        self._sparsity = 0.0

    # -- Keras' hooks --------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._sync()
        if self.units:
            self._selected = self._unit_weights()
        else:
            self._selected = [
                (layer, weight) for layer in self._pinned_layers() if not layer.kind.normalization
                for weight in layer.present_weights() if weight != "bias"
            ]
        for layer, weight in self._selected:
            _require_zero_pins(layer, weight)
        iterations = getattr(self.model.optimizer, "iterations", None)
        self._step = int(ops.convert_to_numpy(iterations)) if iterations is not None else 0
        self._sparsity = self._measure()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._batch_begin = batch
        due = self.pruning_step(self._step)
        # Once per pruning step; with steps_per_execution > 1 a batch call can
        # start past one, and it is caught up at the next call.
        if due is not None and due != self._pruned_at:
            self.prune(self.sparsity_at(due))
            self._pruned_at = due

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # With steps_per_execution > 1 one call covers several steps.
        self._step += batch - self._batch_begin + 1
        if logs is not None:
            logs["sparsity"] = self._sparsity

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["sparsity"] = self._sparsity

    # -- the work ------------------------------------------------------------

    def pruning_step(self, step: int) -> int | None:
        """The last pruning step at or before `step` (`None` before `begin_step`).

        Pruning steps are `begin_step`, every `frequency` steps after it, and
        `end_step`.
        """
        if step < self.begin_step:
            return None
        if step >= self.end_step:
            return self.end_step
        return self.begin_step + (step - self.begin_step) // self.frequency * self.frequency

    def sparsity_at(self, step: int) -> float:
        """The scheduled sparsity at optimizer step `step`."""
        return pruning.polynomial_sparsity(
            step, target_sparsity=self.target_sparsity, begin_step=self.begin_step,
            end_step=self.end_step, initial_sparsity=self.initial_sparsity, power=self.power,
        )

    def prune(self, sparsity: float) -> None:
        """Pins at 0.0 the smallest free entries until each selected weight
        (or, `across_layers`, all together) has `round(sparsity * size)` pinned zeros;
        with `units`, `round(sparsity * units)` units of each selected group."""
        self._sync()
        if self.units:
            self._prune_units(sparsity)
            return
        states = [layer.pin_state()[weight] for layer, weight in self._selected]
        groups = [list(range(len(states)))] if self.across_layers else [[i] for i in range(len(states))]
        for group in groups:
            chosen = [states[i] for i in group]
            size = sum(s.mask.size for s in chosen)
            need = round(sparsity * size) - sum(_pruned(s) for s in chosen)
            free = [~s.mask for s in chosen]
            need = min(need, sum(int(np.count_nonzero(f)) for f in free))
            if need <= 0:
                continue
            masks = pruning.smallest_entries([s.effective for s in chosen], need, free)
            for i, new in zip(group, masks):
                if new.any():
                    states[i] = self._pin_at_zero(*self._selected[i], states[i], new)
        self._sparsity = _sparsity(states)

    def _pin_at_zero(
        self, layer: Any, weight: str, state: _pins.WeightPins, new: np.ndarray
    ) -> _pins.WeightPins:
        """Pins the `new` entries at 0.0; returns the weight's state after."""
        mask_var, value_var = layer.pin_variables(weight)
        mask = state.mask | new
        mask_var.assign(mask)
        value = state.value
        if len(value_var.shape):  # per-entry values; a shared value is 0.0 already
            value = np.where(new, np.zeros((), value.dtype), value)
            value_var.assign(value)
        layer.settle()  # a frozen layer's raw weight holds its new pins too
        zero = np.zeros((), state.effective.dtype)
        return _pins.WeightPins(np.where(new, zero, state.effective), mask, value)

    def _measure(self) -> float:
        if self.units:
            groups = self._groups()[0]
            total = sum(g.units for g in groups)
            return sum(len(g.removable_units()) for g in groups) / total if total else 0.0
        return _sparsity([layer.pin_state()[weight] for layer, weight in self._selected])

    # -- structured: units by dependency group (`kerasurgery.prune_units`) ----

    def _groups(self) -> tuple[list, dict]:
        from kerasurgery.model.units import selected_groups

        groups, live = selected_groups(self.model, self.layers)
        if not groups:
            raise LayerSelectionError(
                f"GradualPruning: no prunable group has a producer that matches {self.layers!r} "
                "(see `kerasurgery.model.groups.dependency_groups(model)` for why)."
            )
        return groups, live

    def _unit_pins(self, counts: Any) -> tuple[dict, dict, list]:
        """`prune_units`' rules for `counts(group)` units of each selected group."""
        from kerasurgery.model.units import unit_pins

        groups, live = self._groups()
        return unit_pins(groups, live, [counts(g) for g in groups], self.norm), live, groups

    def _unit_weights(self) -> list[tuple[Any, str]]:
        """Every (layer, weight) that pruning every unit would pin; each layer must be pinned."""
        rules, live, _ = self._unit_pins(lambda g: g.units)
        for path in rules:
            if not layers_lib.is_pinned(live[path]):
                raise LayerSelectionError(
                    f"GradualPruning: layer {path!r} holds units it would prune but is not pinned: "
                    "freeze it first with kerasurgery.freeze(model, {'*': kerasurgery.Pin()})."
                )
        return [(live[path], w) for path in rules for w in live[path].present_weights()]

    def _prune_units(self, sparsity: float) -> None:
        rules, live, groups = self._unit_pins(lambda g: round(sparsity * g.units))
        for path, rule in rules.items():
            layer = live[path]
            state = layer.pin_state()
            plan = _plan.PinPlan({w: s.effective for w, s in state.items()},
                                 {w: s.mask for w, s in state.items()})
            cls = type(layer)
            # The rule's masks, as `freeze` resolves them; every value is 0.0.
            for weight, mask, _ in _plan.resolve(rule, plan, lambda w: cls.pin_axes(layer, w), path):
                new = None if mask is None else np.asarray(mask, bool) & ~state[weight].mask
                if new is not None and new.any():
                    self._pin_at_zero(layer, weight, state[weight], new)
        total = sum(g.units for g in groups)
        self._sparsity = sum(max(round(sparsity * g.units), len(g.removable_units()))
                             for g in groups) / total

    def _sync(self) -> None:
        # Under JAX, `fit` keeps the variables' values in its own state and
        # writes them back only when asked: bring them back before reading or
        # assigning, so the next step starts from what this callback assigned.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def _pinned_layers(self) -> list[Any]:
        from kerasurgery.model.walk import variable_prefix, walk_layers

        every = list(walk_layers(self.model))
        pinned = [(p, layer) for p, layer in every if layers_lib.is_pinned(layer)]
        chosen: dict[int, Any] = {}
        for pattern in self.layers:
            matched = [
                layer for path, layer in pinned
                if any(n is not None and fnmatch.fnmatchcase(n, pattern)
                       for n in (path, layer.name, variable_prefix(layer)))
            ]
            if not matched:
                unpinned = [p for p, layer in every if layers_lib.is_pinnable(layer)
                            and fnmatch.fnmatchcase(p, pattern)]
                hint = (
                    f" Layer {unpinned[0]!r} is not pinned: freeze it first with "
                    f"kerasurgery.freeze(model, {{{pattern!r}: kerasurgery.Pin()}})."
                    if unpinned else ""
                )
                listing = ", ".join(p for p, _ in pinned[:12]) or "none"
                raise LayerSelectionError(
                    f"GradualPruning: no pinned layer matches {pattern!r}. Pinned "
                    f"layers: {listing}.{hint}"
                )
            for layer in matched:
                chosen[id(layer)] = layer
        return list(chosen.values())


def _sparsity(states: list[_pins.WeightPins]) -> float:
    total = sum(state.mask.size for state in states)
    return sum(_pruned(state) for state in states) / total if total else 0.0


class ModelCheckpoint(keras.callbacks.Callback):
    """Saves the model with `kerasurgery.save_model` at the end of every epoch.

    Keras' own `ModelCheckpoint` (`model.save`) keeps the pins of the layers a
    saved config names (top level, nested models, wrappers), but the layers a
    custom layer creates in `build()` (a KerasHub `TransformerEncoder`'s Dense
    and EinsumDense layers) come back as plain layers. This callback writes
    the file's pin record too, so `kerasurgery.load_model` restores every pin.
    Each save is atomic: an interrupted run never leaves half a checkpoint.

    Args:
        filepath: A `.keras` path; it may hold `{epoch}` (1-based) and the
            names of logged metrics, formatted as Keras' `ModelCheckpoint`
            does (`"ckpt-{epoch:02d}-{loss:.3f}.keras"`).
        overwrite: Replace an existing file at the formatted path.

    Example:

    ```python
    model.fit(x, y, epochs=10, callbacks=[
        kerasurgery.callbacks.ModelCheckpoint("ckpt-{epoch}.keras"),
    ])
    model = kerasurgery.load_model("ckpt-10.keras")   # every pin, at any depth
    ```
    """

    def __init__(self, filepath: str, overwrite: bool = True) -> None:
        super().__init__()
        filepath = str(filepath)
        if not filepath.endswith(".keras"):
            raise PinError(
                "Expected a `.keras` checkpoint path (only that format carries pins at "
                f"any depth). Received: filepath={filepath!r}"
            )
        self.filepath = filepath
        self.overwrite = overwrite

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from kerasurgery.model.saving import save_model

        values = {k: _scalar(v) for k, v in (logs or {}).items()}
        try:
            path = self.filepath.format(epoch=epoch + 1, **values)
        except (KeyError, IndexError, ValueError) as e:
            raise PinError(
                f"Cannot format the checkpoint path {self.filepath!r} with epoch and "
                f"logs {sorted(values)}: {e!r}"
            ) from None
        save_model(self.model, path, overwrite=self.overwrite)


def _scalar(value: Any) -> Any:
    try:
        return float(ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return value


def _pruned(state: _pins.WeightPins) -> int:
    """Entries pinned at exactly 0.0 (either sign)."""
    return int(np.count_nonzero(state.mask & (state.effective == 0)))


def _require_zero_pins(layer: Any, weight: str) -> None:
    """New pins are at 0.0: per-entry values, or one shared value of +0.0."""
    mask_var, value_var = layer.pin_variables(weight)
    if len(value_var.shape):
        return
    value = ops.convert_to_numpy(value_var)
    if _pins.bits(value) == _pins.bits(np.zeros((), value.dtype)):
        return
    if not ops.convert_to_numpy(mask_var).any():
        value_var.assign(np.zeros((), value.dtype))  # nothing pinned: the value is free
        layer.settle()
        return
    raise PinError(
        f"GradualPruning: layer {layer.name!r} pins its {weight} entries to one shared "
        f"value, {value.item()!r}, and new pins are at 0.0. Freeze that layer with "
        "per-entry values (pin its current entries with `value=None` while they differ) "
        "or leave it out of `layers`."
    )


def _step(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise PinError(f"Expected {what} to be an integer >= 0. Received: {value!r}")
    return int(value)
