"""Training-step time of a frozen model relative to the same model unpinned.

`--model mlp` (the default) is the workload of issue 5: an MLP of 3 Dense
layers, 1024 wide, batch 256, Adam, MSE, with half of each kernel pinned (a
fixed random half). Variants, all timed in one process, interleaved round by
round:

    dense         plain keras.layers.Dense (the baseline, ratio 1.0)
    shared        kerasurgery.freeze, pinned to 0.0 (one shared value: pruning)
    per_entry     kerasurgery.freeze, pinned at their current values (per entry)
    ref_where     reference: a minimal layer computing ops.where(bool mask,
                  value tensor, kernel), written here, not kerasurgery; this is
                  also what MaskedDense did for per-entry pins before issue 5
    ref_where_scalar  the same with a scalar value: what MaskedDense did for
                  shared pins before issue 5
    ref_multiply  reference: a minimal layer computing kernel * keep (a float
                  0/1 matrix); zero pins only, and not bit-exact (-0.0, NaN)

`--model cnn`: a CNN on 32 x 32 x 3 inputs, batch 64: Conv2D 3x3 of 64, 128
and 128 filters (ReLU, "same"), 2x2 max pooling after the first two, global
average pooling, Dense 10; Adam, MSE. `--model transformer`: one KerasHub
`TransformerEncoder(intermediate_dim=1024, num_heads=8)` on (batch 16, seq
128, hidden 256), Adam, MSE (`--block keras`: the same block built from
keras.layers.MultiHeadAttention, LayerNormalization and Dense, for machines
without KerasHub). Both freeze every supported layer with
`kerasurgery.freeze(model, {"*": rules.fraction(0.5, seed=1, value=...)})`,
which pins half of each kernel (the Conv2D and Dense kernels; in the
transformer the EinsumDense query/key/value/output projections and the two
feed-forward Dense layers, pinned in place inside the block). Variants:

    plain         the unpinned model (the baseline, ratio 1.0)
    shared        pinned to 0.0 (one shared value per weight: pruning)
    per_entry     pinned at their current values (per entry)

Each sample is `--steps` calls of `train_on_batch` (one compiled training
step each, on distinct batches); the time per step is the sample's time
divided by `--steps`. Not `fit`: its per-call set-up (~40 ms of CPU here)
would be added to every variant alike and dilute the ratios toward 1.

    python benchmarks/bench_step.py                      # TensorFlow, graph mode
    python benchmarks/bench_step.py --mode xla           # jit_compile=True
    python benchmarks/bench_step.py --backend jax        # JAX (always jit)
    # the GPU target of issue 5 (JAX, 3 x 4096, batch 8192, bfloat16 and float32):
    python benchmarks/bench_step.py --backend jax --width 4096 --batch 8192 --dtype bfloat16
    python benchmarks/bench_step.py --model cnn [--backend jax | --mode xla]
    python benchmarks/bench_step.py --model transformer [--backend jax | --mode xla]

The backend is chosen before Keras is imported, so each backend needs its own
process (run_all.py starts one per configuration).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

VARIANTS = ("dense", "shared", "per_entry", "ref_where", "ref_where_scalar", "ref_multiply")
MODEL_VARIANTS = ("plain", "shared", "per_entry")  # --model cnn / transformer
# Per model: batch, steps per sample (each sample some 0.3-0.6 s of work on 2 cores).
DEFAULTS = {"mlp": (256, 10), "cnn": (64, 2), "transformer": (16, 2)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax"))
    parser.add_argument("--mode", default="graph", choices=("graph", "xla"),
                        help="TensorFlow: graph = tf.function, xla = jit_compile=True (JAX: always jit)")
    parser.add_argument("--model", default="mlp", choices=tuple(DEFAULTS),
                        help="mlp: 3 x 1024 Dense (default); cnn: 3 Conv2D layers; transformer: one encoder block")
    parser.add_argument("--width", type=int, default=1024, help="mlp: units per layer")
    parser.add_argument("--layers", type=int, default=3, help="mlp: Dense layers")
    parser.add_argument("--filters", default="64,128,128", help="cnn: filters of each 3x3 Conv2D layer")
    parser.add_argument("--image", type=int, default=32, help="cnn: input height and width (3 channels)")
    parser.add_argument("--seq", type=int, default=128, help="transformer: sequence length")
    parser.add_argument("--hidden", type=int, default=256, help="transformer: hidden size")
    parser.add_argument("--heads", type=int, default=8, help="transformer: attention heads")
    parser.add_argument("--intermediate", type=int, default=1024, help="transformer: feed-forward size")
    parser.add_argument("--block", default="keras_hub", choices=("keras_hub", "keras"),
                        help="transformer: KerasHub TransformerEncoder, or the same block of Keras layers")
    parser.add_argument("--batch", type=int, help="default: mlp 256, cnn 64, transformer 16")
    parser.add_argument("--fraction", type=float, default=0.5, help="pinned share of each kernel")
    parser.add_argument("--steps", type=int, help="training steps per sample (default: mlp 10, cnn and transformer 2)")
    parser.add_argument("--rounds", type=int, default=10, help="samples per variant (interleaved)")
    parser.add_argument("--dtype", default="float32",
                        help="Keras dtype policy: float32, bfloat16, mixed_bfloat16, ... (for GPU runs)")
    parser.add_argument("--variants",
                        help=f"mlp: a subset of {','.join(VARIANTS)} (default all); "
                             f"cnn / transformer: of {','.join(MODEL_VARIANTS)} (default all)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    _common.quiet_tensorflow()
    if args.backend == "jax":
        args.mode = "xla"
    default_batch, default_steps = DEFAULTS[args.model]
    args.batch = args.batch or default_batch
    args.steps = args.steps or default_steps
    if args.model != "mlp":
        return _main_model(args)

    import keras
    import numpy as np
    from keras import ops

    import kerasurgery as ks

    keras.config.set_dtype_policy(args.dtype)
    variants = [v.strip() for v in (args.variants or ",".join(VARIANTS)).split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "dense" not in variants:
        raise SystemExit(f"--variants must include dense and name only {VARIANTS}; got {variants}")

    class RefWhere(keras.layers.Layer):
        """The naive approach: ops.where(bool mask, full value tensor, kernel)."""

        scalar_value = False

        def __init__(self, units, activation=None, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.activation = keras.activations.get(activation)

        def build(self, input_shape):
            shape = (input_shape[-1], self.units)
            self.raw = self.add_weight(name="kernel", shape=shape)
            self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
            self.build_pins(shape)

        def build_pins(self, shape):
            self.mask = self.add_weight(name="mask", shape=shape, dtype="bool", initializer="zeros", trainable=False)
            self.value = self.add_weight(name="value", shape=() if self.scalar_value else shape,
                                         initializer="zeros", trainable=False)

        def effective(self):
            # Variables are converted first: JAX no longer accepts them in jnp calls.
            t = ops.convert_to_tensor
            return ops.where(t(self.mask), t(self.value), t(self.raw))

        def call(self, x):
            return self.activation(ops.add(ops.matmul(x, self.effective()), self.bias))

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], self.units)

    class RefWhereScalar(RefWhere):
        """ops.where(bool mask, scalar value, kernel)."""

        scalar_value = True

    class RefMultiply(RefWhere):
        """kernel * keep, keep a float 0/1 matrix: zero pins only, not bit-exact."""

        def build_pins(self, shape):
            self.keep = self.add_weight(name="keep", shape=shape, initializer="ones", trainable=False)

        def effective(self):
            return ops.multiply(ops.convert_to_tensor(self.raw), ops.convert_to_tensor(self.keep))

    width, depth = args.width, args.layers

    def masks():
        return [np.random.default_rng(100 + k).random((width, width)) < args.fraction for k in range(depth)]

    def mlp(layer=keras.layers.Dense):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((width,), name="x")
        h = inputs
        for k in range(depth):
            h = layer(width, activation="relu" if k < depth - 1 else None, name=f"dense_{k}")(h)
        return keras.Model(inputs, h)

    def build(variant):
        if variant == "dense":
            return mlp()
        if variant in ("shared", "per_entry"):
            value = 0.0 if variant == "shared" else None
            pins = {f"dense_{k}": ks.Pin(kernel=m, kernel_value=value) for k, m in enumerate(masks())}
            model = ks.freeze(mlp(), pins)
            expected = "shared" if variant == "shared" else "per_entry"
            assert all(model.get_layer(f"dense_{k}").pinned_kernel_values == expected for k in range(depth))
            return model
        model = mlp({"ref_where": RefWhere, "ref_where_scalar": RefWhereScalar,
                     "ref_multiply": RefMultiply}[variant])
        plain = mlp()
        for k, m in enumerate(masks()):
            kernel, bias = plain.get_layer(f"dense_{k}").get_weights()
            layer = model.get_layer(f"dense_{k}")
            layer.raw.assign(kernel)
            layer.bias.assign(bias)
            if variant == "ref_where":
                layer.mask.assign(m)
                layer.value.assign(np.where(m, 0.0, kernel).astype("float32"))
            elif variant == "ref_where_scalar":
                layer.mask.assign(m)
            else:
                layer.keep.assign((~m).astype("float32"))
        return model

    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    x = rng.normal(size=(n, width)).astype("float32")
    y = rng.normal(size=(n, width)).astype("float32")

    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, n, args.batch)]
    models = {variant: build(variant) for variant in variants}
    result = {
        "benchmark": "step",
        "model": "mlp",
        "description": f"{depth} x {width} MLP",
        "width": width, "layers": depth,
        "params": depth * (width * width + width),
    }
    return _measure(args, keras, models, batches, "dense", result)


def _main_model(args: argparse.Namespace) -> dict:
    """--model cnn / transformer: plain vs shared vs per-entry pins on half of every kernel."""
    import keras
    import numpy as np

    import kerasurgery as ks
    from kerasurgery.model.walk import walk_layers

    keras.config.set_dtype_policy(args.dtype)
    variants = [v.strip() for v in (args.variants or ",".join(MODEL_VARIANTS)).split(",") if v.strip()]
    if set(variants) - set(MODEL_VARIANTS) or "plain" not in variants:
        raise SystemExit(f"--variants must include plain and name only {MODEL_VARIANTS} "
                         f"with --model {args.model}; got {variants}")

    if args.model == "cnn":
        filters = [int(f) for f in args.filters.split(",") if f.strip()]
        in_shape, out_shape = (args.image, args.image, 3), (10,)
        description = (f"CNN: Conv2D 3x3 with {'/'.join(map(str, filters))} filters on "
                       f"{args.image}x{args.image}x3, max pooling, global average pooling, Dense 10")

        def plain():
            keras.utils.set_random_seed(0)
            inputs = keras.Input(in_shape, name="x")
            h = inputs
            for k, f in enumerate(filters):
                h = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv_{k}")(h)
                if k < len(filters) - 1:
                    h = keras.layers.MaxPooling2D(name=f"pool_{k}")(h)
            h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
            return keras.Model(inputs, keras.layers.Dense(10, name="head")(h))
    else:
        in_shape = out_shape = (args.seq, args.hidden)
        what = ("KerasHub TransformerEncoder" if args.block == "keras_hub"
                else "transformer encoder block of Keras layers (MultiHeadAttention, Dense, LayerNormalization)")
        description = (f"{what}, {args.heads} heads, intermediate {args.intermediate}, "
                       f"on (batch, seq {args.seq}, hidden {args.hidden})")

        def plain():
            keras.utils.set_random_seed(0)
            inputs = keras.Input(in_shape, name="x")
            if args.block == "keras_hub":
                import keras_hub

                block = keras_hub.layers.TransformerEncoder(
                    intermediate_dim=args.intermediate, num_heads=args.heads, name="encoder")
                return keras.Model(inputs, block(inputs))
            # The same computation as TransformerEncoder's defaults (post-norm, ReLU, no dropout).
            attention = keras.layers.MultiHeadAttention(
                args.heads, key_dim=args.hidden // args.heads, name="attention")(inputs, inputs)
            h = keras.layers.LayerNormalization(epsilon=1e-5, name="attention_norm")(
                keras.layers.Add()([inputs, attention]))
            f = keras.layers.Dense(args.intermediate, activation="relu", name="ffn_in")(h)
            f = keras.layers.Dense(args.hidden, name="ffn_out")(f)
            out = keras.layers.LayerNormalization(epsilon=1e-5, name="ffn_norm")(keras.layers.Add()([h, f]))
            return keras.Model(inputs, out)

    pinned_layers = []

    def build(variant):
        model = plain()
        if variant == "plain":
            return model
        value = 0.0 if variant == "shared" else None
        model = ks.freeze(model, {"*": ks.rules.fraction(args.fraction, seed=1, value=value)})
        pinned = [(path, layer) for path, layer in walk_layers(model) if ks.layers.is_pinned(layer)]
        assert pinned and all(layer.pinned_kernel_values == variant for _, layer in pinned), \
            [(p, layer.pinned_kernel_values) for p, layer in pinned]
        pinned_layers[:] = [f"{p} ({type(layer).__name__})" for p, layer in pinned]
        return model

    models = {variant: build(variant) for variant in variants}
    base = models["plain"]
    rng = np.random.default_rng(0)
    n = args.batch * args.steps
    x = rng.normal(size=(n, *in_shape)).astype("float32")
    y = rng.normal(size=(n, *out_shape)).astype("float32")
    batches = [(x[i:i + args.batch], y[i:i + args.batch]) for i in range(0, n, args.batch)]
    result = {
        "benchmark": "step",
        "model": args.model,
        "description": description,
        "params": int(sum(np.prod(v.shape) for v in base.trainable_variables)),
        "pinned_layers": pinned_layers,
    }
    if args.model == "cnn":
        result.update(filters=filters, image=args.image)
    else:
        result.update(block=args.block, seq=args.seq, hidden=args.hidden, heads=args.heads,
                      intermediate=args.intermediate)
    return _measure(args, keras, models, batches, "plain", result)


def _measure(args: argparse.Namespace, keras, models: dict, batches: list, baseline: str, result: dict) -> dict:
    """Compiles and warms up each model, times them interleaved, and prints and returns the result."""
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse",
                      jit_compile=args.mode == "xla")
        for xb, yb in batches[:3]:  # trace, compile, warm up
            model.train_on_batch(xb, yb)

    def runner(model):
        def run():
            for xb, yb in batches:
                model.train_on_batch(xb, yb)
        return run

    load_before = _common.load()
    wall, cpu = _common.interleaved({v: runner(m) for v, m in models.items()}, args.rounds)
    per_step = {v: [t / args.steps for t in ts] for v, ts in wall.items()}
    cpu_per_step = {v: [t / args.steps for t in ts] for v, ts in cpu.items()}
    info = _common.machine()
    info["load_before"] = load_before
    result = {
        **result,
        "baseline": baseline,
        "backend": args.backend,
        "mode": args.mode,
        "batch": args.batch, "fraction": args.fraction,
        "dtype": args.dtype, "device": _device(keras),
        "steps_per_sample": args.steps, "rounds": args.rounds,
        "machine": info,
        "versions": _common.versions(),
        "step_s": {v: _common.summary(ts) for v, ts in per_step.items()},
        "ratio": {v: _common.paired_ratio(per_step[v], per_step[baseline]) for v in per_step if v != baseline},
        "cpu_step_s": {v: _common.summary(ts) for v, ts in cpu_per_step.items()},
        "cpu_ratio": {v: _common.paired_ratio(cpu_per_step[v], cpu_per_step[baseline])
                      for v in cpu_per_step if v != baseline},
    }
    _print(result)
    _common.write_json(args.json, result)
    return result


def _device(keras) -> str:
    """The accelerator the backend computes on, or "cpu"."""
    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].platform)
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def _print(result: dict) -> None:
    baseline = result.get("baseline", "dense")
    print(
        f"training step, {result['backend']} {result['mode']} on {result['device']}, {result['dtype']}: "
        f"{result.get('description') or str(result['layers']) + ' x ' + str(result['width']) + ' MLP'}, "
        f"{result['params'] / 1e6:.2f}M parameters, "
        f"batch {result['batch']}, Adam, {result['fraction']:.0%} of each kernel pinned; "
        f"{result['rounds']} interleaved samples of {result['steps_per_sample']} steps each"
    )
    if result.get("pinned_layers"):
        print(f"pinned layers ({len(result['pinned_layers'])}): {', '.join(result['pinned_layers'])}")
    _common.print_machine(result["machine"])
    for title, key, ratio_key in (("wall time", "step_s", "ratio"), ("process CPU time", "cpu_step_s", "cpu_ratio")):
        print(f"{title} per step:")
        print(f"  {'variant':<17} {'median ms':>10} {'min':>8} {'max':>8}   "
              f"ratio to {baseline}: median of paired [min, max]; of medians; of mins")
        for variant, s in result[key].items():
            line = (f"  {variant:<17} {_common.fmt_ms(s['median']):>10} "
                    f"{_common.fmt_ms(s['min']):>8} {_common.fmt_ms(s['max']):>8}")
            r = result[ratio_key].get(variant)
            if r:
                line += (f"   {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]; "
                         f"{r['of_medians']:.3f}; {r['of_mins']:.3f}")
            else:
                line += "   1 (baseline)"
            print(line)


if __name__ == "__main__":
    main()
