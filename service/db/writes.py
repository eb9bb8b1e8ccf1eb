"""Every write to the database, as SQLAlchemy Core statements on service.db.schema's tables, in the
caller's transaction (service.db.engine.writing); many rows at once through service.db.bulk (COPY and
unnest on PostgreSQL, executemany on SQLite).

Every change of a job's status is held to the rules of service.jobs.status (`change_status`, and the
claim, which starts or cancels in one statement). Lists of job ids travel as one parameter, however long.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Integer,
    Text,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)

from service.db import bulk
from service.db.datasets import put_dataset
from service.db.ids import reserve_ids
from service.db.schema import epochs, jobs, sweeps, unfinished, utcnow
from service.jobs import result, status
from service.jobs.columns import Columns, finite
from service.jobs.selection import Selection
from service.jobs.status import JobStatus

if TYPE_CHECKING:  # the spec (pydantic) loads only where specs are handled
    from service.jobs.spec import JobSpec

def ids_in(conn: Connection, column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    """`column` is one of `ids`, as one parameter however many ids (a database refuses a statement of over
    32,766 or 65,535 parameters): a JSON list on SQLite; on PostgreSQL an array, and between the least and the
    greatest id, which the primary key answers even on a table not yet analysed (a new sweep's, where the array
    alone had every claim read the whole table)."""
    ids = [int(i) for i in ids]
    if conn.dialect.name == "postgresql":
        listed = column == any_(bindparam(None, ids, type_=ARRAY(Integer), unique=True))
        return column.between(min(ids, default=0), max(ids, default=0)) & listed
    each = select(literal_column("value")).select_from(func.json_each(json.dumps(ids)))
    return column.in_(each)


def selected(conn: Connection, selection: Selection) -> ColumnElement[bool]:
    """The jobs a selection names (every job when it names none)."""
    if selection.sweep is not None:
        return jobs.c.sweep_id == selection.sweep
    if selection.ids:
        return ids_in(conn, jobs.c.id, selection.ids)
    return true()


# --- status -----------------------------------------------------------------------------------------

def change_status(conn: Connection, to: JobStatus, where: ColumnElement[bool], among: set[JobStatus] | None = None,
                  **values: Any) -> list[tuple[int, str | None]]:
    """Move the jobs that `where` names, whose status may change to `to` (only from `among`, when given), to
    `to`, setting `values` (with its mark: service.jobs.status.MARKS). Returns (id, queue) of the jobs moved."""
    if (mark := status.MARKS.get(to)) and values.get(mark) in (None, False):
        raise ValueError(f"a job that ends {to.value} must have its {mark} set")
    sources = [s.value for s in status.sources(to, among)]
    stmt = (update(jobs).where(where, jobs.c.status.in_(sources)).values(status=to.value, **values)
            .returning(jobs.c.id, jobs.c.queue))
    return [(r.id, r.queue) for r in conn.execute(stmt)]


def mark_queued(conn: Connection, ids: Sequence[int]) -> None:
    """The broker took these jobs' message (again)."""
    change_status(conn, JobStatus.QUEUED, ids_in(conn, jobs.c.id, ids), among=status.WAITING, queued_at=utcnow())


def _claimed(conn: Connection) -> tuple[Any, ...]:
    """What a claim returns of each job: all a worker needs to train it, the spec as its stored text (`stored.alike`
    tells which jobs share it)."""
    return (jobs.c.id, jobs.c.status, jobs.c.attempts, jobs.c.seed, jobs.c.lr, cast(jobs.c.spec, Text).label("spec"),
            jobs.c.input, jobs.c.kernel, jobs.c.input_dataset_id, jobs.c.labels_dataset_id, jobs.c.kernel_dataset_id)


def unsent(conn: Connection, ids: Sequence[int]) -> None:
    """Jobs stored queued whose message the broker did not take: back to created, for `klab requeue`."""
    if ids:
        change_status(conn, JobStatus.CREATED, ids_in(conn, jobs.c.id, ids))


def claim(conn: Connection, ids: Sequence[int], host: str, task_id: str, task_try: int, lease: int) -> list[Any]:
    """In one statement, mark a task's claimable jobs running and end its cancelled ones; returns the rows
    (_claimed) of the jobs it started (others are finished, cancelled or alive elsewhere).

    Claimable: waiting; or running under an earlier try of this same task (it gave up and scheduled this
    retry); or running with a lease that ran out (its worker died). A redelivered copy of a message whose
    jobs are alive elsewhere claims nothing. Jobs cancelled before they started end here, never having run.
    """
    now = utcnow()
    by = trained_by(host, task_id, task_try, now)
    running = jobs.c.status == JobStatus.RUNNING.value
    waiting = jobs.c.status.in_([s.value for s in status.sources(JobStatus.CANCELLED, status.WAITING)])
    claimable = (jobs.c.status.in_([s.value for s in status.sources(JobStatus.RUNNING, status.WAITING)])
                 | (running & (jobs.c.task_id == task_id) & (jobs.c.task_try < task_try))
                 | (running & (jobs.c.heartbeat_at < now - timedelta(seconds=lease))))
    cancel = jobs.c.cancel_requested

    def unless_cancelled(value: Any, otherwise: Any) -> Any:
        return case((cancel, otherwise), else_=value)

    stmt = (update(jobs).where(ids_in(conn, jobs.c.id, ids), (claimable & ~cancel) | (waiting & cancel))
            .values(status=unless_cancelled(JobStatus.RUNNING.value, JobStatus.CANCELLED.value),
                    finished_at=unless_cancelled(jobs.c.finished_at, now),
                    attempts=unless_cancelled(jobs.c.attempts + 1, jobs.c.attempts),
                    **{c: unless_cancelled(v, None if c == "heartbeat_at" else jobs.c[c]) for c, v in by.items()})
            .returning(*_claimed(conn)))
    started = [r for r in conn.execute(stmt).all() if r.status == JobStatus.RUNNING.value]
    started.sort(key=lambda r: r.id)
    return started


def trained_by(host: str, task_id: str, task_try: int, now: datetime) -> dict[str, Any]:
    """The columns that say which worker's task trains a job, and since when: a claim writes them, and a quick task,
    which claims nothing, writes them with its results (save_results, fail)."""
    return {"started_at": now, "heartbeat_at": now, "worker_host": host, "task_id": task_id, "task_try": task_try}


def peek(conn: Connection, ids: Sequence[int]) -> list[Any]:
    """A task's jobs as a claim would return them (_claimed), with whether a cancel was asked, changing nothing: a
    quick task trains those still waiting without claiming them (worker.tasks)."""
    rows = conn.execute(select(*_claimed(conn), jobs.c.cancel_requested).where(ids_in(conn, jobs.c.id, ids)))
    return sorted(rows, key=lambda r: r.id)


def held(conn: Connection, ids: Sequence[int], attempts: Sequence[int], quick: bool = False) -> ColumnElement[bool]:
    """The jobs `ids` still under the claims that left them at `attempts` (one a job): running, and no other
    claim since; for a `quick` task, still waiting, and never claimed since it read them. What a worker writes of
    its jobs goes to these alone (save_results holds a task's results to the same rule through bulk.update_jobs'
    match)."""
    state = jobs.c.status.in_([s.value for s in status.WAITING]) if quick else jobs.c.status == JobStatus.RUNNING.value
    return state & or_(*(
        ids_in(conn, jobs.c.id, [i for i, a in zip(ids, attempts) if a == n]) & (jobs.c.attempts == n)
        for n in set(attempts)))


def heartbeat(conn: Connection, ids: Sequence[int], attempts: Sequence[int]) -> None:
    """Renew the lease of the jobs still under the claims that left them at `attempts`."""
    conn.execute(update(jobs).where(held(conn, ids, attempts)).values(heartbeat_at=utcnow()))


def reap(conn: Connection, lease: int, max_attempts: int) -> list[tuple[int, str | None]]:
    """Jobs of dead workers (running, lease run out) back to queued; those `klab cancel` asked to stop end cancelled
    (they went back to queued, counted so, until a worker's claim ended them), and those that took down
    `max_attempts` workers fail instead. Returns (id, queue) of the jobs to send again."""
    now = utcnow()
    orphaned = unfinished(JobStatus.RUNNING.value) & (jobs.c.heartbeat_at < now - timedelta(seconds=lease))
    change_status(conn, JobStatus.CANCELLED, orphaned & jobs.c.cancel_requested, cancel_requested=True, finished_at=now)
    change_status(conn, JobStatus.FAILED, orphaned & (jobs.c.attempts >= max_attempts), finished_at=now,
                  error_message=f"its worker stopped answering {max_attempts} times (KLAB_MAX_ATTEMPTS)")
    return change_status(conn, JobStatus.QUEUED, orphaned, task_id=None, queued_at=now)


def stranded(conn: Connection, threshold: int, queues: Sequence[str], delivered: frozenset[int]
             ) -> list[tuple[int, str | None]]:
    """Jobs queued on `queues` for longer than `threshold` seconds whose ids no message in `delivered` carries:
    marked queued anew (so that another worker's reaper leaves them be) and returned, to be sent again."""
    now = utcnow()
    waiting = unfinished(JobStatus.QUEUED.value) & (jobs.c.queued_at < now - timedelta(seconds=threshold))
    candidates = conn.execute(select(jobs.c.id).where(waiting, jobs.c.queue.in_(queues))).scalars().all()
    lost = [i for i in candidates if i not in delivered]
    if not lost:
        return []
    return change_status(conn, JobStatus.QUEUED, ids_in(conn, jobs.c.id, lost) & waiting, queued_at=now)


def cancel(conn: Connection, selection: Selection) -> tuple[int, int]:
    """Waiting jobs end cancelled; running ones are asked to stop. Returns how many of each."""
    where = selected(conn, selection)
    ended = change_status(conn, JobStatus.CANCELLED, where, among=status.WAITING, cancel_requested=True,
                          finished_at=utcnow())
    asked = conn.execute(update(jobs).where(where, jobs.c.status == JobStatus.RUNNING.value)
                         .values(cancel_requested=True)).rowcount
    return len(ended), asked


def stopped(conn: Connection, ids: Sequence[int]) -> None:
    """Running jobs this process was training when it was stopped (Ctrl-C in klab sweep --local): asked to stop."""
    change_status(conn, JobStatus.CANCELLED, ids_in(conn, jobs.c.id, ids), among={JobStatus.RUNNING},
                  cancel_requested=True, finished_at=utcnow())


def fail(conn: Connection, ids: Sequence[int], message: str, attempts: Sequence[int] | None = None,
         quick: dict[str, Any] | None = None) -> list[int]:
    """Running jobs end failed, saying why; with `attempts` (save_results's), only while their claims hold; a quick
    task's (`quick`: its trained_by) while they wait, as if claimed. Returns the ids ended."""
    where = ids_in(conn, jobs.c.id, ids) if attempts is None else held(conn, ids, attempts, quick is not None)
    claimed = {} if quick is None else {**quick, "attempts": jobs.c.attempts + 1}
    return [i for i, _ in change_status(conn, JobStatus.FAILED, where, error_message=message, finished_at=utcnow(),
                                        **claimed)]


def waiting(conn: Connection, selection: Selection, include_queued: bool) -> list[tuple[int, str | None]]:
    """(id, queue) of jobs stored but never handed to the broker, and of queued ones with `include_queued`."""
    states = [JobStatus.CREATED.value] + ([JobStatus.QUEUED.value] if include_queued else [])
    rows = conn.execute(select(jobs.c.id, jobs.c.queue).where(selected(conn, selection), jobs.c.status.in_(states))
                        .order_by(jobs.c.id))
    return [(r.id, r.queue) for r in rows]


# --- jobs, sweeps and results -----------------------------------------------------------------------

def create_sweep(conn: Connection, params: dict[str, Any], size: int, name: str | None = None,
                 tags: Sequence[str] = ()) -> int:
    row = {"params": params, "size": size, "name": name, "tags": list(tags), "created_at": utcnow()}
    if conn.dialect.name == "sqlite":  # never a deleted sweep's id (service.db.ids)
        row["id"] = reserve_ids(conn, 1, sweeps)[0]
    return conn.execute(insert(sweeps).values(**row).returning(sweeps.c.id)).scalar_one()


def sweep_kept(conn: Connection, sweep_id: int) -> bool:
    """Whether a sweep still exists, kept so until this transaction ends (PostgreSQL: its row locked for key
    share): a `klab delete` of it meanwhile waits, then deletes what this transaction stored with it."""
    found = select(sweeps.c.id).where(sweeps.c.id == sweep_id).with_for_update(read=True, key_share=True)
    return conn.execute(found).first() is not None


KNOBS = tuple(f for f in result.SPEC if f.name != "spec")
"""The spec's main values, kept in columns of their own."""


def knobs(values: dict[str, Any]) -> tuple[Any, ...]:
    """A spec's knob columns (texts cut to their column's length), in KNOBS order."""
    return tuple(knob(f, values[f.name]) for f in KNOBS)


def knob(f: result.Field, value: Any) -> Any:
    """A spec's value as its knob column holds it (a text cut to the column's length)."""
    return value[: f.length] if f.length and value else value


def lifecycle(start: JobStatus, sweep_id: int | None = None) -> dict[str, Any]:
    """The columns new jobs of one submission share: how they start."""
    if start not in status.STARTS:
        raise ValueError(f"a job cannot start {start.value}")
    now = utcnow()
    return {"sweep_id": sweep_id, "status": start.value, "created_at": now,
            "started_at": now if start is JobStatus.RUNNING else None,
            "queued_at": now if start is JobStatus.QUEUED else None, "attempts": 0, "task_try": 0,
            "cancel_requested": False, "epochs_done": 0}


def new_job(spec: JobSpec, *, start: JobStatus = JobStatus.CREATED, sweep_id: int | None = None,
            queue: str | None = None, dataset_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """A new job's columns: its spec (JSON text), its knobs as columns, and a fresh lifecycle."""
    values, ds = spec.to_json(), dataset_ids or {}
    knob_columns = dict(zip((f.col for f in KNOBS), knobs(values)))
    return {**lifecycle(start, sweep_id), "spec": json.dumps(values), **knob_columns, "queue": queue,
            "input_dataset_id": ds.get("input"), "labels_dataset_id": ds.get("labels"),
            "kernel_dataset_id": ds.get("kernel")}


def insert_jobs(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert job rows (new_job's, all with the same columns); their ids, in order."""
    return insert_columns(conn, {c: [r[c] for r in rows] for c in rows[0]}, len(rows)) if rows else []


def insert_columns(conn: Connection, columns: dict[str, Any], n: int, ids: list[int] | None = None) -> list[int]:
    """Insert n jobs given column by column (a list: a value a job; anything else: every job's) with `ids`
    (reserve_ids's) or new ones; their ids, in order. COPY on PostgreSQL."""
    ids = reserve_ids(conn, n) if ids is None else ids
    bulk.insert_rows(conn, "jobs", {"id": ids, **columns}, n)
    return ids


def save_results(conn: Connection, ids: Sequence[int], results: Columns, fresh: bool = False,
                 attempts: Sequence[int] | None = None, quick: dict[str, Any] | None = None) -> list[int]:
    """Store finished results, every job's epochs with them, replacing any epochs written while it trained
    (`fresh`: the caller knows there are none). Only running jobs end this way, and with `attempts` (a
    worker's: each job's, as its claim left them) only while that claim holds: a result for a job that ended
    meanwhile (another worker finished it first), or that another claim took over, is dropped, so each job
    keeps one result and its own epochs. A quick task's results (`quick`: its trained_by; `attempts` as it read
    them) end jobs still waiting, writing what their claim would have. Returns the ids stored."""
    if not len(ids):
        return []
    starts = status.WAITING if quick is not None else {JobStatus.RUNNING}
    for end in set(results.values["status"]):
        status.sources(JobStatus(end), starts)
    values = {result.BY_NAME[n].col: results.stored(n) for n in result.ROW}
    values["finished_at"] = utcnow()
    claims = None if attempts is None else {"attempts": [int(a) for a in attempts]}
    values.update(quick or {})
    states = {f"s{i}": s for i, s in enumerate(sorted(s.value for s in starts))}
    stored = bulk.update_jobs(conn, ids, values, where=f"jobs.status IN ({', '.join(':' + k for k in states)})",
                              params=states, match=claims, bump=("attempts",) if quick is not None else ())
    if not stored:
        return []
    if not fresh:
        conn.execute(delete(epochs).where(ids_in(conn, epochs.c.job_id, stored)))
    import numpy as np

    keep = np.flatnonzero(np.isin(np.asarray(ids), stored))  # the jobs stored, in the order given
    at = slice(None) if len(keep) == len(ids) else keep  # all of them: the histories themselves, not copies
    ke = results.kernel_error
    bulk.insert_epochs(conn, np.asarray(ids)[at], np.asarray(results.epochs_done)[at], results.loss[:, at],
                       results.mse[:, at], None if ke is None else ke[:, at])
    return stored


def save_rows(conn: Connection, items: Sequence[tuple[int, dict[str, Any], Sequence[dict[str, Any]]]]) -> list[int]:
    """`save_results` for results given one at a time: (job id, result row, its epochs)."""
    return save_results(conn, [i for i, _, _ in items], Columns.of_rows([(row, eps) for _, row, eps in items]))


def store_run(conn: Connection, spec: JobSpec, row: dict[str, Any], epoch_list: Sequence[dict[str, Any]]) -> int:
    """A job trained in this process (`klab run`), stored with its uploaded arrays and its result."""
    from service.jobs.problem import file_arrays

    uploads = {field: put_dataset(conn, array) for field, array in file_arrays(spec).items()}
    (job_id,) = insert_jobs(conn, [new_job(spec, start=JobStatus.RUNNING, dataset_ids=uploads)])
    save_rows(conn, [(job_id, row, epoch_list)])
    return job_id


def streamed(conn: Connection, job_id: int, attempt: int, epoch_list: Sequence[dict[str, Any]],
             epochs_done: int) -> bool:
    """A long single job's epochs as given (replacing those stored from the first of them on), and how many it
    has done, written as it trains while the claim that made `attempt` its attempts holds (the job running): a
    worker frozen past its lease, whose job was sent again, claimed or ended elsewhere meanwhile, writes nothing.
    The job's row is locked first, so a result stored meanwhile comes wholly before or after. Whether it holds."""
    import numpy as np

    last = {f"final_{k}": finite(epoch_list[-1][k]) for k in ("loss", "mse")} if epoch_list else {}  # as `klab
    # show` reads the epochs (`klab list` showed a running job's progress with no loss)
    holds = conn.execute(update(jobs).where(held(conn, [job_id], [attempt]))
                         .values(epochs_done=epochs_done, **last).returning(jobs.c.id)).first()
    if holds is None or not epoch_list:
        return holds is not None
    conn.execute(delete(epochs).where(epochs.c.job_id == job_id, epochs.c.epoch >= epoch_list[0]["epoch"]))

    def column(name: str) -> Any:
        return np.array([[np.nan if e[name] is None else e[name]] for e in epoch_list])

    ke = column("kernel_error")
    bulk.insert_epochs(conn, [job_id], [len(epoch_list)], column("loss"), column("mse"),
                       None if np.isnan(ke).all() else ke, first=epoch_list[0]["epoch"])
    return True


def set_device(conn: Connection, ids: Sequence[int], device: str) -> None:
    conn.execute(update(jobs).where(ids_in(conn, jobs.c.id, ids)).values(device=device))


def stopping(conn: Connection, ids: Sequence[int], attempts: Sequence[int], quick: bool = False
             ) -> tuple[set[int], set[int]]:
    """Of a worker's jobs in hand (`attempts` as its claims left them, or a `quick` task's as it read them): those
    `klab cancel` asked to stop, and those no longer under its claims (deleted; or, its lease having run out, ended
    or claimed elsewhere) or, a quick task's, no longer waiting."""
    mine = held(conn, ids, attempts, quick)
    n, asked = conn.execute(select(func.count(), func.count(case((jobs.c.cancel_requested, 1)))).where(mine)).one()
    if n == len(set(ids)) and not asked:  # as nearly always: nothing to stop, said in one row
        return set(), set()
    found = conn.execute(select(jobs.c.id, jobs.c.cancel_requested).where(mine)).all()
    return {r.id for r in found if r.cancel_requested}, set(ids) - {r.id for r in found}


def delete_jobs(conn: Connection, selection: Selection) -> tuple[int, int]:
    """Delete jobs with their epochs (and the sweep itself for a sweep). Returns (jobs, epochs) deleted.

    The jobs' rows are locked first, in id order: a worker storing results of some of them has committed, and its
    epochs are counted, or waits, and finds them gone. Deleting the epochs first counted none of those a worker
    committed meanwhile (the trigger deleted them with their jobs), and locked epochs that worker was replacing
    while it held their jobs: a deadlock."""
    where = selected(conn, selection)
    ids = conn.execute(select(jobs.c.id).where(where).order_by(jobs.c.id).with_for_update()).scalars().all()
    # their epochs by the ids (by epochs' primary key): PostgreSQL joined `IN (SELECT id ... WHERE sweep_id = ...)`
    # by reading every epoch (40 s on 251,000,000 of them, for a sweep of 300 jobs that had none)
    n_epochs = conn.execute(delete(epochs).where(ids_in(conn, epochs.c.job_id, ids))).rowcount
    n_jobs = conn.execute(delete(jobs).where(where)).rowcount
    if selection.sweep is not None:
        conn.execute(delete(sweeps).where(sweeps.c.id == selection.sweep))
    return n_jobs, n_epochs
