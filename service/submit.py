"""Submitting: validate every spec as a worker would build it, store the jobs, then hand them to the broker.

Nothing is written while the broker is down; a broker that fails mid-way leaves the jobs not yet
sent `created`, and the error names the `klab requeue` that sends them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service import broker
from service.db import writes
from service.db.engine import writing
from service.errors import BadInput, BrokerUnavailable
from service.jobs.problem import build_problem, file_arrays, problem_key, together
from service.jobs.selection import Selection
from service.jobs.spec import Device, JobSpec


def queue_for(spec: JobSpec, queue: str | None) -> str:
    """--queue wins; else cuda goes to gpu, cpu and auto to cpu."""
    if queue is not None:
        if queue not in broker.QUEUES:
            raise BadInput("queue", f"unknown queue {queue!r}; expected cpu or gpu")
        return queue
    return "gpu" if spec.device is Device.CUDA else "cpu"


@dataclass(frozen=True)
class Prepared:
    """A validated spec with its queue, what it trains together with, and its arrays to upload."""

    spec: JobSpec
    queue: str
    key: tuple
    arrays: dict[str, Any]


def prepare(specs: Sequence[JobSpec], queue: str | None) -> list[Prepared]:
    """Validate every spec as a worker would build it; a bad one stops the whole submission."""
    keys: dict[tuple, tuple] = {}
    out = []
    for spec in specs:
        arrays = file_arrays(spec)
        built = problem_key(spec)
        if built not in keys:
            keys[built] = build_problem(spec, dict(arrays))
        q = queue_for(spec, queue)
        out.append(Prepared(spec, q, (q, *together(keys[built], spec)), arrays))
    return out


def store(prepared: Sequence[Prepared], sweep: dict[str, Any] | None = None, name: str | None = None
          ) -> tuple[int | None, list[int]]:
    """Store the jobs (status created) and their sweep, if any, in one transaction: (sweep id, job ids)."""
    with writing() as conn:
        sweep_id = None if sweep is None else writes.create_sweep(conn, sweep, len(prepared), name)
        uploaded: dict[int, int] = {}
        rows = []
        for prep in prepared:
            ds = {}
            for field, array in prep.arrays.items():
                if id(array) not in uploaded:
                    uploaded[id(array)] = writes.put_dataset(conn, array)
                ds[field] = uploaded[id(array)]
            rows.append(writes.new_job(prep.spec, sweep_id=sweep_id, queue=prep.queue, dataset_ids=ds))
        return sweep_id, writes.insert_jobs(conn, rows)


def send(messages: Sequence[broker.Task], again: Selection | None = None) -> int:
    """Publish tasks, marking each task's jobs queued once the broker took it; how many jobs were sent.

    A broker that fails mid-way raises BrokerUnavailable naming the requeue that sends the rest
    (`again`: the jobs as the user would name them; none: every job left created).
    """
    def sent(ids: list[int]) -> None:
        with writing() as conn:
            writes.mark_queued(conn, ids)

    try:
        return broker.publish(broker.client(), messages, sent)
    except BrokerUnavailable as exc:
        target = f" {again}" if again is not None and not again.everything else ""
        raise BrokerUnavailable(f"{exc}; the jobs not yet queued will run after: klab requeue{target}") from None


def submit(prepared: Sequence[Prepared], batch_jobs: int, sweep: dict[str, Any] | None = None,
           name: str | None = None) -> tuple[int | None, list[int]]:
    """Check the broker, store the jobs, send them: (sweep id, job ids)."""
    broker.check()  # nothing is written while the broker is down
    sweep_id, ids = store(prepared, sweep, name)
    again = Selection(sweep=sweep_id) if sweep_id is not None else Selection(tuple(ids) if len(ids) <= 50 else ())
    send(broker.tasks([(i, p.key) for i, p in zip(ids, prepared)], batch_jobs), again)
    return sweep_id, ids


def requeue(selection: Selection, include_queued: bool, batch_jobs: int) -> int:
    """Send again jobs stored but never handed to the broker (and queued ones, with include_queued)."""
    broker.check()
    with writing() as conn:
        found = writes.waiting(conn, selection, include_queued)
    return send(broker.tasks([(i, (q or "cpu",)) for i, q in found], batch_jobs), selection)
