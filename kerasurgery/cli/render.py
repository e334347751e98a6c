"""What the command line shows: rich tables and pin maps, one-line messages, JSON.

`Ui` is the one place output is written: tables and text to stdout through
rich, `error:` / `warning:` / `note:` lines to stderr, and `--json` documents
printed as they are. It also keeps TensorFlow's native start-up log off the
terminal while Keras is imported. rich, numpy and Keras are imported when
first used, so that `--help` stays fast.

Names are data: a layer name, path or file name is shown as text, never read
as rich markup (`[/bold]`), and its control characters (ANSI escapes) are
shown escaped (`\\x1b`), not sent to the terminal. Output that is not a
terminal (a pipe, a log) is not cut to a width: every name and number stays
whole.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from typing import Any


class Ui:
    """Where output goes: rich to stdout, one-line messages to stderr, JSON for scripts."""

    def __init__(self, *, json_output: bool, debug: bool) -> None:
        self.json_output = json_output
        self.debug = debug
        self.warnings: list[str] = []

    def _console(self, *, stderr: bool = False) -> Any:
        from rich.console import Console

        console = Console(stderr=stderr, highlight=False)
        if not console.is_terminal:
            # Piped or logged: rich would fit everything into 80 columns,
            # folding names and cutting numbers ("23,47…").
            console.width = _UNLIMITED
        return console

    def error(self, message: str) -> None:
        from rich.text import Text

        line = Text("error: ", style="bold red") + Text(printable(" ".join(message.split())), style="red")
        self._console(stderr=True).print(line, soft_wrap=True)

    def warn(self, message: str) -> None:
        from rich.text import Text

        message = " ".join(message.split())
        self.warnings.append(message)
        line = Text("warning: ", style="bold yellow") + Text(printable(message))
        self._console(stderr=True).print(line, soft_wrap=True)

    def note(self, message: str) -> None:
        """A line on stderr about something done differently than asked, that is not wrong."""
        from rich.text import Text

        line = Text("note: ", style="bold") + Text(printable(" ".join(message.split())))
        self._console(stderr=True).print(line, soft_wrap=True)

    def say(self, message: str, style: str | None = None) -> None:
        from rich.text import Text

        self._console().print(Text(printable(message), style=style or ""), soft_wrap=True)

    def print_json(self, document: dict[str, Any]) -> None:
        print(json.dumps(document, indent=2))

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        console = self._console(stderr=True)
        if self.json_output or not console.is_terminal:
            yield
            return
        from rich.text import Text

        with console.status(Text(printable(f"{message}…"))):
            yield

    @contextlib.contextmanager
    def tensorflow(self) -> Iterator[None]:
        """Imports Keras (and TensorFlow) with their native start-up log kept off the terminal."""
        if self.debug:
            import keras  # noqa: F401,F811

            yield
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _native_stderr_silenced():
            with self.status("Starting Keras"):
                import keras  # noqa: F401,F811
            yield

    def layer_table(
        self, layers: list[dict[str, Any]], title: str | None, totals: dict[str, Any] | None = None,
        *, pinned: str = "pinned",
    ) -> None:
        """One row per layer: class, kernel shape, pinned counts, pinned share and sparsity.

        Sparsity is the share of exact zeros (pinned or not) in the weights but
        the bias, shown when the rows count zeros (`inspect`); `totals` adds a
        last row for the whole model. `pinned` names the count columns
        (`strip`: "baked-in", entries that were pinned and now hold their values).
        """
        from rich.table import Table

        console = self._console()
        table = Table(title=self._cell(title, console, title=True) if title is not None else None,
                      title_justify="left", show_footer=totals is not None)
        columns = [("layer", "left"), ("class", "left"), ("kernel", "right"), (f"{pinned} kernel", "right"),
                   (f"{pinned} bias", "right"), (f"{pinned} %", "right")]
        zeros = any(layer.get("zeros") is not None for layer in layers)
        if zeros:
            columns.append(("zeros %", "right"))
        footer = _total_row(totals)[: len(columns)] if totals is not None else [""] * len(columns)
        for (column, justify), foot in zip(columns, footer):
            # Names and paths are folded onto more lines, never cut short.
            table.add_column(column, footer=foot, justify=justify, no_wrap=column == "class",
                             overflow="fold" if justify == "left" else "ellipsis")
        for layer in layers:
            shape = layer["kernel_shape"]
            # `size` counts every weight but the bias (a separable convolution has two).
            size = layer.get("size") or (math.prod(shape) if shape else 0)
            cells = [
                layer["path"], layer["class_name"],
                "×".join(map(str, shape)) if shape else "",
                f"{layer['pinned_kernel']:,}" if shape else "",
                f"{layer['pinned_bias']:,}" if shape else "",
                _percent(layer["pinned_kernel"], size),
            ]
            if zeros:
                cells.append(_percent(layer.get("zeros"), size))
            table.add_row(*(self._cell(cell, console) for cell in cells))
        console.print(table)

    def units_table(self, rows: list[dict[str, Any]], left: list[dict[str, Any]]) -> None:
        """`inspect --units`: per producing layer, its units, those pinned whole, the removable ones."""
        self._rows_table(
            "units (removable: what `kerasurgery shrink` removes; a group's count, shared by its layers)",
            [("layer", "left"), ("class", "left"), ("units", "right"), ("pinned whole", "right"),
             ("removable", "right"), ("group", "left")],
            [(row["path"], row["class_name"], f"{row['units']:,}", f"{row['pinned_whole']:,}",
              f"{row['removable']:,}", " + ".join(row["group"]) if len(row["group"]) > 1 else "")
             for row in rows],
        )
        self._left_alone(left)

    def shrink_table(self, rows: list[dict[str, Any]], left: list[dict[str, Any]], title: str) -> None:
        """`shrink`: per producing layer, units and parameters before -> after, then what stayed and why."""
        self._rows_table(
            title,
            [("layer", "left"), ("class", "left"), ("units", "right"), ("parameters", "right")],
            [(row["path"], row["class_name"], f"{row['units_before']:,} -> {row['units_after']:,}",
              f"{row['params_before']:,} -> {row['params_after']:,}") for row in rows],
        )
        self._left_alone(left)

    def _left_alone(self, left: list[dict[str, Any]]) -> None:
        if left:
            self._rows_table("left as they are", [("layers", "left"), ("why", "left")],
                             [(" + ".join(row["layers"]), row["reason"]) for row in left])

    def _rows_table(self, title: str, columns: list[tuple[str, str]], rows: list[tuple]) -> None:
        from rich.table import Table

        console = self._console()
        table = Table(title=self._cell(title, console, title=True), title_justify="left")
        for column, justify in columns:
            table.add_column(column, justify=justify, overflow="fold" if justify == "left" else "ellipsis")
        for row in rows:
            table.add_row(*(self._cell(cell, console) for cell in row))
        console.print(table)

    def violation_table(self, rows: list[dict[str, Any]]) -> None:
        from rich.table import Table

        console = self._console()
        table = Table(title="pins that do not hold", title_justify="left")
        for column in ("layer", "weight", "violations", "pinned", "largest deviation", "reason"):
            table.add_column(column, justify="right" if column in ("violations", "pinned", "largest deviation") else "left")
        for row in rows:
            deviation = row["max_deviation"]
            cells = (row["layer"], row["weight"], f"{row['violations']:,}", f"{row['pinned']:,}",
                     "" if deviation is None else f"{deviation:.6g}", row["reason"])
            table.add_row(*(self._cell(cell, console) for cell in cells))
        console.print(table)

    @staticmethod
    def _cell(value: Any, console: Any, *, title: bool = False) -> Any:
        """A table cell or title as rich text: never markup; unwrapped when not a terminal."""
        from rich.text import Text

        if console.is_terminal:
            return Text(printable(str(value)))
        # A title is as wide as the table unless it may overflow it; a cell
        # may not (it would lose its column's justification), nor need to.
        return Text(printable(str(value)), no_wrap=True, overflow="ignore" if title else None)

    def pattern(self, weights: Any) -> None:
        """Draws a layer's pin masks, down-sampled: each weight but the bias, then the bias.

        `weights` is an `inspection.LayerWeights` (or `DenseWeights`). A weight
        of any rank is drawn as a 2-D grid: rows = all its axes but the last
        (a convolution's kernel positions × input channels), columns = the
        last axis (units, filters); the header says which.
        """
        import numpy as np
        from rich.text import Text

        width = max(8, shutil.get_terminal_size((80, 24)).columns - 8)
        text = Text()
        bias = None
        for name, weight in weights.weights.items():
            mask = np.asarray(weight.mask, dtype=bool)
            if name == "bias":
                bias = mask
                continue
            grid = _as_2d(mask)
            rows, cols = grid.shape
            row_step, col_step = math.ceil(rows / 32) or 1, math.ceil(cols / width) or 1
            pinned = int(mask.sum())
            header = f"{printable(weights.path)}: {printable(name)} {_dims(mask.shape)}"
            if mask.ndim != 2:
                header += f" drawn as {rows}×{cols}"
            axes = _axes(weights.class_name, name, mask.ndim)
            if axes is not None:
                header += f" (rows = {axes[0]}, columns = {axes[1]})"
            header += (f", {pinned:,} of {mask.size:,} pinned "
                       f"({100 * pinned / max(mask.size, 1):.1f}%)")
            if row_step > 1 or col_step > 1:
                header += f"; each cell = {row_step}×{col_step} entries"
            text += Text(header + "\n", style="bold")
            for line in _block_fraction(grid, row_step, col_step):
                text += _cells(line) + Text("\n")
        if bias is not None:
            grid = _as_2d(bias)
            rows, cols = grid.shape
            row_step, col_step = math.ceil(rows / 32) or 1, math.ceil(cols / width) or 1
            label = "bias:" if bias.ndim <= 1 else f"bias {_dims(bias.shape)}:"
            text += Text(label + "\n", style="bold")
            for line in _block_fraction(grid, row_step, col_step):
                text += _cells(line) + Text("\n")
        text += Text("█ all pinned  ▓ most  ▒ some  ░ few  · none", style="dim")
        self._console().print(text, soft_wrap=True)


def _as_2d(mask: Any) -> Any:
    """A weight as (all axes but the last, the last axis); a vector as one row."""
    if mask.ndim == 0:
        return mask.reshape(1, 1)
    if mask.ndim == 1:
        return mask.reshape(1, -1)
    return mask.reshape(math.prod(mask.shape[:-1]), mask.shape[-1])


def _dims(shape: tuple) -> str:
    return "×".join(map(str, shape)) if shape else "scalar"


def _axes(class_name: str, weight: str, ndim: int) -> tuple[str, str] | None:
    """What a weight's rows and columns are, when drawn as a grid (its kind's
    `grid`); `None` for a Dense-like 2-D kernel (rows = inputs, columns = units)."""
    from kerasurgery import kinds

    kind = kinds.find(class_name)
    if kind is not None and weight in kind.grid:
        return kind.grid[weight]
    if ndim > 2:
        return "all axes but the last", "the last axis"
    return None


def _block_fraction(mask: Any, row_step: int, col_step: int) -> Any:
    import numpy as np

    counts = mask.astype(np.int64)
    rows, cols = mask.shape
    r, c = np.arange(0, rows, row_step), np.arange(0, cols, col_step)
    if not rows or not cols:
        return np.zeros((len(r), len(c)))
    sums = np.add.reduceat(np.add.reduceat(counts, r, axis=0), c, axis=1)
    sizes = np.outer(np.diff(np.append(r, rows)), np.diff(np.append(c, cols)))
    return sums / sizes


def _cells(fractions: Any) -> Any:
    from rich.text import Text

    text = Text()
    for f in fractions:
        if f == 0:
            text.append("·", style="dim")
        elif f == 1:
            text.append("█", style="cyan")
        else:
            text.append("░▒▓"[min(2, int(f * 3))], style="cyan")
    return text


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null; Python's own stderr keeps the terminal.

    TensorFlow's C++ start-up messages (absl, oneDNN, cudart) bypass Python and
    ignore TF_CPP_MIN_LOG_LEVEL, so only the descriptor can hold them back.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    original = sys.stderr
    try:
        writes_to_fd2 = original.fileno() == 2
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        writes_to_fd2 = False  # e.g. captured by a test runner: leave it be
    replacement = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        if writes_to_fd2:
            replacement = open(  # noqa: SIM115 - closed below
                os.dup(saved), "w", encoding=getattr(original, "encoding", None) or "utf-8",
                errors="backslashreplace", buffering=1,
            )
            sys.stderr = replacement
        yield
    finally:
        if replacement is not None:
            replacement.flush()
            sys.stderr = original
            replacement.close()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# Wider than any line a table of names and numbers makes.
_UNLIMITED = 1 << 20
# C0 and C1 control characters (ESC starts an ANSI sequence), DEL, and the
# bidirectional overrides and isolates, which reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with its control characters escaped as Python writes them (`\\x1b`)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _percent(part: int | None, whole: int) -> str:
    return f"{100 * part / whole:.1f}" if whole and part is not None else ""


def _total_row(totals: dict[str, Any]) -> list[str]:
    size = totals["size"]
    return [
        "total", f"{totals['layers']} layers", f"{size:,}", f"{totals['pinned_kernel']:,}",
        f"{totals['pinned_bias']:,}", _percent(totals["pinned_kernel"], size),
        _percent(totals["zeros"], size),
    ]
