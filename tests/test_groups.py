"""Dependency groups (`kerasurgery.model.groups`), checked on their own before anything is removed."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kerasurgery.errors import KerasurgeryError
from kerasurgery.model.groups import dependency_groups

L = keras.layers


def _members(group) -> dict[tuple[str, str, int], tuple]:
    return {(m.layer, m.weight, m.axis): m.indices for m in group.members}


def test_a_dense_chain_couples_a_column_and_bias_with_the_next_rows():
    model = keras.Sequential([keras.Input((5,)), L.Dense(3, name="d1"), L.Dense(2, name="d2")])
    groups = dependency_groups(model)
    assert [g.producers for g in groups] == [("d1",), ("d2",)]
    assert repr(groups.of("d1")) == (
        "Group(d1: 3 units, 0 removable)\n"
        "  d1:kernel[axis 1] [0, 1, 2]\n"
        "  d1:bias[axis 0] [0, 1, 2]\n"
        "  d2:kernel[axis 0] [0, 1, 2]"
    )
    assert groups.of("d1").prunable and groups.of("d1").left == ()


def test_the_model_output_is_left_alone_and_says_why():
    model = keras.Sequential([keras.Input((5,)), L.Dense(3, name="d1"), L.Dense(2, name="d2")])
    out = dependency_groups(model).of("d2")
    assert out.left == ("a model output",) and not out.prunable
    assert out.removable_units() == []
    assert repr(out).startswith("Group(d2: 2 units, left: a model output)")


def test_conv_then_batch_norm_couples_every_normalization_entry():
    x = keras.Input((6, 6, 2))
    y = L.Conv2D(3, 3, name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.Activation("relu", name="act")(y)
    y = L.Conv2D(4, 1, name="next")(y)
    model = keras.Model(x, L.GlobalAveragePooling2D()(y))
    members = _members(dependency_groups(model).of("conv"))
    units = ((0,), (1,), (2,))
    assert members == {
        ("conv", "kernel", 3): units, ("conv", "bias", 0): units,
        ("bn", "gamma", 0): units, ("bn", "beta", 0): units,
        ("bn", "moving_mean", 0): units, ("bn", "moving_variance", 0): units,
        ("next", "kernel", 2): units,
    }


def test_a_residual_add_makes_the_branches_one_group():
    x = keras.Input((4,))
    a = L.Dense(3, name="a")(x)
    b = L.Dense(3, name="b")(x)
    s = L.Add(name="add")([a, b])
    model = keras.Model(x, L.Dense(2, name="out")(L.ReLU()(s)))
    groups = dependency_groups(model)
    assert [g.producers for g in groups] == [("a", "b"), ("out",)]
    assert set(_members(groups.of("b"))) == {
        ("a", "kernel", 1), ("a", "bias", 0), ("b", "kernel", 1), ("b", "bias", 0),
        ("out", "kernel", 0),
    }


def test_an_add_with_a_model_input_leaves_the_channels():
    x = keras.Input((3,))
    s = L.Add(name="add")([x, L.Dense(3, name="a")(x)])
    model = keras.Model(x, L.Dense(2, name="out")(s))
    assert dependency_groups(model).of("a").left == (
        "merged by 'add' with a channel no layer here makes",)


def test_concatenate_gives_each_branch_its_offset():
    x = keras.Input((4,))
    a = L.Dense(2, name="a")(x)
    b = L.Dense(3, name="b")(x)
    model = keras.Model(x, L.Dense(1, name="out")(L.Concatenate()([a, b])))
    groups = dependency_groups(model)
    assert _members(groups.of("a"))[("out", "kernel", 0)] == ((0,), (1,))
    assert _members(groups.of("b"))[("out", "kernel", 0)] == ((2,), (3,), (4,))


def test_flatten_gives_each_channel_a_strided_block_of_rows():
    x = keras.Input((2, 3, 1))
    y = L.Flatten(name="flat")(L.Conv2D(2, 1, name="conv")(x))
    model = keras.Model(x, L.Dense(1, name="out")(y))
    rows = _members(dependency_groups(model).of("conv"))[("out", "kernel", 0)]
    assert rows == ((0, 2, 4, 6, 8, 10), (1, 3, 5, 7, 9, 11))


def test_depthwise_couples_its_input_and_output_channels():
    x = keras.Input((5, 5, 1))
    y = L.Conv2D(2, 1, name="conv")(x)
    y = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(y)
    model = keras.Model(x, L.GlobalMaxPooling2D()(L.Conv2D(1, 1, name="out")(y)))
    members = _members(dependency_groups(model).of("conv"))
    assert members[("dw", "kernel", 2)] == ((0,), (1,))
    assert members[("dw", "bias", 0)] == ((0, 1), (2, 3))
    assert members[("out", "kernel", 2)] == ((0, 1), (2, 3))
    assert dependency_groups(model).of("conv").prunable


def test_a_batch_normalization_whose_gamma_and_beta_cannot_be_pinned_is_reported():
    # prune_units pins a BN's gamma and beta (issue 20); renorm=True is not pinnable.
    x = keras.Input((4,))
    y = L.BatchNormalization(renorm=True, name="bn")(L.Dense(3, name="a")(x))
    groups = dependency_groups(keras.Model(x, L.Dense(1, name="out")(y)))
    assert groups.of("a").left == (
        "read by 'bn' (BatchNormalization: its gamma and beta cannot be pinned (renorm=True))",)


def test_layer_normalization_and_unknown_layers_are_reported_not_guessed():
    x = keras.Input((4,))
    a = L.Dense(3, name="a")(x)
    b = L.Dense(3, name="b")(L.LayerNormalization(name="ln")(a))
    model = keras.Model(x, L.Dense(1, name="out")(L.RepeatVector(2, name="rs")(b)))
    groups = dependency_groups(model)
    assert groups.of("a").left == ("read by 'ln' (LayerNormalization: normalizes across channels)",)
    assert groups.of("b").left[0].startswith("read by 'rs' (RepeatVector")
    assert dict(groups.unknown) == {
        "ln": "normalizes across channels",
        "rs": "a kind whose channels the graph does not follow",
    }


@pytest.mark.parametrize("head", [
    L.Dense(4, activation="softmax", name="head"),
    L.Dense(4, activation="log_softmax", name="head"),
    L.Conv1D(4, 1, activation="softmax", name="head"),
])
def test_a_softmax_head_reads_its_inputs_and_leaves_only_its_own_units(head):
    x = keras.Input((3, 8))
    hidden = L.Dense(16, activation="relu", name="hidden")(x)
    groups = dependency_groups(keras.Model(x, L.Dense(2, name="out")(head(hidden))))
    assert groups.of("hidden").prunable and groups.of("hidden").left == ()
    assert _members(groups.of("hidden"))[("head", "kernel", head.kernel.ndim - 2)] == tuple(
        (i,) for i in range(16))
    name = head.get_config()["activation"]
    why = f"its activation {name!r} is not known to act entry by entry"
    assert groups.of("head").left == (why,)
    assert groups.unknown == ()


def test_a_nested_models_inputs_say_which_units_they_carry():
    i = keras.Input((7,), name="inner_in")
    inner = keras.Model(i, L.Dense(2, name="i1")(i), name="inner")
    x = keras.Input((3,))
    a = L.Dense(2, name="a")(x)
    groups = dependency_groups(keras.Model(x, L.Dense(1, name="out")(
        inner(L.Concatenate()([a, x, a])))))
    assert groups.inputs == {"inner/inner_in": (
        (("a",), 0), (("a",), 1), None, None, None, (("a",), 0), (("a",), 1))}


def test_a_constant_unit_is_folded_into_a_dense_bias():
    model = keras.Sequential([
        keras.Input((3,)), L.Dense(2, activation="sigmoid", name="s"),
        L.Dense(2, activation="relu", name="r"), L.Dense(1, name="out"),
    ])
    for layer in model.layers[:2]:
        layer.kernel.assign(np.zeros(layer.kernel.shape))
    groups = dependency_groups(model)
    # sigmoid(0) = 0.5 in each unit, which `r`'s bias absorbs; relu(0) = 0.
    assert groups.of("s").removable == (True, True) and groups.of("s").prunable
    assert [[f.values for f in unit] for unit in groups.of("s").folds] == [[(0.5,)], [(0.5,)]]
    assert repr(groups.of("s")) == (
        "Group(s: 2 units, 2 removable)\n"
        "  s:kernel[axis 1] [0, 1]\n"
        "  s:bias[axis 0] [0, 1]\n"
        "  r:kernel[axis 0] [0, 1]\n"
        "  unit 0: r:bias += [0] x [0.5]\n"
        "  unit 1: r:bias += [1] x [0.5]"
    )
    assert groups.of("r").removable == (True, True) and groups.of("r").folds == ((), ())


def test_a_constant_unit_read_with_same_padding_is_not_removable():
    x = keras.Input((6, 6, 1))
    y = L.Conv2D(2, 1, activation="sigmoid", name="s")(x)
    y = L.Conv2D(2, 3, padding="same", name="same")(y)
    model = keras.Model(x, L.GlobalAveragePooling2D()(L.Conv2D(1, 1, name="out")(y)))
    layer = model.get_layer("s")
    layer.kernel.assign(np.zeros(layer.kernel.shape))
    group = dependency_groups(model).of("s")
    # The border of `same` sees zero padding, not 0.5: no bias can absorb it.
    assert group.removable == (False, False) and not group.prunable


def test_squeeze_and_excitation_couples_the_scale_with_the_features_it_multiplies():
    x = keras.Input((4, 4, 2))
    y = L.Conv2D(3, 1, name="conv")(x)
    se = L.Reshape((1, 1, 3), name="reshape")(L.GlobalAveragePooling2D()(y))
    se = L.Conv2D(3, 1, activation="sigmoid", name="expand")(L.Conv2D(1, 1, name="reduce")(se))
    y = L.Multiply(name="excite")([y, se])
    model = keras.Model(x, L.GlobalAveragePooling2D()(L.Conv2D(1, 1, name="out")(y)))
    groups = dependency_groups(model)
    assert groups.of("conv").producers == ("conv", "expand") and groups.reshapes == ("reshape",)
    assert set(_members(groups.of("conv"))) == {
        ("conv", "kernel", 3), ("conv", "bias", 0), ("reduce", "kernel", 2),
        ("expand", "kernel", 3), ("expand", "bias", 0), ("out", "kernel", 2),
    }
    # Pinned, the features are 0 and the scale sigmoid(0) = 0.5: the product is 0.
    assert groups.of("conv").prunable


def test_a_reshape_that_moves_the_channels_is_not_followed():
    x = keras.Input((4,))
    y = L.Reshape((2, 2), name="rs")(L.Dense(4, name="a")(x))
    model = keras.Model(x, L.Flatten()(L.Dense(1, name="out")(y)))
    assert dict(dependency_groups(model).unknown) == {"rs": "moves the channel axis"}


def test_a_layer_called_twice_is_left_alone():
    x = keras.Input((3,))
    shared = L.Dense(3, name="shared")
    model = keras.Model(x, L.Dense(1, name="out")(shared(shared(L.Dense(3, name="a")(x)))))
    groups = dependency_groups(model)
    assert dict(groups.unknown) == {"shared": "called 2 times"}
    assert groups.of("a").left == ("read by 'shared' (Dense: called 2 times)",)


def test_nested_models_are_followed_with_their_paths():
    inner = keras.Sequential([keras.Input((3,)), L.Dense(4, name="d")], name="inner")
    x = keras.Input((3,))
    model = keras.Model(x, L.Dense(1, name="out")(inner(x)))
    assert _members(dependency_groups(model).of("inner/d"))[("out", "kernel", 0)] == (
        (0,), (1,), (2,), (3,))


def test_a_subclassed_model_is_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(KerasurgeryError, match="Expected a Functional or Sequential model"):
        dependency_groups(Net())


def test_a_grouped_convolution_keeps_its_groups_equal():
    x = keras.Input((4, 4, 4))
    y = L.Conv2D(8, 1, name="stem")(x)
    y = L.Conv2D(6, 3, groups=2, name="g")(y)  # kernel (3, 3, 4, 6)
    groups = dependency_groups(keras.Model(x, L.Dense(2, name="out")(y)))
    # A unit of the stem is one input row of every group of `g`.
    assert _members(groups.of("stem")) == {
        ("stem", "kernel", 3): ((0, 4), (1, 5), (2, 6), (3, 7)),
        ("stem", "bias", 0): ((0, 4), (1, 5), (2, 6), (3, 7)),
        ("g", "kernel", 2): ((0,), (1,), (2,), (3,)),
    }
    # A unit of `g` is one filter of each group.
    assert _members(groups.of("g"))[("g", "kernel", 3)] == ((0, 3), (1, 4), (2, 5))
    assert [m.output for m in groups.of("g").members] == [True, True, False]


def test_a_transposed_convolution_reads_its_last_axis_and_writes_the_one_before():
    x = keras.Input((4, 4, 3))
    c = L.Conv2D(4, 1, name="c", activation="sigmoid")
    y = L.Conv2DTranspose(5, 3, name="up")(c(x))  # kernel (3, 3, 5, 4)
    model = keras.Model(x, L.Dense(2, name="out")(y))
    kernel = keras.ops.convert_to_numpy(c.kernel)
    kernel[..., 1] = 0.0
    c.kernel.assign(kernel)
    groups = dependency_groups(model)
    assert _members(groups.of("c"))[("up", "kernel", 3)] == ((0,), (1,), (2,), (3,))
    assert _members(groups.of("up"))[("up", "kernel", 2)] == tuple((i,) for i in range(5))
    # Unit 1 is the constant sigmoid(bias), which the border outputs of a
    # transposed convolution see only in part: its bias cannot absorb it.
    assert groups.of("c").removable == (False,) * 4


def test_einsum_dense_is_followed_where_one_axis_maps_cleanly_and_left_alone_elsewhere():
    x = keras.Input((4, 6))
    y = L.EinsumDense("abc,cd->abd", (4, 5), bias_axes="d", name="e1")(x)
    y = L.EinsumDense("abc,bd->adc", (3, 5), name="mix")(y)  # mixes tokens, keeps channels
    groups = dependency_groups(keras.Model(x, L.Dense(2, name="out")(y)))
    assert _members(groups.of("e1")) == {
        ("e1", "kernel", 1): tuple((i,) for i in range(5)),
        ("e1", "bias", 0): tuple((i,) for i in range(5)),
    }
    assert groups.of("e1").left == ("read by 'mix' (EinsumDense: equation 'abc,bd->adc' "
                                    "does not read the input's last axis along one kernel axis)",)
    assert dict(groups.unknown)["mix"].startswith("equation 'abc,bd->adc'")


def test_operations_on_tensors_pass_channels_or_say_why_they_are_left():
    x = keras.Input((5,))
    a = L.Dense(4, name="a")(x)
    b = L.Dense(4, name="b")(x)
    c = L.Dense(4, name="c")(x)
    y = keras.ops.relu6(a + 3.0) * (1.0 / 6.0) * b  # entry by entry: a and b are one group
    z = c * np.arange(4, dtype="float32")  # one constant per channel: no channel can go
    w = keras.ops.softmax(y + z)  # across channels
    groups = dependency_groups(keras.Model(x, L.Dense(2, name="out")(w)))
    assert groups.of("a") is groups.of("b") and groups.of("a").producers == ("a", "b")
    # (operations are named by a global counter: match the kind and the why)
    [left] = groups.of("c").left
    assert left.endswith("(Multiply: a constant with a value per channel)"), left
    assert [why for path, why in groups.unknown if path.startswith("softmax")] == [
        "a kind whose channels the graph does not follow"]


def test_attention_heads_are_units_and_a_mask_leaves_the_layer_alone():
    import keras_hub

    x = keras.Input((5, 6))
    mask = keras.Input((5, 5), dtype="bool")
    y = keras_hub.layers.CachedMultiHeadAttention(2, 3, name="cached")(x, x)
    z = L.MultiHeadAttention(2, 3, name="masked")(y, y, attention_mask=mask)
    groups = dependency_groups(keras.Model([x, mask], L.Dense(2, name="out")(z)))
    heads = groups.of("cached")
    assert _members(heads)[("cached/value", "kernel", 1)] == ((0,), (1,))
    assert _members(heads)[("cached/attention_output", "kernel", 0)] == ((0,), (1,))
    assert [(m.layer, m.weight) for m in heads.members if m.output] == [
        ("cached/value", "kernel"), ("cached/value", "bias")]
    assert dict(groups.unknown)["masked"] == "called with a key or mask other than the value"
