"""One-shot calibrated pruning (issue 22): SparseGPT against the authors' code, and Wanda's cost.

(1) SparseGPT on one `--width` x `--width` kernel (float32, CPU) from
`--samples` calibration sequences of `--tokens` tokens: ours
(`kerasurgery.calibrated`: `RunningHessian.update` per sequence, then
`sparsegpt`, numpy) against the reference (`SparseGPT.add_batch` per
sequence and `fasterprune` of IST-DASLab/sparsegpt, transcribed as it is
in `benchmarks/_reference.py`, run in PyTorch) on the same weights and the
same inputs, interleaved round by round. The two phases are timed apart:
accumulating the Hessian (one fixed-size product per sequence, so its time
is measured on `--hessian-samples` sequences and scaled to `--samples`) and
pruning (`fasterprune`, all of it). The ratio is ours / reference; the target of the
issue is <= 1.5x.

(2) Wanda on the same layer: the input norms over the same tokens plus the
mask, against one forward pass of the layer over them (`x @ W`, numpy).

(3) `--model`: `kerasurgery.prune` of a KerasHub GPT-2 (`--model-layers`
blocks, `--model-hidden` wide) with Wanda and with SparseGPT against one
`model.predict` over the same calibration batches: what a user pays, in
forward passes.

(4) `--memory`: the peak memory (VmHWM) of a fresh process that builds a
~100M-parameter GPT-2 (12 blocks, hidden 768; 124M with its embeddings)
and runs `kerasurgery.prune` on `--memory-sequences` sequences of
`--memory-tokens` tokens, against one `predict` over the same data and
against `kerasurgery.freeze` alone (the copy `prune` returns).

    python benchmarks/bench_calibrated.py                 # 4096 x 4096, 128 x 2048 tokens
    python benchmarks/bench_calibrated.py --quick         # 1024 x 1024, 16 x 512 tokens
    python benchmarks/bench_calibrated.py --model --memory
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402


# -- (1) and (2): one layer --------------------------------------------------------


def _layer_benchmark(args) -> dict:
    import numpy as np
    import torch

    from _reference import SparseGPT  # the reference, transcribed (torch)

    from kerasurgery import calibrated

    d, tokens = args.width, args.tokens
    rng = np.random.default_rng(0)
    kernel = (rng.normal(size=(d, d)) / math.sqrt(d)).astype(np.float32)  # Keras (in, out)
    weight = torch.from_numpy(kernel.T.copy())  # torch (out, in)
    # A pool of distinct sequences, cycled: the cost of a product does not
    # depend on the values, and 128 x 2048 x 4096 floats would take 4 GiB.
    scale = np.exp(rng.normal(size=d)).astype(np.float32)
    pool = [(rng.normal(size=(tokens, d)).astype(np.float32) * scale) for _ in range(args.pool)]
    hessian_samples = min(args.hessian_samples, args.samples)
    factor = args.samples / hessian_samples
    rule = {"sparsity": 0.5} if args.n_of_m is None else {"n_of_m": args.n_of_m}
    ref_rule = {"sparsity": 0.5} if args.n_of_m is None else {
        "sparsity": 0, "prunen": args.n_of_m[0], "prunem": args.n_of_m[1]}

    state: dict = {}

    def ours_hessian():
        hessian = calibrated.RunningHessian(d, "float32")
        for i in range(hessian_samples):
            hessian.update(pool[i % len(pool)], samples=1)
        state["ours_H"] = hessian.value

    def reference_hessian():
        ref = SparseGPT(weight)
        for i in range(hessian_samples):
            ref.add_batch(torch.from_numpy(pool[i % len(pool)]).unsqueeze(0))
        state["ref"] = ref

    def ours_prune():
        state["ours"] = calibrated.sparsegpt(kernel, state["ours_H"], **rule)

    def reference_prune():
        state["ref_W"] = state["ref"].fasterprune(**ref_rule)

    def fresh_reference():  # fasterprune consumes its Hessian: a copy, outside the timing
        state["ref"] = SparseGPT(weight)
        state["ref"].H = state["ref_H"].clone()

    def forward():
        for i in range(args.samples if args.wanda_all else hessian_samples):
            pool[i % len(pool)] @ kernel

    def wanda():
        norms = calibrated.RunningNorms(d)
        for i in range(args.samples if args.wanda_all else hessian_samples):
            norms.update(pool[i % len(pool)])
        calibrated.wanda_mask(kernel, norms.value, **rule)

    hessian_wall, hessian_cpu = _common.interleaved(
        {"reference": reference_hessian, "ours": ours_hessian}, args.rounds)
    state["ref_H"] = state["ref"].H.clone()
    # Pruning, interleaved too, each round from the same Hessians.
    prune_wall, prune_cpu = _common.interleaved({"reference": reference_prune, "ours": ours_prune},
                                                args.rounds, prepare={"reference": fresh_reference})
    wanda_wall, _ = _common.interleaved({"forward": forward, "wanda": wanda}, args.rounds)

    ours_W, ours_mask = state["ours"]
    ref_W = state["ref_W"].numpy().T
    agreement = {
        "mask_differs": int(np.count_nonzero(ours_mask != (ref_W == 0))),
        "max_abs_difference": float(np.max(np.abs(ours_W - ref_W))),
    }
    totals = {
        name: [h * factor + p for h, p in zip(hessian_wall[name], prune_wall[name])]
        for name in ("reference", "ours")
    }
    return {
        "width": d, "samples": args.samples, "tokens": tokens, "hessian_samples": hessian_samples,
        "rule": rule,
        "hessian": {n: _common.summary(v) for n, v in hessian_wall.items()},
        "hessian_cpu": {n: _common.summary(v) for n, v in hessian_cpu.items()},
        "hessian_ratio": _common.paired_ratio(hessian_wall["ours"], hessian_wall["reference"]),
        "prune": {n: _common.summary(v) for n, v in prune_wall.items()},
        "prune_cpu": {n: _common.summary(v) for n, v in prune_cpu.items()},
        "prune_ratio": _common.paired_ratio(prune_wall["ours"], prune_wall["reference"]),
        "total": {n: _common.summary(v) for n, v in totals.items()},
        "total_ratio": _common.paired_ratio(totals["ours"], totals["reference"]),
        "wanda": {n: _common.summary(v) for n, v in wanda_wall.items()},
        "wanda_ratio": _common.paired_ratio(wanda_wall["wanda"], wanda_wall["forward"]),
        "wanda_samples": args.samples if args.wanda_all else hessian_samples,
        "agreement": agreement,
    }


# -- (3) a whole KerasHub model ----------------------------------------------------------


def _gpt(layers: int, hidden: int, vocabulary: int, sequence: int):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary, num_layers=layers, num_heads=max(1, hidden // 64),
        hidden_dim=hidden, intermediate_dim=4 * hidden, max_sequence_length=sequence,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _calibration(sequences: int, tokens: int, vocabulary: int) -> dict:
    import numpy as np

    ids = np.random.default_rng(0).integers(1, vocabulary, size=(sequences, tokens)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def _model_benchmark(args) -> dict:
    import kerasurgery as ks

    model = _gpt(args.model_layers, args.model_hidden, 1000, args.model_tokens)
    data = _calibration(args.model_sequences, args.model_tokens, 1000)
    model.predict(data, batch_size=args.model_batch, verbose=0)  # compile once, outside the timing
    rule = {"sparsity": 0.5}
    runs = {
        "predict": lambda: model.predict(data, batch_size=args.model_batch, verbose=0),
        "wanda": lambda: ks.prune(model, data, method="wanda", batch_size=args.model_batch,
                                  layers="*transformer_layer_*", **rule),
        "sparsegpt": lambda: ks.prune(model, data, method="sparsegpt", batch_size=args.model_batch,
                                      layers="*transformer_layer_*", **rule),
    }
    wall, _ = _common.interleaved(runs, args.model_rounds)
    return {
        "layers": args.model_layers, "hidden": args.model_hidden, "parameters": model.count_params(),
        "sequences": args.model_sequences, "tokens": args.model_tokens, "batch": args.model_batch,
        "times": {n: _common.summary(v) for n, v in wall.items()},
        "wanda_forwards": _common.paired_ratio(wall["wanda"], wall["predict"]),
        "sparsegpt_forwards": _common.paired_ratio(wall["sparsegpt"], wall["predict"]),
    }


# -- (4) peak memory, in a fresh process ---------------------------------------------------


_MEMORY_CHILD = """
import json, os, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
import numpy as np
from bench_calibrated import _gpt, _calibration

def vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

import kerasurgery as ks
model = _gpt(12, 768, 50257, {tokens})
data = _calibration({sequences}, {tokens}, 50257)
what = {what!r}
base = vm("VmRSS:")
reset_peak()
start = time.perf_counter()
if what == "predict":
    model.predict(data, batch_size={batch}, verbose=0)
elif what == "freeze":  # the copy that prune returns, alone
    ks.freeze(model, {{"*transformer_layer_*": ks.Pin()}})
else:
    ks.prune(model, data, method=what, sparsity=0.5, batch_size={batch}, layers="*transformer_layer_*")
print(json.dumps({{"what": what, "parameters": model.count_params(), "rss_before": base,
                  "peak": vm("VmHWM:"), "seconds": time.perf_counter() - start}}))
"""


def _memory_benchmark(args) -> dict:
    here = str(Path(__file__).resolve().parent)
    results = {}
    for what in ("predict", "freeze", "wanda", "sparsegpt"):
        code = _MEMORY_CHILD.format(root=str(_common.ROOT), here=here, tokens=args.memory_tokens,
                                    sequences=args.memory_sequences, batch=args.memory_batch, what=what)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if done.returncode:
            raise RuntimeError(done.stderr[-4000:])
        results[what] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"sequences": args.memory_sequences, "tokens": args.memory_tokens,
            "batch": args.memory_batch, "runs": results}


# -- the report ------------------------------------------------------------------------------


def _print_layer(result: dict) -> None:
    d, s, t = result["width"], result["samples"], result["tokens"]
    print(f"\nSparseGPT, one {d} x {d} float32 kernel, {s} x {t} calibration tokens, {result['rule']}")
    print(f"  (Hessian timed on {result['hessian_samples']} sequences, scaled x"
          f"{s / result['hessian_samples']:g}; median [min, max] of {result['total']['ours']['n']} rounds, s)")
    print(f"  {'phase':<28}{'reference (torch)':>22}{'ours (numpy)':>22}{'ratio':>8}")
    for phase, key, ratio, scale in (
        (f"Hessian, {result['hessian_samples']} sequences", "hessian", "hessian_ratio", 1),
        ("fasterprune", "prune", "prune_ratio", 1),
        (f"total, {s} sequences", "total", "total_ratio", 1),
    ):
        ref, ours = result[key]["reference"], result[key]["ours"]
        print(f"  {phase:<28}{_fmt(ref):>22}{_fmt(ours):>22}{result[ratio]['median']:>7.2f}x")
    agreement = result["agreement"]
    print(f"  results: masks differ in {agreement['mask_differs']} entries, weights by at most "
          f"{agreement['max_abs_difference']:.2e}")
    w = result["wanda"]
    print(f"\nWanda on the same layer, {result['wanda_samples']} sequences: norms + mask "
          f"{_fmt(w['wanda'])} s against one forward pass (x @ W) {_fmt(w['forward'])} s: "
          f"{result['wanda_ratio']['median']:.2f}x")


def _fmt(s: dict) -> str:
    return f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"


def _print_model(result: dict) -> None:
    t = result["times"]
    print(f"\nkerasurgery.prune of a KerasHub GPT-2, {result['layers']} blocks x {result['hidden']} "
          f"({result['parameters'] / 1e6:.1f}M parameters), {result['sequences']} x {result['tokens']} "
          f"tokens, batch {result['batch']}, 50%:")
    print(f"  predict {_fmt(t['predict'])} s; wanda {_fmt(t['wanda'])} s "
          f"({result['wanda_forwards']['median']:.1f} predicts); sparsegpt {_fmt(t['sparsegpt'])} s "
          f"({result['sparsegpt_forwards']['median']:.1f} predicts)")


def _print_memory(result: dict) -> None:
    print(f"\nPeak memory, GPT-2 12 x 768, {result['sequences']} x {result['tokens']} tokens, "
          f"batch {result['batch']} (fresh process each; VmHWM during the call):")
    for what, run in result["runs"].items():
        print(f"  {what:<10} {run['parameters'] / 1e6:.0f}M parameters: before {run['rss_before'] / 2**30:.2f} GiB, "
              f"peak {run['peak'] / 2**30:.2f} GiB (+{(run['peak'] - run['rss_before']) / 2**30:.2f}), "
              f"{run['seconds']:.0f} s")


def _n_of_m(text: str) -> tuple[int, int]:
    n, m = text.split(":")
    return int(n), int(m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hessian-samples", type=int, default=8,
                        help="sequences on which the Hessian accumulation is timed (then scaled)")
    parser.add_argument("--pool", type=int, default=4, help="distinct random sequences, cycled")
    parser.add_argument("--wanda-all", action="store_true", help="Wanda over all --samples sequences")
    parser.add_argument("--n-of-m", type=_n_of_m, default=None, help="e.g. 2:4 instead of 50%%")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1024 x 1024, 16 x 512 tokens")
    parser.add_argument("--model", action="store_true", help="(3): kerasurgery.prune of a KerasHub GPT-2")
    parser.add_argument("--model-layers", type=int, default=4)
    parser.add_argument("--model-hidden", type=int, default=256)
    parser.add_argument("--model-sequences", type=int, default=32)
    parser.add_argument("--model-tokens", type=int, default=128)
    parser.add_argument("--model-batch", type=int, default=8)
    parser.add_argument("--model-rounds", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="(4): peak memory on a 124M GPT-2")
    parser.add_argument("--memory-sequences", type=int, default=128)
    parser.add_argument("--memory-tokens", type=int, default=64)
    parser.add_argument("--memory-batch", type=int, default=16)
    parser.add_argument("--skip-layer", action="store_true", help="only (3) and/or (4)")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    if args.quick:
        args.width, args.samples, args.tokens, args.hessian_samples = 1024, 16, 512, 16
    _common.quiet_tensorflow()
    info = _common.machine()
    _common.print_machine(info)
    document = {"machine": info}
    if not args.skip_layer:
        document["layer"] = _layer_benchmark(args)
        _print_layer(document["layer"])
    if args.model:
        document["model"] = _model_benchmark(args)
        _print_model(document["model"])
    if args.memory:
        document["memory"] = _memory_benchmark(args)
        _print_memory(document["memory"])
    import torch

    document["versions"] = {**_common.versions(), "torch": torch.__version__}
    document["machine"]["load_after"] = _common.load()
    print(f"\nload average after: {document['machine']['load_after']}; versions: {document['versions']}")
    _common.write_json(args.json, document)


if __name__ == "__main__":
    main()
