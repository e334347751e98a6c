"""Reading a saved model file without TensorFlow or Keras: layers, shapes, pins.

`inspect_file` lists every layer of a `.keras` or `.h5` file (Keras 3 or
Keras 2) with its kernel shape and pinned counts; `read_dense_weights` returns
the effective weights and pins of every `Dense` and `MaskedDense` layer;
`check_pins` compares the pins of a frozen file with another file (`verify`).
They read the model config (json) and only the weights they need (h5py), so
they answer in a fraction of a second where importing TensorFlow takes seconds.

Keras requires a layer name to be unique within one model only, so a nested
model may hold a `dense` while the outer model holds another. A layer is
therefore identified by its path: its name for a layer of the top-level model,
`outer/inner/name` for a layer inside nested models (Keras' layer names cannot
contain "/"). Where each format keeps a layer's weights is `_layout`'s part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from kerasurgery import formats
from kerasurgery._layout import DENSE, MASKED, Entry, layer_entries
from kerasurgery.errors import KerasurgeryError, ModelFileError, one_line
from kerasurgery.formats import KERAS
_MASKED_NAMES = ("kernel_pin_mask", "kernel_pin_value", "bias_pin_mask", "bias_pin_value")
# Mask entries read at once when counting, so counting a huge mask stays
# within a few tens of MB of memory.
_COUNT_BLOCK = 1 << 24


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a saved model, as `inspect_file` reports it.

    `path` identifies the layer in the file: its name for a layer of the
    top-level model (the default), `model/.../name` inside nested models.
    """

    name: str
    class_name: str
    kernel_shape: tuple[int, ...] | None
    pinned_kernel: int
    pinned_bias: int
    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", self.name)

    @property
    def pinned(self) -> int:
        """Pinned entries of the kernel and the bias together."""
        return self.pinned_kernel + self.pinned_bias


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What `inspect_file` found in a model file."""

    file: str
    format: str
    keras_version: str | None
    layers: list[LayerInfo]

    def to_json(self) -> dict:
        """The object `kerasurgery inspect --json` prints."""
        return {
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
                }
                for layer in self.layers
            ],
        }


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


def inspect_file(path: str | os.PathLike) -> FileInfo:
    """Lists the layers of a `.keras` or `.h5` model file, without TensorFlow.

    Reads the model config and, of the weights, only their shapes and the pin
    masks of `MaskedDense` layers.

    Args:
        path: A model file written by Keras 3 (`.keras`, `.h5`) or Keras 2 (`.h5`).

    Returns:
        A `FileInfo` with every layer in model order, nested models flattened
        (each nested model listed before its layers, which have paths
        `model/name`).

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
        layers = [model.layer_info(entry) for entry in model.entries]
        return FileInfo(str(path), model.format, model.keras_version, layers)


def read_dense_weights(path: str | os.PathLike) -> dict[str, DenseWeights]:
    """Reads the effective weights and pins of every Dense and MaskedDense layer.

    Returns:
        `DenseWeights` by layer path (see `LayerInfo`), in model order: a
        layer of the top-level model under its name, a layer inside nested
        models under `model/.../name`, so equal names in different models
        are told apart.

    Raises:
        ModelFileError: as `inspect_file`; also for non-float (quantized)
            kernels, non-finite pin values, and a `.keras` archive whose
            weights fail their CRC check (Keras refuses those too).
    """
    with _opened(path, check_crc=True) as model:
        weights: dict[str, DenseWeights] = {}
        for entry in model.entries:
            if entry.class_name in (DENSE, MASKED) and entry.path not in weights:
                dense = model.dense_weights(entry)
                if dense is not None:
                    weights[entry.path] = dense
        return weights


@dataclasses.dataclass(frozen=True)
class PinCheck:
    """What `check_pins` found.

    Attributes:
        checked: Pinned entries of the frozen file that were compared.
        violations: One row per layer and weight where pins do not hold:
            `{"layer": path, "weight": "kernel" | "bias", "pinned": n,
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

    Layers are matched by path: equal names in different nested models are
    different layers, and freeze and strip keep the nesting. `candidate` may
    be masked or stripped, `.keras` or `.h5`.

    Args:
        candidate: The model file to check (fine-tuned, stripped, ...).
        frozen: The frozen model file whose pins must hold.

    Returns:
        A `PinCheck`; `.ok` when no pinned entry changed.

    Raises:
        ModelFileError: either file cannot be read (as `read_dense_weights`).
        KerasurgeryError: `frozen` pins nothing, so it cannot be the frozen
            file: a wrong file must not pass.
    """
    pinned = read_dense_weights(frozen)
    actual = read_dense_weights(candidate)
    if not any(w.kernel_mask.any() or (w.bias_mask is not None and w.bias_mask.any())
               for w in pinned.values()):
        raise KerasurgeryError(f"{frozen}: FROZEN has no pinned entries: is it the frozen file?")
    checked, violations = 0, []
    for path, layer in pinned.items():
        for which in ("kernel", "bias"):
            mask = getattr(layer, f"{which}_mask")
            if mask is None or not mask.any():
                continue
            count = int(mask.sum())
            checked += count
            row = {"layer": path, "weight": which, "pinned": count}
            other = actual.get(path)
            have = None if other is None else getattr(other, which)
            reason = None
            if other is None:
                reason = "layer missing from CANDIDATE"
            elif have is None:
                reason = "no bias in CANDIDATE"
            elif have.shape != mask.shape:
                reason = f"shape {list(have.shape)} in CANDIDATE, {list(mask.shape)} in FROZEN"
            if reason is not None:
                violations.append({**row, "violations": count, "max_deviation": None,
                                   "reason": reason})
                continue
            want, got = getattr(layer, f"{which}_value")[mask], have[mask]
            wrong = ~_bit_equal(want, got)
            if wrong.any():
                deviation = np.abs(got[wrong].astype(np.float64) - want[wrong].astype(np.float64))
                finite = deviation[np.isfinite(deviation)]
                # None, not NaN/inf, so that `verify --json` stays valid JSON.
                largest = float(finite.max()) if finite.size else None
                reason = "value changed"
                if finite.size < deviation.size:
                    reason += " (some to NaN or infinity)"
                violations.append({**row, "violations": int(wrong.sum()),
                                   "max_deviation": largest, "reason": reason})
    return PinCheck(checked, violations)


def _bit_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype == b.dtype and a.dtype.kind == "f":
        unsigned = np.dtype(f"u{a.dtype.itemsize}")
        return a.view(unsigned) == b.view(unsigned)
    return a == b


@contextlib.contextmanager
def _opened(path: str | os.PathLike, *, check_crc: bool) -> Iterator[_ModelFile]:
    """Opens a model file; any failure below becomes a one-line ModelFileError."""
    path = Path(path)
    try:
        with formats.open_model_file(path, check_crc=check_crc) as opened:
            yield _ModelFile(opened)
    except ModelFileError:
        raise
    except Exception as e:  # h5py on damaged data: the file is damaged.
        raise ModelFileError(f"{path}: cannot read the model: {one_line(e)}") from None


class _ModelFile:
    """An open model file: its format, version, and config layers with their weights."""

    def __init__(self, opened: formats.ModelFile) -> None:
        self.path = opened.path
        self.format = opened.format
        self.keras_version = opened.keras_version
        self.entries = layer_entries(opened)

    def error(self, message: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {message}")

    # Reading

    def layer_info(self, entry: Entry) -> LayerInfo:
        if entry.class_name not in (DENSE, MASKED):
            kernel = entry.variables.get("kernel")
            shape = None if kernel is None else tuple(int(n) for n in kernel.shape)
            return LayerInfo(entry.name, entry.class_name, shape, 0, 0, entry.path)
        variables = self._dense_variables(entry)
        if variables is None:  # never built: no weights yet
            return LayerInfo(entry.name, entry.class_name, None, 0, 0, entry.path)
        shape = tuple(int(n) for n in variables["kernel"].shape)
        pinned_kernel = pinned_bias = 0
        if entry.class_name == MASKED:
            pinned_kernel = _count_true(variables["kernel_pin_mask"])
            if "bias_pin_mask" in variables:
                pinned_bias = _count_true(variables["bias_pin_mask"])
        return LayerInfo(
            entry.name, entry.class_name, shape, pinned_kernel, pinned_bias, entry.path
        )

    def dense_weights(self, entry: Entry) -> DenseWeights | None:
        variables = self._dense_variables(entry)
        if variables is None:
            return None
        kernel = variables["kernel"][()]
        if not np.issubdtype(kernel.dtype, np.floating):
            raise self.error(
                f"layer {entry.path!r} has a {kernel.dtype} kernel (quantized?); "
                "only floating-point kernels are supported."
            )
        bias = variables["bias"][()] if "bias" in variables else None
        kernel_mask = np.zeros(kernel.shape, bool)
        bias_mask = None if bias is None else np.zeros(bias.shape, bool)
        if entry.class_name == MASKED:
            kernel_mask = variables["kernel_pin_mask"][()]
            kernel = np.where(kernel_mask, self._pin_value(entry, variables, "kernel"), kernel)
            if bias is not None:
                bias_mask = variables["bias_pin_mask"][()]
                bias = np.where(bias_mask, self._pin_value(entry, variables, "bias"), bias)
        arrays = [kernel, bias, kernel_mask, bias_mask]
        for array in arrays:
            if array is not None:
                array.setflags(write=False)
        return DenseWeights(entry.name, entry.class_name, kernel, bias, kernel_mask, bias_mask,
                            kernel_value=kernel, bias_value=bias, path=entry.path)

    def _pin_value(self, entry: Entry, variables: dict, which: str) -> np.ndarray:
        value = variables[f"{which}_pin_value"][()]
        # MaskedDense refuses to load these too, so no model can compute with them.
        if not np.all(np.isfinite(value)):
            raise self.error(
                f"layer {entry.path!r}: `{which}_pin_value` holds a non-finite value."
            )
        return value.astype(variables[which].dtype)

    def _dense_variables(self, entry: Entry) -> dict[str, h5py.Dataset] | None:
        """The datasets of a Dense/MaskedDense layer, checked against its config."""
        where = f"layer {entry.path!r} ({entry.class_name})"
        config = entry.layer_config.get("config")
        units = config.get("units") if isinstance(config, dict) else None
        use_bias = config.get("use_bias", True) if isinstance(config, dict) else None
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise self.error(f"{where} has no valid `units` in its config: {units!r}.")
        if not isinstance(use_bias, bool):
            raise self.error(f"{where} has an invalid `use_bias` in its config: {use_bias!r}.")
        variables = entry.variables
        if not variables and "build_config" not in entry.layer_config and self.format == KERAS:
            return None
        names = ["kernel"] + (["bias"] if use_bias else [])
        if entry.class_name == MASKED:
            names += [n for n in _MASKED_NAMES if use_bias or not n.startswith("bias")]
        found = {}
        for name in names:
            dataset = variables.get(name)
            if dataset is None:
                problem = "is missing" if name not in variables else "is stored twice"
                raise self.error(f"{where}: the weight `{name}` {problem}.")
            found[name] = dataset
        if not use_bias and "bias" in variables:
            raise self.error(f"{where} has a bias, but its config says `use_bias=False`.")
        kernel = found["kernel"].shape
        expected_in = _input_dim(entry.layer_config)
        if len(kernel) != 2 or kernel[1] != units or expected_in not in (None, kernel[0]):
            expected = (expected_in if expected_in is not None else "?", units)
            raise self.error(
                f"{where}: the kernel's shape {kernel} disagrees with the config "
                f"(expected ({expected[0]}, {expected[1]}))."
            )
        if use_bias and found["bias"].shape != (units,):
            raise self.error(
                f"{where}: the bias's shape {found['bias'].shape} disagrees with the "
                f"config (expected ({units},))."
            )
        if entry.class_name == MASKED:
            self._check_pins(found, config, where)
        return found

    def _check_pins(self, found: dict, config: dict, where: str) -> None:
        storage = config.get("pinned_kernel_values", "shared")
        value_shapes = {"shared": [()], "per_entry": [found["kernel"].shape]}.get(storage)
        if value_shapes is None:
            raise self.error(f"{where} has an invalid `pinned_kernel_values`: {storage!r}.")
        for which in ("kernel", "bias"):
            if which not in found:
                continue
            shape = found[which].shape
            mask, value = found[f"{which}_pin_mask"], found[f"{which}_pin_value"]
            if mask.shape != shape or mask.dtype != np.bool_:
                raise self.error(
                    f"{where}: `{which}_pin_mask` must be boolean of shape {shape}; "
                    f"it is {mask.dtype} of shape {mask.shape}."
                )
            allowed = value_shapes if which == "kernel" else [shape]
            if value.shape not in allowed or not np.issubdtype(value.dtype, np.floating):
                raise self.error(
                    f"{where}: `{which}_pin_value` must be floating point of shape "
                    f"{allowed[0]}; it is {value.dtype} of shape {value.shape}."
                )


def _input_dim(layer_config: dict) -> int | None:
    build = layer_config.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if isinstance(shape, list) and shape and isinstance(shape[-1], int):
        return shape[-1]
    return None


def _count_true(dataset: h5py.Dataset) -> int:
    """Counts True entries block by block: a mask is never read whole."""
    if dataset.ndim == 0:
        return int(bool(dataset[()]))
    if dataset.size == 0:
        return 0
    rows = dataset.shape[0]
    step = max(1, _COUNT_BLOCK // max(1, dataset.size // rows))
    return sum(int(np.count_nonzero(dataset[i : i + step])) for i in range(0, rows, step))
