"""Rules that build pins from a layer's weights: `kerasurgery.rules.zeros()`, ...

Each rule is a callable `(kernel, bias) -> Pin` for `kerasurgery.freeze`; the
command line builds the same rules from its flags.
"""

from kerasurgery.pins import below, connections, entries, fraction, inputs, units, zeros

__all__ = ["below", "connections", "entries", "fraction", "inputs", "units", "zeros"]
