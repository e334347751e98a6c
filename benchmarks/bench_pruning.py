"""The cost of `kerasurgery.callbacks.GradualPruning`: one pruning step, and a whole `fit`.

The model: an MLP of `--layers` Dense layers, `--width` wide (default 3 x 1024,
3.15M parameters), made pin-capable with nothing pinned by
`kerasurgery.freeze(model, {"*": kerasurgery.Pin()})` (shared storage: pins
at 0.0), Adam, MSE, batch 256: the set-up of gradual magnitude pruning.

(1) One pruning step: `callback.prune(s)` (the method the callback runs every
`frequency` steps: read every selected kernel, rank its free entries by |w|,
pin the smallest at 0.0, measure the sparsity) at each of `--sparsities`,
each time starting from the state of the step before on a schedule that
grows by `--increment` (the masks are restored before each call, outside the
timing). Interleaved, round by round, with a sample of `--steps`
`train_on_batch` steps of the same model, so the ratio says how many training
steps one pruning step costs (median over rounds of prune time / time per
training step in the same round).

(2) The whole `fit`: `model.fit` for `--fit-steps` steps with the callback
pruning every `--frequency` steps (from the fit's first step, initial
sparsity `--initial-sparsity`, reaching `--target` at its last pruning step)
vs the same `fit` of the same model without the callback; every round starts
from no pins (restored outside the timing); interleaved, `--fit-rounds`
rounds. `--split` adds a third `fit` with a callback whose schedule starts
after it (its per-batch hooks and `on_train_begin` only, no pruning step).

    python benchmarks/bench_pruning.py                     # TensorFlow, graph mode
    python benchmarks/bench_pruning.py --backend jax       # JAX (a process of its own)
    python benchmarks/bench_pruning.py --across-layers     # one ranking over all layers
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax"))
    parser.add_argument("--mode", default="graph", choices=("graph", "xla"),
                        help="TensorFlow: graph = tf.function, xla = jit_compile=True (JAX: always jit)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--across-layers", action="store_true", help="GradualPruning(across_layers=True)")
    parser.add_argument("--sparsities", type=_floats, default=[0.5, 0.8, 0.95],
                        help="(1): sparsities of the timed pruning steps")
    parser.add_argument("--increment", type=float, default=0.05,
                        help="(1): each timed step starts from sparsity s - increment")
    parser.add_argument("--steps", type=int, default=5, help="(1): training steps per training sample")
    parser.add_argument("--rounds", type=int, default=10, help="(1): interleaved rounds")
    parser.add_argument("--fit-steps", type=int, default=300, help="(2): steps of each fit (0: skip (2))")
    parser.add_argument("--epoch-steps", type=int, default=25,
                        help="(2): steps per epoch (the data held in memory); divides --fit-steps")
    parser.add_argument("--frequency", type=int, default=100, help="(2): steps between pruning steps")
    parser.add_argument("--initial-sparsity", type=float, default=0.0, help="(2): the schedule's start")
    parser.add_argument("--target", type=float, default=0.9, help="(2): the schedule's target sparsity")
    parser.add_argument("--fit-rounds", type=int, default=4, help="(2): interleaved rounds")
    parser.add_argument("--split", action="store_true",
                        help="(2): also a fit with a GradualPruning that never prunes (its per-batch hooks and "
                             "set-up only), to split the overhead")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    _common.quiet_tensorflow()
    if args.backend == "jax":
        args.mode = "xla"
    if args.fit_steps and (args.fit_steps % args.epoch_steps or args.fit_steps <= args.frequency):
        raise SystemExit("--fit-steps must be a multiple of --epoch-steps and above --frequency")

    import keras
    import numpy as np

    import kerasurgery as ks

    width, depth = args.width, args.layers

    def model():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((width,), name="x")
        h = inputs
        for k in range(depth):
            h = keras.layers.Dense(width, activation="relu" if k < depth - 1 else None, name=f"dense_{k}")(h)
        frozen = ks.freeze(keras.Model(inputs, h), {"*": ks.Pin()})
        frozen.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse", jit_compile=args.mode == "xla")
        return frozen

    frozen = model()
    pinned = [frozen.get_layer(f"dense_{k}") for k in range(depth)]
    storage = sorted({layer.pinned_kernel_values for layer in pinned})
    mask_vars = [layer.pin_variables("kernel")[0] for layer in pinned]
    no_pins = [np.zeros(v.shape, dtype=bool) for v in mask_vars]

    def ops_numpy(v):
        return keras.ops.convert_to_numpy(v)

    def masks():
        return [ops_numpy(v).astype(bool) for v in mask_vars]

    def restore(state):  # outside fit: the variables hold the model's state on every backend
        for var, mask in zip(mask_vars, state):
            var.assign(mask)

    rng = np.random.default_rng(0)
    rows = args.batch * max(args.steps, args.epoch_steps if args.fit_steps else 0)
    x = rng.normal(size=(rows, width)).astype("float32")
    y = rng.normal(size=(rows, width)).astype("float32")
    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, args.batch * args.steps, args.batch)]
    for xb, yb in batches[:3]:  # trace, compile, warm up
        frozen.train_on_batch(xb, yb)

    def pruner(**kwargs):
        cb = ks.callbacks.GradualPruning(across_layers=args.across_layers, **kwargs)
        cb.set_model(frozen)
        return cb

    # -- (1) one pruning step vs one training step --------------------------
    callback = pruner(target_sparsity=max(args.sparsities), begin_step=0, end_step=1)
    callback.on_train_begin()
    before = {}
    for s in args.sparsities:
        restore(no_pins)
        callback.prune(max(0.0, s - args.increment))
        before[s] = masks()
    restore(no_pins)

    def train():
        for xb, yb in batches:
            frozen.train_on_batch(xb, yb)

    def prune_at(s):
        return lambda: callback.prune(s)

    runs = {"train": train}
    prepare = {}
    for s in args.sparsities:
        runs[f"prune {s:g}"] = prune_at(s)
        prepare[f"prune {s:g}"] = (lambda state: lambda: restore(state))(before[s])
    prune_at(args.sparsities[0])()  # warm up
    load_before = _common.load()
    wall, cpu = _common.interleaved(runs, args.rounds, prepare)
    reached = {}
    for s in args.sparsities:  # what the timed call leaves: exactly round(s * size) per weight
        restore(before[s])
        callback.prune(s)
        reached[f"{s:g}"] = callback._sparsity
    restore(no_pins)
    for d in (wall, cpu):
        d["train"] = [t / args.steps for t in d["train"]]
    step = {
        "load_before": load_before,
        "s": {k: _common.summary(v) for k, v in wall.items()},
        "cpu_s": {k: _common.summary(v) for k, v in cpu.items()},
        "in_train_steps": {k: _common.paired_ratio(wall[k], wall["train"]) for k in wall if k != "train"},
        "cpu_in_train_steps": {k: _common.paired_ratio(cpu[k], cpu["train"]) for k in cpu if k != "train"},
        "sparsity_reached": reached,
    }

    # -- (2) the whole fit, with and without the callback -------------------
    fit = None
    if args.fit_steps:
        n = args.batch * args.epoch_steps
        fx, fy = x[:n], y[:n]
        epochs = args.fit_steps // args.epoch_steps
        last = {}

        def fit_run(with_callback, idle=False):
            def run():
                callbacks = []
                if idle:  # the hooks and on_train_begin only: the schedule starts after this fit
                    callbacks.append(pruner(target_sparsity=args.target, begin_step=2**40, end_step=2**40))
                if with_callback:
                    begin = int(ops_numpy(frozen.optimizer.iterations))
                    end = begin + (args.fit_steps - 1) // args.frequency * args.frequency
                    cb = pruner(target_sparsity=args.target, initial_sparsity=args.initial_sparsity,
                                begin_step=begin, end_step=end, frequency=args.frequency)
                    callbacks.append(cb)
                    last["callback"] = cb
                last["pruned"] = with_callback
                frozen.fit(fx, fy, batch_size=args.batch, epochs=epochs, shuffle=False, verbose=0,
                           callbacks=callbacks)
            return run

        # Warm-up: one epoch each way (fit's own functions, the callback's first call).
        frozen.fit(fx, fy, batch_size=args.batch, epochs=1, shuffle=False, verbose=0)
        frozen.fit(fx, fy, batch_size=args.batch, epochs=1, shuffle=False, verbose=0,
                   callbacks=[pruner(target_sparsity=0.1, begin_step=0, end_step=0)])
        restore(no_pins)
        runs = {"fit": fit_run(False), "fit + GradualPruning": fit_run(True)}
        if args.split:
            runs["fit + idle GradualPruning"] = fit_run(False, idle=True)
        fit_load = _common.load()

        def check():
            # After a fit with the callback (outside the timing): the pins its last step left.
            if last.pop("pruned", False):
                last["mask_fraction"] = float(np.mean([m.mean() for m in masks()]))  # equal layer sizes

        def fresh():
            check()
            restore(no_pins)

        fwall, fcpu = _common.interleaved(runs, args.fit_rounds, {name: fresh for name in runs})
        check()
        restore(no_pins)
        final = callback_sparsity = last["callback"]._sparsity
        measured = last["mask_fraction"]
        pruning_steps = len(range(0, args.fit_steps, args.frequency))
        extra = statistics.median(fwall["fit + GradualPruning"]) - statistics.median(fwall["fit"])
        extra_cpu = statistics.median(fcpu["fit + GradualPruning"]) - statistics.median(fcpu["fit"])
        fit = {
            "load_before": fit_load,
            "steps": args.fit_steps, "epochs": epochs, "frequency": args.frequency,
            "pruning_steps": pruning_steps,
            "schedule": f"{args.initial_sparsity:g} -> {args.target:g}, power 3",
            "s": {k: _common.summary(v) for k, v in fwall.items()},
            "cpu_s": {k: _common.summary(v) for k, v in fcpu.items()},
            "ratio": _common.paired_ratio(fwall["fit + GradualPruning"], fwall["fit"]),
            "cpu_ratio": _common.paired_ratio(fcpu["fit + GradualPruning"], fcpu["fit"]),
            "extra_s_per_pruning_step": extra / pruning_steps,
            "extra_cpu_s_per_pruning_step": extra_cpu / pruning_steps,
            "idle_ratio": (_common.paired_ratio(fwall["fit + idle GradualPruning"], fwall["fit"])
                           if args.split else None),
            "idle_cpu_ratio": (_common.paired_ratio(fcpu["fit + idle GradualPruning"], fcpu["fit"])
                               if args.split else None),
            "final_sparsity": final, "final_mask_fraction": measured,
        }
        assert abs(callback_sparsity - args.target) < 1e-3 and abs(measured - args.target) < 1e-3, \
            (callback_sparsity, measured)

    info = _common.machine()
    result = {
        "benchmark": "pruning",
        "backend": args.backend, "mode": args.mode,
        "width": width, "layers": depth, "batch": args.batch,
        "params": depth * (width * width + width),
        "storage": storage, "across_layers": args.across_layers,
        "increment": args.increment, "steps_per_sample": args.steps, "rounds": args.rounds,
        "fit_rounds": args.fit_rounds,
        "machine": info, "versions": _common.versions(), "code": _code(),
        "step": step, "fit": fit,
    }
    _print(result)
    _common.write_json(args.json, result)
    return result


def _code() -> str:
    """The commit, and whether the library has uncommitted changes (what was measured)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_common.ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kerasurgery"], cwd=_common.ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + (" + uncommitted changes in kerasurgery/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _print(result: dict) -> None:
    print(
        f"GradualPruning, {result['backend']} {result['mode']}: {result['layers']} x {result['width']} MLP "
        f"({result['params'] / 1e6:.2f}M parameters, {'/'.join(result['storage'])} pins), batch {result['batch']}, "
        f"Adam; {'one ranking across layers' if result['across_layers'] else 'per layer'}; code {result['code']}"
    )
    _common.print_machine(result["machine"])
    step = result["step"]
    print(f"(1) one pruning step (prune(s) from s - {result['increment']:g}) vs one training step; "
          f"{result['rounds']} interleaved rounds, training samples of {result['steps_per_sample']} steps "
          f"(load before: {step['load_before']})")
    print(f"  {'':<12} {'wall ms':>8} {'min':>7} {'max':>7} {'CPU ms':>8} {'min':>7} {'max':>7}   "
          "in training steps, wall / CPU: median of paired [min, max]")
    for name, s in step["s"].items():
        c = step["cpu_s"][name]
        line = (f"  {name:<12} {_common.fmt_ms(s['median']):>8} {_common.fmt_ms(s['min']):>7} "
                f"{_common.fmt_ms(s['max']):>7} {_common.fmt_ms(c['median']):>8} {_common.fmt_ms(c['min']):>7} "
                f"{_common.fmt_ms(c['max']):>7}")
        if name == "train":
            line += "   1 (one training step)"
        else:
            r, rc = step["in_train_steps"][name], step["cpu_in_train_steps"][name]
            line += (f"   {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] / "
                     f"{rc['median']:.2f} [{rc['min']:.2f}, {rc['max']:.2f}]")
        print(line)
    fit = result["fit"]
    if fit:
        print(f"(2) fit of {fit['steps']} steps ({fit['epochs']} epochs), GradualPruning every {fit['frequency']} "
              f"steps ({fit['pruning_steps']} pruning steps, {fit['schedule']}) vs without; "
              f"{result['fit_rounds']} interleaved rounds (load before: {fit['load_before']})")
        print(f"  {'':<26} {'wall s':>7} {'min':>7} {'max':>7} {'CPU s':>7} {'min':>7} {'max':>7}")
        for name, s in fit["s"].items():
            c = fit["cpu_s"][name]
            print(f"  {name:<26} {s['median']:7.2f} {s['min']:7.2f} {s['max']:7.2f} "
                  f"{c['median']:7.2f} {c['min']:7.2f} {c['max']:7.2f}")
        r, rc = fit["ratio"], fit["cpu_ratio"]
        print(f"  ratio with / without: wall {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}], "
              f"CPU {rc['median']:.3f} [{rc['min']:.3f}, {rc['max']:.3f}]; extra per pruning step: "
              f"wall {_common.fmt_ms(fit['extra_s_per_pruning_step'])} ms, "
              f"CPU {_common.fmt_ms(fit['extra_cpu_s_per_pruning_step'])} ms; "
              f"sparsity at the end {fit['final_sparsity']:.4f}")
        if fit.get("idle_ratio"):
            r, rc = fit["idle_ratio"], fit["idle_cpu_ratio"]
            print(f"  idle callback (hooks and set-up, no pruning step) / without: wall {r['median']:.3f} "
                  f"[{r['min']:.3f}, {r['max']:.3f}], CPU {rc['median']:.3f} [{rc['min']:.3f}, {rc['max']:.3f}]")


if __name__ == "__main__":
    main()
