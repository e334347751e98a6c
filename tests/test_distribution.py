"""Pins sharded like their weights under `keras.distribution.ModelParallel` (issue 19).

Each test runs a script in a new process on JAX with 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), where Keras'
distribution API runs; the script prints one JSON line that the test checks.
Every mask and per-entry value variable must have the sharding of the weight
it pins (a copy made outside the scope keeps the source's layouts), a shared scalar value must be replicated, and pins must hold bit for
bit through `fit` while free entries train.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parent.parent

_PRELUDE = """
import os, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np, keras
import kerasurgery as ks
from kerasurgery.model.walk import walk_layers
from kerasurgery import layers as layers_lib

devices = keras.distribution.list_devices()
assert len(devices) == 8, devices
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)

def spec(v):
    return str(v.value.sharding.spec)

def shard_bytes(v):
    return int(v.value.addressable_shards[0].data.nbytes)

def pinned(model):
    return {p: l for p, l in walk_layers(model) if layers_lib.is_pinned(l)}

def shardings(model):
    out = {}
    for path, layer in pinned(model).items():
        for weight in layer.present_weights():
            raw = layer.raw_variable(weight)
            mask, value = layer.pin_variables(weight)
            out[f"{path}/{weight}"] = {
                "raw": spec(raw), "mask": spec(mask), "value": spec(value),
                "value_shape": list(value.shape), "raw_bytes": shard_bytes(raw),
                "mask_bytes": shard_bytes(mask), "value_bytes": shard_bytes(value),
            }
    return out

def states(model):
    return {p: l.pin_state() for p, l in pinned(model).items()}

def held(before, after):
    for path, weights in before.items():
        for w, s0 in weights.items():
            s1 = after[path][w]
            assert np.array_equal(s0.mask, s1.mask), (path, w)
            m = s0.mask
            assert np.array_equal(s0.effective[m].view("u4"), s1.effective[m].view("u4")), (path, w)
    return True

def trained(before, after):
    return sum(int(np.sum(s0.effective[~s0.mask] != after[p][w].effective[~s0.mask]))
               for p, ws in before.items() for w, s0 in ws.items())
"""


def _run(body: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    script = _PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _assert_like_their_weights(found: dict) -> None:
    assert found
    for key, s in found.items():
        assert s["mask"] == s["raw"], key
        if s["value_shape"]:
            assert s["value"] == s["raw"], key
        else:
            assert s["value"] == "P()", key  # a shared scalar: replicated


def test_own_layout_map_in_place_by_copy_loaded_and_gradual_pruning(tmp_path):
    result = _run(f"""
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map[".*d1/kernel"] = (None, "model")
        layout_map[".*d2/kernel"] = ("model", None)
        dist = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")

        def make():
            keras.utils.set_random_seed(0)
            return keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, name="d1"),
                                     keras.layers.Dense(8, name="d2")])

        x = np.random.default_rng(0).normal(size=(16, 16)).astype("float32")
        y = np.random.default_rng(1).normal(size=(16, 8)).astype("float32")
        mask = np.zeros((32, 8), bool)
        mask[::3] = True
        pins = {{"d1": ks.rules.smallest(0.5),
                 "d2": ks.Pin(kernel=mask, kernel_value=np.arange(256, dtype="float32").reshape(32, 8) / 256)}}
        out = {{}}
        with dist.scope():
            model = make()
            ids = {{id(v) for v in model.variables}}
            layouts = {{v.path: spec(v) for v in model.variables}}
            frozen = ks.freeze(model, pins, in_place=True)
            out["same_object"] = frozen is model
            out["same_variables"] = ids <= {{id(v) for v in model.variables}}
            out["same_layouts"] = all(spec(v) == layouts[v.path] for v in model.variables if v.path in layouts)
            out["in_place"] = shardings(model)
            copy = ks.freeze(make(), pins)
            out["copy"] = shardings(copy)
            before = states(model)
            model.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.1), loss="mse")
            model.fit(x, y, epochs=2, batch_size=8, verbose=0)
            out["held"] = held(before, states(model))
            out["trained"] = trained(before, states(model))
            out["after_fit"] = shardings(model)
            ks.save_model(model, {str(tmp_path / "m.keras")!r})
            loaded = ks.load_model({str(tmp_path / "m.keras")!r})
            out["loaded"] = shardings(loaded)
            out["loaded_held"] = held(states(model), states(loaded))

            gradual = ks.freeze(make(), {{"*": ks.Pin()}}, in_place=True)
            gradual.compile(optimizer="sgd", loss="mse")
            schedule = ks.callbacks.GradualPruning(0.5, begin_step=0, end_step=2, frequency=1)
            gradual.fit(x, y, epochs=2, batch_size=4, verbose=0, callbacks=[schedule])
            out["gradual"] = shardings(gradual)
            out["gradual_pinned"] = {{p: float(s["kernel"].mask.mean()) for p, s in states(gradual).items()}}
        # Copied outside the scope (compiled, its optimizer built), trained inside it.
        outside = ks.freeze(model, pins)
        out["outside"] = shardings(outside)
        with dist.scope():
            before = states(outside)
            outside.fit(x, y, epochs=1, batch_size=8, verbose=0)
            out["outside_held"] = held(before, states(outside))
            out["outside_trained"] = trained(before, states(outside))
        print("RESULT", json.dumps(out))
    """)
    assert result["same_object"] and result["same_variables"] and result["same_layouts"]
    for case in ("in_place", "copy", "after_fit", "loaded", "gradual", "outside"):
        _assert_like_their_weights(result[case])
    assert {k: s["raw"] for k, s in result["outside"].items()} == {
        k: s["raw"] for k, s in result["in_place"].items()}
    assert result["outside_held"] and result["outside_trained"] > 0
    assert result["in_place"]["d1/kernel"]["raw"] == "P(None, 'model')"
    assert result["in_place"]["d2/kernel"]["raw"] == "P('model', None)"
    assert result["in_place"]["d2/kernel"]["value_shape"] == [32, 8]  # per-entry values
    # Each device holds a quarter of each mask: 1 byte per entry of its kernel shard.
    for key, s in result["in_place"].items():
        if key.endswith("kernel"):
            assert s["mask_bytes"] * 4 == s["raw_bytes"], key
    assert result["held"] and result["trained"] > 0 and result["loaded_held"]
    assert result["gradual_pinned"] == {"d1": 0.5, "d2": 0.5}


def test_keras_hub_layout_map_gemma_frozen_in_place_inside_the_scope():
    pytest.importorskip("keras_hub")
    result = _run("""
        import keras_hub
        layout_map = keras_hub.models.GemmaBackbone.get_layout_map(mesh)
        dist = keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
        out = {}
        with dist.scope():
            keras.utils.set_random_seed(0)
            backbone = keras_hub.models.GemmaBackbone(
                vocabulary_size=64, num_layers=1, num_query_heads=4, num_key_value_heads=4,
                hidden_dim=16, intermediate_dim=32, head_dim=8,
            )
            lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
            ks.freeze(lm, {"*": ks.rules.smallest(0.5)}, in_place=True)
            out["shardings"] = shardings(lm)
            tokens = np.random.default_rng(0).integers(1, 64, size=(4, 9)).astype("int32")
            x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((4, 8), bool)}
            before = states(lm)
            lm.compile(optimizer=keras.optimizers.Adam(1e-2),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            lm.fit(x, tokens[:, 1:], epochs=1, batch_size=4, verbose=0)
            out["held"] = held(before, states(lm))
            out["trained"] = trained(before, states(lm))
        print("RESULT", json.dumps(out))
    """)
    found = result["shardings"]
    _assert_like_their_weights(found)
    table = next(s for k, s in found.items() if k.endswith("token_embedding/embeddings"))
    assert "model" in table["raw"]  # the largest weight of the map is sharded, and so is its mask
    assert sum("model" in s["mask"] for s in found.values()) >= 5
    assert result["held"] and result["trained"] > 0
