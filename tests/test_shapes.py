"""`_shapes.weight_shapes` gives exactly the shapes Keras builds, in saved order."""

from __future__ import annotations

import json

import keras
import pytest

from kerasurgery.guards import shapes as _shapes

L = keras.layers

CASES = [
    (L.Dense(7), (None, 5)),
    (L.Dense(3, use_bias=False), (None, 4, 6)),
    (L.EinsumDense("ab,bc->ac", output_shape=8, bias_axes="c"), (None, 5)),
    (L.EinsumDense("ab,bc->ac", output_shape=8), (None, 5)),
    (L.EinsumDense("abc,cde->abde", output_shape=(4, 2, 3), bias_axes="de"), (None, 4, 6)),
    (L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3), bias_axes="e"), (None, 4, 6)),
    (L.EinsumDense("...b,bc->...c", output_shape=9, bias_axes="c"), (None, 3, 4, 5)),
    (L.EinsumDense("...ab,bc->...ac", output_shape=(4, 9), bias_axes="c"), (None, 3, 4, 5)),
    (L.EinsumDense("ab...,bc->ac...", output_shape=(9, 3), bias_axes="c"), (None, 5, 3)),
    (L.EinsumDense("abcd,cde->abe", output_shape=(7, 11), bias_axes="e"), (None, 7, 2, 3)),
    (L.Embedding(50, 6), (None, 12)),
    (L.Conv1D(5, 3), (None, 20, 4)),
    (L.Conv1D(6, 3, groups=2, use_bias=False), (None, 20, 4)),
    (L.Conv2D(5, (3, 2)), (None, 9, 9, 4)),
    (L.Conv2D(5, 3, data_format="channels_first"), (None, 4, 9, 9)),
    (L.Conv3D(2, 2), (None, 5, 5, 5, 3)),
    (L.Conv1DTranspose(5, 3), (None, 20, 4)),
    (L.Conv2DTranspose(5, (3, 2), use_bias=False), (None, 9, 9, 4)),
    (L.Conv3DTranspose(2, 2), (None, 5, 5, 5, 3)),
    (L.DepthwiseConv1D(3, depth_multiplier=2), (None, 20, 4)),
    (L.DepthwiseConv2D((3, 2)), (None, 9, 9, 4)),
    (L.SeparableConv1D(5, 3, depth_multiplier=3), (None, 20, 4)),
    (L.SeparableConv2D(5, 3, use_bias=False), (None, 9, 9, 4)),
    (L.BatchNormalization(), (None, 9, 9, 4)),
    (L.BatchNormalization(axis=1, center=False), (None, 4, 9)),
    (L.BatchNormalization(scale=False), (None, 6)),
    (L.LayerNormalization(), (None, 3, 7)),
    (L.LayerNormalization(axis=[1, 2], center=False), (None, 3, 7)),
    (L.LayerNormalization(rms_scaling=True), (None, 3, 7)),
    (L.GroupNormalization(groups=2), (None, 5, 4)),
    (L.GroupNormalization(groups=2, center=False, axis=1), (None, 4, 5)),
    (L.PReLU(), (None, 3, 4)),
    (L.PReLU(shared_axes=[1]), (None, 3, 4)),
    (L.Normalization(), (None, 3, 4)),
    (L.Normalization(axis=(1, 2)), (None, 3, 4)),
    (L.Normalization(axis=None), (None, 3, 4)),
    (L.Normalization(mean=0.5, variance=2.0), (None, 3, 4)),
    (L.Flatten(), (None, 3, 4)),
    (L.Dropout(0.5), (None, 3)),
]


def _stored_shapes(layer) -> list[tuple]:
    store = {}
    layer.save_own_variables(store)
    return [tuple(store[str(i)].shape) for i in range(len(store))]


@pytest.mark.parametrize("layer, input_shape", CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_weight_shapes_are_the_shapes_keras_builds_in_saved_order(layer, input_shape):
    layer.build(input_shape)
    entry = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    shapes = _shapes.weight_shapes(entry["class_name"], entry["config"],
                                   entry["build_config"]["input_shape"] if "build_config" in entry
                                   else list(input_shape))
    assert shapes == _stored_shapes(layer)
    assert _shapes.entries(shapes) == layer.count_params()


@pytest.mark.parametrize("kind, config, input_shape", [
    ("MultiHeadAttention", {"num_heads": 2, "key_dim": 4}, [None, 3, 8]),  # not sized here
    ("Dense", {"units": 4}, [None, None]),  # input size unknown
    ("Dense", {"units": -4}, [None, 3]),
    ("Dense", {"units": True}, [None, 3]),
    ("Dense", {}, [None, 3]),
    ("Conv2D", {"filters": 4, "kernel_size": [3]}, [None, 5, 5, 3]),  # wrong rank
    ("Conv1D", {"filters": 4, "kernel_size": 3, "groups": 2}, [None, 5, 3]),  # 3 % 2
    ("BatchNormalization", {"axis": 5}, [None, 3]),
    ("BatchNormalization", {"renorm": True}, [None, 3]),
    ("EinsumDense", {"equation": "ab,bc", "output_shape": 3}, [None, 3]),
    ("EinsumDense", {"equation": "ab,bz->ac", "output_shape": 3}, [None, 3]),
    ("Dense", {"units": 4}, "not a shape"),
    ("Dense", {"units": 4, "lora_rank": 2}, [None, 3]),  # LoRA adds weights
    ("Dense", {"units": 4, "quantization_config": {}}, [None, 3]),
    ("Dense", {"units": 4, "dtype": {"class_name": "QuantizedDTypePolicy",
                                     "config": {"name": "int8_from_float32"}}}, [None, 3]),
    ("Dense", {"units": 4, "dtype": "int8_from_float32"}, [None, 3]),
])
def test_what_cannot_be_sized_is_none(kind, config, input_shape):
    assert _shapes.weight_shapes(kind, config, input_shape) is None
