"""The CNN pruning example, `examples/digits_cnn_pruning.py`, run in-process at reduced size.

One reduced run (3 training and 2 fine-tuning epochs: gradual pruning to 90%
during the first, recovery during the second) serves every test that needs
numbers. The counts are exact whatever the weights: the pruning rules prune
exactly round(fraction * size) entries, and 2:4 exactly half of every group.
The stripped files are read back here with plain Keras and counted again, so
the script's report is checked against the weights, not against itself.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import bits, has_matplotlib, load_example, n_of_m_mask, png_size

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_cnn_pruning.py"
REDUCED = ["--epochs", "3", "--finetune-epochs", "2", "--seed", "0", "--json"]
SHAPES = {"conv_1": (3, 3, 1, 16), "conv_2": (3, 3, 16, 32), "hidden": (512, 64), "digit": (64, 10)}
PRUNED = ("conv_2", "hidden", "digit")  # conv_1's single input channel makes no group of 4
STEPS_PER_EPOCH = 34  # 1,088 training images, batches of 32


def _size(name: str) -> int:
    return int(np.prod(SHAPES[name]))


def _plain(name: str) -> str:
    return "Conv2D" if name.startswith("conv") else "Dense"


def _assert_same_weights(a, b, where: str) -> None:
    assert list(a.weights) == list(b.weights), where
    for weight in a.weights:
        np.testing.assert_array_equal(bits(a.weights[weight].effective), bits(b.weights[weight].effective),
                                      err_msg=f"{where}: {weight}")


@pytest.fixture(scope="module")
def example():
    return load_example(EXAMPLE)


@pytest.fixture(scope="module")
def reduced(example, tmp_path_factory):
    """The reduced run, with `--png` too where matplotlib is installed."""
    folder = tmp_path_factory.mktemp("digits_cnn")
    argv = [*REDUCED, "--out", str(folder / "models")]
    if has_matplotlib():
        argv += ["--png", str(folder / "figure.png")]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = example.main(argv)
    return {"code": code, "summary": json.loads(stdout.getvalue()), "folder": folder}


def _kernels(path: str) -> dict[str, np.ndarray]:
    """The kernels of a stripped file, loaded with plain Keras."""
    import keras

    model = keras.saving.load_model(path, compile=False)
    return {name: keras.ops.convert_to_numpy(model.get_layer(name).kernel) for name in SHAPES}


def test_reduced_run_exits_0_and_both_verifies_pass(reduced):
    summary = reduced["summary"]
    assert reduced["code"] == 0 and summary["ok"] is True
    assert summary["pruned_layers"] == list(PRUNED)
    gradual_pins = sum(round(0.9 * _size(name)) for name in PRUNED)
    assert summary["gradual"]["verify"] == {"ok": True, "checked": gradual_pins, "violations": []}
    assert summary["n_of_m"]["verify"] == {
        "ok": True, "checked": sum(_size(name) // 2 for name in PRUNED), "violations": []}
    # What each file holds, read back without TensorFlow.
    from kerasurgery.files.inspection import read_weights

    files = {key: read_weights(path) for key, path in summary["files"].items()}
    assert set(files) == {"dense", "gradual_schedule_end", "gradual_finetuned", "gradual_stripped",
                          "n_of_m_frozen", "n_of_m_finetuned", "n_of_m_stripped"}
    for key, layers in files.items():
        assert list(layers) == list(SHAPES), key
        assert [layers[n].kernel.effective.shape for n in SHAPES] == list(SHAPES.values()), key
        # Plain layers in the dense and stripped files; route (a) pins every layer,
        # route (b) only the pruned ones.
        plain = key in ("dense", "gradual_stripped", "n_of_m_stripped")
        classes = {n: _plain(n) if plain or (key.startswith("n_of_m") and n not in PRUNED)
                   else f"Masked{_plain(n)}" for n in SHAPES}
        assert {n: layer.class_name for n, layer in layers.items()} == classes, key
        assert all(layer.bias.pinned == 0 for layer in layers.values()), key
    for name in SHAPES:
        dense, end, tuned, stripped = (files[k][name] for k in (
            "dense", "gradual_schedule_end", "gradual_finetuned", "gradual_stripped"))
        # (a) The schedule's end: round(0.9 * size) pins at +0.0 in each pruned kernel.
        mask = end.kernel.mask
        assert int(mask.sum()) == (round(0.9 * _size(name)) if name in PRUNED else 0), name
        assert np.all(bits(end.kernel.effective)[mask] == 0), name
        # Fine-tuned on: the same pins, still +0.0, and every free entry trained.
        np.testing.assert_array_equal(tuned.kernel.mask, mask, err_msg=name)
        assert np.all(bits(tuned.kernel.effective)[mask] == 0), name
        assert np.all(tuned.kernel.effective[~mask] != end.kernel.effective[~mask]), name
        _assert_same_weights(stripped, tuned, f"gradual stripped {name}")
        # (b) 2:4 along the input axis of the dense model's kernel; nothing else changed.
        frozen, tuned, stripped = (files[k][name] for k in ("n_of_m_frozen", "n_of_m_finetuned", "n_of_m_stripped"))
        want = n_of_m_mask(dense.kernel.effective, 2, 4, axis=-2) if name in PRUNED else np.zeros(SHAPES[name], bool)
        np.testing.assert_array_equal(frozen.kernel.mask, want, err_msg=name)
        np.testing.assert_array_equal(
            bits(frozen.kernel.effective), bits(np.where(want, np.float32(0), dense.kernel.effective)), err_msg=name)
        np.testing.assert_array_equal(bits(frozen.bias.effective), bits(dense.bias.effective), err_msg=name)
        np.testing.assert_array_equal(tuned.kernel.mask, want, err_msg=name)
        assert np.all(bits(tuned.kernel.effective)[want] == 0), name
        assert np.all(tuned.kernel.effective[~want] != frozen.kernel.effective[~want]), name
        _assert_same_weights(stripped, tuned, f"2:4 stripped {name}")


def test_gradual_pruning_reaches_exactly_90_percent_of_each_selected_kernel(reduced):
    gradual = reduced["summary"]["gradual"]
    counted = _kernels(reduced["summary"]["files"]["gradual_stripped"])
    for name, kernel in counted.items():
        row = gradual["sparsity"]["layers"][name]
        expected = round(0.9 * _size(name)) if name in PRUNED else 0
        # What the weights hold = what the script reports = what `inspect` says is pinned.
        assert int((kernel == 0).sum()) == row["zeros"] == row["pinned"] == expected
        assert gradual["pinned"][name] == expected
        assert row["size"] == _size(name) and row["kept"] is True
    pruned_size = sum(_size(name) for name in PRUNED)
    final = sum(round(0.9 * _size(name)) for name in PRUNED) / pruned_size
    assert gradual["sparsity"]["pruned_zeros"] == sum(round(0.9 * _size(n)) for n in PRUNED)
    assert gradual["sparsity"]["pruned_sparsity"] == final
    # The logged sparsity: the schedule's end within the first epoch, then unchanged.
    steps = gradual["step_sparsity"]
    assert len(steps) == 2 * STEPS_PER_EPOCH
    assert gradual["schedule"]["end_step"] == STEPS_PER_EPOCH - 1
    # Step t logs the pins of the last pruning step at or before it (begin_step,
    # every `frequency` steps, end_step), each layer at round(s(step) * size).
    from kerasurgery.pruning import polynomial_sparsity

    schedule = gradual["schedule"]
    pruning_steps = sorted({*range(schedule["begin_step"], schedule["end_step"], schedule["frequency"]),
                            schedule["end_step"]})
    expected = []
    for t in range(len(steps)):
        last = max(p for p in pruning_steps if p <= t)
        s = polynomial_sparsity(last, target_sparsity=schedule["target_sparsity"],
                                begin_step=schedule["begin_step"], end_step=schedule["end_step"],
                                initial_sparsity=schedule["initial_sparsity"], power=schedule["power"])
        expected.append(sum(round(s * _size(name)) for name in PRUNED) / pruned_size)
    assert steps == expected
    assert steps[0] == 0.0  # s(begin_step) = initial_sparsity
    assert steps[STEPS_PER_EPOCH - 1:] == [final] * (STEPS_PER_EPOCH + 1)
    assert gradual["epoch_sparsity"] == [final, final]
    assert gradual["scheduled_sparsity"][gradual["schedule"]["end_step"]] == 0.9


def test_2_of_4_every_group_has_exactly_two_zeros(reduced):
    n_of_m = reduced["summary"]["n_of_m"]
    counted = _kernels(reduced["summary"]["files"]["n_of_m_stripped"])
    groups = 0
    for name, kernel in counted.items():
        row = n_of_m["sparsity"]["layers"][name]
        if name not in PRUNED:
            assert (kernel == 0).sum() == row["zeros"] == row["pinned"] == 0
            continue
        per_group = np.moveaxis(kernel == 0, -2, -1).reshape(-1, 4).sum(axis=1)
        assert per_group.tolist() == [2] * (_size(name) // 4)
        groups += per_group.size
        assert int((kernel == 0).sum()) == row["zeros"] == row["pinned"] == _size(name) // 2
        assert n_of_m["pinned"][name] == _size(name) // 2  # what `freeze --n-of-m 2:4` reported
        assert row["kept"] is True
    assert n_of_m["groups"] == {"total": groups, "exact": groups, "by_zeros": [0, 0, groups, 0, 0]}
    assert n_of_m["sparsity"]["pruned_sparsity"] == 0.5


def test_stripped_models_are_plain_keras_and_predict_as_the_pinned_ones(reduced):
    for route in ("gradual", "n_of_m"):
        summary = reduced["summary"][route]
        assert summary["stripped_layer_classes"] == [
            "Conv2D", "Dense", "Flatten", "InputLayer", "MaxPooling2D"]
        assert summary["accuracy"]["stripped"] == summary["accuracy"]["finetuned"]


def test_plain_keras_keeps_fewer_zeros_than_the_pins(reduced):
    gradual, n_of_m = reduced["summary"]["gradual"], reduced["summary"]["n_of_m"]
    pinned_a = gradual["sparsity"]["pruned_zeros"]
    # The hand-made zeros were the same count at the last pruning step ...
    assert gradual["without_pins"]["zeros_after_last_zeroing"] == pinned_a
    # ... and most grew back; only zeros with an always-zero gradient stay.
    assert gradual["without_pins"]["zeros"] < pinned_a / 2
    assert n_of_m["without_pins"]["zeros"] < n_of_m["sparsity"]["pruned_zeros"] / 2
    assert n_of_m["without_pins"]["groups"]["exact"] < n_of_m["groups"]["exact"] / 2
    # The control started from the same zeros: its accuracy before fine-tuning is the pinned one's.
    assert n_of_m["without_pins"]["accuracy_pruned"] == n_of_m["accuracy"]["pruned"]


def test_accuracies_are_those_of_a_trained_model(reduced):
    summary = reduced["summary"]
    assert summary["samples"] == {"train": 1088, "validation": 259, "test": 450}
    assert summary["dense_accuracy"]["test"] > 0.7  # chance is 0.1
    for route in ("gradual", "n_of_m"):
        accuracy = summary[route]["accuracy"]
        assert accuracy["finetuned"] > 0.5
        curve = summary[route]["validation_curve"]
        assert len(curve) == 2 + 1  # before fine-tuning, then after each epoch
    assert summary["n_of_m"]["accuracy"]["finetuned"] >= summary["n_of_m"]["accuracy"]["pruned"]
    assert summary["gradual"]["validation_curve"][0] == summary["dense_accuracy"]["validation"]


def test_png_is_written_or_refused_in_one_line(example, reduced, tmp_path, capsys):
    if has_matplotlib():
        figure = reduced["folder"] / "figure.png"
        assert reduced["summary"]["png"] == str(figure)
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png_size(figure) == (1200, 450)  # figsize (12, 4.5) at 100 dpi
        assert figure.stat().st_size > 10_000  # not a blank canvas (~3 kB at this size)
        return
    target = tmp_path / "figure.png"
    assert example.main([*REDUCED, "--out", str(tmp_path / "models"), "--png", str(target)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--png needs matplotlib" in err
    assert not target.exists() and not (tmp_path / "models").exists()


def test_png_into_a_missing_folder_is_refused_before_any_work(example, tmp_path, capsys):
    target = tmp_path / "missing" / "figure.png"
    assert example.main([*REDUCED, "--out", str(tmp_path / "models"), "--png", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("argv", [
    ["--sparsity", "1"], ["--sparsity", "x"], ["--epochs", "0"], ["--finetune-epochs", "1"],
])
def test_usage_errors_exit_2(example, argv, capsys):
    assert example.main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_example_documents_how_to_run_it(example):
    assert "python examples/digits_cnn_pruning.py" in example.__doc__
    assert "--epochs 3 --finetune-epochs 2" in example.__doc__
    defaults = example._parser().parse_args([])
    assert (defaults.sparsity, defaults.epochs, defaults.finetune_epochs) == (0.9, 15, 10)

