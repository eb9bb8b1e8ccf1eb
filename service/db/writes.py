"""Every write to the database, as SQLAlchemy Core statements on service.db.schema's tables, in the
caller's transaction (service.db.engine.writing). Bulk rows go by COPY on PostgreSQL.

Every change of a job's status goes through `change_status`, which holds it to the rules of
service.jobs.status.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, ColumnElement, Connection, Table, bindparam, delete, func, insert, select, true, update
from sqlalchemy.exc import IntegrityError

from service.db.schema import JSON_COLUMNS, datasets, epochs, jobs, metadata, sweeps, utcnow
from service.jobs import result, status
from service.jobs.selection import Selection
from service.jobs.status import JobStatus

if TYPE_CHECKING:  # numpy and the spec (pydantic) load only where arrays or specs are handled
    import numpy as np

    from service.jobs.spec import JobSpec

CHUNK = 5000
"""Rows per INSERT on SQLite, ids per IN (...) list."""


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def selected(selection: Selection) -> ColumnElement[bool]:
    """The jobs a selection names (every job when it names none)."""
    if selection.sweep is not None:
        return jobs.c.sweep_id == selection.sweep
    if selection.ids:
        return jobs.c.id.in_(selection.ids)
    return true()


# --- status -----------------------------------------------------------------------------------------

def change_status(conn: Connection, to: JobStatus, where: ColumnElement[bool], among: set[JobStatus] | None = None,
                  **values: Any) -> list[tuple[int, str | None]]:
    """Move the jobs that `where` names, and whose status may change to `to` (only from `among`, when
    given), to `to`, setting `values` too. Returns (id, queue) of the jobs it moved."""
    sources = [s.value for s in status.sources(to, among)]
    stmt = (update(jobs).where(where, jobs.c.status.in_(sources)).values(status=to.value, **values)
            .returning(jobs.c.id, jobs.c.queue))
    return [(r.id, r.queue) for r in conn.execute(stmt)]


def mark_queued(conn: Connection, ids: Sequence[int]) -> None:
    """The broker took these jobs' message (again)."""
    change_status(conn, JobStatus.QUEUED, jobs.c.id.in_(ids), among=status.WAITING, queued_at=utcnow())


def claim(conn: Connection, ids: Sequence[int], host: str, task_id: str, task_try: int, lease: int) -> list[int]:
    """Mark a task's claimable jobs running; returns their ids (others are finished, cancelled or alive elsewhere).

    Claimable: waiting; or running under an earlier try of this same task (it gave up and scheduled this
    retry); or running with a lease that ran out (its worker died). A redelivered copy of a message whose
    jobs are alive elsewhere claims nothing. Jobs cancelled before they started end here, never having run.
    """
    now = utcnow()
    mine = jobs.c.id.in_(ids)
    running = jobs.c.status == JobStatus.RUNNING.value
    claimable = (jobs.c.status.in_([s.value for s in status.WAITING])
                 | (running & (jobs.c.task_id == task_id) & (jobs.c.task_try < task_try))
                 | (running & (jobs.c.heartbeat_at < now - timedelta(seconds=lease))))
    claimed = change_status(conn, JobStatus.RUNNING, mine & claimable & ~jobs.c.cancel_requested,
                            started_at=now, heartbeat_at=now, worker_host=host, task_id=task_id, task_try=task_try,
                            attempts=jobs.c.attempts + 1)
    change_status(conn, JobStatus.CANCELLED, mine & jobs.c.cancel_requested, among=status.WAITING, finished_at=now)
    return sorted(i for i, _ in claimed)


def heartbeat(conn: Connection, ids: Sequence[int]) -> None:
    """Renew the lease of running jobs."""
    conn.execute(update(jobs).where(jobs.c.id.in_(ids), jobs.c.status == JobStatus.RUNNING.value)
                 .values(heartbeat_at=utcnow()))


def reap(conn: Connection, lease: int, max_attempts: int) -> list[tuple[int, str | None]]:
    """Jobs of dead workers (running, lease run out) back to queued; those that took down `max_attempts`
    workers fail instead. Returns (id, queue) of the jobs to send again."""
    now = utcnow()
    orphaned = (jobs.c.status == JobStatus.RUNNING.value) & (jobs.c.heartbeat_at < now - timedelta(seconds=lease))
    change_status(conn, JobStatus.FAILED, orphaned & (jobs.c.attempts >= max_attempts), finished_at=now,
                  error_message=f"its worker stopped answering {max_attempts} times (KLAB_MAX_ATTEMPTS)")
    return change_status(conn, JobStatus.QUEUED, orphaned, task_id=None, queued_at=now)


def stranded(conn: Connection, threshold: int, queues: Sequence[str], held: frozenset[int]
             ) -> list[tuple[int, str | None]]:
    """Jobs queued on `queues` for longer than `threshold` seconds whose ids no message in `held` carries:
    marked queued anew (so that another worker's reaper leaves them be) and returned, to be sent again."""
    now = utcnow()
    waiting = (jobs.c.status == JobStatus.QUEUED.value) & (jobs.c.queued_at < now - timedelta(seconds=threshold))
    candidates = conn.execute(select(jobs.c.id).where(waiting, jobs.c.queue.in_(queues))).scalars().all()
    lost = [i for i in candidates if i not in held]
    if not lost:
        return []
    return change_status(conn, JobStatus.QUEUED, jobs.c.id.in_(lost) & waiting, queued_at=now)


def cancel(conn: Connection, selection: Selection) -> tuple[int, int]:
    """Waiting jobs end cancelled; running ones are asked to stop. Returns how many of each."""
    where = selected(selection)
    ended = change_status(conn, JobStatus.CANCELLED, where, among=status.WAITING, cancel_requested=True,
                          finished_at=utcnow())
    asked = conn.execute(update(jobs).where(where, jobs.c.status == JobStatus.RUNNING.value)
                         .values(cancel_requested=True)).rowcount
    return len(ended), asked


def fail(conn: Connection, ids: Sequence[int], message: str) -> None:
    change_status(conn, JobStatus.FAILED, jobs.c.id.in_(ids), error_message=message, finished_at=utcnow())


def waiting(conn: Connection, selection: Selection, include_queued: bool) -> list[tuple[int, str | None]]:
    """(id, queue) of jobs stored but never handed to the broker, and of queued ones with `include_queued`."""
    states = [JobStatus.CREATED.value] + ([JobStatus.QUEUED.value] if include_queued else [])
    rows = conn.execute(select(jobs.c.id, jobs.c.queue).where(selected(selection), jobs.c.status.in_(states))
                        .order_by(jobs.c.id))
    return [(r.id, r.queue) for r in rows]


# --- jobs, sweeps and results -----------------------------------------------------------------------

def create_sweep(conn: Connection, params: dict[str, Any], size: int, name: str | None = None) -> int:
    row = {"params": params, "size": size, "name": name, "created_at": utcnow()}
    return conn.execute(insert(sweeps).values(**row).returning(sweeps.c.id)).scalar_one()


def new_job(spec: JobSpec, *, start: JobStatus = JobStatus.CREATED, sweep_id: int | None = None,
            queue: str | None = None, dataset_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """A new job's columns: its spec, its knobs as columns, and a fresh lifecycle."""
    if start not in status.STARTS:
        raise ValueError(f"a job cannot start {start.value}")
    ds = dataset_ids or {}
    values = spec.to_json()
    knobs = {f.col: values[f.name][: f.length] if f.length and values[f.name] else values[f.name]
             for f in result.SPEC if f.name != "spec"}
    now = utcnow()
    return {"spec": values, **knobs, "sweep_id": sweep_id, "queue": queue, "status": start.value,
            "created_at": now, "started_at": now if start is JobStatus.RUNNING else None, "attempts": 0,
            "task_try": 0, "cancel_requested": False, "epochs_done": 0, "input_dataset_id": ds.get("input"),
            "labels_dataset_id": ds.get("labels"), "kernel_dataset_id": ds.get("kernel")}


def insert_jobs(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert many job rows (all with the same columns); their ids, in order. COPY on PostgreSQL."""
    if not rows:
        return []
    n = len(rows)
    if conn.dialect.name == "postgresql":
        ids = sorted(conn.execute(select(func.nextval(func.pg_get_serial_sequence("jobs", "id")))
                                  .select_from(func.generate_series(1, n))).scalars())
        _copy(conn, jobs, [{"id": i, **row} for i, row in zip(ids, rows)])
        return ids
    # SQLite: transactions begin IMMEDIATE (service.db.engine), so no other writer can take these ids meanwhile.
    start = conn.execute(select(func.coalesce(func.max(jobs.c.id), 0))).scalar_one() + 1
    ids = list(range(start, start + n))
    for part in chunks(list(zip(ids, rows))):
        conn.execute(insert(jobs), [{"id": i, **row} for i, row in part])
    return ids


def save_results(conn: Connection, items: Sequence[tuple[int, dict[str, Any], Sequence[dict[str, Any]]]]) -> None:
    """Store finished results (job id, result row, its epochs) with all their epochs, replacing any epochs
    written while it trained. Only running jobs end this way: a result for a job that ended meanwhile
    (another worker finished it first) is dropped, so each job keeps one result and its own epochs."""
    if not items:
        return
    for end in {JobStatus(row["status"]) for _, row, _ in items}:
        status.sources(end, {JobStatus.RUNNING})
    running: set[int] = set()
    for part in chunks([job_id for job_id, _, _ in items]):
        found = select(jobs.c.id).where(jobs.c.id.in_(part), jobs.c.status == JobStatus.RUNNING.value)
        running.update(conn.execute(found.with_for_update()).scalars())  # locked until we commit
    items = [item for item in items if item[0] in running]
    if not items:
        return
    now = utcnow()
    rows = [{"id": job_id, **result.columns_of({n: row.get(n) for n in result.ROW}), "finished_at": now}
            for job_id, row, _ in items]
    _update(conn, rows)
    names = result.EPOCH_NAMES[1:]
    replace_epochs(conn, [job_id for job_id, _, _ in items],
                   ((job_id, *(e[n] for n in names)) for job_id, _, eps in items for e in eps))


def store_run(conn: Connection, spec: JobSpec, row: dict[str, Any], epoch_list: Sequence[dict[str, Any]]) -> int:
    """A job trained in this process (`klab run`), stored with its uploaded arrays and its result."""
    from service.jobs.problem import file_arrays

    uploads = {field: put_dataset(conn, array) for field, array in file_arrays(spec).items()}
    (job_id,) = insert_jobs(conn, [new_job(spec, start=JobStatus.RUNNING, dataset_ids=uploads)])
    save_results(conn, [(job_id, row, epoch_list)])
    return job_id




def _update(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Update many job rows by id (all rows carry the same columns): COPY and one UPDATE on PostgreSQL."""
    if conn.dialect.name != "postgresql" or len(rows) < 50:
        cols = [c for c in rows[0] if c != "id"]
        stmt = (update(jobs).where(jobs.c.id == bindparam("_id"))
                .values({c: bindparam(f"_{c}") for c in cols}))
        conn.execute(stmt, [{f"_{k}": v for k, v in {"id": r["id"], **r}.items()} for r in rows])
        return
    staged = Table("_job_results", metadata, *(Column(c.name, c.type) for c in jobs.columns if c.name in rows[0]),
                   prefixes=["TEMPORARY"], postgresql_on_commit="DROP", extend_existing=True)
    staged.create(conn)
    _copy(conn, staged, rows)
    values = {c: staged.c[c] for c in rows[0] if c != "id"}
    conn.execute(update(jobs).where(jobs.c.id == staged.c.id).values(values))
    staged.drop(conn)
    metadata.remove(staged)


def _copy(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """COPY rows (all with the same columns) into a table, through psycopg."""
    cols = list(rows[0])
    raw = conn.connection.driver_connection
    names = ", ".join(cols)  # our own column names, never a user's
    with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([json.dumps(row[c]) if c in JSON_COLUMNS and row[c] is not None else row[c]
                            for c in cols])


def replace_epochs(conn: Connection, job_ids: Sequence[int], rows: Iterable[tuple], from_epoch: int = 1) -> None:
    """Delete the jobs' epochs from `from_epoch` on, then insert rows (job_id, epoch, loss, mse, kernel_error)."""
    for part in chunks(list(job_ids)):
        stmt = delete(epochs).where(epochs.c.job_id.in_(part))
        if from_epoch > 1:
            stmt = stmt.where(epochs.c.epoch >= from_epoch)
        conn.execute(stmt)
    names = result.EPOCH_NAMES
    if conn.dialect.name == "postgresql":
        batch = [dict(zip(names, row)) for row in rows]
        if batch:
            _copy(conn, epochs, batch)
        return
    batch = []
    for row in rows:
        batch.append(dict(zip(names, row)))
        if len(batch) >= CHUNK * 10:
            conn.execute(insert(epochs), batch)
            batch = []
    if batch:
        conn.execute(insert(epochs), batch)


def progress(conn: Connection, ids: Sequence[int], epochs_done: int) -> None:
    """A long single job's epochs written so far."""
    conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(epochs_done=epochs_done))


def set_device(conn: Connection, ids: Sequence[int], device: str) -> None:
    conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(device=device))


def cancel_requested(conn: Connection, ids: Sequence[int]) -> set[int]:
    """Which of these jobs `klab cancel` asked to stop."""
    return set(conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids), jobs.c.cancel_requested)).scalars())


def delete_jobs(conn: Connection, selection: Selection) -> tuple[int, int]:
    """Delete jobs with their epochs (and the sweep itself for a sweep). Returns (jobs, epochs) deleted."""
    where = selected(selection)
    n_epochs = conn.execute(delete(epochs).where(epochs.c.job_id.in_(select(jobs.c.id).where(where)))).rowcount
    n_jobs = conn.execute(delete(jobs).where(where)).rowcount
    if selection.sweep is not None:
        conn.execute(delete(sweeps).where(sweeps.c.id == selection.sweep))
    return n_jobs, n_epochs


# --- datasets -----------------------------------------------------------------------------------------

def array_bytes(array: np.ndarray) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def put_dataset(conn: Connection, array: np.ndarray) -> int:
    """Store an array once per content (sha256 of its .npy bytes); returns its dataset id."""
    blob = array_bytes(array)
    digest = hashlib.sha256(blob).hexdigest()
    find = select(datasets.c.id).where(datasets.c.sha256 == digest)
    found = conn.execute(find).scalar()
    if found is not None:
        return found
    try:
        with conn.begin_nested():  # another client may store the same array at the same moment
            return conn.execute(insert(datasets).values(
                sha256=digest, shape=list(array.shape), dtype=str(array.dtype), nbytes=len(blob), data=blob,
                created_at=utcnow()).returning(datasets.c.id)).scalar_one()
    except IntegrityError:
        return conn.execute(find).scalar_one()
