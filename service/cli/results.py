"""`klab list`, `show`, `compare`, `export`, `plot`, `delete`: stored results (reads, and one delete; no torch)."""
from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

import click

from service import defaults
from service.cli import UNWRITABLE, cli
from service.cli.options import WHOLE, WholeRange, selected, sweep_option
from service.errors import BadInput, visible
from service.jobs.selection import Selection


def _reading():
    from service.db.reads import reading

    return reading(make=False)


def _json(value: Any) -> None:
    click.echo(json.dumps(value))


def _epochs_done(row: dict[str, Any]) -> str:
    done, total = row.get("epochs_done"), row.get("epochs")
    return str(total) if done in (None, total) else f"{done}/{total}"


def _unless_ignored(column: str, text: Callable[[dict[str, Any]], str] | None = None
                    ) -> Callable[[dict[str, Any]], str]:
    """A table cell that is '-' for jobs whose method never reads the column (lstsq: no learning rate, epochs
    or batches; d2l-manual: the whole input a step, no batches)."""
    from service.render.text import IGNORED_BY, cell

    def shown(row: dict[str, Any]) -> str:
        if column in IGNORED_BY.get(row.get("method"), ()):
            return "-"
        return text(row) if text else cell(row.get(column))

    return shown


@cli.command("list")
@click.option("--status", default=None, help="only jobs with this status (succeeded, diverged, failed, ...)")
@sweep_option("only the jobs of this sweep")
@click.option("--method", default=None, help="only jobs trained with this method")
@click.option("--kernel", default=None,
              help="only jobs with this true kernel (as given, e.g. sobel-x; a literal whatever its spaces; none: the "
                   "jobs given labels, no kernel)")
@click.option("--tag", default=None, help="only the jobs of sweeps with this tag")
@click.option("--sort", default="-id", show_default=True,
              help="column to sort by (id, status, method, input, kernel, lr, epochs, final_loss, "
                   "relative_error, identifiable); prefix - for descending")
@click.option("--limit", type=WholeRange(min=0), default=50, show_default=True, help="most rows (0: all)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
def list_(status: str | None, sweep: int | None, method: str | None, kernel: str | None, tag: str | None,
          sort: str, limit: int, as_json: bool) -> None:
    """One row per stored job, newest first."""
    from service.db import filters, reads
    from service.jobs.sweep import tag_filter
    from service.render import table

    reads.parse_sort(sort)  # a bad --sort is reported before the database is opened
    method, kernel, tag = *filters.known(method, kernel), tag_filter(tag)
    with _reading() as reader:
        rows = reads.list_jobs(reader, status=status, sweep=sweep, method=method, kernel=kernel, tag=tag,
                               sort=sort, limit=limit)
    if as_json:
        _json(rows)
    elif not rows:
        click.echo("no jobs", err=True)
    else:
        from service.render.text import settle

        table.show(reads.LIST_COLUMNS, [settle(r) for r in rows],
                    cells={"lr": _unless_ignored("lr"), "epochs": _unless_ignored("epochs", _epochs_done)})


@cli.command()
@click.argument("job_id", metavar="ID", type=WHOLE)
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
@click.option("--group-by", "group_by", default=None, metavar="lr[,method]",
              help="one row per group of equal values: count, mean, std, min and max of relative error and final "
                   "loss over the rest (typically seeds)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV")
def compare(selection: Selection, group_by: str | None, as_json: bool, as_csv: bool) -> None:
    """Jobs in one table, best first by relative error; or their statistics by group (--group-by)."""
    from service.db import reads
    from service.jobs.result import SUMMARY_NAMES, group
    from service.render import table
    from service.render.export import write_csv

    if as_json and as_csv:
        raise BadInput("csv", "give --json or --csv, not both")
    if group_by is not None:
        _compare_groups(selection, group_by, as_json, as_csv)
        return
    from service.render.text import KERNELS, settle, shared, shown_value

    with _reading() as reader:
        rows = reads.compare(reader, selection, also=() if as_json or as_csv else (*KERNELS, "spec"))
    if as_json:
        _json(rows)
    elif as_csv:
        write_csv(sys.stdout, list(SUMMARY_NAMES), rows)
    elif not rows:  # a sweep whose jobs were all deleted: its title was read from a first row (a traceback)
        click.echo("no jobs", err=True)
    else:
        rows = [settle({**r, **{k: r["spec"].get(k) for k in SPEC_ONLY}}) for r in rows]
        params = ["method", "input", "kernel", "lr", "epochs", "batch_size", "seed", "noise"]
        differ = reads.varying(rows, [*params, *SPEC_ONLY]) if len(rows) > 1 else params
        given = [k for k in SPEC_ONLY if k in differ or rows[0][k] not in (None, defaults.TOL)]  # shared: in the
        # title where some was given (a bias every job has), never the defaults (no labels, no bias, tol 1e-4)
        shown, common = shared(rows, [*params, *given], differ)
        metrics = ["status", "epochs_done", "final_loss", "relative_error", "max_abs_error", "identifiable",
                   *group("gap"), *group("pace")]
        title = ("all jobs: " + ", ".join(f"{table.header(p)} {table.cell(rows[0][p])}" for p in common)
                 if common else None)
        rate = "convergence_rate"  # under 1 never shown as 1 (text.factor)
        table.show(["id", *shown, *metrics], rows, title=title,
                    cells={**{p: _unless_ignored(p) for p in ("lr", "epochs", "batch_size")},
                           rate: lambda r: table.cell(shown_value(rate, r[rate], 0.0))})


SPEC_ONLY = ("labels", "bias", "tol")
"""What `klab compare` shows of a job's spec beside its columns' parameters, where the jobs differ in it."""


def _compare_groups(selection: Selection, group_by: str, as_json: bool, as_csv: bool) -> None:
    """`klab compare --group-by`: a row per group, its statistics computed by the database."""
    from service.db import groups, reads
    from service.db.sweeps import swept
    from service.render import table
    from service.render.export import write_csv
    from service.render.text import shown_value

    by = groups.parse_group_by(group_by)  # a bad --group-by is reported before the database is opened
    with _reading() as reader:
        rows = groups.grouped(reader, selection, by)
        name = reads.sweep_name(reader, selection.sweep) if selection.sweep is not None else None
        varied = swept(reader, selection.sweep) if selection.sweep is not None else None
    if as_json:
        _json(rows)
        return
    if as_csv:
        write_csv(sys.stdout, groups.columns(by), rows)
        return
    what = f"sweep {selection.sweep}" + (f" ({name})" if name else "") if selection.sweep is not None else "jobs"
    n = sum(r["jobs"] for r in rows)
    rest = None if varied is None else [p for p in varied if p not in by]  # a sweep's own; of other jobs, unknown
    over = "over the rest" if rest is None else f"over {', '.join(rest)}" if rest else "of each group's one job"
    title = (f"{what}: {n} job{'s' * (n != 1)} in {len(rows)} group{'s' * (len(rows) != 1)} by {', '.join(by)}; "
             f"relative error and final loss {over}")
    short = {"relative_error": "rel. error", "final_loss": "final loss"}
    names = {**{k: k for k in groups.columns(by)[: len(by) + 2]},
             **{f"{m}_{s}": f"{short[m]} {s}" for m in groups.METRICS for s in groups.STATISTICS}}
    shown = [{names[k]: shown_value(k.rpartition("_")[0], v, 1.0) if k not in by else v for k, v in r.items()}
             for r in rows]  # a relative error as the jobs' own tables show it
    table.show(list(names.values()), shown, title=title, numbers=[names[k] for k in names if k not in by])


@cli.command()
@click.option("--tag", default=None, help="only the sweeps with this tag")
@click.option("--limit", type=WholeRange(min=0), default=50, show_default=True,
              help="the newest this many, oldest first (0: every sweep)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list (each sweep's parameters in full)")
def sweeps(tag: str | None, limit: int, as_json: bool) -> None:
    """The newest sweeps, oldest of them first: id, name, tags, size, jobs by status, created, what it varies."""
    from service.db.sweeps import list_sweeps
    from service.jobs.sweep import tag_filter

    tag = tag_filter(tag)
    with _reading() as reader:
        rows, older = list_sweeps(reader, tag, limit or None)
    _sweeps_shown(rows, as_json)
    if older:
        tagged = f" tagged {tag}" if tag is not None else ""
        click.echo(f"the newest {limit} sweep{'s' * (limit != 1)}{tagged}: --limit 0 lists every one", err=True)


def _sweeps_shown(rows: list[dict[str, Any]], as_json: bool) -> None:
    from service.render import table
    from service.render.text import counted, moment

    if as_json:
        _json(rows)
        return
    if not rows:
        click.echo("no sweeps", err=True)
        return
    shown = [{"id": r["id"], "name": r["name"], "tags": ", ".join(r["tags"]) or None, "size": r["size"],
              "jobs": counted(r["by_status"]) or None,
              "created_at": moment(r["created_at"]),
              "varies": "; ".join(f"{p} {_values(v)}" for p, v in (r["params"].get("swept") or {}).items()) or None}
             for r in rows]
    table.show(list(shown[0]), shown)


def _values(values: list[Any]) -> str:
    """A swept parameter's values, short: 0.01,0.03 or 0..499 or 40 from 0.001 to 0.1."""
    from service.render.text import cell

    if all(isinstance(v, int) for v in values) and len(set(values)) == len(values) == max(values) - min(values) + 1:
        # consecutive, told without building the range: `--seed 1,9007199254740993` ended in a MemoryError
        return f"{min(values)}..{max(values)}"
    if len(values) <= 4:
        return ",".join(cell(v) for v in values)
    if all(isinstance(v, (int, float)) for v in values):
        return f"{len(values)} from {cell(min(values))} to {cell(max(values))}"
    return f"{len(values)} values"


@cli.command()
@selected(ids="option")
@click.option("--what", type=click.Choice(["jobs", "epochs"]), default="jobs", show_default=True,
              help="one row per job, or one row per epoch")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default=None,
              help="CSV with a header line, or a JSON list (an object a row, a row a line) [default: as -o's name "
                   "ends, .json or .csv; else csv]")
@click.option("-o", "--output", default=None, metavar="FILE", help="write here instead of stdout (-: stdout)")
def export(selection: Selection, what: str, fmt: str | None, output: str | None) -> None:
    """Jobs or their epochs as CSV or JSON, streamed (any number of epochs)."""
    from service.db import reads
    from service.render.export import WRITERS

    output = None if output == "-" else output  # as for every command that writes a file: - is stdout
    if fmt is None:  # `-o jobs.json` wrote CSV into it, unsaid
        fmt = "json" if output is not None and output.lower().endswith(".json") else "csv"
    if output is not None:
        _not_the_database(output)
    with _reading() as reader:
        fetch = reads.export_jobs if what == "jobs" else reads.export_epochs
        columns, rows = fetch(reader, selection)
        with _output(output) as out:
            count = WRITERS[fmt](out, columns, rows)
    if output:
        click.echo(f"wrote {count} {what[:-1] if count == 1 else what} to {visible(str(output))}")


def _not_the_database(output: str) -> None:
    from service.settings import settings

    if settings().is_database(output):
        raise BadInput("output", f"{visible(output)} is klab's SQLite database or one of its files "
                                 "(KLAB_DATABASE_URL): writing there would destroy its jobs; choose another file")


@contextmanager
def _output(path: str | None, binary: bool = False) -> Iterator[IO[Any]]:
    """Stdout, or the file at `path`. A file cut short (a full disk midway, Ctrl-C) is removed: a truncated CSV read
    as a whole one, an empty PNG was left. Not a special file (/dev/null) nor one reached through a link."""
    if path is None:
        yield sys.stdout
        return
    try:
        f = open(path, "wb") if binary else open(path, "w", newline="", encoding="utf-8")
    except OSError as exc:
        raise BadInput("output", f"cannot write {path}: {exc.strerror}") from None
    regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode) and not os.path.islink(path)
    try:
        with f:
            yield f
    except BaseException:
        if regular:
            with suppress(OSError):
                os.unlink(path)
        raise


@cli.command()
@selected()
@click.option("-o", "--output", required=True, metavar="FILE.png", help="the PNG to write (its folder must exist)")
def plot(selection: Selection, output: str) -> None:
    """A job's loss, kernel error and kernels; several jobs overlaid; or a sweep's relative error per value of
    what it varied (mean and spread over seeds), as a PNG."""
    from pathlib import Path

    from service.db import reads
    from service.render.axes import drawable

    sweep = selection.sweep
    if not output.lower().endswith(".png"):
        raise BadInput("output", f"must be a .png file, got {output}")
    _not_the_database(output)
    if not (folder := Path(output).parent).is_dir():
        raise BadInput("output", f"cannot write {output}: " + (f"{folder} is a file, not a folder" if folder.exists()
                                                                else f"no folder {folder}"))
    with _reading() as reader:
        if sweep is None:
            found = {r["id"]: r for r in reads.results(reader, selection)}
            results = [found[i] for i in selection.ids]
            for r in results:
                drawable(r)
        else:
            from service.db.sweeps import swept

            name = reads.sweep_name(reader, sweep)
            rows = reads.sweep_points(reader, selection)
            if not rows:
                raise BadInput("sweep", f"sweep {sweep} has no jobs")
            varying = reads.varying(rows)
            # what the sweep varied that its stored jobs do not (stopped by Ctrl-C before the rest were stored): the
            # plot says so, and does not call it fixed
            alone = [p for p in swept(reader, sweep) if p not in varying and p in rows[0]]
    from service.render import plot as plots

    with _glyphs_missing():
        if sweep is None:
            fig = plots.figure_jobs(results)
        else:
            title = f"sweep {sweep}" + (f" ({name})" if name else "") + f": {len(rows)} job{'s' * (len(rows) != 1)}"
            fig = plots.figure_sweep(rows, varying, title, swept=alone)
        try:
            with _output(output, binary=True) as f:
                plots.save(fig, f)
        except OSError as exc:
            if exc.errno in UNWRITABLE:  # a full disk: not the user's mistake (exit code 1, as export's)
                raise
            raise BadInput("output", f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {visible(str(output))}")


GLYPH = r"Glyph (\d+) .*missing from font"
"""matplotlib's warning of a character no font it has draws."""


@contextmanager
def _glyphs_missing() -> Iterator[None]:
    """Characters no font here draws (a sweep named in Chinese, an emoji) said in one line, once: matplotlib warned
    of each in two lines, with a line of klab's source, on every drawing of the text. Other warnings as they come."""
    import re
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=GLYPH)  # each one, whatever the filters say of the rest
        yield
    missing = {}
    for w in caught:
        if found := re.match(GLYPH, str(w.message)):
            missing[chr(int(found[1]))] = None
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if missing:
        click.echo(f"klab: warning: no font here draws {' '.join(missing)}: drawn as boxes", err=True)


@cli.command()
@selected()
def delete(selection: Selection) -> None:
    """Delete jobs and their epochs (or a whole sweep)."""
    from service.db.connect import Reader
    from service.db.engine import retried
    from service.db.reads import where
    from service.db.writes import delete_jobs

    def delete(conn: Any) -> tuple[int, int]:
        where(Reader.of(conn), selection)  # unknown ids or sweep: bad input, nothing deleted
        return delete_jobs(conn, selection)

    jobs, epochs = retried(delete, make=False)
    what = f" and sweep {selection.sweep}" if selection.sweep is not None else ""
    click.echo(f"deleted {jobs} job{'s' if jobs != 1 else ''} and {epochs} epoch{'s' if epochs != 1 else ''}{what}")
