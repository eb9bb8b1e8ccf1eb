"""Writing jobs, epochs and datasets (reading them back: service.query). Sessions are passed in; nothing here trains."""
from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import BadInput
from service.models import Dataset, Epoch, Job, JobStatus, Sweep, utcnow

if TYPE_CHECKING:  # numpy and the spec (pydantic) load only where arrays or specs are handled
    import numpy as np

    from service.spec import JobSpec

EPOCH_CHUNK = 50_000
"""Epoch rows sent to the database in one statement (or one COPY on PostgreSQL)."""


def job_columns(spec: JobSpec) -> dict[str, Any]:
    """The columns a new job row takes from its spec."""
    return {
        "spec": spec.to_json(),
        "method": spec.method.value,
        "input": spec.input[:300],
        "kernel": None if spec.kernel is None else spec.kernel[:300],
        "lr": spec.lr,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "noise": spec.noise,
    }


def create_job(session: Session, spec: JobSpec, *, sweep_id: int | None = None, queue: str | None = None,
               status: JobStatus = JobStatus.CREATED, datasets: dict[str, int] | None = None) -> Job:
    """A new job row (flushed, so it has an id)."""
    datasets = datasets or {}
    job = Job(**job_columns(spec), sweep_id=sweep_id, queue=queue, status=status.value,
              created_at=utcnow(), attempts=0, cancel_requested=False, epochs_done=0,
              input_dataset_id=datasets.get("input"), labels_dataset_id=datasets.get("labels"),
              kernel_dataset_id=datasets.get("kernel"))
    session.add(job)
    session.flush()
    return job


def create_sweep(session: Session, params: dict[str, Any], size: int, name: str | None = None) -> Sweep:
    sweep = Sweep(params=params, size=size, name=name, created_at=utcnow())
    session.add(sweep)
    session.flush()
    return sweep


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def result_columns(result: dict[str, Any]) -> dict[str, Any]:
    """The job columns an engine result fills in."""
    err = result.get("error") or {}
    ident = result.get("identifiability") or {}
    gap = result.get("gap") or {}
    epochs = result.get("epochs") or []
    last = epochs[-1] if epochs else {}
    return {
        "status": result["status"],
        "device": result.get("device"),
        "torch_version": result.get("torch_version"),
        "train_seconds": result.get("train_seconds"),
        "true_kernel": result.get("true_kernel"),
        "initial_kernel": result.get("initial_kernel"),
        "learned_kernel": result.get("learned_kernel"),
        "learned_bias": result.get("learned_bias"),
        "lstsq_kernel": result.get("lstsq_kernel"),
        "err_frobenius": _finite(err.get("frobenius")),
        "err_relative": _finite(err.get("relative")),
        "err_max_abs": _finite(err.get("max_abs")),
        "err_cosine": _finite(err.get("cosine")),
        "rank": ident.get("rank"),
        "params": ident.get("params"),
        "identifiable": ident.get("identifiable"),
        "gap_optimization": _finite(gap.get("optimization")),
        "gap_noise": _finite(gap.get("noise")),
        "gap_identifiability": _finite(gap.get("identifiability")),
        "converged_epoch": result.get("converged_epoch"),
        "diverged_epoch": result.get("diverged_epoch"),
        "epochs_done": len(epochs),
        "final_loss": _finite(last.get("loss")),
        "final_mse": _finite(last.get("mse")),
        "explanation": result.get("explanation"),
        "finished_at": utcnow(),
    }


def save_results(session: Session, items: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Store finished results and all their epochs; a job stored again has its old epochs replaced."""
    if not items:
        return
    ids = [job_id for job_id, _ in items]
    update_jobs(session, [{"id": job_id, **result_columns(r)} for job_id, r in items])
    for job_id in ids:  # a bulk update leaves loaded Job objects stale: reload them on next access
        loaded = session.identity_map.get(session.identity_key(Job, job_id))
        if loaded is not None:
            session.expire(loaded)
    rows = ((job_id, e["epoch"], _finite(e.get("loss")), _finite(e.get("mse")), _finite(e.get("kernel_error")))
            for job_id, r in items for e in r.get("epochs") or [])
    replace_epochs(session, ids, rows)


JSON_COLUMNS = {c.name for c in Job.__table__.columns if c.type.__class__.__name__ == "JSON"}


def _copy_value(column: str, value: Any) -> Any:
    return json.dumps(value) if column in JSON_COLUMNS and value is not None else value


def update_jobs(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Update many job rows by id (all rows carry the same columns): COPY and one UPDATE on PostgreSQL."""
    if not rows:
        return
    conn = session.connection()
    if conn.dialect.name != "postgresql" or len(rows) < 50:
        session.execute(update(Job), list(rows))
        return
    cols = [c for c in rows[0] if c != "id"]
    # Column names come from our own result_columns(), never from a user.
    names = ", ".join(cols)
    session.execute(text(f"CREATE TEMP TABLE _job_results ON COMMIT DROP AS SELECT id, {names} FROM jobs WITH NO DATA"))
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY _job_results (id, {names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row["id"], *(_copy_value(c, row[c]) for c in cols)])
    sets = ", ".join(f"{c} = r.{c}" for c in cols)
    session.execute(text(f"UPDATE jobs SET {sets} FROM _job_results r WHERE jobs.id = r.id"))
    session.execute(text("DROP TABLE _job_results"))


def insert_jobs(session: Session, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert many job rows (all with the same columns); their ids, in order. COPY on PostgreSQL."""
    if not rows:
        return []
    conn = session.connection()
    n = len(rows)
    if conn.dialect.name == "postgresql":
        ids = sorted(session.execute(text("SELECT nextval(pg_get_serial_sequence('jobs', 'id')) "
                                          "FROM generate_series(1, :n)"), {"n": n}).scalars())
        cols = list(rows[0])
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY jobs (id, {', '.join(cols)}) FROM STDIN") as copy:
            for job_id, row in zip(ids, rows):
                copy.write_row([job_id, *(_copy_value(c, row[c]) for c in cols)])
        return ids
    # SQLite: transactions begin IMMEDIATE (service.db), so no other writer can take these ids meanwhile.
    start = (session.execute(text("SELECT coalesce(max(id), 0) FROM jobs")).scalar() or 0) + 1
    ids = list(range(start, start + n))
    for i in range(0, n, 5000):
        session.execute(insert(Job), [{"id": job_id, **row} for job_id, row in zip(ids[i : i + 5000], rows[i : i + 5000])])
    return ids


def replace_epochs(session: Session, job_ids: Sequence[int], rows: Iterable[tuple], from_epoch: int = 1) -> None:
    """Delete the jobs' epochs from `from_epoch` on, then insert rows (job_id, epoch, loss, mse, kernel_error)."""
    for i in range(0, len(job_ids), 1000):
        chunk = list(job_ids[i : i + 1000])
        stmt = delete(Epoch).where(Epoch.job_id.in_(chunk))
        if from_epoch > 1:
            stmt = stmt.where(Epoch.epoch >= from_epoch)
        session.execute(stmt)
    insert_epochs(session, rows)


def insert_epochs(session: Session, rows: Iterable[tuple]) -> int:
    """Bulk insert epoch rows: COPY on PostgreSQL, multi-row INSERT elsewhere."""
    conn = session.connection()
    count = 0
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy("COPY epochs (job_id, epoch, loss, mse, kernel_error) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        return count
    batch: list[dict[str, Any]] = []
    for job_id, epoch, loss, mse, kerr in rows:
        batch.append({"job_id": job_id, "epoch": epoch, "loss": loss, "mse": mse, "kernel_error": kerr})
        if len(batch) >= EPOCH_CHUNK:
            session.execute(insert(Epoch), batch)
            count += len(batch)
            batch = []
    if batch:
        session.execute(insert(Epoch), batch)
        count += len(batch)
    return count


# --- datasets -------------------------------------------------------------------------------

def array_bytes(array: np.ndarray) -> bytes:
    import numpy as np  # noqa: PLC0415

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def put_dataset(session: Session, array: np.ndarray) -> int:
    """Store an array once per content (sha256 of its .npy bytes); returns its dataset id."""
    blob = array_bytes(array)
    digest = hashlib.sha256(blob).hexdigest()
    found = session.execute(select(Dataset.id).where(Dataset.sha256 == digest)).scalar()
    if found is not None:
        return found
    try:
        with session.begin_nested():  # another client may store the same array at the same moment
            ds = Dataset(sha256=digest, shape=list(array.shape), dtype=str(array.dtype), nbytes=len(blob),
                         data=blob, created_at=utcnow())
            session.add(ds)
            session.flush()
            return ds.id
    except IntegrityError:
        return session.execute(select(Dataset.id).where(Dataset.sha256 == digest)).scalar_one()


def get_dataset(session: Session, dataset_id: int) -> np.ndarray:
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise BadInput("dataset", f"no dataset {dataset_id}")
    import numpy as np  # noqa: PLC0415

    return np.load(io.BytesIO(ds.data), allow_pickle=False)
