"""`prune`: one-shot pruning of a whole model from calibration inputs, block by block.

Wanda and SparseGPT prune a layer from statistics of its own inputs
(`kerasurgery.calibrated`). Like the papers, `prune` goes through the model
in order, and each layer's statistics come from inputs that already passed
through the blocks pruned before it (with SparseGPT, also through the layers
pruned before it in its own block). Memory holds the activations at one
point of the model for every calibration batch (the papers' `inps`) and the
statistics of one layer (a running `X^T X`, or running squared norms), never
the stacked inputs of a layer.

How a layer's inputs are captured, for any Keras 3 model (one mechanism):

1. **The graph, walked step by step.** A Functional model's nodes are run in
   the order Keras itself runs them, for every calibration batch, each step
   fed the cached outputs of the steps before it; a cached value is dropped
   after the last step that reads it. A Sequential model is a chain of such
   steps; a nested Functional or Sequential model (a KerasHub task's
   backbone) is walked the same way, inside its parent's step.
2. **A block, run with its layers intercepted.** A step that holds layers
   to prune and has no graph of its own (a custom layer such as KerasHub's
   `TransformerDecoder`, a subclassed model, or a selected layer itself) is
   a block. Layers that a custom layer creates itself are not nodes of any
   graph, so they are reached through their `call`: `call` is replaced on
   that layer instance only (never on its class), the block is run on each
   cached batch, and the replacement adds the layer's input to the layer's
   statistics before calling the layer. SparseGPT takes one layer at a time,
   in the order the block first calls them (found by running the block once
   on the first batch): the replacement stops the forward pass at the
   layer's last call in the block (the rest is not needed yet), the layer is
   pruned, and the next one sees its pruned output; one Hessian is in
   memory at a time. Wanda, as `prune_wanda` does, takes the input norms of
   every layer of the block from one pass over the block, then prunes them
   all (a vector per layer). Finally the pruned block is run to give the
   next steps their inputs.

This needs Keras' node list of a Functional model (`_nodes_by_depth`, each
node's `arguments.fill_in`, `input_tensors`, `outputs`), the same private
structure `Functional.call` walks: Keras has no public way to run one node
of a graph on given values. A layer used at several places of a graph is
calibrated at its first use. `calibration` batches are run eagerly
(`training` left unset: inference; under torch, without autograd).

A kernel is seen as a matrix (inputs, units) (`calibrated.as_matrix`), and a
layer's input as the matrix `X` of the rows it multiplies: the last axis of
a Dense input; EinsumDense's contracted axes, in the kernel's order, with
every other axis as rows; a convolution's patches (im2col, made with the
layer's own strides, padding and dilation by convolving with an identity
kernel, so that the rows are `kh * kw * in` in the kernel's order).
Embedding (its input is an index, not a vector), transposed, depthwise,
separable and grouped convolutions have no such `X`: `prune` leaves them
dense for every method, so that magnitude, Wanda and SparseGPT prune the
same layers.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kerasurgery import _compat  # noqa: F401  (refuses an unsupported Keras first)

import keras
import numpy as np
from keras import ops

from kerasurgery import _keras_private, _plan, calibrated, pruning
from kerasurgery import layers as layers_lib
from kerasurgery.errors import KerasurgeryError, LayerSelectionError, PinError, one_line
from kerasurgery.model.subclassed import is_subclassed
from kerasurgery.model.surgery import (
    _require_rewritable,
    _select,
    freeze,
    pinnable_layers,
    walk_layers,
)
from kerasurgery.pins import Pin

METHODS = ("wanda", "sparsegpt", "magnitude")


def prune(
    model: keras.Model,
    calibration: Any = None,
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    n_of_m: tuple[int, int] | None = None,
    layers: str | Sequence[str] = "*",
    batch_size: int = 32,
) -> keras.Model:
    """Returns a copy of `model` pruned in one shot: the chosen entries pinned at 0.0.

    Args:
        model: A built Keras model: Sequential, Functional (KerasHub tasks
            and backbones included, nested models too) or subclassed.
        calibration: What `model.predict` accepts: an array, a list or dict
            of arrays (a KerasHub task's preprocessed `{"token_ids": ...,
            "padding_mask": ...}`), a generator, a `tf.data.Dataset` or a
            `keras.utils.PyDataset` yielding such batches (or `(x, y)`
            tuples, whose `y` is ignored). Arrays are cut into batches of
            `batch_size`. Not needed for `"magnitude"`.
        method: `"wanda"` (Sun et al. 2023: `|W| * ||X||`, per output unit,
            kept weights unchanged), `"sparsegpt"` (Frantar & Alistarh 2023:
            pruned per block of 128 inputs and the kept weights updated to
            reconstruct the layer's output) or `"magnitude"` (the smallest
            `|W|` of each layer, as `kerasurgery.rules.smallest`).
        sparsity: The fraction of each layer's kernel to prune. Wanda prunes
            `int(inputs * sparsity)` entries of every unit; SparseGPT
            `int(size * sparsity) + 1` of every block of inputs (the
            reference's threshold); magnitude `round(size * sparsity)`.
        n_of_m: `(n, m)` instead of `sparsity`: `n` of every `m` consecutive
            inputs of every unit (`(2, 4)`: the 2:4 pattern).
        layers: A layer path, name or glob (or a list of them) as for
            `kerasurgery.freeze`; `"*"` is every layer `prune` supports
            (Dense, EinsumDense, Conv1D/2D/3D). Other kinds that a glob
            matches are left dense; naming one is an error.
        batch_size: The batch size arrays are cut into.

    Returns:
        A new model (as `kerasurgery.freeze` returns) whose pruned layers are
        pinned layers with the pruned entries pinned at 0.0: they stay
        exactly zero through any fine-tuning. With SparseGPT the free
        entries hold the updated weights. Entries pinned before keep their
        pins and values.

    Raises:
        KerasurgeryError: a bad method, sparsity or calibration, or a model
            that is not built.
        LayerSelectionError: `layers` selects no supported layer, or names
            one of an unsupported kind.
        PinError: n:m on a layer whose inputs are not a multiple of `m`.

    Example:

    ```python
    pruned = kerasurgery.prune(causal_lm, {"token_ids": ids, "padding_mask": ids != 0},
                               method="sparsegpt", n_of_m=(2, 4),
                               layers="*transformer_layer_*")
    pruned.compile(optimizer="adamw", loss=...)
    pruned.fit(...)  # the pruned entries stay exactly 0
    ```
    """
    _require_rewritable(model, "prune")
    if method not in METHODS:
        raise KerasurgeryError(f"Expected a method among {METHODS}. Received: method={method!r}")
    if (sparsity is None) == (n_of_m is None):
        raise KerasurgeryError(
            f"Expected exactly one of `sparsity` and `n_of_m`. Received: sparsity={sparsity!r}, "
            f"n_of_m={n_of_m!r}"
        )
    if sparsity is not None:
        sparsity = pruning.checked_fraction(sparsity, "sparsity")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise KerasurgeryError(f"Expected a positive integer batch_size. Received: {batch_size!r}")
    if method != "magnitude" and calibration is None:
        raise KerasurgeryError(f"Method {method!r} needs calibration inputs.")
    paths = _chosen_paths(model, layers)
    if n_of_m is not None:  # every layer's groups, before any copy or calibration pass
        originals = pinnable_layers(model)
        for path in paths:
            try:
                calibrated.checked_n_of_m(n_of_m, _kernel_axes(originals[path])[1])
            except PinError as e:
                raise PinError(f"Layer {path!r}: {e}") from None
    pruned = freeze(model, {path: Pin() for path in paths})
    copies = dict(walk_layers(pruned))
    targets = {id(copies[p]): _Target(copies[p], p, method, sparsity, n_of_m) for p in paths}
    if method == "magnitude":
        for target in targets.values():
            target.prune()
        return pruned
    run = _Run(targets, together=method == "wanda")
    with _inference():
        run.walk_model(pruned, _batches(calibration, batch_size))
    if run.pending:
        names = ", ".join(t.path for t in run.pending.values())
        warnings.warn(
            f"kerasurgery.prune: no calibration input reached {names}; left unpruned.",
            stacklevel=2,
        )
    return pruned


# -- which layers, and what their inputs are ------------------------------------


def _chosen_paths(model: keras.Model, layers: str | Sequence[str]) -> list[str]:
    """The paths of the layers to prune, in model order."""
    keys = [layers] if isinstance(layers, str) else list(layers)
    if not keys:
        raise KerasurgeryError("Expected at least one layer pattern. Received: layers=[]")
    pinnable = pinnable_layers(model)
    chosen: dict[str, None] = {}
    for key in keys:
        selected = _select(model, key, pinnable)
        for path in selected:
            reason = _unsupported(pinnable[path])
            if reason is None:
                chosen[path] = None
            elif len(selected) == 1 and isinstance(key, str) and not _is_glob(key):
                raise LayerSelectionError(f"Cannot prune layer {path!r} from its inputs: {reason}.")
    if not chosen:
        raise LayerSelectionError(
            f"No layer that `prune` supports (Dense, EinsumDense, Conv1D/2D/3D) matches {layers!r}."
        )
    order = list(pinnable)
    return sorted(chosen, key=order.index)


def _is_glob(key: str) -> bool:
    return any(c in key for c in "*?[")


def _unsupported(layer: keras.layers.Layer) -> str | None:
    """Why a layer has no input matrix `X` (`None`: it has one)."""
    cls = layers_lib.pinned_class_for(layer)
    main = cls.pinned_weights[0]
    if cls.kind.normalization:
        return "a normalization has no kernel"
    if not cls.pin_axes(layer, main).contracted:
        return "its input is an index, not a vector"
    if tuple(cls.pinned_weights) != ("kernel", "bias"):
        return "it has no single kernel (a separable convolution)"
    if hasattr(layer, "equation"):
        return _einsum_unsupported(layer)
    axes = cls.pin_axes(layer, "kernel")
    ndim = len(layer.kernel.shape)
    if axes.inputs != (-2,) and axes.inputs != (0,):
        return "its kernel's inputs are not the axis before its units (a transposed convolution)"
    if len(axes.units) != 1:
        return "it has no units axis of its own (a depthwise convolution)"
    if hasattr(layer, "kernel_size") and getattr(layer, "groups", 1) != 1:
        return "a grouped convolution's units see different inputs"
    if not hasattr(layer, "kernel_size") and ndim != 2:
        return "its kernel is not a matrix"
    return None


def _einsum_unsupported(layer: keras.layers.Layer) -> str | None:
    source, kernel, output = _einsum_parts(layer.equation)
    if any(c in source and c in output for c in kernel):
        return f"equation {layer.equation!r} batches over a kernel axis"
    if any(c not in source and c not in output for c in kernel):
        return f"equation {layer.equation!r} sums a kernel axis alone"
    return None


def _einsum_parts(equation: str) -> tuple[str, str, str]:
    operands, output = equation.replace(" ", "").split("->")
    source, kernel = operands.split(",")
    return source, kernel, output


def _kernel_axes(layer: keras.layers.Layer) -> tuple[tuple[int, ...], int]:
    """The kernel's units axes, and the number of rows of its matrix (every other axis)."""
    units = layers_lib.pinned_class_for(layer).pin_axes(layer, "kernel").units
    shape = tuple(layer.kernel.shape)
    axes = {u % len(shape) for u in units}
    return units, int(np.prod([n for i, n in enumerate(shape) if i not in axes]))


def _rows(layer: keras.layers.Layer, x: Any, inputs: int) -> Any:
    """The matrix `X` (rows, `inputs`) that the layer's kernel matrix multiplies, for input `x`."""
    x = ops.cast(ops.convert_to_tensor(x), "float32")
    if hasattr(layer, "equation"):
        source, kernel, output = _einsum_parts(layer.equation)
        labels = _expand_ellipsis(source, len(x.shape))
        # The contracted axes last, in the kernel's order (its matrix rows).
        positions = [labels.index(c) for c in kernel if c in source and c not in output]
        rest = [i for i in range(len(labels)) if i not in positions]
        return ops.reshape(ops.transpose(x, rest + positions), (-1, inputs))
    if hasattr(layer, "kernel_size"):
        return _patches(layer, x, inputs)
    return ops.reshape(x, (-1, inputs))


def _expand_ellipsis(source: str, ndim: int) -> list[str | None]:
    if "..." not in source:
        return list(source)
    before, after = source.split("...")
    return list(before) + [None] * (ndim - len(before) - len(after)) + list(after)


def _patches(layer: keras.layers.Layer, x: Any, size: int) -> Any:
    """A convolution's im2col rows: `kh * kw * in` entries per output position, in the kernel's order.

    Convolving with an identity kernel gives exactly the entries each output
    position multiplies, with the layer's own padding, strides and dilation
    (each output is one input entry times 1.0 plus zeros: exact).
    """
    spatial = tuple(layer.kernel_size)
    identity = ops.reshape(ops.eye(size, dtype="float32"), (*spatial, size // int(np.prod(spatial)), size))
    padding = layer.padding
    if padding == "causal":  # Conv1D: left padding, then valid (as Conv1D.call does)
        left = layer.dilation_rate[0] * (spatial[0] - 1)
        pad = [[0, 0], [left, 0], [0, 0]]
        if layer.data_format == "channels_first":
            pad = [pad[0], pad[2], pad[1]]
        x, padding = ops.pad(x, pad), "valid"
    patches = ops.conv(
        x, identity, strides=list(layer.strides), padding=padding,
        dilation_rate=layer.dilation_rate, data_format=layer.data_format,
    )
    if layer.data_format == "channels_first":
        patches = ops.moveaxis(patches, 1, -1)
    return ops.reshape(patches, (-1, size))


# -- one layer: its statistics and its pruning -------------------------------


class _Target:
    """A layer to prune: its statistics while calibrating, then its new pins."""

    def __init__(self, layer: Any, path: str, method: str, sparsity: float | None,
                 n_of_m: tuple[int, int] | None) -> None:
        self.layer, self.path, self.method = layer, path, method
        self.sparsity, self.n_of_m = sparsity, n_of_m
        self.units, self.inputs = _kernel_axes(layer)
        self.statistics: Any = None
        self.seen = 0

    def start(self) -> None:
        self.seen = 0
        if self.method == "wanda":
            self.statistics = calibrated.RunningNorms(self.inputs)
        else:
            self.statistics = calibrated.RunningHessian(self.inputs, "float32")

    def add(self, x: Any) -> None:
        """Adds one call's input `x` to the statistics."""
        self.seen += 1
        rows = ops.convert_to_numpy(_rows(self.layer, x, self.inputs))
        if self.method == "sparsegpt":
            # Samples as the reference counts them: the leading axis of the input.
            self.statistics.update(rows, samples=int(x.shape[0]))
        else:
            self.statistics.update(rows)

    def prune(self) -> None:
        """Pins the chosen entries at 0.0 (SparseGPT: and sets the kept ones)."""
        layer = self.layer
        state = layer.pin_state()
        kernel = state["kernel"]
        matrix = calibrated.as_matrix(kernel.effective, self.units)
        weights = None
        try:
            if self.method == "wanda":
                mask = calibrated.wanda_mask(
                    matrix, self.statistics.value, sparsity=self.sparsity, n_of_m=self.n_of_m
                )
            elif self.method == "sparsegpt":
                weights, mask = calibrated.sparsegpt(
                    matrix, self.statistics.value, sparsity=self.sparsity, n_of_m=self.n_of_m
                )
            elif self.n_of_m is not None:
                n, m = calibrated.checked_n_of_m(self.n_of_m, matrix.shape[0])
                mask = pruning.n_of_m_mask(matrix, n, m, (0,))
            else:
                mask = pruning.smallest_entries([matrix], round(self.sparsity * matrix.size))[0]
        except PinError as e:
            raise PinError(f"Layer {self.path!r}: {e}") from None
        self.statistics = None
        shape = kernel.effective.shape
        effective = kernel.effective
        if weights is not None:
            updated = calibrated.from_matrix(weights, shape, self.units).astype(effective.dtype)
            effective = np.where(kernel.mask, effective, updated)  # earlier pins keep their values
        plan = _plan.PinPlan(
            {w: (effective if w == "kernel" else s.effective) for w, s in state.items()},
            {w: s.mask for w, s in state.items()},
        )
        plan.add([("kernel", calibrated.from_matrix(mask, shape, self.units), 0.0)], self.path)
        storage = plan.storage()
        if storage != dict(layer.pin_storage):
            # Pinned values that no longer share one value are stored per entry.
            in_config = layer.in_config
            cls = type(layer)
            layers_lib.unpin_in_place(layer)
            layers_lib.pin_in_place(layer, cls, storage, in_config=in_config)
        layer.set_pin_state(plan.state())


# -- the walk -----------------------------------------------------------------


class _Captured(BaseException):
    """Ends a block's forward pass once the intercepted layer has seen its inputs.

    A BaseException, so that no `except Exception` on the way (Keras adds
    argument information to exceptions it sees) wraps or swallows it.
    """


Calls = list[tuple[tuple, dict]]


class _Run:
    """One `prune` call: the layers still to prune, and the walk that reaches them."""

    def __init__(self, targets: dict[int, _Target], *, together: bool) -> None:
        self.pending = dict(targets)
        self.together = together

    def inside(self, op: Any) -> list[Any]:
        """The layers still to prune in `op` (itself included), at any depth."""
        if not isinstance(op, keras.layers.Layer):
            return []
        found = [op] + [layer for _, layer in walk_layers(op)]
        return [layer for layer in found if id(layer) in self.pending]

    def walk_model(self, model: keras.Model, batches: list[Any]) -> None:
        if isinstance(model, keras.Sequential) or not is_subclassed(model):
            self.walk(model, [_model_inputs(model, b) for b in batches], outputs=False)
        else:
            self.step(model, [((b,), {}) for b in batches])

    def walk(
        self, model: keras.Model, inputs: list[list[Any]], *, outputs: bool
    ) -> list[list[Any]] | None:
        """Runs a Sequential or Functional `model` step by step on every batch.

        Args:
            inputs: Per batch, the values of `model.inputs` (flat).
            outputs: Whether the caller needs the model's outputs.

        Returns:
            Per batch, the values of the model's outputs (flat), or `None` if
            the walk stopped early (nothing left to prune, no output needed).
        """
        if isinstance(model, keras.Sequential):
            xs = [flat[0] for flat in inputs]
            for layer in model.layers:
                if not outputs and not self.pending:
                    return None
                xs = [out[0] for out in self.step(layer, [((x,), {}) for x in xs])]
            return [[x] for x in xs]
        nodes = _keras_private.graph_nodes(model)
        values = {id(t): [flat[i] for flat in inputs] for i, t in enumerate(model.inputs)}
        last_use = {id(t): k for k, node in enumerate(nodes) for t in node.input_tensors}
        keep = {id(t) for t in model.outputs} if outputs else set()
        for k, node in enumerate(nodes):
            if not outputs and not self.pending:
                return None
            if any(id(t) not in values for t in node.input_tensors):
                continue  # not computable from these inputs (as Keras skips it)
            calls = [
                node.arguments.fill_in({id(t): values[id(t)][b] for t in node.input_tensors})
                for b in range(len(inputs))
            ]
            results = self.step(node.operation, calls)
            for i, t in enumerate(node.outputs):
                if id(t) in last_use or id(t) in keep:  # else nothing reads it
                    values[id(t)] = [flat[i] for flat in results]
            for t in node.input_tensors:
                if last_use[id(t)] == k and id(t) not in keep:
                    values.pop(id(t), None)
        if not outputs:
            return None
        return [[values[id(t)][b] for t in model.outputs] for b in range(len(inputs))]

    def step(self, op: Any, calls: Calls) -> list[list[Any]]:
        """Runs one step on every batch; prunes the layers it holds on the way."""
        if not self.inside(op):
            return [keras.tree.flatten(op(*args, **kwargs)) for args, kwargs in calls]
        if isinstance(op, keras.Model) and (isinstance(op, keras.Sequential) or not is_subclassed(op)):
            inputs = [keras.tree.flatten(args[0] if args else kwargs["inputs"])
                      for args, kwargs in calls]
            return self.walk(op, inputs, outputs=True)
        return self.block(op, calls)

    def block(self, op: Any, calls: Calls) -> list[list[Any]]:
        """Prunes the layers inside `op`, then runs the pruned `op` for the steps after it.

        SparseGPT: one layer at a time, in the order `op` calls them, each
        from inputs that passed the layers pruned before it (one Hessian in
        memory). Wanda: every layer of the block from one pass over the
        dense block, then all pruned, as `prune_wanda` does (a vector per
        layer; two passes over the calibration data per block).
        """
        inside = self.inside(op)
        if self.together:
            groups = [[(layer, None) for layer in inside]]
        else:
            order = [(op, 1)] if inside == [op] else _call_order(op, calls[0], inside)
            groups = [[item] for item in order]
        for group in groups:
            targets = [(layer, count, self.pending.pop(id(layer)))
                       for layer, count in group if id(layer) in self.pending]
            for _, _, target in targets:
                target.start()
            for args, kwargs in calls:
                with contextlib.ExitStack() as stack:
                    for layer, count, target in targets:
                        stack.enter_context(_intercepted(layer, target.add, stop_after=count))
                    try:
                        op(*args, **kwargs)
                    except _Captured:
                        pass
            for layer, _, target in targets:
                if target.seen:
                    target.prune()
                else:  # not called by this block: perhaps by a later step
                    self.pending[id(layer)] = target
        return [keras.tree.flatten(op(*args, **kwargs)) for args, kwargs in calls]


def _inference() -> Any:
    """No gradient bookkeeping while calibrating: under torch, cached activations
    would otherwise keep the autograd graph of every block before them alive."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _intercepted(
    layer: Any, on_input: Callable[[Any], None], stop_after: int | None = None
) -> Iterator[None]:
    """Replaces `call` on this one layer instance: `on_input(x)` sees every input first.

    With `stop_after`, the forward pass ends (`_Captured`) at that call.
    """
    original = layer.call
    calls = 0

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        on_input(args[0] if args else kwargs["inputs"])
        calls += 1
        if stop_after is not None and calls >= stop_after:
            raise _Captured()
        return original(*args, **kwargs)

    with _keras_private.intercepted_call(layer, call):
        yield


def _call_order(op: Any, call: tuple[tuple, dict], inside: list[Any]) -> list[tuple[Any, int]]:
    """The layers of `inside` in the order `op` first calls them, with their number of calls."""
    counts: dict[int, int] = {}
    order: list[Any] = []

    def recorder(layer: Any) -> Callable[[Any], None]:
        def record(_: Any) -> None:
            if id(layer) not in counts:
                order.append(layer)
            counts[id(layer)] = counts.get(id(layer), 0) + 1
        return record

    args, kwargs = call
    with contextlib.ExitStack() as stack:
        for layer in inside:
            stack.enter_context(_intercepted(layer, recorder(layer)))
        op(*args, **kwargs)
    return [(layer, counts[id(layer)]) for layer in order]


def _model_inputs(model: keras.Model, batch: Any) -> list[Any]:
    """One batch as the flat values of `model.inputs`, converted as `Functional.call` converts them."""
    if isinstance(model, keras.Sequential):
        return [np.asarray(batch) if _host(batch) else batch]
    structure = model.input
    if isinstance(structure, dict) and isinstance(batch, dict):
        missing = [k for k in structure if k not in batch]
        if missing:
            raise KerasurgeryError(
                f"The calibration batches lack the model's inputs {missing}. "
                f"Received keys: {sorted(batch)}"
            )
        batch = {k: batch[k] for k in structure}
    flat = keras.tree.flatten(batch)
    if len(flat) != len(model.inputs):
        raise KerasurgeryError(
            f"Expected calibration batches with {len(model.inputs)} inputs for model "
            f"{model.name!r}. Received: {len(flat)}"
        )
    values = []
    for value, tensor in zip(flat, model.inputs):
        try:
            values.append(ops.convert_to_tensor(np.asarray(value) if _host(value) else value,
                                                dtype=tensor.dtype))
        except (TypeError, ValueError) as e:
            raise KerasurgeryError(
                f"Cannot feed the calibration data to input {tensor.name!r} of model "
                f"{model.name!r} ({tensor.dtype}): {one_line(e)}"
            ) from None
    return values


def _host(value: Any) -> bool:
    # A tf.data batch on the JAX or torch backend: bring it through numpy.
    from_tf = type(value).__module__.startswith("tensorflow")
    return from_tf and keras.backend.backend() != "tensorflow"


def _batches(calibration: Any, batch_size: int) -> list[Any]:
    """The calibration data as a list of batches, each what the model is called on."""
    structured = isinstance(calibration, (dict, list, tuple))
    leaves = keras.tree.flatten(calibration) if structured else [calibration]
    if leaves and all(hasattr(leaf, "shape") and hasattr(leaf, "__getitem__") and len(leaf.shape)
                      for leaf in leaves):
        total = int(leaves[0].shape[0])
        if total == 0:
            raise KerasurgeryError("The calibration data is empty.")
        return [
            keras.tree.map_structure(lambda a, s=start: a[s:s + batch_size], calibration)
            for start in range(0, total, batch_size)
        ]
    if isinstance(calibration, keras.utils.PyDataset):
        items: Any = (calibration[i] for i in range(len(calibration)))
    else:
        try:
            items = iter(calibration)
        except TypeError:
            raise KerasurgeryError(
                "Expected calibration data that `predict` accepts (arrays, a dict of "
                f"arrays, a generator, a dataset). Received: {type(calibration).__name__}"
            ) from None
    batches = [keras.utils.unpack_x_y_sample_weight(item)[0] for item in items]
    if not batches:
        raise KerasurgeryError("The calibration data is empty.")
    return batches
