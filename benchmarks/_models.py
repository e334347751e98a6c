"""Saved models for the benchmarks, made once and cached in a work folder.

`pruned_mlp(width)` is a Functional MLP `width/2 -> width -> width -> width ->
width/2` (4 Dense layers, about 3 * width**2 parameters: width 4096 gives
50.3M) with half of each kernel set to exactly 0 (a fixed random half) and a
compiled training configuration (Adam, MSE), saved as `.keras`: the input a
user hands to `kerasurgery freeze` after magnitude pruning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# The pruned MLP, built in memory from `width` (a code string: the children
# that save it here and that time it in bench_clone.py run it).
BUILD_PRUNED_MLP = r"""
keras.utils.set_random_seed(0)
inputs = keras.Input((width // 2,), name="x")
h = inputs
units = [width, width, width, width // 2]
for k, n in enumerate(units):
    h = keras.layers.Dense(n, activation="relu" if k < len(units) - 1 else None, name=f"dense_{k}")(h)
model = keras.Model(inputs, h, name=f"mlp_{width}")
rng = np.random.default_rng(0)
for layer in model.layers[1:]:
    kernel, bias = layer.get_weights()
    kernel[rng.random(kernel.shape) < 0.5] = 0.0
    layer.set_weights([kernel, bias])
del kernel, bias
"""

_MAKE = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

width, path = int(sys.argv[1]), sys.argv[2]
""" + BUILD_PRUNED_MLP + r"""
model.compile(optimizer="adam", loss="mse")
tmp = path + ".tmp.keras"
model.save(tmp)
os.replace(tmp, path)
"""


def params(width: int) -> int:
    """Parameters of `pruned_mlp(width)`."""
    units = [width // 2, width, width, width, width // 2]
    return sum(a * b + b for a, b in zip(units, units[1:]))


def workdir(given: str | None = None) -> Path:
    folder = Path(given) if given else Path(tempfile.gettempdir()) / "kerasurgery-bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pruned_mlp(width: int, folder: Path) -> Path:
    """The saved pruned MLP of this width, made in a separate process if missing."""
    path = folder / f"pruned_mlp_{width}.keras"
    if not path.exists():
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
        made = subprocess.run([sys.executable, "-c", _MAKE, str(width), str(path)], env=env,
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"making {path} failed:\n{made.stderr[-4000:]}")
    return path


def frozen_mlp(width: int, folder: Path) -> Path:
    """`pruned_mlp(width)` frozen by the command line (exact zeros pinned), made if missing."""
    path = folder / f"pruned_mlp_{width}.frozen.keras"
    if not path.exists():
        source = pruned_mlp(width, folder)
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
        made = subprocess.run([sys.executable, "-m", "kerasurgery", "freeze", str(source), "-o", str(path)],
                              env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        if made.returncode != 0:
            raise RuntimeError(f"freezing {source} failed:\n{made.stderr[-4000:]}")
    return path
