"""Tables for the terminal: rich when stdout is a terminal, plain aligned text when it is not.

rich itself honours NO_COLOR; a pipe or a file gets no colors, no box drawing and no truncation.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Collection, Sequence
from typing import IO, Any

from service.errors import visible
from service.jobs import result
from service.jobs.status import JobStatus
from service.render.text import cell, is_terminal

STATUS_STYLE = {JobStatus.SUCCEEDED: "green", JobStatus.DIVERGED: "red", JobStatus.FAILED: "red",
                JobStatus.RUNNING: "yellow", JobStatus.QUEUED: "cyan", JobStatus.CREATED: "cyan",
                JobStatus.CANCELLED: "magenta"}

SQUEEZABLE = {"input", "kernel", "method"}
"""Columns a narrow terminal may cut short (with an ellipsis); every other column keeps its width."""


def header(name: str) -> str:
    f = result.BY_NAME.get(name)
    return f.shown_as if f is not None else name.replace("_", " ")


def plain(columns: Sequence[str], rows: Sequence[dict[str, Any]], cells: dict[str, Any] | None = None,
          numbers: Collection[str] = ()) -> str:
    """Aligned columns separated by two spaces; numbers right-aligned (and the columns `numbers` names, whatever
    they hold), text left-aligned."""
    texts = [[_text(c, r, cells) for c in columns] for r in rows]
    heads = [header(c) for c in columns]
    widths = [max([display_width(h)] + [display_width(t[i]) for t in texts]) for i, h in enumerate(heads)]
    right = [c in numbers or _numeric(c, rows) for c in columns]

    def line(parts: Sequence[str]) -> str:
        pads = [" " * (w - display_width(p)) for p, w in zip(parts, widths)]
        return "  ".join(pad + p if rj else p + pad for p, pad, rj in zip(parts, pads, right)).rstrip()
    return "\n".join([line(heads)] + [line(t) for t in texts])


def display_width(text: str) -> int:
    """Columns a text takes on a terminal, as rich measures it for its tables: two for a wide character (CJK, most
    emoji), none for a combining mark (a name of Chinese characters shifted every later column of a plain table)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric(column: str, rows: Sequence[dict[str, Any]]) -> bool:
    """Whether a column is right-aligned: a stored field by its kind, whatever these rows hold (a kernel column of
    dashes alone is still text, a loss column of dashes alone still numbers); any other by its values."""
    f = result.BY_NAME.get(column)
    if f is not None:
        return f.numeric
    return any(_is_number(r.get(column)) for r in rows) and all(_is_number(r.get(column)) or r.get(column) is None
                                                              for r in rows)


def _text(column: str, row: dict[str, Any], cells: dict[str, Any] | None) -> str:
    if cells and column in cells:
        return visible(cells[column](row))
    return cell(row.get(column))


def show(columns: Sequence[str], rows: Sequence[dict[str, Any]], *, title: str | None = None,
         cells: dict[str, Any] | None = None, stream: IO[str] | None = None, numbers: Collection[str] = ()) -> None:
    """Print a table of rows (dicts) with the given columns; `cells` may format a column itself; `numbers` names
    columns of numbers that may hold none (a group's std of one job: a column of dashes, on the right)."""
    stream = stream or sys.stdout
    if not is_terminal(stream):
        if title:
            stream.write(title + "\n")
        stream.write(plain(columns, rows, cells, numbers) + "\n")
        return
    stream.write(rich_table(columns, rows, title=title, cells=cells, stream=stream, numbers=numbers))


def rich_table(columns: Sequence[str], rows: Sequence[dict[str, Any]], *, title: str | None = None,
               cells: dict[str, Any] | None = None, stream: IO[str] | None = None,
               force_terminal: bool | None = None, width: int | None = None, numbers: Collection[str] = ()) -> str:
    """The table as rich renders it for a terminal (colors unless NO_COLOR is set)."""
    from rich.console import Console

    console = Console(file=stream, force_terminal=force_terminal, width=width,
                      no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)
    natural = {c: max([display_width(header(c))] + [display_width(_text(c, r, cells)) for r in rows]) for c in columns}
    table = _table(columns, rows, natural, title, cells, numbers)
    # Too wide for the terminal: free text (input, kernel, method) gives way first, down to 8 characters;
    # numbers are never cut, so a table that still does not fit is printed whole and the terminal wraps it.
    excess = _width(console, table) - console.width
    if excess > 0:
        widths = dict(natural)
        for c in columns:
            if excess > 0 and c in SQUEEZABLE:
                cut = min(excess, max(0, natural[c] - 8))
                widths[c] -= cut
                excess -= cut
        table = _table(columns, rows, widths, title, cells, numbers)
        console.width = max(console.width, _width(console, table))
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def _width(console, table) -> int:
    """The width the table needs, however narrow the terminal (console.measure stops at its width)."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(1_000_000), table).maximum


def _table(columns: Sequence[str], rows: Sequence[dict[str, Any]], widths: dict[str, int], title: str | None,
           cells: dict[str, Any] | None, numbers: Collection[str] = ()):
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    shown = None if title is None else escape(visible(title))  # a sweep's name or a path, as written: `a[/]b` was
    # rich markup, a traceback
    table = Table(title=shown, header_style="bold", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, collapse_padding=True)
    for c in columns:
        table.add_column(header(c), justify="right" if c in numbers or _numeric(c, rows) else "left", no_wrap=True,
                         overflow="ellipsis", min_width=widths[c], max_width=widths[c])
    for r in rows:
        table.add_row(*(_styled(c, r, cells) for c in columns))
    return table


def _styled(column: str, row: dict[str, Any], cells: dict[str, Any] | None) -> str:
    from rich.markup import escape

    text = escape(_text(column, row, cells))
    style = STATUS_STYLE.get(row.get(column)) if column == "status" else None
    return f"[{style}]{text}[/{style}]" if style else text
