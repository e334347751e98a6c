"""Pins where large models live: in place, KerasHub tasks kept whole (issue 19).

Tiny configurations of the KerasHub models stand for the large ones: what is
tested is that the model stays the model (class, backbone, preprocessor,
`generate()`), that freezing in place copies nothing, and that pins hold.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import layers as layers_lib
from kerasurgery.model.walk import walk_layers
from tests.conftest import make_mlp
from tests.helpers import bert_inputs, bits, save_pin_states, tiny_bert_classifier

keras_hub = pytest.importorskip("keras_hub")  # in the test extra: always present in CI

VOCAB = 50
PROMPT_LEN = 4
MAX_LEN = 12


def _np(x):
    return ops.convert_to_numpy(x)


def _pinned(model):
    return {path: layer for path, layer in walk_layers(model) if layers_lib.is_pinned(layer)}


def _variable_ids(model):
    return {v.path: id(v) for v in model.variables}


def _states(model):
    return {path: layer.pin_state() for path, layer in _pinned(model).items()}


def _assert_pins_hold(before, after):
    assert before.keys() == after.keys()
    for path, weights in before.items():
        for weight, s0 in weights.items():
            s1 = after[path][weight]
            assert np.array_equal(s0.mask, s1.mask), (path, weight)
            m = s0.mask
            assert np.array_equal(bits(s1.effective[m]), bits(s0.effective[m])), (path, weight)


# -- in place -------------------------------------------------------------------


def test_freeze_in_place_returns_the_model_with_its_own_variables_and_pins_hold():
    model = make_mlp()
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x, y, epochs=1, verbose=0)  # traced before: the traced step must not survive
    expected = _np(model.predict(x, verbose=0))
    ids = _variable_ids(model)
    optimizer_ids = [id(v) for v in model.optimizer.variables]

    mask = np.zeros((4, 3), bool)
    mask[0, 0] = mask[2, 1] = mask[3, 2] = True
    frozen = ks.freeze(model, {"hidden": ks.Pin(kernel=mask),
                               "out": ks.rules.fraction(0.5, seed=0)}, in_place=True)

    assert frozen is model
    after = _variable_ids(model)
    for path, ident in ids.items():
        assert after[path] == ident, path  # the same objects
    added = set(after) - set(ids)
    assert added and all(p.endswith(("_pin_mask", "_pin_value")) for p in added)
    assert [id(v) for v in model.optimizer.variables] == optimizer_ids
    assert type(model.get_layer("hidden")).__name__ == "MaskedDense"
    assert np.array_equal(bits(_np(model.predict(x, verbose=0))), bits(expected))
    before = _states(model)
    assert before["hidden"]["kernel"].mask.sum() == 3
    model.fit(x, y, epochs=3, batch_size=4, verbose=0)
    _assert_pins_hold(before, _states(model))
    kernel = _states(model)["hidden"]["kernel"]
    assert np.all(kernel.effective[~kernel.mask] != before["hidden"]["kernel"].effective[~kernel.mask])


def test_strip_in_place_returns_the_model_holding_the_effective_weights():
    model = ks.freeze(make_mlp(), {"*": ks.rules.zeros()})
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    raw = model.get_layer("hidden").raw_variable("kernel")
    raw.assign(np.full((4, 3), 7.0, "float32"))  # what training does under the pins
    expected = _np(model.predict(x, verbose=0))
    ids = {p: i for p, i in _variable_ids(model).items() if not p.endswith(("_pin_mask", "_pin_value"))}

    stripped = ks.strip(model, in_place=True)

    assert stripped is model
    assert not _pinned(model)
    assert type(model.get_layer("hidden")) is keras.layers.Dense
    assert _variable_ids(model) == ids  # the raw variables stay, the pin variables go
    kernel = _np(model.get_layer("hidden").kernel)
    assert np.all(kernel[[0, 2, 3], [0, 1, 2]] == 0.0) and np.all(kernel[1] == 7.0)
    assert np.array_equal(bits(_np(model.predict(x, verbose=0))), bits(expected))


def test_in_place_freeze_of_a_pinned_layer_adds_to_its_pins():
    model = ks.freeze(make_mlp(), {"hidden": ks.rules.zeros()}, in_place=True)
    mask = np.zeros((4, 3), bool)
    mask[1, 1] = True
    ks.freeze(model, {"hidden": mask}, in_place=True)
    state = model.get_layer("hidden").pin_state()["kernel"]
    assert state.mask.sum() == 4 and state.mask[1, 1]


# -- KerasHub tasks stay themselves -------------------------------------------------


def _gpt2():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=MAX_LEN,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _llama():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32,
    )
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def _gemma():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, head_dim=8,
    )
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


CAUSAL_LMS = {"gpt2": _gpt2, "llama": _llama, "gemma": _gemma}


def _prompt():
    tokens = np.zeros((2, MAX_LEN), "int32")
    tokens[:, :PROMPT_LEN] = np.random.default_rng(0).integers(1, VOCAB, size=(2, PROMPT_LEN))
    mask = np.zeros((2, MAX_LEN), bool)
    mask[:, :PROMPT_LEN] = True
    return {"token_ids": tokens, "padding_mask": mask}


def _generate(lm):
    lm.compile(sampler="greedy")
    return _np(lm.generate(_prompt(), stop_token_ids=None)["token_ids"])


@pytest.mark.parametrize("name", sorted(CAUSAL_LMS))
def test_frozen_causal_lm_is_its_class_generates_the_same_and_round_trips(name, tmp_path):
    lm = CAUSAL_LMS[name]()
    lm.compile(sampler="greedy")
    expected = _generate(lm)
    assert np.any(expected[:, PROMPT_LEN:] != 0)

    # Values left as they are: the frozen task generates the same tokens.
    frozen = ks.freeze(lm, {"*": ks.rules.fraction(0.3, seed=0)})
    assert type(frozen) is type(lm)
    assert type(frozen.backbone) is type(lm.backbone)
    assert frozen.backbone is not lm.backbone
    assert isinstance(frozen.sampler, keras_hub.samplers.GreedySampler)
    assert frozen.backbone.token_embedding is not None
    pinned = _pinned(frozen)
    assert len(pinned) >= 8 and not _pinned(lm)
    assert np.array_equal(_generate(frozen), expected)

    # Values changed: pins at zero, and the task round-trips in a new process.
    pruned = ks.freeze(lm, {"*": ks.rules.smallest(0.5)})
    tokens = _generate(pruned)
    ks.save_model(pruned, tmp_path / "lm.keras")
    states = _states(pruned)
    np.save(tmp_path / "tokens.npy", tokens)
    np.savez(tmp_path / "prompt.npz", **_prompt())
    save_pin_states(tmp_path / "pins.npz", states)
    script = textwrap.dedent(f"""
        import numpy as np, kerasurgery as ks
        from kerasurgery.model.walk import walk_layers
        folder = {str(tmp_path)!r}
        lm = ks.load_model(folder + "/lm.keras")
        assert type(lm).__name__ == {type(lm).__name__!r}, type(lm)
        assert type(lm.backbone).__name__ == {type(lm.backbone).__name__!r}
        layers = dict(walk_layers(lm))
        pins = np.load(folder + "/pins.npz")
        keys = {{k.rsplit("|", 1)[0] for k in pins.files}}
        for key in keys:
            path, weight = key.split("|")
            state = layers[path].pin_state()[weight]
            assert np.array_equal(state.mask, pins[key + "|mask"]), key
            assert np.array_equal(state.effective.view("u4"), pins[key + "|effective"].view("u4")), key
        prompt = dict(np.load(folder + "/prompt.npz"))
        lm.compile(sampler="greedy")
        out = np.asarray(lm.generate(prompt, stop_token_ids=None)["token_ids"])
        assert np.array_equal(out, np.load(folder + "/tokens.npy")), out
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.parametrize("name", sorted(CAUSAL_LMS))
def test_generate_forms_each_effective_weight_once_not_per_token(name, tmp_path, monkeypatch):
    # KerasHub's sampler carries the variables through its loop, so a pinned
    # layer forming where(mask, value, raw) at each read would form it again
    # per token (1.57x slower at 100M). A pinned task's generate forms each
    # effective weight once per call (per trace under jit), and generates
    # exactly the tokens of the stripped model; frozen by copy or in place,
    # or loaded, the same; stripped, the task is its class's own again.
    from kerasurgery.layers import _mechanism

    formed = []
    select = _mechanism._pinned
    monkeypatch.setattr(_mechanism, "_pinned", lambda *a: formed.append(1) or select(*a))

    def formed_in_first_generate(lm):
        lm.compile(sampler="greedy")
        formed.clear()
        tokens = _np(lm.generate(_prompt(), stop_token_ids=None)["token_ids"])
        return len(formed), tokens

    lm = CAUSAL_LMS[name]()
    pruned = ks.freeze(lm, {"*": ks.rules.smallest(0.5)})
    # On JAX not even once: the raw weights hold the effective ones before
    # each call (`hold_effective`) and are read as they are.
    weights = 0 if keras.backend.backend() == "jax" else sum(
        len(layer.present_weights()) for layer in _pinned(pruned).values())
    stripped = ks.strip(pruned)
    count, expected = formed_in_first_generate(stripped)
    assert count == 0 and "generate_step" not in vars(stripped)
    count, tokens = formed_in_first_generate(pruned)
    assert count == weights and np.array_equal(tokens, expected)
    ks.save_model(pruned, tmp_path / "lm.keras")
    count, tokens = formed_in_first_generate(ks.load_model(tmp_path / "lm.keras"))
    assert count == weights and np.array_equal(tokens, expected)
    ks.freeze(lm, {"*": ks.rules.smallest(0.5)}, in_place=True)
    count, tokens = formed_in_first_generate(lm)
    assert count == weights and np.array_equal(tokens, expected)
    ks.strip(lm, in_place=True)
    assert formed_in_first_generate(lm)[0] == 0 and "generate_step" not in vars(lm)


def test_generate_after_training_reads_the_trained_weights_with_their_pins():
    # Training between two `generate` calls moves the raw weights, under the
    # pins too (AdamW's decay); the next call generates what the stripped
    # trained model generates, and on JAX, where the raw weights are made to
    # hold the effective ones before each call, they hold them again.
    lm = ks.freeze(_gpt2(), {"*": ks.rules.smallest(0.5, value=0.25)})  # decay moves raw 0.25s, not 0s
    _generate(lm)
    tokens = np.random.default_rng(1).integers(1, VOCAB, size=(4, MAX_LEN + 1)).astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((4, MAX_LEN), bool)}
    lm.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=1.0),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    layer = next(layer for layer in _pinned(lm).values() if "kernel" in layer.present_weights())
    mask = _np(layer.kernel_pin_mask)
    before = _np(layer.raw_variable("kernel"))
    lm.fit(x, tokens[:, 1:], epochs=2, verbose=0)
    assert not np.array_equal(bits(_np(layer.raw_variable("kernel"))[mask]), bits(before[mask]))
    expected = _generate(ks.strip(lm))
    assert np.array_equal(_generate(lm), expected)
    if keras.backend.backend() == "jax":
        for pinned in _pinned(lm).values():
            for weight in pinned.present_weights():
                assert pinned.holds(weight)
                assert np.array_equal(bits(_np(pinned.raw_variable(weight))), bits(_np(pinned.effective(weight))))


def test_frozen_task_keeps_its_preprocessor_and_compile_state():
    vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "c": 3, "Ġa": 4, "Ġb": 5, "Ġc": 6, "ab": 7}
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["a b"])
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer=tokenizer, sequence_length=8)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=8, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=16,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)
    lm.compile(optimizer=keras.optimizers.SGD(0.5), sampler="greedy")
    frozen = ks.freeze(lm, {"*": ks.Pin()})
    assert frozen.preprocessor is preprocessor
    assert isinstance(frozen.optimizer, keras.optimizers.SGD)
    assert frozen.optimizer is not lm.optimizer
    assert float(frozen.optimizer.learning_rate) == 0.5
    assert frozen.generate(["a b c"], max_length=8) == lm.generate(["a b c"], max_length=8)
    stripped = ks.strip(frozen)
    assert type(stripped) is type(lm) and stripped.preprocessor is preprocessor
    assert not _pinned(stripped)


def test_bert_classifier_stays_a_classifier_frozen_and_stripped():
    model = tiny_bert_classifier()
    backbone = model.backbone
    x = bert_inputs(np.random.default_rng(0), 4)
    expected = _np(model.predict(x, verbose=0))
    frozen = ks.freeze(model, {"*": ks.rules.fraction(0.5, seed=0)})
    assert type(frozen) is type(model) and type(frozen.backbone) is type(backbone)
    assert np.array_equal(bits(_np(frozen.predict(x, verbose=0))), bits(expected))
    stripped = ks.strip(frozen)
    assert type(stripped) is type(model) and not _pinned(stripped)
    assert np.array_equal(bits(_np(stripped.predict(x, verbose=0))), bits(expected))

    in_place = ks.freeze(model, {"*": ks.rules.fraction(0.5, seed=0)}, in_place=True)
    assert in_place is model and _pinned(model).keys() == _pinned(frozen).keys()
    assert np.array_equal(bits(_np(model.predict(x, verbose=0))), bits(expected))


# -- tied embeddings ------------------------------------------------------------------


def test_causal_lm_token_rows_pinned_hold_for_lookup_and_logits_and_pruning_reaches_them():
    lm = _gpt2()
    frozen = ks.freeze(lm, {"token_embedding": ks.rules.inputs([5, 9], value=0.0)})
    table = frozen.backbone.token_embedding
    assert type(table).__name__ == "MaskedReversibleEmbedding"
    prompt = _prompt()
    logits = _np(frozen(prompt))
    assert np.all(logits[..., [5, 9]] == 0)  # the logits projection reads the pinned rows
    assert np.all(_np(table(np.array([[5, 9]])))[0] == 0)  # and so does the lookup

    # The pruning rules and GradualPruning reach the tied table.
    pruned = ks.freeze(lm, {"*": ks.rules.smallest(0.5)})
    state = _pinned(pruned)[f"{lm.backbone.name}/token_embedding"].pin_state()["embeddings"]
    assert state.mask.sum() == state.mask.size // 2 and np.all(state.effective[state.mask] == 0)
    ready = ks.freeze(lm, {"token_embedding": ks.Pin()})
    ready.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = np.random.default_rng(1).integers(0, VOCAB, size=(2, MAX_LEN)).astype("int32")
    schedule = ks.callbacks.GradualPruning(0.5, begin_step=0, end_step=2, frequency=1,
                                           layers="*token_embedding")
    ready.fit(prompt, y, epochs=4, batch_size=2, verbose=0, callbacks=[schedule])
    state = ready.backbone.token_embedding.pin_state()["embeddings"]
    assert state.mask.sum() == state.mask.size // 2 and np.all(state.effective[state.mask] == 0)


# -- LoRA -------------------------------------------------------------------------------


def test_lora_on_pinned_layers_trains_the_factors_and_strip_merges_them():
    model = ks.freeze(make_mlp(), {"*": ks.rules.smallest(0.5)})
    hidden = model.get_layer("hidden")
    hidden.enable_lora(2)
    assert hidden.lora_enabled and not hidden.raw_variable("kernel").trainable
    before = _states(model)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).normal(size=(32, 2)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(5e-2), loss="mse")
    model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    after = _states(model)
    _assert_pins_hold(before, after)
    free = ~before["hidden"]["kernel"].mask
    # The raw kernel is frozen; its free entries moved through the LoRA factors
    # (all but those of a hidden unit that pruning cut off from the output).
    assert np.array_equal(bits(_np(hidden.raw_variable("kernel"))), bits(before["hidden"]["kernel"].effective))
    moved = after["hidden"]["kernel"].effective[free] != before["hidden"]["kernel"].effective[free]
    assert moved.sum() >= free.sum() // 2
    expected = _np(model.predict(x, verbose=0))
    stripped = ks.strip(model)
    plain = stripped.get_layer("hidden")
    assert type(plain) is keras.layers.Dense and not plain.lora_enabled
    assert [v.name for v in plain.weights] == ["kernel", "bias"]
    assert np.array_equal(bits(_np(plain.kernel)), bits(after["hidden"]["kernel"].effective))
    assert np.array_equal(bits(_np(stripped.predict(x, verbose=0))), bits(expected))


def test_pruned_causal_lm_recovers_with_lora_while_its_zeros_stay_zero(tmp_path):
    lm = _gpt2()
    tokens = np.random.default_rng(2).integers(1, VOCAB, size=(8, MAX_LEN)).astype("int32")
    x = {"token_ids": tokens[:, :-1], "padding_mask": np.ones((8, MAX_LEN - 1), bool)}
    y = tokens[:, 1:]
    pruned = ks.freeze(lm, {"*": ks.rules.smallest(0.5)}, in_place=True)
    pruned.backbone.enable_lora(4)
    lora = [v for v in pruned.trainable_variables if "lora" in v.path]
    assert len(lora) == 8  # query and value of two blocks; their biases train too, as in Keras
    assert all("lora" in v.path or v.path.endswith("/bias") for v in pruned.trainable_variables)
    before = _states(pruned)
    pruned.compile(optimizer=keras.optimizers.Adam(1e-2),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    first = pruned.evaluate(x, y, verbose=0)
    first = first[0] if isinstance(first, list) else first
    pruned.fit(x, y, epochs=20, batch_size=8, verbose=0)
    last = pruned.evaluate(x, y, verbose=0)
    last = last[0] if isinstance(last, list) else last
    assert last < first
    after = _states(pruned)
    _assert_pins_hold(before, after)
    for path, weights in after.items():
        for weight, state in weights.items():
            assert np.all(state.effective[state.mask] == 0), (path, weight)
    tokens_out = _generate(pruned)
    # Saved and loaded, the LoRA-tuned task computes the same; stripped, LoRA is merged.
    ks.save_model(pruned, tmp_path / "lm.keras")
    loaded = ks.load_model(tmp_path / "lm.keras")
    assert np.array_equal(_generate(loaded), tokens_out)
    stripped = ks.strip(pruned)
    assert not _pinned(stripped)
    assert np.array_equal(_generate(stripped), tokens_out)


# -- deployment -------------------------------------------------------------------------


def _add_state(model, change):
    """Adds state to the built layers of `model` as Keras' own tools do."""
    if change == "lora":
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dense):
                layer.enable_lora(2)
    else:
        model.quantize(change)


@pytest.mark.parametrize("change", ["int8", "float8", "lora"])
def test_stripped_model_takes_new_state_in_memory_and_after_loading(change, tmp_path):
    """What strip leaves behind breaks none of quantize, enable_lora (issue 19).

    Stripped by copy, in place (a loaded frozen model), and saved then loaded
    with plain Keras.
    """
    frozen = ks.freeze(make_mlp(), {"*": ks.rules.smallest(0.5)})
    ks.save_model(frozen, tmp_path / "frozen.keras")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    masks = {p: s["kernel"].mask for p, s in _states(frozen).items()}
    ks.save_model(ks.strip(frozen), tmp_path / "stripped.keras")
    sources = [lambda: ks.strip(frozen),
               lambda: ks.strip(ks.load_model(tmp_path / "frozen.keras"), in_place=True),
               lambda: keras.saving.load_model(tmp_path / "stripped.keras")]
    for source in sources:
        stripped = source()
        expected = _np(stripped.predict(x, verbose=0))
        _add_state(stripped, change)
        for path, mask in masks.items():
            layer = stripped.get_layer(path)
            kernel = _np(layer._kernel)
            assert np.all(kernel[mask] == 0), path
            if change == "lora":
                assert layer.lora_enabled and not layer._kernel.trainable
            else:
                assert layer.quantization_mode == change
                assert kernel.dtype == (np.int8 if change == "int8" else np.float32)
        out = _np(stripped.predict(x, verbose=0))
        if change == "lora":  # lora_kernel_b starts at zero: the same function, exactly
            assert np.array_equal(bits(out), bits(expected))
        else:
            assert np.allclose(out, expected, atol=0.1)


def test_stripped_file_is_a_deployment_file_unless_the_optimizer_is_kept(tmp_path):
    """strip leaves no optimizer state by default; `keep_optimizer` keeps a trainable file."""
    import warnings

    x = np.random.default_rng(0).normal(size=(16, 64)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 4)).astype("float32")

    def make():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, name="a"),
                                 keras.layers.Dense(4, name="b")])

    frozen = ks.freeze(make(), {"*": ks.rules.smallest(0.5)})
    frozen.compile(optimizer="adam", loss="mse")
    frozen.fit(x, y, verbose=0)
    expected = _np(frozen.predict(x, verbose=0))
    ks.save_model(make(), tmp_path / "plain.keras")  # the weights alone
    sizes = {}
    for keep in (False, True):
        path = tmp_path / f"stripped-{keep}.keras"
        stripped = ks.strip(frozen, keep_optimizer=keep)
        assert stripped.compiled == keep and frozen.compiled
        ks.save_model(stripped, path)
        sizes[keep] = path.stat().st_size
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # plain Keras loads it without a warning
            loaded = keras.saving.load_model(path)
        assert loaded.compiled == keep
        assert np.array_equal(bits(_np(loaded.predict(x, verbose=0))), bits(expected))
        if not keep:
            loaded.compile(optimizer="adam", loss="mse")
        loaded.fit(x, y, verbose=0)
    plain = (tmp_path / "plain.keras").stat().st_size
    assert sizes[False] <= plain + 4096 < 2 * plain < sizes[True]  # Adam: two slots per weight
    # In place: the model keeps its own optimizer and slots, or is left uncompiled.
    optimizer = frozen.optimizer
    assert ks.strip(frozen, in_place=True, keep_optimizer=True).optimizer is optimizer
    assert optimizer.built and not _pinned(frozen)
    assert not ks.strip(frozen, in_place=True).compiled


def test_stripped_causal_lm_quantizes_and_generates():
    frozen = ks.freeze(_gpt2(), {"*": ks.rules.smallest(0.5)})
    masks = {p: s for p, s in _states(frozen).items()}
    stripped = ks.strip(frozen)
    stripped.quantize("int8")
    layers = dict(walk_layers(stripped))
    quantized = 0
    for path, state in masks.items():
        layer = layers[path]
        if getattr(layer, "quantization_mode", None) == "int8" and "kernel" in state:
            kernel = _np(layer._kernel)
            if kernel.shape == state["kernel"].mask.shape:
                assert np.all(kernel[state["kernel"].mask] == 0), path
                quantized += 1
    assert quantized >= 8
    assert _generate(stripped).shape == (2, MAX_LEN)

