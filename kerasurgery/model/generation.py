"""A pinned KerasHub task generates at the plain task's speed: its pins are folded once per call.

A pinned layer forms its effective weight, `where(mask, value, raw)`, each
time it reads it. Training needs that (the raw weight moves every step), but
`generate` runs the model once per token over weights that do not change, and
KerasHub's samplers run that loop with the model's variables as loop state
(`Sampler.run_loop` on JAX), so the select would run again for every token and
every pinned weight: XLA on CPU does not hoist it out of the loop. At ~100M
parameters that made greedy decoding 1.57x slower than the plain model.

So a pinned task's `generate_step` runs inside `layers.folded`: each pinned
layer forms its effective weights once, where `generate_step` starts (inside
the traced function, from the traced variable values), and the loop reads
them as they are. The tokens are the same bit for bit: the same select over
the same values, once instead of per token.

The task keeps its class (`freeze` returns the input's class): the folding
`generate_step` is set on the instance, in front of the class's own, by
`freeze` and `load_model` (the pruning callbacks work on layers `freeze`
pinned), and removed by `strip`. A task loaded with plain `keras.saving.load_model`
generates the same tokens without it, at the unfolded speed.
"""

from __future__ import annotations

import types
from typing import Any

import keras

from kerasurgery import layers as layers_lib
from kerasurgery.model.walk import walk_layers

_STEP = "generate_step"


def fold_pins_in_generate(model: keras.Model) -> None:
    """Makes `model.generate` fold its pins once per call, if it is a task with pinned layers.

    Does nothing for a model without `generate_step` (not a KerasHub
    generative task) or without pinned layers; idempotent. Drops the traced
    `generate_function`, so the next `generate` traces the folding step.
    """
    if not callable(getattr(type(model), _STEP, None)):
        return
    pinned = any(layers_lib.is_pinned(layer) for _, layer in walk_layers(model))
    if not pinned:
        unfold_pins_in_generate(model)
        return
    if _STEP not in model.__dict__:
        object.__setattr__(model, _STEP, types.MethodType(_folded_generate_step, model))
        _forget_generate_function(model)


def unfold_pins_in_generate(model: keras.Model) -> None:
    """Gives `model` back its class's `generate_step` (after `strip`)."""
    if model.__dict__.pop(_STEP, None) is not None:
        _forget_generate_function(model)


def _folded_generate_step(model: keras.Model, *args: Any, **kwargs: Any) -> Any:
    # The layers are found at each trace, so layers pinned after this was
    # set (a pruning callback pinning more) are folded too.
    pinned = [layer for _, layer in walk_layers(model) if layers_lib.is_pinned(layer)]
    with layers_lib.folded(pinned):
        return getattr(type(model), _STEP)(model, *args, **kwargs)


def _forget_generate_function(model: keras.Model) -> None:
    if getattr(model, "generate_function", None) is not None:
        model.generate_function = None
