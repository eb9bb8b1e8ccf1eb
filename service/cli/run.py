"""`klab run`: train one job in this process, store it, and report it."""
from __future__ import annotations

import json

import click

from service.cli import cli
from service.cli.options import given, job_options
from service.errors import BadInput
from service.spec import JobSpec, build_problem, file_arrays, load_spec_file


def spec_from_cli(values: dict, spec_file: str | None) -> JobSpec:
    """One spec from -f FILE and flags (flags win)."""
    base: dict = {}
    if spec_file:
        docs = load_spec_file(spec_file)
        if len(docs) != 1:
            raise BadInput("file", f"{spec_file} holds {len(docs)} jobs; klab run takes one")
        base = docs[0]
    return JobSpec.parse({**base, **given(values)})


@cli.command()
@job_options
@click.option("--json", "as_json", is_flag=True, help="print the stored result as one JSON object")
@click.option("--no-store", is_flag=True, help="train and print without writing to the database")
def run(spec_file: str | None, as_json: bool, no_store: bool, **values: str) -> None:
    """Train one job here and now, store it, and explain how far it got from the true kernel."""
    spec = spec_from_cli(values, spec_file)
    problem = build_problem(spec)  # every user mistake surfaces here, before torch is imported
    if not no_store:
        from service.db import ready_engine  # noqa: PLC0415

        ready_engine()  # an unreachable or outdated database is reported before training
    from worker.engine import resolve_device, run_spec  # noqa: PLC0415 - torch only when training

    try:
        resolve_device(spec.device.value)
    except RuntimeError as exc:
        raise BadInput("device", str(exc)) from None
    result = run_spec(spec, problem)
    if not no_store:
        from service import query, store  # noqa: PLC0415
        from service.db import session_scope  # noqa: PLC0415
        from service.models import JobStatus  # noqa: PLC0415
        from service.reader import Reader  # noqa: PLC0415

        with session_scope() as session:
            datasets = {k: store.put_dataset(session, a) for k, a in file_arrays(spec).items()}
            job = store.create_job(session, spec, status=JobStatus.RUNNING, datasets=datasets)
            job.started_at = job.created_at
            store.save_results(session, [(job.id, result)])
            session.flush()
            result = query.result_of(Reader.of_session(session), job.id)
    if as_json:
        click.echo(json.dumps(result))
        return
    if no_store:
        from service.report import render  # noqa: PLC0415

        click.echo(render(spec.to_json(), result))
    else:
        from service.cli.query import render as show  # noqa: PLC0415 - stored: print it as `klab show` does

        click.echo(show(result))
