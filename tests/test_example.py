"""The worked example, `examples/digits_pruning.py`, run in-process at reduced size.

One reduced run (3 training and 2 fine-tuning epochs; the digits dataset is
small enough to keep whole) serves most tests. At this size, with seeds 0 to 2
on one machine, pruning costs 0.25 to 0.50 of test accuracy and two epochs of
fine-tuning win back 0.22 to 0.40, so "fine-tuning does not lose accuracy" has
a wide margin against another CPU's rounding.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import bits, has_matplotlib, load_example, png_size

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_pruning.py"
REDUCED = ["--epochs", "3", "--finetune-epochs", "2", "--seed", "0", "--json"]
SIZES = {"hidden_1": 64 * 128, "hidden_2": 128 * 64, "digit": 64 * 10}


@pytest.fixture(scope="module")
def example():
    return load_example(EXAMPLE)


def _run_json(example, argv: list[str]) -> tuple[int, dict]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = example.main(argv)
    return code, json.loads(stdout.getvalue())


@pytest.fixture(scope="module")
def reduced(example, tmp_path_factory):
    """The reduced run, with `--png` too where matplotlib is installed."""
    folder = tmp_path_factory.mktemp("digits")
    argv = [*REDUCED, "--out", str(folder / "models")]
    if has_matplotlib():
        argv += ["--png", str(folder / "figure.png")]
    code, summary = _run_json(example, argv)
    return {"code": code, "summary": summary, "folder": folder, "argv": argv}


def test_reduced_run_exits_0_and_verify_passes(reduced):
    summary = reduced["summary"]
    assert reduced["code"] == 0
    assert summary["ok"] is True
    assert summary["verify"] == {"ok": True, "checked": summary["sparsity"]["pruned"], "violations": []}
    assert set(summary["files"]) == {"pruned", "frozen", "finetuned", "stripped"}
    # What each file holds, read back without TensorFlow.
    from kerasurgery.files.inspection import read_weights

    files = {name: read_weights(path) for name, path in summary["files"].items()}
    for name, layers in files.items():
        assert list(layers) == list(SIZES), name
    for layer, size in SIZES.items():
        pruned, frozen, tuned, stripped = (files[f][layer] for f in ("pruned", "frozen", "finetuned", "stripped"))
        assert (pruned.class_name, frozen.class_name, tuned.class_name, stripped.class_name) == (
            "Dense", "MaskedDense", "MaskedDense", "Dense")
        assert pruned.pinned == stripped.pinned == 0 and frozen.bias.pinned == tuned.bias.pinned == 0
        # Pruned: the smallest 80% set to 0; frozen: exactly those zeros pinned, nothing else changed.
        zeros = pruned.kernel.effective == 0
        assert int(zeros.sum()) == round(0.8 * size)
        np.testing.assert_array_equal(frozen.kernel.mask, zeros)
        for weight in ("kernel", "bias"):
            np.testing.assert_array_equal(bits(frozen.weights[weight].effective),
                                          bits(pruned.weights[weight].effective))
        # Fine-tuned: the pins held at +0.0 and every free entry trained
        # (AdamW's weight decay alone moves each non-zero one).
        np.testing.assert_array_equal(tuned.kernel.mask, zeros)
        assert np.all(bits(tuned.kernel.effective)[zeros] == 0)
        assert np.all(tuned.kernel.effective[~zeros] != frozen.kernel.effective[~zeros])
        # Stripped: plain Dense holding the fine-tuned effective weights, bit for bit.
        for weight in ("kernel", "bias"):
            np.testing.assert_array_equal(bits(stripped.weights[weight].effective),
                                          bits(tuned.weights[weight].effective))


def test_sparsity_kept_equals_pruned_sparsity_exactly(reduced):
    sparsity = reduced["summary"]["sparsity"]
    assert set(sparsity["layers"]) == set(SIZES)
    for name, size in SIZES.items():
        layer = sparsity["layers"][name]
        pruned = round(0.8 * size)  # the example's count: round(sparsity * size) per kernel
        assert layer["size"] == size
        assert layer["pruned"] == pruned
        assert layer["zeros"] == pruned
        assert layer["sparsity"] == layer["pruned_sparsity"] == pruned / size
        assert layer["kept"] is True
        assert reduced["summary"]["pinned"][name] == pruned  # what `freeze` pinned
    total = sum(round(0.8 * size) for size in SIZES.values())
    assert sparsity["zeros"] == sparsity["pruned"] == total
    assert sparsity["sparsity"] == sparsity["pruned_sparsity"] == total / sum(SIZES.values())
    assert sparsity["kept"] is True and reduced["summary"]["sparsity_kept"] is True


def test_stripped_model_is_plain_keras_and_predicts_as_fine_tuned(reduced):
    summary = reduced["summary"]
    assert summary["stripped_layer_classes"] == ["Dense", "InputLayer"]
    # Stripping bakes in the effective kernel: the predictions are the same ones.
    assert summary["accuracy"]["stripped"] == summary["accuracy"]["after_finetuning"]


def test_fine_tuning_recovers_accuracy_lost_to_pruning(reduced):
    accuracy = reduced["summary"]["accuracy"]
    assert accuracy["after_pruning"] < accuracy["before_pruning"]
    assert accuracy["after_finetuning"] >= accuracy["after_pruning"]
    assert accuracy["after_finetuning"] > 0.5  # chance is 0.1
    curve = reduced["summary"]["validation_accuracy"]["curve"]
    assert len(curve) == 2 + 1  # before fine-tuning, then after each epoch
    assert curve[0] == reduced["summary"]["validation_accuracy"]["after_pruning"]


def test_without_pins_plain_fine_tuning_loses_the_sparsity(reduced):
    # The comparison the example prints: the same fine-tuning on the plain
    # pruned model leaves only zeros whose gradient is always 0.
    control = reduced["summary"]["without_pins"]
    assert control["zeros"] < reduced["summary"]["sparsity"]["pruned"] / 2


def test_same_seed_same_numbers(example, reduced, tmp_path):
    code, again = _run_json(example, [*REDUCED, "--out", str(tmp_path)])
    assert code == 0
    for key in ("accuracy", "validation_accuracy", "sparsity", "pinned", "without_pins"):
        assert again[key] == reduced["summary"][key]


def test_png_is_written_or_refused_in_one_line(example, reduced, tmp_path, capsys):
    if has_matplotlib():
        figure = reduced["folder"] / "figure.png"
        assert reduced["summary"]["png"] == str(figure)
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png_size(figure) == (1100, 400)  # figsize (11, 4) at 100 dpi
        assert figure.stat().st_size > 10_000  # not a blank canvas (~3 kB at this size)
        return
    target = tmp_path / "figure.png"
    assert example.main([*REDUCED, "--out", str(tmp_path / "models"), "--png", str(target)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "--png needs matplotlib" in err and "pip install" in err
    assert not target.exists()
    assert not (tmp_path / "models").exists()  # refused before any work


@pytest.mark.parametrize("argv", [
    ["--sparsity", "1.5"], ["--sparsity", "0"], ["--epochs", "0"], ["--finetune-epochs", "x"],
])
def test_usage_errors_exit_2(example, argv, capsys):
    assert example.main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_example_documents_how_to_run_it(example):
    assert "python examples/digits_pruning.py" in example.__doc__
    assert math.isclose(example._parser().parse_args([]).sparsity, 0.8)


def test_png_into_a_missing_folder_is_refused_before_any_work(example, tmp_path, capsys):
    target = tmp_path / "missing" / "figure.png"
    assert example.main([*REDUCED, "--out", str(tmp_path / "models"), "--png", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert ("does not exist" in err) if has_matplotlib() else ("needs matplotlib" in err)
    assert not (tmp_path / "models").exists()
