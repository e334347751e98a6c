"""The package as users install it: the built wheel holds every module of the
source tree, and the Keras-free parts import nothing heavy."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kerasurgery"

# The parts that read, check and rewrite model files without Keras: `inspect`,
# `verify`, `--help` and the TF-free freeze/strip start in a fraction of a
# second because of it.
KERAS_FREE = ["kerasurgery", "kerasurgery.errors", "kerasurgery.kinds", "kerasurgery.pins", "kerasurgery._plan",
              "kerasurgery.pruning", "kerasurgery.calibrated",
              "kerasurgery.cli", "kerasurgery.guards.limits", "kerasurgery.guards.declared",
              "kerasurgery.guards.shapes"]
HEAVY = ("keras", "tensorflow", "jax", "torch")


def _source_files() -> list[str]:
    return sorted(
        path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed")
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools keeps a `build/` folder beside the sources,
    # and a module removed since an earlier build would stay in its wheel.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "kerasurgery", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("kerasurgery-*.whl")
    return found


def test_the_wheel_holds_every_module_of_the_source_tree(wheel):
    with zipfile.ZipFile(wheel) as archive:
        packaged = sorted(n for n in archive.namelist() if n.startswith("kerasurgery/"))
    assert packaged == _source_files()
    assert "kerasurgery/layers/__init__.py" in packaged  # the one a flat `packages = [...]` lost


def test_the_wheel_names_the_command_line_entry_point(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert "kerasurgery = kerasurgery.cli:main" in text


def test_the_keras_free_parts_import_no_framework_in_a_fresh_process():
    modules = KERAS_FREE + sorted(
        "kerasurgery.files." + path.stem for path in (PACKAGE / "files").glob("*.py") if path.stem != "__init__"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len(modules) >= len(KERAS_FREE) + 8  # every files/ module was imported, not an empty glob
