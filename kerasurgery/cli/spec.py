"""Pin rules described by name and arguments: the `freeze` flags and `--spec FILE.toml`.

The command line and the TOML spec describe the same rules the same way (a rule
name, its argument, `value`, `bias`), and both turn a description into the
`{pattern: rule}` mapping that `kerasurgery.freeze` takes with `pins_for`. The
rules themselves are `kerasurgery.pins`'s; this module only reads arguments and
files. It needs numpy and the standard library, not TensorFlow.

A spec file holds one `[[layer]]` table per layer name or glob pattern:

```toml
[[layer]]
pattern = "dense_1"      # a layer name or glob, required
rule = "zeros"           # optional, see below
bias = true              # apply the rule to the bias too

[[layer]]
pattern = "dense_2"
units = [0, 3]           # the rule's argument, named like the rule
value = 0.5              # pin to 0.5 instead of the current values

[[layer]]
pattern = "head_*"
connections = "head_connections.npz"   # relative to the spec file's folder
```

The rule is named by its argument key (`below`, `mask`, `connections`,
`index`, `inputs`, `units`, `fraction` with `seed`, `smallest` with an optional
`across_layers = true`, `n_of_m = "2:4"`, `smallest_units` with an optional
`norm = 2`, `prune_units` with an optional `norm = 1`) or by `rule = "..."`;
an entry with neither pins exact zeros. An `index` item of two numbers is a
kernel entry, of one number a bias entry. An `.npy` file applies to every layer
the pattern selects; an `.npz` file holds one array per layer name (a mask
file also `LAYER/bias` arrays), and the pattern picks among its names.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kerasurgery import pins, pruning
from kerasurgery.errors import KerasurgeryError, UsageError, one_line
from kerasurgery.guards.limits import MAX_EXPANSION
from kerasurgery.pins import Pin

RULES = (
    "zeros", "below", "mask", "connections", "index", "inputs", "units", "fraction",
    "smallest", "n_of_m", "smallest_units", "prune_units",
)
# The rules whose argument names a file of arrays.
FILE_RULES = ("mask", "connections")
# Rules that can also target the bias when asked (`units` does by default).
_BIAS_RULES = ("zeros", "below", "fraction", "units", "smallest", "smallest_units")
_BIAS_HINTS = {
    "index": "give a bias entry as an index of one number",
    "mask": "put bias masks in an .npz file under the key 'LAYER/bias'",
    "connections": "a connections matrix describes the kernel only",
    "inputs": "the bias has no input axis",
    "n_of_m": "n:m groups run along the kernel's input axis",
    "prune_units": "it prunes whole units, bias entries included",
}
_ENTRY_KEYS = ("pattern", "rule", "bias", "value", "seed", "across_layers", "norm", *RULES[1:])
# An .npz key "LAYER/bias" holds that layer's bias mask ("LAYER" or
# "LAYER/kernel" its kernel mask); Keras 3 layer names cannot contain "/".
_KERNEL, _BIAS = "kernel", "bias"


@dataclasses.dataclass(frozen=True)
class UnitPruning:
    """`prune_units`: not a per-layer rule but `ks.prune_units` over the layers a pattern selects.

    Whole units are pruned by dependency group (a residual stage's
    convolutions together, with the layers that read them), which only the
    live model knows: `freeze` applies the other rules first, then calls
    `kerasurgery.prune_units(model, fraction, norm=norm, layers=patterns)`.
    """

    fraction: float
    norm: int = 2


def pins_for(
    rule: str,
    argument: Any = None,
    *,
    patterns: Sequence[str] = ("*",),
    value: float | None = None,
    bias: bool | None = None,
    seed: int | None = None,
    folder: str | os.PathLike | None = None,
    across_layers: bool = False,
    norm: int | None = None,
    max_array_bytes: int | None = None,
) -> dict[str, Any]:
    """Builds the `freeze` pins for one rule applied to the layers `patterns` select.

    Args:
        rule: One of `RULES`.
        argument: The rule's argument: the threshold (`below`), the fraction
            (`fraction`), a list of ints (`inputs`, `units`), a list of index
            tuples (`index`: two numbers = kernel entry, one = bias entry), or a
            `.npy`/`.npz` path (`mask`, `connections`). Unused by `zeros`.
        patterns: Layer names or globs. An `.npz` file's arrays are keyed by
            layer name instead: the patterns then pick among its keys.
        value: Pin to this value instead of the current one (`connections`:
            defaults to 0).
        bias: Apply the rule to the bias too (`True` requires every selected
            layer to have one). `None` = the rule's default: only `units`
            pins bias entries, of the layers that have a bias.
        seed: The seed of `fraction` (required there).
        across_layers: `smallest` only: one ranking over every selected
            layer (global magnitude pruning).
        norm: `smallest_units` (default 1) and `prune_units` (default 2) only: 1 or 2.
        folder: Where a relative file path is found (default: the working folder).
        max_array_bytes: The most bytes one array of a `mask`/`connections`
            file may declare; larger ones are refused before they are read.

    Returns:
        A mapping from layer name or pattern to a rule or `Pin`.

    Raises:
        UsageError: arguments that contradict each other: `bias` with a rule
            that has no bias form, `fraction` without `seed`, or `seed` with
            another rule.
        KerasurgeryError: an unknown rule, a missing or wrong argument, an
            unreadable array file, or a pattern that matches none of its arrays.
    """
    if rule not in RULES:
        raise KerasurgeryError(f"Unknown rule {rule!r}. Expected one of: {', '.join(RULES)}")
    if bias and rule not in _BIAS_RULES:
        raise UsageError(f"`bias` does not apply to rule {rule!r}: {_BIAS_HINTS[rule]}.")
    if rule == "fraction" and seed is None:
        raise UsageError(
            "Rule 'fraction' needs a seed, so that every run pins the same entries."
        )
    if rule != "fraction" and seed is not None:
        raise UsageError(f"A seed applies to rule 'fraction' only, not {rule!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UsageError(f"A seed must be a non-negative integer. Received: {_short(seed)}")
    if across_layers and rule != "smallest":
        raise UsageError(f"`across_layers` applies to rule 'smallest' only, not {rule!r}.")
    if norm is not None and rule not in ("smallest_units", "prune_units"):
        raise UsageError(
            f"A norm applies to rules 'smallest_units' and 'prune_units' only, not {rule!r}."
        )
    if rule != "zeros" and argument is None:
        raise KerasurgeryError(f"Rule {rule!r} needs an argument.")
    if rule in FILE_RULES:
        path = Path(argument)
        if folder is not None and not path.is_absolute():
            path = Path(folder) / path
        return _file_pins(rule, path, patterns, value, max_array_bytes)
    built = _rule(rule, argument, value=value, bias=bias, seed=seed,
                  across_layers=across_layers, norm=norm)
    # One rule object for every pattern: `across_layers` ranks all their layers together.
    return {pattern: built for pattern in patterns}


def _rule(
    rule: str, argument: Any, *, value: Any, bias: bool | None, seed: Any,
    across_layers: bool = False, norm: int | None = None,
) -> Any:
    if rule == "smallest":
        return pruning.smallest(argument, bias=bool(bias), value=value, across_layers=across_layers)
    if rule == "n_of_m":
        n, m = argument
        return pruning.n_of_m(n, m, value=value)
    if rule == "prune_units":
        if value is not None:
            raise UsageError("Rule 'prune_units' pins whole units at 0; it takes no value.")
        norm = 2 if norm is None else norm
        if isinstance(norm, bool) or norm not in (1, 2):
            raise KerasurgeryError(f"Expected norm 1 or 2. Received: {_short(norm)}")
        return UnitPruning(pruning.checked_fraction(argument), norm)
    if rule == "smallest_units":
        if bias is False:
            raise UsageError("Rule 'smallest_units' prunes whole units, bias entries included.")
        return pruning.smallest_units(argument, 1 if norm is None else norm, value=value)
    if rule == "zeros":
        return pins.zeros(bias=bool(bias), value=value)
    if rule == "below":
        return pins.below(argument, bias=bool(bias), value=value)
    if rule == "fraction":
        return pins.fraction(argument, seed=seed, bias=bool(bias), value=value)
    if rule == "inputs":
        return _ranged(pins.inputs, argument, "input", value=value)
    if rule == "units":
        # None: the bias entries too where the layer has a bias (pins.units' default).
        return _ranged(pins.units, argument, "unit", value=value, bias=bias)
    # index: two numbers name a kernel entry, one number a bias entry.
    kernel = [tuple(index) for index in argument if len(index) == 2]
    bias_index = [index[0] for index in argument if len(index) == 1]
    bad = [tuple(index) for index in argument if len(index) not in (1, 2)]
    if bad:
        raise KerasurgeryError(
            "Expected an index as (row, column) for a kernel entry or (unit,) for "
            f"a bias entry. Received: {bad[0]}"
        )
    return pins.entries(kernel, bias=bias_index, value=value)


def _ranged(make: Any, indices: Sequence[int | range], what: str, **kwargs: Any) -> Any:
    """`make(indices, **kwargs)` (`pins.inputs` or `pins.units`), where `indices`
    may hold ranges (`--inputs 0-100000000`): these are checked against the
    layer's axis before they are expanded, so a range costs no more memory
    than the layer has entries."""
    if not any(isinstance(i, range) for i in indices):
        return make(indices, **kwargs)
    base = make([], **kwargs)

    def select(w: np.ndarray, which: str, axes: Any) -> np.ndarray:
        along = axes.inputs if what == "input" else axes.units
        if which == _BIAS:
            along = tuple(range(w.ndim))
        n = math.prod(w.shape[a % w.ndim] for a in along) if along and w.ndim else 0
        for part in indices:
            first, last = (part.start, part.stop - 1) if isinstance(part, range) else (part, part)
            if part == range(0) or not (-n <= first < n and -n <= last < n):
                shown = f"{first}-{last}" if isinstance(part, range) else str(part)
                raise pins.PinError(
                    f"The {what} range {shown} is out of range for shape {tuple(w.shape)} "
                    f"({n} {what}s)."
                )
        expanded = [i for part in indices for i in (part if isinstance(part, range) else (part,))]
        return make(expanded, **kwargs).select(w, which, axes)

    # The rule stays the one `make` builds (its name, bias and value); only
    # its selection waits for the weight.
    return dataclasses.replace(base, select=select)


def _short(number: Any) -> str:
    """A number as text, long integers shortened (Python refuses `str` past 4300 digits)."""
    if isinstance(number, int) and not isinstance(number, bool) and abs(number) >= 10 ** 20:
        digits = int((abs(number).bit_length() - 1) * math.log10(2)) + 1
        digits += abs(number) >= 10 ** digits
        return f"an integer of {digits} digits{' (negative)' if number < 0 else ''}"
    return repr(number)


def _file_pins(
    rule: str, path: Path, patterns: Sequence[str], value: float | None,
    max_bytes: int | None = None,
) -> dict[str, Any]:
    names = array_names(path)
    if names is None:
        built = _array_pin(rule, load_arrays(path, max_bytes=max_bytes), None, value, path)
        return {pattern: built for pattern in patterns}
    layers_of: dict[str, tuple[str, str]] = {}
    for key in names:
        layer, _, which = key.partition("/")
        if which not in ("", _KERNEL, _BIAS) or not layer:
            raise KerasurgeryError(
                f"{path}: unexpected array key {key!r}; expected a layer name, "
                "'LAYER/kernel' or 'LAYER/bias'."
            )
        layers_of[key] = (layer, which)
    if rule == "connections" and any(which == _BIAS for _, which in layers_of.values()):
        found = sorted(layer for layer, which in layers_of.values() if which == _BIAS)
        raise KerasurgeryError(
            f"{path}: a connections matrix describes the kernel only; found bias "
            f"arrays for {', '.join(found)}."
        )
    # Only the arrays of the layers the patterns pick are read; the others
    # are never loaded, however large they claim to be.
    picked = {layer for layer, _ in layers_of.values()
              if any(fnmatch.fnmatchcase(layer, pattern) for pattern in patterns)}
    arrays = load_arrays(path, keys=[k for k, (layer, _) in layers_of.items() if layer in picked],
                         max_bytes=max_bytes)
    kernels: dict[str, np.ndarray] = {}
    biases: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        layer, which = layers_of[key]
        (biases if which == _BIAS else kernels)[layer] = array
    names = list(dict.fromkeys(layer for layer, _ in layers_of.values()))
    selected: dict[str, Any] = {}
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise KerasurgeryError(
                f"{path}: no array for a layer matching {pattern!r}; "
                f"the file holds: {', '.join(names) or 'nothing'}."
            )
        for name in matched:
            selected[name] = _array_pin(rule, kernels.get(name), biases.get(name), value, path)
    return selected


def _array_pin(
    rule: str, kernel: np.ndarray | None, bias: np.ndarray | None, value: Any, path: Path
) -> Any:
    if rule == "connections":
        try:
            return pins.connections(kernel, value=0.0 if value is None else value)
        except KerasurgeryError as e:
            raise type(e)(f"{path}: {e}") from None
    # An explicit mask is already a pin; `freeze` checks its shape and dtype
    # against the layer it lands on.
    return Pin(
        kernel=kernel,
        bias=bias,
        kernel_value=value if kernel is not None else None,
        bias_value=value if bias is not None else None,
    )


def array_names(path: str | os.PathLike) -> list[str] | None:
    """The array names of an `.npz` file, read from its directory; `None` for an `.npy` file.

    Raises:
        KerasurgeryError: the file is missing or unreadable.
    """
    path = _array_file(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return list(_npz_members(path, archive))
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise _unreadable(path, e) from None


def load_arrays(
    path: str | os.PathLike, *, keys: Sequence[str] | None = None, max_bytes: int | None = None
) -> np.ndarray | dict[str, np.ndarray]:
    """Reads an `.npy` array or an `.npz` archive of named arrays, without pickles.

    Each array's header is checked before the array is read: its declared
    size must be stored in the file (an `.npz` member: within what its
    compressed bytes can expand to) and within `max_bytes`.

    Args:
        path: The `.npy` or `.npz` file.
        keys: For an `.npz` file, the arrays to read (default: all).
        max_bytes: The most bytes one array may declare.

    Raises:
        KerasurgeryError: the file is missing, unreadable, not numpy data, or
            declares an array it does not hold or larger than `max_bytes`.
    """
    path = _array_file(path)
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                _check_header(path, f, os.fstat(f.fileno()).st_size, max_bytes, "")
            return np.load(path, allow_pickle=False)
        with zipfile.ZipFile(path) as archive:
            members = _npz_members(path, archive)
            wanted = list(members) if keys is None else list(keys)
            for key in wanted:
                info = archive.getinfo(members[key])
                if info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
                    raise KerasurgeryError(
                        f"{path}: array {key!r} claims {info.file_size:,} bytes but only "
                        f"{info.compress_size:,} are stored."
                    )
                with archive.open(info) as f:
                    _check_header(path, f, info.file_size, max_bytes, f"array {key!r} ")
        with np.load(path, allow_pickle=False) as loaded:
            return {key: loaded[key] for key in wanted}
    except KerasurgeryError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise _unreadable(path, e) from None



def _array_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise KerasurgeryError(f"{path}: no such file." if not path.exists() else f"{path}: is not a file.")
    return path


def _key(member: str) -> str:
    return member[:-4] if member.endswith(".npy") else member


def _npz_members(path: Path, archive: zipfile.ZipFile) -> dict[str, str]:
    """`{key: member}` of an `.npz` archive, refusing two members for one key:
    numpy reads `d1` for the key `d1` where `d1.npy` is there too, so the
    member whose header was checked must be the only one."""
    members: dict[str, str] = {}
    for name in archive.namelist():
        key = _key(name)
        if key in members:
            raise KerasurgeryError(
                f"{path}: holds two arrays for the key {key!r} ({members[key]!r} and "
                f"{name!r}); which one numpy reads is not defined, so the file is refused."
            )
        members[key] = name
    return members


def _unreadable(path: Path, error: Exception) -> KerasurgeryError:
    # Never the library's message: numpy's quotes the bytes it found
    # (another file's first bytes, a header of any length).
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    elif isinstance(error, zipfile.BadZipFile):
        reason = "a damaged zip archive"
    else:
        reason = "no numpy array header where one must be"
    return KerasurgeryError(f"{path}: cannot read it as an .npy or .npz array file ({reason}).")


def _check_header(path: Path, f: Any, size: int, max_bytes: int | None, what: str) -> None:
    """Reads an `.npy` header from `f` and refuses an array the `size` bytes
    cannot hold, or larger than `max_bytes`, before numpy allocates it."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise KerasurgeryError(
            f"{path}: {what}holds Python objects (a pickle), which are never loaded."
        )
    declared = math.prod(shape) * dtype.itemsize
    header = f.tell()
    if declared > size - header:
        raise KerasurgeryError(
            f"{path}: {what}declares shape {_shape(shape)} ({declared:,} bytes), but the "
            f"file holds {max(size - header, 0):,}: it is truncated or hostile."
        )
    if max_bytes is not None and declared > max_bytes:
        raise KerasurgeryError(
            f"{path}: {what}declares shape {_shape(shape)} ({declared:,} bytes), more than "
            f"any weight of the model could use ({max_bytes:,} bytes)."
        )


def _shape(shape: tuple) -> str:
    text = str(tuple(shape))
    return text if len(text) <= 80 else text[:77] + "..."


def load_spec(path: str | os.PathLike, *, max_array_bytes: int | None = None) -> dict[str, Any]:
    """Reads a TOML spec (one `[[layer]]` table per layer or pattern) into `freeze` pins.

    Relative array file paths resolve against the spec file's folder.

    Args:
        path: The `.toml` file.
        max_array_bytes: As for `pins_for`.

    Returns:
        A mapping from layer name or pattern to a rule or `Pin`, for
        `kerasurgery.freeze`.

    Raises:
        KerasurgeryError: the file is unreadable or not TOML, a key is unknown,
            a value has the wrong type, an argument is missing, or two entries
            name the same layer or pattern. The message names the file and the
            entry.

    Example:

    ```python
    model = kerasurgery.freeze(model, load_spec("pins.toml"))
    ```
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise KerasurgeryError(f"{path}: no such file.") from None
    except IsADirectoryError:
        raise KerasurgeryError(f"{path}: is a folder, not a spec file.") from None
    except OSError as e:
        raise KerasurgeryError(f"{path}: cannot read: {e.strerror}.") from None
    except UnicodeDecodeError as e:  # not the bytes: it may be any file
        raise KerasurgeryError(f"{path}: is not valid TOML (not UTF-8 text at byte {e.start}).") from None
    except tomllib.TOMLDecodeError as e:  # says where, never what
        raise KerasurgeryError(f"{path}: is not valid TOML ({one_line(e)}).") from None
    except RecursionError:
        raise KerasurgeryError(f"{path}: nests arrays or tables too deeply to read.") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise KerasurgeryError(f"{path}: is not valid TOML ({one_line(e)}).") from None
    unknown = [key for key in document if key != "layer"]
    if unknown:
        raise KerasurgeryError(
            f"{path}: unknown top-level key {unknown[0]!r}; a spec holds "
            "[[layer]] tables only."
        )
    entries = document.get("layer")
    if not isinstance(entries, list) or not entries or not all(
        isinstance(entry, dict) for entry in entries
    ):
        raise KerasurgeryError(
            f"{path}: expected one or more [[layer]] tables, each with a `pattern`."
        )
    result: dict[str, Any] = {}
    origin: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: [[layer]] entry {number}"
        if isinstance(entry.get("pattern"), str):
            where += f" ({entry['pattern']!r})"
        try:
            built = _entry_pins(entry, path.parent, max_array_bytes)
        except KerasurgeryError as e:
            # A contradiction inside the file is bad input, not a usage error.
            raise KerasurgeryError(f"{where}: {e}") from None
        for key, rule in built.items():
            if key in result:
                raise KerasurgeryError(
                    f"{where}: {key!r} is already pinned by entry {origin[key]}; "
                    "give each layer or pattern one entry (freeze again to add pins)."
                )
            result[key] = rule
            origin[key] = number
    return result


def _entry_pins(
    entry: Mapping[str, Any], folder: Path, max_array_bytes: int | None = None
) -> dict[str, Any]:
    unknown = [key for key in entry if key not in _ENTRY_KEYS]
    if unknown:
        raise KerasurgeryError(
            f"unknown key {unknown[0]!r}; expected: {', '.join(_ENTRY_KEYS)}."
        )
    pattern = entry.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise KerasurgeryError("`pattern` (a layer name or glob) is required.")
    given = [rule for rule in RULES[1:] if rule in entry]
    if len(given) > 1:
        raise KerasurgeryError(
            f"one rule per entry; found arguments of {', '.join(given)}."
        )
    rule = entry.get("rule", given[0] if given else "zeros")
    if not isinstance(rule, str) or rule not in RULES:
        raise KerasurgeryError(f"`rule` must be one of {', '.join(RULES)}. Received: {rule!r}")
    if given and given[0] != rule:
        raise KerasurgeryError(f"rule {rule!r} does not take `{given[0]}`.")
    if rule != "zeros" and rule not in entry:
        raise KerasurgeryError(f"rule {rule!r} needs `{rule} = {_ARGUMENT_HELP[rule]}`.")
    argument = _argument(rule, entry.get(rule))
    return pins_for(
        rule,
        argument,
        patterns=[pattern],
        value=_optional(entry, "value", _number),
        bias=_optional(entry, "bias", _boolean),
        seed=_optional(entry, "seed", _integer),
        folder=folder,
        across_layers=bool(_optional(entry, "across_layers", _boolean)),
        norm=_optional(entry, "norm", _integer),
        max_array_bytes=max_array_bytes,
    )


_ARGUMENT_HELP = {
    "below": "a threshold",
    "fraction": "a fraction between 0 and 1 (with `seed`)",
    "mask": '"FILE.npy" or "FILE.npz"',
    "connections": '"FILE.npy" or "FILE.npz"',
    "index": "[[row, column], ..., [unit], ...]",
    "inputs": "[row, ...]",
    "units": "[unit, ...]",
    "smallest": "a fraction between 0 and 1",
    "smallest_units": "a fraction between 0 and 1",
    "prune_units": "a fraction between 0 and 1",
    "n_of_m": '"2:4"',
}


def _argument(rule: str, raw: Any) -> Any:
    if rule == "zeros":
        return None
    if rule in ("below", "fraction", "smallest", "smallest_units", "prune_units"):
        return _number(raw, rule)
    if rule == "n_of_m":
        return n_of_m_argument(raw)
    if rule in FILE_RULES:
        if not isinstance(raw, str) or not raw:
            raise KerasurgeryError(f"`{rule}` must be a file path. Received: {raw!r}")
        return raw
    if rule == "index":
        if not isinstance(raw, list) or not raw:
            raise KerasurgeryError(f"`index` must be a list like {_ARGUMENT_HELP['index']}.")
        return [
            tuple(_integers(item, "index")) if isinstance(item, list) else (_integer(item, "index"),)
            for item in raw
        ]
    return _integers(raw, rule)


def n_of_m_argument(raw: Any) -> tuple[int, int]:
    """`"2:4"` (or `[2, 4]`) -> (2, 4)."""
    if isinstance(raw, str):
        n, colon, m = raw.partition(":")
        if colon and n.strip().isdigit() and m.strip().isdigit() and len(raw) <= 20:
            return int(n), int(m)
    elif isinstance(raw, list) and len(raw) == 2:
        return _integer(raw[0], "n_of_m"), _integer(raw[1], "n_of_m")
    raise KerasurgeryError(f'`n_of_m` must look like "2:4" (N:M). Received: {raw!r}')


def _optional(entry: Mapping[str, Any], key: str, check: Any) -> Any:
    return check(entry[key], key) if key in entry else None


def _number(raw: Any, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise KerasurgeryError(f"`{key}` must be a number. Received: {raw!r}")
    return float(raw)


def _integer(raw: Any, key: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise KerasurgeryError(f"`{key}` must be an integer. Received: {raw!r}")
    return raw


def _integers(raw: Any, key: str) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise KerasurgeryError(f"`{key}` must be a non-empty list of integers. Received: {raw!r}")
    return [_integer(item, key) for item in raw]


def _boolean(raw: Any, key: str) -> bool:
    if not isinstance(raw, bool):
        raise KerasurgeryError(f"`{key}` must be true or false. Received: {raw!r}")
    return raw
