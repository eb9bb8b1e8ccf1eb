"""Reading stored jobs for the CLI: lists, comparisons, exports and deletes. Sessions are passed in.

Everything here reads the jobs table's own columns (latest loss, epochs done, metrics) except the
epochs export and `show`, so listing and comparing never touch the epochs table.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.orm import Session

from service import store
from service.errors import BadInput
from service.models import Epoch, Job, JobStatus, Sweep

SUMMARY: dict[str, Any] = {
    "id": Job.id,
    "sweep_id": Job.sweep_id,
    "status": Job.status,
    "method": Job.method,
    "input": Job.input,
    "kernel": Job.kernel,
    "lr": Job.lr,
    "epochs": Job.epochs,
    "batch_size": Job.batch_size,
    "seed": Job.seed,
    "noise": Job.noise,
    "epochs_done": Job.epochs_done,
    "final_loss": Job.final_loss,
    "final_mse": Job.final_mse,
    "relative_error": Job.err_relative,
    "frobenius_error": Job.err_frobenius,
    "max_abs_error": Job.err_max_abs,
    "cosine": Job.err_cosine,
    "identifiable": Job.identifiable,
    "rank": Job.rank,
    "params": Job.params,
    "converged_epoch": Job.converged_epoch,
    "diverged_epoch": Job.diverged_epoch,
    "gap_optimization": Job.gap_optimization,
    "gap_noise": Job.gap_noise,
    "gap_identifiability": Job.gap_identifiability,
}
"""A job's parameters and metrics under the names the job_summary view gives them."""

LIST_COLUMNS = ("id", "status", "method", "input", "kernel", "lr", "epochs", "final_loss", "relative_error",
                "identifiable")
"""What `klab list` shows, and what it can sort by."""

LIST_EXTRA = ("epochs_done", "sweep_id")
"""Also in each `klab list` row (the table shows epochs as done/total)."""

EXPORT_EXTRA: dict[str, Any] = {
    "device": Job.device,
    "worker_host": Job.worker_host,
    "torch_version": Job.torch_version,
    "train_seconds": Job.train_seconds,
    "created_at": Job.created_at,
    "started_at": Job.started_at,
    "finished_at": Job.finished_at,
    "true_kernel": Job.true_kernel,
    "learned_kernel": Job.learned_kernel,
    "learned_bias": Job.learned_bias,
    "lstsq_kernel": Job.lstsq_kernel,
    "explanation": Job.explanation,
    "error_message": Job.error_message,
    "spec": Job.spec,
}
"""An exported job's columns beyond the summary: where it ran, its kernels and its spec."""

EPOCH_COLUMNS = ("job_id", "epoch", "loss", "mse", "kernel_error")

SWEPT = ("lr", "epochs", "seed", "batch_size", "noise", "method", "kernel", "input")
"""The parameters a sweep may vary, in the order its plot shows them."""

STREAM_ROWS = 10_000
"""Rows fetched at a time when exporting (a server-side cursor on PostgreSQL)."""

_NOT_NULL = {"id", "status", "method", "input", "lr", "epochs"}


def _row(mapping: Any) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in mapping.items()}


def _order(name: str, descending: bool) -> list[ColumnElement]:
    col = SUMMARY[name]
    key = col.desc() if descending else col.asc()
    if name not in _NOT_NULL:  # a job that has not finished sorts after every finished one, either way
        key = key.nulls_last()
    return [key] if name == "id" else [key, Job.id.asc()]


def parse_sort(sort: str) -> tuple[str, bool]:
    """A --sort value ("relative_error", "-lr") as a column name and whether it is descending."""
    descending = sort.startswith("-")
    name = sort.lstrip("-+").strip().replace("-", "_")
    if name not in LIST_COLUMNS:
        raise BadInput("sort", f"unknown column {sort!r}; choose from {', '.join(LIST_COLUMNS)} "
                       "(prefix - for descending)")
    return name, descending


def list_jobs(session: Session, *, status: str | None = None, sweep: int | None = None,
              method: str | None = None, kernel: str | None = None, sort: str = "-id",
              limit: int | None = 50) -> list[dict[str, Any]]:
    """One row per job, filtered and sorted, from the jobs table alone."""
    name, descending = parse_sort(sort)
    stmt = select(*(SUMMARY[c].label(c) for c in LIST_COLUMNS + LIST_EXTRA))
    if status is not None:
        if status not in {s.value for s in JobStatus}:
            raise BadInput("status", f"unknown status {status!r}; choose from "
                           f"{', '.join(s.value for s in JobStatus)}")
        stmt = stmt.where(Job.status == status)
    if sweep is not None:
        store.get_sweep(session, sweep)
        stmt = stmt.where(Job.sweep_id == sweep)
    if method is not None:
        stmt = stmt.where(Job.method == method)
    if kernel is not None:
        stmt = stmt.where(Job.kernel == kernel)
    stmt = stmt.order_by(*_order(name, descending))
    if limit:
        stmt = stmt.limit(limit)
    return [_row(r) for r in session.execute(stmt).mappings()]


def selection(session: Session, ids: Sequence[int] | None, sweep: int | None,
              ids_field: str = "id") -> ColumnElement[bool]:
    """The jobs named by ids or by a sweep (exactly one of the two), checked to exist."""
    if ids and sweep is not None:
        raise BadInput("sweep", "give job ids or --sweep, not both")
    if not ids and sweep is None:
        raise BadInput(ids_field, "give job ids or --sweep")
    if sweep is not None:
        store.get_sweep(session, sweep)
        return Job.sweep_id == sweep
    wanted = sorted(set(ids or ()))
    found: set[int] = set()
    for i in range(0, len(wanted), 1000):
        found.update(session.execute(select(Job.id).where(Job.id.in_(wanted[i : i + 1000]))).scalars())
    missing = [i for i in wanted if i not in found]
    if missing:
        raise BadInput(ids_field, f"no job {', '.join(map(str, missing[:10]))}" + (" ..." if len(missing) > 10 else ""))
    return Job.id.in_(wanted)


def compare(session: Session, ids: Sequence[int] | None = None, sweep: int | None = None) -> list[dict[str, Any]]:
    """The jobs' summaries, best first by relative error (jobs without one last)."""
    where = selection(session, ids, sweep)
    stmt = (select(*(c.label(n) for n, c in SUMMARY.items())).where(where)
            .order_by(Job.err_relative.asc().nulls_last(), Job.id))
    return [_row(r) for r in session.execute(stmt).mappings()]


def varying(rows: Sequence[dict[str, Any]], names: Sequence[str] = SWEPT) -> list[str]:
    """The parameters that take more than one value across rows."""
    return [n for n in names if len({repr(r.get(n)) for r in rows}) > 1]


def export_jobs(session: Session, ids: Sequence[int] | None = None, sweep: int | None = None
                ) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and a stream of full job rows (summary, kernels, spec), by id."""
    columns = {**SUMMARY, **EXPORT_EXTRA}
    stmt = (select(*(c.label(n) for n, c in columns.items())).where(selection(session, ids, sweep, "ids"))
            .order_by(Job.id).execution_options(yield_per=STREAM_ROWS))
    return list(columns), (_row(r) for r in session.execute(stmt).mappings())


def export_epochs(session: Session, ids: Sequence[int] | None = None, sweep: int | None = None
                  ) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and a stream of epoch rows, by job and epoch, never all in memory at once."""
    jobs = select(Job.id).where(selection(session, ids, sweep, "ids"))
    stmt = (select(*(getattr(Epoch, c) for c in EPOCH_COLUMNS)).where(Epoch.job_id.in_(jobs))
            .order_by(Epoch.job_id, Epoch.epoch).execution_options(yield_per=STREAM_ROWS))
    return list(EPOCH_COLUMNS), (dict(r) for r in session.execute(stmt).mappings())


def delete_jobs(session: Session, ids: Sequence[int] | None = None, sweep: int | None = None
                ) -> tuple[int, int]:
    """Delete jobs with their epochs (and the sweep itself for a sweep); returns (jobs, epochs) deleted."""
    where = selection(session, ids, sweep)
    epochs = session.execute(delete(Epoch).where(Epoch.job_id.in_(select(Job.id).where(where)))).rowcount
    deleted = session.execute(delete(Job).where(where)).rowcount
    if sweep is not None:
        session.execute(delete(Sweep).where(Sweep.id == sweep))
    return deleted, epochs

