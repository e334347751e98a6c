"""Reliability: an unsupported Keras, hostile and broken files, fuzzing, killed saves.

Run with `pytest -s` to see what the fuzz variants and the killed saves produced.
"""

from __future__ import annotations

import collections
import faulthandler
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import warnings
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras import ops

import kerasurgery as ks
from kerasurgery import _compat
from kerasurgery.errors import KerasurgeryError, LayerSelectionError, ModelFileError
from kerasurgery.files.formats import code_layers
from tests.conftest import make_mlp

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


# --- Keras version guard ----------------------------------------------------------


@pytest.mark.parametrize(
    "version, environ, problem",
    [
        ("3.15.1", {}, None),
        ("3.16.0", {}, None),
        ("3.16.0.dev2026010100", {}, None),
        ("4.0.0", {"TF_USE_LEGACY_KERAS": "0"}, None),
        ("3.15.0", {}, "too old"),
        ("3.11.2", {}, "too old"),
        ("3.15.1rc1", {}, "too old"),
        ("2.15.0", {}, "is Keras 2"),
        ("3.15.1", {"TF_USE_LEGACY_KERAS": "1"}, "TF_USE_LEGACY_KERAS is set"),
        ("3.15.1", {"TF_USE_LEGACY_KERAS": "true"}, "TF_USE_LEGACY_KERAS is set"),
        ("3.15.1", {"TF_USE_LEGACY_KERAS": "True"}, "TF_USE_LEGACY_KERAS is set"),
        ("three", {}, "cannot tell"),
    ],
)
def test_keras_problem(version, environ, problem):
    found = _compat.keras_problem(version, environ)
    if problem is None:
        assert found is None
    else:
        assert problem in found and "\n" not in found


def test_minimum_keras_version_is_the_one_pyproject_asks_for():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if re.match(r"keras\s*>=", d)]
    assert pins == [f"keras>={_compat.MIN_KERAS_VERSION}"]


def test_an_old_keras_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.10.0")
    with pytest.raises(KerasurgeryError, match=r"Keras 3\.10\.0 is too old.*>= 3\.15\.1") as info:
        _compat.require_supported_keras()
    assert "\n" not in str(info.value)


def test_keras_2_mode_is_refused_when_the_keras_modules_are_imported():
    code = """
        import kerasurgery
        for name in ("load_model", "save_model", "freeze", "strip"):
            try:
                getattr(kerasurgery, name)
            except kerasurgery.KerasurgeryError as e:
                print(type(e).__name__, e)
            else:
                print(name, "ran")
        import keras  # still imports, with MaskedDense registered
        print(keras.saving.get_registered_object("kerasurgery>MaskedDense").__name__)
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
           "TF_USE_LEGACY_KERAS": "1"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    *refusals, registered = result.stdout.splitlines()
    assert len(refusals) == 4, result.stdout
    for line in refusals:
        assert line.startswith("KerasurgeryError kerasurgery cannot run: TF_USE_LEGACY_KERAS is set")
    assert registered == "MaskedDense"


# --- Bad inputs: one line naming the file, nothing written, input unchanged -------


def _frozen(model=None):
    model = model or make_mlp()
    return ks.freeze(model, {
        "hidden": ks.Pin(kernel=np.eye(4, 3, dtype=bool), kernel_value=0.5,
                         bias=np.array([True, False, False])),
        "out": ks.rules.zeros(),
    })


def _edit_h5(source: Path, target: Path, edit) -> Path:
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "a") as h5:
        edit(h5)
    return target


def _edit_keras(source: Path, target: Path, *, config=None, weights=None) -> Path:
    """Rewrites a `.keras` archive (valid checksums) with an edited config or weights."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if config is not None:
        members["config.json"] = config(members["config.json"])
    if weights is not None:
        buffer = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buffer, "a") as h5:
            weights(h5)
        members["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def _replace_dataset(suffix_of_name: str, value: np.ndarray):
    """An HDF5 edit replacing the first dataset whose path ends with `suffix_of_name`."""

    def edit(h5):
        found = []
        h5.visititems(lambda name, item: found.append(name) if (
            isinstance(item, h5py.Dataset) and name.endswith(suffix_of_name)) else None)
        del h5[found[0]]
        h5[found[0]] = value

    return edit


def _json_edit(fn):
    return lambda raw: json.dumps(fn(json.loads(raw))).encode()


def _set_model_config(text_edit):
    def edit(h5):
        h5.attrs["model_config"] = text_edit(h5.attrs["model_config"])
    return edit


def _lambda_model():
    inputs = keras.Input((2,), name="x")
    hidden = keras.layers.Dense(2, name="dense")(inputs)
    outputs = keras.layers.Lambda(lambda t: t * 2.0, name="double")(hidden)
    return keras.Model(inputs, outputs)


def _nested_lambda_model():
    inner = keras.Sequential(
        [keras.Input((2,)), keras.layers.Lambda(lambda t: t + 1.0, name="shift")], name="inner"
    )
    inputs = keras.Input((2,), name="x")
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(inner(inputs)))


def _lambda_activation(config: dict) -> dict:
    # A Python lambda as a Dense activation, the way Keras 3 serializes one.
    out = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "out")
    out["config"]["activation"] = {"class_name": "__lambda__", "config": {"value": ["4wEAAA==", None, None]}}
    return config


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Good files the bad inputs are made from."""
    d = tmp_path_factory.mktemp("sources")
    return {
        f"{kind}{s}": ks.save_model(make(), d / f"{kind}{s}")
        for kind, make in (("plain", make_mlp), ("frozen", _frozen), ("lambda", _lambda_model))
        for s in (".keras", ".h5")
    }


def _bad_inputs(d: Path, sources: dict) -> dict:
    """Each bad input: name -> (maker writing the file in `d`, pattern the message must match)."""
    plain = {s: sources[f"plain{s}"] for s in (".keras", ".h5")}
    frozen = {s: sources[f"frozen{s}"] for s in (".keras", ".h5")}
    lam = {s: sources[f"lambda{s}"] for s in (".keras", ".h5")}
    unsafe = r"refused by safe mode: layer 'double' \(Lambda\) would run Python code.*safe_mode=False.*--unsafe"
    wrong_kernel = np.zeros((3, 3), "float32")

    def weights_only():
        make_mlp().save_weights(d / "m.weights.h5")
        return d / "m.weights.h5"

    def keras2_weights_only():
        def edit(h5):  # Keras 2's save_weights: layer groups at the root, no config
            del h5.attrs["model_config"]
            h5.attrs["layer_names"] = h5["model_weights"].attrs["layer_names"]

        return _edit_h5(plain[".h5"], d / "k2weights.h5", edit)

    return {
        "weights-only .weights.h5": (weights_only, r"holds weights only \(a `\.weights\.h5` file\)"),
        "weights-only Keras 2 layout": (keras2_weights_only, "holds weights only"),
        ".h5 without model_config": (
            lambda: _edit_h5(plain[".h5"], d / "nocfg.h5", lambda h5: h5.attrs.__delitem__("model_config")),
            "without a model configuration"),
        ".h5 invalid JSON config": (
            lambda: _edit_h5(plain[".h5"], d / "badjson.h5", _set_model_config(lambda c: c[:-3])),
            "model_config is not valid JSON"),
        ".keras config not a model": (
            lambda: _edit_keras(plain[".keras"], d / "notmodel.keras", config=lambda c: b"[1, 2]"),
            "config.json does not describe a Keras model"),
        ".keras unknown layer class": (
            lambda: _edit_keras(plain[".keras"], d / "unknown.keras",
                                config=lambda c: c.replace(b'"Dense"', b'"NoSuchLayer"')),
            "unknown layer class 'NoSuchLayer'"),
        ".h5 unknown layer class": (
            lambda: _edit_h5(plain[".h5"], d / "unknown.h5",
                             _set_model_config(lambda c: c.replace('"Dense"', '"NoSuchLayer"'))),
            "unknown layer class 'NoSuchLayer'"),
        ".keras kernel shape disagrees with config": (
            lambda: _edit_keras(plain[".keras"], d / "shape.keras",
                                weights=_replace_dataset("dense_1/vars/0", wrong_kernel)),
            r"layer 'out' \(Dense\): a weight is stored with shape \(3, 3\), but the model's config makes it \(3, 2\)"),
        ".h5 kernel shape disagrees with config": (
            lambda: _edit_h5(plain[".h5"], d / "shape.h5", _replace_dataset("out/kernel", wrong_kernel)),
            r"layer 'out': weight 'out/kernel' is stored with shape \(3, 3\), but the model's config makes it \(3, 2\)"),
        ".keras MaskedDense mask of the wrong shape": (
            lambda: _edit_keras(frozen[".keras"], d / "maskshape.keras",
                                weights=_replace_dataset("kernel_pin_mask", np.zeros((4, 2), bool))),
            r"layer 'hidden' \(MaskedDense\): `kernel_pin_mask` has the wrong shape"),
        ".h5 MaskedDense mask of the wrong shape": (
            lambda: _edit_h5(frozen[".h5"], d / "maskshape.h5",
                             _replace_dataset("hidden/kernel_pin_mask", np.zeros((4, 2), bool))),
            r"weight 'hidden/kernel_pin_mask' is stored with shape \(4, 2\)"),
        ".keras MaskedDense float mask": (
            lambda: _edit_keras(frozen[".keras"], d / "maskdtype.keras",
                                weights=_replace_dataset("kernel_pin_mask", np.full((4, 3), 0.5, "float32"))),
            r"layer 'hidden' \(MaskedDense\): `kernel_pin_mask` must be boolean"),
        ".h5 MaskedDense float mask": (
            lambda: _edit_h5(frozen[".h5"], d / "maskdtype.h5",
                             _replace_dataset("hidden/kernel_pin_mask", np.full((4, 3), 0.5, "float32"))),
            r"layer 'hidden': weight 'hidden/kernel_pin_mask' is stored as float32, but the layer keeps it as bool"),
        ".h5 MaskedDense int8 bias mask": (
            lambda: _edit_h5(frozen[".h5"], d / "maskint.h5",
                             _replace_dataset("hidden/bias_pin_mask", np.ones(3, "int8"))),
            "'hidden/bias_pin_mask' is stored as int8"),
        ".h5 boolean data for a float kernel": (
            lambda: _edit_h5(frozen[".h5"], d / "boolkernel.h5",
                             _replace_dataset("out/kernel", np.ones((3, 2), bool))),
            "'out/kernel' is stored as bool, but the layer keeps it as float32"),
        ".keras MaskedDense NaN pinned value": (
            lambda: _edit_keras(frozen[".keras"], d / "nan.keras",
                                weights=_replace_dataset("kernel_pin_value", np.array(np.nan, "float32"))),
            "`kernel_pin_value` holds a non-finite pinned value"),
        ".h5 MaskedDense infinite pinned value": (
            lambda: _edit_h5(frozen[".h5"], d / "inf.h5",
                             _replace_dataset("out/bias_pin_value", np.full(2, np.inf, "float32"))),
            r"layer 'out': `bias_pin_value` holds a non-finite pinned value"),
        ".keras Lambda layer": (lambda: _write(d / "lambda.keras", lam[".keras"].read_bytes()), unsafe),
        ".h5 Lambda layer": (lambda: _write(d / "lambda.h5", lam[".h5"].read_bytes()), unsafe),
        ".keras Lambda inside a nested model": (
            lambda: ks.save_model(_nested_lambda_model(), d / "nested_lambda.keras"),
            r"layer 'shift' \(Lambda\) would run Python code"),
        ".h5 Lambda inside a nested model": (
            lambda: ks.save_model(_nested_lambda_model(), d / "nested_lambda.h5"),
            r"layer 'shift' \(Lambda\) would run Python code"),
        ".keras lambda as a Dense activation": (
            lambda: _edit_keras(plain[".keras"], d / "lambda_act.keras", config=_json_edit(_lambda_activation)),
            r"layer 'out' \(Dense\) would run Python code"),
        ".h5 named a .keras": (
            lambda: _write(d / "disguised.keras", lam[".h5"].read_bytes()), unsafe),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


BAD_INPUTS = [
    ".h5 Lambda inside a nested model", ".h5 Lambda layer", ".h5 MaskedDense float mask",
    ".h5 MaskedDense infinite pinned value", ".h5 MaskedDense int8 bias mask",
    ".h5 MaskedDense mask of the wrong shape", ".h5 boolean data for a float kernel",
    ".h5 invalid JSON config", ".h5 kernel shape disagrees with config", ".h5 named a .keras",
    ".h5 unknown layer class", ".h5 without model_config", ".keras Lambda inside a nested model",
    ".keras Lambda layer", ".keras MaskedDense NaN pinned value", ".keras MaskedDense float mask",
    ".keras MaskedDense mask of the wrong shape", ".keras config not a model",
    ".keras kernel shape disagrees with config", ".keras lambda as a Dense activation",
    ".keras unknown layer class", "weights-only .weights.h5", "weights-only Keras 2 layout",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, sources, case):
    make, pattern = _bad_inputs(tmp_path, sources)[case]
    path = make()
    before = _snapshot(tmp_path)
    for compile in (True, False):
        with pytest.raises(ModelFileError, match=pattern) as info:
            ks.load_model(path, compile=compile)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
    assert _snapshot(tmp_path) == before


def test_bad_input_table_is_complete(tmp_path, sources):
    assert sorted(_bad_inputs(tmp_path, sources)) == sorted(BAD_INPUTS)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_unsafe_opt_in_loads_a_lambda_layer(tmp_path, suffix):
    model = _lambda_model()
    path = ks.save_model(model, tmp_path / f"lambda{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = ks.load_model(path, safe_mode=False)
    x = np.arange(6, dtype="float32").reshape(3, 2)
    assert np.array_equal(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)))


def test_keras_2_lambda_config_is_seen_as_code():
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 2}},
        {"class_name": "Lambda", "config": {"name": "k2", "function": ["4wEAAA==", None, None],
                                            "function_type": "lambda"}},
    ]}}
    assert code_layers(config) == [("k2", "Lambda")]


def test_a_model_without_dense_layers_loads_but_freeze_says_it_has_none(tmp_path):
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Activation("relu", name="act")], name="no_dense"
    )
    path = ks.save_model(model, tmp_path / "m.keras")
    loaded = ks.load_model(path)
    with pytest.raises(LayerSelectionError, match="model 'no_dense' has no layer of a supported kind"):
        ks.freeze(loaded, {"*": ks.rules.zeros()})


# --- Fuzz: truncated and flipped fixture files ---------------------------------------

FUZZ_SEED = 20240
FUZZ_FILES = ["frozen_mlp.keras", "frozen_mlp.h5", "nested_frozen.keras", "nested_frozen.h5", "keras2_mlp.h5"]
TRUNCATIONS = 24  # per file
FLIPS = 36  # per file
MEMBER_EDITS = 30  # per .keras file: config.json or model.weights.h5 edited, checksums valid
INFLATIONS = 12  # per file: one integer of the config made large, checksums valid

# What a refusal says, reduced to a kind for the summary; first match wins.
ERROR_KINDS = [
    ("zip: damaged or truncated", "damaged or truncated zip"),
    ("zip: checksum mismatch", "the checksum of"),
    ("HDF5: data beyond end of file", "more than the file holds"),
    ("HDF5: damaged or truncated", "HDF5 file ("),
    ("config: not valid JSON", "is not valid JSON"),
    ("config: not a Keras model", "does not describe a Keras model"),
    ("config: unknown class", "unknown layer class"),
    ("config: does not rebuild", "does not rebuild"),
    ("config: missing entry", "lacks the entry"),
    ("weights: shape mismatch", "stored with shape"),
    ("weights: dtype mismatch", "refusing to cast"),
    ("weights: bad pin", "pin_"),
    ("weights: count mismatch", "count mismatch"),
    ("no model config", "without a model configuration"),
    ("weights only", "holds weights only"),
    ("safe mode", "safe mode"),
    ("neither zip nor HDF5", "is neither a `.keras` archive nor an HDF5 file"),
    ("config: connects an undefined layer", "that it does not define"),
    ("config: declares more than stored", "declares weights of"),
    ("other Keras error", "cannot load the model: "),
]


def _fuzz_sources(folder: Path) -> list[Path]:
    """The fixture files; if they are not there, equivalents made here."""
    present = [FIXTURES / name for name in FUZZ_FILES if (FIXTURES / name).is_file()]
    if len(present) == len(FUZZ_FILES):
        return present
    frozen = _frozen(make_mlp(1))
    return [ks.save_model(m, folder / f"{name}{s}")
            for name, m in (("plain", make_mlp(2)), ("frozen", frozen)) for s in (".keras", ".h5")]


def _variants(source: Path, rng: np.random.Generator):
    """(label, bytes) of every mutation of `source`."""
    data = source.read_bytes()
    size = len(data)
    fixed = [1, 8, 64, 512, 2048, size // 2, size - 1]
    offsets = fixed + sorted(rng.integers(1, size, TRUNCATIONS - len(fixed)).tolist())
    for offset in offsets:
        yield "truncated", data[:offset]
    # Half the flips anywhere, half where the structure lives: an HDF5 file's
    # superblock and headers, a zip's central directory.
    head = source.suffix != ".keras"
    anywhere = rng.integers(0, size, FLIPS // 2)
    structure = rng.integers(0, min(4096, size), FLIPS - FLIPS // 2)
    if not head:
        structure = size - 1 - structure
    for position in [*anywhere, *structure]:
        flipped = bytearray(data)
        flipped[position] ^= int(rng.integers(1, 256))
        yield "byte flipped", bytes(flipped)
    if source.suffix == ".keras":
        with zipfile.ZipFile(source) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        for i in range(MEMBER_EDITS):
            name = ("config.json", "model.weights.h5")[i % 2]
            member = bytearray(members[name])
            if i % 3 == 0:
                member = member[: int(rng.integers(0, len(member)))]
                label = f"{name} truncated"
            else:
                member[int(rng.integers(0, len(member)))] ^= int(rng.integers(1, 256))
                label = f"{name} byte flipped"
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for other, content in members.items():
                    archive.writestr(other, bytes(member) if other == name else content)
            yield label, buffer.getvalue()
    yield from _inflated(source, data, rng)


def _inflated(source: Path, data: bytes, rng: np.random.Generator):
    """(label, bytes): `source` with one integer of its model config (a size,
    a shape, a count) replaced by a large one, its checksums valid: a file
    that declares more than it stores."""
    if source.suffix == ".keras":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        text = members["config.json"].decode()
    else:
        with h5py.File(io.BytesIO(data), "r") as h5:
            raw = h5.attrs["model_config"]
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
    numbers = [m for m in re.finditer(r"(?<=[\[ :,])\d+(?=[,\]}])", text) if m.group() not in ("0", "1")]
    for i in range(INFLATIONS):
        found = numbers[int(rng.integers(0, len(numbers)))]
        large = str(int(found.group()) * (10 ** 3, 10 ** 5, 10 ** 8)[i % 3])
        edited = text[:found.start()] + large + text[found.end():]
        buffer = io.BytesIO()
        if source.suffix == ".keras":
            with zipfile.ZipFile(buffer, "w") as archive:
                for name, content in members.items():
                    archive.writestr(name, edited.encode() if name == "config.json" else content)
        else:
            buffer.write(data)
            with h5py.File(buffer, "a") as h5:
                h5.attrs["model_config"] = edited
        yield "config integer inflated", buffer.getvalue()


def _inputs_for(model: keras.Model) -> list[np.ndarray]:
    return [np.linspace(-1, 1, 2 * int(np.prod([d or 1 for d in t.shape[1:]])), dtype="float32")
            .reshape((2, *[d or 1 for d in t.shape[1:]])) for t in model.inputs]


def _predict(model: keras.Model) -> np.ndarray:
    x = _inputs_for(model)
    return ops.convert_to_numpy(model(x[0] if len(x) == 1 else x))


def test_fuzzed_files_load_or_fail_with_a_kerasurgery_error(tmp_path):
    rng = np.random.default_rng(FUZZ_SEED)
    counts: collections.Counter = collections.Counter()
    started, inflated_growth, largest = time.monotonic(), 0.0, ""
    # A hang inside h5py or Keras would stall CI silently: dump and die instead.
    faulthandler.dump_traceback_later(240, exit=True)
    try:
        for source in _fuzz_sources(tmp_path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = _predict(ks.load_model(source, compile=False))
            for label, data in _variants(source, rng):
                variant = tmp_path / f"variant{source.suffix}"
                variant.write_bytes(data)
                before = _memory_mb(reset_peak=True)
                outcome = _outcome(variant, expected)
                if label == "config integer inflated":
                    growth = _memory_mb("VmHWM") - before
                    if growth > inflated_growth:
                        inflated_growth, largest = growth, f"{source.name}: {outcome}"
                counts[(source.name, label, outcome)] += 1
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.monotonic() - started
    _print_summary(counts, elapsed)
    others = {key: n for key, n in counts.items() if key[2].startswith("OTHER")}
    assert not others, others
    assert sum(counts.values()) >= 300
    # Inflated configs are refused before Keras allocates what they declare
    # (10^8 times a size would be gigabytes).
    assert sum(n for (_, label, outcome), n in counts.items()
               if label == "config integer inflated" and outcome == "config: declares more than stored") >= 10
    # Each variant's peak memory over what the process held before it: within
    # docs/resource-budget.md's budget (512 MB; what a config may declare beyond what the
    # file stores is 16M entries, 64 MB of float32, plus Keras' temporaries).
    print(f"  largest peak growth of an inflated variant: {inflated_growth:.0f} MB ({largest})")
    assert inflated_growth < 512, largest


def _memory_mb(field: str = "VmRSS", *, reset_peak: bool = False) -> float:
    """This process's resident memory (`VmRSS`) or its peak (`VmHWM`) in MB;
    `reset_peak` first sets the peak to the present (Linux, /proc/self/clear_refs)."""
    if reset_peak:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:")) / 1024


def _outcome(path: Path, expected: np.ndarray) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ks.load_model(path)
    except KerasurgeryError as e:
        message = str(e)
        if not message.startswith(f"{path}: ") or "\n" in message:
            return f"OTHER: not one line naming the file: {message!r}"
        rest = message[len(str(path)) + 2:]
        return next((kind for kind, marker in ERROR_KINDS if marker in rest), f"error: {rest[:60]}")
    except Exception as e:  # what the test exists to catch
        return f"OTHER {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    try:
        predicted = _predict(model)
    except Exception as e:
        return f"OTHER: loaded but cannot predict: {type(e).__name__}: {e}"
    same = predicted.shape == expected.shape and np.array_equal(predicted, expected, equal_nan=True)
    return "loaded, predicts the same" if same else "loaded, predicts differently"


def _print_summary(counts: collections.Counter, elapsed: float) -> None:
    by_outcome: collections.Counter = collections.Counter()
    by_label: dict = collections.defaultdict(collections.Counter)
    for (source, label, outcome), n in counts.items():
        by_outcome[outcome] += n
        by_label[f"{Path(source).suffix} {label}"][outcome] += n
    print(f"\nfuzz: {sum(counts.values())} variants in {elapsed:.1f} s (seed {FUZZ_SEED})")
    for outcome, n in by_outcome.most_common():
        print(f"  {n:4d}  {outcome}")
    for label in sorted(by_label):
        parts = ", ".join(f"{o} {n}" for o, n in by_label[label].most_common())
        print(f"  [{label}] {sum(by_label[label].values())}: {parts}")


# --- Saving the hard way: SIGKILL mid-save, concurrent saves ---------------------------

# A child that builds a ~30 MB Dense model from a seed, then for each target
# path it reads from stdin freezes the model and saves it there.
CHILD = """
import sys
import numpy as np
import keras
import kerasurgery as ks

inputs = keras.Input((1024,), name="x")
h = keras.layers.Dense(2048, name="d1")(inputs)
h = keras.layers.Dense(2048, name="d2")(h)
model = keras.Model(inputs, keras.layers.Dense(8, name="d3")(h))
rng = np.random.default_rng(int(sys.argv[1]))
model.set_weights([np.round(rng.standard_normal(w.shape), 1).astype("float32") for w in model.weights])
print("ready", flush=True)
for target in sys.stdin:
    frozen = ks.freeze(model, {"*": ks.rules.zeros()})
    ks.save_model(frozen, target.strip(), overwrite=True)
    print("done", flush=True)
"""
KILL_MOMENTS = ["during freeze", "temporary created", "temporary half written", "after 0.6", "after 0.9"]


def _child_kernels(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(1024, 2048), (2048,), (2048, 2048), (2048,), (2048, 8), (8,)]
    return [np.round(rng.standard_normal(s), 1).astype("float32") for s in shapes]


def _start_child(seed: int) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(seed)], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def _save_in(child: subprocess.Popen, target: Path) -> None:
    child.stdin.write(f"{target}\n")
    child.stdin.flush()


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp.*"))


def _is_complete_model(path: Path, seed: int) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ks.load_model(path, compile=False)
    kernels = [ops.convert_to_numpy(model.get_layer(n).kernel) for n in ("d1", "d2", "d3")]
    return all(np.array_equal(a, b) for a, b in zip(kernels, _child_kernels(seed)[::2]))


def _kill_when(child: subprocess.Popen, target: Path, moment: str, full: float) -> bool:
    """Starts a save to `target`, SIGKILLs at `moment`; was a temp file there then?"""
    folder = target.parent
    old_inode = target.stat().st_ino
    _save_in(child, target)
    started = time.monotonic()
    while time.monotonic() < started + 60:
        temps = _temporaries(folder)
        elapsed = time.monotonic() - started
        if target.stat().st_ino != old_inode:
            break  # the save is complete already: the moment was missed
        if moment == "during freeze":
            reached = elapsed >= 0.2 * full
        elif moment == "temporary created":
            reached = bool(temps)
        elif moment == "temporary half written":
            reached = bool(temps) and temps[0].stat().st_size >= 15_000_000
        else:
            reached = elapsed >= float(moment.split()[1]) * full
        if reached:
            break
        time.sleep(0.0005)
    else:
        raise AssertionError(f"{moment}: never came")
    existed = bool(_temporaries(folder))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return existed


def test_killed_and_concurrent_saves_leave_the_old_file_or_a_complete_model(tmp_path):
    started = time.monotonic()
    targets = []
    for name in [f"kill{i}" for i in range(len(KILL_MOMENTS))] + ["race"]:
        (tmp_path / name).mkdir()
        targets.append(ks.save_model(make_mlp(), tmp_path / name / "out.keras"))
    old = [target.read_bytes() for target in targets]
    children = [_start_child(seed) for seed in range(len(KILL_MOMENTS))]
    try:
        for child in children:  # started together: their TensorFlow imports overlap
            assert child.stdout.readline().strip() == "ready"
        ready = time.monotonic() - started
        # Two children save to one target at once; this also times a save.
        t0 = time.monotonic()
        for child in children[:2]:
            _save_in(child, targets[-1])
        for child in children[:2]:
            assert child.stdout.readline().strip() == "done"
        full = (time.monotonic() - t0) / 2  # the two shared the CPU
        results = []
        for i, (moment, child) in enumerate(zip(KILL_MOMENTS, children)):
            temp_seen = _kill_when(child, targets[i], moment, full)
            left = len(_temporaries(targets[i].parent))
            if targets[i].read_bytes() == old[i]:
                result = "old file, byte for byte"
            elif _is_complete_model(targets[i], seed=i):
                result = "complete new model"
            else:
                result = "BROKEN"
            results.append((moment, temp_seen, result, left))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    raced = [seed for seed in (0, 1) if _is_complete_model(targets[-1], seed)]
    race_temps = len(_temporaries(targets[-1].parent))
    # A later save to the same target removes the temporaries of killed saves.
    for target in targets[:-1]:
        ks.save_model(make_mlp(), target, overwrite=True)
    leftovers = [p.name for target in targets for p in _temporaries(target.parent)]
    print(f"\nkilled saves (one freeze + save took about {full:.2f} s):")
    for moment, temp_seen, result, left in results:
        print(f"  SIGKILL {moment:24s} temp file there: {temp_seen!s:5s}  "
              f"target: {result}; temp files left: {left}")
    print(f"  two concurrent saves: the target holds the model of child {raced}, "
          f"temp files left: {race_temps}")
    print(f"  temp files left after the next save to each target: {len(leftovers)}")
    print(f"  {time.monotonic() - started:.1f} s in all, {ready:.1f} s of it starting children")
    assert all(result != "BROKEN" for _, _, result, _ in results), results
    assert len(raced) == 1 and race_temps == 0
    assert leftovers == []
    # Killed while its temporary file was half written: the old file stays.
    assert results[2][1:3] == (True, "old file, byte for byte"), results


def test_save_removes_only_its_own_stale_temporaries(tmp_path, mlp):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())
    names = {
        f".m.keras.{host}-{dead.pid}.abc.tmp.keras": False,  # killed save: removed
        f".m.keras.{host}-{os.getppid()}.abc.tmp.keras": True,  # a live process's
        f".m.keras.{host}-{os.getpid()}.abc.tmp.keras": True,  # this process's own
        f".m.keras.other_host-{dead.pid}.abc.tmp.keras": True,  # another host's
        f".n.keras.{host}-{dead.pid}.abc.tmp.keras": True,  # another target's
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    ks.save_model(mlp, tmp_path / "m.keras")
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {"m.keras"} | {name for name, keep in names.items() if keep}
