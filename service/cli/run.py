"""`klab run`: train one job in this process, store it, and show it."""
from __future__ import annotations

import json

import click

from service.cli import cli
from service.cli.options import job_options, specs_from
from service.errors import BadInput


@cli.command()
@job_options
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
@click.option("--no-store", is_flag=True, help="train and print without writing to the database")
def run(spec_file: str | None, as_json: bool, no_store: bool, **values: str) -> None:
    """Train one job here and now, store it, and explain how far it got from the true kernel."""
    from service.jobs import result
    from service.jobs.problem import build_problem
    from service.render.text import render

    (spec,) = specs_from(values, spec_file, one="klab run takes one")
    problem = build_problem(spec)  # every user mistake surfaces here, before torch is imported
    if not no_store:
        from service.db.engine import ready_engine

        ready_engine()  # an unreachable or outdated database is reported before training
    from worker.engine import resolve_device, run_spec

    try:
        resolve_device(spec.device.value)
    except RuntimeError as exc:
        raise BadInput("device", str(exc)) from None
    row, epochs = run_spec(spec, problem)
    if no_store:
        shown = result.to_json(row, epochs, stored=False, spec=spec.to_json())
        click.echo(json.dumps(shown) if as_json else render({**shown, "spec": spec.to_json()}))
        return
    from service.db.connect import Reader
    from service.db.engine import writing
    from service.db.reads import result_of
    from service.db.writes import store_run

    with writing() as conn:
        job_id = store_run(conn, spec, row, epochs)
        stored = result_of(Reader.of(conn), job_id)
    click.echo(json.dumps(stored) if as_json else render(stored))
