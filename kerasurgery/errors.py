"""The errors kerasurgery raises on bad input.

Every error the library raises because of what it was given derives from
`KerasurgeryError`, so a script (and the command line) can catch one type.
Warnings derive from `KerasurgeryWarning`. `one_line` turns another library's error into the short detail these
messages quote.
"""

from __future__ import annotations

from kerasurgery import _keras_private


class KerasurgeryError(Exception):
    """Base of every error kerasurgery raises on bad input."""


class LayerSelectionError(KerasurgeryError, LookupError):
    """A layer name or pattern matched nothing, or matched a non-Dense layer."""


class PinError(KerasurgeryError, ValueError):
    """A pin (mask or value) does not fit the weight it is meant for."""


class ModelFileError(KerasurgeryError, OSError):
    """A model file is missing, unreadable, corrupt or unsupported."""


class UsageError(KerasurgeryError, ValueError):
    """Arguments that contradict each other (the command line exits 2 on these)."""


class KerasurgeryWarning(UserWarning):
    """Base of the warnings kerasurgery gives about what it was asked to do."""


class LayerSkippedWarning(KerasurgeryWarning):
    """A layer that a glob selected does not take the key's pins: `freeze` leaves it out.

    Attributes:
        path: The layer's path.
        key: The glob that selected it.
        reason: Why the pins do not fit (the error a key naming the layer raises).
    """

    def __init__(self, path: str, key: str, reason: str) -> None:
        super().__init__(f"Skipped layer {path!r}, which {key!r} selects by pattern: {reason}")
        self.path, self.key, self.reason = path, key, reason


class NothingPinnedWarning(KerasurgeryWarning):
    """A rule selects no entry in any layer its key selects (e.g. `zeros` on a model without zeros).

    Attributes:
        key: The layer name or glob.
        rule: The rule's name.
        layers: How many layers the key selects (skipped ones left out).
    """

    def __init__(self, key: str, rule: str, layers: int) -> None:
        which = "the layer" if layers == 1 else f"any of the {layers} layers"
        super().__init__(f"Rule {rule!r} selects no entry in {which} that {key!r} selects: "
                         "nothing is pinned there.")
        self.key, self.rule, self.layers = key, rule, layers


def one_line(error: object, limit: int = 300) -> str:
    """An error's message as one short line, to quote inside another message.

    Collapses whitespace (newlines included), cuts the config Keras appends to
    some errors, and truncates to `limit` characters with "...".

    Args:
        error: An exception, or a message (any object: its `str`).
        limit: The longest result, at least 4.

    Returns:
        The line; the exception's class name when its message is empty.

    Example:

    ```python
    raise ModelFileError(f"{path}: cannot load the model: {one_line(e)}") from None
    ```
    """
    text = " ".join(str(error).split())
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    tail = _keras_private.config_start(text)
    if tail:  # a config Keras appended (not a message that is only a config)
        text = text[:tail].rstrip(" .,:") + "."
    if len(text) > limit:
        text = text[: max(limit, 4) - 3] + "..."
    return text
