"""`klab status` and `klab watch`: how far jobs or a sweep have come (reads only)."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from service.cli import cli
from service.cli.options import selected
from service.jobs.selection import Selection

POLL_SECONDS = 0.25
"""How often `watch` and `--wait` read the jobs' progress."""


def counts(selection: Selection) -> dict[str, Any]:
    from service.db.reads import progress, reading

    with reading() as reader:
        return progress(reader, selection)


def count_line(c: dict[str, Any]) -> str:
    parts = ", ".join(f"{n} {s}" for s, n in sorted(c["by_status"].items()))
    pct = 100.0 * c["epochs_done"] / c["epochs_total"] if c["epochs_total"] else 100.0
    return f"{c['jobs']} job(s): {parts}; epochs {c['epochs_done']}/{c['epochs_total']} ({pct:.0f}%)"


def wait(selection: Selection, quiet: bool = False) -> dict[str, Any]:
    """Poll until every selected job is finished, with a progress bar of epochs done on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    show = not quiet and sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, disable=not show) as bar:
        task = bar.add_task("epochs", total=None)
        while True:
            c = counts(selection)
            bar.update(task, total=c["epochs_total"], completed=c["epochs_done"],
                       description=f"{c['finished']}/{c['jobs']} jobs")
            if c["finished"] == c["jobs"]:
                return c
            time.sleep(POLL_SECONDS)


@cli.command()
@selected()
@click.option("--json", "as_json", is_flag=True)
def status(selection: Selection, as_json: bool) -> None:
    """Counts by status and progress of jobs or a sweep."""
    c = counts(selection)
    click.echo(json.dumps(c) if as_json else count_line(c))


@cli.command()
@selected()
def watch(selection: Selection) -> None:
    """A live progress bar until the jobs or the sweep are done."""
    click.echo(count_line(wait(selection)))
