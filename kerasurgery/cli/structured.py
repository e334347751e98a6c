"""The command line's structured pruning: `freeze --prune-units`, `inspect --units`, `shrink`.

`ks.prune_units` and `ks.shrink` work on dependency groups, which span
layers and need the live Keras model; these front ends load it, call the
library, and hand the rows of `cli/units.py` to `render`. Nothing here
imports Keras until a command runs, so that `--help` and plain `inspect`
stay fast. The shared steps (checking IN and OUT, loading, atomic saving,
the JSON frame) are `model_io`'s, shared with `commands`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kerasurgery.cli import model_io
from kerasurgery.cli.arguments import OK
from kerasurgery.cli.render import Ui
from kerasurgery.errors import KerasurgeryError


def unit_pruning(pins: dict[str, Any]) -> dict[str, Any]:
    """The `--prune-units` / `prune_units = F` entries of the pins, by pattern."""
    from kerasurgery.cli.spec import UnitPruning

    return {key: rule for key, rule in pins.items() if isinstance(rule, UnitPruning)}


def prune_units(model: Any, units: dict[str, Any]) -> Any:
    """`ks.prune_units` once per (fraction, norm), over the patterns that ask for it."""
    from kerasurgery.model import units as units_lib

    patterns: dict[tuple[float, int], list[str]] = {}
    for key, rule in units.items():
        patterns.setdefault((rule.fraction, rule.norm), []).append(key)
    for (fraction, norm), keys in patterns.items():
        model = units_lib.prune_units(model, fraction, norm=norm, layers=keys)
    return model


def units_of(args: argparse.Namespace, ui: Ui) -> dict[str, Any]:
    """`inspect --units`: the model loaded with Keras, its units per producing layer.

    `--layer` keeps the rows of that layer (its path or name) and the
    left-alone entries that name it.
    """
    args.unsafe = False  # `inspect` never runs code stored in a file
    with ui.tensorflow():
        from kerasurgery.cli.units import left_alone, unit_rows
        from kerasurgery.model.groups import dependency_groups

        model, _ = model_io.load(Path(args.file), args, ui, compile=False)
        with ui.status("Finding the dependency groups"):
            groups = dependency_groups(model)
        rows, left = unit_rows(model, groups), left_alone(groups)
    if args.layer is not None:
        rows = [row for row in rows if args.layer in (row["path"], row["name"])]
        left = [row for row in left
                if any(args.layer == path or args.layer == path.rsplit("/", 1)[-1]
                       for path in row["layers"])]
    return {"units": rows, "left_alone": left}


def shrink(args: argparse.Namespace, ui: Ui) -> int:
    """`kerasurgery shrink`: `ks.shrink` of IN, saved as a plain Keras file beside it."""
    source, output = model_io.source_and_output(args, "shrunk")
    with ui.tensorflow():
        from kerasurgery.cli.units import left_alone, shrink_rows
        from kerasurgery.model.groups import dependency_groups
        from kerasurgery.model import shrink as shrink_lib

        model, compiled = model_io.load(source, args, ui)
        with ui.status("Finding the dependency groups"):
            # Pins baked in first (what `shrink` does), so that both models
            # count parameters alike: no pin masks on one side.
            model = _stripped(model)
            groups = dependency_groups(model)
        if not groups:
            raise KerasurgeryError(
                f"{source}: the model has no Dense or convolution layer whose units "
                "could be removed; there is nothing to shrink."
            )
        if not shrink_lib.removed_units(groups):
            raise KerasurgeryError(
                f"{source}: no unit is exactly zero wherever it is read; there is nothing "
                "to shrink (prune first: kerasurgery freeze IN --prune-units F)."
            )
        with ui.status("Removing the units pinned at zero"):
            small = shrink_lib.shrink(model)
        model_io.save(small, output, args, ui)
        layers = shrink_rows(model, small, groups)
        params = {"before": int(model.count_params()), "after": int(small.count_params())}
    document = model_io.written(args, "shrink", source, output, False, ui, layers=layers,
                        parameters=params, left_alone=left_alone(groups))
    if ui.json_output:
        ui.print_json(document)
        return OK
    ui.shrink_table(layers, document["left_alone"], title=str(output))
    cut = [row for row in layers if row["units_after"] < row["units_before"]]
    units = sum(row["units_before"] - row["units_after"] for row in cut)
    ui.say(
        f"shrank {source} -> {output}: {units:,} units removed from {len(cut)} "
        f"layer{'s' if len(cut) != 1 else ''}, parameters "
        f"{params['before']:,} -> {params['after']:,} ({params['after'] / max(params['before'], 1):.1%}); "
        "plain Keras layers, no training config"
        + (" (IN's does not fit the new shapes)." if compiled else ".")
    )
    return OK


def _stripped(model: Any) -> Any:
    from kerasurgery import layers as layers_lib
    from kerasurgery.model import surgery
    from kerasurgery.model.walk import walk_layers

    if any(layers_lib.is_pinned(layer) for _, layer in walk_layers(model)):
        return surgery.strip(model)
    return model


