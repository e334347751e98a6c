"""One-shot pruning that looks at the data: magnitude, Wanda and SparseGPT, measured like the papers.

Two small models, trained here on data that ships with Python or scikit-learn
(no download), are pruned in one shot with `kerasurgery.prune` by each method
at 50% unstructured sparsity, 4:8 and 2:4, then (with `--finetune-steps`)
fine-tuned briefly with the pruned entries pinned at exactly zero:

(a) a byte-level GPT: `--blocks` KerasHub `TransformerDecoder` blocks
    (pre-normalized, causal) trained for `--steps` steps on the English text
    of Python's own documentation (`pydoc_data.topics`, ~465 KB), the last
    10% held out. Calibration: 128 sequences of the training text, as the
    papers take 128 sequences of C4. Reported: held-out perplexity per byte.
    The blocks' Dense and EinsumDense layers are pruned; the embedding and
    the output head stay dense, as in the papers.
(b) the digits CNN (`--cnn`): two 3x3 convolutions and a Dense head on
    scikit-learn's 8x8 digits; the convolutions are pruned through their
    patches. Reported: test accuracy. (The first convolution sees one input
    channel: its 3x3x1 = 9 inputs make no whole group of 4 or 8, so 4:8 and
    2:4 leave it dense.)

(c) `--outliers`: one Dense layer whose inputs hold a few features 5x or 20x
    larger than the rest, pruned by each method; the relative error of its
    output on held-out inputs.

Expect the gap between the methods to depend on scale: Wanda's edge comes
from the large-magnitude outlier features of big language models (Dettmers
et al., 2022), which a small model trained for minutes lacks; (c) shows the
effect where such features are put in.

    python examples/calibrated_pruning.py                      # (a), ~6 min on 2 cores
    python examples/calibrated_pruning.py --cnn --outliers --finetune-steps 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import logging  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)  # predict's retracing notes

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerasurgery as ks  # noqa: E402

RULES = {"50%": {"sparsity": 0.5}, "4:8": {"n_of_m": (4, 8)}, "2:4": {"n_of_m": (2, 4)}}
METHODS = ("magnitude", "wanda", "sparsegpt")


# -- (a) the byte-level GPT ---------------------------------------------------------------


def corpus() -> tuple[np.ndarray, np.ndarray]:
    """Python's documentation topics as bytes: (training, held-out), the last 10% held out."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")
    data = np.frombuffer(text, dtype=np.uint8).astype("int32")
    cut = int(len(data) * 0.9)
    return data[:cut], data[cut:]


def windows(data: np.ndarray, count: int, length: int, rng: np.random.Generator) -> np.ndarray:
    starts = rng.integers(0, len(data) - length - 1, size=count)
    return np.stack([data[s:s + length + 1] for s in starts])


def gpt(blocks: int, hidden: int, heads: int, length: int) -> keras.Model:
    import keras_hub

    tokens = keras.Input((length,), dtype="int32", name="token_ids")
    x = keras_hub.layers.TokenAndPositionEmbedding(256, length, hidden, name="embedding")(tokens)
    for i in range(blocks):
        x = keras_hub.layers.TransformerDecoder(
            4 * hidden, heads, normalize_first=True, activation="gelu", name=f"block_{i}"
        )(x)
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    return keras.Model(tokens, keras.layers.Dense(256, name="head")(x), name="byte_gpt")


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def perplexity(model: keras.Model, held_out: np.ndarray, length: int) -> float:
    """exp(mean next-byte cross-entropy) over non-overlapping windows of the held-out text."""
    count = (len(held_out) - 1) // length
    x = held_out[:count * length].reshape(count, length)
    y = held_out[1:count * length + 1].reshape(count, length)
    logits = model.predict(x, batch_size=64, verbose=0).astype("float64")
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, y[..., None], axis=-1).mean()
    return float(math.exp(nll))


def run_gpt(args) -> dict:
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train, held_out = corpus()
    length = args.length
    model = gpt(args.blocks, args.hidden, args.heads, length)
    _compile(model, keras.optimizers.schedules.CosineDecay(1e-3, args.steps, alpha=0.1))
    data = windows(train, args.steps * args.batch, length, rng)
    start = time.perf_counter()
    model.fit(data[:, :-1], data[:, 1:], batch_size=args.batch, epochs=1, verbose=0)
    trained = time.perf_counter() - start
    calibration = windows(train, 128, length, rng)[:, :-1]
    tune = windows(train, max(args.finetune_steps, 1) * args.batch, length, rng)
    dense = perplexity(model, held_out, length)
    print(f"(a) byte-level GPT, {args.blocks} KerasHub TransformerDecoder blocks x {args.hidden}, "
          f"{model.count_params():,} parameters, {args.steps} steps in {trained:.0f} s; "
          f"held-out perplexity per byte: dense {dense:.3f}", flush=True)
    dense_tuned = None
    if args.finetune_steps:
        # The control: the dense model fine-tuned alike (it keeps learning too).
        control = keras.models.clone_model(model)
        control.set_weights(model.get_weights())
        _compile(control, 1e-4)
        control.fit(tune[:, :-1], tune[:, 1:], batch_size=args.batch, epochs=1, verbose=0)
        dense_tuned = perplexity(control, held_out, length)
        print(f"    dense fine-tuned alike ({args.finetune_steps} steps): {dense_tuned:.3f}", flush=True)
    table: dict = {}
    for rule_name, rule in RULES.items():
        for method in METHODS:
            start = time.perf_counter()
            pruned = ks.prune(model, calibration, method=method, layers="block_*",
                              batch_size=16, **rule)
            seconds = time.perf_counter() - start
            entry = {"one_shot": perplexity(pruned, held_out, length), "seconds": seconds}
            if args.finetune_steps:
                _compile(pruned, 1e-4)
                pruned.fit(tune[:, :-1], tune[:, 1:], batch_size=args.batch, epochs=1, verbose=0)
                entry["finetuned"] = perplexity(pruned, held_out, length)
            table.setdefault(rule_name, {})[method] = entry
            print(f"    {rule_name:>4} {method:<10} {entry['one_shot']:8.3f}"
                  + (f"  fine-tuned {entry['finetuned']:.3f}" if "finetuned" in entry else "")
                  + f"   (pruned in {seconds:.1f} s)", flush=True)
    return {"parameters": model.count_params(), "train_seconds": trained, "dense": dense,
            "dense_finetuned": dense_tuned, "pruned": table}


# -- (b) the digits CNN ------------------------------------------------------------------


def run_cnn(args) -> dict:
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(args.seed)
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int32")
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(len(x) * 0.7)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_2"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", name="hidden"),
        keras.layers.Dense(10, name="digit"),
    ], name="digits_cnn")

    def accuracy(m: keras.Model) -> float:
        return float(np.mean(np.argmax(m.predict(x[cut:], verbose=0), axis=-1) == y[cut:]))

    _compile(model, 3e-3)
    model.fit(x[:cut], y[:cut], batch_size=32, epochs=args.cnn_epochs, verbose=0)
    dense = accuracy(model)
    print(f"(b) digits CNN, {model.count_params():,} parameters, {args.cnn_epochs} epochs; "
          f"test accuracy: dense {dense:.4f}", flush=True)
    steps = min(args.finetune_steps, cut // 32)
    dense_tuned = None
    if steps:
        control = keras.models.clone_model(model)
        control.set_weights(model.get_weights())
        _compile(control, 1e-3)
        control.fit(x[:steps * 32], y[:steps * 32], batch_size=32, epochs=1, verbose=0)
        dense_tuned = accuracy(control)
        print(f"    dense fine-tuned alike ({steps} steps): {dense_tuned:.4f}", flush=True)
    table: dict = {}
    for rule_name, rule in RULES.items():
        # n:m needs whole groups of inputs: conv_1's 9 inputs (3x3x1) make none.
        layers = ["conv_2", "hidden", "digit"] if "n_of_m" in rule else "*"
        for method in METHODS:
            pruned = ks.prune(model, x[:128], method=method, layers=layers, **rule)
            entry = {"one_shot": accuracy(pruned)}
            if steps:
                _compile(pruned, 1e-3)
                pruned.fit(x[:steps * 32], y[:steps * 32], batch_size=32, epochs=1, verbose=0)
                entry["finetuned"] = accuracy(pruned)
            table.setdefault(rule_name, {})[method] = entry
            print(f"    {rule_name:>4} {method:<10} {entry['one_shot']:.4f}"
                  + (f"  fine-tuned {entry['finetuned']:.4f}" if "finetuned" in entry else ""),
                  flush=True)
    return {"parameters": model.count_params(), "dense": dense, "dense_finetuned": dense_tuned,
            "pruned": table}


# -- (c) outlier features ----------------------------------------------------------------


def run_outliers(args) -> dict:
    """One Dense layer whose inputs have a few large-magnitude features, as big LLMs do.

    Dettmers et al. (2022) find features up to ~20x larger than the rest in a
    few dimensions of large transformers. Here 5 of 512 Gaussian inputs are
    scaled by 1, 5 or 20; the kernel is random; 8,192 calibration rows.
    Reported: the relative error of the layer's output on 2,048 held-out
    rows after pruning, `||XW - XW'|| / ||XW||`.
    """
    rng = np.random.default_rng(args.seed)
    rows = {}
    for scale in (1.0, 5.0, 20.0):
        features = np.ones(512, "float32")
        features[rng.choice(512, 5, replace=False)] = scale
        x = (rng.normal(size=(10240, 512)) * features).astype("float32")
        inputs = keras.Input((512,))
        model = keras.Model(inputs, keras.layers.Dense(256, use_bias=False, name="dense")(inputs))
        reference = x[8192:] @ model.get_layer("dense").get_weights()[0]
        row = {}
        for method in METHODS:
            pruned = ks.prune(model, x[:8192], method=method, sparsity=0.5, batch_size=1024)
            out = x[8192:] @ keras.ops.convert_to_numpy(pruned.get_layer("dense").kernel)
            row[method] = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
        rows[f"{scale:g}x"] = row
        print(f"(c) outlier features x{scale:<4g} relative output error at 50%: "
              + ", ".join(f"{m} {e:.3f}" for m, e in row.items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="bytes per sequence")
    parser.add_argument("--steps", type=int, default=600, help="GPT training steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--finetune-steps", type=int, default=0,
                        help="fine-tuning steps after pruning, pins held (0: none)")
    parser.add_argument("--cnn", action="store_true", help="also (b), the digits CNN")
    parser.add_argument("--skip-gpt", action="store_true", help="not (a)")
    parser.add_argument("--cnn-epochs", type=int, default=15)
    parser.add_argument("--outliers", action="store_true", help="also (c), one layer with outlier features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)
    results: dict = {"backend": keras.backend.backend(), "args": vars(args)}
    if not args.skip_gpt:
        results["gpt"] = run_gpt(args)
    if args.cnn:
        results["cnn"] = run_cnn(args)
    if args.outliers:
        results["outliers"] = run_outliers(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
