"""Reading stored jobs for the CLI: lists, one job's result, comparisons, exports (and deletes), as plain SQL.

Everything takes a service.reader.Reader, so the read commands never import SQLAlchemy. Listing
and comparing read the jobs table's own columns (latest loss, epochs done, metrics); only a job's
result and the epochs export read the epochs table.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from service.errors import BadInput
from service.reader import Reader

STATUSES = ("created", "queued", "running", "succeeded", "diverged", "failed", "cancelled")
"""A job's possible statuses (service.models.JobStatus; a test keeps the two equal)."""

FINISHED = frozenset({"succeeded", "diverged", "failed", "cancelled"})
"""The statuses a job ends in (service.models.FINISHED)."""

SUMMARY: dict[str, str] = {
    "id": "id",
    "sweep_id": "sweep_id",
    "status": "status",
    "method": "method",
    "input": "input",
    "kernel": "kernel",
    "lr": "lr",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "seed": "seed",
    "noise": "noise",
    "epochs_done": "epochs_done",
    "final_loss": "final_loss",
    "final_mse": "final_mse",
    "relative_error": "err_relative",
    "frobenius_error": "err_frobenius",
    "max_abs_error": "err_max_abs",
    "cosine": "err_cosine",
    "identifiable": "identifiable",
    "rank": "rank",
    "params": "params",
    "converged_epoch": "converged_epoch",
    "diverged_epoch": "diverged_epoch",
    "gap_optimization": "gap_optimization",
    "gap_noise": "gap_noise",
    "gap_identifiability": "gap_identifiability",
}
"""A job's parameters and metrics: the names the job_summary view gives them -> jobs columns."""

LIST_COLUMNS = ("id", "status", "method", "input", "kernel", "lr", "epochs", "final_loss", "relative_error",
                "identifiable")
"""What `klab list` shows, and what it can sort by."""

LIST_EXTRA = ("epochs_done", "sweep_id")
"""Also in each `klab list` row (the table shows epochs as done/total)."""

EXPORT_EXTRA = ("device", "worker_host", "torch_version", "train_seconds", "created_at", "started_at",
                "finished_at", "true_kernel", "learned_kernel", "learned_bias", "lstsq_kernel", "explanation",
                "error_message", "spec")
"""An exported job's columns beyond the summary: where it ran, its kernels and its spec."""

RESULT_COLUMNS = ("id", "status", "method", "device", "seed", "torch_version", "train_seconds", "true_kernel",
                  "initial_kernel", "learned_kernel", "learned_bias", "err_frobenius", "err_relative",
                  "err_max_abs", "err_cosine", "converged_epoch", "diverged_epoch", "rank", "params",
                  "identifiable", "lstsq_kernel", "gap_optimization", "gap_noise", "gap_identifiability",
                  "explanation", "created_at", "started_at", "finished_at", "sweep_id", "queue", "worker_host",
                  "epochs_done", "error_message", "spec")
"""The jobs columns a stored result is made of."""

EPOCH_COLUMNS = ("job_id", "epoch", "loss", "mse", "kernel_error")

SWEPT = ("lr", "epochs", "seed", "batch_size", "noise", "method", "kernel", "input")
"""The parameters a sweep may vary, in the order its plot shows them."""

JSON_COLUMNS = frozenset({"spec", "true_kernel", "initial_kernel", "learned_kernel", "learned_bias", "lstsq_kernel"})
TIME_COLUMNS = frozenset({"created_at", "started_at", "finished_at"})
BOOL_COLUMNS = frozenset({"identifiable"})

IN_CHUNK = 1000
"""Ids per IN (...) list."""

_NOT_NULL = {"id", "status", "method", "input", "lr", "epochs"}


def _decode(row: dict[str, Any], sqlite: bool) -> dict[str, Any]:
    """A row with the values SQLAlchemy's types would give, timestamps as ISO 8601 text."""
    for name, value in row.items():
        if value is None:
            continue
        if name in TIME_COLUMNS:
            row[name] = (datetime.fromisoformat(value) if isinstance(value, str) else value).isoformat()
        elif sqlite and name in JSON_COLUMNS:
            row[name] = json.loads(value)
        elif sqlite and name in BOOL_COLUMNS:
            row[name] = bool(value)
    return row


def _fetch(reader: Reader, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    sqlite = reader.dialect == "sqlite"
    return [_decode(r, sqlite) for r in reader.rows(sql, params)]


def _columns(names: Sequence[str]) -> str:
    """SELECT's column list: jobs columns under their summary names."""
    return ", ".join(name if SUMMARY.get(name, name) == name else f"{SUMMARY[name]} AS {name}" for name in names)


def _order(name: str, descending: bool) -> str:
    key = f"{SUMMARY[name]} {'DESC' if descending else 'ASC'}"
    if name not in _NOT_NULL:  # a job that has not finished sorts after every finished one, either way
        key += " NULLS LAST"
    return key if name == "id" else f"{key}, id ASC"


def parse_sort(sort: str) -> tuple[str, bool]:
    """A --sort value ("relative_error", "-lr") as a column name and whether it is descending."""
    descending = sort.startswith("-")
    name = sort.lstrip("-+").strip().replace("-", "_")
    if name not in LIST_COLUMNS:
        raise BadInput("sort", f"unknown column {sort!r}; choose from {', '.join(LIST_COLUMNS)} "
                       "(prefix - for descending)")
    return name, descending


def sweep_name(reader: Reader, sweep_id: int) -> str | None:
    """A sweep's name (None if it has none); an unknown sweep is bad input."""
    row = reader.one("SELECT name FROM sweeps WHERE id = :id", {"id": sweep_id})
    if row is None:
        raise BadInput("sweep", f"no sweep {sweep_id}")
    return row["name"]


def missing_ids(wanted: Sequence[int], found: set[int], field: str = "id") -> None:
    """Bad input naming the wanted ids that were not found, if any."""
    missing = [i for i in wanted if i not in found]
    if missing:
        raise BadInput(field, f"no job {', '.join(map(str, missing[:10]))}" + (" ..." if len(missing) > 10 else ""))


def _in(ids: Sequence[int], start: int = 0) -> tuple[str, dict[str, int]]:
    params = {f"i{start + k}": v for k, v in enumerate(ids)}
    return "(" + ", ".join(f":{p}" for p in params) + ")", params


def selection(reader: Reader, ids: Sequence[int] | None, sweep: int | None,
              ids_field: str = "id") -> tuple[str, dict[str, Any]]:
    """A WHERE clause on jobs for the jobs named by ids or by a sweep (exactly one), checked to exist."""
    if ids and sweep is not None:
        raise BadInput("sweep", "give job ids or --sweep, not both")
    if not ids and sweep is None:
        raise BadInput(ids_field, "give job ids or --sweep")
    if sweep is not None:
        sweep_name(reader, sweep)
        return "sweep_id = :sweep", {"sweep": sweep}
    wanted = sorted(set(ids or ()))
    found: set[int] = set()
    for i in range(0, len(wanted), IN_CHUNK):
        clause, params = _in(wanted[i : i + IN_CHUNK])
        found.update(r["id"] for r in reader.rows(f"SELECT id FROM jobs WHERE id IN {clause}", params))
    missing_ids(wanted, found, ids_field)
    clause, params = _in(wanted)
    return f"id IN {clause}", params


def list_jobs(reader: Reader, *, status: str | None = None, sweep: int | None = None,
              method: str | None = None, kernel: str | None = None, sort: str = "-id",
              limit: int | None = 50) -> list[dict[str, Any]]:
    """One row per job, filtered and sorted, from the jobs table alone."""
    name, descending = parse_sort(sort)
    where, params = [], {}
    if status is not None:
        if status not in STATUSES:
            raise BadInput("status", f"unknown status {status!r}; choose from {', '.join(STATUSES)}")
        where.append("status = :status")
        params["status"] = status
    if sweep is not None:
        sweep_name(reader, sweep)
        where.append("sweep_id = :sweep")
        params["sweep"] = sweep
    if method is not None:
        where.append("method = :method")
        params["method"] = method
    if kernel is not None:
        where.append("kernel = :kernel")
        params["kernel"] = kernel
    sql = f"SELECT {_columns(LIST_COLUMNS + LIST_EXTRA)} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {_order(name, descending)}"
    if limit:
        sql += " LIMIT :limit"
        params["limit"] = limit
    return _fetch(reader, sql, params)


def compare(reader: Reader, ids: Sequence[int] | None = None, sweep: int | None = None) -> list[dict[str, Any]]:
    """The jobs' summaries, best first by relative error (jobs without one last)."""
    where, params = selection(reader, ids, sweep)
    return _fetch(reader, f"SELECT {_columns(list(SUMMARY))} FROM jobs WHERE {where} "
                          "ORDER BY err_relative ASC NULLS LAST, id ASC", params)


def progress(reader: Reader, ids: Sequence[int] | None = None, sweep: int | None = None) -> dict[str, Any]:
    """How far jobs or a sweep have come: jobs by status, and epochs done of all to train."""
    if sweep is not None and ids:
        raise BadInput("id", "give job ids or --sweep, not both")
    if sweep is not None:
        where, params = "sweep_id = :sweep", {"sweep": sweep}
    elif not ids:
        raise BadInput("id", "give job ids or --sweep S")
    else:
        clause, params = _in(sorted(set(ids)))
        where = f"id IN {clause}"
    rows = reader.rows("SELECT status, count(*) AS n, sum(epochs_done) AS done, sum(epochs) AS total "
                       f"FROM jobs WHERE {where} GROUP BY status", params)
    by_status = {r["status"]: int(r["n"]) for r in rows}
    if not by_status:
        raise BadInput("sweep" if sweep is not None else "id", "no such jobs")
    total = sum(int(r["total"] or 0) for r in rows)
    done = sum(int((r["total"] if r["status"] in FINISHED else r["done"]) or 0) for r in rows)
    return {"jobs": sum(by_status.values()), "by_status": by_status, "epochs_done": done, "epochs_total": total,
            "finished": sum(n for s, n in by_status.items() if s in FINISHED)}


def varying(rows: Sequence[dict[str, Any]], names: Sequence[str] = SWEPT) -> list[str]:
    """The parameters that take more than one value across rows."""
    return [n for n in names if len({repr(r.get(n)) for r in rows}) > 1]


def export_jobs(reader: Reader, ids: Sequence[int] | None = None, sweep: int | None = None
                ) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and a stream of full job rows (summary, kernels, spec), by id."""
    columns = [*SUMMARY, *EXPORT_EXTRA]
    where, params = selection(reader, ids, sweep, "ids")
    sqlite = reader.dialect == "sqlite"
    rows = reader.stream(f"SELECT {_columns(columns)} FROM jobs WHERE {where} ORDER BY id", params)
    return columns, (_decode(r, sqlite) for r in rows)


def export_epochs(reader: Reader, ids: Sequence[int] | None = None, sweep: int | None = None
                  ) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and a stream of epoch rows, by job and epoch, never all in memory at once."""
    where, params = selection(reader, ids, sweep, "ids")
    sql = (f"SELECT {', '.join(EPOCH_COLUMNS)} FROM epochs WHERE job_id IN (SELECT id FROM jobs WHERE {where}) "
           "ORDER BY job_id, epoch")
    return list(EPOCH_COLUMNS), reader.stream(sql, params)


def epochs_of(reader: Reader, job_id: int) -> list[dict[str, Any]]:
    """One job's epochs, in order."""
    return reader.rows("SELECT epoch, loss, mse, kernel_error FROM epochs WHERE job_id = :id ORDER BY epoch",
                       {"id": job_id})


def result_of(reader: Reader, job_id: int, with_epochs: bool = True) -> dict[str, Any]:
    """The stored result: the engine's object plus id, status, timestamps, spec and where it ran."""
    found = _fetch(reader, f"SELECT {', '.join(RESULT_COLUMNS)} FROM jobs WHERE id = :id", {"id": job_id})
    if not found:
        raise BadInput("id", f"no job {job_id}")
    job = found[0]
    error = None
    if job["err_frobenius"] is not None or job["err_relative"] is not None:
        error = {"frobenius": job["err_frobenius"], "relative": job["err_relative"], "max_abs": job["err_max_abs"],
                 "cosine": job["err_cosine"]}
    ident = None if job["rank"] is None else {"rank": job["rank"], "params": job["params"],
                                              "identifiable": job["identifiable"]}
    gap = None if job["gap_optimization"] is None else {
        "optimization": job["gap_optimization"], "noise": job["gap_noise"],
        "identifiability": job["gap_identifiability"]}
    return {
        **{k: job[k] for k in ("id", "status", "method", "device", "seed", "torch_version", "train_seconds")},
        "epochs": epochs_of(reader, job_id) if with_epochs else None,
        **{k: job[k] for k in ("true_kernel", "initial_kernel", "learned_kernel", "learned_bias")},
        "error": error,
        "converged_epoch": job["converged_epoch"],
        "diverged_epoch": job["diverged_epoch"],
        "identifiability": ident,
        "lstsq_kernel": job["lstsq_kernel"],
        "gap": gap,
        **{k: job[k] for k in ("explanation", "created_at", "started_at", "finished_at", "sweep_id", "queue",
                               "worker_host", "epochs_done", "error_message", "spec")},
    }


def delete_jobs(reader: Reader, ids: Sequence[int] | None = None, sweep: int | None = None) -> tuple[int, int]:
    """Delete jobs with their epochs (and the sweep itself for a sweep), in the caller's write transaction.

    Returns (jobs, epochs) deleted.
    """
    where, params = selection(reader, ids, sweep)
    epochs = reader.execute(f"DELETE FROM epochs WHERE job_id IN (SELECT id FROM jobs WHERE {where})", params)
    jobs = reader.execute(f"DELETE FROM jobs WHERE {where}", params)
    if sweep is not None:
        reader.execute("DELETE FROM sweeps WHERE id = :sweep", {"sweep": sweep})
    return jobs, epochs
