"""Hostile small files: bounded memory and time, no reads outside the file, clean errors.

Every attack is built here at run time (no large file is checked in). Most
run through `kerasurgery.cli.main` in this process; those whose memory or
time is the point run `python -m kerasurgery` in a child process, several
attacks per child where they can share one, with a timeout and the child's
peak memory (`ru_maxrss`) measured.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import hashlib
import io
import json
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import kerasurgery as ks
from kerasurgery.files import container, formats
from kerasurgery.guards import declared, limits
from kerasurgery.cli import main
from tests.conftest import make_mlp

ROOT = Path(__file__).resolve().parents[1]


# --- helpers -----------------------------------------------------------------


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_zip(path: Path, members: dict[str, bytes], *, weights_at: int | None = None,
               compress: tuple[str, ...] = ()) -> Path:
    """Writes `members` as a zip, in order; `weights_at`: the byte where the
    data of `model.weights.h5` (stored) starts, reached by padding its local
    header's extra field."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            if name == "model.weights.h5" and weights_at is not None:
                start = archive.fp.tell() + 30 + len(name.encode())
                pad = weights_at - start
                assert pad >= 4, f"members before the weights end after byte {weights_at}"
                # An extra field of an unassigned id: readers skip it.
                info.extra = struct.pack("<HH", 0x6B73, pad - 4) + b"\0" * (pad - 4)
            archive.writestr(info, data)
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _frozen_model():
    return ks.freeze(make_mlp(), {"hidden": ks.rules.zeros(), "out": ks.rules.zeros()})


# --- A zip is a zip wherever its members lie -----------------------------------


USER_BLOCK_OFFSETS = (512, 1024, 2048, 4096, 8192)


@pytest.fixture(scope="module")
def frozen_keras(tmp_path_factory) -> Path:
    return ks.save_model(_frozen_model(), tmp_path_factory.mktemp("src") / "frozen.keras")


@pytest.mark.parametrize("offset", USER_BLOCK_OFFSETS)
def test_keras_archive_whose_weights_start_at_an_hdf5_user_block_offset(
        tmp_path, frozen_keras, capsys, offset):
    members = _members(frozen_keras)
    weights_first = {"model.weights.h5": members.pop("model.weights.h5"), **members}
    path = _write_zip(tmp_path / "model.keras", weights_first, weights_at=offset)
    raw = path.read_bytes()
    assert raw[offset:offset + 8] == b"\x89HDF\r\n\x1a\n"  # looks like a user block
    assert formats.detect_format(path) == formats.KERAS

    code, out, err = _run_main(["inspect", str(path), "--json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert document["format"] == "keras"
    assert {l["path"]: l["pinned"] for l in document["layers"] if l["pinned"]} == {"hidden": 3, "out": 1}
    assert _run_main(["inspect", str(path), "--show"], capsys)[0] == 0
    code, out, err = _run_main(["verify", str(path), "--against", str(path)], capsys)
    assert code == 0, err
    assert "all 4 pinned entries" in out
    code, out, err = _run_main(["strip", str(path), "-o", str(tmp_path / "s.keras")], capsys)
    assert code == 0, err
    code, out, err = _run_main(["freeze", str(path), "-o", str(tmp_path / "f.keras")], capsys)
    assert code == 0, err
    reloaded = ks.load_model(path)
    assert {l.name for l in reloaded.layers if type(l).__name__ == "MaskedDense"} == {"hidden", "out"}
    assert path.read_bytes() == raw


# --- Attack builders: small files that declare a lot -----------------------------


def _dense_config(units: int, inputs: int, *, name: str = "big") -> dict:
    """A Sequential config of one Dense layer, built (as Keras 3 saves it)."""
    return {
        "module": "keras", "class_name": "Sequential", "registered_name": None,
        "config": {"name": "s", "trainable": True, "layers": [
            {"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
             "config": {"batch_shape": [None, inputs], "dtype": "float32", "sparse": False,
                        "name": "x"}},
            {"module": "keras.layers", "class_name": "Dense", "registered_name": None,
             "config": {"name": name, "trainable": True, "dtype": "float32", "units": units,
                        "activation": "linear", "use_bias": True},
             "build_config": {"input_shape": [None, inputs]}},
        ], "build_input_shape": [None, inputs]},
        "build_config": {"input_shape": [None, inputs]},
    }


def _streamed(archive: zipfile.ZipFile, name: str, head: bytes, filler: bytes, size: int,
              tail: bytes) -> None:
    """Writes a deflated member of `size` bytes without holding it in memory."""
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(head)
        block = filler * max(1, (1 << 20) // len(filler))
        written = len(head) + len(tail)
        while written + len(block) <= size:
            member.write(block)
            written += len(block)
        member.write(filler * ((size - written) // len(filler)))
        member.write(tail)


def build_json_bomb(path: Path, source: Path, member: str, size: int,
                    filler: bytes = b"[],") -> Path:
    """`source` with `member` (config.json or metadata.json) replaced by `size`
    bytes of valid JSON, mostly `filler` (deflated about 1000:1)."""
    members = _members(source)
    original = json.loads(members.pop(member))
    head = json.dumps(original)[:-1].encode() + b', "padding": ['
    with zipfile.ZipFile(path, "w") as archive:
        _streamed(archive, member, head, filler, size, b"[]]}")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def build_declared_dense(path: Path, units: int = 25000, inputs: int = 25000) -> Path:
    """A `.keras` of a few hundred bytes, no weights, declaring an `inputs x units` Dense."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr("config.json", json.dumps(_dense_config(units, inputs)))
    return path


def build_unwritten(path: Path, source: Path, shape=(1000, 250000), count: int = 3) -> Path:
    """`source` (a frozen `.keras`) whose pin masks are replaced by chunked
    datasets of `shape` that were never written: they read as the fill value."""
    import h5py

    members = _members(source)
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "a") as h5:
        masks = []
        h5.visititems(lambda name, item: masks.append(name)
                      if name.endswith("kernel_pin_mask") else None)
        for name in (masks * count)[:count]:
            del h5[name]
            h5.create_dataset(name, shape=shape, dtype=bool, chunks=tuple(min(1000, n) for n in shape))
        names = (masks * count)[:count]
        for extra in range(count - len(set(names))):
            h5.create_dataset(f"extra_{extra}", shape=shape, dtype=bool, chunks=tuple(min(1000, n) for n in shape))
    members["model.weights.h5"] = buffer.getvalue()
    return _write_zip(path, members, compress=("config.json", "metadata.json"))


def build_npz_with_unused_member(path: Path, used: dict[str, np.ndarray], unused_size: int) -> Path:
    """An `.npz` with the `used` arrays and a deflated all-zero `unused.npy` of
    `unused_size` bytes that no layer is named after."""
    buffer = io.BytesIO()
    np.savez(buffer, **used)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (unused_size,)})
    with zipfile.ZipFile(buffer, "a") as archive:
        _streamed(archive, "unused.npy", header.getvalue(), b"\0" * 4096,
                  len(header.getvalue()) + unused_size, b"")
    path.write_bytes(buffer.getvalue())
    return path


def build_npy_header(path: Path, shape=(10 ** 17,), dtype: str = "<f4") -> Path:
    """An `.npy` of a few dozen bytes whose header declares `shape`."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False,
                                                  "shape": shape})
    path.write_bytes(header.getvalue() + b"\0" * 16)
    return path


# --- The attacks, through the command line ---------------------------------------

# Run in one child without TensorFlow: every refusal below comes before it.
_DRIVER = r"""
import contextlib, io, json, sys, time
from kerasurgery.cli import main

def peak_mb():
    # VmHWM: this process's peak resident memory since exec (ru_maxrss would
    # count the parent's pages the fork shared).
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue(),
                    "seconds": time.monotonic() - started,
                    "peak_mb": peak_mb(),
                    "tensorflow": "tensorflow" in sys.modules})
print(json.dumps(results))
"""
# The child's peak resident memory, interpreter, numpy, h5py and rich included.
PEAK_MB = 256


def _run_batch(argvs: list[list[str]], timeout: float = 60) -> list[dict]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(argvs)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _assert_refused(result: dict, path: Path, pattern: str) -> None:
    import re

    assert result["code"] == 1, result
    assert "Traceback" not in result["err"] and "unexpected" not in result["err"], result["err"]
    lines = result["err"].splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), result["err"]
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def attacks(tmp_path_factory, frozen_keras) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("attacks")
    plain = ks.save_model(make_mlp(), d / "plain.keras")
    frozen = _members(frozen_keras)
    return {
        "plain": plain,
        "frozen": frozen_keras,
        # 64 MB of nested empty lists deflated to about 64 KB.
        "config bomb": build_json_bomb(d / "config_bomb.keras", plain, "config.json", 64 << 20),
        # Under the byte cap, over the count of objects and lists.
        "config lists": build_json_bomb(d / "config_lists.keras", plain, "config.json", 6 << 20),
        "config depth": _write_zip(d / "config_depth.keras", {
            **_members(plain), "config.json": b"[" * 100_000 + b"]" * 100_000},
            compress=("config.json",)),
        "metadata bomb": build_json_bomb(d / "metadata_bomb.keras", plain, "metadata.json", 64 << 20),
        "declared dense": build_declared_dense(d / "declared.keras"),
        "unwritten": build_unwritten(d / "unwritten.keras", frozen_keras, shape=(4, 3), count=2),
        "unwritten big": build_unwritten(d / "unwritten_big.keras", frozen_keras),
        "frozen members": frozen,  # type: ignore[dict-item]
    }


def test_small_files_that_declare_a_lot_are_refused_in_bounded_memory_and_time(attacks, tmp_path):
    """Each refused before it is parsed, built or read: one line, exit 1, no
    TensorFlow imported, nothing written, the input unchanged."""
    out = tmp_path / "out.keras"
    cases = [
        ("config bomb", ["inspect", "--json"], r"config\.json is 67,108,864 bytes uncompressed, more than the 16 MB"),
        ("config bomb", ["freeze", "-o", str(out)], r"config\.json is 67,108,864 bytes"),
        ("config lists", ["inspect"], r"config\.json holds 2,\d{3},\d{3} JSON objects and lists, more than the 1,048,576"),
        ("config lists", ["strip", "-o", str(out)], r"config\.json holds"),
        ("config depth", ["inspect"], r"config\.json nests JSON more than 256 levels deep"),
        ("config depth", ["freeze", "-o", str(out)], r"config\.json nests JSON more than 256 levels deep"),
        ("declared dense", ["freeze", "-o", str(out)],
         r"the model config declares weights of 625,025,000 entries, but the file stores 0: refused before building"),
        ("declared dense", ["inspect"], r"declares weights of 625,025,000 entries"),
        ("unwritten", ["inspect", "--show"], r"claims 12 bytes, more than the file holds \(0 stored for it\): it was never written"),
        ("unwritten", ["verify", "--against", str(attacks["frozen"])], r"it was never written"),
        ("unwritten", ["freeze", "-o", str(out)], r"it was never written"),
        ("unwritten big", ["verify", "--against", str(attacks["frozen"])], r"claims 250000000 bytes.*never written"),
        ("unwritten big", ["inspect", "--show"], r"claims 250000000 bytes.*never written"),
    ]
    before = {name: attacks[name].read_bytes() for name, _, _ in cases}
    argvs = [[argv[0], str(attacks[name]), *argv[1:]] for name, argv, _ in cases]
    argvs.append(["inspect", str(attacks["metadata bomb"]), "--json"])
    results = _run_batch(argvs)
    for (name, _, pattern), result in zip(cases, results):
        _assert_refused(result, attacks[name], pattern)
        assert result["seconds"] < 10, result
        assert not result["tensorflow"], result["argv"]
    # metadata.json is never read by Keras: a huge one leaves the version unknown.
    metadata = results[-1]
    assert metadata["code"] == 0, metadata["err"]
    assert json.loads(metadata["out"])["keras_version"] is None
    assert metadata["seconds"] < 10
    assert max(r["peak_mb"] for r in results) < PEAK_MB, [(r["argv"][:2], r["peak_mb"]) for r in results]
    assert not out.exists() and not list(tmp_path.iterdir())
    assert {name: attacks[name].read_bytes() for name, _, _ in cases} == before


def test_declared_weights_are_a_lower_bound_of_what_keras_builds():
    import keras

    mlp = make_mlp()
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(mlp)))
    assert declared.declared_weight_entries(config) == mlp.count_params() == 4 * 3 + 3 + 3 * 2 + 2
    conv = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(5, 3),
                             keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
                             keras.layers.Flatten(), keras.layers.Dense(4)])
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(conv)))
    assert declared.declared_weight_entries(config) == conv.count_params()
    # Without build_config, the size still comes from the layer feeding it.
    for layer in config["config"]["layers"]:
        layer.pop("build_config", None)
    config["config"].pop("build_input_shape", None)
    assert 0 < declared.declared_weight_entries(config) <= conv.count_params()
    huge = _dense_config(25000, 25000)
    huge["config"]["layers"][1].pop("build_config")
    huge["config"].pop("build_input_shape")
    assert declared.declared_weight_entries(huge) == 25000 * 25000 + 25000


def test_data_outside_the_file_is_refused_by_every_command_without_hanging(tmp_path):
    """External storage naming a FIFO (reading it blocks forever), a virtual
    dataset and an external link, in `.h5` (which Keras' legacy loader would
    follow) and inside `.keras`: refused before anything reads them."""
    import h5py

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    source = ks.save_model(make_mlp(), tmp_path / "plain.h5")

    def external(h5: h5py.File) -> None:
        at = "model_weights/out/out/kernel"
        shape, dtype = h5[at].shape, h5[at].dtype
        del h5[at]
        h5.create_dataset(at, shape=shape, dtype=dtype,
                          external=[(str(fifo), 0, int(np.prod(shape)) * dtype.itemsize)])

    def link(h5: h5py.File) -> None:
        del h5["model_weights/out/out/kernel"]
        h5["model_weights/out/out/kernel"] = h5py.ExternalLink(str(fifo), "/data")

    files = {}
    for name, edit in (("external", external), ("link", link)):
        path = tmp_path / f"{name}.h5"
        path.write_bytes(source.read_bytes())
        with h5py.File(path, "a") as h5:
            edit(h5)
        files[name] = path
    out = tmp_path / "out" / "o.h5"
    out.parent.mkdir()
    argvs = []
    for path in files.values():
        argvs += [["inspect", str(path)], ["inspect", str(path), "--show"],
                  ["verify", str(path), "--against", str(path)],
                  ["freeze", str(path), "-o", str(out)], ["strip", str(path), "-o", str(out)]]
    results = _run_batch(argvs, timeout=60)
    for argv, result in zip(argvs, results):
        _assert_refused(result, Path(argv[1]), r"keeps its data outside the file")
        assert not result["tensorflow"]
    assert not list(out.parent.iterdir())


# --- Array files: headers before allocation, unused members never loaded ------------


def test_npz_arrays_of_unselected_layers_are_never_loaded(tmp_path):
    import tracemalloc

    from kerasurgery.cli import spec

    mask = np.zeros((4, 3), bool)
    mask[0, 0] = True
    path = build_npz_with_unused_member(tmp_path / "mask.npz", {"hidden": mask}, 512 << 20)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        pins = spec.pins_for("mask", str(path), patterns=["hidden"], max_array_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # the 512 MB member was not read
    assert np.array_equal(pins["hidden"].kernel, mask)
    # Selected, the same member is refused by its header, before it is read.
    with pytest.raises(ks.KerasurgeryError, match=r"array 'unused' declares shape \(536870912,\) "
                       r"\(536,870,912 bytes\), more than any weight of the model could use"):
        spec.pins_for("mask", str(path), patterns=["*"], max_array_bytes=1 << 20)


def test_npy_headers_are_checked_before_allocating(tmp_path, frozen_keras, capsys):
    huge = build_npy_header(tmp_path / "huge.npy")
    buffer = io.BytesIO()
    np.savez(buffer, hidden=np.zeros((4, 3), bool))
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("out.npy", huge.read_bytes())
    npz = tmp_path / "huge.npz"
    npz.write_bytes(buffer.getvalue())
    out = tmp_path / "o.keras"
    for path, where in ((huge, ""), (npz, "array 'out' ")):
        code, stdout, err = _run_main(["freeze", str(frozen_keras), "--mask", str(path),
                                       "-o", str(out), "--json"], capsys)
        assert code == 1
        message = (f"{path}: {where}declares shape (100000000000000000,) "
                   "(400,000,000,000,000,000 bytes), but the file holds 16: it is truncated or hostile.")
        assert err == f"error: {message}\n"
        assert json.loads(stdout) == {"error": message, "exit_code": 1}
    assert not out.exists()


# --- Error paths: messages about the input, never "unexpected" ---------------------


def test_spec_and_argument_errors_are_about_the_input(tmp_path, frozen_keras, capsys):
    import tracemalloc
    import time

    deep = tmp_path / "deep.toml"
    deep.write_text("[[layer]]\npattern = 'hidden'\nunits = " + "[" * 100_000 + "]" * 100_000 + "\n")
    digits = tmp_path / "digits.toml"
    digits.write_text("[[layer]]\npattern = 'hidden'\nunits = [" + "9" * 5000 + "]\n")
    seed = tmp_path / "seed.toml"
    seed.write_text("[[layer]]\npattern = 'hidden'\nfraction = 0.5\nseed = -" + "9" * 4000 + "\n")
    out = tmp_path / "o.keras"
    cases = [
        (["--spec", str(deep)], 1, f"{deep}: nests arrays or tables too deeply to read."),
        (["--spec", str(digits)], 1, f"{digits}: is not valid TOML (Exceeds the limit (4300 digits)"),
        (["--spec", str(seed)], 1, f"{seed}: [[layer]] entry 1 ('hidden'): A seed must be a "
                                   "non-negative integer. Received: an integer of 4000 digits (negative)"),
        (["--layer", "hidden", "--fraction", "0.5", "--seed", "-" + "9" * 30], 2,
         "A seed must be a non-negative integer. Received: an integer of 30 digits (negative)"),
        (["--layer", "hidden", "--inputs", "0-100000000"], 1, "The input range 0-100000000 is out of range for shape (4, 3) (4 inputs)."),
        (["--layer", "hidden", "--units", "1,2-4"], 1, "The unit range 2-4 is out of range for shape (4, 3) (3 units)."),
    ]
    for argv, code, message in cases:
        tracemalloc.start()
        started = time.monotonic()
        try:
            got, stdout, err = _run_main(["freeze", str(frozen_keras), *argv,
                                          "-o", str(out), "--json"], capsys)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert got == code, err
        assert message in err and "unexpected" not in err and "Traceback" not in err, err
        assert json.loads(stdout)["exit_code"] == code
        assert peak < 64 << 20 and time.monotonic() - started < 20, (argv[0], peak)
    assert not out.exists()
    # A range inside the layer still pins what it names.
    assert _run_main(["freeze", str(frozen_keras), "--layer", "hidden", "--inputs", "1-2",
                      "-o", str(out), "--json"], capsys)[0] == 0
    pinned = ks.load_model(out).get_layer("hidden").pins().kernel
    assert pinned[1:3].all() and pinned[[0, 3]].sum() == 2  # rows 1-2, and the zeros pinned before


# --- Output checks before loading ------------------------------------------------------


def test_output_checks_come_before_loading_with_the_command_lines_words(tmp_path, capsys):
    dangling = tmp_path / "dangling.keras"
    dangling.symlink_to(tmp_path / "nowhere.keras")
    declared = build_declared_dense(tmp_path / "declared.keras")  # loading it would fail otherwise
    code, out, err = _run_main(["freeze", str(declared), "-o", str(dangling)], capsys)
    assert (code, err) == (1, f"error: {dangling}: already exists; pass --force to replace it.\n")
    code, out, err = _run_main(["strip", str(declared), "-o", f"{tmp_path}/x.keras/"], capsys)
    assert (code, err) == (1, f"error: {tmp_path}/x.keras/: names a folder (it ends in '/'), "
                              "not a model file.\n")
    assert not (tmp_path / "x.keras").exists() and dangling.is_symlink()
    with pytest.raises(ks.KerasurgeryError, match="already exists"):
        ks.save_model(make_mlp(), dangling)
    assert dangling.is_symlink() and not dangling.exists()


def test_json_errors_for_usage_and_file_errors(tmp_path, capsys):
    code, out, err = _run_main(["inspect", str(tmp_path / "missing.keras"), "--json"], capsys)
    assert code == 1 and json.loads(out) == {"error": f"{tmp_path}/missing.keras: no such file.",
                                             "exit_code": 1}
    code, out, err = _run_main(["freeze", "x.keras", "--below", "nan", "--json"], capsys)
    assert code == 2 and "expected a finite number" in err
    assert json.loads(out) == {"error": "argument --below: expected a finite number, got 'nan'",
                               "exit_code": 2}
    code, out, err = _run_main(["inspect", "x.keras", "--show", "--json"], capsys)
    assert code == 2 and json.loads(out)["exit_code"] == 2


# --- Signals: SIGTERM and SIGHUP clean up like Ctrl-C ---------------------------------


@pytest.fixture(scope="module")
def slow_to_save(tmp_path_factory) -> Path:
    """A model whose frozen copy takes a moment to write (about 50 MB)."""
    import keras

    model = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(4096, name="a"),
                              keras.layers.Dense(1024, name="b")])
    folder = tmp_path_factory.mktemp("slow")
    ks.save_model(model, folder / "slow.h5")  # .h5 takes the Keras path, .keras the offline one
    return ks.save_model(model, folder / "slow.keras")


def _signal_freeze(source: Path, folder: Path, signum: int, moment: str,
                   suffix: str = ".keras") -> tuple[int, str]:
    """Runs `kerasurgery freeze` over an earlier output and sends `signum` when a
    temporary file appears (`moment="save"`) or when the output was replaced
    (`"written"`). Returns the exit code and stderr."""
    import signal
    import time

    out = folder / f"out{suffix}"
    out.write_bytes(b"earlier output")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "kerasurgery", "freeze", str(source), "-o", str(out),
                              "--force", "--json"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        temporaries = list(folder.glob(f".out{suffix}.*.tmp{suffix}"))
        if moment == "created" and temporaries:
            break
        if moment == "writing" and temporaries and _size(temporaries[0]) > 1 << 20:
            break
        if moment == "written" and out.read_bytes()[:2] in (b"PK", b"\x89H"):
            break
        time.sleep(0.001)
    else:
        child.kill()
        pytest.fail(f"the moment {moment!r} never came")
    # Stop the child at once, so a fast save cannot finish between seeing the
    # moment and the signal's arrival; the signal is delivered on SIGCONT.
    child.send_signal(signal.SIGSTOP)
    child.send_signal(signum)
    child.send_signal(signal.SIGCONT)
    _, err = child.communicate(timeout=60)
    return child.returncode, err


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# "created": the moment the temporary appears (the Keras path holds signals
# from its creation until the cleanup can run); "writing": 1 MB into it.
@pytest.mark.parametrize("name, code, suffix, moment", [
    ("SIGTERM", 143, ".keras", "writing"), ("SIGHUP", 129, ".keras", "writing"),
    ("SIGTERM", 143, ".h5", "created")])
def test_a_signal_during_a_save_removes_the_temporary_and_keeps_the_earlier_output(
        tmp_path, slow_to_save, name, code, suffix, moment):
    import signal

    source = slow_to_save.with_suffix(suffix)
    returncode, err = _signal_freeze(source, tmp_path, getattr(signal, name), moment, suffix)
    assert returncode == code, err
    assert err == f"error: terminated ({name}).\n"
    assert (tmp_path / f"out{suffix}").read_bytes() == b"earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out{suffix}"]


def test_ctrl_c_after_the_output_is_written_never_ends_in_a_traceback(tmp_path, slow_to_save):
    import signal

    returncode, err = _signal_freeze(slow_to_save, tmp_path, signal.SIGINT, "written")
    # Either the command had finished (0) or the signal ended it (130): never
    # killed by the signal (-2), never a traceback.
    assert returncode in (0, 130), (returncode, err)
    assert "Traceback" not in err
    assert ks.load_model(tmp_path / "out.keras").get_layer("a").pins() is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.keras"]


# --- Configs whose sizes only a build shows ---------------------------------------


def _inflated(source: Path, path: Path, *replacements: tuple[str, str]) -> Path:
    """`source` whose config has each `old` text replaced by `new` (the weights
    stay the small ones it stores)."""
    members = _members(source)
    text = members["config.json"].decode()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    members["config.json"] = text.encode()
    return _write_zip(path, members, compress=("config.json", "metadata.json"))


@pytest.fixture(scope="module")
def built_sizes(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """Small real models, and copies whose configs declare billions of entries
    that the formats module cannot size (it knows Dense, convolutions,
    EinsumDense, Embedding and normalizations, not these)."""
    import h5py
    import keras
    import keras_hub

    d = tmp_path_factory.mktemp("built")
    L = keras.layers
    lstm = keras.Sequential([keras.Input((5, 16)), L.LSTM(8, name="l")])
    lstm.compile(optimizer="adam", loss="mse")  # a training config, too
    lstm = ks.save_model(lstm, d / "lstm.keras")
    x = keras.Input((4, 16))
    mha = ks.save_model(keras.Model(x, L.MultiHeadAttention(2, 8, name="mha")(x, x)), d / "mha.keras")
    small_bert = keras_hub.models.BertBackbone(
        vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=16)
    bert = ks.save_model(small_bert, d / "bert.keras")
    # A KerasHub task compiles itself when made; its class is registered only
    # once Keras imports keras_hub, which the child process has not done.
    small_task = keras_hub.models.GPT2CausalLM(backbone=keras_hub.models.GPT2Backbone(
        vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=16), preprocessor=None)
    task = ks.save_model(small_task, d / "task.keras")
    task_weights = sum(int(np.prod(v.shape)) for v in small_task.weights)
    einsum = ks.save_model(keras.Sequential([keras.Input((16,)), L.EinsumDense(
        "ab,bc->ac", 8, bias_axes="c", name="e")]), d / "einsum.keras")
    stateful = ks.save_model(keras.Sequential(
        [keras.Input(batch_shape=(1, 5, 16)), L.LSTM(8, stateful=True, name="l")]), d / "stateful.keras")
    auc = keras.Sequential([keras.Input((5, 4)), L.LSTM(2, name="l"), L.Dense(2, name="d")])
    auc.compile(optimizer="adam", loss="mse", metrics=[keras.metrics.AUC(num_thresholds=200, name="auc")])
    auc = ks.save_model(auc, d / "auc.keras")
    normalization = ks.save_model(keras.Sequential(
        [keras.Input((4,)), L.Normalization(mean=0.5, variance=2.0, name="n")]),
        d / "normalization.keras")
    h5 = ks.save_model(keras.Sequential([keras.Input((5, 16)), L.GRU(8, name="g")]), d / "gru.h5")
    huge_h5 = d / "gru_huge.h5"
    huge_h5.write_bytes(h5.read_bytes())
    with h5py.File(huge_h5, "a") as f:
        config = f.attrs["model_config"]
        config = config.decode() if isinstance(config, bytes) else config
        f.attrs["model_config"] = config.replace('"units": 8', '"units": 30000')
    return {
        "lstm": (_inflated(lstm, d / "lstm_huge.keras", ('"units": 8', '"units": 20000'), ("16]", "20000]")),
                 4 * (20000 * 20000 * 2 + 20000)),
        "mha": (_inflated(mha, d / "mha_huge.keras", ('"key_dim": 8', '"key_dim": 10000000')),
                # query and key grow; value and output keep their saved `value_dim` 8.
                2 * (16 * 2 * 10 ** 7 + 2 * 10 ** 7) + (16 * 2 * 8 + 2 * 8) + (2 * 8 * 16 + 16)),
        "bert": (_inflated(bert, d / "bert_huge.keras", ('"vocabulary_size": 100', '"vocabulary_size": 10000000000')),
                 small_bert.count_params() + (10 ** 10 - 100) * 8),
        "gru h5": (huge_h5, 3 * (16 * 30000 + 30000 * 30000 + 2 * 30000)),
        "einsum": (_inflated(einsum, d / "einsum_huge.keras", ('"output_shape": [8]', '"output_shape": [60000]'),
                             ("16]", "60000]")), 60000 * 60000 + 60000),
        # A Normalization given its mean broadcasts it (and the variance) to its input at build.
        "normalization": (_inflated(normalization, d / "normalization_huge.keras", ("4]", "500000000]")),
                          2 * 500_000_000),
        "task": (_inflated(task, d / "task_huge.keras", ('"vocabulary_size": 100', '"vocabulary_size": 10000000000')),
                 task_weights + (10 ** 10 - 100) * 8),
        # A stateful RNN's states are made from values, which a stateless scope
        # refuses: the counting build retries without them and counts them.
        "stateful": (_inflated(stateful, d / "stateful_huge.keras", ('"units": 8', '"units": 30000')),
                     4 * (16 * 30000 + 30000 * 30000 + 30000) + 2 * 30000),
        # The training config's metrics are made when the model compiles.
        "auc": (_inflated(auc, d / "auc_huge.keras", ('"num_thresholds": 200', '"num_thresholds": 40000000')),
                4 * (4 * 2 + 2 * 2 + 2) + 2 * 2 + 2 + 5 * 40_000_000),
        "small": (bert, None),
    }


def test_configs_sized_only_by_building_are_refused_before_keras_allocates(built_sizes, tmp_path):
    """LSTM, attention, a KerasHub backbone, an `.h5` GRU and an EinsumDense
    declaring billions of entries over a few KB of weights: refused with the
    count Keras would have built, exit 1, and the memory of the whole run stays
    within 256 MB of what freezing the small real model took. (The EinsumDense
    and a Normalization whose build would broadcast its mean to a declared
    input of 5 x 10^8 are sized from their configs, before TensorFlow; the
    others by building the model without allocating it.)"""
    out = tmp_path / "out.keras"
    names = ["small", "lstm", "mha", "bert", "task", "gru h5", "einsum", "normalization", "stateful", "auc"]
    argvs = [["freeze", str(built_sizes[name][0]), "-o", str(out), "--force"] for name in names]
    before = {name: built_sizes[name][0].read_bytes() for name in names}
    results = _run_batch(argvs, timeout=300)
    assert results[0]["code"] == 0, results[0]["err"]
    assert results[0]["tensorflow"]
    for name, result in zip(names[1:], results[1:]):
        path, declared = built_sizes[name]
        _assert_refused(result, path, rf"the model config declares weights of {declared:,} entries, "
                        r"but the file stores [\d,]+: refused before building")
    growth = results[-1]["peak_mb"] - results[0]["peak_mb"]
    assert growth < PEAK_MB, [(r["argv"][1], r["peak_mb"]) for r in results]
    assert {name: built_sizes[name][0].read_bytes() for name in names} == before


def test_the_counting_build_is_exact_and_leaves_nothing_for_keras_to_initialize(built_sizes):
    import keras
    import keras_hub
    from keras.src.backend.common import global_state

    from kerasurgery.model import budget as _budget

    models = [
        keras.applications.MobileNetV3Small(weights=None, input_shape=(64, 64, 3)),
        keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
                                      intermediate_dim=16, max_sequence_length=8),
    ]
    for model in models:
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
        assert _budget.built_weight_entries(config, formats.KERAS, safe_mode=True) == sum(
            int(np.prod(v.shape)) for v in model.weights)
    config = json.loads(_members(built_sizes["bert"][0])["config.json"])
    assert _budget.built_weight_entries(config, formats.KERAS, safe_mode=True) == built_sizes["bert"][1]
    # The variables it made are not waiting for a later scope to initialize them.
    assert not global_state.get_global_attribute("uninitialized_variables", [])
    with keras.StatelessScope():
        pass
    import h5py

    path, declared = built_sizes["gru h5"]
    with h5py.File(path) as f:
        config = json.loads(f.attrs["model_config"])
    assert _budget.built_weight_entries(config, formats.H5, safe_mode=True) == declared
    # Earlier releases' files (compiled, pinned layers of kerasurgery 0.1.0).
    for name in ("frozen_mlp.keras", "nested_frozen.keras"):
        path = ROOT / "fixtures" / "kerasurgery-0.1.0" / name
        with container.open_model_file(path) as opened:
            config = opened.config
        model = ks.load_model(path)
        assert _budget.built_weight_entries(config, formats.KERAS, safe_mode=True) == sum(
            int(np.prod(v.shape)) for v in model.weights) > 0
    # What cannot be built here is left to the real load, which says why.
    assert _budget.built_weight_entries({"class_name": "Nope", "config": {}}, formats.KERAS,
                                        safe_mode=True) is None
    with pytest.raises(ks.KerasurgeryError, match="declares weights of"):
        ks.load_model(built_sizes["lstm"][0])


def test_the_counting_build_leaves_the_config_as_it_was(built_sizes):
    import copy

    from kerasurgery.model import budget as _budget

    config = json.loads(_members(built_sizes["small"][0])["config.json"])
    before = copy.deepcopy(config)
    first = _budget.built_weight_entries(config, formats.KERAS, safe_mode=True)
    assert config == before
    assert _budget.built_weight_entries(config, formats.KERAS, safe_mode=True) == first > 0


def test_configs_that_state_every_size_are_counted_exactly_without_building(built_sizes):
    import keras

    L = keras.layers
    x = keras.Input((12, 12, 3))
    y = L.Conv2D(4, 3, name="conv2d")(x)
    y = L.BatchNormalization()(y)
    y = L.SeparableConv2D(6, 3, depth_multiplier=2, name="separable_conv2d")(y)
    y = L.GlobalAveragePooling2D()(y)
    inner = keras.Sequential([keras.Input((6,)), L.Dense(5, name="dense"), L.LayerNormalization(),
                              L.PReLU()], name="inner")
    y = L.Dense(3)(inner(y))
    model = keras.Model(x, y)
    frozen = ks.freeze(model, {"conv2d": ks.rules.zeros(), "inner/dense": ks.rules.units([0], value=0.5),
                               "separable_conv2d": ks.rules.zeros()})
    models = [model, frozen, keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3),
                                                            alpha=0.35)]
    for m in models:
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(m)))
        assert declared.exact_weight_entries(config) == sum(int(np.prod(v.shape)) for v in m.weights), m.name
    # What the config does not size is left to the counting build.
    for name in ("lstm", "mha", "bert"):
        config = json.loads(_members(built_sizes[name][0])["config.json"])
        assert declared.exact_weight_entries(config) is None, name


def _survey_models():
    import keras
    import keras_hub

    L = keras.layers
    gpt2 = keras_hub.models.GPT2Backbone(vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=8,
                                         intermediate_dim=16, max_sequence_length=16)
    # A KerasHub task compiles itself when made (an optimizer cannot be deferred).
    yield keras_hub.models.GPT2CausalLM(backbone=gpt2, preprocessor=None)
    yield keras.Sequential([keras.Input((5, 4)), L.Bidirectional(L.LSTM(3)), L.Dense(2)])
    yield keras.Sequential([keras.Input((5, 4)), L.TimeDistributed(L.Dense(3))])
    lora = keras.Sequential([keras.Input((6,)), L.Dense(4)])
    lora.layers[-1].enable_lora(2)
    yield lora
    quantized = keras.Sequential([keras.Input((6,)), L.Dense(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized.quantize("int8")
    yield quantized


def test_the_counting_build_covers_tasks_wrappers_lora_and_quantized_layers():
    import keras

    from kerasurgery.model import budget as _budget

    for model in _survey_models():
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
        weights = sum(int(np.prod(v.shape)) for v in model.weights)
        assert _budget.built_weight_entries(config, formats.KERAS, safe_mode=True) == weights, model.name
        # LoRA and int8 add weights the config's sizes do not show: left to the build.
        assert declared.exact_weight_entries(config) in (None, weights), model.name
    # A stateful RNN: its states (batch 3 x units 8, two for an LSTM) are counted from the config.
    L = keras.layers
    stateful = keras.Sequential([keras.Input(batch_shape=(3, 5, 16)), L.LSTM(8, stateful=True), L.Dense(2)])
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(stateful)))
    assert _budget.built_weight_entries(config, formats.KERAS, safe_mode=True) == (
        sum(int(np.prod(v.shape)) for v in stateful.weights) + 2 * 3 * 8)
    # Metrics: AUC state is 4 variables of its thresholds (and the thresholds),
    # an IoU's a confusion matrix of its classes squared.
    assert _budget.metric_entries({"metrics": [
        {"class_name": "AUC", "config": {"num_thresholds": 200}},
        {"class_name": "MeanIoU", "config": {"num_classes": 30}}, "accuracy"]}) == 5 * 200 + 30 * 30


def test_assets_and_sequential_depth_are_capped_before_anything_is_built(frozen_keras, tmp_path, capsys):
    members = _members(frozen_keras)
    path = tmp_path / "assets.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        # 65 MB of vocabulary lines, deflated to about 64 KB.
        _streamed(archive, "assets/lookup/vocabulary.txt", b"", b"a\n", 65 << 20, b"")
    for argv in (["inspect", str(path)], ["freeze", str(path), "-o", str(tmp_path / "o.keras")]):
        code, _, err = _run_main(argv, capsys)
        assert code == 1 and err.startswith(f"error: {path}: its assets (vocabularies, tokenizer files) "
                                            "take 68,157,440 bytes uncompressed, more than the 64 MB"), err
    config = json.loads(members["config.json"])
    inner = config["config"]["layers"]
    activation = {"module": "keras.layers", "class_name": "Activation", "registered_name": None,
                  "config": {"name": "a", "activation": "relu", "trainable": True, "dtype": "float32"}}
    deep = _dense_config(3, 4)
    deep["config"]["layers"] += [json.loads(json.dumps(activation).replace('"a"', f'"a{i}"'))
                                 for i in range(limits.MAX_SEQUENTIAL_LAYERS)]
    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", json.dumps(deep))
    code, _, err = _run_main(["inspect", str(path)], capsys)
    assert code == 1 and f"a Sequential model of {len(deep['config']['layers']):,} layers, more than the 512" in err
    assert inner  # the frozen model itself is far below the cap


# --- Issue 21: every dataset any reader touches is sized; the stored allowance is the layers' ----


def build_record_never_written(path: Path, source: Path, shape=(30000, 60000)) -> Path:
    """`source` with a pin record whose mask is a chunked boolean dataset of
    `shape` (1.8 GB) that was never written: about 8 KB on disk."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["format"], f.attrs["version"] = "kerasurgery-pins", 1
        layer = f.create_group("layers/0")
        layer.attrs["path"], layer.attrs["class_name"] = "hidden", "MaskedDense"
        layer.attrs["weights"] = ["kernel"]
        layer.create_dataset("kernel_pin_mask", shape=shape, dtype=bool, chunks=(1000, 1000))
        layer.create_dataset("kernel_pin_value", data=np.float32(0))
    return _write_zip(path, {**_members(source), "kerasurgery.pins.h5": buffer.getvalue()})


def build_vlen_kernel(path: Path, source: Path, shape=(4000, 4000)) -> Path:
    """`source` whose first kernel is a never-written variable-length dataset of
    `shape` (16M entries, each read as a Python object): about 31 KB."""
    import h5py

    members = _members(source)
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "a") as h5:
        name = next(n for n in ("layers/dense/vars/0", "layers/masked_dense/vars/kernel") if n in h5)
        del h5[name]
        h5.create_dataset(name, shape=shape, dtype=h5py.vlen_dtype(np.float32), chunks=(100, 100))
    members["model.weights.h5"] = buffer.getvalue()
    return _write_zip(path, members)


def build_linked_levels(path: Path, source: Path, levels: int = 16) -> Path:
    """`source` with `levels` groups that each link the next one twice: one
    dataset, reached by 2**levels paths."""
    import h5py

    members = _members(source)
    buffer = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buffer, "a") as h5:
        last = h5.create_group(f"extra/g{levels}")
        last.create_dataset("d", data=np.zeros(1000, "float32"))
        for level in range(levels - 1, -1, -1):
            group = h5.create_group(f"extra/g{level}")
            group["a"], group["b"] = last, last
            last = group
    members["model.weights.h5"] = buffer.getvalue()
    return _write_zip(path, members)


def build_unowned_gzip(path: Path, units: int = 25000, inputs: int = 20000,
                       entries: int = 125_000_000) -> Path:
    """A `.keras` whose config declares an `inputs x units` Dense (500M entries,
    2 GB), and whose weights hold a gzip dataset of `entries` zeros that no layer
    owns: about 0.6 MB. Counted as stored, it raised the allowance past the Dense."""
    import zlib

    import h5py

    buffer = io.BytesIO()
    chunk = 1 << 20
    with h5py.File(buffer, "w") as h5:
        h5.create_group("layers/dense/vars").attrs["name"] = "big"
        h5.create_group("vars").attrs["name"] = "s"
        dataset = h5.create_dataset("padding", shape=(entries,), dtype="float32", chunks=(chunk,),
                                    compression="gzip")
        zeros = zlib.compress(bytes(4 * chunk), 9)
        for start in range(0, entries, chunk):
            dataset.id.write_direct_chunk((start,), zeros)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr("config.json", json.dumps(_dense_config(units, inputs)))
        archive.writestr("model.weights.h5", buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def issue21(tmp_path_factory, frozen_keras) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("issue21")
    plain = ks.save_model(make_mlp(), d / "plain.keras")
    return {
        "plain": plain,
        "frozen": frozen_keras,
        "record never written": build_record_never_written(d / "record.keras", plain),
        "vlen kernel": build_vlen_kernel(d / "vlen.keras", plain),
        "vlen frozen kernel": build_vlen_kernel(d / "vlen_frozen.keras", frozen_keras),
        "linked levels": build_linked_levels(d / "linked.keras", frozen_keras),
        "unowned gzip": build_unowned_gzip(d / "gzip.keras"),
    }


def test_issue21_small_files_are_refused_within_the_budget(issue21, tmp_path):
    """The issue's attacks, through every command that reads them without Keras:
    one line, exit 1, within the child's memory budget, in seconds."""
    out = tmp_path / "out.keras"
    # What each attack adds to the model it starts from (a few KB of model each).
    added = {name: issue21[name].stat().st_size - issue21[base].stat().st_size for name, base in (
        ("record never written", "plain"), ("vlen kernel", "plain"), ("linked levels", "frozen"))}
    assert added["record never written"] < 16 << 10 and added["vlen kernel"] < 48 << 10, added
    assert added["linked levels"] < 64 << 10 and issue21["unowned gzip"].stat().st_size < 1 << 20
    cases = [
        ("record never written", ["inspect", "--json"], r"kerasurgery\.pins\.h5 dataset .*kernel_pin_mask.* claims 1800000000 bytes.*never written"),
        ("record never written", ["verify", "--against", str(issue21["frozen"])], r"claims 1800000000 bytes.*never written"),
        ("vlen kernel", ["verify", "--against", str(issue21["frozen"])], r"dataset 'layers/dense/vars/0' holds variable-length data"),
        ("vlen kernel", ["inspect", "--show"], r"holds variable-length data"),
        ("vlen kernel", ["freeze", "-o", str(out)], r"holds variable-length data"),
        ("vlen frozen kernel", ["strip", "-o", str(out)], r"holds variable-length data"),
        ("linked levels", ["freeze", "-o", str(out)], r"object 'extra/g0/a' is reached by 3 links"),
        ("linked levels", ["strip", "-o", str(out)], r"is reached by 3 links"),
        ("linked levels", ["inspect"], r"is reached by 3 links"),
        ("unowned gzip", ["inspect", "--json"], r"declares weights of 500,025,000 entries, but the file stores 0"),
        ("unowned gzip", ["freeze", "-o", str(out)], r"declares weights of 500,025,000 entries"),
    ]
    before = {name: path.read_bytes() for name, path in issue21.items()}
    argvs = [[argv[0], str(issue21[name]), *argv[1:]] for name, argv, _ in cases]
    results = _run_batch(argvs)
    for (name, _, pattern), result in zip(cases, results):
        _assert_refused(result, issue21[name], pattern)
        assert result["seconds"] < 5, result
        assert not result["tensorflow"], result["argv"]
    assert max(r["peak_mb"] for r in results) < PEAK_MB, [(r["argv"][:2], r["peak_mb"]) for r in results]
    assert not out.exists()
    assert {name: path.read_bytes() for name, path in issue21.items()} == before


# `kerasurgery.load_model` in a child with TensorFlow loaded: how much its peak grows.
_LOAD_DRIVER = r"""
import json, sys, time
import keras
import kerasurgery as ks

def peak_mb():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024

ks.load_model(sys.argv[2])  # warm up: what a first load imports
results = []
for path in json.loads(sys.argv[1]):
    before, started = peak_mb(), time.monotonic()
    try:
        ks.load_model(path)
        error = None
    except ks.KerasurgeryError as e:
        error = str(e)
    results.append({"error": error, "grew_mb": peak_mb() - before,
                    "seconds": time.monotonic() - started})
print(json.dumps(results))
"""


def test_issue21_load_model_refuses_before_allocating(issue21):
    """The pin record's never-written mask, and a config whose allowance came from
    a dataset no layer owns: refused before the reader or Keras allocates."""
    names = ["record never written", "unowned gzip"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", _LOAD_DRIVER,
                             json.dumps([str(issue21[n]) for n in names]), str(issue21["plain"])],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    record, gzip = json.loads(result.stdout.splitlines()[-1])
    assert record["error"] is not None and "never written" in record["error"], record
    assert gzip["error"] is not None and "declares weights of 500,025,000 entries, but the file stores 0" in (
        gzip["error"]), gzip
    for outcome in (record, gzip):
        assert outcome["grew_mb"] < 64 and outcome["seconds"] < 5, outcome


def test_issue21_an_npz_key_held_twice_is_refused_before_either_is_read(tmp_path):
    """`hidden` and `hidden.npy`: the size check read one, numpy the other (512 MB here)."""
    import tracemalloc

    from kerasurgery.cli import spec

    small = io.BytesIO()
    np.lib.format.write_array(small, np.zeros((4, 3), bool))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (512 << 20,)})
    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w") as archive:
        _streamed(archive, "hidden", header.getvalue(), b"\0" * 4096,
                  len(header.getvalue()) + (512 << 20), b"")
        archive.writestr("hidden.npy", small.getvalue())
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ks.KerasurgeryError, match=r"holds two arrays for the key 'hidden' "
                           r"\('hidden' and 'hidden.npy'\)"):
            spec.pins_for("mask", str(path), patterns=["hidden"], max_array_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_issue21_errors_never_show_the_bytes_of_the_file_they_refuse(tmp_path, frozen_keras, capsys):
    """A `--spec` or `--mask` naming another file (a model, a script) says it is
    not TOML or not numpy; it never shows what the file holds."""
    secret = tmp_path / "notes.txt"
    secret.write_bytes(b"SECRET-TOKEN=abc123\n")
    h5 = ks.save_model(make_mlp(), tmp_path / "model.h5")
    out = tmp_path / "o.keras"
    cases = [
        (["--spec", str(h5)], f"error: {h5}: is not valid TOML (not UTF-8 text at byte 0).\n"),
        (["--mask", str(secret)], f"error: {secret}: cannot read it as an .npy or .npz array file "
                                  "(no numpy array header where one must be).\n"),
        (["--mask", str(h5)], f"error: {h5}: cannot read it as an .npy or .npz array file "
                              "(no numpy array header where one must be).\n"),
    ]
    for argv, message in cases:
        code, _, err = _run_main(["freeze", str(frozen_keras), *argv, "-o", str(out)], capsys)
        assert (code, err) == (1, message)
        assert "SECRET" not in err and "HDF" not in err
    assert not out.exists()
