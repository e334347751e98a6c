"""The errors kerasurgery raises on bad input.

Every error the library raises because of what it was given derives from
`KerasurgeryError`, so a script (and the command line) can catch one type.
"""


class KerasurgeryError(Exception):
    """Base of every error kerasurgery raises on bad input."""


class LayerSelectionError(KerasurgeryError, LookupError):
    """A layer name or pattern matched nothing, or matched a non-Dense layer."""


class PinError(KerasurgeryError, ValueError):
    """A pin (mask or value) does not fit the weight it is meant for."""


class ModelFileError(KerasurgeryError, OSError):
    """A model file is missing, unreadable, corrupt or unsupported."""
