"""`klab run`: train one job in this process and report it."""
from __future__ import annotations

import json

import click

from service.cli import cli
from service.cli.options import given, job_options
from service.spec import JobSpec, build_problem, load_spec_file


def spec_from_cli(values: dict, spec_file: str | None) -> JobSpec:
    """One spec from -f FILE and flags (flags win)."""
    base: dict = {}
    if spec_file:
        docs = load_spec_file(spec_file)
        if len(docs) != 1:
            from service.errors import BadInput  # noqa: PLC0415
            raise BadInput("file", f"{spec_file} holds {len(docs)} jobs; klab run takes one")
        base = docs[0]
    return JobSpec.parse({**base, **given(values)})


@cli.command()
@job_options
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
def run(spec_file: str | None, as_json: bool, **values: str) -> None:
    """Train one job here and now, and explain how far it got from the true kernel."""
    spec = spec_from_cli(values, spec_file)
    problem = build_problem(spec)  # every user mistake surfaces here, before torch is imported
    from worker.engine import run_spec  # noqa: PLC0415 - torch only when training

    result = run_spec(spec, problem)
    if as_json:
        click.echo(json.dumps(result))
    else:
        from service.report import render  # noqa: PLC0415
        click.echo(render(spec.to_json(), result))
