"""`klab list`, `show`, `compare`, `export`, `plot`, `delete`: stored results (reads, and one delete; no torch)."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import click

from service.cli import cli
from service.cli.options import selected
from service.errors import BadInput
from service.jobs.selection import Selection


def _reading():
    from service.db.reads import reading

    return reading()


def _json(value: Any) -> None:
    click.echo(json.dumps(value))


def _epochs_done(row: dict[str, Any]) -> str:
    done, total = row.get("epochs_done"), row.get("epochs")
    return str(total) if done in (None, total) else f"{done}/{total}"


def _unless_lstsq(column: str, text: Callable[[dict[str, Any]], str] | None = None) -> Callable[[dict[str, Any]], str]:
    """A table cell that is '-' for lstsq jobs, solved in one step: no learning rate, no epochs."""
    from service.render.text import cell

    def shown(row: dict[str, Any]) -> str:
        if row.get("method") == "lstsq":
            return "-"
        return text(row) if text else cell(row.get(column))

    return shown


@cli.command("list")
@click.option("--status", default=None, help="only jobs with this status (succeeded, diverged, failed, ...)")
@click.option("--sweep", type=int, default=None, help="only the jobs of this sweep")
@click.option("--method", default=None, help="only jobs trained with this method")
@click.option("--kernel", default=None, help="only jobs with this true kernel (as given, e.g. sobel-x)")
@click.option("--sort", default="-id", show_default=True,
              help="column to sort by (id, status, method, input, kernel, lr, epochs, final_loss, "
                   "relative_error, identifiable); prefix - for descending")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="most rows (0: all)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
def list_(status: str | None, sweep: int | None, method: str | None, kernel: str | None, sort: str,
          limit: int, as_json: bool) -> None:
    """One row per stored job, newest first."""
    from service.db import reads
    from service.render import table

    reads.parse_sort(sort)  # a bad --sort is reported before the database is opened
    with _reading() as reader:
        rows = reads.list_jobs(reader, status=status, sweep=sweep, method=method, kernel=kernel, sort=sort,
                               limit=limit)
    if as_json:
        _json(rows)
    elif not rows:
        click.echo("no jobs", err=True)
    else:
        table.show(reads.LIST_COLUMNS, rows,
                    cells={"lr": _unless_lstsq("lr"), "epochs": _unless_lstsq("epochs", _epochs_done)})


@cli.command()
@click.argument("job_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="print the full stored result, epochs included")
def show(job_id: int, as_json: bool) -> None:
    """One job: its spec, kernels side by side, error metrics, the gap explained and the loss curve."""
    from service.db.reads import result_of
    from service.render.text import render

    with _reading() as reader:
        result = result_of(reader, job_id)
    click.echo(json.dumps(result) if as_json else render(result))


@cli.command()
@selected()
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV")
def compare(selection: Selection, as_json: bool, as_csv: bool) -> None:
    """Jobs in one table, best first by relative error."""
    from service.db import reads
    from service.jobs.result import SUMMARY_NAMES, group
    from service.render import table
    from service.render.export import write_csv

    if as_json and as_csv:
        raise BadInput("csv", "give --json or --csv, not both")
    with _reading() as reader:
        rows = reads.compare(reader, selection)
    if as_json:
        _json(rows)
    elif as_csv:
        write_csv(sys.stdout, list(SUMMARY_NAMES), rows)
    else:
        params = ["method", "input", "kernel", "lr", "epochs", "batch_size", "seed", "noise"]
        shown = reads.varying(rows, params) if len(rows) > 1 else params
        common = [p for p in params if p not in shown]
        metrics = ["status", "epochs_done", "final_loss", "relative_error", "max_abs_error", "identifiable",
                   *group("gap"), *group("pace")]
        title = ("all jobs: " + ", ".join(f"{table.header(p)} {table.cell(rows[0][p])}" for p in common)
                 if common else None)
        table.show(["id", *shown, *metrics], rows, title=title,
                    cells={"lr": _unless_lstsq("lr"), "epochs": _unless_lstsq("epochs")})


@cli.command()
@selected(ids="option")
@click.option("--what", type=click.Choice(["jobs", "epochs"]), default="jobs", show_default=True,
              help="one row per job, or one row per epoch")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--output", default=None, metavar="FILE", help="write here instead of stdout")
def export(selection: Selection, what: str, fmt: str, output: str | None) -> None:
    """Jobs or their epochs as CSV or JSON, streamed (any number of epochs)."""
    from service.db import reads
    from service.render.export import WRITERS

    with _reading() as reader:
        fetch = reads.export_jobs if what == "jobs" else reads.export_epochs
        columns, rows = fetch(reader, selection)
        with _output(output) as out:
            count = WRITERS[fmt](out, columns, rows)
    if output:
        click.echo(f"wrote {count} {what[:-1] if count == 1 else what} to {output}")


@contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    try:
        f = open(path, "w", newline="", encoding="utf-8")
    except OSError as exc:
        raise BadInput("output", f"cannot write {path}: {exc.strerror}") from None
    with f:
        yield f


@cli.command()
@selected(ids="one")
@click.option("-o", "--output", required=True, metavar="FILE.png", help="the PNG to write")
def plot(selection: Selection, output: str) -> None:
    """A job's loss curve and kernels, or a sweep's relative error against what it varied, as a PNG."""
    from service.db import reads

    sweep = selection.sweep
    if not output.lower().endswith(".png"):
        raise BadInput("output", f"must be a .png file, got {output}")
    with _reading() as reader:
        if sweep is None:
            result = reads.result_of(reader, selection.ids[0])
        else:
            name = reads.sweep_name(reader, sweep)
            rows = reads.compare(reader, selection)
            if not rows:
                raise BadInput("sweep", f"sweep {sweep} has no jobs")
    from service.render import plot as plots

    try:
        if sweep is None:
            path = plots.plot_job(result, output)
        else:
            title = f"sweep {sweep}" + (f" ({name})" if name else "") + f": {len(rows)} jobs"
            path = plots.plot_sweep(rows, reads.varying(rows), output, title=title)
    except OSError as exc:
        raise BadInput("output", f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}")


@cli.command()
@selected()
def delete(selection: Selection) -> None:
    """Delete jobs and their epochs (or a whole sweep)."""
    from service.db.connect import Reader
    from service.db.engine import writing
    from service.db.reads import where
    from service.db.writes import delete_jobs

    with writing() as conn:
        where(Reader.of(conn), selection)  # unknown ids or sweep: bad input, nothing deleted
        jobs, epochs = delete_jobs(conn, selection)
    what = f" and sweep {selection.sweep}" if selection.sweep is not None else ""
    click.echo(f"deleted {jobs} job{'s' if jobs != 1 else ''} and {epochs} epoch{'s' if epochs != 1 else ''}{what}")
