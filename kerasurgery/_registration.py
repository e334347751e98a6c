"""Registers `MaskedDense` with Keras without importing Keras ourselves.

Keras finds custom layers of a saved model through its registry, so the layer
must be registered before a frozen model is loaded. Importing Keras (and with
it TensorFlow) in `import kerasurgery` would cost seconds that `--help` and
`inspect` must not pay. Instead: if Keras is already imported, register now;
otherwise register right after Keras finishes importing, via an import hook
that removes itself once Keras has run.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any


def register_when_keras_loads() -> None:
    if "keras" in sys.modules:
        _register()
    elif not any(isinstance(f, _KerasHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _KerasHook())


def _register() -> None:
    importlib.import_module("kerasurgery.layers")


class _KerasHook(importlib.abc.MetaPathFinder):
    """Finds `keras` like the other finders do, and registers once it has run.

    The hook stays in `sys.meta_path` until Keras is actually executed: a
    `find_spec("keras")` probe that imports nothing (TensorFlow makes one
    before it imports Keras for `tf.keras`) must not use it up.
    """

    def __init__(self) -> None:
        self._searching = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "keras" or self._searching:
            return None
        self._searching = True  # the search below asks every finder, us too
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching = False
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader, self)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, hook: _KerasHook) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        if self._hook in sys.meta_path:
            sys.meta_path.remove(self._hook)
        _register()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
