"""`klab submit`, `sweep`, `status`, `watch`, `cancel`, `requeue`, `workers`, `worker`: the batch service."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from service import defaults
from service.cli import cli
from service.cli.options import given, job_options
from service.errors import BadInput, BrokerUnavailable
from service.settings import settings


def _queue_options(func):  # noqa: ANN001, ANN202
    func = click.option("--queue", default=None, help="cpu or gpu (default: from --device)")(func)
    func = click.option("--wait", is_flag=True, help="show progress until done, then the results")(func)
    func = click.option("--json", "as_json", is_flag=True, help="print ids and results as JSON")(func)
    func = click.option("--batch-jobs", type=click.IntRange(1, 100_000), default=defaults.BATCH_JOBS,
                        show_default=True, help="most compatible jobs trained together in one task")(func)
    return func


def _session():  # noqa: ANN202
    from service.db import session_scope  # noqa: PLC0415 - SQLAlchemy only for commands that write

    return session_scope()


def _send(prepared: list, sweep_params: dict | None, batch_jobs: int, name: str | None = None
          ) -> tuple[int | None, list[int]]:
    """Store the jobs (and sweep), then publish them; a broker that fails mid-way leaves jobs for requeue."""
    from service import store  # noqa: PLC0415
    from service.queue import batches, check_broker, create_jobs, publish  # noqa: PLC0415

    broker = settings().broker_url
    check_broker(broker)  # nothing is written while the broker is down
    with _session() as session:
        sweep_id = None
        if sweep_params is not None:
            sweep_id = store.create_sweep(session, sweep_params, len(prepared), name).id
        ids = create_jobs(session, prepared, sweep_id)
    tasks = batches(list(zip(ids, prepared)), batch_jobs)
    try:
        publish(_session, broker, tasks)
    except BrokerUnavailable as exc:
        target = f" --sweep {sweep_id}" if sweep_id else " " + " ".join(map(str, ids)) if len(ids) <= 50 else ""
        raise BrokerUnavailable(f"{exc}; the jobs not yet queued will run after: klab requeue{target}") from None
    return sweep_id, ids


@cli.command()
@job_options
@_queue_options
def submit(spec_file: str | None, queue: str | None, wait: bool, as_json: bool, batch_jobs: int, **values: str) -> None:
    """Submit jobs to the workers: flags, -f job.yaml|job.json, or -f jobs.jsonl (many)."""
    from service.queue import prepare  # noqa: PLC0415
    from service.spec import JobSpec, load_spec_file  # noqa: PLC0415

    docs = load_spec_file(spec_file) if spec_file else [{}]
    flags = given(values)
    if len(docs) > defaults.max_sweep_jobs():
        raise BadInput("file", f"{len(docs)} jobs, more than the limit {defaults.max_sweep_jobs()}")
    specs = []
    for n, doc in enumerate(docs, 1):
        try:
            specs.append(JobSpec.parse({**doc, **flags}))
        except BadInput as exc:
            if len(docs) > 1:
                raise BadInput(exc.field, f"{exc.message} (job {n} of {spec_file})") from None
            raise
    prepared = prepare(specs, queue)
    _, ids = _send(prepared, None, batch_jobs)
    _report(ids, None, wait, as_json)


@cli.command()
@job_options
@_queue_options
@click.option("--name", default=None, help="a name for the sweep")
def sweep(spec_file: str | None, queue: str | None, wait: bool, as_json: bool, batch_jobs: int,
          name: str | None, **values: str) -> None:
    """Create a sweep: any of --lr --epochs --seed --kernel --method --batch-size --noise --input
    takes a comma list; numeric ones also A..B (integers) or A:B:N (N log-spaced values)."""
    from service.queue import prepare  # noqa: PLC0415
    from service.spec import JobSpec, load_spec_file  # noqa: PLC0415
    from service.sweep import expand  # noqa: PLC0415

    base = {}
    if spec_file:
        docs = load_spec_file(spec_file)
        if len(docs) != 1:
            raise BadInput("file", f"{spec_file} holds {len(docs)} jobs; a sweep takes one base job")
        base = {k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in docs[0].items()
                if v is not None}
    flags = {**base, **given(values)}
    swept, job_flags = expand(flags)
    specs = [JobSpec.parse(f) for f in job_flags]
    prepared = prepare(specs, queue)
    sweep_id, ids = _send(prepared, {"swept": swept, "fixed": {k: v for k, v in flags.items() if k not in swept}},
                          batch_jobs, name)
    if as_json and not wait:
        click.echo(json.dumps({"sweep": sweep_id, "size": len(ids), "ids": ids}))
        return
    click.echo(f"sweep {sweep_id}: {len(ids)} jobs", err=as_json)
    if wait:
        _wait(ids, quiet=as_json)
        _print_results(ids, as_json, sweep_id)


def _report(ids: list[int], sweep_id: int | None, wait: bool, as_json: bool) -> None:
    if not wait:
        if as_json:
            click.echo(json.dumps({"ids": ids}))
        else:
            click.echo("\n".join(map(str, ids)))
        return
    if not as_json:
        click.echo("submitted " + " ".join(map(str, ids[:20])) + (" ..." if len(ids) > 20 else ""))
    _wait(ids, quiet=as_json)
    _print_results(ids, as_json, sweep_id)


def _print_results(ids: list[int], as_json: bool, sweep_id: int | None) -> None:
    from service import query  # noqa: PLC0415
    from service.cli.query import render  # noqa: PLC0415 - the text `klab show` prints
    from service.reader import reading  # noqa: PLC0415

    out = None
    with reading() as reader:  # print after reading: never hold the database
        if as_json:
            results = [query.result_of(reader, i) for i in sorted(ids)]
            out = json.dumps(results[0] if len(results) == 1 and sweep_id is None else results)
        elif len(ids) == 1:
            out = render(query.result_of(reader, ids[0]))
    if out is not None:
        click.echo(out)
        return
    counts = _counts(ids=ids)
    click.echo(_count_line(counts))
    if sweep_id is not None:
        click.echo(f"compare them with: klab compare --sweep {sweep_id}")


def _selection(ids: tuple[int, ...] | list[int] | None, sweep_id: int | None):  # noqa: ANN202
    from service.models import Job  # noqa: PLC0415

    if sweep_id is not None and ids:
        raise BadInput("id", "give job ids or --sweep, not both")
    if sweep_id is not None:
        return Job.sweep_id == sweep_id
    if not ids:
        raise BadInput("id", "give job ids or --sweep S")
    return Job.id.in_(list(ids))


def _counts(ids: list[int] | tuple[int, ...] | None = None, sweep_id: int | None = None) -> dict[str, Any]:
    from service.query import progress  # noqa: PLC0415
    from service.reader import reading  # noqa: PLC0415

    with reading() as reader:
        return progress(reader, ids, sweep_id)


def _count_line(c: dict[str, Any]) -> str:
    parts = ", ".join(f"{n} {s}" for s, n in sorted(c["by_status"].items()))
    pct = 100.0 * c["epochs_done"] / c["epochs_total"] if c["epochs_total"] else 100.0
    return f"{c['jobs']} job(s): {parts}; epochs {c['epochs_done']}/{c['epochs_total']} ({pct:.0f}%)"


def _wait(ids: list[int] | None = None, sweep_id: int | None = None, quiet: bool = False,
          timeout: float | None = None) -> dict[str, Any]:
    """Poll until every selected job is finished, with a progress bar of epochs done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    started = time.monotonic()
    show = not quiet and sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, disable=not show) as bar:
        task = bar.add_task("epochs", total=None)
        while True:
            c = _counts(ids, sweep_id)
            bar.update(task, total=c["epochs_total"], completed=c["epochs_done"],
                       description=f"{c['finished']}/{c['jobs']} jobs")
            if c["finished"] == c["jobs"]:
                return c
            if timeout is not None and time.monotonic() - started > timeout:
                return c
            time.sleep(0.25)


def _ids_arg(func):  # noqa: ANN001, ANN202
    func = click.argument("ids", nargs=-1, type=int)(func)
    return click.option("--sweep", "sweep_id", type=int, default=None, help="a sweep id")(func)


@cli.command()
@_ids_arg
@click.option("--json", "as_json", is_flag=True)
def status(ids: tuple[int, ...], sweep_id: int | None, as_json: bool) -> None:
    """Counts by status and progress of jobs or a sweep."""
    c = _counts(ids, sweep_id)
    click.echo(json.dumps(c) if as_json else _count_line(c))


@cli.command()
@_ids_arg
def watch(ids: tuple[int, ...], sweep_id: int | None) -> None:
    """A live progress bar until the jobs or the sweep are done."""
    c = _wait(list(ids) or None, sweep_id)
    click.echo(_count_line(c))


@cli.command()
@_ids_arg
def cancel(ids: tuple[int, ...], sweep_id: int | None) -> None:
    """Cancel jobs: queued ones never start, running ones stop at their next epoch check."""
    from sqlalchemy import update  # noqa: PLC0415

    from service.models import Job, JobStatus, utcnow  # noqa: PLC0415

    where = _selection(ids, sweep_id)
    now = utcnow()
    with _session() as session:
        not_started = session.execute(
            update(Job).where(where, Job.status.in_([JobStatus.CREATED.value, JobStatus.QUEUED.value]))
            .values(status=JobStatus.CANCELLED.value, cancel_requested=True, finished_at=now)).rowcount
        running = session.execute(
            update(Job).where(where, Job.status == JobStatus.RUNNING.value).values(cancel_requested=True)).rowcount
    click.echo(f"cancelled {not_started} job(s) not yet started; asked {running} running job(s) to stop")


@cli.command()
@_ids_arg
@click.option("--batch-jobs", type=click.IntRange(1, 100_000), default=defaults.BATCH_JOBS, show_default=True)
@click.option("--queued", "include_queued", is_flag=True,
              help="also send queued jobs again (after a broker lost its data); duplicates are skipped")
def requeue(ids: tuple[int, ...], sweep_id: int | None, batch_jobs: int, include_queued: bool) -> None:
    """Send again jobs that were stored but never reached the broker (status created); no ids: all of them."""
    from service.queue import Prepared, batches, check_broker, publish, unqueued  # noqa: PLC0415
    from service.spec import JobSpec  # noqa: PLC0415

    if ids and sweep_id is not None:
        raise BadInput("id", "give job ids or --sweep, not both")
    broker = settings().broker_url
    check_broker(broker)
    with _session() as session:
        jobs = unqueued(session, list(ids) or None, sweep_id, include_queued)
        items = [(j.id, Prepared(JobSpec.parse(j.spec), j.queue or "cpu",
                                 (j.queue, j.method, j.epochs, j.batch_size, j.input, j.kernel), {})) for j in jobs]
    tasks = batches(items, batch_jobs)
    sent = publish(_session, broker, tasks)
    click.echo(f"queued {sent} job(s)")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--timeout", type=float, default=1.5, show_default=True, help="seconds to wait for replies")
def workers(as_json: bool, timeout: float) -> None:
    """Live workers with their queues, device and active jobs."""
    from service.queue import broker_app, check_broker  # noqa: PLC0415

    broker = settings().broker_url
    check_broker(broker)
    app = broker_app(broker)
    replies = app.control.broadcast("klab_info", reply=True, timeout=timeout) or []
    rows = []
    for reply in replies:
        for host, info in reply.items():
            if isinstance(info, dict):
                rows.append({"worker": host, **info})
    rows.sort(key=lambda r: r["worker"])
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no workers answered")
        return
    for r in rows:
        active = ", ".join(str(j) for j in r.get("active_jobs", [])[:10]) or "-"
        click.echo(f"{r['worker']}  queues {','.join(r.get('queues', []))}  device {r.get('device')}  "
                   f"pool {r.get('pool')}  active jobs {active}")


def worker_argv(queue: str, concurrency: int | None, loglevel: str) -> tuple[list[str], dict[str, str]]:
    """The plain celery command line a worker runs, and the environment it adds."""
    env: dict[str, str] = {}
    if queue == "gpu":
        argv = ["celery", "-A", "worker.app", "worker", "-Q", "gpu", "--pool", "solo", "--hostname", "gpu@%h",
                "--loglevel", loglevel]
    else:
        n = concurrency or os.cpu_count() or 1
        argv = ["celery", "-A", "worker.app", "worker", "-Q", "cpu", "--pool", "prefork", "--concurrency", str(n),
                "--hostname", "cpu@%h", "--loglevel", loglevel]
        env["KLAB_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    return argv, env


@cli.command()
@click.option("--queue", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 256), default=None,
              help="prefork children for the cpu queue [default: the number of cores]")
@click.option("--gpu", "gpu_index", type=click.IntRange(0, 64), default=None, help="GPU index for the gpu queue")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queue: str, concurrency: int | None, gpu_index: int | None, loglevel: str) -> None:
    """Start a Celery worker with safe settings (solo pool on one GPU; prefork with torch threads split)."""
    if queue == "gpu" and concurrency not in (None, 1):
        raise BadInput("concurrency", "the gpu queue runs one job at a time (solo pool): CUDA does not survive fork")
    argv, env = worker_argv(queue, concurrency, loglevel)
    if gpu_index is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_index)
    os.environ.update(env)
    os.execvp(sys.executable, [sys.executable, "-m", *argv])

