"""The TF-free readers read what Keras loads, bit for bit, or refuse (issue 21).

A corpus of model files is built here from the fixtures and from tiny models,
most of them mutated the way an attacker would: layers and groups reordered,
names and recorded `vars` names swapped, weights stored in other dtypes and
byte orders, -0.0 and NaN payloads, pin records that lie, zip members
doubled, containers appended to each other, HDF5 objects reached by several
links. For each file, `keras.saving.load_model` (after `import kerasurgery`)
says what Keras loads, once. Then every reader either refuses with one line
or reads exactly that:

- `inspect --json`: each layer's kernel shape, zeros (counted in the values
  Keras holds) and pinned entries;
- `read_weights`: every weight, mask and effective value, bit for bit;
- `verify` against the frozen file the mutation started from: its verdict
  (and each violation count) is the truth about the weights Keras loads;
- `kerasurgery.load_model`: the same weights as Keras;
- the TF-free `strip` and `freeze`: an output whose weights Keras loads as
  the Keras path writes them, with the same pins (or `NotOffline`: the file
  goes to the Keras path).

The cases listed in `MUST_REFUSE` are refused by every command.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")

import kerasurgery as ks  # noqa: E402
from kerasurgery import kinds  # noqa: E402
from kerasurgery.cli import main  # noqa: E402
from kerasurgery.errors import KerasurgeryError, ModelFileError  # noqa: E402
from kerasurgery.files import offline  # noqa: E402
from kerasurgery.files.inspection import check_pins, inspect_file, read_weights  # noqa: E402
from kerasurgery.model.surgery import walk_layers  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WEIGHTS, CONFIG, RECORD = "model.weights.h5", "config.json", "kerasurgery.pins.h5"


@keras.saving.register_keras_serializable(package="test_differential")
class Pair(keras.layers.Layer):
    """Two Dense layers of one shape made in `build()`: the config names neither."""

    def build(self, input_shape):
        self.left = keras.layers.Dense(3, name="left")
        self.right = keras.layers.Dense(3, name="right")
        self.left.build(input_shape)
        self.right.build((None, 3))

    def call(self, x):
        return self.right(self.left(x))


def _zeroed(layer, *positions) -> None:
    kernel, *rest = layer.get_weights()
    for position in positions:
        kernel[position] = 0.0
    layer.set_weights([kernel, *rest])


def _twins() -> keras.Model:
    """x (3) -> a Dense(3) -> b Dense(3): one class and shape, so Keras loads
    either layer's weights into the other without complaint. Each kernel has
    exact zeros (the pins of the frozen twins)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="x")
    a = keras.layers.Dense(3, name="a")
    b = keras.layers.Dense(3, name="b")
    model = keras.Model(x, b(a(x)), name="twins")
    _zeroed(a, (0, 1), (2, 2))
    _zeroed(b, (1, 0))
    return model


def _paired() -> keras.Model:
    keras.utils.set_random_seed(1)
    x = keras.Input((3,), name="x")
    model = keras.Model(x, keras.layers.Dense(2, name="head")(Pair(name="pair")(x)), name="paired")
    _zeroed(model.get_layer("pair").left, (0, 0), (1, 2))
    return model


# --- building files --------------------------------------------------------------


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _zip(path: Path, members: list[tuple[str, bytes]], *, at: dict[str, int] | None = None) -> Path:
    """Writes `members` stored, in order (a name may repeat); `at`: the byte where
    a member's data must start, reached by padding its local header."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # "Duplicate name"
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            if at and name in at:
                pad = at[name] - (archive.fp.tell() + 30 + len(name.encode()))
                assert pad >= 4
                info.extra = struct.pack("<HH", 0x6B73, pad - 4) + b"\0" * (pad - 4)
            archive.writestr(info, data)
    return path


def _weights_edit(src: Path, dst: Path, edit: Callable[[h5py.File], None]) -> Path:
    members = _members(src)
    out = []
    for name, data in members:
        if name == WEIGHTS:
            buffer = io.BytesIO(data)
            with h5py.File(buffer, "a") as f:
                edit(f)
            data = buffer.getvalue()
        out.append((name, data))
    return _zip(dst, out)


def _config_edit(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    out = []
    for name, data in _members(src):
        if name == CONFIG:
            config = json.loads(data)
            edit(config)
            data = json.dumps(config).encode()
        out.append((name, data))
    return _zip(dst, out)


def _h5_edit(src: Path, dst: Path, edit: Callable[[h5py.File], None]) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        edit(f)
    return dst


def _swap(f: h5py.Group, a: str, b: str) -> None:
    f.move(a, a + "_tmp")
    f.move(b, a)
    f.move(a + "_tmp", b)


def _swap_names(f: h5py.Group, a: str, b: str) -> None:
    x, y = f[a].attrs["name"], f[b].attrs["name"]
    f[a].attrs["name"], f[b].attrs["name"] = y, x


def _restore(f: h5py.Group, name: str, array: np.ndarray) -> None:
    attrs = dict(f[name].attrs)
    del f[name]
    f.create_dataset(name, data=array)
    f[name].attrs.update(attrs)


def _stored_as(name: str, dtype: str, change: Callable[[np.ndarray], np.ndarray] = lambda a: a):
    """An edit that stores dataset `name` as `dtype`, its values changed by `change`."""
    def edit(f):
        array = change(np.asarray(f[name][()], "float64"))
        _restore(f, name, array.astype(dtype) if array.dtype != np.dtype(dtype) else array)
    return edit


def _at_zeros(value: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.where(a == 0, value, a)


def _nan_payload(dtype: str) -> Callable[[np.ndarray], np.ndarray]:
    """A quiet NaN with a payload at one free (non-zero) entry."""
    def change(a):
        out = a.astype(np.dtype(dtype).newbyteorder("="))
        bits = {"float32": 0x7FC00123, "float64": 0x7FF8000012300000}[out.dtype.name]
        nan = np.array(bits, f"u{out.dtype.itemsize}").view(out.dtype)
        index = tuple(np.argwhere(out != 0)[0])
        out[index] = nan
        return out.astype(dtype)
    return change


def _ordered_weight_names(group_path: str, a: str, b: str):
    def edit(f):
        group = f[group_path]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        i, j = names.index(a), names.index(b)
        names[i], names[j] = names[j], names[i]
        group.attrs["weight_names"] = [n.encode() for n in names]
    return edit


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """`{case: (path, frozen or None)}`, and the frozen files the cases started from."""
    d = tmp_path_factory.mktemp("corpus")
    twins = _twins()
    frozen_model = ks.freeze(twins, {"*": ks.rules.zeros()})
    per_entry = ks.freeze(twins, {"a": ks.Pin(kernel=np.eye(3, dtype=bool),
                                              kernel_value=np.arange(9, dtype="float32").reshape(3, 3)),
                                  "b": ks.rules.zeros()})
    plain, plain_h5 = (ks.save_model(twins, d / f"twins{s}") for s in (".keras", ".h5"))
    frozen, frozen_h5 = (ks.save_model(frozen_model, d / f"twins.frozen{s}") for s in (".keras", ".h5"))
    per_entry_h5 = ks.save_model(per_entry, d / "per_entry.frozen.h5")
    moved = _twins()
    moved.get_layer("a").set_weights(moved.get_layer("b").get_weights())
    moved_keras = ks.save_model(moved, d / "moved.keras")

    paired = _paired()
    paired_frozen = ks.save_model(ks.freeze(paired, {"pair/left": ks.rules.zeros()}), d / "paired.frozen.keras")
    paired_moved = _paired()
    _zeroed(paired_moved.get_layer("pair").left)  # no change
    kernel, bias = paired_moved.get_layer("pair").left.get_weights()
    kernel[0, 0] = 0.5  # a pinned zero, moved
    paired_moved.get_layer("pair").left.set_weights([kernel, bias])
    paired_moved_keras = ks.save_model(paired_moved, d / "paired.moved.keras")

    a0, b0 = "layers/dense/vars/0", "layers/dense_1/vars/0"
    h5a = "model_weights/a/a/kernel"
    cases: dict[str, tuple[Path, Path | None]] = {}

    def add(name: str, path: Path, against: Path | None) -> None:
        cases[name] = (path, against)

    for fixture in ("pruned_mlp.keras", "pruned_mlp.h5", "nested_frozen.keras", "nested_frozen.h5",
                    "keras2_mlp.h5", "kerasurgery-0.1.0/frozen_mlp.keras",
                    "kerasurgery-0.1.0/frozen_mlp.h5", "kerasurgery-0.1.0/nested_frozen.keras"):
        add(f"fixture {fixture}", FIXTURES / fixture, None)
    add("frozen_mlp.h5 against .keras", FIXTURES / "frozen_mlp.h5", FIXTURES / "frozen_mlp.keras")
    add("twins plain", plain, frozen)
    add("twins plain h5", plain_h5, frozen)
    add("twins frozen", frozen, frozen)
    add("twins frozen h5", frozen_h5, frozen)
    add("twins moved", moved_keras, frozen)

    # Layers and groups reordered, names swapped.
    add("keras: groups swapped", _weights_edit(plain, d / "g_swap.keras",
                                               lambda f: _swap(f, "layers/dense", "layers/dense_1")), frozen)
    add("keras: vars names swapped", _weights_edit(plain, d / "n_swap.keras", lambda f: _swap_names(
        f, "layers/dense/vars", "layers/dense_1/vars")), frozen)
    add("keras: groups and names swapped", _weights_edit(plain, d / "gn_swap.keras", lambda f: (
        _swap(f, "layers/dense", "layers/dense_1"),
        _swap_names(f, "layers/dense/vars", "layers/dense_1/vars"))), frozen)
    add("keras: frozen groups swapped", _weights_edit(frozen, d / "fg_swap.keras", lambda f: _swap(
        f, "layers/masked_dense", "layers/masked_dense_1")), frozen)
    add("keras: config layers reversed", _config_edit(
        plain, d / "reversed.keras", lambda c: c["config"]["layers"].reverse()), frozen)
    add("keras: config layers and groups reversed", _weights_edit(
        d / "reversed.keras", d / "reversed_groups.keras", lambda f: (
            _swap(f, "layers/dense", "layers/dense_1"),
            _swap_names(f, "layers/dense/vars", "layers/dense_1/vars"))), frozen)
    add("keras: vars names dropped", _weights_edit(plain, d / "unnamed.keras", lambda f: [
        f[g].attrs.__delitem__("name") for g in ("layers/dense/vars", "layers/dense_1/vars")]), frozen)
    add("h5: layer_names reversed", _h5_edit(plain_h5, d / "ln_reversed.h5", lambda f: f[
        "model_weights"].attrs.__setitem__("layer_names", f["model_weights"].attrs["layer_names"][::-1])),
        frozen)
    add("h5: weight_names permuted", _h5_edit(per_entry_h5, d / "wn_permuted.h5", _ordered_weight_names(
        "model_weights/a", "a/kernel", "a/kernel_pin_value")), None)
    add("h5: nested weight_names permuted", _h5_edit(
        FIXTURES / "nested_frozen.h5", d / "nested_wn.h5",
        _ordered_weight_names("model_weights/block", "block/block_bn/gamma", "block/block_bn/beta")), None)

    # Other dtypes and byte orders; -0.0, tiny and NaN payloads.
    for label, dtype, change in (
        ("big-endian", ">f4", lambda a: a),
        ("float64", "<f8", lambda a: a),
        ("float16", "<f2", lambda a: a),
        ("float64 1e-300 at the zeros", "<f8", _at_zeros(1e-300)),
        ("float64 -1e-300 at the zeros", "<f8", _at_zeros(-1e-300)),
        ("-0.0 at the zeros", "<f4", _at_zeros(-0.0)),
        ("big-endian -0.0 at the zeros", ">f4", _at_zeros(-0.0)),
        ("float64 -0.0 at the zeros", "<f8", _at_zeros(-0.0)),
        ("float64 subnormal in float32", "<f8", _at_zeros(1e-40)),
        ("NaN payload", "<f4", _nan_payload("<f4")),
        ("big-endian NaN payload", ">f4", _nan_payload(">f4")),
        ("float64 NaN payload", "<f8", _nan_payload("<f8")),
    ):
        add(f"keras: {label}", _weights_edit(plain, d / f"{label}.keras".replace(" ", "_"),
                                             _stored_as(a0, dtype, change)), frozen)
        add(f"h5: {label}", _h5_edit(plain_h5, d / f"{label}.h5".replace(" ", "_"),
                                     _stored_as(h5a, dtype, change)), frozen)
    add("keras: frozen kernel -0.0 big-endian", _weights_edit(
        frozen, d / "frozen_neg.keras", _stored_as("layers/masked_dense/vars/kernel", ">f4",
                                                   _at_zeros(-0.0))), frozen)
    add("keras: frozen pin value float64", _weights_edit(
        frozen, d / "frozen_value64.keras", _stored_as("layers/masked_dense/vars/kernel_pin_value", "<f8")),
        frozen)

    # Pin records: faithful, and lying over moved weights.
    add("record", paired_frozen, paired_frozen)
    record = dict(_members(paired_frozen))[RECORD]
    add("record over moved weights", _zip(d / "record_lies.keras", [
        *_members(paired_moved_keras), (RECORD, record)]), paired_frozen)
    add("moved sublayer without record", paired_moved_keras, paired_frozen)

    # Containers doubled, appended, linked.
    members = _members(plain)
    moved_weights = dict(_members(moved_keras))[WEIGHTS]
    add("zip: weights member twice", _zip(d / "twice.keras", [*members, (WEIGHTS, moved_weights)]), frozen)
    add("zip: config member twice", _zip(d / "config_twice.keras", [
        *members, (CONFIG, dict(members)[CONFIG].replace(b'"a"', b'"c"'))]), frozen)
    (d / "polyglot.keras").write_bytes(plain_h5.read_bytes() + moved_keras.read_bytes())
    add("h5 with a zip appended", d / "polyglot.keras", frozen)
    add("zip holding an h5 model at 4096", _zip(d / "polyglot.h5", [
        ("assets/model.h5", (d / "ln_reversed.h5").read_bytes()), *members],
        at={"assets/model.h5": 4096}), frozen)
    add("keras: a group linked twice", _weights_edit(plain, d / "linked.keras", lambda f: (
        f.__delitem__("layers/dense_1"), f.__setitem__("layers/dense_1", f["layers/dense"]))), frozen)
    add("keras: a dataset linked twice", _weights_edit(plain, d / "linked_ds.keras", lambda f: (
        f.__delitem__(b0), f["layers/dense_1/vars"].__setitem__("0", f[a0]))), frozen)
    return cases


# Refused by every command (a reader that read them would read what Keras does not load).
MUST_REFUSE = [
    "keras: groups swapped", "keras: vars names swapped", "keras: frozen groups swapped",
    "keras: config layers reversed", "keras: config layers and groups reversed",
    "h5: layer_names reversed", "h5: weight_names permuted", "h5: nested weight_names permuted",
    "record over moved weights", "zip: weights member twice", "zip: config member twice",
    "h5 with a zip appended", "zip holding an h5 model at 4096", "keras: a group linked twice",
    "keras: a dataset linked twice",
]
# Keras loads other weights than the original's here: a reader by name would be wrong.
MOVED = ["keras: groups swapped", "keras: frozen groups swapped", "h5: layer_names reversed",
         "h5: weight_names permuted", "zip: weights member twice", "h5 with a zip appended",
         "keras: a group linked twice", "keras: a dataset linked twice", "twins moved"]


# --- what Keras loads ----------------------------------------------------------------


def _keras_name(path: Path) -> Path:
    """Keras picks the format by suffix: the name the case gives is the one it reads."""
    return path


def _view(model) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]]:
    """`{layer path: {weight: (effective, mask or None)}}` of every layer of a pinnable kind."""
    view = {}
    for path, layer in walk_layers(model):
        kind = kinds.find(type(layer).__name__)
        if kind is None or not layer.built:
            continue
        weights = {}
        if hasattr(layer, "present_weights"):
            for weight in layer.present_weights():
                mask, _ = layer.pin_variables(weight)
                weights[weight] = (keras.ops.convert_to_numpy(layer.effective(weight)),
                                   keras.ops.convert_to_numpy(mask))
        else:
            for weight in kind.weights:
                variable = getattr(layer, weight, None)
                if variable is not None:
                    weights[weight] = (keras.ops.convert_to_numpy(variable), None)
        for weight in kind.state:  # BatchNormalization's statistics: read, never pinned
            weights[weight] = (keras.ops.convert_to_numpy(getattr(layer, weight)), None)
        view[path] = weights
    return view


def _load(loader, path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _view(loader(path))
    except Exception as e:  # noqa: BLE001 - any refusal counts
        return e


@pytest.fixture(scope="module")
def loaded(corpus):
    """What `keras.saving.load_model` and `kerasurgery.load_model` load from each file."""
    files = {p for p, _ in corpus.values()} | {f for _, f in corpus.values() if f is not None}
    return {path: (_load(lambda p: keras.saving.load_model(p, compile=False), path),
                   _load(lambda p: ks.load_model(p, compile=False), path)) for path in files}


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes() + str(array.dtype).encode()


def _refused(run: Callable[[], object]) -> object:
    """`run()`, or the refusal: a one-line `KerasurgeryError` (anything else fails the test)."""
    try:
        return run()
    except KerasurgeryError as e:
        assert "\n" not in str(e), str(e)
        return e


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# --- the readers, against Keras --------------------------------------------------------


def test_the_corpus_is_what_it_says(corpus, loaded):
    """The attacks are real: Keras loads these files, and other weights than the original's."""
    twins = _view(_twins())
    for case in MOVED:
        path, _ = corpus[case]
        keras_view, _ = loaded[path]
        assert not isinstance(keras_view, Exception), (case, keras_view)
        assert any(_bits(keras_view[p][w][0]) != _bits(twins[p][w][0])
                   for p in ("a", "b") for w in twins[p]), case
    for case in ("keras: float64 -0.0 at the zeros", "h5: big-endian -0.0 at the zeros"):
        keras_view, _ = loaded[corpus[case][0]]
        assert np.signbit(keras_view["a"]["kernel"][0][0, 1]) and keras_view["a"]["kernel"][0].dtype == "float32"


@pytest.mark.parametrize("case", [
    "keras: groups swapped", "h5: layer_names reversed", "h5 with a zip appended",
    "record over moved weights", "keras: float64 -0.0 at the zeros",
    "keras: big-endian -0.0 at the zeros", "h5: float64 -0.0 at the zeros",
    "keras: float64 -1e-300 at the zeros",
])
def test_verify_never_passes_a_file_whose_loaded_pins_moved(corpus, loaded, case):
    """The issue's cases: `verify` said "all pins hold" for each."""
    path, frozen = corpus[case]
    code, out, err = _cli(["verify", str(path), "--against", str(frozen)])
    assert code == 1, (case, out, err)


def test_inspect_reads_what_keras_loads_or_refuses(corpus, loaded):
    for case, (path, _) in corpus.items():
        keras_view, library_view = loaded[path]
        code, out, err = _cli(["inspect", str(path), "--json"])
        if code != 0:
            assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), (case, err)
            continue
        assert case not in MUST_REFUSE, (case, out[:300])
        assert not isinstance(keras_view, Exception), (case, keras_view)
        layers = {layer["path"]: layer for layer in json.loads(out)["layers"]}
        pins = library_view if not isinstance(library_view, Exception) else keras_view
        for layer_path, weights in keras_view.items():
            row = layers[layer_path]
            main = [w for w in weights if w != "bias"]
            assert row["kernel_shape"] == list(weights[main[0]][0].shape), (case, layer_path)
            zeros = sum(int(np.count_nonzero(weights[w][0] == 0)) for w in main)
            assert row["zeros"] == zeros, (case, layer_path)
            masks = {w: m for w, (_, m) in pins[layer_path].items() if m is not None}
            assert row["pinned"] == sum(int(m.sum()) for m in masks.values()), (case, layer_path)


def test_read_weights_reads_what_keras_loads_or_refuses(corpus, loaded):
    for case, (path, _) in corpus.items():
        keras_view, library_view = loaded[path]
        read = _refused(lambda: read_weights(path))
        if isinstance(read, Exception):
            continue
        assert case not in MUST_REFUSE, case
        assert not isinstance(keras_view, Exception), (case, keras_view)
        pins = library_view if not isinstance(library_view, Exception) else keras_view
        assert set(read) <= set(keras_view), case
        assert {p for p in keras_view if "/" not in p} <= set(read), case  # every config layer
        for layer_path, layer in read.items():
            assert list(layer.weights) == list(keras_view[layer_path]), (case, layer_path)
            for name, weight in layer.weights.items():
                effective, _ = keras_view[layer_path][name]
                assert _bits(weight.effective) == _bits(effective), (case, layer_path, name)
                mask = pins[layer_path][name][1]
                assert np.array_equal(weight.mask, np.zeros_like(weight.mask) if mask is None else mask)


def _truth(candidate: dict, frozen: dict) -> tuple[int, list[tuple[str, str, int]]]:
    """(pinned entries, [(layer, weight, entries that do not hold)]) in the loaded weights."""
    checked, wrong = 0, []
    for layer_path, weights in frozen.items():
        for name, (value, mask) in weights.items():
            if mask is None or not mask.any():
                continue
            checked += int(mask.sum())
            got = candidate.get(layer_path, {}).get(name)
            if got is None or got[0].shape != value.shape:
                wrong.append((layer_path, name, int(mask.sum())))
                continue
            a, b = value[mask], got[0][mask]
            same = (a.view(f"u{a.itemsize}") == b.view(f"u{b.itemsize}")) if a.dtype == b.dtype else (
                (a == b) & (np.signbit(a) == np.signbit(b)))
            if not same.all():
                wrong.append((layer_path, name, int((~same).sum())))
    return checked, wrong


def test_verify_says_what_holds_in_what_keras_loads_or_refuses(corpus, loaded):
    for case, (path, frozen) in corpus.items():
        if frozen is None:
            continue
        result = _refused(lambda: check_pins(path, frozen))
        if isinstance(result, Exception):
            continue
        assert case not in MUST_REFUSE, case
        keras_view, _ = loaded[path]
        assert not isinstance(keras_view, Exception), (case, keras_view)
        _, frozen_view = loaded[frozen]  # the library applies the pin record
        checked, wrong = _truth(keras_view, frozen_view)
        assert result.checked == checked, case
        assert [(v["layer"], v["weight"], v["violations"]) for v in result.violations] == wrong, case


def test_load_model_loads_what_keras_loads_or_refuses(corpus, loaded):
    for case, (path, _) in corpus.items():
        keras_view, library_view = loaded[path]
        if isinstance(library_view, Exception):
            assert isinstance(library_view, KerasurgeryError), (case, library_view)
            assert "\n" not in str(library_view)
            continue
        assert case not in MUST_REFUSE, case
        assert not isinstance(keras_view, Exception), (case, keras_view)
        assert library_view.keys() == keras_view.keys(), case
        for layer_path, weights in keras_view.items():
            for name, (effective, _) in weights.items():
                assert _bits(library_view[layer_path][name][0]) == _bits(effective), (case, layer_path)


def test_the_offline_path_reads_what_keras_loads_or_hands_over(corpus, loaded, tmp_path):
    """TF-free strip keeps, and TF-free freeze pins, what the Keras path does."""
    pins = {"*": ks.rules.zeros()}
    compared = 0
    for number, (case, (path, frozen)) in enumerate(corpus.items()):
        keras_view, library_view = loaded[path]
        for verb in ("strip", "freeze"):
            out = tmp_path / f"{number}.{verb}.keras"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    if verb == "strip":
                        offline.strip_file(path, out, overwrite=False)
                    else:
                        offline.freeze_file(path, out, pins, overwrite=False)
                except (offline.NotOffline, KerasurgeryError):
                    continue
            assert case not in MUST_REFUSE, (case, verb)
            assert not isinstance(library_view, Exception), (case, library_view)
            written = _load(lambda p: keras.saving.load_model(p, compile=False), out)
            if verb == "strip":
                expected = {p: {w: (e, None) for w, (e, _) in ws.items()} for p, ws in library_view.items()}
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    keras_path = tmp_path / f"{number}.keras_path.keras"
                    ks.save_model(ks.freeze(ks.load_model(path, compile=False), pins), keras_path)
                expected = _load(lambda p: keras.saving.load_model(p, compile=False), keras_path)
            assert written.keys() == expected.keys(), (case, verb)
            for layer_path, weights in expected.items():
                for name, (effective, mask) in weights.items():
                    got, got_mask = written[layer_path][name]
                    assert _bits(got) == _bits(effective), (case, verb, layer_path, name)
                    assert (got_mask is None) == (mask is None) and (
                        mask is None or np.array_equal(got_mask, mask)), (case, verb, layer_path)
            compared += 1
    assert compared >= 8  # the offline path took the unmutated files, and some others


def test_json_and_errors_show_names_as_data(tmp_path):
    """A layer named as markup or as escape codes is a name: `--json` has it
    exactly (escaped as JSON), and no output carries its raw escape codes."""
    keras.utils.set_random_seed(0)
    x = keras.Input((2,), name="x")
    names = ["[bold]", "[red]x", "\x1b[31mred\x1b[0m", "tab\there"]
    h = x
    for name in names:
        h = keras.layers.Dense(2, name=name)(h)
    path = ks.save_model(keras.Model(x, h), tmp_path / "names.keras")
    code, out, err = _cli(["inspect", str(path), "--json"])
    assert code == 0, err
    assert "\x1b" not in out and [l["name"] for l in json.loads(out)["layers"]][1:] == names
    code, out, err = _cli(["inspect", str(path)])
    assert code == 0 and "\x1b" not in out + err
    # An error quoting a class from the file quotes it as text.
    def edit(f):
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["class_name"] = "\x1b[2J\x1b[31mBlock"
        f.attrs["model_config"] = json.dumps(config)
    broken = _h5_edit(ks.save_model(keras.Model(x, h), tmp_path / "names.h5"), tmp_path / "broken.h5", edit)
    error = _refused(lambda: inspect_file(broken))
    assert isinstance(error, ModelFileError) and "\x1b" not in str(error), error
    assert "(\\x1b[2J\\x1b[31mBlock)" in str(error)
    code, out, err = _cli(["inspect", str(broken), "--json"])
    assert code == 1 and "\x1b" not in out + err


def test_a_class_keras_would_make_otherwise_is_refused(corpus, tmp_path):
    """Keras makes the class a config's `registered_name` names, and finds its
    weights under that class's group: a `class_name` that says otherwise is refused."""
    plain, _ = corpus["twins plain"]

    def disguise(config):
        layer = config["config"]["layers"][1]
        layer["registered_name"] = "kerasurgery>MaskedDense"
    path = _config_edit(plain, tmp_path / "disguised.keras", disguise)
    for read in (inspect_file, read_weights, lambda p: check_pins(p, corpus["twins frozen"][0])):
        with pytest.raises(ModelFileError, match=r"layer 'a' is a Dense by its `class_name` but a "
                           r"kerasurgery>MaskedDense by its `registered_name`"):
            read(path)


def test_overlapping_zip_members_are_refused(corpus, tmp_path):
    """Members that share their stored bytes (one stream, many members) claim more
    than the file holds: every reader would inflate the shared bytes once per member."""
    plain, _ = corpus["twins plain"]
    data = plain.read_bytes()
    with zipfile.ZipFile(plain) as archive:
        infos = archive.infolist()
    # A second central directory entry for the first member, under another name.
    end = data.rindex(b"PK\x05\x06")
    start = int.from_bytes(data[end + 16:end + 20], "little")
    first = data[start:data.index(b"PK\x01\x02", start + 4)]
    name = infos[0].filename.encode()
    copy = first.replace(name, b"x" * len(name), 1)
    directory = data[start:end] + copy
    record = bytearray(data[end:])
    count = int.from_bytes(record[10:12], "little") + 1
    record[8:10] = record[10:12] = count.to_bytes(2, "little")
    record[12:16] = len(directory).to_bytes(4, "little")
    path = tmp_path / "overlap.keras"
    path.write_bytes(data[:start] + directory + bytes(record))
    with zipfile.ZipFile(path) as archive:
        assert len(archive.infolist()) == len(infos) + 1
    for read in (inspect_file, read_weights):
        with pytest.raises(ModelFileError, match=r"the members '(x+|metadata.json)' and "
                           r"'(x+|metadata.json)' share stored bytes"):
            read(path)
