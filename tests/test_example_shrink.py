"""The structured pruning example, `examples/digits_cnn_shrink.py`, run in-process at reduced size.

One reduced run (2 training epochs, 1 fine-tuning epoch) serves every test.
The files it wrote are read back here, the shrunk ones with plain Keras, and
checked against the pinned model and against the script's own report.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn_shrink.py"
REDUCED = ["--epochs", "2", "--finetune-epochs", "1", "--rounds", "2", "--seed", "0", "--json"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("digits_cnn_shrink_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reduced(example, tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits_shrink")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = example.main([*REDUCED, "--out", str(folder)])
    return {"code": code, "summary": json.loads(stdout.getvalue())}


def test_shrunk_model_computes_what_the_pinned_one_does_and_reloads_exactly(example, reduced):
    import keras

    import kerasurgery as ks

    summary = reduced["summary"]
    assert reduced["code"] == 0 and summary["ok"] is True
    x, y = example.load_data(0)["test"]
    pinned = ks.load_model(summary["files"]["pruned"], compile=False)
    small = keras.saving.load_model(summary["files"]["shrunk"], compile=False)  # no kerasurgery classes
    assert not any(type(layer).__module__.startswith("kerasurgery") for layer in small.layers)
    want = keras.ops.convert_to_numpy(pinned(x, training=False))
    got = keras.ops.convert_to_numpy(small(x, training=False))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    # The reloaded file is the model the script measured, bit for bit: the
    # same outputs as shrinking the saved pinned model again here.
    fresh = keras.ops.convert_to_numpy(ks.shrink(pinned)(x, training=False))
    np.testing.assert_array_equal(got.view(np.uint32), fresh.view(np.uint32))
    assert float(np.mean(np.argmax(got, axis=-1) == y)) == summary["accuracy"]["shrunk"]
    by_cli = keras.saving.load_model(summary["files"]["cli_shrunk"], compile=False)
    for a, b in zip(by_cli.get_weights(), small.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_half_of_every_prunable_group_is_gone(reduced):
    import keras

    summary = reduced["summary"]
    small = keras.saving.load_model(summary["files"]["shrunk"], compile=False)
    sizes = {name: small.get_layer(name).get_config() for name in ("conv_1", "conv_2", "hidden", "digit")}
    counted = {name: c.get("filters", c.get("units")) for name, c in sizes.items()}
    assert counted == {"conv_1": 8, "conv_2": 16, "hidden": 32, "digit": 10}  # digit: a model output
    assert summary["units"] == {n: [2 * counted[n] if n != "digit" else 10, counted[n]] for n in counted}
    assert summary["parameters"]["shrunk"] == small.count_params() < summary["parameters"]["original"]
    assert summary["left_alone"] == [{"layers": ["digit"], "reason": "a model output"}]
    assert summary["latency_ms"]["original"] > 0 and summary["latency_ms"]["shrunk"] > 0
    assert summary["accuracy"]["trained"] > 0.5  # chance is 0.1


def test_usage_errors_exit_2(example, capsys):
    for argv in (["--fraction", "1"], ["--epochs", "0"], ["--rounds", "x"]):
        assert example.main(argv) == 2
        assert "error:" in capsys.readouterr().err
