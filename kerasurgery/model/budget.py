"""The weights a model config would make Keras create, counted without creating them.

Keras builds every layer a config declares, and fills every variable with its
initializer, before it reads one stored weight: a config of a few hundred
bytes that declares a 50000 x 50000 `EinsumDense`, or a KerasHub backbone
with a vocabulary of a billion tokens, makes it allocate tens of gigabytes.
`declared.declared_weight_entries` counts, without Keras, the kinds whose
sizes a config states; every other layer (EinsumDense, recurrent layers,
attention, KerasHub and custom layers) only shows its sizes when it is built.

Where the config states every size (`declared.exact_weight_entries`:
Sequential and Functional models of built-in layers that `_shapes` sizes,
plain or pinned, such as the Keras Applications CNNs), that count is exact
and nothing is built. Otherwise the loader builds the model once more, first, inside a
`keras.StatelessScope(initialize_variables=False)`: there Keras creates each
variable with its shape and dtype but defers its initializer (the mechanism
behind JAX's deferred variable initialization), so the build costs the
Python objects and symbolic shapes only. The shapes of the variables it made
are the exact count of what the real build will allocate. The deferred
variables are then dropped from Keras' list of variables waiting to be
initialized, so that no later scope initializes them.

A config this dry build cannot complete is passed on to the real load, which
gives its own error for a config that is wrong (a layer that reads its
weights while it is built fails in a stateless scope and nowhere else).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras

from kerasurgery import _keras_private
from kerasurgery.files import formats
from kerasurgery.files.formats import H5
from kerasurgery.guards import declared, limits
from kerasurgery.guards.declared import check_declared_weights, exact_weight_entries

def check_buildable(path: Path, config: dict, fmt: str, stored: int, *, safe_mode: bool,
                    compile: bool = True) -> None:
    """Refuses a config whose model would hold far more weights than the file stores.

    With `compile`, the metrics of the training config count too (an
    `AUC(num_thresholds=40_000_000)` holds 160M entries).

    Raises:
        ModelFileError: the built model's weight entries (and its metrics')
            exceed what `declared.check_declared_weights` allows for `stored`.
    """
    entries = exact_weight_entries(config)  # the config says it all: no build needed
    if entries is None:
        entries = built_weight_entries(config, fmt, safe_mode=safe_mode)
    if compile:
        training = config.get("compile_config") if fmt != H5 else _h5_training_config(path)
        metrics = metric_entries(training)
        if metrics:
            entries = (entries or declared.declared_weight_entries(config)) + metrics
    if entries is not None:
        check_declared_weights(path, config, stored, entries)


# Metrics whose state grows with an argument: AUC with its thresholds (and
# labels), the IoU family with the square of its classes.
_IOU = frozenset({"IoU", "MeanIoU", "OneHotIoU", "OneHotMeanIoU"})


def metric_entries(training: Any) -> int:
    """The entries of the state of the metrics (and losses) a training config
    makes: exact for `AUC` and the IoU family, the sum of the other integer
    arguments otherwise (a lower bound)."""
    total = 0
    for node in declared.json_dicts(training):
        inner = node.get("config")
        if isinstance(inner, dict) and isinstance(node.get("class_name"), str):
            name = node["class_name"]
            if name == "AUC":
                thresholds = inner.get("num_thresholds", 200)
                labels = inner.get("num_labels") if inner.get("multi_label") else 1
                total += 5 * _count(thresholds) * max(_count(labels), 1)
            elif name in _IOU:
                total += _count(inner.get("num_classes")) ** 2
            else:
                total += sum(_count(v) for v in inner.values() if _count(v) > 1)
    return total


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _h5_training_config(path: Path) -> Any:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("training_config")
        if raw is None or len(raw) > limits.MAX_CONFIG_BYTES:
            return None
        return formats.parse_json(raw.encode() if isinstance(raw, str) else bytes(raw), "training_config")
    except Exception:  # unreadable: Keras' own load reports it
        return None


def built_weight_entries(config: dict, fmt: str, *, safe_mode: bool) -> int | None:
    """The weight entries of the model `config` builds, or `None` when it
    cannot be built here (the real load then reports why)."""
    # Two things cannot be deferred: the variables of an optimizer made by a
    # model that compiles itself (its class is known, registered, only once
    # Keras has imported its module while deserializing) and the states of
    # stateful recurrent layers (made from values). A first attempt that
    # fails is retried once without them; the states are counted from the
    # config instead.
    for attempt in range(2):
        built = _copied(config)
        states = 0
        if attempt:
            asked = _skip_compiling(built)
            states = _without_states(built)
            if not asked and states is None:
                return None
        try:
            variables = _dry_build(built, fmt, safe_mode=safe_mode)[1]
            return sum(math.prod(v.shape) for v in variables) + (states or 0)
        except Exception:  # Any error in user or Keras code: the real load reports it.
            continue
    return None


def dry_build(config: dict, fmt: str, *, safe_mode: bool) -> Any:
    """The model `config` makes, built with its variables as shapes only.

    Nothing is allocated and nothing is left for Keras to initialize; the
    variables have the shapes, dtypes and paths the real build gives them.
    A model that compiles itself when made is asked not to (`_skip_compiling`).

    Raises:
        Exception: whatever building the config raises.
    """
    try:
        return _dry_build(_copied(config), fmt, safe_mode=safe_mode)[0]
    except Exception:
        built = _copied(config)
        if not _skip_compiling(built):
            raise
        return _dry_build(built, fmt, safe_mode=safe_mode)[0]


def _copied(config: dict) -> dict:
    # Keras' deserializers empty the dicts they read: build from a copy,
    # without the training config (an optimizer's variables cannot be
    # deferred, and they are not what is counted).
    return {k: copy.deepcopy(v) for k, v in config.items() if k != "compile_config"}


def _dry_build(config: dict, fmt: str, *, safe_mode: bool) -> tuple[Any, list]:
    """(the model, its variables), built inside `_deferred_variables`."""
    with _deferred_variables(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_from_config(config, fmt, safe_mode=safe_mode)
        return model, list(getattr(model, "weights", None) or ())


def _without_states(config: Any) -> int | None:
    """Makes the stateful recurrent layers of `config` stateless; the entries
    of their states (batch x units, two for LSTMs), or `None` if none was."""
    total, found = 0, False
    for node in declared.json_dicts(config):
        inner = node.get("config")
        if isinstance(inner, dict) and inner.get("stateful") is True:
            inner["stateful"], found = False, True
            build = node.get("build_config")
            shape = build.get("input_shape") if isinstance(build, dict) else None
            # A state per sample: (batch, units), or (batch, rows, cols, filters)
            # for a convolutional one (input: batch, time, rows, cols, channels).
            kept = (shape[:1] if "units" in inner else shape[:1] + shape[2:-1]) if isinstance(
                shape, list) else []
            sizes = [d for d in kept if _count(d)]
            width = inner.get("units", inner.get("filters"))
            total += 2 * math.prod(sizes) * (_count(width) or 1)
    return total if found else None


def build_from_config(config: dict, fmt: str, *, safe_mode: bool) -> Any:
    """The model `config` makes, deserialized as Keras' loader of format `fmt` does.

    Keras' deserializers empty the dicts they read: pass a copy.
    """
    if fmt == H5:
        # The `.h5` loader's own deserializer: it reads Keras 2 configs too.
        return _keras_private.legacy_model_from_config(config, safe_mode=safe_mode)
    return keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)


def _skip_compiling(config: Any) -> bool:
    """Asks the models that compile themselves when made (KerasHub tasks:
    `Task(compile=True)`) not to: an optimizer's variables cannot be deferred.
    Whether any was asked."""
    asked = False
    for node in declared.json_dicts(config):
        inner, registered = node.get("config"), node.get("registered_name")
        if isinstance(inner, dict) and isinstance(registered, str) and "compile" not in inner:
            cls = keras.saving.get_registered_object(registered)
            if isinstance(cls, type) and any(_takes_compile(c) for c in cls.__mro__):
                inner["compile"], asked = False, True
    return asked


def _takes_compile(cls: type) -> bool:
    """Whether `cls` itself defines an `__init__` with a `compile` argument
    (its subclasses pass it on through `**kwargs`)."""
    if "__init__" not in vars(cls):
        return False
    try:
        return "compile" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _deferred_variables() -> Iterator[None]:
    """Variables created inside are shapes only; none is left for Keras to
    initialize later."""
    with _keras_private.variables_left_uninitialized():
        with keras.StatelessScope(initialize_variables=False):
            yield
