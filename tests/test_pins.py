"""The pin rules: each builds exactly the mask its name promises."""

from __future__ import annotations

import numpy as np
import pytest

from kerasurgery import rules
from kerasurgery.errors import PinError
from kerasurgery.pins import Pin

KERNEL = np.array([[0.0, 0.5, -0.01], [2.0, 0.0, 0.2], [-0.3, 0.04, -0.0]], "float32")
BIAS = np.array([0.0, 0.1, -0.02], "float32")


def test_zeros_pins_exact_zeros_only_and_keeps_values_by_default():
    pin = rules.zeros()(KERNEL, BIAS)
    assert np.array_equal(pin.kernel, KERNEL == 0)
    assert pin.kernel.sum() == 3
    assert pin.bias is None and pin.kernel_value is None


def test_zeros_with_bias_and_value():
    pin = rules.zeros(bias=True, value=1.5)(KERNEL, BIAS)
    assert pin.bias.tolist() == [True, False, False]
    assert pin.kernel_value == 1.5 and pin.bias_value == 1.5


def test_below_is_strict_magnitude():
    pin = rules.below(0.2)(KERNEL, BIAS)
    assert np.array_equal(pin.kernel, np.abs(KERNEL) < 0.2)
    assert not pin.kernel[1, 2]  # |0.2| is not < 0.2
    assert pin.kernel.sum() == 5


def test_fraction_is_exact_in_count_and_reproducible():
    w = np.ones((10, 7), "float32")
    a = rules.fraction(0.3, seed=4)(w, None)
    b = rules.fraction(0.3, seed=4)(w, None)
    c = rules.fraction(0.3, seed=5)(w, None)
    assert a.kernel.sum() == 21
    assert np.array_equal(a.kernel, b.kernel)
    assert not np.array_equal(a.kernel, c.kernel)
    with_bias = rules.fraction(0.3, seed=4, bias=True)(w, np.ones(7, "float32"))
    assert np.array_equal(with_bias.kernel, a.kernel)
    assert with_bias.bias.sum() == 2


def test_connections_pin_absent_connections_to_zero():
    matrix = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]])
    pin = rules.connections(matrix)(KERNEL, BIAS)
    assert np.array_equal(pin.kernel, matrix == 0)
    assert pin.kernel_value == 0.0
    assert rules.connections(matrix, value=None)(KERNEL, BIAS).kernel_value is None


def test_entries_inputs_units():
    pin = rules.entries([(0, 1), (2, 2)], bias=[1])(KERNEL, BIAS)
    assert np.argwhere(pin.kernel).tolist() == [[0, 1], [2, 2]]
    assert pin.bias.tolist() == [False, True, False]
    pin = rules.inputs([1])(KERNEL, BIAS)
    assert pin.kernel.sum() == 3 and pin.kernel[1].all() and pin.bias is None
    pin = rules.units([0, 2], value=0.0)(KERNEL, BIAS)
    assert pin.kernel[:, [0, 2]].all() and not pin.kernel[:, 1].any()
    assert pin.bias.tolist() == [True, False, True]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: rules.below(-1), "threshold >= 0"),
        (lambda: rules.below("x"), "Expected a number for threshold"),
        (lambda: rules.fraction(1.5, seed=0), "between 0 and 1"),
        (lambda: rules.fraction(float("nan"), seed=0), "finite"),
        (lambda: rules.connections([[0, 2]]), "only 0 and 1"),
        (lambda: rules.entries([(1, 2, 3)])(np.zeros((2, 2)), None), "index of 2 numbers"),
    ],
)
def test_bad_rule_arguments(make, match):
    with pytest.raises(PinError, match=match):
        make()


@pytest.mark.parametrize(
    "rule, match",
    [
        (rules.entries([(3, 0)]), r"index \(3, 0\) is out of range for shape \(3, 3\)"),
        (rules.inputs([5]), "input index 5 is out of range"),
        (rules.units([-4]), "unit index -4 is out of range"),
        (rules.connections(np.ones((2, 3))), r"Expected: \(3, 3\)\. Received: \(2, 3\)"),
    ],
)
def test_rules_that_do_not_fit_the_layer(rule, match):
    with pytest.raises(PinError, match=match):
        rule(KERNEL, BIAS)


def test_bias_rule_on_a_layer_without_bias():
    with pytest.raises(PinError, match="has none"):
        rules.zeros(bias=True)(KERNEL, None)


def test_pin_defaults_pin_nothing():
    assert Pin() == Pin(kernel=None, bias=None, kernel_value=None, bias_value=None)


def test_units_on_a_layer_without_bias_pins_the_columns_only():
    pin = rules.units([1])(KERNEL, None)
    assert pin.kernel[:, 1].all() and pin.kernel.sum() == 3 and pin.bias is None
    assert rules.units([1], bias=False)(KERNEL, BIAS).bias is None
    with pytest.raises(PinError, match="has none"):
        rules.units([1], bias=True)(KERNEL, None)
