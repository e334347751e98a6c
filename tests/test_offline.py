"""`freeze` / `strip` of `.keras` files without TensorFlow (`kerasurgery.files.offline`).

The offline command-line path must write the model the library writes
(`ks.freeze` / `ks.strip` + `ks.save_model`): the same config up to key
order, the same weights datasets bit for bit (pins, effective weights, every
other weight, the optimizer's fresh state), for a corpus of models built here
and every rule, spec key, `--value` and `--bias`. Files it cannot rewrite
take the Keras path, which `--debug` names.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")

import kerasurgery as ks  # noqa: E402
from kerasurgery.cli import arguments as _arguments  # noqa: E402
from kerasurgery.cli import commands as cli
from kerasurgery.files.inspection import read_weights  # noqa: E402
from tests.helpers import rewrite_keras_file  # noqa: E402

OFFLINE = "offline path"
KERAS_PATH = "Keras path"
V010 = Path(__file__).resolve().parent.parent / "fixtures" / "kerasurgery-0.1.0"


# --- the corpus ------------------------------------------------------------------


def _sparsify(model: keras.Model, seed: int) -> None:
    """Exact zeros in every kernel (a pruned model), so that --zeros has work."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            weights[0] = np.where(rng.random(weights[0].shape) < 0.3, 0, weights[0]).astype(weights[0].dtype)
            layer.set_weights(weights)


def _mlp() -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(8, activation="relu", name="dense"),
        keras.layers.Dense(8, name="dense_1"),
        keras.layers.Dropout(0.1, name="dropout"),
        keras.layers.Dense(4, name="out"),
    ], name="mlp")
    _sparsify(model, 1)
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    model.fit(np.ones((16, 8)), np.zeros((16, 4)), epochs=1, verbose=0)
    return model


def _nested() -> keras.Model:
    keras.utils.set_random_seed(2)
    inner = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(8, name="dense"), keras.layers.Dense(8, name="dense_b"),
    ], name="inner")
    x_in = keras.Input((8,))
    block = keras.Model(x_in, keras.layers.Dense(8, name="dense")(x_in), name="block")
    x = keras.Input((8,), name="x")
    shared = keras.layers.Dense(8, name="shared")
    h = keras.layers.Dense(8, name="dense")(x)
    h = shared(h)
    h = keras.layers.BatchNormalization(name="norm")(inner(h))
    h = block(shared(h))
    out = keras.layers.Dense(4, name="head")(keras.layers.Dropout(0.1)(h))
    model = keras.Model(x, out, name="nested")
    for layer in (inner, block, model):
        _sparsify(layer, 2)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    model.fit(np.ones((16, 8)), np.zeros((16, 4)), epochs=1, verbose=0)
    return model


def _kinds() -> keras.Model:
    keras.utils.set_random_seed(3)
    L = keras.layers
    a = keras.Input((8, 4), name="seq")
    h1 = L.Conv1D(4, 3, padding="same", name="c1")(a)
    h1 = L.Conv1DTranspose(4, 3, padding="same", name="c1t")(h1)
    h1 = L.DepthwiseConv1D(3, padding="same", name="dw1")(h1)
    h1 = L.SeparableConv1D(4, 3, padding="same", name="sep1")(h1)
    h1 = L.GlobalAveragePooling1D()(h1)
    b = keras.Input((6, 6, 4), name="img")
    h2 = L.Conv2D(4, 3, padding="same", name="c2")(b)
    h2 = L.Conv2DTranspose(4, 3, padding="same", name="c2t")(h2)
    h2 = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw2")(h2)
    h2 = L.SeparableConv2D(4, 3, padding="same", name="sep2")(h2)
    h2 = L.GlobalAveragePooling2D()(h2)
    c = keras.Input((4, 4, 4, 4), name="vol")
    h3 = L.Conv3D(4, 2, name="c3")(c)
    h3 = L.Conv3DTranspose(4, 2, name="c3t")(h3)
    h3 = L.Flatten()(h3)
    t = keras.Input((5,), dtype="int32", name="tokens")
    h4 = L.Embedding(20, 4, name="emb")(t)
    h4 = L.EinsumDense("abc,cd->abd", output_shape=(5, 8), bias_axes="d", name="ein")(h4)
    h4 = L.Flatten()(h4)
    h = L.Concatenate()([h1, h2, h3, h4])
    h = L.Dense(8, use_bias=False, name="nobias")(h)
    out = L.Dense(3, name="out")(h)
    model = keras.Model([a, b, c, t], out, name="kinds")
    _sparsify(model, 3)
    return model


def _fresh() -> keras.Model:
    """Compiled, never trained: Keras builds the optimizer when it saves the frozen copy."""
    keras.utils.set_random_seed(4)
    x = keras.Input((8,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="dense_0")(x)
    h = keras.layers.Dense(8, name="dense_1", trainable=False)(keras.layers.Dropout(0.2)(h))
    model = keras.Model(x, keras.layers.Dense(4, name="dense_2")(h), name="fresh")
    _sparsify(model, 4)
    model.compile(optimizer=keras.optimizers.AdamW(0.003), loss="mse")
    return model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("offline")
    files = {}
    for name, build in (("mlp", _mlp), ("nested", _nested), ("kinds", _kinds), ("fresh", _fresh)):
        files[name] = folder / f"{name}.keras"
        build().save(files[name])
    frozen = ks.freeze(ks.load_model(files["mlp"]), {
        "dense": ks.rules.zeros(bias=True), "out": ks.rules.units([1], value=0.5),
    })
    files["frozen"] = folder / "frozen.keras"
    ks.save_model(frozen, files["frozen"])
    # Written by kerasurgery 0.1.0 (`pinned_kernel_values`, no `quantization_config`).
    files["v010_mlp"] = V010 / "frozen_mlp.keras"
    files["v010_nested"] = V010 / "nested_frozen.keras"
    np.save(folder / "mask.npy", np.eye(8, dtype=bool))
    np.savez(folder / "masks.npz", **{"dense": np.eye(8, dtype=bool), "dense/bias": np.arange(8) % 2 == 0})
    np.savez(folder / "wiring.npz", dense_1=(np.arange(64).reshape(8, 8) % 3 != 0).astype("int8"))
    (folder / "spec.toml").write_text(textwrap.dedent("""
        [[layer]]
        pattern = "[d]ense"
        rule = "zeros"
        bias = true
        [[layer]]
        pattern = "dense_?"
        below = 0.2
        value = 0.0
        [[layer]]
        pattern = "out"
        units = [0, 3]
        [[layer]]
        pattern = "dense*"
        index = [[0, 1], [2, 0], [5]]
        value = 0.25
        [[layer]]
        pattern = "*"
        fraction = 0.1
        seed = 3
        [[layer]]
        pattern = "d*"
        smallest = 0.25
        across_layers = true
        [[layer]]
        pattern = "dens?_1"
        n_of_m = "2:4"
        [[layer]]
        pattern = "o?t"
        smallest_units = 0.25
        norm = 2
        [[layer]]
        pattern = "dens[e]"
        mask = "masks.npz"
        [[layer]]
        pattern = "dense_[1]"
        connections = "wiring.npz"
        [[layer]]
        pattern = "o*"
        inputs = [0, 7]
        value = -1.5
    """))
    return folder, files


# --- comparing two files -------------------------------------------------------


def _read(path: Path) -> tuple[dict, dict]:
    """(config, {h5 path: (attrs, dtype, shape, bytes) or attrs of a group})."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        config = json.loads(archive.read("config.json"))
        data = archive.read("model.weights.h5")
    tree: dict = {"members": sorted(names)}
    with h5py.File(io.BytesIO(data), "r") as h5:
        def visit(name, node):
            attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in node.attrs.items()}
            if isinstance(node, h5py.Dataset):
                array = node[()]
                tree[name] = (attrs, str(node.dtype), node.shape, np.asarray(array).tobytes())
            else:
                tree[name] = attrs
        h5.visititems(visit)
    return config, tree


def assert_same_file(offline: Path, library: Path) -> None:
    config_a, tree_a = _read(offline)
    config_b, tree_b = _read(library)
    assert config_a == config_b
    assert sorted(tree_a) == sorted(tree_b)
    different = [k for k in tree_a if tree_a[k] != tree_b[k]]
    assert not different, different


def _pins_of(argv: list[str]) -> dict:
    args = _arguments.build_parser().parse_args(argv)
    return cli._pins_from_args(args)


def _cli(argv: list[str], capsys, document: dict | None = None) -> str:
    """Runs the command line with --debug and --json; returns the path line it printed.

    `document`, if given, receives the JSON document the command printed.
    """
    code = cli.main(["--debug", *argv[:1], "--json", *argv[1:]])
    out, err = capsys.readouterr()
    assert code == 0, err
    if document is not None:
        document.update(json.loads(out))
    lines = [line for line in err.splitlines() if line.startswith("kerasurgery: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- (a) equivalence ---------------------------------------------------------------

FREEZE_CASES = [
    ("mlp", []),
    ("mlp", ["--zeros", "--bias"]),
    ("mlp", ["--below", "0.2", "--value", "0.5"]),
    ("mlp", ["--layer", "dense", "--mask", "{folder}/mask.npy", "--value", "2"]),
    ("mlp", ["--mask", "{folder}/masks.npz"]),
    ("mlp", ["--connections", "{folder}/wiring.npz", "--value", "0.125"]),
    ("mlp", ["--layer", "out", "--index", "0,1", "--index", "2,0", "--index", "3"]),
    ("mlp", ["--inputs", "0,2-3"]),
    ("mlp", ["--units", "0,3", "--value", "0"]),
    ("mlp", ["--fraction", "0.3", "--seed", "5", "--bias"]),
    ("mlp", ["--smallest", "0.5"]),
    ("mlp", ["--smallest", "0.4", "--across-layers", "--bias"]),
    ("mlp", ["--n-of-m", "2:4"]),
    ("mlp", ["--smallest-units", "0.25", "--norm", "2"]),
    ("mlp", ["--spec", "{folder}/spec.toml"]),
    ("nested", []),
    ("nested", ["--layer", "dense", "--units", "1", "--value", "1"]),
    ("nested", ["--layer", "inner/dense", "--layer", "block/*", "--smallest", "0.5", "--across-layers"]),
    ("nested", ["--smallest-units", "0.5"]),
    ("kinds", []),
    ("kinds", ["--layer", "c*", "--layer", "dw*", "--layer", "sep*", "--layer", "ein", "--layer", "out",
               "--bias", "--below", "0.1", "--value", "-0.5"]),
    ("kinds", ["--layer", "c*", "--layer", "dw*", "--layer", "emb", "--inputs", "0,1"]),
    ("kinds", ["--layer", "c*", "--layer", "sep*", "--layer", "ein", "--layer", "out", "--units", "1"]),
    ("kinds", ["--smallest", "0.5", "--across-layers"]),
    ("kinds", ["--layer", "c2", "--layer", "sep2", "--layer", "dw1", "--n-of-m", "1:2"]),
    ("kinds", ["--layer", "c*", "--layer", "sep*", "--layer", "out", "--smallest-units", "0.5"]),
    ("fresh", ["--layer", "dense_[02]", "--smallest", "0.5"]),
    ("frozen", ["--layer", "dense_1", "--below", "0.1"]),
    ("frozen", ["--layer", "out", "--index", "0,0", "--value", "3"]),
    ("v010_mlp", ["--layer", "dense_2", "--below", "0.1"]),
    ("v010_mlp", ["--layer", "dense_1", "--units", "0", "--value", "1"]),
    ("v010_nested", ["--below", "0.2"]),
]


@pytest.fixture(scope="module")
def loaded(corpus):
    _, files = corpus
    return {}


def test_freeze_writes_what_the_library_writes(corpus, loaded, capsys, tmp_path):
    folder, files = corpus
    for number, (name, flags) in enumerate(FREEZE_CASES):
        flags = [flag.format(folder=folder) for flag in flags]
        offline = tmp_path / f"{number}.offline.keras"
        document: dict = {}
        line = _cli(["freeze", str(files[name]), "-o", str(offline), *flags], capsys, document)
        assert OFFLINE in line, (name, flags, line)
        if name not in loaded:
            loaded[name] = ks.load_model(files[name])
        library = tmp_path / f"{number}.library.keras"
        frozen = ks.freeze(loaded[name], _pins_of(["freeze", "x.keras", *flags]))
        ks.save_model(frozen, library)
        assert_same_file(offline, library)
        # The command reports what the Keras path reports.
        assert document["layers"] == cli._dense_rows(frozen)
        assert document["training_config"] == (name != "kinds")
        # Pins and effective weights as `inspect` reads them, to say it in numbers too.
        a, b = read_weights(offline), read_weights(library)
        assert a.keys() == b.keys()
        for path in a:
            for weight in a[path].weights:
                x, y = a[path].weights[weight], b[path].weights[weight]
                assert np.array_equal(x.mask, y.mask)
                assert x.effective.tobytes() == y.effective.tobytes()


def test_strip_writes_what_the_library_writes(corpus, capsys, tmp_path):
    folder, files = corpus
    frozen = [files["frozen"], files["v010_mlp"], files["v010_nested"]]
    for number, (name, flags) in enumerate([("nested", ["--below", "0.2", "--value", "1"]),
                                            ("kinds", ["--fraction", "0.5", "--seed", "1"])]):
        path = tmp_path / f"{name}.frozen.keras"
        ks.save_model(ks.freeze(ks.load_model(files[name]), _pins_of(["freeze", "x.keras", *flags])), path)
        frozen.append(path)
    compiled = []
    for number, path in enumerate(frozen):
        model = ks.load_model(path)
        compiled.append(model.compiled)
        for keep in (False, True):
            offline = tmp_path / f"{number}.{keep}.stripped.offline.keras"
            document: dict = {}
            line = _cli(["strip", str(path), "-o", str(offline)] + ["--keep-optimizer"] * keep,
                        capsys, document)
            assert OFFLINE in line
            library = tmp_path / f"{number}.{keep}.stripped.library.keras"
            ks.save_model(ks.strip(model, keep_optimizer=keep), library)
            assert_same_file(offline, library)
            # A deployment file by default: no training config, no optimizer state.
            config, tree = _read(offline)
            kept = keep and model.compiled
            assert document["training_config"] == kept
            assert bool(config["compile_config"]) == kept
            assert any(key.startswith("optimizer") for key in tree) == kept
    assert any(compiled)


def test_offline_errors_are_the_library_errors(corpus, capsys, tmp_path):
    _, files = corpus
    out = tmp_path / "never.keras"
    assert cli.main(["freeze", str(files["mlp"]), "-o", str(out), "--layer", "nope"]) == 1
    err = capsys.readouterr().err
    assert "No supported layer matches 'nope'. Supported layers: dense, dense_1, out" in " ".join(err.split())
    assert cli.main(["freeze", str(files["mlp"]), "-o", str(out), "--layer", "dropout"]) == 1
    assert "(Dropout)" in capsys.readouterr().err
    assert cli.main(["freeze", str(files["mlp"]), "-o", str(out), "--layer", "out", "--n-of-m", "2:3"]) == 1
    assert "not a multiple of m=3" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["strip", str(files["mlp"]), "-o", str(out)]) == 1
    assert "nothing to strip" in capsys.readouterr().err
    # A flipped byte in the weights: the checksum error the Keras path gives before loading.
    with zipfile.ZipFile(files["kinds"]) as archive:
        info = archive.getinfo("model.weights.h5")
    data = bytearray(files["kinds"].read_bytes())
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    for where in (start + info.file_size // 2, start + info.file_size - 100):
        damaged = tmp_path.parent / f"damaged-{where}.keras"
        flipped = bytearray(data)
        flipped[where] ^= 0x40
        damaged.write_bytes(bytes(flipped))
        assert cli.main(["freeze", str(damaged), "-o", str(out)]) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert "is a damaged archive: the checksum of 'model.weights.h5' does not match its contents." in err, err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_offline_output_is_atomic_and_keeps_the_input(corpus, capsys, tmp_path):
    _, files = corpus
    before = files["mlp"].read_bytes()
    out = tmp_path / "out.keras"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    assert cli.main(["freeze", str(files["mlp"]), "-o", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"old"
    _cli(["freeze", str(files["mlp"]), "-o", str(out), "--force"], capsys)
    assert out.stat().st_mode & 0o777 == 0o640
    assert files["mlp"].read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.keras"]


# --- (b) without TensorFlow, Keras, JAX or torch ------------------------------------------

_BLOCKED = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "jax", "jaxlib", "torch", "tf_keras"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _Blocked())
from kerasurgery.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules)
assert not loaded, loaded
raise SystemExit(code)
"""


def test_cli_freezes_and_strips_with_frameworks_unimportable(corpus, tmp_path):
    _, files = corpus
    frozen, stripped = tmp_path / "frozen.keras", tmp_path / "stripped.keras"
    env = {**os.environ, "PYTHONPATH": str(Path(ks.__file__).parent.parent)}
    for argv in (["freeze", str(files["nested"]), "-o", str(frozen), "--below", "0.2", "--bias"],
                 ["strip", str(frozen), "-o", str(stripped)]):
        result = subprocess.run([sys.executable, "-c", _BLOCKED, "--debug", *argv],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert OFFLINE in result.stderr
    original = ks.load_model(files["nested"])
    model = ks.load_model(frozen)
    layer = model.get_layer("inner").get_layer("dense")
    kernel = keras.ops.convert_to_numpy(original.get_layer("inner").get_layer("dense").kernel)
    pins = layer.pins()
    assert np.array_equal(pins.kernel, np.abs(kernel) < 0.2) and pins.kernel.any()
    assert np.array_equal(keras.ops.convert_to_numpy(layer.kernel), kernel)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    expected = original.predict(x, verbose=0)
    assert np.array_equal(model.predict(x, verbose=0), expected)
    plain = keras.saving.load_model(stripped)
    assert type(plain.get_layer("inner").get_layer("dense")) is keras.layers.Dense
    assert np.array_equal(plain.predict(x, verbose=0), expected)


# --- (c) what needs Keras takes the Keras path -------------------------------------------


def test_files_that_need_keras_take_the_keras_path(corpus, capsys, tmp_path):
    folder, files = corpus
    h5 = tmp_path / "mlp.h5"
    ks.save_model(ks.load_model(files["mlp"]), h5)
    x = keras.Input((4, 8))
    attention = keras.Model(x, keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x), name="attn")
    attention.save(tmp_path / "attention.keras")
    cases = [
        (["freeze", str(files["mlp"]), "-o", str(tmp_path / "a.keras"), "--unsafe"], "--unsafe"),
        (["freeze", str(h5), "-o", str(tmp_path / "b.keras")], "input is .h5"),
        (["freeze", str(files["mlp"]), "-o", str(tmp_path / "c.h5")], "output is .h5"),
        (["freeze", str(tmp_path / "attention.keras"), "-o", str(tmp_path / "d.keras")],
         "MultiHeadAttention"),
        (["strip", str(tmp_path / "d.keras"), "-o", str(tmp_path / "e.keras")], "kerasurgery.pins.h5"),
    ]
    for argv, reason in cases:
        line = _cli(argv, capsys)
        assert KERAS_PATH in line and reason in line, line
    assert ks.load_model(tmp_path / "d.keras").get_layer("mha")._query_dense.pins().kernel is not None


def test_weights_keras_would_cast_take_the_keras_path_so_both_pin_the_same(corpus, capsys, tmp_path):
    """A float64 kernel whose float32 zeros are stored as 1e-300 (issue 21): Keras
    loads them as 0.0, so `--zeros` pins them on the Keras path; the TF-free path
    saw 1e-300 and pinned none. It hands such files (float64, big-endian, another
    dtype than the layer's policy) to the Keras path."""
    _, files = corpus
    with zipfile.ZipFile(files["mlp"]) as archive:
        members = {member: archive.read(member) for member in archive.namelist()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "a") as f:
        name = "layers/dense/vars/0"
        kernel = f[name][()]
        del f[name]
        f[name] = np.where(kernel == 0, 1e-300, kernel.astype("float64"))
    zeros = int(np.count_nonzero(kernel == 0))
    assert zeros > 0
    cases = {"float64": buffer.getvalue()}
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "a") as f:
        kernel = f[name][()]
        del f[name]
        f[name] = kernel.astype(">f4")
    cases["big-endian"] = buffer.getvalue()
    for label, weights in cases.items():
        source = tmp_path / f"{label}.keras"
        rewrite_keras_file(files["mlp"], source, members={"model.weights.h5": weights})
        line = _cli(["freeze", str(source), "-o", str(tmp_path / f"{label}.frozen.keras")], capsys)
        assert KERAS_PATH in line and "which Keras casts to its float32 variable" in line, line
        pinned = read_weights(tmp_path / f"{label}.frozen.keras")["dense"].weights["kernel"]
        assert pinned.pinned == zeros and pinned.effective.dtype == np.float32
        assert not np.signbit(pinned.effective[pinned.mask]).any()


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True),
    lambda: keras.optimizers.Adamax(),
    lambda: keras.optimizers.Nadam(),
    lambda: keras.optimizers.Adagrad(initial_accumulator_value=0.25),
    lambda: keras.optimizers.Lion(),
    lambda: keras.optimizers.Adam(amsgrad=True, use_ema=True),
], ids=["rmsprop", "adamax", "nadam", "adagrad", "lion", "adam-ema"])
def test_the_optimizer_state_is_reset_as_the_library_resets_it(optimizer, capsys, tmp_path):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    model.compile(optimizer=optimizer(), loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 3)), verbose=0)
    model.save(tmp_path / "in.keras")
    line = _cli(["freeze", str(tmp_path / "in.keras"), "-o", str(tmp_path / "offline.keras"),
                 "--fraction", "0.5", "--seed", "0"], capsys)
    assert OFFLINE in line
    frozen = ks.freeze(ks.load_model(tmp_path / "in.keras"), {"*": ks.rules.fraction(0.5, seed=0)})
    ks.save_model(frozen, tmp_path / "library.keras")
    assert_same_file(tmp_path / "offline.keras", tmp_path / "library.keras")
