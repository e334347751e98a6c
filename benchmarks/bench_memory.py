"""Extra bytes per kernel entry that a `MaskedDense` keeps, compared with `Dense`.

Counted exactly, not sampled: the sum over a layer's variables of
(number of entries x bytes per entry of the variable's dtype), for a plain
`Dense` and for `MaskedDense` with shared pins (one value for every pinned
entry: pruning) and with per-entry pin values, divided by the kernel's entries.
Also counted: the optimizer state (Adam) the layer's trainable variables need,
and the bytes of each layer's variables in a saved `.keras` and `.h5` file.

Not state, and not counted: the effective kernel the layer forms for each
forward pass (a temporary of the kernel's size and compute dtype, freed after
the step; the shared scalar is broadcast to one more such temporary on the
TensorFlow backend).

    python benchmarks/bench_memory.py [--inputs 1024 --units 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1024)
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    _common.quiet_tensorflow()

    import keras
    import numpy as np

    import kerasurgery as ks

    entries = args.inputs * args.units
    rng = np.random.default_rng(0)
    mask = rng.random((args.inputs, args.units)) < 0.5

    def model(pins=None):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((args.inputs,))
        plain = keras.Model(inputs, keras.layers.Dense(args.units, name="dense")(inputs))
        return plain if pins is None else ks.freeze(plain, {"dense": pins})

    def variable_bytes(variables) -> int:
        return sum(int(np.prod(v.shape, dtype=np.int64)) * np.dtype(v.dtype).itemsize for v in variables)

    def file_bytes(m, suffix) -> int:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"m{suffix}"
            m.save(path)
            return path.stat().st_size

    cases = {
        "dense": model(),
        "shared": model(ks.Pin(kernel=mask, kernel_value=0.0)),
        "per_entry": model(ks.Pin(kernel=mask)),
    }
    rows = {}
    for name, m in cases.items():
        layer = m.get_layer("dense")
        optimizer = keras.optimizers.Adam()
        optimizer.build(layer.trainable_variables)
        slots = [v for v in optimizer.variables if len(v.shape) > 0]  # not the step counter
        rows[name] = {
            "storage": getattr(layer, "pinned_kernel_values", "-"),
            "variables": {v.name: [list(v.shape), str(v.dtype)] for v in layer.weights},
            "variable_bytes": variable_bytes(layer.weights),
            "optimizer_bytes": variable_bytes(slots),
            "keras_file_bytes": file_bytes(m, ".keras"),
            "h5_file_bytes": file_bytes(m, ".h5"),
        }
    base = rows["dense"]
    for row in rows.values():
        row["extra_per_entry"] = (row["variable_bytes"] - base["variable_bytes"]) / entries
        row["extra_optimizer_per_entry"] = (row["optimizer_bytes"] - base["optimizer_bytes"]) / entries
        row["extra_keras_file_per_entry"] = (row["keras_file_bytes"] - base["keras_file_bytes"]) / entries
        row["extra_h5_file_per_entry"] = (row["h5_file_bytes"] - base["h5_file_bytes"]) / entries

    result = {
        "benchmark": "memory",
        "backend": args.backend,
        "kernel_shape": [args.inputs, args.units],
        "machine": _common.machine(),
        "versions": _common.versions(),
        "rows": rows,
    }
    print(f"memory: one {args.inputs} x {args.units} layer ({entries:,} kernel entries), "
          f"{args.backend}; exact variable bytes (entries x dtype size)")
    _common.print_machine(result["machine"])
    print(f"{'layer':<10} {'variables B':>12} {'extra B/entry':>14} {'Adam extra B/entry':>19} "
          f"{'.keras extra B/entry':>21} {'.h5 extra B/entry':>18}   variables")
    for name, row in rows.items():
        shapes = ", ".join(f"{n} {s[1]}{tuple(s[0])}" for n, s in row["variables"].items())
        print(f"{name:<10} {row['variable_bytes']:>12,} {row['extra_per_entry']:>14.4f} "
              f"{row['extra_optimizer_per_entry']:>19.4f} {row['extra_keras_file_per_entry']:>21.4f} "
              f"{row['extra_h5_file_per_entry']:>18.4f}   {shapes}")
    _common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
