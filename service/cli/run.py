"""`klab run`: train one job in this process, store it, and show it."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from service.cli import cli, to_nowhere
from service.cli.options import job_options, specs_from


@cli.command()
@job_options("a job in JSON or YAML")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object")
@click.option("--no-store", is_flag=True, help="train and print without writing to the database")
@click.option("-v", "--verbose", is_flag=True, help="print each epoch's loss as the book does: epoch 2, loss 8.330")
def run(spec_file: str | None, as_json: bool, no_store: bool, verbose: bool, **values: str) -> None:
    """Train one job here and now, store it, and explain how far it got from the true kernel."""
    from service.jobs import result
    from service.jobs.problem import build_problem
    from service.render.text import render
    from worker import device_first

    (spec,) = specs_from(values, spec_file, one="klab run takes one")
    problem = build_problem(spec)  # every user mistake surfaces here, before torch is imported
    device_first(spec.device)
    if not no_store:
        from service.db.engine import ready_engine

        ready_engine()  # an unreachable or outdated database is reported before torch is imported
    from worker.engine import run_spec

    with Epochs(spec.epochs, verbose, err=as_json) as on_epoch:
        row, epochs = run_spec(spec, problem, on_epoch)

    def unstored() -> None:
        shown = result.to_json(row, epochs, stored=False, spec=spec.to_json())
        click.echo(json.dumps(shown) if as_json else render({**shown, "spec": spec.to_json()}))

    if no_store:
        return unstored()
    from service.db.connect import Reader
    from service.db.engine import writing
    from service.db.reads import result_of
    from service.db.writes import store_run

    try:
        with writing() as conn:
            job_id = store_run(conn, spec, row, epochs)
            stored = result_of(Reader.of(conn), job_id)
    except Exception:  # refused after training (the database: a full disk, a server gone, exit code 3; or a file it
        unstored()  # stores, gone meanwhile, exit code 2): what was trained, marked "not stored", then the error line
        raise
    click.echo(json.dumps(stored) if as_json else render(stored))


class Epochs:
    """The engine's on_epoch callback for `klab run`: progress on stderr for a long job (service.cli.progress.Tally),
    and with --verbose the book's line for every epoch (on stdout; with --json on stderr, which stays the
    one JSON object)."""

    def __init__(self, epochs: int, verbose: bool, err: bool = False, stream: Any = None, clock: Any = None) -> None:
        from service.cli.progress import Tally

        self.err = err
        self.tally = None if verbose else Tally(epochs, "epoch", stream, clock)  # --verbose's lines are progress

    def __enter__(self) -> Epochs:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tally is not None:
            self.tally.close()

    def __call__(self, event: Any) -> None:
        loss = float(event.loss[0])
        if self.tally is None:
            try:
                click.echo(f"epoch {event.epoch}, loss {book_loss(loss)}", err=self.err)
            except BrokenPipeError:  # its reader went away (`klab run -v | head -3`): the job still trains, is stored
                to_nowhere(sys.stderr if self.err else sys.stdout)
        else:
            self.tally.update(event.epoch, f"loss {book_loss(loss)}")


def book_loss(loss: float) -> str:
    """A loss as the book prints it (`{l.sum():.3f}`), but never a small loss as 0.000: three significant
    digits below 0.001."""
    return f"{loss:.3f}" if abs(loss) >= 1e-3 or loss == 0 else f"{loss:.3g}"  # nan: "nan" either way
