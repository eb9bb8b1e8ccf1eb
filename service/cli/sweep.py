"""`klab sweep`: the cartesian product of lists, ranges and log-spaced values, handed to the workers, or trained
here with --local (the one command besides `klab run` that reaches the engine, and only then)."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from service.cli import cli
from service.cli.options import given, job_options, spec_docs
from service.cli.submit import queue_options, show_results, warn_unserved
from service.errors import BadInput, Gone, Interrupted
from service.jobs.selection import Selection
from service.jobs.status import JobStatus

if TYPE_CHECKING:
    from service.submit import Plan


@cli.command()
@job_options("a sweep in JSON or YAML: any swept field may hold a list or a range")
@queue_options
@click.option("--name", default=None, help="a name for the sweep")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="a tag for the sweep (repeatable); klab sweeps "
              "--tag and klab list --tag select by it")
@click.option("--local", is_flag=True, help="train the sweep here, batched, and store it: no broker, no worker")
def sweep(spec_file: str | None, queue: str | None, wait: bool, as_json: bool, batch_jobs: int,
          name: str | None, tags: tuple[str, ...], local: bool, **values: str) -> None:
    """Create a sweep: any of --lr --epochs --seed --kernel --method --batch-size --noise --input
    takes a comma list; numeric ones also A..B (integers) or A:B:N (N log-spaced values). -f FILE gives
    them as a YAML or JSON mapping, where a list sweeps too (flags given override the file)."""
    from service.jobs import sweep as sweeps
    from service.submit import plan_sweep

    if local and queue is not None:
        raise BadInput("queue", "a --local sweep trains here and goes to no queue")
    (doc,) = spec_docs(spec_file, one="a sweep takes one base job")
    plan = plan_sweep(sweeps.grid(sweeps.file_flags(doc, given(values))), queue, name, tags)
    if local:
        started = time.monotonic()
        ids = _train_here(plan, batch_jobs)
        sweep_id, what = plan.sweep_id, f"trained here in {time.monotonic() - started:.3g} s"
    else:
        from service.submit import submit

        sweep_id, ids = submit(plan, batch_jobs)
        warn_unserved(plan.queues)
        what = None
    if as_json and not wait:
        click.echo(json.dumps({"sweep": sweep_id, "size": len(ids), "ids": ids}))
        return
    click.echo(f"sweep {sweep_id}: {len(ids)} jobs" + (f", {what}" if what else ""), err=as_json)
    if wait or local:
        show_results(Selection(sweep=sweep_id), as_json, one=False, broker_asked=not local)


def _train_here(plan: Plan, batch_jobs: int) -> list[int]:
    """The plan's jobs trained in this process (worker.local), with their progress on stderr."""
    from service.cli.progress import Tally, interrupts
    from service.db.engine import ready_engine
    from service.submit import device_of
    from worker import device_first

    device_first(device_of(plan))
    ready_engine()  # an unreachable or outdated database is reported before torch is imported
    from worker.local import train_plan

    tally, done = Tally(plan.size, "jobs"), 0

    try:
        with interrupts() as check:
            def trained(n: int) -> None:
                nonlocal done
                done += n
                tally.update(done)
                check()  # a Ctrl-C that landed in a finalizer stops the sweep here

            return train_plan(plan, batch_jobs, trained)
    except KeyboardInterrupt:
        kept = _kept(plan, done, JobStatus.CANCELLED)
        raise Interrupted(f"stopped: {done} of {plan.size} jobs trained{kept}") from None
    except Exception as exc:  # the database lost or full, out of memory: said as a Ctrl-C is
        if not isinstance(exc, Gone):  # the sweep deleted meanwhile says so itself
            exc.add_note(f"{done} of {plan.size} jobs trained{_kept(plan, done, JobStatus.FAILED)}")
        raise
    finally:
        tally.close()


def _kept(plan: Plan, done: int, ended: JobStatus) -> str:
    """What a stopped sweep's line says it keeps, as the database has it: the jobs trained; before any, those of its
    first chunk, ended as `ended` says (else `keeps them` read as none: a full disk at the first batch named no
    sweep); and those it could not end (a full PostgreSQL cannot even mark them failed), left running, which no
    worker will end. Nothing was stored where its first chunk was stopped while stored (rolled back with it); where
    the database cannot say, only what the count of jobs trained tells."""
    if (sweep := plan.sweep_id) is None:
        return ""
    found = _statuses(sweep)
    if found is None:
        return f"; sweep {sweep} keeps them" if done else ""
    if not found:
        return "; nothing was stored"
    running = found.get(JobStatus.RUNNING.value, 0)
    if not running:
        return f"; sweep {sweep} keeps them" if done else f"; sweep {sweep} keeps the jobs stored so far, {ended.value}"
    return (f"; sweep {sweep} keeps {'them' if done else 'the jobs stored so far'}; {running} of its jobs are left "
            f"running, which no worker will end: klab delete --sweep {sweep}")


def _statuses(sweep_id: int) -> dict[str, int] | None:
    """A stopped sweep's jobs by status ({} where it was not stored); None where the database cannot say."""
    from service.db.reads import progress, reading

    try:
        with reading() as reader:
            return progress(reader, Selection(sweep=sweep_id))["by_status"]  # BadInput: no such sweep (reads.where)
    except BadInput:
        return {}
    except Exception:  # noqa: BLE001 - the database the sweep stopped at: its error is the one said
        return None
