"""The promise on every backend CI installs: the same tests, run under each.

Keras picks its backend once per process, so the core test modules run again
in a subprocess with `KERAS_BACKEND` set. The current process's backend is
covered by the ordinary run of those modules.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE_MODULES = [
    "tests/test_layers.py", "tests/test_surgery.py", "tests/test_saving.py", "tests/test_callbacks.py",
    "tests/test_layer_kinds.py", "tests/test_keras_private.py",
]
BACKENDS = [b for b in ("tensorflow", "jax", "torch") if b != keras.backend.backend()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_core_promise_holds_on_backend(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_MODULES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"{backend}: {summary}\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary
