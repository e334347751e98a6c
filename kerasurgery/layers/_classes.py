"""The pinned layer classes, one per entry of the table of kinds (`kerasurgery.kinds`).

Each pinned class is its Keras class with `PinMixin` in front, so
`isinstance(layer, keras.layers.Dense)` still holds for a `MaskedDense`: code
that looks for Dense layers (Keras' own `quantize`, a KerasHub block, a user's
script) still finds them, and a layer can be pinned in place inside a parent
that keeps calling it. What could bypass the pins by reaching the raw variable
(`quantize`, `enable_lora`) is refused by the mixin.

The classes are built from the table, not written out one by one: a kind's
entry gives the weights the class pins, their axes and the class's name, so
adding a kind adds its class. Each class is registered as
`"kerasurgery>Masked<Keras class>"` and says that its module is
`kerasurgery.layers`, the module Keras writes into saved files, whichever
file defines it (as `keras.layers.Dense` is saved as `keras.layers`).
"""

from __future__ import annotations

from typing import ClassVar

import keras

from kerasurgery import kinds
from kerasurgery.kinds import Axes
from kerasurgery.layers._mechanism import PinMixin

_DOC = """A `{name}` layer with some entries of its weights pinned.

The layer computes exactly what `{name}` computes, with its weights
({weights}) replaced by their *effective* values:

    {main} = where({main}_pin_mask, {main}_pin_value, raw_{main})

The raw weight is the trainable variable; the pin masks and values are
non-trainable variables. A pinned entry therefore receives an exactly zero
gradient, and whatever an optimizer does to the raw variable there (weight
decay, momentum, EMA), the entry the layer computes with stays bit for bit
at its pinned value. Regularizers apply to the effective weights.
{note}
Constructed from `{name}`'s arguments alone, nothing is pinned; use
`kerasurgery.freeze` to pin entries of a model's layers.

Args:
    pin_storage: Maps each weight ({weights}) to `"shared"` (every pinned
        entry has one value, stored once) or `"per_entry"`.
    pinned_kernel_values: The main weight's storage, as kerasurgery 0.1.0
        configs give it.
    **kwargs: `{name}`'s arguments.

Example (every pinned class is used alike):

```python
layer = kerasurgery.MaskedDense(4, activation="relu")
y = layer(np.ones((2, 3)))  # nothing pinned: exactly like Dense(4)
layer.pins().kernel.any()   # False
```
"""


class _Pinned(PinMixin):
    """What every pinned class takes from its kind."""

    kind: ClassVar[kinds.Kind]

    def pin_axes(self, weight: str) -> Axes:
        """The input and unit axes of `weight` (one of the kind's kernels)."""
        # Also called with a plain Keras layer as `self`, before it is pinned
        # (`freeze` plans the pins first), so the kind is found by class name.
        kind = kinds.find(type(self).__name__)
        return kind.axes_of(weight, self.get_config() if kind.config_axes else None)


def _pinned_class(kind: kinds.Kind) -> type:
    keras_class = getattr(keras.layers, kind.name)
    weights = ", ".join(f"`{w}`" for w in kind.weights)
    note = f"\n{kind.note}\n" if kind.note else ""
    cls = type(kind.pinned, (_Pinned, keras_class), {
        "__module__": kinds.PINNED_MODULE,
        "__qualname__": kind.pinned,
        "__doc__": _DOC.format(name=kind.name, weights=weights, main=kind.main, note=note),
        "kind": kind,
        "pinned_weights": kind.weights,
        "state_weights": kind.state,
    })
    if cls.keras_class is not keras_class:  # set by PinMixin from the class's bases
        raise TypeError(f"{kind.pinned} does not derive from keras.layers.{kind.name}")
    return keras.saving.register_keras_serializable(package=kinds.PACKAGE, name=kind.pinned)(cls)


PINNED_CLASSES: tuple[type, ...] = tuple(_pinned_class(kind) for kind in kinds.KINDS.values())
"""The pinned classes, in the order of `kinds.KINDS`."""

globals().update({cls.__name__: cls for cls in PINNED_CLASSES})
