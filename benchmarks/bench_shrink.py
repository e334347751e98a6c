"""Parameters, FLOPs and CPU latency of `ks.shrink` after `ks.prune_units`, side by side.

    python benchmarks/bench_shrink.py [--fraction 0.5] [--size 224] [--rounds 10]

ResNet50 (`weights=None`, random weights) at `fraction` of each prunable
group's units pruned, then shrunk. FLOPs count the multiply-adds of the
convolutions and Dense layers (2 FLOPs each) from the built shapes. Latency
is the median of `rounds` calls of `model(x, training=False)` on a batch of
one after a warm-up, on the CPU.
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


def latency(model: keras.Model, x: np.ndarray, rounds: int) -> float:
    model(x, training=False)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model(x, training=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    model = keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = ks.prune_units(model, args.fraction)
    prune_s = time.perf_counter() - start
    start = time.perf_counter()
    small = ks.shrink(pruned)
    shrink_s = time.perf_counter() - start
    x = np.random.default_rng(0).normal(size=(1, args.size, args.size, 3)).astype("float32")
    a, b = np.asarray(pruned(x, training=False)), np.asarray(small(x, training=False))
    rows = [
        ("parameters", model.count_params(), small.count_params()),
        ("GFLOPs", flops(model) / 1e9, flops(small) / 1e9),
        ("CPU latency ms (median)", latency(model, x, args.rounds), latency(small, x, args.rounds)),
    ]
    print(f"ResNet50 {args.size}x{args.size}, {args.fraction:.0%} of units, keras {keras.__version__} "
          f"({keras.backend.backend()})")
    print(f"{'':26}{'original':>14}{'shrunk':>14}{'ratio':>8}")
    for name, before, after in rows:
        print(f"{name:26}{before:14.4g}{after:14.4g}{after / before:8.3f}")
    print(f"prune_units {prune_s:.1f} s, shrink {shrink_s:.1f} s, "
          f"max |pruned - shrunk| / max |pruned| = {np.abs(a - b).max() / np.abs(a).max():.2e}")


if __name__ == "__main__":
    main()
