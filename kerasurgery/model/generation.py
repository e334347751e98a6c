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

On JAX not even once per call: before each `generate`, every pinned layer's
raw weights are made to hold their effective weights (`hold_effective`, a
select written over the raw buffer, skipped for weights whose arrays have
not changed since: JAX replaces an array on every assign), and the traced
step reads them as they are. Repeated calls cost what the plain task costs;
the first call after training pays one select per changed weight. (A
trainable raw weight changed at its pinned entries changes nothing the
layer computes: it reads the pinned value there while training.) On the
other backends, whose variables are written in place so that an unchanged
weight cannot be told, the weights are formed once per call.

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
_GENERATE = "generate"


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
        object.__setattr__(model, _GENERATE, types.MethodType(_held_generate, model))
        _forget_generate_function(model)


def unfold_pins_in_generate(model: keras.Model) -> None:
    """Gives `model` back its class's `generate_step` (after `strip`)."""
    model.__dict__.pop(_GENERATE, None)
    if model.__dict__.pop(_STEP, None) is not None:
        _forget_generate_function(model)


def _held_generate(model: keras.Model, *args: Any, **kwargs: Any) -> Any:
    if keras.backend.backend() == "jax":
        for layer in _pinned(model):
            layer.hold_effective()
    return getattr(type(model), _GENERATE)(model, *args, **kwargs)


def _folded_generate_step(model: keras.Model, *args: Any, **kwargs: Any) -> Any:
    # What the layers hold (on JAX, `_held_generate` held them just before)
    # is read as it is; everything else is formed once, here.
    with layers_lib.folded(_pinned(model), held=True):
        return getattr(type(model), _STEP)(model, *args, **kwargs)


def _pinned(model: keras.Model) -> list:
    # Found at each call, so layers pinned after the methods were set are included.
    return [layer for _, layer in walk_layers(model) if layers_lib.is_pinned(layer)]


def _forget_generate_function(model: keras.Model) -> None:
    if getattr(model, "generate_function", None) is not None:
        model.generate_function = None
