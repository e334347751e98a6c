"""formats: telling the format, and opening a model file's container once for every reader."""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

import kerasurgery as ks
from kerasurgery.files import container, formats
from kerasurgery.errors import ModelFileError
from kerasurgery.files.inspection import inspect_file, read_dense_weights

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A `.keras` file holding a 16 MB kernel."""
    inputs = keras.Input((2000,))
    model = keras.Model(inputs, keras.layers.Dense(2000, name="wide")(inputs))
    return ks.save_model(model, tmp_path_factory.mktemp("big") / "big.keras")


def test_keras_weights_are_read_in_place_not_copied(big):
    with zipfile.ZipFile(big) as archive:
        info = archive.getinfo("model.weights.h5")
        assert info.compress_type == zipfile.ZIP_STORED and info.file_size > 16_000_000
    tracemalloc.start()
    try:
        config = container.read_model_config(big, formats.KERAS)  # CRCs included
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert config["class_name"] == "Functional"
    assert peak < 4_000_000, peak  # testzip's 1 MB chunks, not a 16 MB copy


def test_open_model_file_hands_over_config_and_weights():
    for name, fmt in (("frozen_mlp.keras", formats.KERAS), ("frozen_mlp.h5", formats.H5)):
        with container.open_model_file(FIXTURES / name) as model:
            assert (model.format, model.keras_version) == (fmt, keras.__version__)
            assert model.config["class_name"] in ("Functional", "Sequential")
            assert isinstance(model.weights, h5py.File) and model.weights.id.valid
            weights = model.weights
        assert not weights.id.valid  # closed with the block
    with container.open_model_file(FIXTURES / "frozen_mlp.keras") as model:
        assert {"config.json", "metadata.json", "model.weights.h5"} <= model.members
        kernel = model.weights["layers/masked_dense/vars/kernel"][()]
    assert kernel.shape == (8, 16)


def test_read_h5_list_joins_chunks_and_decodes():
    with h5py.File("chunks.h5", "w", driver="core", backing_store=False) as f:
        f.attrs["weight_names0"] = np.array([b"a/kernel", b"a/bias"])
        f.attrs["weight_names1"] = np.array(["b/kernel"], dtype=h5py.string_dtype())
        f.attrs["layer_names"] = b"only"
        assert formats.read_h5_list(f, "weight_names") == ["a/kernel", "a/bias", "b/kernel"]
        assert formats.read_h5_list(f, "layer_names") == ["only"]
        assert formats.read_h5_list(f, "missing") == []


def _container_faults(tmp_path: Path) -> dict[str, Path]:
    """Files whose container is wrong: every reader must say the same."""
    keras_bytes = (FIXTURES / "frozen_mlp.keras").read_bytes()
    faults = {}
    with zipfile.ZipFile(FIXTURES / "frozen_mlp.keras") as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    for label, change in (
        ("no config", {"config.json": None}),
        ("bad json", {"config.json": b"{not json"}),
        ("not a model", {"config.json": b"[1, 2]"}),
        ("damaged weights", {"model.weights.h5": b"\0" * 4096}),
    ):
        path = tmp_path / f"{label.replace(' ', '_')}.keras"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in {**members, **change}.items():
                if data is not None:
                    archive.writestr(name, data)
        faults[label] = path
    flipped = bytearray(keras_bytes)
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "flipped.keras").write_bytes(flipped)
    faults["crc"] = tmp_path / "flipped.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(
        tmp_path / "w.weights.h5")
    faults["weights only"] = tmp_path / "w.weights.h5"
    with h5py.File(tmp_path / "bare.h5", "w") as f:
        f["x"] = np.zeros(3)
    faults["no model_config"] = tmp_path / "bare.h5"
    return faults


def test_loader_and_inspection_share_the_container_checks(tmp_path):
    for label, path in _container_faults(tmp_path).items():
        with pytest.raises(ModelFileError) as by_formats:
            container.read_model_config(path, formats.detect_format(path))
        reader = read_dense_weights if label == "crc" else inspect_file  # inspect skips CRCs
        with pytest.raises(ModelFileError) as by_inspection:
            reader(path)
        assert str(by_inspection.value) == str(by_formats.value), label
