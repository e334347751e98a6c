"""Reading a saved model file without TensorFlow or Keras: layers, shapes, pins.

`inspect_file` lists every layer of a `.keras` or `.h5` file (Keras 3 or
Keras 2), at every depth, with its kernel shape, pinned counts and zeros;
`read_weights` returns the effective weights and pins of the pinnable layers
(`Dense`, `EinsumDense`, the convolutions, `Embedding`, plain or pinned) or of
the layers asked for; `read_dense_weights` is the older reader of `Dense` and
`MaskedDense` layers only; `check_pins` compares every pinned weight of a
frozen file with another file (`verify`). They read the model config (json),
the pin record, and only the weights they need (h5py), so they answer in a
fraction of a second where importing TensorFlow takes seconds; counting goes
block by block, so a huge weight is never read whole just to count.

A layer is identified by its path: its name prefixed by the names of the
layers and models that hold it, joined by "/" (`dense`, `inner/dense`,
`bert_backbone/transformer_layer_0/self_attention_layer/query`), as Keras
requires names to be unique within one parent only. Layers inside other
layers (those a KerasHub block or a custom layer creates in `build()`) are
listed too, although the model config does not name them: their class comes
from the pin record when they are pinned, from their parent's config where it
names them (a wrapper's `layer`), or from the container key Keras gave them
(`dense_1` in a list); otherwise it is `UNKNOWN_CLASS` ("?"), and only their
first stored weight counts as their kernel, when it has two or more axes.
Where each format keeps a layer's weights is `_layout`'s part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np

from kerasurgery import kinds
from kerasurgery.files import container, formats
from kerasurgery.files.layout import (
    BIAS,
    CONFIG,
    DENSE,
    MASKED,
    UNKNOWN,
    Entry,
    layer_entries,
    loaded_as,
)
from kerasurgery.files.pin_record import open_record as open_pin_record
from kerasurgery.guards import shapes as _shapes
from kerasurgery.errors import KerasurgeryError, ModelFileError, one_line
from kerasurgery.files.formats import KERAS

UNKNOWN_CLASS = UNKNOWN

# Entries read at once when counting, so counting a huge weight or mask stays
# within a few tens of MB of memory.
_COUNT_BLOCK = 1 << 22
# The weights that count as a kernel in a layer of no pinnable kind: those
# that do in some kind, but a normalization's scale and offset (a custom
# layer's own `gamma` is no kernel).
_KERNEL_LIKE = tuple(dict.fromkeys(
    w for kind in kinds.KINDS.values() if not kind.normalization for w in kind.kernels))
_SHARED, _PER_ENTRY = "shared", "per_entry"


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a saved model, as `inspect_file` reports it.

    Attributes:
        name: The layer's name.
        class_name: Its class (`MaskedConv2D`, ...); `UNKNOWN_CLASS` ("?") for
            a layer that only the weights file shows and nothing names.
        kernel_shape: The shape of its first weight (`kernel`,
            `depthwise_kernel`, `embeddings`), `None` without one.
        pinned_kernel: Pinned entries of all its weights but the bias.
        pinned_bias: Pinned entries of its bias.
        path: The layer's path (its name for a layer of the top-level model).
        zeros: Entries exactly zero (0.0 or -0.0) in its effective weights
            but the bias; `None` when not counted.
        size: Entries of its weights but the bias, so `zeros / size` is its
            sparsity.
    """

    name: str
    class_name: str
    kernel_shape: tuple[int, ...] | None
    pinned_kernel: int
    pinned_bias: int
    path: str = ""
    zeros: int | None = 0
    size: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", self.name)

    @property
    def pinned(self) -> int:
        """Pinned entries of all its weights, the bias included."""
        return self.pinned_kernel + self.pinned_bias

    @property
    def sparsity(self) -> float | None:
        """`zeros / size`, `None` without weights or count."""
        return None if not self.size or self.zeros is None else self.zeros / self.size


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What `inspect_file` found in a model file."""

    file: str
    format: str
    keras_version: str | None
    layers: list[LayerInfo]

    @property
    def pinned_kernel(self) -> int:
        return sum(layer.pinned_kernel for layer in self.layers)

    @property
    def pinned_bias(self) -> int:
        return sum(layer.pinned_bias for layer in self.layers)

    @property
    def pinned(self) -> int:
        """Pinned entries of every layer."""
        return self.pinned_kernel + self.pinned_bias

    @property
    def size(self) -> int:
        """Entries of every layer's weights but the biases."""
        return sum(layer.size for layer in self.layers)

    @property
    def zeros(self) -> int | None:
        """Exact zeros among them; `None` when not counted."""
        if any(layer.zeros is None for layer in self.layers):
            return None
        return sum(layer.zeros for layer in self.layers)

    def totals(self) -> dict:
        """`{"layers", "size", "zeros", "pinned_kernel", "pinned_bias", "pinned"}` of the file."""
        return {
            "layers": len(self.layers), "size": self.size, "zeros": self.zeros,
            "pinned_kernel": self.pinned_kernel, "pinned_bias": self.pinned_bias,
            "pinned": self.pinned,
        }

    def to_json(self, *, totals: bool = False) -> dict:
        """The object `kerasurgery inspect --json` prints; with `totals`, also `"totals"`."""
        document = {
            "file": self.file,
            "format": self.format,
            "keras_version": self.keras_version,
            "layers": [
                {
                    "name": layer.name,
                    "class_name": layer.class_name,
                    "kernel_shape": (
                        None if layer.kernel_shape is None else list(layer.kernel_shape)
                    ),
                    "pinned_kernel": layer.pinned_kernel,
                    "pinned_bias": layer.pinned_bias,
                    "pinned": layer.pinned,
                    "path": layer.path,
                    "zeros": layer.zeros,
                    "size": layer.size,
                }
                for layer in self.layers
            ],
        }
        if totals:
            document["totals"] = self.totals()
        return document


@dataclasses.dataclass(frozen=True)
class StoredWeight:
    """One weight of a saved layer and its pins, as numpy arrays (read-only).

    `effective` is what the layer computes with; `mask` is True at pinned
    entries (all False for a plain layer); `value` holds the pinned value at
    each pinned entry and the effective weight elsewhere, so it equals
    `effective`.
    """

    name: str
    effective: np.ndarray
    mask: np.ndarray
    value: np.ndarray

    @property
    def pinned(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclasses.dataclass(frozen=True)
class LayerWeights:
    """The weights and pins of one saved layer, by weight name in Keras' order.

    Weight names are Keras' (`kernel`, `bias`, `depthwise_kernel`,
    `pointwise_kernel`, `embeddings`, ...); for a layer of unknown class in a
    `.keras` file, the keys the file stores (`0`, `1`, ...).
    """

    path: str
    name: str
    class_name: str
    weights: dict[str, StoredWeight]

    @property
    def kernel(self) -> StoredWeight | None:
        """The first weight (`kernel`, `depthwise_kernel`, `embeddings`), if any but the bias."""
        return next((w for n, w in self.weights.items() if n != BIAS), None)

    @property
    def bias(self) -> StoredWeight | None:
        return self.weights.get(BIAS)

    @property
    def pinned(self) -> int:
        """Pinned entries of all its weights."""
        return sum(weight.pinned for weight in self.weights.values())


@dataclasses.dataclass(frozen=True)
class DenseWeights:
    """The effective weights and pins of one `Dense` or `MaskedDense` layer.

    The arrays are read-only. `kernel_value` holds the pinned value at each
    pinned entry and the effective weight elsewhere, so it equals `kernel`
    (as `MaskedDense.pins()` reports it); likewise `bias_value`. `path` is
    the layer's path, as in `LayerInfo`.
    """

    name: str
    class_name: str
    kernel: np.ndarray
    bias: np.ndarray | None
    kernel_mask: np.ndarray
    bias_mask: np.ndarray | None
    kernel_value: np.ndarray
    bias_value: np.ndarray | None
    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", self.name)

    @property
    def weights(self) -> dict[str, StoredWeight]:
        """The same arrays as `LayerWeights.weights`: `kernel`, and `bias` if any."""
        weights = {"kernel": StoredWeight("kernel", self.kernel, self.kernel_mask, self.kernel_value)}
        if self.bias is not None:
            weights[BIAS] = StoredWeight(BIAS, self.bias, self.bias_mask, self.bias_value)
        return weights


def inspect_file(path: str | os.PathLike, *, count_zeros: bool = True) -> FileInfo:
    """Lists the layers of a `.keras` or `.h5` model file, at every depth, without TensorFlow.

    Reads the model config, the pin record, the weights' shapes and the pin
    masks, and (with `count_zeros`) the weights but the biases, block by
    block, to count their zeros.

    Args:
        path: A model file written by Keras 3 (`.keras`, `.h5`) or Keras 2 (`.h5`).
        count_zeros: Count exact zeros (`LayerInfo.zeros`); without, `zeros`
            is `None` and no weight is read.

    Returns:
        A `FileInfo` with every layer in model order, each listed before the
        layers inside it (which have paths `parent/name`).

    Raises:
        ModelFileError: the file is missing, not a model file, corrupt, or its
            weights disagree with its config. The message names the file.

    Example:

    ```python
    info = inspect_file("fixtures/frozen_mlp.keras")
    {layer.path: layer.pinned for layer in info.layers}
    ```
    """
    with _opened(path, check_crc=False) as model:
        layers = [model.layer_info(entry, count_zeros) for entry in model.entries]
        return FileInfo(str(path), model.format, model.keras_version, layers)


def read_weights(
    path: str | os.PathLike, layers: Iterable[str] | None = None
) -> dict[str, LayerWeights]:
    """Reads the effective weights and pins of the layers of a model file, at every depth.

    Args:
        path: A model file, as for `inspect_file`.
        layers: The paths of the layers to read; those the file lacks, or
            that have no weights, are left out. `None`: every layer of a
            pinnable kind (`Dense`, `EinsumDense`, the convolutions,
            `Embedding`, plain or pinned) and every layer with pins.

    Returns:
        `LayerWeights` by layer path, in model order.

    Raises:
        ModelFileError: as `inspect_file`; also for non-float (quantized)
            weights of a pinnable layer, non-finite pin values, and a `.keras`
            archive whose members fail their CRC check (Keras refuses those too).
    """
    wanted = None if layers is None else {layers} if isinstance(layers, str) else set(layers)
    with _opened(path, check_crc=True) as model:
        result: dict[str, LayerWeights] = {}
        for entry in model.entries:
            if entry.path in result:
                continue
            if wanted is not None and entry.path not in wanted:
                continue
            if wanted is None and kinds.find(entry.class_name) is None and not entry.has_pins:
                continue
            weights = model.read_layer(entry)
            if weights is not None:
                result[entry.path] = weights
        return result


def read_dense_weights(path: str | os.PathLike) -> dict[str, DenseWeights]:
    """Reads the effective weights and pins of every Dense and MaskedDense layer.

    Returns:
        `DenseWeights` by layer path (see `LayerInfo`), in model order, at
        every depth: a layer of the top-level model under its name, a layer
        inside nested models or other layers under `parent/.../name`.

    Raises:
        ModelFileError: as `read_weights`.
    """
    with _opened(path, check_crc=True) as model:
        weights: dict[str, DenseWeights] = {}
        for entry in model.entries:
            if entry.class_name in (DENSE, MASKED) and entry.path not in weights:
                layer = model.read_layer(entry)
                if layer is not None and "kernel" in layer.weights:
                    weights[entry.path] = _dense_weights(layer)
        return weights


@dataclasses.dataclass(frozen=True)
class PinCheck:
    """What `check_pins` found.

    Attributes:
        checked: Pinned entries of the frozen file that were compared.
        violations: One row per layer and weight where pins do not hold:
            `{"layer": path, "weight": "kernel" | "bias" | ..., "pinned": n,
            "violations": n, "max_deviation": float | None, "reason": str}`.
    """

    checked: int
    violations: list[dict]

    @property
    def ok(self) -> bool:
        """Whether every pinned entry holds."""
        return not self.violations


def check_pins(candidate: str | os.PathLike, frozen: str | os.PathLike) -> PinCheck:
    """Checks that every pinned entry of `frozen` holds, bit for bit, in `candidate`.

    Every pinned weight of every layer of `frozen`, at any depth, is compared
    with the weight of the same name in the layer of the same path in
    `candidate`: equal names in different parents are different layers, and
    freeze and strip keep the nesting. `candidate` may be masked or stripped,
    `.keras` or `.h5`. One layer is read at a time.

    Args:
        candidate: The model file to check (fine-tuned, stripped, ...).
        frozen: The frozen model file whose pins must hold.

    Returns:
        A `PinCheck`; `.ok` when no pinned entry changed.

    Raises:
        ModelFileError: either file cannot be read (as `read_weights`).
        KerasurgeryError: `frozen` pins nothing, so it cannot be the frozen
            file: a wrong file must not pass.
    """
    with _opened(frozen, check_crc=True) as pinned_file, \
            _opened(candidate, check_crc=True) as actual_file:
        pinned: list[tuple[Entry, dict[str, int]]] = []
        paths = set()
        for entry in pinned_file.entries:
            if entry.path in paths or not entry.has_pins:
                continue
            stored = pinned_file.stored(entry) or []
            counts = {s.name: _count_true(s.mask) for s in stored if s.mask is not None}
            if any(counts.values()):
                pinned.append((entry, counts))
                paths.add(entry.path)
        if not pinned:
            raise KerasurgeryError(
                f"{frozen}: FROZEN has no pinned entries: is it the frozen file?")
        actual: dict[str, Entry] = {}
        for entry in actual_file.entries:
            actual.setdefault(entry.path, entry)
        checked, violations = 0, []
        for entry, counts in pinned:
            want = pinned_file.read_layer(entry)
            other = actual.get(entry.path)
            have = None if other is None else actual_file.read_layer(other)
            names = list(want.weights)
            for name, count in counts.items():
                if not count:
                    continue
                checked += count
                row = {"layer": entry.path, "weight": name, "pinned": count}
                weight = want.weights[name]
                got = None if have is None else _same_weight(have, name, names.index(name))
                reason = None
                if other is None:
                    reason = "layer missing from CANDIDATE"
                elif got is None:
                    reason = f"no {name} in CANDIDATE"
                elif got.effective.shape != weight.mask.shape:
                    reason = (f"shape {list(got.effective.shape)} in CANDIDATE, "
                              f"{list(weight.mask.shape)} in FROZEN")
                if reason is not None:
                    violations.append({**row, "violations": count, "max_deviation": None,
                                       "reason": reason})
                    continue
                row_violation = _compare(weight.value[weight.mask], got.effective[weight.mask])
                if row_violation is not None:
                    violations.append({**row, **row_violation})
            del want, have
    return PinCheck(checked, violations)


def _same_weight(layer: LayerWeights, name: str, index: int) -> StoredWeight | None:
    """`layer`'s weight `name`; for a layer of unknown class stored by index, the
    weight at `index` (the position of `name` in the frozen layer)."""
    if name in layer.weights:
        return layer.weights[name]
    if layer.weights and all(key.isdigit() for key in layer.weights):
        return layer.weights.get(str(index))
    return None


def _compare(want: np.ndarray, got: np.ndarray) -> dict | None:
    wrong = ~_bit_equal(want, got)
    if not wrong.any():
        return None
    deviation = np.abs(got[wrong].astype(np.float64) - want[wrong].astype(np.float64))
    finite = deviation[np.isfinite(deviation)]
    # None, not NaN/inf, so that `verify --json` stays valid JSON.
    largest = float(finite.max()) if finite.size else None
    reason = "value changed"
    if finite.size < deviation.size:
        reason += " (some to NaN or infinity)"
    return {"violations": int(wrong.sum()), "max_deviation": largest, "reason": reason}


def _bit_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Entry by entry: the same bits (floats of one dtype: -0.0 is not 0.0, NaN
    payloads count); across float dtypes, the same number and sign."""
    if a.dtype == b.dtype and a.dtype.kind == "f":
        unsigned = np.dtype(f"u{a.dtype.itemsize}")
        return a.view(unsigned) == b.view(unsigned)
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return (a == b) & (np.signbit(a) == np.signbit(b))
    return a == b


def _dense_weights(layer: LayerWeights) -> DenseWeights:
    kernel, bias = layer.weights["kernel"], layer.weights.get(BIAS)
    return DenseWeights(
        layer.name, layer.class_name, kernel.effective,
        None if bias is None else bias.effective, kernel.mask,
        None if bias is None else bias.mask, kernel_value=kernel.value,
        bias_value=None if bias is None else bias.value, path=layer.path,
    )


@contextlib.contextmanager
def _opened(path: str | os.PathLike, *, check_crc: bool) -> Iterator[_ModelFile]:
    """Opens a model file and its pin record; a failure below becomes a one-line ModelFileError."""
    path = Path(path)
    try:
        with contextlib.ExitStack() as stack:
            opened = stack.enter_context(container.open_model_file(path, check_crc=check_crc))
            record = open_pin_record(opened, stack)
            yield _ModelFile(opened, record)
    except KerasurgeryError:
        raise
    except Exception as e:  # h5py on damaged data: the file is damaged.
        raise ModelFileError(f"{path}: cannot read the model: {one_line(e)}") from None


@dataclasses.dataclass(frozen=True)
class _Stored:
    """One weight's datasets: the weight, and its pin mask and value if pinned."""

    name: str
    dataset: h5py.Dataset
    mask: h5py.Dataset | None
    value: h5py.Dataset | None


class _ModelFile:
    """An open model file: its format, version, and layers with their weights."""

    def __init__(self, opened: formats.ModelFile, record: dict) -> None:
        self.path = opened.path
        self.format = opened.format
        self.keras_version = opened.keras_version
        self.entries = layer_entries(opened, record=record)
        self._agreed: set[str] = set()  # record layers whose stored weights hold their pins

    def error(self, message: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {message}")

    # Reading

    def layer_info(self, entry: Entry, count_zeros: bool) -> LayerInfo:
        stored = self.stored(entry)
        if stored is None:  # never built: no weights yet
            return LayerInfo(entry.name, entry.class_name, None, 0, 0, entry.path)
        main = _kernel_like(entry, stored)
        shape = tuple(int(n) for n in main[0].dataset.shape) if main else None
        pinned_kernel = sum(_count_true(s.mask) for s in stored
                            if s.mask is not None and s.name != BIAS)
        pinned_bias = sum(_count_true(s.mask) for s in stored
                          if s.mask is not None and s.name == BIAS)
        size = sum(int(s.dataset.size) for s in main)
        zeros = sum(_count_zeros(s, self.loader(entry, s.name)) for s in main) if count_zeros else None
        return LayerInfo(entry.name, entry.class_name, shape, pinned_kernel, pinned_bias,
                         entry.path, zeros, size)

    def read_layer(self, entry: Entry) -> LayerWeights | None:
        stored = self.stored(entry)
        if not stored:
            return None
        checked = {id(s) for s in _kernel_like(entry, stored)}
        pinnable = kinds.find(entry.class_name) is not None
        weights = {}
        for s in stored:
            array = np.asarray(s.dataset[()])
            if (pinnable or s.mask is not None or id(s) in checked) and not np.issubdtype(
                array.dtype, np.floating
            ):
                raise self.error(
                    f"layer {entry.path!r} has a {_dtype_name(s.dataset)} {s.name} "
                    "(quantized?); only floating-point kernels are supported."
                )
            array = self.loader(entry, s.name)(array)
            if s.mask is None:
                mask, effective = np.zeros(array.shape, bool), array
            else:
                mask = np.asarray(s.mask[()])
                value = np.asarray(s.value[()])
                # A pinned layer refuses to load these too, so no model can compute with them.
                if not np.all(np.isfinite(value)):
                    raise self.error(
                        f"layer {entry.path!r}: `{s.name}_pin_value` holds a non-finite value."
                    )
                value = self.loader(entry, f"{s.name}_pin_value")(value)
                effective = np.where(mask, value.astype(array.dtype), array)
            for a in (mask, effective):
                a.setflags(write=False)
            weights[s.name] = StoredWeight(s.name, effective, mask, effective)
        return LayerWeights(entry.path, entry.name, entry.class_name, weights)

    # Checking

    def stored(self, entry: Entry) -> list[_Stored] | None:
        """A layer's weights and pins, checked against its config; `None` if never built."""
        where = f"layer {entry.path!r} ({formats.shown(entry.class_name)})"
        if entry.uncertain is not None and entry.variables:
            raise self.error(
                f"layer {entry.path!r}: {entry.uncertain}; refused (load it with "
                "`kerasurgery.load_model`, or save it as `.keras`)."
            )
        config = entry.layer_config.get("config")
        config = config if isinstance(config, dict) else None
        kind = kinds.find(entry.class_name)
        variables = entry.variables
        if not variables and (entry.source != CONFIG or (
            self.format == KERAS and "build_config" not in entry.layer_config
        )):
            return None  # never built (or, only in the weights, a layer without weights)
        if entry.class_name in (DENSE, MASKED) and config is not None:
            self._check_dense(entry, config, where)
        elif kind is not None and config is not None and variables:
            required = kind.present(config)
            if kinds.is_pinned_class(entry.class_name) and not entry.pins_from_record:
                required = [n for w in required for n in (w, f"{w}_pin_mask", f"{w}_pin_value")]
            self._require(entry, required, where)
            self._check_shapes(entry, kind, config, where)
        stored = []
        lenient = kind is None and not entry.has_pins
        for name in entry.weights:
            dataset = variables[name]
            if dataset is None and lenient:
                continue  # not read: which of two layers it belongs to does not matter
            if dataset is None:
                raise self.error(f"{where}: the weight `{name}` is stored twice.")
            pins = [f"{name}_pin_mask", f"{name}_pin_value"]
            present = [p in variables for p in pins]
            if any(present) and not all(present):
                missing = pins[present.index(False)]
                raise self.error(f"{where}: the weight `{missing}` is missing.")
            if all(present):
                self._require(entry, pins, where)
                stored.append(_Stored(name, dataset, variables[pins[0]], variables[pins[1]]))
            else:
                stored.append(_Stored(name, dataset, None, None))
        names = {s.name for s in stored}
        for key in variables:
            if key.endswith("_pin_mask") and key[: -len("_pin_mask")] not in names:
                raise self.error(f"{where}: `{key}` pins no weight of the layer.")
        if any(s.mask is not None for s in stored):
            self._check_pins(entry, stored, config, where)
        if entry.pins_from_record and entry.path not in self._agreed:
            self._check_record(entry, stored)
            self._agreed.add(entry.path)
        return stored

    def loader(self, entry: Entry, name: str) -> Callable[[np.ndarray], np.ndarray]:
        """Turns a stored array of `entry` into what Keras loads (`layout.loaded_as`)."""
        def load(array: np.ndarray) -> np.ndarray:
            try:
                return loaded_as(array, entry.dtype, exact=entry.source == CONFIG)
            except ValueError as e:
                raise self.error(f"layer {entry.path!r}: `{name}` {e}; refused.") from None
        return load

    def _check_record(self, entry: Entry, stored: list[_Stored]) -> None:
        """Refuses a pin record whose pinned values the stored weights do not hold.

        Keras loads such a layer as a plain layer holding the stored weights,
        and `kerasurgery.load_model` pins it from the record only if those
        already hold the pinned values at the pins (bit for bit, in the
        layer's dtype): the same check, block by block."""
        for s in stored:
            if s.mask is None:
                continue
            load, load_value = self.loader(entry, s.name), self.loader(entry, f"{s.name}_pin_value")
            shared = load_value(np.asarray(s.value[()])) if s.value.ndim == 0 else None
            for index in _slabs(s.dataset.shape):
                block = load(np.asarray(s.dataset[index]))
                mask = np.asarray(s.mask[index])
                pinned = shared if shared is not None else load_value(np.asarray(s.value[index]))
                pinned = np.broadcast_to(np.asarray(pinned).astype(block.dtype), block.shape)
                if not _bit_equal(pinned[mask], block[mask]).all():
                    raise self.error(
                        f"layer {entry.path!r}: the stored `{s.name}` disagrees with its pinned "
                        f"values in the pin record ({formats.PIN_RECORD_MEMBER}); refused, as "
                        "`kerasurgery.load_model` refuses it."
                    )

    def _require(self, entry: Entry, names: Iterable[str], where: str) -> None:
        for name in names:
            if entry.variables.get(name) is None:
                problem = "is missing" if name not in entry.variables else "is stored twice"
                raise self.error(f"{where}: the weight `{name}` {problem}.")

    def _check_dense(self, entry: Entry, config: dict, where: str) -> None:
        """A Dense/MaskedDense layer's datasets against its config."""
        units = config.get("units")
        use_bias = config.get("use_bias", True)
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise self.error(f"{where} has no valid `units` in its config: {units!r}.")
        if not isinstance(use_bias, bool):
            raise self.error(f"{where} has an invalid `use_bias` in its config: {use_bias!r}.")
        variables = entry.variables
        names = ["kernel"] + (["bias"] if use_bias else [])
        if entry.class_name == MASKED and not entry.pins_from_record:
            names += [f"{w}_pin_{p}" for w in names for p in ("mask", "value")]
        self._require(entry, names, where)
        if not use_bias and "bias" in variables:
            raise self.error(f"{where} has a bias, but its config says `use_bias=False`.")
        kernel = variables["kernel"].shape
        expected_in = _input_dim(entry.layer_config)
        if len(kernel) != 2 or kernel[1] != units or expected_in not in (None, kernel[0]):
            expected = (expected_in if expected_in is not None else "?", units)
            raise self.error(
                f"{where}: the kernel's shape {kernel} disagrees with the config "
                f"(expected ({expected[0]}, {expected[1]}))."
            )
        if use_bias and variables["bias"].shape != (units,):
            raise self.error(
                f"{where}: the bias's shape {variables['bias'].shape} disagrees with the "
                f"config (expected ({units},))."
            )

    def _check_shapes(self, entry: Entry, kind: kinds.Kind, config: dict, where: str) -> None:
        """The shapes of a layer's weights against those its config builds
        (`guards.shapes`): the sizes the input decides only where the config
        says what input the layer was built on."""
        build = entry.layer_config.get("build_config")
        input_shape = build.get("input_shape") if isinstance(build, dict) else None
        expected = _shapes.config_shapes(kind.name, config, input_shape)
        if expected is None:
            return
        for name, want in zip(kind.saved(config), expected):
            dataset = entry.variables.get(name)
            if dataset is None:
                continue
            have = tuple(dataset.shape)
            if len(have) != len(want) or any(w is not None and h != w for h, w in zip(have, want)):
                shown = ", ".join("?" if w is None else str(w) for w in want)
                shown = f"({shown},)" if len(want) == 1 else f"({shown})"
                raise self.error(
                    f"{where}: the {name}'s shape {have} disagrees with the config "
                    f"(expected {shown})."
                )

    def _check_pins(self, entry: Entry, stored: list[_Stored], config: dict | None,
                    where: str) -> None:
        storage = {} if entry.pins_from_record else self._storage(config, where)
        for s in stored:
            if s.mask is None:
                continue
            shape = s.dataset.shape
            if s.mask.shape != shape or s.mask.dtype != np.bool_:
                raise self.error(
                    f"{where}: `{s.name}_pin_mask` must be boolean of shape {shape}; "
                    f"it is {s.mask.dtype} of shape {s.mask.shape}."
                )
            allowed = {_SHARED: [()], _PER_ENTRY: [shape]}.get(storage.get(s.name), [(), shape])
            if s.value.shape not in allowed or not np.issubdtype(s.value.dtype, np.floating):
                shapes = " or ".join(dict.fromkeys(str(a) for a in allowed))
                raise self.error(
                    f"{where}: `{s.name}_pin_value` must be floating point of shape "
                    f"{shapes}; it is {s.value.dtype} of shape {s.value.shape}."
                )

    def _storage(self, config: dict | None, where: str) -> dict[str, str]:
        """How the config says each weight's pinned values are stored; `{}`: not said."""
        if config is None:
            return {}
        storage = config.get("pin_storage")
        if storage is not None:
            if not isinstance(storage, dict) or any(
                not isinstance(k, str) or v not in (_SHARED, _PER_ENTRY) for k, v in storage.items()
            ):
                raise self.error(f"{where} has an invalid `pin_storage`: {storage!r}.")
            return dict(storage)
        if "pinned_kernel_values" in config:  # kerasurgery 0.1.0: the bias is per entry
            kernel = config["pinned_kernel_values"]
            if kernel not in (_SHARED, _PER_ENTRY):
                raise self.error(f"{where} has an invalid `pinned_kernel_values`: {kernel!r}.")
            return {"kernel": kernel, BIAS: _PER_ENTRY}
        return {}


def _kernel_like(entry: Entry, stored: list[_Stored]) -> list[_Stored]:
    """The weights that count as the layer's kernel: all but the bias for a
    pinnable kind; else the kernel-named ones, the pinned ones, or a first
    stored weight with two or more axes."""
    kind = kinds.find(entry.class_name)
    if kind is not None:
        return [s for s in stored if s.name != BIAS and s.name not in kind.state]
    named = [s for s in stored if s.name in _KERNEL_LIKE]
    if named:
        return named
    pinned = [s for s in stored if s.mask is not None and s.name != BIAS]
    if pinned:
        return pinned
    if stored and stored[0].name == "0" and stored[0].dataset.ndim >= 2:
        return [stored[0]]
    return []


def _input_dim(layer_config: dict) -> int | None:
    build = layer_config.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if isinstance(shape, list) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


def _dtype_name(dataset: h5py.Dataset) -> str:
    if formats.h5_text(dataset.attrs.get("dtype")) == "bfloat16":
        return "bfloat16"
    return str(dataset.dtype)


def _slabs(shape: tuple[int, ...], limit: int | None = None) -> Iterator[tuple]:
    """Index tuples that cover a dataset of `shape` in blocks of at most `limit`
    entries (`_COUNT_BLOCK`), whatever its shape: a block is never read whole
    just because one axis is short."""
    limit = _COUNT_BLOCK if limit is None else limit
    if not shape:
        yield ()
        return
    inner = math.prod(shape[1:])
    if inner <= limit:
        step = max(1, limit // max(inner, 1))
        for start in range(0, shape[0], step):
            yield (slice(start, min(start + step, shape[0])),)
        return
    for i in range(shape[0]):
        for rest in _slabs(shape[1:], limit):
            yield (slice(i, i + 1), *rest)


def _count_true(dataset: h5py.Dataset) -> int:
    """Counts True entries block by block: a mask is never read whole."""
    if dataset.size == 0:
        return 0
    return sum(int(np.count_nonzero(dataset[index])) for index in _slabs(dataset.shape))


def _count_zeros(stored: _Stored, load: Callable[[np.ndarray], np.ndarray]) -> int:
    """Counts the exact zeros of an effective weight block by block, as Keras loads it."""
    dataset = stored.dataset
    bfloat16 = _dtype_name(dataset) == "bfloat16" and dataset.dtype.itemsize == 2
    if dataset.size == 0 or not (bfloat16 or dataset.dtype.kind in "biufc"):
        return 0
    mask, value = stored.mask, stored.value
    shared = None
    if mask is not None and value.ndim == 0:
        shared = np.asarray(value[()])
    total = 0
    for index in _slabs(dataset.shape):
        block = np.asarray(dataset[index])
        if not bfloat16:
            block = load(block)
        if mask is not None:
            pinned = shared if shared is not None else np.asarray(value[index])
            if pinned.dtype == block.dtype or not bfloat16:
                block = np.where(np.asarray(mask[index]), pinned.astype(block.dtype), block)
        if bfloat16:
            total += int(np.count_nonzero((block.view(np.uint16) & 0x7FFF) == 0))
        else:
            total += int(np.count_nonzero(block == 0))
    return total
