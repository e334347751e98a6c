"""The promise where users train: distribution, checkpoints, export, bfloat16.

Every test fine-tunes a frozen model with AdamW (decoupled weight decay moves
the raw kernel under a pin, so only the layer's design keeps the pin) and
checks, bit for bit, that each pinned kernel and bias entry still holds its
value while every free entry trained.

Distributed training needs processes of its own: TensorFlow's logical devices
must be configured before TensorFlow initialises its devices, JAX reads its
CPU device count from `XLA_FLAGS` at import, and each worker of a multi-worker
run is a process. Those tests run this module as a worker
(`python -m tests.test_ecosystem WORKER DIR`) that trains, then writes every
local replica's weights to DIR; the assertions run here.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from tests.conftest import make_mlp
from tests.helpers import bits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ("hidden", "out")
REPLICAS = 2


HIDDEN_MASK = np.zeros((4, 3), bool)
HIDDEN_MASK[1, :] = True
HIDDEN_VALUES = np.arange(12, dtype="float32").reshape(4, 3) / 7.0
HIDDEN_BIAS_MASK = np.array([True, False, False])


def _freeze(model):
    """Per-entry pins (none representable in bfloat16), a bias pin, pruned zeros."""
    return ks.freeze(model, {
        "hidden": ks.Pin(kernel=HIDDEN_MASK, kernel_value=HIDDEN_VALUES,
                         bias=HIDDEN_BIAS_MASK, bias_value=0.125),
        "out": ks.rules.zeros(),
    })


def _adamw():
    return keras.optimizers.AdamW(0.05, weight_decay=1.0)


def _xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")


def _effective(model) -> dict:
    """The kernels and biases the `hidden` and `out` layers compute with, by path."""
    return {f"{name}/{which}": getattr(model.get_layer(name), which)
            for name in LAYERS for which in ("kernel", "bias")}


def _numpy(weights: dict) -> dict[str, np.ndarray]:
    return {path: ops.convert_to_numpy(w) for path, w in weights.items()}


@functools.cache
def _expected() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """path -> (mask, values) of the pins `_freeze` sets, written out in numpy
    from the arguments of `_freeze` and the weights of `make_mlp` (not read back
    from a frozen model, so a wrong pin cannot be expected).

    Computed on first use, not at import: a worker must configure its devices
    before anything touches them.
    """
    model = make_mlp()
    out_kernel, out_bias = model.get_layer("out").get_weights()
    return {
        "hidden/kernel": (HIDDEN_MASK, HIDDEN_VALUES),
        "hidden/bias": (HIDDEN_BIAS_MASK, np.full(3, 0.125, "float32")),
        # `make_mlp`'s pruned zeros, +0.0, pinned at themselves; no bias pin.
        "out/kernel": (out_kernel == 0, np.zeros_like(out_kernel)),
        "out/bias": (np.zeros(out_bias.shape, bool), out_bias),
    }


def _assert_pins_hold(weights: dict[str, np.ndarray], where: str) -> None:
    for path, (mask, values) in _expected().items():
        assert np.array_equal(bits(weights[path])[mask], bits(values)[mask]), (
            f"{where}: a pinned entry of {path} moved"
        )


def _assert_free_entries_trained(before: dict, after: dict, where: str) -> None:
    for path, (mask, _) in _expected().items():
        free = ~mask
        assert np.all(bits(after[path])[free] != bits(before[path])[free]), (
            f"{where}: a free entry of {path} did not train"
        )


# --- distributed training ----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_workers(worker: str, out_dir, envs: list[dict[str, str]]) -> None:
    """Runs one `worker` process per env, all at once: multi-worker peers wait
    for each other."""
    processes = []
    for i, env in enumerate(envs):
        with open(out_dir / f"{worker}{i}.log", "w") as log:  # a pipe could fill and block
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "tests.test_ecosystem", worker, str(out_dir)],
                cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env},
                stdout=subprocess.DEVNULL, stderr=log,
            ))
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            codes = [process.poll() for process in processes]
            # Stop at the first failure: its peers would wait for it until the deadline.
            if None not in codes or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.1)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    for i, process in enumerate(processes):
        log = (out_dir / f"{worker}{i}.log").read_text()
        assert process.returncode == 0, (
            f"{worker} worker {i} failed (exit {process.returncode}):\n{log[-4000:]}"
        )


def _load_case(out_dir, case: str) -> dict:
    """What a worker wrote for `case`: meta, weights before training, per replica after."""
    meta = json.loads((out_dir / f"{case}.json").read_text())
    arrays = np.load(out_dir / f"{case}.npz")
    paths = list(_expected())
    return {
        "meta": meta,
        "start": {path: arrays[f"start/{path}"] for path in paths},
        "replicas": [{path: arrays[f"replica{r}/{path}"] for path in paths}
                     for r in range(meta["local_replicas"])],
        "saved": out_dir / f"{case}.trained.keras",
    }


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mirrored")
    _run_workers("mirrored", out_dir, [{"KERAS_BACKEND": "tensorflow"}])
    return {case: _load_case(out_dir, case) for case in ("freeze_in_scope", "load_in_scope")}


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("data_parallel")
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={REPLICAS}"
    _run_workers("data_parallel", out_dir, [{"KERAS_BACKEND": "jax", "XLA_FLAGS": flags.strip()}])
    return {case: _load_case(out_dir, case)
            for case in ("freeze_under_distribution", "load_under_distribution")}


@pytest.fixture(scope="module")
def multi_worker(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("multi_worker")
    cluster = {"worker": [f"localhost:{_free_port()}" for _ in range(REPLICAS)]}
    _run_workers("multi_worker", out_dir, [
        {"KERAS_BACKEND": "tensorflow",
         "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        for i in range(REPLICAS)
    ])
    workers = [_load_case(out_dir, f"multi_worker{i}") for i in range(REPLICAS)]
    for worker in workers[1:]:
        for path in _expected():
            assert np.array_equal(bits(worker["start"][path]), bits(workers[0]["start"][path]))
    # One replica per worker: together they are the replicas of one run.
    return {**workers[0], "replicas": [r for worker in workers for r in worker["replicas"]]}


def _assert_distributed_run_kept_pins(case: dict) -> None:
    meta = case["meta"]
    assert meta["replicas"] == REPLICAS and len(case["replicas"]) == REPLICAS
    assert meta["optimizer"] == "AdamW" and meta["weight_decay"] == 1.0
    assert meta["steps"] == 6  # 3 epochs of 2 global batches of 8, 4 rows per replica
    # The model frozen in the scope, or the file loaded there, starts with
    # the pins `_freeze` sets.
    _assert_pins_hold(case["start"], "before training")
    first, *others = case["replicas"]
    for r, replica in enumerate(others, start=1):
        for path in _expected():
            assert np.array_equal(bits(replica[path]), bits(first[path])), (
                f"replica {r} disagrees with replica 0 on {path}"
            )
    _assert_pins_hold(first, "after distributed training")
    _assert_free_entries_trained(case["start"], first, "after distributed training")
    # Saved from the distributed model, loaded here: same weights, same pins.
    reloaded = _numpy(_effective(ks.load_model(case["saved"], compile=False)))
    for path in _expected():
        assert np.array_equal(bits(reloaded[path]), bits(first[path])), path


@pytest.mark.parametrize("case", ["freeze_in_scope", "load_in_scope"])
def test_pins_hold_under_tf_mirrored_strategy_on_two_logical_cpus(mirrored, case):
    _assert_distributed_run_kept_pins(mirrored[case])


@pytest.mark.parametrize("case", ["freeze_under_distribution", "load_under_distribution"])
def test_pins_hold_under_jax_data_parallel_on_two_cpu_devices(data_parallel, case):
    assert data_parallel[case]["meta"]["data_layout"] == ["batch", None]
    _assert_distributed_run_kept_pins(data_parallel[case])


def test_pins_hold_under_multi_worker_mirrored_strategy_with_two_local_workers(multi_worker):
    _assert_distributed_run_kept_pins(multi_worker)


def _train_and_record(model, out_dir, case: str, train, read_replicas, meta: dict) -> None:
    """Worker side: trains `model`, writes its weights before and, per local replica, after."""
    arrays = {f"start/{path}": w for path, w in _numpy(_effective(model)).items()}
    train(model)
    replicas = read_replicas(model)
    for r, weights in enumerate(replicas):
        arrays.update({f"replica{r}/{path}": w for path, w in weights.items()})
    np.savez(out_dir / f"{case}.npz", **arrays)
    meta = {
        **meta,
        "local_replicas": len(replicas),
        "optimizer": type(model.optimizer).__name__,
        "weight_decay": float(model.optimizer.weight_decay),
        "steps": int(ops.convert_to_numpy(model.optimizer.iterations)),
    }
    (out_dir / f"{case}.json").write_text(json.dumps(meta))
    ks.save_model(model, out_dir / f"{case}.trained.keras")


def _fit(model) -> None:
    model.fit(*_xy(), epochs=3, batch_size=8, verbose=0)


def _save_frozen(path) -> None:
    """Freezes and saves, compiled with AdamW: the file a fine-tuning job loads.

    Written by the worker itself: a file compiled on JAX records
    `jit_compile=True`, and TensorFlow cannot compile a step on mirrored
    variables (plain `Dense` fails the same way).
    """
    frozen = _freeze(make_mlp())
    frozen.compile(optimizer=_adamw(), loss="mse")
    ks.save_model(frozen, path)


def _tf_replica_reader(strategy):
    def read_replicas(model):
        # Each local replica reads its own copy of the variables through the layer.
        import tensorflow as tf

        @tf.function
        def read():
            return strategy.run(_effective, args=(model,))

        local = {path: strategy.experimental_local_results(t) for path, t in read().items()}
        return [{path: results[r].numpy() for path, results in local.items()}
                for r in range(len(local["hidden/kernel"]))]

    return read_replicas


def _mirrored_worker(out_dir) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS
    )
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    read_replicas = _tf_replica_reader(strategy)
    meta = {"replicas": strategy.num_replicas_in_sync}
    # XLA is not tried: TensorFlow cannot compile a step that reads variables
    # mirrored on two devices (plain Dense fails the same way).
    with strategy.scope():
        model = _freeze(make_mlp())
        model.compile(optimizer=_adamw(), loss="mse")
    _train_and_record(model, out_dir, "freeze_in_scope", _fit, read_replicas, meta)
    # The usual workflow: a file frozen outside the scope, loaded (and
    # compiled from its training config) inside it.
    _save_frozen(out_dir / "frozen.keras")
    with strategy.scope():
        model = ks.load_model(out_dir / "frozen.keras")
    _train_and_record(model, out_dir, "load_in_scope", _fit, read_replicas, meta)


def _multi_worker_worker(out_dir) -> None:
    """The multi-machine recipe of docs/distributed.md, one worker of it."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: it configures the runtime
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    _save_frozen(out_dir / f"frozen{index}.keras")  # each "machine" has its copy
    with strategy.scope():
        model = ks.load_model(out_dir / f"frozen{index}.keras")
    _train_and_record(
        model, out_dir, f"multi_worker{index}",
        lambda model: _fit_in_a_custom_loop(model, strategy, *_xy(), epochs=3, global_batch=8),
        _tf_replica_reader(strategy), {"replicas": strategy.num_replicas_in_sync},
    )


def _fit_in_a_custom_loop(model, strategy, x, y, *, epochs: int, global_batch: int) -> None:
    """`fit` for MultiWorkerMirroredStrategy, where Keras 3's own fails.

    `model.fit` raises "Attempt to convert a value (PerReplica...)" under this
    strategy even for plain `Dense` models (keras-team/keras#20585).
    """
    import tensorflow as tf

    loss_fn = keras.losses.MeanSquaredError(reduction="sum")
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch)
    )

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) / global_batch
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))

    train_step = tf.function(lambda batch: strategy.run(step, args=batch))
    for _ in range(epochs):
        for batch in dataset:
            train_step(batch)


def _data_parallel_worker(out_dir) -> None:
    _save_frozen(out_dir / "frozen.keras")  # frozen before any distribution is set
    devices = keras.distribution.list_devices("cpu")
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    meta = {"replicas": len(devices),
            "data_layout": list(distribution.get_data_layout((8, 4)).axes)}

    def read_replicas(model):
        # Each device's copy of the replicated weights, computed by the layer.
        shards = {path: sorted(w.addressable_shards, key=lambda s: s.device.id)
                  for path, w in _effective(model).items()}
        return [{path: np.asarray(on_devices[d].data) for path, on_devices in shards.items()}
                for d in range(len(shards["hidden/kernel"]))]

    model = _freeze(make_mlp())
    model.compile(optimizer=_adamw(), loss="mse")
    _train_and_record(model, out_dir, "freeze_under_distribution", _fit, read_replicas, meta)
    model = ks.load_model(out_dir / "frozen.keras")
    _train_and_record(model, out_dir, "load_under_distribution", _fit, read_replicas, meta)


# --- checkpoints ---------------------------------------------------------------

class _Interrupted(Exception):
    pass


class _InterruptAfter(keras.callbacks.Callback):
    """Raises after `batches` training batches, like a killed job."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batches:
            raise _Interrupted


class _Record(keras.callbacks.Callback):
    """Records the weights training resumes from, the epochs it runs, and the
    weights at the end of each epoch (what its checkpoint must hold)."""

    def __init__(self):
        super().__init__()
        self.ends = {}

    def on_train_begin(self, logs=None):
        self.restored = _numpy(_effective(self.model))
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.ends[epoch + 1] = _numpy(_effective(self.model))


def test_checkpoints_and_backup_and_restore_keep_pins_across_an_interrupted_run(tmp_path, data):
    frozen = _freeze(make_mlp())
    frozen.compile(optimizer=_adamw(), loss="mse")
    ks.save_model(frozen, tmp_path / "frozen.keras")
    start = _numpy(_effective(frozen))

    def callbacks():
        return [
            keras.callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch}.keras")),
            keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=2),
        ]

    # 4 batches of 4 per epoch; stopped at batch 10 of 16, in epoch 3, right
    # after a backup, with checkpoints of epochs 1 and 2 written.
    first = ks.load_model(tmp_path / "frozen.keras")
    first_record = _Record()
    with pytest.raises(_Interrupted):
        first.fit(*data, epochs=4, batch_size=4, verbose=0,
                  callbacks=[*callbacks(), first_record, _InterruptAfter(10)])
    interrupted = _numpy(_effective(first))
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-1.keras", "ckpt-2.keras"]
    _assert_pins_hold(interrupted, "interrupted run")

    # A new process would do exactly this: load the frozen file, fit again.
    second = ks.load_model(tmp_path / "frozen.keras")
    record = _Record()
    second.fit(*data, epochs=4, batch_size=4, verbose=0, callbacks=[*callbacks(), record])
    assert record.epochs == [2, 3]  # resumed in epoch 3 (0-based 2)
    for path in _expected():
        assert np.array_equal(bits(record.restored[path]), bits(interrupted[path])), path
    assert int(ops.convert_to_numpy(second.optimizer.iterations)) == 10 + 8
    resumed = _numpy(_effective(second))
    _assert_pins_hold(resumed, "resumed run")
    _assert_free_entries_trained(interrupted, resumed, "resumed run")
    _assert_free_entries_trained(start, resumed, "whole run")

    # Each checkpoint holds the weights of the end of its epoch, bit for bit:
    # epochs 1 and 2 from the interrupted run, 3 and 4 from the resumed one.
    assert sorted(first_record.ends) == [1, 2] and sorted(record.ends) == [3, 4]
    ends = {**first_record.ends, **record.ends}
    for epoch in (1, 2, 3, 4):
        checkpoint = ks.load_model(tmp_path / f"ckpt-{epoch}.keras")
        assert isinstance(checkpoint.get_layer("hidden"), ks.MaskedDense)
        held = _numpy(_effective(checkpoint))
        _assert_pins_hold(held, f"ckpt-{epoch}.keras")
        for path in _expected():
            assert np.array_equal(bits(held[path]), bits(ends[epoch][path])), (epoch, path)
    for path in _expected():
        assert np.array_equal(bits(ends[4][path]), bits(resumed[path])), path


# --- deployment ----------------------------------------------------------------

def _trained_frozen(data):
    frozen = _freeze(make_mlp())
    frozen.compile(optimizer=_adamw(), loss="mse")
    frozen.fit(*data, epochs=2, batch_size=4, verbose=0)
    return frozen


def _serve(path, x) -> tuple[np.ndarray, list[str]]:
    """The artifact's predictions for `x`, and the dtypes of the variables it holds."""
    import tensorflow as tf

    artifact = tf.saved_model.load(str(path))  # keep a reference: it owns the variables
    served = artifact.serve(tf.constant(x)).numpy()
    return served, sorted(v.dtype.name for v in artifact.variables)


def _assert_served_equal(served: np.ndarray, predicted: np.ndarray) -> None:
    if keras.backend.backend() == "tensorflow":
        # The artifact runs the graph `predict` runs, with the same Grappler
        # rewrites: bit for bit. (An eager call differs by up to 1 ulp: graphs
        # fuse MatMul + bias + activation into one oneDNN kernel.)
        assert np.array_equal(bits(served), bits(predicted))
    else:
        # JAX exports through jax2tf; TensorFlow's kernels then round differently.
        np.testing.assert_allclose(served, predicted, rtol=1e-6, atol=1e-6)


def test_stripped_model_exports_a_saved_model_that_serves_the_same_predictions(tmp_path, data):
    frozen = _trained_frozen(data)
    stripped = ks.strip(frozen)
    assert [type(layer).__name__ for layer in stripped.layers[1:]] == ["Dense", "Dense"]
    x = data[0]
    predicted = stripped.predict(x, verbose=0)
    assert np.array_equal(bits(predicted), bits(frozen.predict(x, verbose=0)))
    stripped.export(str(tmp_path / "served"), format="tf_saved_model", verbose=False)
    served, dtypes = _serve(tmp_path / "served", x)
    assert dtypes == ["float32"] * 4  # two kernels and two biases: the effective weights
    _assert_served_equal(served, predicted)
    # An eager call, unlike `predict`'s graph, runs unfused kernels: up to 1 ulp apart.
    np.testing.assert_allclose(served, ops.convert_to_numpy(stripped(x)), rtol=1e-6, atol=1e-6)
    if keras.backend.backend() == "tensorflow":
        layer = keras.layers.TFSMLayer(str(tmp_path / "served"), call_endpoint="serve")
        assert np.array_equal(bits(layer(x)), bits(served))


def test_frozen_model_exports_directly_and_serves_what_the_stripped_one_serves(tmp_path, data):
    frozen = _trained_frozen(data)
    x = data[0]
    frozen.export(str(tmp_path / "frozen"), format="tf_saved_model", verbose=False)
    ks.strip(frozen).export(str(tmp_path / "stripped"), format="tf_saved_model", verbose=False)
    served, dtypes = _serve(tmp_path / "frozen", x)
    _assert_served_equal(served, frozen.predict(x, verbose=0))
    assert np.array_equal(bits(served), bits(_serve(tmp_path / "stripped", x)[0]))
    # It works, but carries each MaskedDense's raw kernel, masks and values
    # and selects the effective kernel on every call: strip before exporting.
    assert dtypes == ["bool"] * 4 + ["float32"] * 8  # 2 layers x 3 per weight


# --- mixed precision -------------------------------------------------------------

def test_pins_keep_their_float32_values_under_mixed_bfloat16_training(data):
    # test_layers covers mixed_float16 with loss scaling; under bfloat16 the
    # layer computes in bfloat16 while pins must stay exact float32 values.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        frozen = _freeze(make_mlp())
    finally:
        keras.config.set_dtype_policy(previous)
    layer = frozen.get_layer("hidden")
    assert layer.dtype_policy.name == "mixed_bfloat16"
    assert layer.kernel_pin_value.dtype == "float32"
    mask, values = _expected()["hidden/kernel"]
    assert np.all(bits(values)[mask] & 0xFFFF != 0), "pins must not be bfloat16 values"
    start = _numpy(_effective(frozen))
    frozen.compile(optimizer=_adamw(), loss="mse")
    frozen.fit(*data, epochs=2, batch_size=4, verbose=0)
    assert keras.backend.standardize_dtype(frozen(data[0]).dtype) == "bfloat16"
    after = _numpy(_effective(frozen))
    assert all(w.dtype == np.float32 for w in after.values())
    _assert_pins_hold(after, "mixed_bfloat16")
    _assert_free_entries_trained(start, after, "mixed_bfloat16")


if __name__ == "__main__":
    from pathlib import Path

    workers = {"mirrored": _mirrored_worker, "multi_worker": _multi_worker_worker,
               "data_parallel": _data_parallel_worker}
    workers[sys.argv[1]](Path(sys.argv[2]))
