"""`kerasurgery._plan` on its own, in numpy: which layers a key selects, which it skips, what it pins.

`freeze` (Keras) and the offline rewrite of a `.keras` file both plan through
`_plan`, so these decisions are tested here once, without Keras: a glob's pins
that do not fit a layer skip it with a warning, a named layer's raise, a glob
that fits none of its layers raises, `exclude` leaves layers out, and a rule
that selects nothing warns.
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np
import pytest

from kerasurgery import _plan, pins, pruning
from kerasurgery.errors import LayerSelectionError, PinError
from kerasurgery.pins import Axes, Pin

DENSE = Axes(inputs=(0,), units=(1,))
RNG = np.random.default_rng(0)
# path -> (kernel, bias or None): `stem` has 3 inputs, so n:m with m=4 does not fit it.
WEIGHTS = {
    "stem": (RNG.normal(size=(3, 8)).astype("float32"), RNG.normal(size=8).astype("float32")),
    "block/dense": (RNG.normal(size=(8, 8)).astype("float32"), None),
    "head": (RNG.normal(size=(8, 4)).astype("float32"), RNG.normal(size=4).astype("float32")),
}
PATHS = list(WEIGHTS)


def select(key):
    pinnable = {path: (path.rpartition("/")[2], None) for path in PATHS}
    listing = _plan.listing("model", PATHS, ["Dense"])
    return _plan.select(key, pinnable, {p: (n, "Dense") for p, (n, _) in pinnable.items()},
                        ["Dense"], listing)


def plan_of(path):
    kernel, bias = WEIGHTS[path]
    return _plan.PinPlan({"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias})


def plan_all(pins_, **kwargs):
    """`_plan.plan_all` over WEIGHTS; returns (plans, the warnings it gave)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plans = _plan.plan_all(pins_, select, plan_of, lambda path: lambda w: DENSE,
                               lambda path: path.rpartition("/")[2], **kwargs)
    return plans, [w.message for w in caught]


def n_of_m_mask(path, n=2, m=4):
    return pruning.n_of_m_mask(WEIGHTS[path][0], n, m, (0,))


@pytest.mark.parametrize("key, selected, expected", [
    ("*", PATHS, True),
    ("s*", ["stem"], True),
    ("block/*", ["block/dense"], True),
    ("stem", ["stem"], False),
    ("dense", ["block/dense"], False),
    ("block/dense", ["block/dense"], False),
    # A name that holds glob characters, given whole, names its layer.
    ("[x]", ["[x]"], False),
    ("m/[x]", ["m/[x]"], False),
    ("[x]", ["m/x"], True),
])
def test_by_pattern_tells_a_glob_from_a_name(key, selected, expected):
    assert _plan.by_pattern(key, selected) is expected


def test_a_glob_skips_the_layer_its_rule_does_not_fit_and_pins_the_others():
    plans, caught = plan_all({"*": pruning.n_of_m(2, 4)})
    assert list(plans) == ["block/dense", "head"]  # stem: left as it is
    for path in plans:
        assert np.array_equal(plans[path].masks["kernel"], n_of_m_mask(path))
        assert plans[path].masks["kernel"].sum() == WEIGHTS[path][0].size // 2
    assert not plans["head"].masks["bias"].any()
    [skipped] = caught
    assert isinstance(skipped, _plan.LayerSkippedWarning)
    assert (skipped.path, skipped.key) == ("stem", "*")
    assert skipped.reason == (
        "Layer 'stem': The input axis of shape (3, 8) holds 3 entries, not a multiple "
        "of m=4; n:m pruning needs whole groups."
    )
    assert str(skipped) == f"Skipped layer 'stem', which '*' selects by pattern: {skipped.reason}"


@pytest.mark.parametrize("key", ["stem", "s*m"])
def test_a_named_layer_or_a_glob_of_one_that_does_not_fit_raises(key):
    with pytest.raises(PinError, match=r"^Layer 'stem': The input axis of shape \(3, 8\) holds 3 "
                                       r"entries, not a multiple of m=4; n:m pruning needs whole groups\.$"):
        plan_all({key: pruning.n_of_m(2, 4)})


def test_a_glob_that_fits_none_of_its_layers_raises():
    with pytest.raises(PinError, match=r"^Layer 'stem': .* not a multiple of m=5; n:m pruning needs "
                                       r"whole groups; the pins of '\*' fit none of the 3 layers it selects\.$"):
        plan_all({"*": pruning.n_of_m(1, 5)})


def test_a_layer_two_keys_select_keeps_the_pins_of_the_key_that_fits():
    rows = np.zeros((3, 8), bool)
    rows[1] = True
    plans, caught = plan_all({"stem": Pin(kernel=rows, kernel_value=0.5), "*": pruning.n_of_m(2, 4)})
    assert list(plans) == ["stem", "block/dense", "head"]
    assert np.array_equal(plans["stem"].masks["kernel"], rows)
    assert np.array_equal(plans["stem"].state()["kernel"].effective,
                          np.where(rows, np.float32(0.5), WEIGHTS["stem"][0]))
    assert [(w.path, w.key) for w in caught] == [("stem", "*")]


def test_a_bias_rule_skips_a_globbed_layer_without_bias():
    plans, caught = plan_all({"*": pins.below(0.5, bias=True, value=1.0)})
    assert list(plans) == ["stem", "head"]
    for path in plans:
        kernel, bias = WEIGHTS[path]
        assert np.array_equal(plans[path].masks["kernel"], np.abs(kernel) < 0.5)
        assert np.array_equal(plans[path].masks["bias"], np.abs(bias) < 0.5)
    assert [(w.path, w.key) for w in caught] == [("block/dense", "*")]
    assert caught[0].reason == "Layer 'dense': Rule 'below 0.5' targets the bias, but the layer has none."
    with pytest.raises(PinError, match="'dense': Rule 'zeros' targets the bias, but the layer has none"):
        plan_all({"dense": pins.zeros(bias=True)})


def test_a_ranking_across_layers_leaves_out_a_globbed_layer_without_bias():
    rule = pruning.smallest(0.5, bias=True, across_layers=True)
    plans, caught = plan_all({"*": rule})
    assert list(plans) == ["stem", "head"]
    assert [(w.path, w.key) for w in caught] == [("block/dense", "*")]
    # One ranking over the two layers that have a bias, as if only they were selected.
    expected = pruning.smallest_entries([WEIGHTS["stem"][0], WEIGHTS["head"][0]], (24 + 32) // 2)
    assert np.array_equal(plans["stem"].masks["kernel"], expected[0])
    assert np.array_equal(plans["head"].masks["kernel"], expected[1])
    biases = pruning.smallest_entries([WEIGHTS["stem"][1], WEIGHTS["head"][1]], (8 + 4) // 2)
    assert np.array_equal(plans["head"].masks["bias"], biases[1])
    with pytest.raises(PinError, match="targets the bias, but layer 'dense' has none"):
        plan_all({"dense": rule, "head": rule})


def test_a_mask_of_another_shape_skips_a_globbed_layer_and_keeps_its_plan_unchanged():
    mask = np.ones((8, 8), bool)
    plans, caught = plan_all({"*": Pin(kernel=mask)})
    assert list(plans) == ["block/dense"] and plans["block/dense"].masks["kernel"].all()
    assert sorted(w.path for w in caught) == ["head", "stem"]
    # stem's kernel mask does not fit, its bias mask would: nothing of the pin is kept.
    plan = plan_of("stem")
    with pytest.raises(PinError, match="kernel mask has the wrong shape"):
        plan.add([("bias", np.ones(8, bool), None), ("kernel", mask, None)], "stem")
    assert not plan.masks["bias"].any() and not plan.masks["kernel"].any()


def test_exclude_leaves_layers_out_of_every_key():
    plans, caught = plan_all({"*": pruning.n_of_m(2, 4)}, exclude=["stem"])
    assert list(plans) == ["block/dense", "head"] and caught == []
    plans, _ = plan_all({"*": pins.zeros(), "h*": pins.zeros()}, exclude=["block/*", "stem"])
    assert list(plans) == ["head"]
    plans, _ = plan_all({"*": pins.zeros()}, exclude="dense")  # one pattern, as a string
    assert list(plans) == ["stem", "head"]


@pytest.mark.parametrize("pins_, exclude, message", [
    ({"*": pins.zeros()}, ["*"], r"Every layer that '\*' selects is excluded: stem, block/dense, head\."),
    ({"head": pins.zeros()}, ["h*"], r"Every layer that 'head' selects is excluded: head\."),
    ({"*": pins.zeros()}, ["nope"], r"Cannot exclude 'nope': No supported layer matches 'nope'"),
])
def test_exclude_errors(pins_, exclude, message):
    with pytest.raises(LayerSelectionError, match=message):
        plan_all(pins_, exclude=exclude)


def test_a_rule_that_selects_nothing_warns_and_a_pin_does_not():
    plans, caught = plan_all({"*": pins.zeros()})  # normal weights: no exact zero
    assert list(plans) == PATHS and not any(p.masks["kernel"].any() for p in plans.values())
    [nothing] = caught
    assert isinstance(nothing, _plan.NothingPinnedWarning)
    assert (nothing.key, nothing.rule, nothing.layers) == ("*", "zeros", 3)
    assert str(nothing) == ("Rule 'zeros' selects no entry in any of the 3 layers that '*' "
                            "selects: nothing is pinned there.")
    _, caught = plan_all({"head": pins.zeros(), "stem": pins.below(10.0)})
    assert [str(w) for w in caught] == [
        "Rule 'zeros' selects no entry in the layer that 'head' selects: nothing is pinned there."
    ]
    # An empty Pin makes layers pin-capable on purpose (GradualPruning): no warning.
    _, caught = plan_all({"*": Pin()})
    assert caught == []


def test_check_settles_the_skips_before_the_layers_are_planned_one_by_one():
    """The offline rewrite: `check`, then `apply` per layer while writing, then `report`."""
    planner = _plan.Planner({"*": pruning.n_of_m(2, 4)}, select)
    planner.rank_across(plan_of, lambda path: path)
    planner.check(plan_of, lambda path: lambda w: DENSE, lambda path: path)
    assert planner.paths == ["block/dense", "head"]
    assert planner.skips_whole("stem") and not planner.skips_whole("head")
    for path in planner.paths:
        plan = planner.apply(path, plan_of(path), lambda w: DENSE, path)
        assert np.array_equal(plan.masks["kernel"], n_of_m_mask(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        planner.report()
    assert [(w.message.path, w.message.key) for w in caught] == [("stem", "*")]


def test_once_settled_a_glob_that_does_not_fit_raises():
    planner = _plan.Planner({"*": pruning.n_of_m(2, 4)}, select)
    planner.settle()
    with pytest.raises(PinError, match="not a multiple of m=4"):
        planner.apply("stem", plan_of("stem"), lambda w: DENSE, "stem")


@pytest.mark.parametrize("spec", [pruning.smallest(0.5), pruning.smallest(0.5, bias=True, across_layers=True)])
def test_plan_each_holds_one_layer_at_a_time(spec):
    # `freeze` plans, pins and drops one layer at a time, across-layer
    # ranking included: at most the plan being pinned is alive (the old
    # `plan_all` held every layer's plan at once).
    alive, most, pinned = weakref.WeakSet(), [0], {}

    def counted(path):
        plan = plan_of(path)
        alive.add(plan)
        most[0] = max(most[0], len(alive))
        return plan

    def pin(path, plan):
        most[0] = max(most[0], len(alive))
        pinned[path] = plan.take()

    planner = _plan.Planner({"*": spec}, select)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # block/dense has no bias: skipped
        _plan.plan_each(planner, counted, lambda path: lambda w: DENSE,
                        lambda path: path.rpartition("/")[2], pin)
    assert most[0] == 1
    plans, _ = plan_all({"*": spec})  # the same pins as planning everything at once
    assert list(pinned) == list(plans)
    for path, plan in plans.items():
        for weight, (mask, value) in pinned[path].items():
            np.testing.assert_array_equal(mask, plan.masks[weight])
            np.testing.assert_array_equal(value, plan.state()[weight].value)


@pytest.mark.parametrize("shape", [(3, 5), (8,), (7, 3, 2), (1,)])
def test_a_settled_plan_takes_what_the_plan_takes(shape):
    # In-place `freeze` keeps each small plan from its first pass, masks
    # packed to bits (sizes that are no multiple of 8 too), and pins it later.
    rng = np.random.default_rng(len(shape))
    kernel = rng.normal(size=shape).astype("float32")
    bias = rng.normal(size=(4,)).astype("float32")
    masks = rng.random(shape) < 0.4, np.array([True, False, False, True])

    def planned():
        plan = _plan.PinPlan({"kernel": kernel.copy(), "bias": bias.copy()})
        return plan.add([("kernel", masks[0], 0.0), ("bias", masks[1], None)], "layer")

    want = planned().take()
    settled = planned().settled()
    assert settled is not None
    got = settled.plan()
    assert got.storage() == {"kernel": "shared", "bias": "per_entry"}
    got = got.take()
    assert got.keys() == want.keys()
    for w in want:
        assert got[w][0].dtype == np.bool_ and np.array_equal(got[w][0], want[w][0])
        assert got[w][1].dtype == want[w][1].dtype and np.array_equal(got[w][1], want[w][1])
    # Pinned values that differ per entry are weight-sized: not kept.
    weight = np.array([1.0, 2.0, 3.0], "float32")
    per_entry = _plan.PinPlan({"kernel": weight}).add([("kernel", np.array([True, True, False]), None)], "layer")
    assert per_entry.storage()["kernel"] == "per_entry" and per_entry.settled() is None
