"""Shared fixtures: tiny models built in-process, and quiet TensorFlow."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest


def make_mlp(seed: int = 0, *, zeros: bool = True):
    """A 4-3-2 Functional MLP named `mlp`, with dense layers `hidden` and `out`.

    With `zeros`, a few kernel entries are exactly zero (a "pruned" model).
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(3, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(2, name="out")(h)
    model = keras.Model(inputs, outputs, name="mlp")
    if zeros:
        kernel, bias = model.get_layer("hidden").get_weights()
        kernel[0, 0] = kernel[2, 1] = kernel[3, 2] = 0.0
        model.get_layer("hidden").set_weights([kernel, bias])
        kernel, bias = model.get_layer("out").get_weights()
        kernel[1, 0] = 0.0
        model.get_layer("out").set_weights([kernel, bias])
    return model


@pytest.fixture
def mlp():
    return make_mlp()


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")


_BACKENDS_MODULE = "tests/test_backends.py"


def pytest_collection_modifyitems(items):
    # The backend reruns run last: they started when collection finished
    # (below) and run beside the other tests (tests/test_backends.py).
    items.sort(key=lambda item: item.nodeid.startswith(_BACKENDS_MODULE))


def pytest_collection_finish(session):
    selected = [item for item in session.items if item.nodeid.startswith(_BACKENDS_MODULE)]
    if selected:
        from tests import test_backends

        test_backends.start_reruns(
            [b for b in test_backends.BACKENDS if any(f"[{b}]" in item.nodeid for item in selected)]
        )


def pytest_sessionfinish(session):
    import sys

    module = sys.modules.get("tests.test_backends")
    if module is not None:
        module.stop_reruns()
