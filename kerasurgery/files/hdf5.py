"""Reading HDF5 objects of an untrusted file safely.

Every reader of a model file's HDF5 (the weights, the pin record) goes
through these: links are followed only when they are hard links (a soft or
external link could point anywhere, even into another file), and a dataset
whose data lives outside the file is refused before it is read.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np


def group(parent: h5py.Group | None, name: str) -> h5py.Group | None:
    obj = child(parent, name)
    return obj if isinstance(obj, h5py.Group) else None


def dataset(parent: h5py.Group, name: str) -> h5py.Dataset | None:
    obj = child(parent, name)
    return obj if isinstance(obj, h5py.Dataset) else None


def child(parent: h5py.Group | None, name: str) -> Any:
    """`parent[name]` following hard links only: a soft or external link could
    point anywhere, even into another file."""
    current = parent
    for part in name.split("/"):
        if current is None or not part or part not in current:
            return None
        if not isinstance(current.get(part, getlink=True), h5py.HardLink):
            return None
        current = current[part]
    return current


def refuse_outside_data(dataset: h5py.Dataset, error: Any) -> None:
    """Refuses a dataset whose data lives outside the file: reading an external
    or virtual dataset would read whatever file it names (`/etc/passwd`, a FIFO)."""
    try:
        outside = dataset.is_virtual or bool(dataset.external)
    except Exception:  # h5py cannot tell: do not read it either
        outside = True
    if outside:
        raise error(
            f"dataset {dataset.name!r} keeps its data outside the file (an external or "
            "virtual dataset), which a model file never does; refused."
        )


def index_key(key: str) -> tuple:
    """Sorts `0`, `1`, ..., `10` as numbers, other names after them."""
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def int_attr(value: Any) -> int | None:
    try:
        array = np.asarray(value)
        if array.shape != () or array.dtype.kind not in "iu":
            return None
        return int(array)
    except Exception:
        return None
