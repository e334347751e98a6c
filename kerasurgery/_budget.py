"""The weights a model config would make Keras create, counted without creating them.

Keras builds every layer a config declares, and fills every variable with its
initializer, before it reads one stored weight: a config of a few hundred
bytes that declares a 50000 x 50000 `EinsumDense`, or a KerasHub backbone
with a vocabulary of a billion tokens, makes it allocate tens of gigabytes.
`formats.declared_weight_entries` counts, without Keras, the kinds whose
sizes a config states; every other layer (EinsumDense, recurrent layers,
attention, KerasHub and custom layers) only shows its sizes when it is built.

Where the config states every size (`formats.exact_weight_entries`:
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

from kerasurgery.formats import H5, check_declared_weights, exact_weight_entries

_DEFERRED = "uninitialized_variables"  # keras/src/backend/common/variables.py


def check_buildable(path: Path, config: dict, fmt: str, stored: int, *, safe_mode: bool) -> None:
    """Refuses a config whose model would hold far more weights than the file stores.

    Raises:
        ModelFileError: the built model's weight entries exceed what
            `formats.check_declared_weights` allows for `stored` entries.
    """
    declared = exact_weight_entries(config)  # the config says it all: no build needed
    if declared is None:
        declared = built_weight_entries(config, fmt, safe_mode=safe_mode)
    if declared is not None:
        check_declared_weights(path, config, stored, declared)


def built_weight_entries(config: dict, fmt: str, *, safe_mode: bool) -> int | None:
    """The weight entries of the model `config` builds, or `None` when it
    cannot be built here (the real load then reports why)."""
    # A model class that compiles itself when made is known (registered) only
    # once Keras has imported its module, which it does while deserializing:
    # a first attempt that fails is retried once, asking such classes not to.
    for attempt in range(2):
        # Keras' deserializers empty the dicts they read: build from a copy,
        # without the training config (an optimizer's variables cannot be
        # deferred, and they are not what is counted).
        built = {k: copy.deepcopy(v) for k, v in config.items() if k != "compile_config"}
        if attempt and not _skip_compiling(built):
            return None
        try:
            with _deferred_variables(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = _build(built, fmt, safe_mode=safe_mode)
                variables = list(getattr(model, "weights", None) or ())
            return sum(math.prod(v.shape) for v in variables)
        except Exception:  # Any error in user or Keras code: the real load reports it.
            continue
    return None


def _build(config: dict, fmt: str, *, safe_mode: bool) -> Any:
    if fmt == H5:
        # The `.h5` loader's own deserializer: it reads Keras 2 configs too.
        from keras.src.legacy.saving import saving_utils
        from keras.src.saving.serialization_lib import SafeModeScope

        with SafeModeScope(safe_mode):
            return saving_utils.model_from_config(config)
    return keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)


def _skip_compiling(config: Any) -> bool:
    """Asks the models that compile themselves when made (KerasHub tasks:
    `Task(compile=True)`) not to: an optimizer's variables cannot be deferred.
    Whether any was asked."""
    asked, stack = False, [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            inner, registered = node.get("config"), node.get("registered_name")
            if isinstance(inner, dict) and isinstance(registered, str) and "compile" not in inner:
                cls = keras.saving.get_registered_object(registered)
                if isinstance(cls, type) and any(_takes_compile(c) for c in cls.__mro__):
                    inner["compile"], asked = False, True
            stack.extend(node.values())
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
    from keras.src.backend.common import global_state

    waiting = list(global_state.get_global_attribute(_DEFERRED, [], set_to_default=True))
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute(_DEFERRED, waiting)
