"""`klab list`, `show`, `compare`, `export`, `plot`, `delete`: reading stored results (no torch)."""
from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import click

from service.cli import cli
from service.errors import BadInput

GAP_PARTS = (
    ("optimization", "learned vs the best kernel the data allow (train longer)"),
    ("noise", "best kernel the data allow vs the true one (label noise)"),
    ("identifiability", "what this input cannot determine (a richer input would)"),
)


def _reading():  # noqa: ANN202
    from service.reader import reading  # noqa: PLC0415 - the driver only when a command runs

    return reading()


def _ids(raw: str | None) -> list[int] | None:
    """--ids 1,2,3 as numbers."""
    if raw is None:
        return None
    try:
        ids = [int(p) for p in raw.replace(" ", "").split(",") if p]
    except ValueError:
        raise BadInput("ids", f"must be job ids separated by commas, got {raw!r}") from None
    if not ids:
        raise BadInput("ids", "give at least one job id")
    return ids


def _json(value: Any) -> None:
    click.echo(json.dumps(value))


def _epochs_done(row: dict[str, Any]) -> str:
    done, total = row.get("epochs_done"), row.get("epochs")
    return str(total) if done in (None, total) else f"{done}/{total}"


def _unless_lstsq(column: str, text: Callable[[dict[str, Any]], str] | None = None) -> Callable[[dict[str, Any]], str]:
    """A table cell that is '-' for lstsq jobs, solved in one step: no learning rate, no epochs."""
    from service.tables import cell  # noqa: PLC0415

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
    from service import query, tables  # noqa: PLC0415

    query.parse_sort(sort)  # a bad --sort is reported before the database is opened
    with _reading() as reader:
        rows = query.list_jobs(reader, status=status, sweep=sweep, method=method, kernel=kernel, sort=sort,
                               limit=limit)
    if as_json:
        _json(rows)
    elif not rows:
        click.echo("no jobs", err=True)
    else:
        tables.show(query.LIST_COLUMNS, rows,
                    cells={"lr": _unless_lstsq("lr"), "epochs": _unless_lstsq("epochs", _epochs_done)})


@cli.command()
@click.argument("job_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True, help="print the full stored result, epochs included")
def show(job_id: int, as_json: bool) -> None:
    """One job: its spec, kernels side by side, error metrics, the gap explained and the loss curve."""
    from service import query  # noqa: PLC0415

    with _reading() as reader:
        result = query.result_of(reader, job_id)
    click.echo(json.dumps(result) if as_json else render(result))


def render(result: dict[str, Any]) -> str:
    """The text `klab show` prints."""
    from service.report import difference, side_by_side, sparkline  # noqa: PLC0415
    from service.tables import cell  # noqa: PLC0415

    spec = result.get("spec") or {}
    head = f"job {result['id']}: {result['status']}"
    if result.get("sweep_id") is not None:
        head += f" (sweep {result['sweep_id']})"
    lines = [head, "spec: " + ", ".join(f"{k.replace('_', ' ')} {cell(v)}" for k, v in spec.items())]
    ran = [f"on {result['device']}" if result.get("device") else None,
           f"torch {result['torch_version']}" if result.get("torch_version") else None,
           f"{result['train_seconds']:.3g} s" if result.get("train_seconds") is not None else None,
           f"by {result['worker_host']}" if result.get("worker_host") else None,
           f"created {result['created_at']}" if result.get("created_at") else None,
           f"finished {result['finished_at']}" if result.get("finished_at") else None]
    lines.append("ran: " + ", ".join(r for r in ran if r))
    losses = [e["loss"] for e in result.get("epochs") or []]
    if losses:
        lines.append(f"loss {cell(losses[0])} -> {cell(losses[-1])} over {len(losses)} "
                     f"epoch{'s' if len(losses) != 1 else ''}  "
                     f"{sparkline(losses)}")
    kernels = [("true", result.get("true_kernel")), ("learned", result.get("learned_kernel")),
               ("difference", difference(result))]
    if any(k is not None for _, k in kernels):
        lines += ["", side_by_side(kernels), ""]
    if result.get("learned_bias") is not None:
        lines.append(f"learned bias: {result['learned_bias']}")
    err = result.get("error")
    if err:
        lines.append("error: " + ", ".join(f"{k.replace('_', ' ')} {cell(v)}" for k, v in err.items()))
    ident = result.get("identifiability")
    if ident:
        lines.append(f"identifiable: {'yes' if ident['identifiable'] else 'no'} "
                     f"(rank {ident['rank']} of {ident['params']} weights)")
    marks = [f"converged at epoch {result['converged_epoch']}" if result.get("converged_epoch") else None,
             f"diverged at epoch {result['diverged_epoch']}" if result.get("diverged_epoch") else None]
    if any(marks):
        lines.append("; ".join(m for m in marks if m))
    gap = result.get("gap")
    if gap:
        lines.append("gap between learned and true kernel, by part:")
        width = max(len(name) for name, _ in GAP_PARTS)
        for name, meaning in GAP_PARTS:
            if gap.get(name) is not None:
                lines.append(f"  {name.ljust(width)}  {cell(gap[name]):>10}  {meaning}")
    if result.get("explanation"):
        lines.append(result["explanation"])
    if result.get("error_message"):
        lines.append(f"error message: {result['error_message']}")
    return "\n".join(lines)


def _by_ids_or_sweep(ids: Iterable[int], sweep: int | None) -> tuple[list[int] | None, int | None]:
    ids = list(ids)
    if ids and sweep is not None:
        raise BadInput("sweep", "give job ids or --sweep, not both")
    if not ids and sweep is None:
        raise BadInput("id", "give job ids or --sweep")
    return ids or None, sweep


@cli.command()
@click.argument("job_ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--sweep", type=int, default=None, help="every job of this sweep")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV")
def compare(job_ids: tuple[int, ...], sweep: int | None, as_json: bool, as_csv: bool) -> None:
    """Jobs in one table, best first by relative error."""
    from service import query, tables  # noqa: PLC0415

    if as_json and as_csv:
        raise BadInput("csv", "give --json or --csv, not both")
    ids, sweep = _by_ids_or_sweep(job_ids, sweep)
    with _reading() as reader:
        rows = query.compare(reader, ids, sweep)
    if as_json:
        _json(rows)
    elif as_csv:
        _write_csv(sys.stdout, list(query.SUMMARY), rows)
    else:
        params = ["method", "input", "kernel", "lr", "epochs", "batch_size", "seed", "noise"]
        shown = query.varying(rows, params) if len(rows) > 1 else params
        common = [p for p in params if p not in shown]
        metrics = ["status", "epochs_done", "final_loss", "relative_error", "max_abs_error", "identifiable",
                   "gap_optimization", "gap_noise", "gap_identifiability"]
        title = ("all jobs: " + ", ".join(f"{tables.header(p)} {tables.cell(rows[0][p])}" for p in common)
                 if common else None)
        tables.show(["id", *shown, *metrics], rows, title=title,
                    cells={"lr": _unless_lstsq("lr"), "epochs": _unless_lstsq("epochs")})


@cli.command()
@click.option("--sweep", type=int, default=None, help="the jobs of this sweep")
@click.option("--ids", default=None, metavar="1,2,3", help="these jobs")
@click.option("--what", type=click.Choice(["jobs", "epochs"]), default="jobs", show_default=True,
              help="one row per job, or one row per epoch")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("-o", "--output", default=None, metavar="FILE", help="write here instead of stdout")
def export(sweep: int | None, ids: str | None, what: str, fmt: str, output: str | None) -> None:
    """Jobs or their epochs as CSV or JSON, streamed (any number of epochs)."""
    from service import query  # noqa: PLC0415

    job_ids = _ids(ids)
    if job_ids and sweep is not None:
        raise BadInput("ids", "give --ids or --sweep, not both")
    if not job_ids and sweep is None:
        raise BadInput("ids", "give --ids or --sweep")
    with _reading() as reader:
        fetch = query.export_jobs if what == "jobs" else query.export_epochs
        columns, rows = fetch(reader, job_ids, sweep)
        with _output(output) as out:
            count = (_write_csv if fmt == "csv" else _write_json)(out, columns, rows)
    if output:
        click.echo(f"wrote {count} {what[:-1] if count == 1 else what} to {output}")


@contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    try:
        f = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise BadInput("output", f"cannot write {path}: {exc.strerror}") from None
    with f:
        yield f


def _csv_value(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else v


def _write_csv(out: IO[str], columns: list[str], rows: Iterable[dict[str, Any]]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])
        count += 1
    return count


def _write_json(out: IO[str], columns: list[str], rows: Iterable[dict[str, Any]]) -> int:
    """A JSON list written one row at a time, so a long export never sits in memory."""
    count = 0
    out.write("[")
    for row in rows:
        out.write(("\n" if count == 0 else ",\n") + json.dumps({c: row.get(c) for c in columns}))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


@cli.command()
@click.argument("job_id", metavar="[ID]", type=int, required=False)
@click.option("--sweep", type=int, default=None, help="relative error against the sweep's parameters")
@click.option("-o", "--output", required=True, metavar="FILE.png", help="the PNG to write")
def plot(job_id: int | None, sweep: int | None, output: str) -> None:
    """A job's loss curve and kernels, or a sweep's relative error against what it varied, as a PNG."""
    from service import query  # noqa: PLC0415

    ids, sweep = _by_ids_or_sweep([] if job_id is None else [job_id], sweep)
    if not output.lower().endswith(".png"):
        raise BadInput("output", f"must be a .png file, got {output}")
    with _reading() as reader:
        if sweep is None:
            result = query.result_of(reader, ids[0])
        else:
            name = query.sweep_name(reader, sweep)
            rows = query.compare(reader, sweep=sweep)
            if not rows:
                raise BadInput("sweep", f"sweep {sweep} has no jobs")
    from service import plot as plots  # noqa: PLC0415 - matplotlib only here

    try:
        if sweep is None:
            path = plots.plot_job(result, output)
        else:
            title = f"sweep {sweep}" + (f" ({name})" if name else "") + f": {len(rows)} jobs"
            path = plots.plot_sweep(rows, query.varying(rows), output, title=title)
    except OSError as exc:
        raise BadInput("output", f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("job_ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--sweep", type=int, default=None, help="the sweep and all its jobs")
def delete(job_ids: tuple[int, ...], sweep: int | None) -> None:
    """Delete jobs and their epochs (or a whole sweep)."""
    from service import query  # noqa: PLC0415
    from service.db import session_scope  # noqa: PLC0415 - a write: service.db's locking and schema check
    from service.reader import Reader  # noqa: PLC0415

    ids, sweep = _by_ids_or_sweep(job_ids, sweep)
    with session_scope() as session:
        jobs, epochs = query.delete_jobs(Reader.of_session(session), ids, sweep)
    what = f" and sweep {sweep}" if sweep is not None else ""
    click.echo(f"deleted {jobs} job{'s' if jobs != 1 else ''} and {epochs} epoch{'s' if epochs != 1 else ''}{what}")
