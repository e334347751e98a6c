"""Magnitude pruning rules: exact counts, ties, global ordering, n:m groups, whole units."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import kerasurgery as ks
from kerasurgery import _plan, pruning
from kerasurgery.cli import main
from kerasurgery.errors import KerasurgeryError, PinError
from tests.helpers import bits
from tests.helpers import n_of_m_mask as _n_of_m

L = keras.layers


def _model(seed: int = 0) -> keras.Model:
    """Conv2D (3x3x4 -> 8), Dense 32 -> 12, Dense 12 -> 4 with ties planted in `hidden`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 4), name="x")
    h = L.Conv2D(8, 3, name="conv")(inputs)
    h = L.Dense(12, name="hidden")(L.Flatten()(h))
    outputs = L.Dense(4, name="out")(h)
    model = keras.Model(inputs, outputs, name="net")
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:4, :] = 0.125  # 48 equal magnitudes, some negative
    kernel[0, :6] = -0.125
    model.get_layer("hidden").set_weights([kernel, bias])
    return model


def _state(model, name, weight="kernel"):
    return model.get_layer(name).pin_state()[weight]


def _smallest(weights: list[np.ndarray], count: int) -> list[np.ndarray]:
    """The documented selection, written out independently: the `count` smallest
    |w| over all `weights` together, ties to the earlier array, then the lower
    flat index (a stable sort of the concatenated magnitudes)."""
    flat = np.concatenate([np.abs(np.asarray(w, np.float64)).ravel() for w in weights])
    chosen = np.zeros(flat.size, bool)
    chosen[np.argsort(flat, kind="stable")[:count]] = True
    masks, start = [], 0
    for w in weights:
        masks.append(chosen[start:start + w.size].reshape(w.shape))
        start += w.size
    return masks


# -- smallest ------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_smallest_pins_exactly_round_fraction_size_of_each_layer(fraction):
    model = _model()
    frozen = ks.freeze(model, {"*": ks.rules.smallest(fraction)})
    for name in ("conv", "hidden", "out"):
        before = model.get_layer(name).get_weights()[0]
        state = _state(frozen, name)
        assert np.count_nonzero(state.mask) == round(fraction * before.size)
        # The smallest ones, ties to the lower flat index: exactly the expected mask.
        [expected] = _smallest([before], round(fraction * before.size))
        np.testing.assert_array_equal(state.mask, expected)
        # Pinned at exactly +0.0; the rest unchanged bit for bit.
        assert np.all(bits(state.effective)[state.mask] == 0)
        np.testing.assert_array_equal(bits(state.effective)[~state.mask], bits(before)[~state.mask])
        assert not _state(frozen, name, "bias").mask.any()


def test_smallest_breaks_ties_by_lower_flat_index():
    weight = np.array([[0.5, -0.25, 0.25], [0.25, 0.1, -0.25]], np.float32)
    mask = ks.rules.smallest(0.5)(weight, None).kernel
    # 0.1 first, then the first two of the four 0.25s in C order.
    np.testing.assert_array_equal(mask, [[False, True, True], [False, True, False]])
    # The planted ties of `hidden`: 48 entries of |w| = 0.125 in rows 0-3.
    model = _model()
    before = model.get_layer("hidden").get_weights()[0]
    below = int(np.count_nonzero(np.abs(before) < 0.125))
    count = below + 10
    mask = ks.rules.smallest(count / before.size)(before, None).kernel
    tied = np.flatnonzero(np.abs(before) == 0.125)
    np.testing.assert_array_equal(np.flatnonzero(mask.ravel() & (np.abs(before.ravel()) == 0.125)), tied[:10])


def test_smallest_counts_nan_as_largest():
    weight = np.array([np.nan, 3.0, -1.0, 2.0], np.float32)
    np.testing.assert_array_equal(ks.rules.smallest(0.75)(weight, None).kernel, [False, True, True, True])


def test_smallest_with_bias_and_value():
    model = _model()
    frozen = ks.freeze(model, {"out": ks.rules.smallest(0.5, bias=True, value=0.25)})
    kernel, bias_before = model.get_layer("out").get_weights()
    state, bias = _state(frozen, "out"), _state(frozen, "out", "bias")
    [kernel_mask], [bias_mask] = _smallest([kernel], 24), _smallest([bias_before], 2)
    np.testing.assert_array_equal(state.mask, kernel_mask)
    np.testing.assert_array_equal(bias.mask, bias_mask)
    # Pinned entries hold exactly 0.25, the others their values, bit for bit.
    np.testing.assert_array_equal(bits(state.effective), bits(np.where(kernel_mask, np.float32(0.25), kernel)))
    np.testing.assert_array_equal(bits(bias.effective), bits(np.where(bias_mask, np.float32(0.25), bias_before)))


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.83])
def test_smallest_across_layers_uses_one_threshold(fraction):
    model = _model()
    frozen = ks.freeze(model, {"*": ks.rules.smallest(fraction, across_layers=True)})
    before = {n: model.get_layer(n).get_weights()[0] for n in ("conv", "hidden", "out")}
    masks = {n: _state(frozen, n).mask for n in before}
    total = sum(w.size for w in before.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(fraction * total)
    # One global ranking, in model order: exactly the expected masks.
    expected = _smallest(list(before.values()), round(fraction * total))
    for (name, mask), want in zip(masks.items(), expected):
        np.testing.assert_array_equal(mask, want, err_msg=name)
    # Layers end at different sparsities (which one ranking per layer would not give).
    assert len({round(float(m.mean()), 6) for m in masks.values()}) > 1


def test_smallest_across_layers_ties_go_to_the_earlier_layer():
    a, b = np.full((2, 2), 0.5, np.float32), np.full((3,), 0.5, np.float32)
    rule = ks.rules.smallest(5 / 7, across_layers=True)
    masks = rule.across([a, b])
    assert masks[0].all() and masks[1].tolist() == [True, False, False]


@pytest.mark.parametrize("seed", range(4))
def test_ranking_a_piece_at_a_time_selects_what_ranking_all_at_once_selects(seed, monkeypatch):
    # `freeze` ranks layers read one at a time, in pieces (`smallest_cuts`);
    # the same entries as the in-memory selection, over float16/32/64 arrays
    # with ties, signed zeros, infinities and NaN, and pieces of 7 entries.
    monkeypatch.setattr(pruning, "_PIECE", 7)
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, 0.5, -0.5, np.inf, -np.inf, np.nan, 2.0])
    arrays = [
        rng.choice(special, size=(5, 6)).astype("float32"),
        rng.normal(size=(13,)).astype("float16"),
        np.where(rng.random((4, 3)) < 0.5, 0.5, rng.normal(size=(4, 3))),  # float64
        rng.normal(size=(3, 3, 2)).astype("float32"),
    ]
    total = sum(a.size for a in arrays)
    for count in (0, 1, total // 3, total // 2, total - 1, total):
        cuts = pruning.smallest_cuts(lambda: iter(arrays), lambda n: count)
        got = [cut.mask(a) for cut, a in zip(cuts, arrays)]
        want = pruning.smallest_entries(arrays, count)
        assert sum(int(m.sum()) for m in got) == count
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    finite = arrays[1:]
    count = sum(a.size for a in finite) // 2
    cuts = pruning.smallest_cuts(lambda: iter(finite), lambda n: count)
    for cut, a, w in zip(cuts, finite, _smallest(finite, count)):
        np.testing.assert_array_equal(cut.mask(a), w)


def _read_in_rows(array: np.ndarray, reads: list) -> _plan.SlicedWeight:
    """`array` as `freeze` hands a large weight to a rule: read a slice of rows at a time, never whole."""
    def rows(start, stop):
        reads.append(stop - start)
        return array[start:stop].copy()

    def whole():
        raise AssertionError("the whole weight was read")

    return _plan.SlicedWeight(array.shape, array.dtype, rows, whole)


@pytest.mark.parametrize("piece", [1, 7, 1 << 18])
@pytest.mark.parametrize("seed", range(3))
def test_weights_read_in_row_slices_select_what_whole_arrays_select(seed, piece, monkeypatch):
    # A large weight reaches `smallest` (per layer and across layers) as a
    # `SlicedWeight`, read in slices of rows whose size is not the piece
    # size: the same entries as the whole-array selection, on ties, signed
    # zeros, infinities and NaN, and never read whole.
    monkeypatch.setattr(pruning, "_PIECE", piece)
    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, 0.5, -0.5, np.inf, -np.inf, np.nan, 2.0])
    arrays = [
        rng.choice(special, size=(9, 5)).astype("float32"),
        rng.normal(size=(13,)).astype("float16"),
        np.where(rng.random((4, 3, 2)) < 0.5, -0.5, rng.normal(size=(4, 3, 2))),  # float64
    ]
    reads: list[list[int]] = [[] for _ in arrays]
    sliced = [_read_in_rows(a, r) for a, r in zip(arrays, reads)]
    for fraction in (0.0, 0.3, 0.5, 0.77, 1.0):
        rule = ks.rules.smallest(fraction)
        for a, w in zip(arrays, sliced):
            want = pruning.smallest_entries([a], round(fraction * a.size))[0]
            got = rule(w, None).kernel
            assert got.shape == a.shape
            np.testing.assert_array_equal(got, want)
        total = sum(a.size for a in arrays)
        cuts = ks.rules.smallest(fraction, across_layers=True).across.cuts(lambda: iter(sliced))
        want = pruning.smallest_entries(arrays, round(fraction * total))
        for cut, w, m in zip(cuts, sliced, want):
            np.testing.assert_array_equal(cut.mask(w), m)
    for a, r in zip(arrays, reads):
        row = a.size // a.shape[0]
        assert r and max(r) == min(a.shape[0], max(1, piece // row))


def test_ranking_a_piece_at_a_time_refuses_more_entries_than_there_are():
    with pytest.raises(PinError, match="Cannot select 5 entries: 4"):
        pruning.smallest_cuts(lambda: iter([np.zeros(4, np.float32)]), lambda n: 5)


def test_smallest_across_layers_spans_every_key_of_one_rule():
    model = _model()
    rule = ks.rules.smallest(0.5, across_layers=True)
    frozen = ks.freeze(model, {"hidden": rule, "out": rule})
    assert not ks.layers.is_pinned(frozen.get_layer("conv"))
    total = 32 * 12 + 12 * 4
    assert _state(frozen, "hidden").mask.sum() + _state(frozen, "out").mask.sum() == round(0.5 * total)
    kernels = [model.get_layer(n).get_weights()[0] for n in ("hidden", "out")]
    for name, want in zip(("hidden", "out"), _smallest(kernels, round(0.5 * total))):
        np.testing.assert_array_equal(_state(frozen, name).mask, want, err_msg=name)


# -- n:m -------------------------------------------------------------------------


def test_n_of_m_pins_n_smallest_in_every_group_along_the_inputs():
    model = _model()
    frozen = ks.freeze(model, {"*": ks.rules.n_of_m(2, 4)})
    dense = model.get_layer("hidden").get_weights()[0]  # (32, 12): groups of 4 rows per column
    mask = _state(frozen, "hidden").mask
    groups = mask.reshape(8, 4, 12)
    assert np.all(groups.sum(axis=1) == 2)
    np.testing.assert_array_equal(mask, _n_of_m(dense, 2, 4, axis=0))
    # Ties inside a group: the lower index. Rows 0-3 hold four equal |w| in every column.
    assert np.all(groups[0, :2, :]) and not np.any(groups[0, 2:, :])
    conv_kernel = model.get_layer("conv").get_weights()[0]
    conv = _state(frozen, "conv").mask  # (3, 3, 4, 8): groups along the 4 input channels
    assert np.all(conv.sum(axis=2) == 2)
    np.testing.assert_array_equal(conv, _n_of_m(conv_kernel, 2, 4, axis=2))
    np.testing.assert_array_equal(
        bits(_state(frozen, "conv").effective), bits(np.where(conv, np.float32(0), conv_kernel)))


def test_n_of_m_refuses_an_input_axis_that_is_not_a_multiple():
    model = _model()
    with pytest.raises(PinError, match=r"'out'.*not a multiple of m=5"):
        ks.freeze(model, {"out": ks.rules.n_of_m(2, 5)})
    with pytest.raises(PinError, match="0 <= n <= m"):
        ks.rules.n_of_m(5, 4)


def test_n_of_m_on_einsum_dense_groups_its_contracted_axis():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((3, 8))
    outputs = L.EinsumDense("abc,cd->abd", output_shape=(3, 6), bias_axes="d", name="ein")(inputs)
    model = keras.Model(inputs, outputs)
    frozen = ks.freeze(model, {"ein": ks.rules.n_of_m(1, 4)})
    mask = _state(frozen, "ein").mask  # (8, 6)
    assert np.all(mask.reshape(2, 4, 6).sum(axis=1) == 1)
    np.testing.assert_array_equal(mask, _n_of_m(model.get_layer("ein").get_weights()[0], 1, 4, axis=0))


# -- whole units -------------------------------------------------------------------


@pytest.mark.parametrize("norm", [1, 2])
def test_smallest_units_pins_whole_filters_by_norm(norm):
    model = _model()
    frozen = ks.freeze(model, {"conv": ks.rules.smallest_units(0.25, norm=norm)})
    kernel = model.get_layer("conv").get_weights()[0]  # (3, 3, 4, 8)
    norms = np.abs(kernel).reshape(-1, 8).sum(0) if norm == 1 else np.sqrt(np.square(kernel).reshape(-1, 8).sum(0))
    chosen = np.sort(np.argsort(norms, kind="stable")[:2])
    state, bias = _state(frozen, "conv"), _state(frozen, "conv", "bias")
    np.testing.assert_array_equal(np.flatnonzero(state.mask.reshape(-1, 8).all(0)), chosen)
    assert state.mask.sum() == 2 * 36
    np.testing.assert_array_equal(np.flatnonzero(bias.mask), chosen)
    assert np.all(bits(state.effective)[state.mask] == 0) and np.all(bits(bias.effective)[bias.mask] == 0)


def test_smallest_units_l1_and_l2_can_disagree():
    kernel = np.array([[1.2, 0.7], [0.0, 0.7]], np.float32)  # L1: 1.2 vs 1.4; L2: 1.2 vs 0.99
    np.testing.assert_array_equal(ks.rules.smallest_units(0.5, norm=1)(kernel, None).kernel,
                                  [[True, False], [True, False]])
    np.testing.assert_array_equal(ks.rules.smallest_units(0.5, norm=2)(kernel, None).kernel,
                                  [[False, True], [False, True]])


# -- values of the rules ------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ks.rules.smallest(1.5), "between 0 and 1"),
        (lambda: ks.rules.smallest("x"), "Expected a number"),
        (lambda: ks.rules.smallest_units(0.5, norm=3), "norm 1 or 2"),
        (lambda: ks.rules.n_of_m(2.0, 4), "integer n"),
        (lambda: ks.rules.n_of_m(1, 0), "m >= 1"),
    ],
)
def test_bad_rule_arguments(make, match):
    with pytest.raises(KerasurgeryError, match=match):
        make()


def test_selection_is_exact_for_large_counts():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(300, 200)).astype("float32"), rng.normal(size=(500,)).astype("float16")]
    masks = pruning.smallest_entries(weights, 31_234)
    assert sum(int(m.sum()) for m in masks) == 31_234
    for mask, want in zip(masks, _smallest(weights, 31_234)):
        np.testing.assert_array_equal(mask, want)


# -- command line and spec files ------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "net.keras"
    _model().save(path)
    return path


def _pinned(capsys, path) -> dict[str, int]:
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    return {layer["name"]: layer["pinned_kernel"] for layer in json.loads(capsys.readouterr().out)["layers"]
            if layer["pinned_kernel"]}


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--smallest", "0.5"], {"conv": 144, "hidden": 192, "out": 24}),
        (["--smallest", "0.5", "--across-layers"], None),
        (["--n-of-m", "2:4", "--layer", "conv", "--layer", "hidden"], {"conv": 144, "hidden": 192}),
        (["--smallest-units", "0.25", "--norm", "2", "--layer", "out"], {"out": 12}),
    ],
)
def test_cli_forms(saved, tmp_path, capsys, flags, expected):
    out = tmp_path / "out.keras"
    assert main(["freeze", str(saved), "-o", str(out), *flags]) == 0
    counts = _pinned(capsys, out)
    if expected is None:
        # One ranking over the three kernels of the saved model (the same seed, the same weights).
        model = _model()
        kernels = [model.get_layer(n).get_weights()[0] for n in ("conv", "hidden", "out")]
        masks = _smallest(kernels, round(0.5 * (288 + 384 + 48)))
        expected = {n: int(m.sum()) for n, m in zip(("conv", "hidden", "out"), masks) if m.any()}
    assert counts == expected


def test_spec_forms(saved, tmp_path, capsys):
    spec = tmp_path / "prune.toml"
    spec.write_text(
        '[[layer]]\npattern = "conv"\nn_of_m = "2:4"\n\n'
        '[[layer]]\npattern = "hidden"\nsmallest = 0.75\nacross_layers = true\n\n'
        '[[layer]]\npattern = "out"\nsmallest_units = 0.5\nnorm = 1\n'
    )
    out = tmp_path / "out.keras"
    assert main(["freeze", str(saved), "-o", str(out), "--spec", str(spec)]) == 0
    assert _pinned(capsys, out) == {"conv": 144, "hidden": 288, "out": 24}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--n-of-m", "2-4"], "expected N:M"),
        (["--smallest", "0.5", "--norm", "2"], "A norm applies to rules 'smallest_units' and 'prune_units' only, not 'smallest'"),
        (["--units", "0", "--across-layers"], "across_layers` applies to rule 'smallest' only"),
        (["--n-of-m", "2:4", "--bias"], "n:m groups run along"),
    ],
)
def test_cli_usage_errors(saved, tmp_path, capsys, flags, message):
    assert main(["freeze", str(saved), "-o", str(tmp_path / "o.keras"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.keras").exists()


def test_spec_bad_n_of_m(saved, tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('[[layer]]\npattern = "conv"\nn_of_m = "two:four"\n')
    assert main(["freeze", str(saved), "-o", str(tmp_path / "o.keras"), "--spec", str(spec)]) == 1
    assert 'must look like "2:4"' in capsys.readouterr().err
