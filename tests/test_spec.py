"""`kerasurgery.cli.spec`: rules from names and arguments, and the TOML spec file.

These tests need numpy only: a rule is applied to plain arrays the way
`freeze` applies it to a layer's kernel and bias.
"""

from __future__ import annotations

import os
import sys
import subprocess
import textwrap

import numpy as np
import pytest

from kerasurgery import Pin
from kerasurgery.errors import KerasurgeryError, UsageError
from kerasurgery.cli.spec import RULES, load_arrays, load_spec, pins_for

KERNEL = np.array(
    [[0.0, 0.5, -0.02], [0.3, 0.0, 0.9], [-0.001, 0.2, 0.0], [0.7, -0.4, 0.05]],
    dtype=np.float32,
)
BIAS = np.array([0.0, 0.01, -0.3], dtype=np.float32)


def apply(rule_or_pin, kernel=KERNEL, bias=BIAS) -> Pin:
    """What `freeze` does with one value of the mapping."""
    if isinstance(rule_or_pin, Pin):
        return rule_or_pin
    return rule_or_pin(kernel, bias)


def write(tmp_path, text: str, name: str = "pins.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# --- pins_for: the command line's entry point --------------------------------


def test_zeros_is_exact_zeros_on_every_pattern():
    pins = pins_for("zeros", patterns=["hidden", "out*"])
    assert list(pins) == ["hidden", "out*"]
    pin = apply(pins["hidden"])
    np.testing.assert_array_equal(pin.kernel, KERNEL == 0)
    assert pin.bias is None and pin.kernel_value is None


def test_zeros_with_bias_and_value():
    pin = apply(pins_for("zeros", bias=True, value=0.25)["*"])
    np.testing.assert_array_equal(pin.bias, BIAS == 0)
    assert pin.kernel_value == 0.25 and pin.bias_value == 0.25


def test_below_threshold():
    pin = apply(pins_for("below", 0.03, bias=True)["*"])
    np.testing.assert_array_equal(pin.kernel, np.abs(KERNEL) < 0.03)
    np.testing.assert_array_equal(pin.bias, np.abs(BIAS) < 0.03)
    assert pin.kernel.sum() == 5 and pin.bias.sum() == 2


def test_fraction_is_reproducible_and_exact_in_count():
    a = apply(pins_for("fraction", 0.5, seed=3)["*"])
    b = apply(pins_for("fraction", 0.5, seed=3)["*"])
    np.testing.assert_array_equal(a.kernel, b.kernel)
    assert a.kernel.sum() == round(0.5 * KERNEL.size)


def test_index_pairs_are_kernel_entries_and_single_numbers_bias_entries():
    pin = apply(pins_for("index", [(0, 1), (3, 2), (1,)], value=0.0)["*"])
    expected = np.zeros(KERNEL.shape, bool)
    expected[0, 1] = expected[3, 2] = True
    np.testing.assert_array_equal(pin.kernel, expected)
    np.testing.assert_array_equal(pin.bias, [False, True, False])
    assert pin.kernel_value == 0.0


def test_inputs_pin_whole_rows():
    pin = apply(pins_for("inputs", [1, -1])["*"])
    np.testing.assert_array_equal(pin.kernel.sum(axis=1), [0, 3, 0, 3])
    assert pin.bias is None


def test_units_pin_columns_and_their_bias_by_default():
    pin = apply(pins_for("units", [2], value=0.5)["*"])
    np.testing.assert_array_equal(pin.kernel.sum(axis=0), [0, 0, 4])
    np.testing.assert_array_equal(pin.bias, [False, False, True])
    assert pin.kernel_value == 0.5 and pin.bias_value == 0.5


def test_units_without_bias():
    pin = apply(pins_for("units", [0], bias=False)["*"])
    assert pin.bias is None and pin.kernel.sum() == 4


def test_units_on_a_layer_without_bias_pins_the_columns_only():
    # The default pins the bias entries when the layer has a bias, so a
    # model mixing use_bias=True and use_bias=False layers freezes in one run.
    pin = apply(pins_for("units", [1], value=0.5)["*"], bias=None)
    assert pin.bias is None and pin.bias_value is None
    np.testing.assert_array_equal(pin.kernel.sum(axis=0), [0, 4, 0])
    assert pin.kernel_value == 0.5
    # Asked for explicitly, the bias must be there.
    with pytest.raises(KerasurgeryError, match="targets the bias, but the layer has none"):
        apply(pins_for("units", [1], bias=True)["*"], bias=None)


def test_mask_npy_applies_to_every_pattern(tmp_path):
    mask = KERNEL > 0.4
    np.save(tmp_path / "mask.npy", mask)
    pins = pins_for("mask", str(tmp_path / "mask.npy"), patterns=["a", "b"], value=1.0)
    assert set(pins) == {"a", "b"}
    np.testing.assert_array_equal(pins["a"].kernel, mask)
    assert pins["a"].kernel_value == 1.0 and pins["a"].bias is None


def test_mask_npz_is_keyed_by_layer_and_patterns_pick_keys(tmp_path):
    np.savez(
        tmp_path / "masks.npz",
        hidden=KERNEL == 0,
        **{"out/kernel": KERNEL > 0, "out/bias": BIAS == 0},
    )
    everything = pins_for("mask", tmp_path / "masks.npz")
    assert set(everything) == {"hidden", "out"}
    np.testing.assert_array_equal(everything["out"].kernel, KERNEL > 0)
    np.testing.assert_array_equal(everything["out"].bias, BIAS == 0)
    only_out = pins_for("mask", tmp_path / "masks.npz", patterns=["o*"])
    assert list(only_out) == ["out"]
    with pytest.raises(KerasurgeryError, match=r"no array for a layer matching 'head'.*hidden, out"):
        pins_for("mask", tmp_path / "masks.npz", patterns=["head"])


def test_connections_pin_absent_connections_at_zero(tmp_path):
    matrix = (KERNEL != 0).astype(np.int8)  # 1 = trainable
    np.save(tmp_path / "c.npy", matrix)
    pin = apply(pins_for("connections", tmp_path / "c.npy")["*"])
    np.testing.assert_array_equal(pin.kernel, matrix == 0)
    assert pin.kernel_value == 0.0
    pin = apply(pins_for("connections", tmp_path / "c.npy", value=0.5)["*"])
    assert pin.kernel_value == 0.5


def test_connections_npz_refuses_bias_arrays(tmp_path):
    np.savez(tmp_path / "c.npz", **{"out": np.ones((4, 3)), "out/bias": np.ones(3)})
    with pytest.raises(KerasurgeryError, match="kernel only"):
        pins_for("connections", tmp_path / "c.npz")


def test_connections_file_with_other_values_names_the_file(tmp_path):
    np.save(tmp_path / "c.npy", np.full((4, 3), 2))
    with pytest.raises(KerasurgeryError, match=r"c\.npy.*only 0 and 1"):
        pins_for("connections", tmp_path / "c.npy")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rule="nope"), "Unknown rule 'nope'"),
        (dict(rule="fraction", argument=0.5), "needs a seed"),
        (dict(rule="zeros", seed=1), "seed applies to rule 'fraction' only"),
        (dict(rule="below"), "needs an argument"),
        (dict(rule="inputs", argument=[0], bias=True), "bias has no input axis"),
        (dict(rule="index", argument=[(0, 1)], bias=True), "index of one number"),
        (dict(rule="below", argument=-1.0), "threshold >= 0"),
        (dict(rule="fraction", argument=1.5, seed=0), "between 0 and 1"),
        (dict(rule="index", argument=[(0, 1, 2)]), r"\(row, column\)"),
    ],
)
def test_pins_for_errors(kwargs, message):
    with pytest.raises(KerasurgeryError, match=message):
        pins_for(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rule="fraction", argument=0.5), "needs a seed"),
        (dict(rule="below", argument=0.1, seed=1), "seed applies to rule 'fraction' only"),
        (dict(rule="inputs", argument=[0], bias=True), "bias has no input axis"),
        (dict(rule="index", argument=[(0, 1)], bias=True), "index of one number"),
        (dict(rule="mask", argument="m.npy", bias=True), "'LAYER/bias'"),
        (dict(rule="connections", argument="c.npy", bias=True), "kernel only"),
    ],
)
def test_contradicting_arguments_are_usage_errors(kwargs, message):
    # The command line maps UsageError to exit code 2, without checks of its own.
    with pytest.raises(UsageError, match=message):
        pins_for(**kwargs)


def test_usage_errors_in_a_spec_file_are_input_errors(tmp_path):
    path = write(tmp_path, "[[layer]]\npattern = 'a'\ninputs = [0]\nbias = true\n")
    with pytest.raises(KerasurgeryError, match="bias has no input axis") as caught:
        load_spec(path)
    assert not isinstance(caught.value, UsageError)  # a bad file, not a bad command line


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "cannot read it as an .npy or .npz"),
        (b"hello, not numpy", "cannot read it as an .npy or .npz"),
        (b"PK\x03\x04truncated", "cannot read it as an .npy or .npz"),
    ],
)
def test_load_arrays_refuses_what_is_not_numpy(tmp_path, content, message):
    path = tmp_path / "m.npy"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KerasurgeryError, match=message):
        load_arrays(path)


def test_load_arrays_refuses_pickles(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(KerasurgeryError, match=r"obj\.npy"):
        load_arrays(tmp_path / "obj.npy")


# --- load_spec: the TOML file -------------------------------------------------


def test_spec_with_every_rule(tmp_path):
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "m.npy", KERNEL < 0)
    np.save(tmp_path / "masks" / "c.npy", np.ones(KERNEL.shape, np.int8))
    path = write(tmp_path, """
        [[layer]]
        pattern = "z"
        rule = "zeros"
        bias = true

        [[layer]]
        pattern = "b"
        below = 0.03
        value = 0.0

        [[layer]]
        pattern = "m"
        mask = "masks/m.npy"

        [[layer]]
        pattern = "c"
        rule = "connections"
        connections = "masks/c.npy"

        [[layer]]
        pattern = "i"
        index = [[0, 1], [2, 2], 1]

        [[layer]]
        pattern = "r"
        inputs = [0, 3]

        [[layer]]
        pattern = "u"
        rule = "units"
        units = [1]
        value = 0.5

        [[layer]]
        pattern = "f*"
        fraction = 0.25
        seed = 11
    """)
    pins = load_spec(path)
    assert list(pins) == ["z", "b", "m", "c", "i", "r", "u", "f*"]
    z = apply(pins["z"])
    np.testing.assert_array_equal(z.kernel, KERNEL == 0)
    np.testing.assert_array_equal(z.bias, BIAS == 0)
    b = apply(pins["b"])
    assert b.kernel.sum() == 5 and b.bias is None and b.kernel_value == 0.0
    np.testing.assert_array_equal(apply(pins["m"]).kernel, KERNEL < 0)
    assert not apply(pins["c"]).kernel.any()
    i = apply(pins["i"])
    assert i.kernel.sum() == 2 and i.kernel[0, 1] and i.kernel[2, 2]
    np.testing.assert_array_equal(i.bias, [False, True, False])
    np.testing.assert_array_equal(apply(pins["r"]).kernel.sum(axis=1), [3, 0, 0, 3])
    u = apply(pins["u"])
    np.testing.assert_array_equal(u.kernel.sum(axis=0), [0, 4, 0])
    assert u.bias[1] and u.kernel_value == 0.5
    f = apply(pins["f*"])
    np.testing.assert_array_equal(f.kernel, apply(pins_for("fraction", 0.25, seed=11)["*"]).kernel)


def test_spec_paths_resolve_against_the_spec_folder(tmp_path, monkeypatch):
    folder = tmp_path / "specs"
    folder.mkdir()
    np.savez(folder / "wiring.npz", hidden=np.ones((4, 3)), out=np.eye(4, 3))
    path = write(folder, """
        [[layer]]
        pattern = "*"
        connections = "wiring.npz"
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pins = load_spec(os.path.relpath(path))
    assert set(pins) == {"hidden", "out"}
    np.testing.assert_array_equal(apply(pins["out"]).kernel, np.eye(4, 3) == 0)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"expected one or more \[\[layer\]\] tables"),
        ("layer = 3", r"expected one or more \[\[layer\]\] tables"),
        ("version = 1\n[[layer]]\npattern = 'a'", "unknown top-level key 'version'"),
        ("[[layer]]\nrule = 'zeros'", r"entry 1: `pattern` \(a layer name or glob\) is required"),
        ("[[layer]]\npattern = ''", "`pattern`"),
        ("[[layer]]\npattern = 'a'\nunit = [1]", r"entry 1 \('a'\): unknown key 'unit'"),
        ("[[layer]]\npattern = 'a'\nrule = 'units'", r"rule 'units' needs `units = \[unit, ...\]`"),
        ("[[layer]]\npattern = 'a'\nrule = 'magic'", "`rule` must be one of"),
        ("[[layer]]\npattern = 'a'\nrule = 'units'\ninputs = [1]", "rule 'units' does not take `inputs`"),
        ("[[layer]]\npattern = 'a'\nunits = [1]\ninputs = [1]", "one rule per entry"),
        ("[[layer]]\npattern = 'a'\nbelow = '0.1'", "`below` must be a number"),
        ("[[layer]]\npattern = 'a'\nbelow = true", "`below` must be a number"),
        ("[[layer]]\npattern = 'a'\nvalue = 'zero'", "`value` must be a number"),
        ("[[layer]]\npattern = 'a'\nbias = 1", "`bias` must be true or false"),
        ("[[layer]]\npattern = 'a'\nunits = [1.5]", "`units` must be an integer"),
        ("[[layer]]\npattern = 'a'\nunits = []", "`units` must be a non-empty list"),
        ("[[layer]]\npattern = 'a'\nunits = 2", "`units` must be a non-empty list"),
        ("[[layer]]\npattern = 'a'\nindex = [[0, 'x']]", "`index` must be an integer"),
        ("[[layer]]\npattern = 'a'\nmask = 3", "`mask` must be a file path"),
        ("[[layer]]\npattern = 'a'\nfraction = 0.5", "needs a seed"),
        ("[[layer]]\npattern = 'a'\nseed = 1", "seed applies to rule 'fraction' only"),
        ("[[layer]]\npattern = 'a'\ninputs = [0]\nbias = true", "`bias` does not apply to rule 'inputs'"),
        ("[[layer]]\npattern = 'a'\nmask = 'missing.npy'", r"missing\.npy: no such file"),
        ("[[layer]]\npattern = 'a'\nbelow = -2", "threshold >= 0"),
        ("[[layer]]\npattern = 'a'\n[[layer]]\npattern = 'b'\n[[layer]]\npattern = 'a'\nbelow = 1",
         r"entry 3 \('a'\): 'a' is already pinned by entry 1"),
        ("[[layer]\npattern = 'a'", "is not valid TOML"),
    ],
)
def test_spec_errors_name_the_file_and_the_entry(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(KerasurgeryError, match=message) as caught:
        load_spec(path)
    assert str(path) in str(caught.value)


def test_spec_file_errors(tmp_path):
    with pytest.raises(KerasurgeryError, match="no such file"):
        load_spec(tmp_path / "absent.toml")
    with pytest.raises(KerasurgeryError, match="is a folder"):
        load_spec(tmp_path)
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(KerasurgeryError, match="not valid TOML"):
        load_spec(tmp_path / "binary.toml")


def test_rules_listed_match_the_library():
    from kerasurgery import rules

    # Every rule the spec names maps onto one of the library's rule helpers
    # (or a plain mask); nothing is reimplemented here. `prune_units` is not a
    # per-layer rule but the library's model-wide `ks.prune_units`.
    import kerasurgery

    assert set(RULES) - {"mask", "index", "prune_units"} <= set(rules.__all__)
    assert "entries" in rules.__all__ and "prune_units" in kerasurgery.__all__


def test_spec_does_not_import_tensorflow(tmp_path):
    path = write(tmp_path, "[[layer]]\npattern = 'a'\nbelow = 0.1\n")
    code = (
        "import sys; from kerasurgery.cli.spec import load_spec; "
        f"load_spec({str(path)!r}); "
        "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
