"""Waiting for submitted jobs with a progress bar: an HTML bar in a notebook, rich's bar on a terminal, and
otherwise a line whenever the counts change. The counts and their line are `klab status`'s."""
from __future__ import annotations

import sys
import time
from html import escape
from typing import Any

from service.cli.progress import count_line, counts, pause
from service.jobs.selection import Selection

LINE_SECONDS = 2.0
"""Plain progress lines come at most this often (the last one always)."""


class _Lines:
    """A line on stderr when the counts change: logs and piped output keep a readable record."""

    def __init__(self) -> None:
        self.last, self.at = "", 0.0

    def update(self, c: dict[str, Any], final: bool = False) -> None:
        line = count_line(c)
        if line != self.last and (final or time.monotonic() - self.at >= LINE_SECONDS):
            print(line, file=sys.stderr, flush=True)
            self.last, self.at = line, time.monotonic()

    def close(self) -> None:
        pass


class _Shown:
    """What the bar shows: HTML, and its count line as text where a front end shows no HTML (a notebook exported
    as text showed `<IPython.core.display.HTML object>`)."""

    def __init__(self, html: str, text: str) -> None:
        self.html, self.text = html, text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


class _Notebook:
    """An HTML <progress> element, updated in place: works in any Jupyter front end, no widgets needed."""

    def __init__(self) -> None:
        from IPython.display import display

        self.handle = display(_Shown("waiting for the first count...", "waiting for the first count..."),
                              display_id=True)

    def update(self, c: dict[str, Any], final: bool = False) -> None:
        bar = f'<progress value="{c["epochs_done"]}" max="{max(c["epochs_total"], 1)}" style="width:20em"></progress>'
        line = count_line(c)
        self.handle.update(_Shown(f"{bar} <code>{escape(line)}</code>", line))

    def close(self) -> None:
        pass


class _Terminal:
    """rich's bar, as `klab watch` draws it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            transient=True, console=Console(file=sys.stderr), redirect_stdout=False)
        # on stderr, the terminal it was chosen for: on stdout (rich's default) it was drawn nowhere where stdout is
        # piped, and left a blank line there; and stdout stays the program's while it is drawn
        self.task = self.bar.add_task("epochs", total=None)
        self.bar.start()

    def update(self, c: dict[str, Any], final: bool = False) -> None:
        self.bar.update(self.task, total=c["epochs_total"], completed=c["epochs_done"],
                        description=f"{c['finished']}/{c['jobs']} jobs")

    def close(self) -> None:
        self.bar.stop()


class _Quiet:
    def update(self, c: dict[str, Any], final: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython is only imported where it already is)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def _bar(show: bool) -> Any:
    if not show:
        return _Quiet()
    if in_notebook():
        return _Notebook()
    if sys.stderr.isatty():
        return _Terminal()
    return _Lines()


def follow(selection: Selection, timeout: float | None = None, show: bool = True) -> dict[str, Any]:
    """Poll until every selected job is finished (TimeoutError after `timeout` seconds); the last counts."""
    bar = _bar(show)
    started = time.monotonic()
    polled = False
    try:
        while True:
            asked = time.monotonic()
            c = counts(selection, waited=polled)  # jobs gone after the first look were deleted meanwhile
            polled = True
            took = time.monotonic() - asked
            done = c["finished"] == c["jobs"]
            bar.update(c, final=done)
            if done:
                return c
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"still waiting after {timeout:g} s: {count_line(c)}")
            time.sleep(pause(took))
    finally:
        bar.close()
