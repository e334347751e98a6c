"""A pinned KerasHub causal LM against the plain one (issue 19).

Three measurements, each side by side in one run (ratios pinned / plain):

    generate    greedy `generate` tokens per second: the task frozen with half
                of every supported weight pinned at zero (rules.smallest(0.5))
                against the same task unpinned
    lora_step   one LoRA fine-tuning step (`train_on_batch` after
                `backbone.enable_lora(4)`): pinned + LoRA against LoRA alone
    freeze      `ks.freeze(..., in_place=True)` against the copy path: wall
                time and the growth of the process's peak resident memory,
                each in a fresh process (peak RSS only grows)

The default model is GPT-2 base sized (~124M parameters: 12 layers, hidden
768, vocabulary 50257); `--size large` is the same shape with 9 layers
(102.6M parameters), `--size medium` (~30M) fits a shared CPU; `--size small`
only checks the script. `generate` and `lora_step` time both models in the
same rounds, interleaved (the order alternating each round), and report the
median seconds of each and the median of the per-round ratios.
Pins cost one byte per pinned-weight entry (the mask; shared zero values are
one scalar), reported as `pin_bytes`; the target for in-place freezing is a
peak growth <= pin_bytes + 64 MB.

    KERAS_BACKEND=jax python benchmarks/bench_large.py            # ~10 min on CPU
    KERAS_BACKEND=jax python benchmarks/bench_large.py --size large --only generate --repeats 5
    KERAS_BACKEND=jax python benchmarks/bench_large.py --size small
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZES = {
    "base": dict(vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
                 intermediate_dim=3072, max_sequence_length=256),
    "large": dict(vocabulary_size=50257, num_layers=9, num_heads=12, hidden_dim=768,
                  intermediate_dim=3072, max_sequence_length=256),
    "medium": dict(vocabulary_size=32000, num_layers=4, num_heads=8, hidden_dim=512,
                   intermediate_dim=2048, max_sequence_length=128),
    "small": dict(vocabulary_size=1000, num_layers=2, num_heads=2, hidden_dim=64,
                  intermediate_dim=128, max_sequence_length=64),
}


def _lm(size: str):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(**SIZES[size])
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _prompt(size: str, batch: int, prompt: int, length: int):
    import numpy as np

    vocab = SIZES[size]["vocabulary_size"]
    tokens = np.zeros((batch, length), "int32")
    tokens[:, :prompt] = np.random.default_rng(0).integers(1, vocab, size=(batch, prompt))
    mask = np.zeros((batch, length), bool)
    mask[:, :prompt] = True
    return {"token_ids": tokens, "padding_mask": mask}


def _interleaved(fns: dict, rounds: int) -> dict:
    """Times each of `fns` once per round, alternating the order each round.

    Load from other jobs on a shared machine moves every timing; timing the
    two models in the same rounds and taking the median of per-round ratios
    cancels most of it. Each function runs once first to compile.
    """
    import statistics

    names = list(fns)
    for name in names:
        fns[name]()
    times = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    first, second = names
    out = {name: statistics.median(times[name]) for name in names}
    out["ratio"] = statistics.median(b / a for a, b in zip(times[first], times[second]))
    out["rounds"] = rounds
    return out


def bench_generate(size: str, repeats: int, length: int = 32) -> dict:
    """Seconds per generated token, plain and pinned; ratio = pinned / plain time."""
    import kerasurgery as ks

    plain = _lm(size)
    pinned = ks.freeze(plain, {"*": ks.rules.smallest(0.5)})
    x = _prompt(size, 1, 8, length)
    for lm in (plain, pinned):
        lm.compile(sampler="greedy")
    out = _interleaved({name: (lambda lm=lm: lm.generate(x, stop_token_ids=None))
                        for name, lm in (("plain", plain), ("pinned", pinned))}, repeats)
    out["tokens_per_s"] = {name: (length - 8) / out[name] for name in ("plain", "pinned")}
    out["parameters"] = plain.count_params()
    return out


def bench_lora_step(size: str, repeats: int) -> dict:
    """Seconds per LoRA training step, LoRA alone and LoRA + pins; ratio = pinned / plain."""
    import keras
    import numpy as np

    import kerasurgery as ks

    batch, length = 4, 64
    vocab = SIZES[size]["vocabulary_size"]
    tokens = np.random.default_rng(1).integers(1, vocab, size=(batch, length + 1)).astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((batch, length), bool)}
    y = tokens[:, 1:]
    fns = {}
    for name in ("plain", "pinned"):
        lm = _lm(size)
        if name == "pinned":
            ks.freeze(lm, {"*": ks.rules.smallest(0.5)}, in_place=True)
        lm.backbone.enable_lora(4)
        lm.compile(optimizer=keras.optimizers.Adam(1e-3),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        fns[name] = lambda lm=lm: lm.train_on_batch(x, y)
    return _interleaved(fns, repeats)


def _reset_peak() -> int:
    """Resets the peak resident memory (Linux: /proc/self/clear_refs) and returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak() -> int:
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _freeze_child(size: str, in_place: bool) -> dict:
    import kerasurgery as ks

    lm = _lm(size)
    before = _reset_peak()
    start = time.perf_counter()
    frozen = ks.freeze(lm, {"*": ks.rules.smallest(0.5)}, in_place=in_place)
    seconds = time.perf_counter() - start
    peak = _peak()
    pin_bytes = sum(int(v.numpy().nbytes) if hasattr(v, "numpy") else 0 for v in frozen.variables
                    if v.path.endswith(("_pin_mask", "_pin_value")))
    return {"seconds": seconds, "peak_growth_bytes": peak - before, "pin_bytes": pin_bytes}


def bench_freeze(size: str) -> dict:
    out = {}
    for name, in_place in (("in_place", True), ("copy", False)):
        done = subprocess.run(
            [sys.executable, __file__, "--size", size, "--child-freeze", str(int(in_place))],
            capture_output=True, text=True, check=True,
        )
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    out["time_ratio"] = out["in_place"]["seconds"] / out["copy"]["seconds"]
    out["in_place_over_pins_mb"] = (
        out["in_place"]["peak_growth_bytes"] - out["in_place"]["pin_bytes"]) / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("generate", "lora_step", "freeze"))
    parser.add_argument("--length", type=int, default=32,
                        help="generate: prompt of 8 tokens padded to this length (default 32: 24 new tokens)")
    parser.add_argument("--child-freeze", type=int, choices=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_freeze is not None:
        print(json.dumps(_freeze_child(args.size, bool(args.child_freeze))))
        return
    import keras

    result = {"backend": keras.backend.backend(), "size": args.size}
    if args.only in (None, "generate"):
        result["generate_s"] = bench_generate(args.size, args.repeats, args.length)
    if args.only in (None, "lora_step"):
        result["lora_step_s"] = bench_lora_step(args.size, args.repeats)
    if args.only in (None, "freeze"):
        result["freeze"] = bench_freeze(args.size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
