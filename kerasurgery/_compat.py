"""Refuses to run on a Keras that kerasurgery cannot trust.

Imported, for its check, first thing by `saving.py` and `surgery.py`, so
`load_model`, `save_model`, `freeze` and `strip` refuse to run on an
unsupported Keras. Not by `layers.py`: `import kerasurgery` registers
`MaskedDense` from inside `import keras`, and a refusal there would break
`import keras` itself for a process that only imported kerasurgery. Two cases:

- Keras 3 older than `MIN_KERAS_VERSION`. Releases before 3.11.3 ignored
  `safe_mode` for `.h5` files, so a Lambda layer in a downloaded file would run
  its code; the minimum is the tested release, the one `pyproject.toml` asks for.
- Keras 2: a `keras` package at version 2.x, or `TF_USE_LEGACY_KERAS` set the
  way TensorFlow reads it, which routes `tf.keras` to `tf_keras`.

Kept out of the TF-free modules (`formats`, `inspection`, `cli`'s start-up):
checking needs `import keras`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from packaging.version import InvalidVersion, Version

from kerasurgery.errors import KerasurgeryError

# Keep equal to `keras>=...` in pyproject.toml (tests/test_reliability.py checks).
MIN_KERAS_VERSION = "3.15.1"

# The values TensorFlow's lazy loader treats as "use tf_keras"
# (tensorflow/python/util/lazy_loader.py).
_LEGACY_KERAS_VALUES = ("true", "True", "1")


def keras_problem(version: str, environ: Mapping[str, str]) -> str | None:
    """Why kerasurgery cannot run with this Keras, or `None` when it can.

    Args:
        version: The installed `keras.__version__`.
        environ: The process environment (`os.environ`).

    Returns:
        One sentence saying what is wrong and what to do, or `None`.
    """
    if environ.get("TF_USE_LEGACY_KERAS") in _LEGACY_KERAS_VALUES:
        return (
            "TF_USE_LEGACY_KERAS is set, which selects Keras 2 (tf_keras); "
            f"kerasurgery needs Keras >= {MIN_KERAS_VERSION}: unset it"
        )
    if version.split(".")[0] == "2":
        return (
            f"Keras {version} is Keras 2; kerasurgery needs Keras >= "
            f"{MIN_KERAS_VERSION}: pip install -U 'keras>={MIN_KERAS_VERSION}'"
        )
    try:
        installed = Version(version)
    except InvalidVersion:
        return f"cannot tell which Keras this is (version {version!r})"
    if installed < Version(MIN_KERAS_VERSION):
        return (
            f"Keras {version} is too old (older releases let `.h5` files run "
            f"code despite safe mode); kerasurgery needs Keras >= "
            f"{MIN_KERAS_VERSION}: pip install -U 'keras>={MIN_KERAS_VERSION}'"
        )
    return None


def require_supported_keras() -> None:
    """Raises `KerasurgeryError` unless the installed Keras is supported."""
    import keras

    problem = keras_problem(str(getattr(keras, "__version__", "unknown")), os.environ)
    if problem is not None:
        raise KerasurgeryError(f"kerasurgery cannot run: {problem}.")


require_supported_keras()
