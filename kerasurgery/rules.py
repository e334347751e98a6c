"""Rules that build pins from a layer's weights: `kerasurgery.rules.zeros()`, ...

Each rule is a callable `(kernel, bias) -> Pin` for `kerasurgery.freeze`; the
command line builds the same rules from its flags. `smallest`, `n_of_m` and
`smallest_units` prune: they pin entries at 0.0 (`kerasurgery.pruning`).
"""

from kerasurgery.pins import below, connections, entries, fraction, inputs, units, zeros
from kerasurgery.pruning import n_of_m, smallest, smallest_units

__all__ = [
    "below", "connections", "entries", "fraction", "inputs", "n_of_m", "smallest",
    "smallest_units", "units", "zeros",
]
