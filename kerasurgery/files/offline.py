"""`freeze` and `strip` of a Keras 3 `.keras` file without TensorFlow, Keras, JAX or torch.

A `.keras` file is a zip of `config.json`, `metadata.json` and the HDF5
`model.weights.h5`. Freezing it is a rewrite of the config (a pinned layer's
class, module, registered name and `pin_storage`) and of the weights: each
pinned layer's group is renamed as Keras' saver names it (`layers/dense_1`
becomes `layers/masked_dense`, and the numbering of its siblings follows),
its `0`, `1`, ... datasets become the named effective weights with their
`*_pin_mask` / `*_pin_value` datasets, and every other dataset is copied
as it is, one at a time. The optimizer's state is reset as a fresh optimizer
of the same configuration holds it, since `kerasurgery.freeze` compiles the
copy afresh. What the pins are (selection, rules, merging, storage) is
`_plan`'s, the same code the Keras path runs, so both write the same model.
What each layer kind is (weights, axes, pinned class) is `kerasurgery.kinds`'.
Pinned layers written by earlier versions (kerasurgery 0.1.0's
`pinned_kernel_values`, the development versions' module
`kerasurgery.layers._classes`) are rewritten as the Keras path saves them again.

Only files whose every part is understood here are rewritten: Sequential and
Functional models (nested ones too) of built-in Keras layers, written by the
installed Keras' minor version. Anything else (custom or subclassed layers,
layers that hold other layers, a pin record, LoRA, quantization, an optimizer
or loss this module does not know) raises `NotOffline`, and the caller takes
the Keras path. This module never imports TensorFlow, Keras, JAX or torch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kerasurgery import _plan, kinds
from kerasurgery.guards import shapes as _shapes
from kerasurgery.files import container as _container, formats
from kerasurgery.files import layout, order
from kerasurgery.files.atomic import atomic_path
from kerasurgery.files.zipwrite import CheckedMember, ZipWriter, member_start
from kerasurgery.errors import KerasurgeryError, ModelFileError, PinError, one_line
from kerasurgery.kinds import KINDS, MODEL_CLASSES as _MODELS, MODEL_MODULES as _MODEL_MODULES
from kerasurgery.pins import SHARED, saved_storage

_CONFIG = formats.CONFIG_MEMBER
_METADATA = formats.METADATA_MEMBER
_WEIGHTS = formats.WEIGHTS_MEMBER
_MEMBERS = (_METADATA, _CONFIG, _WEIGHTS)

# Built-in layers that hold no other layer and whose weights nothing here
# changes: their groups are copied as they are.
_PLAIN = _shapes.WEIGHTLESS | {"BatchNormalization", "LayerNormalization", "GroupNormalization", "PReLU"}
_POLICIES = ("DTypePolicy", "FloatDTypePolicy")
# Optimizers whose fresh state is known: iterations 0, the learning rate of
# the config, every slot at its initializer's value.
_OPTIMIZERS = frozenset({"Adam", "AdamW", "SGD", "RMSprop", "Adamax", "Nadam", "Adagrad", "Lion"})
_LOSSES = frozenset({
    "mse", "mae", "mape", "msle", "mean_squared_error", "mean_absolute_error",
    "mean_absolute_percentage_error", "mean_squared_logarithmic_error",
    "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
    "hinge", "squared_hinge", "categorical_hinge", "huber", "log_cosh", "kl_divergence",
    "poisson", "cosine_similarity", "accuracy", "acc", "binary_accuracy",
    "categorical_accuracy", "sparse_categorical_accuracy", "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
})


class NotOffline(Exception):
    """The input needs Keras to be rewritten; `str(e)` says why. The caller takes the Keras path."""


@dataclasses.dataclass
class Written:
    """What the offline path wrote: the rows `freeze`/`strip` report, and whether a training config was kept."""

    rows: list[dict[str, Any]]
    compiled: bool


@dataclasses.dataclass
class _Layer:
    path: str
    name: str
    entry: dict  # the layer's entry in config.json (rewritten in place)
    kind: str | None  # the pinnable Keras class, or None
    source: str  # its group in the input's weights
    target: str = ""  # its group in the output's weights
    weights: tuple[str, ...] = ()  # present pinnable weights, in Keras' order
    state: tuple[str, ...] = ()  # weights saved after them, never pinned (moving statistics)
    pinned: bool = False  # pinned in the input

    @property
    def class_name(self) -> str:
        return self.entry["class_name"]


def offline_reason(source: Path, output: Path, *, unsafe: bool) -> str | None:
    """Why the command must take the Keras path, or `None` when the offline path may try."""
    if unsafe:
        return "--unsafe loads the file with Keras"
    if formats.format_for_suffix(output) != formats.KERAS:
        return "the output is .h5"
    if formats.detect_format(source) != formats.KERAS:
        return "the input is .h5"
    return None


def freeze_file(source: Path, output: Path, pins: Mapping[str, Any], *, overwrite: bool,
                exclude: Sequence[str] = ()) -> Written:
    """Freezes the `.keras` file `source` into `output` as `kerasurgery.freeze` + `save_model` would.

    Raises:
        NotOffline: the file holds something only Keras can rewrite.
        KerasurgeryError: the same errors as the Keras path (no supported
            layer, a key that selects nothing, a mask that does not fit).
    """
    try:
        return _freeze_file(source, output, pins, overwrite, exclude, plan_first=False)
    except _Relayout:
        pass
    # A glob skips a whole layer, which then keeps its class, and so the name
    # of its group: settle every skip first (each layer is planned twice).
    return _freeze_file(source, output, pins, overwrite, exclude, plan_first=True)


class _Relayout(Exception):
    """A layer already written as pinned turned out to be skipped whole."""


def _freeze_file(source: Path, output: Path, pins: Mapping[str, Any], overwrite: bool,
                 exclude: Sequence[str], *, plan_first: bool) -> Written:
    with _Archive(source) as archive:
        layers = archive.layers
        pinnable = {layer.path: layer for layer in layers if layer.kind is not None}
        if not pinnable:
            raise KerasurgeryError(
                f"{source}: the model has no layer of a supported kind to freeze "
                f"({', '.join(_supported())})."
            )
        supported = _supported()
        aliases = {path: (layer.name, layer.name) for path, layer in pinnable.items()}
        others = {layer.path: (layer.name, layer.class_name) for layer in layers}
        listing = _plan.listing(archive.model_name, list(pinnable), supported)
        planner = _plan.Planner(
            pins, lambda key: _plan.select(key, aliases, others, supported, listing), exclude=exclude,
            normalizations=[path for path, layer in pinnable.items() if KINDS[layer.kind].normalization],
        )
        planner.rank_across(lambda path: archive.plan_of(pinnable[path]),
                            lambda path: pinnable[path].name)
        if plan_first:
            planner.check(lambda path: archive.plan_of(pinnable[path]),
                          lambda path: _axes(pinnable[path]), lambda path: pinnable[path].name)
        for path in planner.paths:
            _pinned_config(pinnable[path])
        # The group keys follow the new classes; then every layer is written.
        archive.assign_targets()
        counts: dict[str, dict[str, int]] = {}

        def write_pinned(layer: _Layer, group: h5py.Group) -> None:
            plan = planner.apply(layer.path, archive.plan_of(layer), _axes(layer), layer.name)
            if planner.skips_whole(layer.path):
                raise _Relayout
            state = plan.state()
            layer.entry["config"]["pin_storage"] = dict(plan.storage())
            _write_state(group, layer, state)
            archive.copy_state(layer, group, named=True)
            counts[layer.path] = {
                "kernel": sum(int(np.count_nonzero(s.mask)) for w, s in state.items() if w != "bias"),
                "bias": int(np.count_nonzero(state["bias"].mask)) if "bias" in state else 0,
            }

        with atomic_path(output, overwrite) as target:
            # In the order the layers were selected, as `freeze` plans them.
            archive.write(target, {p: write_pinned for p in planner.paths}, planner.paths)
            planner.settle()  # a glob that fits none of its layers: nothing is written
        planner.report()
        rows = [archive.row(layer, counts.get(layer.path)) for layer in layers if layer.kind is not None]
        return Written(rows, archive.compiled)


def strip_file(source: Path, output: Path, *, overwrite: bool, keep_optimizer: bool = False) -> Written:
    """Strips the `.keras` file `source` into `output` as `kerasurgery.strip` + `save_model` would.

    Without `keep_optimizer` the output holds no training config and no
    optimizer state, as `kerasurgery.strip` leaves a model uncompiled.

    Raises:
        NotOffline: the file holds something only Keras can rewrite.
        KerasurgeryError: the file has no pinned layer.
    """
    with _Archive(source) as archive:
        pinned = [layer for layer in archive.layers if layer.pinned]
        if not pinned:
            raise KerasurgeryError(
                f"{source}: the model has no pinned layer; there is nothing to strip."
            )
        rows = [archive.row(layer) for layer in pinned]
        for layer in pinned:
            _plain_config(layer)
        if not keep_optimizer:
            archive.drop_training()
        archive.assign_targets()

        def write_plain(layer: _Layer, group: h5py.Group) -> None:
            for i, weight in enumerate(layer.weights):
                group.create_dataset(str(i), data=archive.effective(layer, weight)[0])
            archive.copy_state(layer, group, named=False)

        with atomic_path(output, overwrite) as target:
            archive.write(target, {layer.path: write_plain for layer in pinned},
                          [layer.path for layer in pinned])
        return Written(rows, archive.compiled)


# --- the input ---------------------------------------------------------------


class _Archive:
    """An open input file: its checked container, config, layers and weights."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        self.new_slots: list[np.ndarray] = []
        self.member: CheckedMember | None = None
        self.dropped: set[str] = set()  # weight groups left out of the output

    def __enter__(self) -> _Archive:
        try:
            self._open()
        except (NotOffline, KerasurgeryError):
            self._stack.close()
            raise
        except Exception as e:  # something this reader does not expect: Keras decides
            self._stack.close()
            raise NotOffline(f"the file is not laid out as expected ({one_line(e)})") from None
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _open(self) -> None:
        with zipfile.ZipFile(self.path) as archive:
            info = archive.getinfo(_WEIGHTS) if _WEIGHTS in archive.namelist() else None
        start = None
        if info is not None and info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
            start = member_start(self.path, info.header_offset)
        # The weights' CRC is checked from the reads that copy them (`verify`),
        # not by a pass of its own; the other members' when they are read.
        opened = self._opened(check_crc=start is None)
        extra = sorted(set(opened.members) - set(_MEMBERS))
        if extra:
            raise NotOffline(f"the archive holds {extra[0]!r}")
        if opened.weights is None:
            raise NotOffline("the archive has no model.weights.h5")
        _check_version(opened.keras_version)
        self.metadata = None
        if _METADATA in opened.members:
            with zipfile.ZipFile(self.path) as archive:
                self.metadata = archive.read(_METADATA)
        self.h5 = opened.weights
        if start is not None:
            self.member = self._stack.enter_context(
                contextlib.closing(CheckedMember(self.path, start, info.file_size, info.CRC))
            )
            self.h5 = self._stack.enter_context(h5py.File(self.member, "r"))
        # Which group Keras loads each layer from: the one reading of the file
        # that `inspect` and `verify` make too (it refuses a group Keras would
        # load into another layer than its recorded name says).
        self.groups = {entry.path: entry.group for entry in layout.layer_entries(opened)
                       if entry.source == layout.CONFIG and entry.group}
        self.config = copy.deepcopy(opened.config)
        _drop_policy_sharing(self.config)
        self.model_name = str(self.config.get("config", {}).get("name", ""))
        self.layers: list[_Layer] = []
        self._models: list[tuple[str, list[_Layer]]] = []  # (group, layers in container order)
        self._walk(self.config, "", "", 0)
        self.compiled = self._check_training()

    def _opened(self, *, check_crc: bool) -> formats.ModelFile:
        """The checked container; a file the checks refuse gets the error the CRC check gives first."""
        try:
            return self._stack.enter_context(_container.open_model_file(self.path, formats.KERAS, check_crc=check_crc))
        except KerasurgeryError:
            if not check_crc:
                with _container.open_model_file(self.path, formats.KERAS, check_crc=True):
                    pass
            raise

    def verify(self) -> None:
        """Refuses the input, as the Keras path does before loading it, if its weights' CRC-32 is wrong."""
        if self.member is not None and not self.member.verify():
            raise ModelFileError(
                f"{self.path}: is a damaged archive: the checksum of {_WEIGHTS!r} "
                "does not match its contents."
            )

    # The model tree, as Keras' saver lays it out.

    def _walk(self, model: dict, group: str, prefix: str, depth: int) -> None:
        class_name = model.get("class_name")
        if class_name not in _MODELS or model.get("module") not in _MODEL_MODULES or model.get(
            "registered_name") not in (None, class_name):
            where = f"model {prefix[:-1]!r}" if prefix else "the model"
            raise NotOffline(f"{where} is a {class_name!r} ({model.get('module')!r}), not a "
                             "Sequential or Functional model")
        if depth > 32:
            raise NotOffline("models nest too deeply")
        inner = model.get("config")
        entries = inner.get("layers") if isinstance(inner, dict) else None
        if not isinstance(entries, list):
            raise NotOffline("the model config lists no layers")
        container: list[_Layer] = []
        names = set()
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
                raise NotOffline("a layer config is malformed")
            cls = entry.get("class_name")
            name = entry["config"].get("name")
            if not isinstance(name, str) or not isinstance(cls, str) or name in names:
                raise NotOffline("a layer has no name or shares its name")
            names.add(name)
            if class_name == "Sequential" and cls == "InputLayer":
                continue  # not one of `Sequential.layers`
            path = prefix + name
            kind = _kind(entry, path)
            layer = _Layer(path, name, entry, kind, "", pinned=kind is not None and cls != kind)
            container.append(layer)
        self._models.append((group, container))
        for layer in container:
            layer.source = (self.groups.get(layer.path) or "").strip("/")
            node = self.h5.get(layer.source) if layer.source else None
            vars_group = node.get("vars") if isinstance(node, h5py.Group) else None
            # A group without the layer's recorded name comes from another Keras.
            if not isinstance(vars_group, h5py.Group) or formats.h5_text(
                vars_group.attrs.get("name")
            ) != layer.name:
                raise NotOffline(f"the weights of layer {layer.path!r} are not where Keras' saver puts them")
            self.layers.append(layer)
            if layer.class_name in _MODELS:
                self._walk(layer.entry, layer.source, layer.path + "/", depth + 1)
                continue
            if layer.kind is not None:
                self._check_pinnable(layer, node)
            _check_sizes(layer, vars_group)

    def _check_pinnable(self, layer: _Layer, group: h5py.Group) -> None:
        config = layer.entry["config"]
        if "build_config" not in layer.entry:
            raise NotOffline(f"layer {layer.path!r} is not built")
        for key in ("lora_rank", "quantization_config"):
            if config.get(key) is not None:
                raise NotOffline(f"layer {layer.path!r} sets `{key}`")
        dtype = config.get("dtype")
        if isinstance(dtype, dict) and dtype.get("class_name") not in _POLICIES:
            raise NotOffline(f"layer {layer.path!r} has the dtype policy {dtype.get('class_name')}")
        if set(group) != {"vars"}:
            raise NotOffline(f"layer {layer.path!r} holds more than its variables")
        kind = KINDS[layer.kind]
        if any(config.get(key) for key in kind.refused):
            raise NotOffline(f"layer {layer.path!r} sets `{kind.refused[0]}`")
        layer.weights, layer.state = tuple(kind.present(config)), kind.state
        stored = set(group["vars"])
        if layer.pinned:
            expected = {k for w in layer.weights for k in (w, f"{w}_pin_mask", f"{w}_pin_value")}
            expected |= set(layer.state)
            storage = saved_storage(config, layer.weights)
            if storage is None or not set(config.get("pin_storage") or {}) <= set(kind.weights):
                raise NotOffline(f"layer {layer.path!r} has an unexpected `pin_storage`")
            _saved_as_today(layer.entry, storage)
        else:
            expected = {str(i) for i in range(len(layer.weights) + len(layer.state))}
        if stored != expected:
            raise NotOffline(f"layer {layer.path!r} stores {sorted(stored)}")
        if layer.pinned:
            vars_group = group["vars"]
            for w in layer.weights:
                shape = vars_group[w].shape
                value = vars_group[f"{w}_pin_value"].shape
                if vars_group[f"{w}_pin_mask"].shape != shape or value != (
                    () if config["pin_storage"][w] == SHARED else shape
                ):
                    raise NotOffline(f"layer {layer.path!r}: the pins of `{w}` do not fit it")
        variables = layout.variable_dtype(layer.entry)
        for key in stored:
            dataset = group["vars"][key]
            if not isinstance(dataset, h5py.Dataset) or "dtype" in dataset.attrs:
                raise NotOffline(f"layer {layer.path!r} stores `{key}` in a form Keras reads itself")
            if dataset.dtype.kind not in ("b" if key.endswith("_pin_mask") else "f"):
                raise NotOffline(f"layer {layer.path!r} stores `{key}` as {dataset.dtype}")
            # Keras casts a weight to its variable's dtype (float64 to float32,
            # big-endian to native) before a rule sees it: only Keras casts.
            if dataset.dtype.kind == "f" and (
                    variables not in ("float16", "float32", "float64") or dataset.dtype != np.dtype(variables)):
                raise NotOffline(f"layer {layer.path!r} stores `{key}` as {dataset.dtype}, "
                                 f"which Keras casts to its {variables} variable")

    def _check_training(self) -> bool:
        """Whether a training config is kept; refuses what a fresh compile might change."""
        compile_config = self.config.get("compile_config")
        optimizer_group = self.h5.get("optimizer")
        if not compile_config:
            if optimizer_group is not None:
                raise NotOffline("the weights hold an optimizer but the config no training config")
            return False
        if not isinstance(compile_config, dict):
            raise NotOffline("the training config is malformed")
        for key, value in compile_config.items():
            if key != "optimizer" and not _known_objects(value):
                raise NotOffline(f"the training config's `{key}` needs Keras to read")
        optimizer = compile_config.get("optimizer")
        if not isinstance(optimizer, dict) or optimizer.get("module") != "keras.optimizers" or (
            optimizer.get("class_name") not in _OPTIMIZERS or optimizer.get("registered_name") is not None
        ):
            raise NotOffline("the optimizer is not one whose fresh state is known here")
        config = optimizer.get("config") or {}
        if config.get("gradient_accumulation_steps") or config.get("loss_scale_factor"):
            raise NotOffline("the optimizer accumulates gradients or scales the loss")
        self.optimizer = optimizer
        if not isinstance(optimizer_group, h5py.Group) or not isinstance(optimizer_group.get("vars"), h5py.Group):
            raise NotOffline("the optimizer has no stored state")
        stored = optimizer_group["vars"]
        keys = sorted(stored, key=lambda k: int(k) if k.isdigit() else -1)
        if keys != [str(i) for i in range(len(keys))] or set(optimizer_group) != {"vars"}:
            raise NotOffline("the optimizer's state is not laid out as expected")
        base = 2 if _is_number(config.get("learning_rate")) else 1
        slots = not (optimizer["class_name"] == "SGD" and not config.get("momentum"))
        if slots and len(keys) <= base:
            # Never built: Keras builds it, on the model's trainable variables, when saving.
            self.new_slots = self._fresh_slots(optimizer, keys)
        return True

    def _fresh_slots(self, optimizer: dict, keys: list[str]) -> list[np.ndarray]:
        """The slots Keras adds when it builds a never-built Adam, AdamW or SGD at save.

        Only for a model of one level whose layers are pinnable kinds or hold
        no weights, where the trainable variables are the layers' weights in
        order (each layer's kernel(s), then its bias).
        """
        config = optimizer.get("config") or {}
        name = optimizer["class_name"]
        if name not in ("Adam", "AdamW", "SGD") or config.get("use_ema") or config.get("amsgrad") or (
            len(keys) != 2 or len(self._models) != 1 or self.config["config"].get("trainable") is False
        ):
            raise NotOffline("the optimizer was never built (Keras builds it when saving)")
        variables = []
        for layer in self._models[0][1]:
            vars_group = self.vars(layer)
            if layer.kind is None:
                if len(vars_group):
                    raise NotOffline("the optimizer was never built (Keras builds it when saving)")
                continue
            if layer.entry["config"].get("trainable") is False:
                continue
            for i, weight in enumerate(layer.weights):
                dataset = vars_group[weight if layer.pinned else str(i)]
                variables.append(np.zeros(dataset.shape, dataset.dtype))
        per_variable = 2 if name in ("Adam", "AdamW") else 1  # momentum (and velocity)
        return [slot for v in variables for slot in [v] * per_variable]

    # Reading weights.

    def vars(self, layer: _Layer) -> h5py.Group:
        return self.h5[layer.source]["vars"]

    def plan_of(self, layer: _Layer) -> _plan.PinPlan:
        stored = self.vars(layer)
        if layer.pinned:
            pinned = {w: self.effective(layer, w) for w in layer.weights}
            return _plan.PinPlan({w: e for w, (e, _) in pinned.items()},
                                 {w: m for w, (_, m) in pinned.items()})
        return _plan.PinPlan({w: np.asarray(stored[str(i)][()]) for i, w in enumerate(layer.weights)})

    def copy_state(self, layer: _Layer, group: h5py.Group, *, named: bool) -> None:
        """Copies a layer's state weights (moving statistics) into `group`, keyed by
        name (a pinned layer) or by position after the pinnable weights (a plain one)."""
        stored = self.vars(layer)
        for i, weight in enumerate(layer.state, start=len(layer.weights)):
            _copy_dataset(stored[weight if layer.pinned else str(i)], group,
                          weight if named else str(i))

    def effective(self, layer: _Layer, weight: str) -> tuple[np.ndarray, np.ndarray]:
        """A pinned layer's effective weight and mask, as Keras loads them: `where(mask, value, stored)`."""
        stored = self.vars(layer)
        array = np.asarray(stored[weight][()])
        mask = np.asarray(stored[f"{weight}_pin_mask"][()])
        value = np.asarray(stored[f"{weight}_pin_value"][()])
        if not np.all(np.isfinite(value)):
            raise NotOffline(f"layer {layer.path!r}: `{weight}_pin_value` holds a non-finite value")
        return np.where(mask, value.astype(array.dtype), array), mask

    def row(self, layer: _Layer, counts: dict[str, int] | None = None) -> dict[str, Any]:
        """The layer as `inspect --json` and `_dense_rows` list it (`counts`: its new pins)."""
        stored = self.vars(layer)
        if counts is None:
            counts = {"kernel": 0, "bias": 0}
            if layer.pinned:
                for weight in layer.weights:
                    n = _count_true(stored[f"{weight}_pin_mask"])
                    counts["bias" if weight == "bias" else "kernel"] += n
        main = stored[layer.weights[0] if layer.pinned else "0"]
        return {
            "name": layer.name,
            "class_name": layer.class_name,
            "kernel_shape": [int(n) for n in main.shape],
            "pinned_kernel": counts["kernel"],
            "pinned_bias": counts["bias"],
            "pinned": counts["kernel"] + counts["bias"],
            "path": layer.path,
        }

    # Writing.

    def drop_training(self) -> None:
        """Leaves the training config and the optimizer's state out of the output.

        Keras writes an uncompiled model's config with an empty
        `compile_config` and no `optimizer` group; the output is written so.
        """
        if "compile_config" in self.config:
            self.config["compile_config"] = {}
        self.dropped.add("optimizer")
        self.compiled = False

    def assign_targets(self) -> None:
        """Each layer's group in the output: named after its (new) class, numbered per class."""
        targets: dict[str, str] = {"": ""}
        for group, container in self._models:
            parent = targets[group]
            keys = order.container_keys(layer.class_name for layer in container)
            for layer, key in zip(container, keys):
                layer.target = _join(parent, "layers", key)
                targets[layer.source] = layer.target

    def write(self, target: Path, rewrite: dict[str, Any], order: list[str]) -> None:
        """Writes the output archive: the metadata, the config and the weights.

        Every group and dataset of the input's weights is copied, renamed
        where a layer's class changed; `rewrite[path](layer, vars_group)`
        writes the variables of the layers at `rewrite`'s paths, in `order`.
        The config is written last: the writers complete it.
        """
        try:
            self._write(target, rewrite, order)
        except Exception:
            self.verify()  # a damaged input is the error to report
            raise
        self.verify()

    def _write(self, target: Path, rewrite: dict[str, Any], order: list[str]) -> None:
        by_source = {layer.source: layer for layer in self.layers}
        with open(target, "w+b") as f:
            archive = ZipWriter(f)
            if self.metadata is not None:
                archive.add(_METADATA, self.metadata)
            # HDF5 writes the weights in place: the model's bytes are written once.
            with archive.member(_WEIGHTS) as member, h5py.File(member, "w") as out:
                self._member = member
                pending: dict[str, tuple[_Layer, h5py.Group]] = {}
                self._copy(self.h5, out, "", by_source, pending, set(rewrite))
                for path in order:
                    layer, group = pending[path]
                    rewrite[path](layer, group)
            archive.add(_CONFIG, json.dumps(self.config).encode())
            archive.close()

    def _copy(self, source: h5py.Group, target: h5py.Group, path: str,
              by_source: dict[str, _Layer], pending: dict, rewrite: set[str]) -> None:
        _copy_attrs(source, target)
        for key in source:
            child = source.get(key, getlink=True)
            if not isinstance(child, h5py.HardLink):
                raise NotOffline(f"the weights hold a link at {_join(path, key)!r}")
            child_path = _join(path, key)
            if child_path in self.dropped:
                continue
            node = source[key]
            if isinstance(node, h5py.Dataset):
                if path == "optimizer/vars":
                    self._fresh_optimizer_variable(node, key, target)
                else:
                    _copy_dataset(node, target, key)
                continue
            layer = by_source.get(child_path)
            if layer is not None:
                name = layer.target.rpartition("/")[2]
                group = target.create_group(name)
                if layer.path in rewrite:
                    _copy_attrs(node, group)
                    vars_group = group.create_group("vars")
                    _copy_attrs(node["vars"], vars_group)
                    pending[layer.path] = (layer, vars_group)
                else:
                    self._copy(node, group, child_path, by_source, pending, rewrite)
            else:
                self._copy(node, target.create_group(key), child_path, by_source, pending, rewrite)
        if path == "optimizer/vars":
            for i, slot in enumerate(self.new_slots, start=len(source)):
                _zeros(target, str(i), slot.shape, slot.dtype, self._member)

    def _fresh_optimizer_variable(self, dataset: h5py.Dataset, key: str, target: h5py.Group) -> None:
        """A variable of the optimizer as `compile` builds it afresh (the Keras path recompiles)."""
        config = self.optimizer.get("config") or {}
        index = int(key)
        count = len(dataset.parent)
        learning_rate = config.get("learning_rate")
        if index == 0:
            value = np.zeros(dataset.shape, dataset.dtype)  # iterations
        elif index == 1 and _is_number(learning_rate):
            value = np.asarray(learning_rate, dtype=dataset.dtype)
        elif self.optimizer["class_name"] == "Nadam" and index == count - 1 and dataset.shape == ():
            value = np.ones((), dataset.dtype)  # u_product
        elif self.optimizer["class_name"] == "Adagrad":
            start = config.get("initial_accumulator_value", 0.1)
            value = np.full(dataset.shape, start, dataset.dtype)
        else:
            value = None  # zeros
        if dataset.dtype.kind not in "fiu":
            raise NotOffline("the optimizer stores a variable of an unexpected type")
        if value is None:
            _zeros(target, key, dataset.shape, dataset.dtype, self._member)
        else:
            target.create_dataset(key, data=value)


# --- config rewrites -----------------------------------------------------------


def _pinned_config(layer: _Layer) -> None:
    kind = KINDS[layer.kind]
    entry = layer.entry
    entry["module"] = kinds.PINNED_MODULE
    entry["class_name"] = kind.pinned
    entry["registered_name"] = kind.registered_name


def _saved_as_today(entry: dict, storage: dict[str, str]) -> None:
    """A pinned layer's config as the Keras path saves it again: under today's
    module, with its whole `pin_storage` (as its `build` completes it).

    kerasurgery 0.1.0 wrote `pinned_kernel_values` for the storage, and left
    `Dense`'s `quantization_config` out of a `MaskedDense`'s config; today's
    class saves `Dense`'s whole config.
    """
    config = entry["config"]
    entry["module"] = kinds.PINNED_MODULE
    if config.pop("pinned_kernel_values", None) is not None:
        config.setdefault("quantization_config", None)
    config["pin_storage"] = storage


def _plain_config(layer: _Layer) -> None:
    entry = layer.entry
    entry["module"] = "keras.layers"
    entry["class_name"] = layer.kind
    entry["registered_name"] = None
    entry["config"].pop("pin_storage", None)


def _kind(entry: dict, path: str) -> str | None:
    """The pinnable kind of a config entry; `None` for a model or a plain layer; else NotOffline."""
    cls, module, registered = entry.get("class_name"), entry.get("module"), entry.get("registered_name")
    if cls in _MODELS:
        return None
    if module == "keras.layers" and registered is None:
        if cls in KINDS:
            return cls
        if cls in _PLAIN:
            return None
    elif (pinned := kinds.pinned_kind(entry)) is not None:
        return pinned.name
    raise NotOffline(f"layer {path!r} is a {cls!r} ({module!r}), which needs Keras to rewrite")


def _check_sizes(layer: _Layer, vars_group: h5py.Group) -> None:
    """The layer's stored weights must have the shapes its config builds (a
    config that declares more than the file holds is Keras' to refuse, after
    it checks the model it would build)."""
    build = layer.entry.get("build_config")
    input_shape = build.get("input_shape") if isinstance(build, dict) else None
    kind = layer.kind or layer.class_name
    expected = _shapes.weight_shapes(kind, layer.entry["config"], input_shape)
    names = [*layer.weights, *layer.state] if layer.pinned else [str(i) for i in range(len(vars_group))]
    if expected is None and not names and kind in _PLAIN:
        return  # never built: Keras builds it on its first call, from its input
    stored = [vars_group[n].shape if isinstance(vars_group.get(n), h5py.Dataset) else None for n in names]
    if expected is None or stored != expected:
        raise NotOffline(f"layer {layer.path!r} stores weights of shapes {stored}, its config "
                         f"builds {expected}")


def _drop_policy_sharing(config: Any) -> None:
    """Drops the `shared_object_id` of dtype policies (Keras' copy no longer shares them);
    any other shared object (a layer in two models) needs Keras."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "shared_object_id" in node:
                if node.get("class_name") not in _POLICIES:
                    raise NotOffline("the config shares an object between layers")
                del node["shared_object_id"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _known_objects(value: Any) -> bool:
    """A training config entry of built-in Keras objects and known names only."""
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return value in _LOSSES
    if isinstance(value, list):
        return all(_known_objects(v) for v in value)
    if isinstance(value, dict):
        if "class_name" in value:
            module = value.get("module")
            return (
                isinstance(module, str) and module.startswith("keras.")
                and value.get("registered_name") is None
                and all(_scalar_tree(v) for v in (value.get("config") or {}).values())
            )
        return all(isinstance(k, str) and _known_objects(v) for k, v in value.items())
    return False


def _scalar_tree(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_scalar_tree(v) for v in value)
    return False


# --- helpers -------------------------------------------------------------------------


def _check_version(version: str | None) -> None:
    """The file must come from the installed Keras' minor version (its config is what Keras writes)."""
    try:
        installed = importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:
        raise NotOffline("Keras is not installed") from None
    if version is None or version.split(".")[:2] != installed.split(".")[:2]:
        raise NotOffline(f"the file was written by Keras {version}, not {installed}")


def _supported() -> list[str]:
    # The order of `layers.supported_class_names()`, without Keras.
    return list(KINDS)


def _axes(layer: _Layer) -> Any:
    """`axes(weight)` of a layer, as its pinned class's `pin_axes` gives them."""
    kind, config = KINDS[layer.kind], layer.entry["config"]
    return lambda weight: kind.axes_of(weight, config)


def _write_state(group: h5py.Group, layer: _Layer, state: dict) -> None:
    """A pinned layer's datasets, as its `save_own_variables` stores them."""
    for weight in layer.weights:
        pins = state[weight]
        dtype = pins.effective.dtype
        value = np.asarray(pins.value)
        if not np.all(np.isfinite(value)):
            raise PinError(
                f"Layer {layer.name!r}: `{weight}_pin_value` holds a non-finite pinned value."
            )
        group.create_dataset(weight, data=np.ascontiguousarray(pins.effective))
        group.create_dataset(f"{weight}_pin_mask", data=np.ascontiguousarray(pins.mask, dtype=bool))
        group.create_dataset(f"{weight}_pin_value", data=value.astype(dtype, copy=False))


def _count_true(dataset: h5py.Dataset) -> int:
    """True entries of a mask, a block of rows at a time."""
    if dataset.ndim == 0:
        return int(bool(dataset[()]))
    step = max(1, (1 << 24) // max(1, dataset.size // max(1, dataset.shape[0])))
    return sum(int(np.count_nonzero(dataset[i:i + step])) for i in range(0, dataset.shape[0], step))


def _zeros(group: h5py.Group, name: str, shape: tuple, dtype: Any, member: Any) -> None:
    """A dataset of zeros (a fresh optimizer slot) whose bytes are not written.

    Its space is allocated at once and never filled: a hole in the new file,
    which reads as zeros (and is hashed as zeros), unless the space was
    written before, when the zeros are written.
    """
    space = h5py.h5s.create_simple(shape) if shape else h5py.h5s.create(h5py.h5s.SCALAR)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dataset = h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype)), space, dcpl=dcpl)
    offset, size = dataset.get_offset(), dataset.get_storage_size()
    if offset is None or not member.unwritten(offset, size):
        zeros = np.zeros(shape, dtype)
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, zeros)


def _copy_attrs(source: Any, target: Any) -> None:
    for key, value in source.attrs.items():
        target.attrs[key] = value


def _copy_dataset(dataset: h5py.Dataset, group: h5py.Group, name: str) -> None:
    """Copies a dataset's bytes and attributes, block by block (HDF5 copies it in place)."""
    group.copy(dataset, name)


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
