"""Pins sharded like their weights under `keras.distribution.ModelParallel` (issue 19).

Each test runs a script in a new process on JAX with 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), where Keras'
distribution API runs; the script prints one JSON line that the test checks.
Every mask and per-entry value variable must have the sharding of the weight
it pins (a copy made outside the scope keeps the source's layouts), a shared
scalar value must be replicated, and pins must hold bit for bit through `fit`
while free entries train. One test runs two processes of 4 devices each
(`keras.distribution.initialize`), with a kernel split across them.
"""

from __future__ import annotations

import json
import os
import socket
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



def _run_two_processes(script: str, tmp_path: Path) -> list[dict]:
    """Runs `script` as processes 0 and 1 of one JAX distribution; each one's RESULT line."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(pid), str(port), str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for pid in (0, 1)
    ]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-4000:]
        line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    return results


_TWO_PROCESSES = """
import os, sys, json
pid, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["KERAS_BACKEND"] = "jax"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives between processes
import numpy as np, keras
keras.distribution.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
import kerasurgery as ks
from kerasurgery.errors import KerasurgeryError

def make():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    h = keras.layers.Dense(32, activation="relu", name="dense")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(h))

# On one host (no distribution yet): frozen and saved, the same file on both processes,
# and the mask the host path computes from the initial weights.
path = os.path.join(folder, f"pinned{pid}.keras")
ks.save_model(ks.freeze(make(), {"dense": ks.rules.smallest(0.5)}), path)
expected = ks.rules.smallest(0.5)(make().get_layer("dense").get_weights()[0], None).kernel

devices = keras.distribution.list_devices()
# 'model' runs across the two processes: devices 0,1 (process 0) and 4,5 (process 1) in a row.
order = np.array(devices).reshape(2, 2, 2).transpose(1, 0, 2).reshape(2, 4)
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], order)
layout_map = keras.distribution.LayoutMap(mesh)
layout_map["dense/kernel"] = (None, "model")
keras.distribution.set_distribution(
    keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False))

out = {"processes": jax.process_count(), "devices": len(devices)}
refused = {}
for name, pins, in_place in (
        ("copy", {"dense": ks.rules.smallest(0.5)}, False),
        ("own_rule", {"dense": lambda kernel, bias: ks.Pin(kernel=kernel == 0)}, True),
        ("across_layers", {"dense": ks.rules.smallest(0.5, across_layers=True)}, True)):
    try:
        ks.freeze(make(), pins, in_place=in_place)
    except KerasurgeryError as e:
        refused[name] = str(e)

def shards(v):
    return {str(s.index): np.asarray(s.data) for s in getattr(v, "value", v).addressable_shards}

def index(key):  # "(slice(None, None, None), slice(8, 16, None))" -> the same slices
    return eval(key, {"slice": slice})

# Frozen in place inside the scope: the rule runs where the shards live.
model = ks.freeze(make(), {"dense": ks.rules.smallest(0.5)}, in_place=True)
layer = model.get_layer("dense")
kernel, mask = layer.raw_variable("kernel"), layer.kernel_pin_mask
out["storage"] = layer.pin_storage
out["mask_as_host"] = all(np.array_equal(m, expected[index(i)]) for i, m in shards(mask).items())
loaded = ks.load_model(path).get_layer("dense")
out["loaded_same_mask"] = all(np.array_equal(m, shards(loaded.kernel_pin_mask)[i]) for i, m in shards(mask).items())
out["spec"] = [str(kernel.value.sharding.spec), str(mask.value.sharding.spec)]
out["same_sharding"] = kernel.value.sharding == mask.value.sharding
out["split"] = not kernel.value.is_fully_addressable
plain = make().get_layer("dense").kernel  # inside the scope: laid out the same, unpinned
out["bytes_per_device"] = {
    "plain_kernel": int(plain.value.addressable_shards[0].data.nbytes),
    "pinned_kernel": int(kernel.value.addressable_shards[0].data.nbytes),
    "mask": int(mask.value.addressable_shards[0].data.nbytes),
    "value": int(layer.kernel_pin_value.value.addressable_shards[0].data.nbytes),
}
model.compile(optimizer="sgd", loss="mse")
x16, y4 = np.zeros((16, 16), "float32"), np.zeros((16, 4), "float32")
for name, call in (("pin_state", layer.pin_state), ("get_weights", layer.get_weights),
                   ("save_model", lambda: ks.save_model(model, os.path.join(folder, f"x{pid}.keras"))),
                   # They read whole host states; they refuse before the first step.
                   ("gradual_pruning", lambda: model.fit(x16, y4, epochs=1, verbose=0, callbacks=[
                       ks.callbacks.GradualPruning(0.5, begin_step=0, end_step=1, frequency=1)])),
                   ("prune", lambda: ks.prune(model, x16, sparsity=0.5))):
    try:
        call()
    except KerasurgeryError as e:
        refused[name] = str(e)
out["refused"] = refused

before_k, before_m = shards(kernel), shards(mask)
model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.1), loss="mse")
rng = np.random.default_rng(0)
model.fit(rng.normal(size=(64, 16)).astype("float32"), rng.normal(size=(64, 4)).astype("float32"),
          batch_size=16, epochs=2, verbose=0)
after_k, after_m = shards(kernel), shards(mask)
effective = {str(s.index): np.asarray(s.data) for s in layer.kernel.addressable_shards}
out["shards"] = len(before_k)
out["masks_held"] = all(np.array_equal(before_m[i], after_m[i]) for i in before_m)
out["pins_held"] = all(
    np.array_equal(effective[i][before_m[i]].view("u4"), before_k[i][before_m[i]].view("u4"))
    and not effective[i][before_m[i]].any() for i in before_k)
out["pinned"] = int(sum(m.sum() for m in before_m.values()))
out["free_trained"] = int(sum(np.sum(after_k[i][~before_m[i]] != before_k[i][~before_m[i]]) for i in before_k))
out["pins_hold"] = layer.pins_hold()  # verified where the shards live
# Stripped in place, where the shards live: the plain kernel holds the effective weights.
ks.strip(model, in_place=True)
out["stripped"] = (not ks.layers.is_pinned(layer)) and all(
    np.array_equal(effective[i].view("u4"), np.asarray(s.data).view("u4"))
    for i, s in ((str(s.index), s) for s in layer.kernel.value.addressable_shards))
print("RESULT " + json.dumps(out))
"""


def test_two_processes_kernel_split_across_them_keeps_its_pins_through_fit(tmp_path):
    # 2 processes x 4 CPU devices (`keras.distribution.initialize`), a Dense
    # kernel laid out P(None, "model") with "model" running across both
    # processes: the pinned model, frozen and saved on one host, is loaded
    # inside the scope; its mask is sharded like the kernel, and on each
    # process the pins hold bit for bit on its own shards through `fit` while
    # the free entries train. Frozen in place inside the scope, the rule runs
    # where the shards live: each process's mask shards equal the host mask
    # of the same initial weights, and the pins verify there after `fit`.
    # What would read the split kernel whole (a copy, pin_state, get_weights,
    # save_model) or rank it on the host (a user's rule, across_layers)
    # refuses in one line; strip in place works.
    results = _run_two_processes(_TWO_PROCESSES, tmp_path)
    for result in results:
        assert (result["processes"], result["devices"], result["shards"]) == (2, 8, 2)
        assert result["split"] and result["same_sharding"]
        assert result["spec"] == ["P(None, 'model')"] * 2
        # 16 x 32 float32 kernel split 4 ways: 512 B per device, its mask 128 B, the shared zero 4 B.
        assert result["bytes_per_device"] == {"plain_kernel": 512, "pinned_kernel": 512, "mask": 128, "value": 4}
        assert result["mask_as_host"] and result["loaded_same_mask"]
        assert result["storage"] == {"kernel": "shared", "bias": "per_entry"}
        assert result["masks_held"] and result["pins_held"] and result["stripped"]
        assert result["pins_hold"] is True
        assert set(result["refused"]) == {
            "copy", "own_rule", "across_layers", "pin_state", "get_weights", "save_model",
            "gradual_pruning", "prune"}
        assert all("split across processes" in m and "\n" not in m for m in result["refused"].values())
        assert "'<lambda>'" in result["refused"]["own_rule"]
        assert "'smallest 0.5 across layers'" in result["refused"]["across_layers"]
    # The two processes hold the two halves of the kernel: half of its 512 entries pinned in all,
    # every free entry of each half trained.
    assert sum(r["pinned"] for r in results) == 256
    assert [r["free_trained"] for r in results] == [256 - r["pinned"] for r in results]


_ORBAX = _TWO_PROCESSES.split("out = {")[0] + """
def shards(v):
    return {str(s.index): np.asarray(s.data).reshape(-1).view("u1")
            for s in getattr(v, "value", v).addressable_shards}

def variables(model):
    layer = model.get_layer("dense")
    return {"raw": layer.raw_variable("kernel"), "mask": layer.kernel_pin_mask,
            "value": layer.kernel_pin_value}

def same(a, b):
    return {n: all(np.array_equal(x, shards(b[n])[i]) for i, x in shards(v).items()) for n, v in a.items()}

model = ks.freeze(make(), {"dense": ks.rules.smallest(0.5)}, in_place=True)
model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.1), loss="mse")
rng = np.random.default_rng(0)
checkpoint = keras.callbacks.OrbaxCheckpoint(os.path.join(folder, "orbax"), save_weights_only=True,
                                             save_on_background=False)
model.fit(rng.normal(size=(64, 16)).astype("float32"), rng.normal(size=(64, 4)).astype("float32"),
          batch_size=16, epochs=2, verbose=0, callbacks=[checkpoint])
keras.utils.set_random_seed(1)  # other initial weights: another mask
other = ks.freeze(keras.models.clone_model(make()), {"dense": ks.rules.smallest(0.5)}, in_place=True)
other.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.1), loss="mse")
out = {"before": same(variables(model), variables(other))}
other.load_weights(os.path.join(folder, "orbax"))
out["after"] = same(variables(model), variables(other))
out["spec"] = str(variables(other)["mask"].value.sharding.spec)
out["pins_hold"] = other.get_layer("dense").pins_hold()
print("RESULT " + json.dumps(out))
"""


def test_two_processes_orbax_checkpoint_restores_the_split_pins(tmp_path):
    # Keras' OrbaxCheckpoint (the `orbax-checkpoint` package: in the test
    # extra, not a kerasurgery dependency) saves every variable of a model
    # frozen in place inside the scope, its split mask included, from both
    # processes; a model frozen in place with the same structure (other
    # weights, another mask) restores them, shard for shard, laid out as
    # before, and its pins hold.
    for result in _run_two_processes(_ORBAX, tmp_path):
        assert result["before"] == {"raw": False, "mask": False, "value": True}  # the shared 0.0 already equal
        assert result["after"] == {"raw": True, "mask": True, "value": True}
        assert result["spec"] == "P(None, 'model')" and result["pins_hold"] is True


_CAUSAL_LM = """import os, sys, json
pid, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["KERAS_BACKEND"] = "jax"
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import numpy as np, keras
keras.distribution.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
import keras_hub
import kerasurgery as ks
from kerasurgery.model.walk import walk_layers

VOCAB, LEN = 64, 12
devices = keras.distribution.list_devices()
order = np.array(devices).reshape(2, 2, 2).transpose(1, 0, 2).reshape(2, 4)  # "model" across the processes
mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], order)
layout_map = keras_hub.models.GemmaBackbone.get_layout_map(mesh)
keras.distribution.set_distribution(
    keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch", auto_shard_dataset=False))

def make():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_query_heads=4, num_key_value_heads=4,
        hidden_dim=32, intermediate_dim=64, head_dim=8)
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)

lm = make()
ks.freeze(lm, {"*": ks.rules.smallest(0.5)}, in_place=True)
pinned = {p: l for p, l in walk_layers(lm) if ks.layers.is_pinned(l)}
out = {"split": sorted(p for p, l in pinned.items()
                       if not l.raw_variable(l.pinned_weights[0]).value.is_fully_addressable)}
out["masks_like_weights"] = all(
    l.pin_variables(w)[0].value.sharding == l.raw_variable(w).value.sharding
    for l in pinned.values() for w in l.present_weights())
lm.backbone.enable_lora(2)
lm.compile(optimizer=keras.optimizers.Adam(1e-2),
           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
tokens = rng.integers(1, VOCAB, size=(4, LEN + 1)).astype("int32")
x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((4, LEN), bool)}
y = tokens[:, 1:]
def loss():
    found = lm.evaluate(x, y, verbose=0)
    return float(found[0] if isinstance(found, list) else found)

before = loss()
checkpoint = keras.callbacks.OrbaxCheckpoint(os.path.join(folder, "orbax"), save_weights_only=True,
                                             save_on_background=False)
lm.fit(x, y, epochs=5, verbose=0, callbacks=[checkpoint])
out["loss"] = [before, loss()]
out["pins_hold"] = all(l.pins_hold() for l in pinned.values())
prompt = {"token_ids": np.zeros((2, LEN), "int32"), "padding_mask": np.zeros((2, LEN), bool)}
prompt["token_ids"][:, :3] = [[5, 6, 7], [8, 9, 10]]
prompt["padding_mask"][:, :3] = True
lm.compile(sampler="greedy")
generated = np.asarray(lm.generate(prompt, stop_token_ids=None)["token_ids"])
out["generated"] = generated.tolist()

def logit_sum(model):
    # The logits are split across the processes (vocabulary rows): compared by their sum, bit for bit.
    return np.asarray(keras.ops.sum(model(x))).reshape(1).view("u4").tolist()

out["logits"] = {"trained": logit_sum(lm)}

# Reloaded as the same task on both processes: a task frozen in place with
# the same structure (another seed: other weights, other masks) takes the
# checkpoint and generates the same tokens.
keras.utils.set_random_seed(1)
other = keras_hub.models.GemmaCausalLM(backbone=keras_hub.models.GemmaBackbone.from_config(
    lm.backbone.get_config()), preprocessor=None)
ks.freeze(other, {"*": ks.rules.smallest(0.5)}, in_place=True)
other.backbone.enable_lora(2)
other.compile(optimizer=keras.optimizers.Adam(1e-2),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
other.load_weights(os.path.join(folder, "orbax"))
other.compile(sampler="greedy")
out["reloaded"] = np.asarray(other.generate(prompt, stop_token_ids=None)["token_ids"]).tolist()
out["reloaded_class"] = type(other).__name__
out["logits"]["reloaded"] = logit_sum(other)
out["reloaded_pins_hold"] = all(l.pins_hold() for _, l in walk_layers(other) if ks.layers.is_pinned(l))
# Stripped in place where the shards live (LoRA merged): the same tokens.
ks.strip(lm, in_place=True)
lm.compile(sampler="greedy")
out["stripped"] = np.asarray(lm.generate(prompt, stop_token_ids=None)["token_ids"]).tolist()
out["logits"]["stripped"] = logit_sum(lm)
print("RESULT " + json.dumps(out))
"""


def test_two_processes_causal_lm_pruned_lora_tuned_generates_and_reloads_as_itself(tmp_path):
    # The workflow of issue 19 across 2 processes x 4 devices, with KerasHub's
    # own Gemma layout map and "model" running across the processes: a
    # GemmaCausalLM frozen in place inside the scope with half of every
    # weight pruned (the rules run where the shards live), fine-tuned with
    # LoRA, generates; an OrbaxCheckpoint of it restores into another task
    # frozen in place, which computes the same logits and generates the same
    # tokens; stripped in place, the same again. Pins hold on every process.
    results = _run_two_processes(_CAUSAL_LM, tmp_path)
    for result in results:
        # Every sharded kind is split across the two processes, the tied embedding included.
        assert "gemma_backbone/token_embedding" in result["split"] and len(result["split"]) == 8
        assert result["masks_like_weights"] and result["pins_hold"] and result["reloaded_pins_hold"]
        before, after = result["loss"]
        assert after < before
        assert result["reloaded_class"] == "GemmaCausalLM"
        assert result["reloaded"] == result["generated"] == result["stripped"]
        logits = result["logits"]
        assert logits["reloaded"] == logits["trained"] == logits["stripped"]
    assert results[0]["generated"] == results[1]["generated"]
