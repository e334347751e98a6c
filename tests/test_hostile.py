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
import zipfile
from pathlib import Path

import numpy as np
import pytest

import kerasurgery as ks
from kerasurgery import formats
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
