"""Parameters, FLOPs and CPU latency of `ks.shrink` after `ks.prune_units`, side by side.

    python benchmarks/bench_shrink.py [--models ResNet50,MobileNetV2,BERT]
        [--fractions 0.25,0.5,0.75] [--size 224] [--rounds 10]
    python benchmarks/bench_shrink.py --cost [--models ResNet50] [--fractions 0.5] [--rounds 3]

Keras Applications (`weights=None`, their initial weights) with each
fraction of every prunable group's units pruned (`ks.prune_units`), then
shrunk (`ks.shrink`); `rel err` compares the pruned and shrunk outputs. FLOPs count the multiply-adds of the
convolutions and Dense layers (2 FLOPs each) from the built shapes. Latency
is the median of `rounds` calls of `model.predict_on_batch(x)` on a batch of
one after a warm-up, on the CPU.

`BERT` is a KerasHub `BertBackbone` (random weights) of 4 blocks, hidden size
256, 4 heads, intermediate size 1024, a 30522-token vocabulary, on a batch
of one sequence of 128 tokens. `prune_units` pins its feed-forward units and
heads; `shrink` removes the feed-forward units (every block the same count,
the backbone's `intermediate_dim`) and keeps the heads pinned, since the
backbone's `num_heads` also sets each head's size. Its FLOPs count every
kernel inside the blocks once per token and the attention products
(`4 * tokens^2 * heads * head size` a block); `params` include the embeddings.

`--cost` measures `ks.shrink` itself instead: each measurement is a whole
new process that builds the model, prunes it (`ks.prune_units`) and then
times one `ks.shrink(pruned)` call, the first in the process (what a script
pays). Its peak memory is that call's own: `/proc/self/clear_refs` resets
the high-water mark (VmHWM) just before the call, and the peak increase is
VmHWM after it minus VmRSS before it (as `bench_clone.py` measures). For
scale, the original model's weights are reported beside it (float32 bytes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np

import kerasurgery as ks


def flops(model: keras.Model) -> int:
    total = 0
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        out = getattr(layer, "output", None)
        if isinstance(layer, keras.Model):
            total += flops(layer)
            continue
        if kernel is None or out is None:
            continue
        spatial = math.prod(out.shape[1:-1]) if len(out.shape) > 2 else 1
        # Each kernel entry is one multiply-add per output position (a
        # depthwise kernel's too: it holds one filter per channel).
        total += 2 * spatial * math.prod(kernel.shape)
    return total


def latencies(models: list[keras.Model], x: np.ndarray, rounds: int) -> list[float]:
    """Median ms of each model's compiled predict, the models called in turn.

    Taking turns, each round of the models sees the same load from whatever
    else runs on the machine, so their ratio holds even where the times move.
    `predict_on_batch` runs the compiled function (a graph on TensorFlow, jit
    on JAX): an eager call spends most of its time in Python, layer by layer.
    """
    for model in models:
        model.predict_on_batch(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for model, kept in zip(models, times):
            start = time.perf_counter()
            model.predict_on_batch(x)
            kept.append(time.perf_counter() - start)
    return [statistics.median(kept) * 1000 for kept in times]


def bert(size: int) -> keras.Model:
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=30522, num_layers=4, num_heads=4, hidden_dim=256, intermediate_dim=1024,
        max_sequence_length=size)


def bert_inputs(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"token_ids": rng.integers(0, 30522, (1, size)), "segment_ids": np.zeros((1, size), "int32"),
            "padding_mask": np.ones((1, size), bool)}


def bert_flops(model: keras.Model, tokens: int) -> int:
    from kerasurgery.model.walk import walk_layers

    total = 0
    for path, layer in walk_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and path.startswith("transformer_layer"):
            total += 2 * tokens * math.prod(kernel.shape)
        if isinstance(layer, keras.layers.MultiHeadAttention):
            heads, size = layer.num_heads, layer.key_dim
            total += 4 * tokens * tokens * heads * size
    return total


MODELS = {
    "ResNet50": lambda size: keras.applications.ResNet50(weights=None, input_shape=(size, size, 3)),
    "MobileNetV2": lambda size: keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3)),
    "EfficientNetB0": lambda size: keras.applications.EfficientNetB0(
        weights=None, input_shape=(size, size, 3)),
}


_COST_CHILD = r"""
import gc, json, os, sys, time, warnings
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, sys.argv[4])
import kerasurgery as ks
from bench_shrink import MODELS

name, fraction, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


model = MODELS[name](size)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pruned = ks.prune_units(model, fraction)
gc.collect()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident size
start, start_cpu = time.perf_counter(), time.process_time()
small = ks.shrink(pruned)
result = {"shrink_s": time.perf_counter() - start, "shrink_cpu_s": time.process_time() - start_cpu,
          "peak_increase_bytes": status("VmHWM") - before,
          "weight_bytes": 4 * model.count_params(), "shrunk_params": small.count_params(),
          "params": model.count_params()}
print("RESULT " + json.dumps(result))
"""


def shrink_cost(name: str, fraction: float, size: int) -> dict:
    """One fresh process: build, prune, then time `ks.shrink` and its peak memory."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(here.parent), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run([sys.executable, "-c", _COST_CHILD, name, str(fraction), str(size), str(here)],
                               env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{name} at {fraction} exited with {completed.returncode}:\n{completed.stderr[-4000:]}")
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def cost(args: argparse.Namespace) -> None:
    print(f"ks.shrink itself: a fresh process per measurement, {args.rounds} each, "
          f"{args.size}x{args.size}, keras {keras.__version__} ({keras.backend.backend()}); "
          "peak = VmHWM after the call - VmRSS before it (clear_refs reset)")
    print(f"{'model':16}{'units':>6}{'params':>12}{'shrunk':>12}{'weights MB':>11}"
          f"{'shrink s [min, max]':>24}{'cpu s':>8}{'peak MB [min, max]':>22}")
    for name in args.models.split(","):
        for fraction in (float(f) for f in args.fractions.split(",")):
            runs = [shrink_cost(name, fraction, args.size) for _ in range(args.rounds)]
            s = [r["shrink_s"] for r in runs]
            c = [r["shrink_cpu_s"] for r in runs]
            m = [r["peak_increase_bytes"] / 1e6 for r in runs]
            first = runs[0]
            print(f"{name:16}{fraction:>6.0%}{first['params']:12,d}{first['shrunk_params']:12,d}"
                  f"{first['weight_bytes'] / 1e6:11.1f}"
                  f"{f'{statistics.median(s):.2f} [{min(s):.2f}, {max(s):.2f}]':>24}"
                  f"{statistics.median(c):8.2f}"
                  f"{f'{statistics.median(m):.0f} [{min(m):.0f}, {max(m):.0f}]':>22}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="ResNet50,MobileNetV2")
    parser.add_argument("--fractions", default="0.25,0.5,0.75")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cost", action="store_true", help="time and peak memory of ks.shrink itself")
    args = parser.parse_args()
    if args.cost:
        cost(args)
        return
    image = np.random.default_rng(0).normal(size=(1, args.size, args.size, 3)).astype("float32")
    print(f"{args.size}x{args.size}, batch 1, keras {keras.__version__} ({keras.backend.backend()}), "
          f"CPU latency = median of {args.rounds} predict_on_batch calls, each shrunk model in turn with the original")
    print(f"{'model':16}{'units':>6}{'params':>12}{'ratio':>7}{'GFLOPs':>9}{'ratio':>7}"
          f"{'ms':>9}{'ratio':>7}{'prune s':>9}{'shrink s':>9}{'rel err':>10}")
    for name in args.models.split(","):
        if name == "BERT":
            model, x, count = bert(128), bert_inputs(128), lambda m: bert_flops(m, 128)
        else:
            model, x, count = MODELS[name](args.size), image, flops
        params, gflops = model.count_params(), count(model) / 1e9
        print(f"{name:16}{'0%':>6}{params:12,d}{1:7.3f}{gflops:9.3f}{1:7.3f}"
              f"{latencies([model], x, args.rounds)[0]:9.1f}{1:7.3f}")
        for fraction in (float(f) for f in args.fractions.split(",")):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruned = ks.prune_units(model, fraction)
            prune_s = time.perf_counter() - start
            start = time.perf_counter()
            small = ks.shrink(pruned)
            shrink_s = time.perf_counter() - start
            error = max(
                float(np.abs(a - b).max() / np.abs(a).max())
                for a, b in zip(_arrays(pruned(x, training=False)), _arrays(small(x, training=False))))
            p, g = small.count_params(), count(small) / 1e9
            ms, t = latencies([model, small], x, args.rounds)
            print(f"{'':16}{fraction:>6.0%}{p:12,d}{p / params:7.3f}{g:9.3f}{g / gflops:7.3f}"
                  f"{t:9.1f}{t / ms:7.3f}{prune_s:9.1f}{shrink_s:9.1f}{error:10.1e}")


def _arrays(outputs) -> list[np.ndarray]:
    values = outputs.values() if isinstance(outputs, dict) else [outputs]
    return [keras.ops.convert_to_numpy(v) for v in values]


if __name__ == "__main__":
    main()
