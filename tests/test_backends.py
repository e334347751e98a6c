"""The promise on every backend CI installs: the same tests, run under each.

Keras picks its backend once per process, so the core test modules run again
in a subprocess with `KERAS_BACKEND` set. The current process's backend is
covered by the ordinary run of those modules.

The reruns are the suite's longest tests (minutes each) and mostly use one
core: `conftest.py` starts them as soon as the session's tests are collected
and runs these tests last, so they run beside the rest of the suite instead
of before it (on 2 cores, 15.8 min of pytest became about 11).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE_MODULES = [
    "tests/test_layers.py", "tests/test_surgery.py", "tests/test_saving.py", "tests/test_callbacks.py",
    "tests/test_layer_kinds.py", "tests/test_keras_private.py", "tests/test_device.py",
]
BACKENDS = [b for b in ("tensorflow", "jax", "torch") if b != keras.backend.backend()]
TIMEOUT_S = 1800

# backend -> (process, output file); filled by `start_reruns`.
_RUNS: dict[str, tuple[subprocess.Popen, tempfile._TemporaryFileWrapper]] = {}


def start_reruns(backends: list[str]) -> None:
    """Starts the rerun of the core modules under each of `backends` (once)."""
    for backend in backends:
        if backend in _RUNS:
            continue
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        # A file, not a pipe: nobody reads the output until the process ends,
        # and a full pipe would stop it.
        output = tempfile.TemporaryFile(mode="w+")
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_MODULES],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True,
        )
        _RUNS[backend] = (process, output)


def stop_reruns() -> None:
    """Ends any rerun still running (the session ended or was interrupted)."""
    for process, output in _RUNS.values():
        if process.poll() is None:
            process.kill()
            process.wait()
        output.close()
    _RUNS.clear()


@pytest.mark.parametrize("backend", BACKENDS)
def test_core_promise_holds_on_backend(backend):
    start_reruns([backend])  # already running when the session started it
    process, output = _RUNS[backend]
    try:
        returncode = process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        returncode = None
    output.seek(0)
    text = output.read()
    lines = text.strip().splitlines()
    summary = lines[-1] if lines else ""
    assert returncode == 0, f"{backend}: exit {returncode}: {summary}\n{text[-6000:]}"
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary
