"""`klab submit`, `requeue` and `cancel`: jobs handed to the workers, again, or stopped (`klab sweep`: sweep.py)."""
from __future__ import annotations

import json
from typing import Any

import click

from service import defaults
from service.cli import cli
from service.cli.options import WholeRange, job_options, selected, specs_from
from service.cli.progress import count_line, counts, deleted, wait
from service.errors import BadInput
from service.jobs.selection import Selection
from service.jobs.status import JobStatus

_batch_jobs = click.option("--batch-jobs", type=WholeRange(1, defaults.BATCH_JOBS_MOST),
                           default=defaults.BATCH_JOBS, show_default=True,
                           help="most compatible jobs trained together in one task")


def queue_options(func):
    func = click.option("--queue", default=None, help="cpu or gpu (default: from --device)")(func)
    func = click.option("--wait", is_flag=True, help="show progress until done, then the results")(func)
    func = click.option("--json", "as_json", is_flag=True, help="print ids and results as JSON")(func)
    return _batch_jobs(func)


@cli.command()
@job_options("jobs: one in JSON or YAML, or one a line in JSONL")
@queue_options
def submit(spec_file: str | None, queue: str | None, wait: bool, as_json: bool, batch_jobs: int, **values: str) -> None:
    """Submit jobs to the workers: flags, -f job.yaml|job.json, or -f jobs.jsonl (many)."""
    from service.submit import plan_specs, submit

    plan = plan_specs(specs_from(values, spec_file), queue, spec_file)
    _, ids = submit(plan, batch_jobs)
    warn_unserved(plan.queues)
    if not wait:
        click.echo(json.dumps({"ids": ids}) if as_json else "\n".join(map(str, ids)))
        return
    if not as_json:
        click.echo(submitted_line(ids))
    show_results(Selection(tuple(ids)), as_json, one=len(ids) == 1)


def submitted_line(ids: list[int]) -> str:
    """What `submit --wait` says before it waits: the first 20 ids, and `...` where there are more."""
    return "submitted " + " ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else "")


def warn_unserved(queues: set[str]) -> None:
    """A warning on stderr when no live worker of this database consumes a queue the jobs went to."""
    from service.submit import unserved

    for line in unserved(queues):
        click.echo(f"klab: warning: {line}", err=True)


def show_results(selection: Selection, as_json: bool, one: bool, broker_asked: bool = True) -> None:
    """After --wait: each result as `klab show` prints it (one job), or the counts and what to run next."""
    from service.db.reads import reading, result_of, results
    from service.render.text import render

    ended = wait(selection, quiet=as_json, stored=True, broker_asked=broker_asked)
    out = None
    try:
        with reading() as reader:  # print after reading: never hold the database
            if as_json:
                found = results(reader, selection)
                out = json.dumps(found[0] if one else found)
            elif one:
                out = render(result_of(reader, selection.ids[0]))
    except BadInput as exc:  # deleted since the wait's last look, as at any of its looks
        raise deleted(exc.message) from None
    if out is not None:
        click.echo(out)
        return
    click.echo(count_line(ended))  # the counts of the jobs' last look: they change no more
    if selection.sweep is not None:
        click.echo(f"compare them with: klab compare --sweep {selection.sweep}")


@cli.command()
@selected(optional=True)
@_batch_jobs
@click.option("--queued", "include_queued", is_flag=True,
              help="also send queued jobs again (after a broker lost its data); a job is stored once")
def requeue(selection: Selection, batch_jobs: int, include_queued: bool) -> None:
    """Send again jobs that were stored but never reached the broker (status created); no ids: all of them."""
    from service.submit import requeue

    sent, queues = requeue(selection, include_queued, batch_jobs)
    click.echo(f"queued {sent} job(s)")
    if sent:
        warn_unserved(queues)
    elif not include_queued and (waiting := _queued(selection)):
        click.echo(f"{waiting} job(s) are queued already; if the broker lost them, klab requeue --queued"
                   f"{'' if selection.everything else f' {selection}'} sends them again", err=True)


def _queued(selection: Selection) -> int | None:
    """How many of the jobs are queued; None where none is left to count (an empty database, a sweep whose jobs were
    all deleted: requeue printed `queued 0 job(s)`, then counts()'s "no such jobs", exit 2). requeue() refused ids and
    sweeps that do not exist already."""
    try:
        return counts(selection)["by_status"].get(JobStatus.QUEUED.value)
    except BadInput:
        return None


@cli.command()
@selected()
def cancel(selection: Selection) -> None:
    """Cancel jobs: queued ones never start, running ones stop at their next epoch check."""
    from service.db.connect import Reader
    from service.db.engine import retried
    from service.db.reads import where
    from service.db.writes import cancel

    def ask(conn: Any) -> tuple[int, int]:
        where(Reader.of(conn), selection)  # no such job or sweep: one line, exit 2, nothing changed
        return cancel(conn, selection)

    ended, asked = retried(ask, make=False)
    click.echo(f"cancelled {ended} job(s) not yet started; asked {asked} running job(s) to stop")
