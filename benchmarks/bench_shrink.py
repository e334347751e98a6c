"""Parameters, FLOPs and CPU latency of `ks.shrink` after `ks.prune_units`, side by side.

    python benchmarks/bench_shrink.py [--models ResNet50,MobileNetV2,BERT]
        [--fractions 0.25,0.5,0.75] [--size 224] [--rounds 10]

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
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="ResNet50,MobileNetV2")
    parser.add_argument("--fractions", default="0.25,0.5,0.75")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
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
