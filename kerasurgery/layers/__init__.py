"""Pinned layers: one mechanism (`PinMixin`) over every weight-bearing Keras layer.

The pinned classes (`MaskedDense`, `MaskedConv2D`, ...: one per kind of
`kerasurgery.kinds`) are built from the table of kinds. The registry maps a
Keras class to its pinned class; surgery, saving and the command line ask it
(`pinned_class_for`, `is_pinned`, `is_pinnable`) instead of naming layer
classes. Only exact Keras classes are pinnable: a subclass may compute with
its weights in ways the mixin does not know.
"""

from __future__ import annotations

import sys

import keras

from kerasurgery.layers._classes import PINNED_CLASSES
from kerasurgery.layers._mechanism import (
    PER_ENTRY, SHARED, PinMixin, folded, keyed_as_plain, pin_in_place, require_one_process, unpin_in_place,
)

# The pinned classes by name, here where files say they are (`kerasurgery.layers`).
globals().update({cls.__name__: cls for cls in PINNED_CLASSES})

__all__ = [
    "PER_ENTRY", "PINNED_CLASSES", "SHARED", "PinMixin", "folded", "is_pinnable", "is_pinned", "keyed_as_plain",
    "pin_in_place", "pinned_class_for", "require_one_process", "supported_class_names", "unpin_in_place",
    *(cls.__name__ for cls in PINNED_CLASSES),
]

_REGISTRY: dict[type, type] = {cls.keras_class: cls for cls in PINNED_CLASSES}


def pinned_class_for(layer: keras.layers.Layer) -> type | None:
    """The pinned class for `layer`'s exact Keras class (its own class if pinned), else `None`."""
    if isinstance(layer, PinMixin):
        return type(layer)
    return _REGISTRY.get(type(layer)) or _alias_of(type(layer))


def _alias_of(cls: type) -> type | None:
    """The pinned class of a kind's alias (`keras_hub.layers.ReversibleEmbedding`).

    Only modules already imported are looked at: a layer of KerasHub's class
    means KerasHub is imported, and nothing here imports it.
    """
    for pinned in PINNED_CLASSES:
        for alias in pinned.kind.aliases:
            module, _, name = alias.partition(":")
            if module in sys.modules and getattr(sys.modules[module], name, None) is cls:
                return pinned
    return None


def is_pinned(layer: object) -> bool:
    return isinstance(layer, PinMixin)


def is_pinnable(layer: object) -> bool:
    """A layer of a supported kind: pinned already, or of an exact supported Keras class
    without an option its kind refuses (`BatchNormalization(renorm=True)`)."""
    cls = pinned_class_for(layer)
    return cls is not None and not any(getattr(layer, a, False) for a in cls.kind.refused)


def supported_class_names() -> list[str]:
    """Names of the Keras classes that have a pinned class, for messages and the CLI."""
    return [cls.keras_class.__name__ for cls in PINNED_CLASSES]
