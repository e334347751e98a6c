"""kerasurgery: pin individual weights of a Keras 3 model to constants, and prune.

    import kerasurgery as ks
    frozen = ks.freeze(model, {"dense_1": ks.rules.zeros()})

Importing this package is cheap: it does not import TensorFlow or Keras. The
names that need Keras are loaded on first use, and `MaskedDense` is registered
with Keras as soon as Keras is imported, so saved frozen models load after a
plain `import kerasurgery`.
"""

from __future__ import annotations

import importlib
from typing import Any

from kerasurgery import _registration
from kerasurgery import kinds as _kinds
from kerasurgery.errors import KerasurgeryError, KerasurgeryWarning, LayerSkippedWarning, NothingPinnedWarning
from kerasurgery.pins import Pin

__all__ = [
    "KerasurgeryError",
    "KerasurgeryWarning",
    "LayerSkippedWarning",
    "NothingPinnedWarning",
    "Pin",
    "callbacks",
    "freeze",
    "layers",
    "load_model",
    "prune",
    "prune_units",
    "rules",
    "save_model",
    "shrink",
    "strip",
    *sorted(_kinds.pinned_class_names()),
]
__version__ = "0.1.0"

_LAZY = {
    # Every pinned class (`MaskedDense`, `MaskedConv2D`, ...), from the table of kinds.
    **{name: "kerasurgery.layers" for name in _kinds.pinned_class_names()},
    "freeze": "kerasurgery.model.surgery",
    "strip": "kerasurgery.model.surgery",
    "load_model": "kerasurgery.model.saving",
    "save_model": "kerasurgery.model.saving",
    "prune": "kerasurgery.model.prune",
    "shrink": "kerasurgery.model.shrink",
    "prune_units": "kerasurgery.model.units",
    "rules": "kerasurgery.rules",
    "callbacks": "kerasurgery.callbacks",
    "layers": "kerasurgery.layers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kerasurgery' has no attribute {name!r}")
    if name in ("rules", "callbacks", "layers"):
        return importlib.import_module(module)
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)


_registration.register_when_keras_loads()
