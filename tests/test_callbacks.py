"""`GradualPruning`: the schedule is followed exactly within one `fit`, and pruned entries stay 0.

Rerun under JAX and PyTorch by test_backends.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import pruning
from kerasurgery.errors import KerasurgeryError
from tests.helpers import assert_pins_held_and_free_moved, bits

L = keras.layers
# 32 samples, batch 8: 4 steps per epoch.
STEPS_PER_EPOCH = 4


def _cnn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2), name="x")
    h = L.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = L.Flatten()(h)
    h = L.Dense(12, activation="relu", name="hidden")(h)
    outputs = L.Dense(3, name="out")(h)
    return keras.Model(inputs, outputs, name="cnn")


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 6, 6, 2)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")


def _sync(model):
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def _kernels(model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer name -> (mask, effective kernel) of every pinned layer."""
    _sync(model)
    return {
        layer.name: (state.mask, state.effective)
        for layer in model.layers if ks.layers.is_pinned(layer)
        for state in [layer.pin_state()["kernel"]]
    }


class _Recorder(keras.callbacks.Callback):
    """After every step: the pinned-zero count and the pinned entries' bits of each kernel."""

    def __init__(self):
        super().__init__()
        self.steps: list[dict[str, tuple[int, np.ndarray]]] = []
        self.logs: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        kernels = _kernels(self.model)
        self.steps.append({
            name: (int(np.count_nonzero(mask & (effective == 0))), mask.copy(), bits(effective))
            for name, (mask, effective) in kernels.items()
        })
        self.logs.append(float(logs["sparsity"]))


def _assert_smallest_free_entries_were_pruned(recorder, initial, pruner, *, across=False):
    """At every pruning step, the newly pinned entries are the smallest |w| of the
    free ones, as the weights stood when it ran (after the previous step).

    Pruning runs at the beginning of its step, so it ranks the effective kernels
    the recorder saw at the end of the step before (`initial` before step 0).
    Per layer, or over every layer together with `across`.
    """
    names = list(initial)
    for t, seen in enumerate(recorder.steps):
        if pruner.pruning_step(t) != t:
            continue
        before = {n: recorder.steps[t - 1][n] if t else (0, np.zeros(initial[n].shape, bool), bits(initial[n]))
                  for n in names}
        groups = [names] if across else [[n] for n in names]
        for group in groups:
            new, free = [], []
            for n in group:
                _, old_mask, old_bits = before[n]
                magnitude = np.abs(old_bits.view(np.float32))
                mask = seen[n][1]
                assert np.all(mask[old_mask]), f"{n} at step {t}: a pin was dropped"
                new.append(magnitude[mask & ~old_mask])
                free.append(magnitude[~mask])
            new, free = np.concatenate(new), np.concatenate(free)
            if new.size and free.size:
                assert new.max() <= free.min(), f"{group} at step {t}"


def _fit(model, callbacks, *, epochs, jit_compile="auto", optimizer=None):
    x, y = _data()
    model.compile(
        optimizer=optimizer or keras.optimizers.AdamW(1e-2, weight_decay=0.5),
        loss="mse", jit_compile=jit_compile,
    )
    return model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)


def _expected_counts(callback, sizes, steps):
    """Per step t (0-based), the pruned count per layer the schedule asks for after step t ran."""
    expected, current = [], {name: 0 for name in sizes}
    for t in range(steps):
        if callback.begin_step <= t <= callback.end_step and (
            (t - callback.begin_step) % callback.frequency == 0 or t == callback.end_step
        ):
            assert callback.pruning_step(t) == t
            s = callback.sparsity_at(t)
            current = {name: max(current[name], round(s * size)) for name, size in sizes.items()}
        expected.append(dict(current))
    return expected


# torch has no XLA: its eager run is the one.
COMPILE = [False] if keras.backend.backend() == "torch" else [False, True]


@pytest.mark.parametrize("jit_compile", COMPILE, ids=["graph", "xla"][: len(COMPILE)])
def test_sparsity_follows_the_schedule_within_one_fit(jit_compile):
    frozen = ks.freeze(_cnn(), {"*": ks.Pin()})
    initial = {name: effective for name, (_, effective) in _kernels(frozen).items()}
    sizes = {name: mask.size for name, (mask, _) in _kernels(frozen).items()}
    pruner = ks.callbacks.GradualPruning(0.8, begin_step=2, end_step=13, frequency=3)
    recorder = _Recorder()
    history = _fit(frozen, [pruner, recorder], epochs=5, jit_compile=jit_compile)
    steps = 5 * STEPS_PER_EPOCH
    assert len(recorder.steps) == steps
    expected = _expected_counts(pruner, sizes, steps)
    for t, (seen, want) in enumerate(zip(recorder.steps, expected)):
        assert {name: count for name, (count, _, _) in seen.items()} == want, f"step {t}"
        # Every pin is a pinned zero: the count above is the number of pins.
        assert {name: int(mask.sum()) for name, (_, mask, _) in seen.items()} == want, f"step {t}"
    _assert_smallest_free_entries_were_pruned(recorder, initial, pruner)
    # Final sparsity exact, and the logs carry the sparsity of every step exactly.
    assert {n: c for n, (c, _, _) in recorder.steps[-1].items()} == {
        n: round(0.8 * size) for n, size in sizes.items()
    }
    total = sum(round(0.8 * size) for size in sizes.values()) / sum(sizes.values())
    assert recorder.logs == [sum(want.values()) / sum(sizes.values()) for want in expected]
    assert recorder.logs[-1] == total
    assert history.history["sparsity"] == [
        sum(expected[(epoch + 1) * STEPS_PER_EPOCH - 1].values()) / sum(sizes.values()) for epoch in range(5)
    ]


def test_pruned_entries_stay_exactly_zero_while_training_goes_on():
    frozen = ks.freeze(_cnn(), {"*": ks.Pin()})
    initial = {n: e for n, (_, e) in _kernels(frozen).items()}
    pruner = ks.callbacks.GradualPruning(0.5, begin_step=0, end_step=4, frequency=2)
    recorder = _Recorder()
    _fit(frozen, [pruner, recorder], epochs=3, optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.1))
    # From the step it is pinned on, every pruned entry is exactly +0.0 after every step.
    for t, seen in enumerate(recorder.steps):
        for name, (_, mask, b) in seen.items():
            assert np.all(b[mask] == 0), f"{name} at step {t}"
            if t:
                before = recorder.steps[t - 1][name][1]
                assert np.all(mask[before]), "a pin was dropped"
    masks = {n: m for n, (m, _) in _kernels(frozen).items()}
    assert {n: int(m.sum()) for n, m in masks.items()} == {n: round(0.5 * m.size) for n, m in masks.items()}
    # Every free entry trained (decoupled weight decay alone moves each non-zero one).
    moved = {n: e for n, (_, e) in _kernels(frozen).items()}
    for name, mask in masks.items():
        assert np.all(initial[name] != 0), name
        assert np.all(moved[name][~mask] != initial[name][~mask]), name
    # More training with AdamW weight decay and no callback: nothing moves at the
    # pins, and every free entry trains on.
    _fit(frozen, [], epochs=3, optimizer=keras.optimizers.AdamW(1e-2, weight_decay=1.0))
    for name, (mask, effective) in _kernels(frozen).items():
        np.testing.assert_array_equal(mask, masks[name])
        assert np.all(bits(effective)[mask] == 0)
        assert np.all(moved[name][~mask] != 0), name
        assert np.all(effective[~mask] != moved[name][~mask]), name


def test_across_layers_follows_the_schedule_in_total():
    frozen = ks.freeze(_cnn(), {"*": ks.Pin()})
    initial = {n: e for n, (_, e) in _kernels(frozen).items()}
    pruner = ks.callbacks.GradualPruning(0.6, begin_step=1, end_step=5, frequency=2, across_layers=True)
    recorder = _Recorder()
    _fit(frozen, [pruner, recorder], epochs=2)
    total = sum(mask.size for mask, _ in _kernels(frozen).values())
    for t, seen in enumerate(recorder.steps):
        done = [s for s in (1, 3, 5) if s <= t]
        want = round(pruner.sparsity_at(done[-1]) * total) if done else 0
        assert sum(count for count, _, _ in seen.values()) == want, f"step {t}"
        assert sum(int(mask.sum()) for _, mask, _ in seen.values()) == want, f"step {t}"
    # One ranking over every layer: the new pins of each step are the smallest
    # free entries of all layers together ...
    _assert_smallest_free_entries_were_pruned(recorder, initial, pruner, across=True)
    # ... so the layers end at different sparsities (one ranking per layer would not).
    per_layer = [count / recorder.steps[-1][n][1].size for n, (count, _, _) in recorder.steps[-1].items()]
    assert len(set(per_layer)) > 1


def test_a_second_fit_continues_the_schedule():
    frozen = ks.freeze(_cnn(), {"hidden": ks.Pin(), "out": ks.Pin()})
    pruner = ks.callbacks.GradualPruning(0.75, begin_step=0, end_step=7, frequency=1, layers=["hidden", "out"])
    _fit(frozen, [pruner], epochs=1)  # steps 0-3
    first = {n: int(np.count_nonzero(m)) for n, (m, _) in _kernels(frozen).items()}
    assert first == {n: round(pruner.sparsity_at(3) * m.size) for n, (m, _) in _kernels(frozen).items()}
    frozen.fit(*_data(), batch_size=8, epochs=1, verbose=0, callbacks=[pruner])  # steps 4-7
    assert {n: int(np.count_nonzero(m)) for n, (m, _) in _kernels(frozen).items()} == {
        n: round(0.75 * m.size) for n, (m, _) in _kernels(frozen).items()
    }
    assert "conv" not in _kernels(frozen)


def test_pruned_model_saves_and_strips_with_its_pins(tmp_path):
    frozen = ks.freeze(_cnn(), {"*": ks.Pin()})
    _fit(frozen, [ks.callbacks.GradualPruning(0.7, begin_step=0, end_step=3, frequency=1)], epochs=1)
    before = _kernels(frozen)
    assert {n: int(m.sum()) for n, (m, _) in before.items()} == {
        n: round(0.7 * m.size) for n, (m, _) in before.items()}
    path = tmp_path / "pruned.keras"
    ks.save_model(frozen, path)
    loaded = ks.load_model(path)
    assert _kernels(loaded).keys() == before.keys()
    for name, (mask, effective) in _kernels(loaded).items():
        np.testing.assert_array_equal(mask, before[name][0])
        np.testing.assert_array_equal(bits(effective), bits(before[name][1]))
    stripped = ks.strip(loaded)
    for name, (mask, effective) in before.items():
        assert not ks.layers.is_pinned(stripped.get_layer(name))
        kernel = ops.convert_to_numpy(stripped.get_layer(name).kernel)
        np.testing.assert_array_equal(bits(kernel), bits(effective))
        assert np.all(bits(kernel)[mask] == 0)  # every pruned entry is +0.0


def test_a_layer_that_is_not_pinned_gets_a_clear_error():
    frozen = ks.freeze(_cnn(), {"out": ks.Pin()})
    with pytest.raises(KerasurgeryError, match=r"'hidden' is not pinned: freeze it first"):
        _fit(frozen, [ks.callbacks.GradualPruning(0.5, 0, 3, layers="hidden")], epochs=1)


def test_a_shared_nonzero_pin_value_is_refused():
    model = _cnn()
    frozen = ks.freeze(model, {"out": ks.rules.units([0], value=0.5, bias=False)})
    with pytest.raises(KerasurgeryError, match=r"shared value, 0\.5"):
        _fit(frozen, [ks.callbacks.GradualPruning(0.5, 0, 3, layers="out")], epochs=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_sparsity": 1.5}, "between 0 and 1"),
        ({"target_sparsity": float("nan")}, "between 0 and 1"),
        ({"begin_step": 5, "end_step": 2}, "end_step >= begin_step"),
        ({"frequency": 0}, "frequency >= 1"),
        ({"begin_step": -1}, "integer >= 0"),
        ({"power": 0}, "power > 0"),
        ({"layers": []}, "layer path, name or glob"),
        ({"units": True, "across_layers": True}, "does not apply with `units=True`"),
        ({"units": True, "norm": 3}, "norm 1 or 2"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    arguments = {"target_sparsity": 0.5, "begin_step": 0, "end_step": 10, **kwargs}
    with pytest.raises(KerasurgeryError, match=match):
        ks.callbacks.GradualPruning(**arguments)


def _conv_bn(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2), name="x")
    h = L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(8, 3, padding="same", name="conv")(inputs)))
    h = L.Conv2D(6, 3, activation="relu", name="conv2")(h)
    return keras.Model(inputs, L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h)), name="conv_bn")


def test_structured_pruning_pins_round_target_units_of_each_group_and_shrink_removes_them():
    """Issue 20: `units=True` runs prune_units' ranking and pins on the schedule."""
    from kerasurgery.model.groups import dependency_groups
    from kerasurgery.model.walk import walk_layers

    frozen = ks.freeze(_conv_bn(), {"*": ks.Pin()})  # BN included: its gamma/beta get pinned
    layers = dict(walk_layers(frozen))
    pruner = ks.callbacks.GradualPruning(0.5, begin_step=0, end_step=4, frequency=2, units=True)
    before = {}

    class _AtEndStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if pruner._step == 4:  # just pruned at end_step; 4 more steps follow
                before.update({p: layers[p].pin_state() for p in ("conv", "bn", "conv2")})

    history = _fit(frozen, [pruner, _AtEndStep()], epochs=2)  # pruned at steps 0, 2, 4
    _sync(frozen)
    removable = {g.producers: len(g.removable_units()) for g in dependency_groups(frozen)}
    assert removable == {("conv",): 4, ("conv2",): 3, ("out",): 0}  # round(0.5 * 8), round(0.5 * 6)
    assert history.history["sparsity"][-1] == 7 / 14
    chosen = np.flatnonzero(layers["conv"].pins().bias)
    for weight, state in layers["bn"].pin_state().items():
        assert np.array_equal(np.flatnonzero(state.mask), chosen), weight
    # Pins hold bit for bit through the training after end_step; free entries move.
    assert set(before) == {"conv", "bn", "conv2"}
    assert_pins_held_and_free_moved(before, layers)
    small = ks.shrink(frozen)
    assert [small.get_layer(n).filters for n in ("conv", "conv2")] == [4, 3]
    x = _data()[0]
    want, have = frozen.predict(x, verbose=0), small.predict(x, verbose=0)
    assert float(np.abs(want - have).max()) <= 1e-5 * float(np.abs(want).max())


def test_structured_pruning_needs_every_layer_of_its_groups_pinned():
    frozen = ks.freeze(_conv_bn(), {"conv*": ks.Pin()})  # the BatchNormalization is not
    with pytest.raises(KerasurgeryError, match=r"'bn' holds units it would prune but is not pinned"):
        _fit(frozen, [ks.callbacks.GradualPruning(0.5, 0, 3, units=True)], epochs=1)


def test_schedule_is_zhu_and_gupta():
    s = lambda t: pruning.polynomial_sparsity(t, target_sparsity=0.9, begin_step=10, end_step=110, initial_sparsity=0.1)  # noqa: E731
    assert s(0) == 0.1 and s(10) == 0.1 and s(110) == 0.9 and s(500) == 0.9
    # The formula up to rounding: its order of operations is not part of it.
    assert s(60) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5 ** 3)


@keras.saving.register_keras_serializable(package="kerasurgery_tests")
class _Block(keras.layers.Layer):
    """A custom layer that creates its Dense in `build()`: its pins live in the pin record."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.proj = L.Dense(self.units, name="proj")
        self.proj.build(input_shape)

    def call(self, x):
        return ops.tanh(self.proj(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_model_checkpoint_keeps_the_pins_of_layers_inside_custom_layers(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    outputs = L.Dense(2, name="head")(_Block(5, name="block")(inputs))
    frozen = ks.freeze(keras.Model(inputs, outputs), {"*": ks.rules.smallest(0.5)})
    x, y = np.random.default_rng(0).normal(size=(16, 6)).astype("float32"), np.zeros((16, 2), "float32")
    frozen.compile(optimizer=keras.optimizers.AdamW(1e-2, weight_decay=0.5), loss="mse")
    pattern = str(tmp_path / "ckpt-{epoch:02d}-{loss:.3f}.keras")
    history = frozen.fit(x, y, epochs=2, verbose=0, callbacks=[ks.callbacks.ModelCheckpoint(pattern)])
    last = tmp_path / f"ckpt-02-{history.history['loss'][-1]:.3f}.keras"
    assert sorted(p.name[:8] for p in tmp_path.iterdir()) == ["ckpt-01-", "ckpt-02-"]
    loaded = ks.load_model(last)
    proj = loaded.get_layer("block").proj
    assert ks.layers.is_pinned(proj)
    state, expected = proj.pin_state()["kernel"], frozen.get_layer("block").proj.pin_state()["kernel"]
    np.testing.assert_array_equal(state.mask, expected.mask)
    assert state.mask.sum() == 15
    np.testing.assert_array_equal(bits(state.effective), bits(expected.effective))
    # The first checkpoint holds the same pins, at the same values, in both layers.
    [first] = tmp_path.glob("ckpt-01-*.keras")
    early = ks.load_model(first)
    for layer, now in ((early.get_layer("block").proj, frozen.get_layer("block").proj),
                       (early.get_layer("head"), frozen.get_layer("head"))):
        assert ks.layers.is_pinned(layer), layer.name
        got, want = layer.pin_state()["kernel"], now.pin_state()["kernel"]
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(bits(got.effective)[got.mask], bits(want.effective)[want.mask])
    with pytest.raises(KerasurgeryError, match=r"\.keras"):
        ks.callbacks.ModelCheckpoint(str(tmp_path / "c.h5"))


# Keras refuses steps_per_execution > 1 on torch: the test exists on the other backends.
if keras.backend.backend() != "torch":

    def test_steps_per_execution_catches_up_with_pruning_steps_it_starts_past():
        frozen = ks.freeze(_cnn(), {"*": ks.Pin()})
        x, y = _data()
        frozen.compile(optimizer="adam", loss="mse", steps_per_execution=3)
        pruner = ks.callbacks.GradualPruning(0.5, begin_step=1, end_step=7, frequency=2)
        recorder = _Recorder()
        frozen.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[pruner, recorder])
        # 8 steps in calls starting at steps 0, 3, 6: pruning steps 1 and 3 are
        # reached at 3, 5 at 6; 7 (the end) is never started past within this fit.
        sizes = {n: m.size for n, (m, _) in _kernels(frozen).items()}
        seen = [{n: c for n, (c, _, _) in step.items()} for step in recorder.steps]
        assert seen[0] == {n: 0 for n in sizes}
        assert seen[1] == {n: round(pruner.sparsity_at(3) * size) for n, size in sizes.items()}
        assert seen[2] == {n: round(pruner.sparsity_at(5) * size) for n, size in sizes.items()}
        frozen.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0, callbacks=[pruner])  # step 8: the end is due
        assert {n: int(np.count_nonzero(m)) for n, (m, _) in _kernels(frozen).items()} == {
            n: round(0.5 * size) for n, size in sizes.items()
        }
