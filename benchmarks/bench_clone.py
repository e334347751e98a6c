"""Library `kerasurgery.freeze` of an in-memory model vs `keras.models.clone_model` + `set_weights`.

What a fine-tuning script pays for `ks.freeze(model, pins)` against the
natural baseline, a copy of the model with the same weights:

    baseline   copy = keras.models.clone_model(model); copy.set_weights(model.get_weights())
    zeros      ks.freeze(model, {"*": ks.rules.zeros()})                 (shared pins at 0.0)
    fraction   ks.freeze(model, {"*": ks.rules.fraction(0.5, seed=0)})   (per-entry pins at current values)

The model is the pruned MLP of `_models.py` (`width/2 -> width x 3 ->
width/2`, half of each kernel exactly 0, uncompiled), built in memory by each
child process before anything is measured. Every run is a whole new process
(so its peak memory is its own), interleaved round by round with the order
rotating. Inside the child, the call is timed twice: `cold` is the first call
in the process (what a script pays; it includes the first use of the code
paths), `warm` a second call after the first result is dropped. Peak memory,
of the cold call: `/proc/self/clear_refs` resets the process's high-water
mark (VmHWM) just before the call, and the peak increase is VmHWM after the
call minus VmRSS before it, so building the model does not hide the call's
own peak; it counts the new model's weights, which both sides keep. (The warm
call reuses memory the allocator kept from the cold one, so its peak says
nothing and is not reported.) Ratios are the median over
rounds of ours / baseline (time) and of the peak increases (memory).

    python benchmarks/bench_clone.py [--widths 1024,4096] [--rounds 5] [--variants zeros,fraction] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
import _models  # noqa: E402

ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}

_CHILD = r"""
import gc, json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
import kerasurgery as ks

width, variant = int(sys.argv[1]), sys.argv[2]


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


""" + _models.BUILD_PRUNED_MLP + r"""

def baseline():
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def zeros():
    return ks.freeze(model, {"*": ks.rules.zeros()})


def fraction():
    return ks.freeze(model, {"*": ks.rules.fraction(0.5, seed=0)})


call = {"baseline": baseline, "zeros": zeros, "fraction": fraction}[variant]
result = {}
for phase in ("cold", "warm"):
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    start, start_cpu = time.perf_counter(), time.process_time()
    out = call()
    result[phase + "_s"] = time.perf_counter() - start
    result[phase + "_cpu_s"] = time.process_time() - start_cpu
    if phase == "cold":
        result["peak_increase_bytes"] = status("VmHWM") - before
        # The copy is a full model: check it, once, outside the timing.
        assert len(out.weights) >= len(model.weights)
    del out
print("RESULT " + json.dumps(result))
"""

KEYS = ("cold_s", "cold_cpu_s", "warm_s", "warm_cpu_s", "peak_increase_bytes")


def child(width: int, variant: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", _CHILD, str(width), variant], cwd=_common.ROOT,
                               env={**os.environ, **ENV}, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{variant} at width {width} exited with {completed.returncode}:\n"
                           f"{completed.stderr[-4000:]}")
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def measure(width: int, variants: list[str], rounds: int) -> dict:
    names = ["baseline", *variants]
    samples: dict[str, list[dict]] = {name: [] for name in names}

    def timed(name: str) -> None:
        samples[name].append(child(width, name))

    load_before = _common.load()
    _common.interleaved({name: (lambda n=name: timed(n)) for name in names}, rounds)
    series = {name: {key: [s[key] for s in runs] for key in KEYS} for name, runs in samples.items()}
    summaries = {name: {k: _common.summary(v) for k, v in s.items()} for name, s in series.items()}
    ratios = {name: {k: _common.paired_ratio(series[name][k], series["baseline"][k]) for k in series[name]}
              for name in variants}
    return {"width": width, "params": _models.params(width), "rounds": rounds, "load_before": load_before,
            "load_after": _common.load(), "summary": summaries, "ratio": ratios}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="1024,4096", help="MLP widths (1024: 3.15M, 4096: 50.3M parameters)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="zeros,fraction", help="of zeros, fraction")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if not variants or any(v not in ("zeros", "fraction") for v in variants):
        parser.error(f"--variants: expected a list of zeros, fraction. Received: {args.variants!r}")
    info = _common.machine()
    result = {"benchmark": "clone", "machine": info, "variants": variants, "sizes": []}
    for width in (int(w) for w in args.widths.split(",") if w):
        measured = measure(width, variants, args.rounds)
        result["sizes"].append(measured)
        _print(measured)
    _common.print_machine(info)
    _common.write_json(args.json, result)
    return result


def _print(m: dict) -> None:
    print(f"library freeze vs clone_model + set_weights, {m['params'] / 1e6:.2f}M-parameter MLP in memory, "
          f"whole processes, {m['rounds']} interleaved rounds (load before/after: {m['load_before']} / "
          f"{m['load_after']})")
    print(f"  {'run':<9} {'cold s [min, max]':<24} {'warm s [min, max]':<24} {'peak+ MB [min, max]':<20}"
          "  ratio to baseline (median of paired): cold / warm / peak increase")
    for name, s in m["summary"].items():
        cold, warm, peak = s["cold_s"], s["warm_s"], s["peak_increase_bytes"]
        line = (f"  {name:<9} {cold['median']:.3f} [{cold['min']:.3f}, {cold['max']:.3f}]".ljust(36)
                + f" {warm['median']:.3f} [{warm['min']:.3f}, {warm['max']:.3f}]".ljust(25)
                + f" {peak['median'] / 1e6:.0f} [{peak['min'] / 1e6:.0f}, {peak['max'] / 1e6:.0f}]".ljust(21))
        r = m["ratio"].get(name)
        if r:
            line += (f"  {r['cold_s']['median']:.2f} / {r['warm_s']['median']:.2f} / "
                     f"{r['peak_increase_bytes']['median']:.2f}")
        print(line)


if __name__ == "__main__":
    main()
