"""Backend-neutral helpers for the tests: gradients and short training runs."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def gradients(model, x, y, *, include_losses: bool = False) -> dict[str, np.ndarray]:
    """d(mse [+ model.losses])/d(variable) for every trainable variable, by path."""
    variables = model.trainable_variables
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = _loss(model(x, training=True), y)
            if include_losses:
                loss = loss + ops.sum(ops.stack(model.losses))
        grads = tape.gradient(loss, variables)
    elif backend == "jax":
        import jax

        trainable = [v.value for v in variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def f(values):
            out, _, losses = model.stateless_call(
                values, non_trainable, x, training=True, return_losses=True
            )
            loss = _loss(out, y)
            if include_losses:
                loss = loss + sum(losses)
            return loss

        grads = jax.grad(f)(trainable)
    elif backend == "torch":
        model.zero_grad()
        loss = _loss(model(x, training=True), y)
        if include_losses:
            loss = loss + sum(model.losses)
        loss.backward()
        grads = [v.value.grad for v in variables]
    else:  # pragma: no cover - numpy/openvino cannot train
        raise NotImplementedError(backend)
    return {v.path: ops.convert_to_numpy(g) for v, g in zip(variables, grads)}


def _loss(prediction, y):
    return ops.mean(ops.square(ops.subtract(prediction, y)))


def train(model, optimizer, x, y, *, steps: int = 5, jit_compile="auto") -> None:
    """Compiles `model` with `optimizer` and MSE, then takes `steps` full-batch steps."""
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    model.fit(x, y, epochs=steps, batch_size=len(x), verbose=0)


def bits(x) -> np.ndarray:
    """The bit patterns of a float array: equal bits are bit-for-bit equal values.

    Viewed as unsigned integers of the same width (float32 as uint32, float16
    and bfloat16 as uint16, float64 as uint64).
    """
    x = np.ascontiguousarray(ops.convert_to_numpy(x))
    return x.view(f"u{x.itemsize}")
