"""The bulk paths of service.db.writes: many rows moved through the driver at once, column by column
(binary COPY on PostgreSQL: numbers packed, never printed and parsed; executemany on SQLite), inside the
caller's SQLAlchemy transaction.

Column names here come from the result schema and the tables, never from a user; every value is bound
or copied as data.
"""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Connection, DateTime, Float, Integer, String

from service.db.schema import jobs, metadata

EPOCH_ROWS_CHUNK = 50_000
"""Epoch rows made at once: an executemany on SQLite, a part of the COPY on PostgreSQL. Every row at once took about
370 bytes a row on SQLite (a tuple of Python numbers each), 3 times what the batch's jobs were counted to take
(100 jobs of 30,000 epochs: 1.3 GB at its peak)."""


def postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def update_jobs(conn: Connection, ids: Sequence[int], values: dict[str, Any], where: str = "",
                params: dict[str, Any] | None = None, match: dict[str, list[Any]] | None = None,
                bump: Sequence[str] = ()) -> list[int]:
    """Set jobs columns by id: `values[column]` a list (one value a job) or one value for all, and each column in
    `bump` to what it holds plus one. `where` (SQL on `jobs`, with :name `params`) restricts which jobs change, and
    so does `match`: a job changes only if its `match[column]` (a list, one value a job) is what it holds. Returns
    the ids it changed."""
    if not ids:
        return []
    bumps = [f"{c} = jobs.{c} + 1" for c in bump]
    if postgresql(conn):
        return _update_postgresql(conn, ids, values, where, params or {}, match or {}, bumps)
    return _update_sqlite(conn, ids, values, where, params or {}, match or {}, bumps)


STAGING = "_klab_job_values"
"""A temporary table per connection (emptied at each commit) that bulk updates copy their rows into."""


def _update_postgresql(conn: Connection, ids: Sequence[int], values: dict[str, Any], where: str,
                       params: dict[str, Any], match: dict[str, list[Any]], bumps: list[str]) -> list[int]:
    lists = [c for c, v in values.items() if isinstance(v, list)]
    scalars = {c: v for c, v in values.items() if c not in lists}
    raw = conn.connection.driver_connection
    if not lists and not match:  # every job takes the same values
        sets = ", ".join([f"{c} = %(s_{c})s" for c in scalars] + bumps)
        with raw.cursor() as cur:
            cur.execute(f"UPDATE jobs SET {sets} WHERE id = ANY(%(ids)s) {_pg(where)} RETURNING id",  # noqa: S608
                        {**{f"s_{c}": v for c, v in scalars.items()}, "ids": list(ids), **params})
            return [r[0] for r in cur.fetchall()]
    with raw.cursor() as cur:
        # Made where this transaction cannot find it, in one round trip: a connection's own note that it made
        # the table outlived the rollback of the transaction that made it, and failed every store after it.
        # Looked up by id from the jobs, whatever the statistics of jobs say: planned from statistics that
        # priced the running jobs at one row, the UPDATE read the whole table once per job without the index.
        cur.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ON COMMIT DELETE ROWS "  # noqa: S608
                    "AS SELECT * FROM jobs WITH NO DATA; "
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {STAGING}_id ON {STAGING} (id)")
        copied = {**{c: values[c] for c in lists}, **match}
        with cur.copy(f"COPY {STAGING} (id, {', '.join(copied)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", *(_binary_type(c) for c in copied)])
            columns = [_json_texts(v) if _binary_type(c) == "text" else v for c, v in copied.items()]
            for row in zip(ids, *columns):
                copy.write_row(row)
        sets = [f"{c} = v.{c}" for c in lists] + [f"{c} = %(s_{c})s" for c in scalars] + bumps
        matched = "".join(f" AND jobs.{c} = v.{c}" for c in match)
        cur.execute(f"UPDATE jobs SET {', '.join(sets)} FROM {STAGING} v "  # noqa: S608
                    f"WHERE jobs.id = v.id{matched} {_pg(where)} RETURNING jobs.id",
                    {**{f"s_{c}": v for c, v in scalars.items()}, **params})
        changed = [r[0] for r in cur.fetchall()]
        cur.execute(f"TRUNCATE {STAGING}")  # empty for the next update in this transaction
        return changed


def _binary_type(column: str, table: str = "jobs") -> str:
    """The type a column's values take in a binary COPY (JSON as its text, which json's receive reads)."""
    kind = metadata.tables[table].c[column].type
    for types, name in ((BigInteger, "int8"), (Integer, "int4"), (Float, "float8"), (Boolean, "bool"),
                        (DateTime, "timestamptz"), ((String, JSON), "text")):
        if isinstance(kind, types):
            return name
    raise TypeError(f"no binary COPY type for {table}.{column} ({kind})")


def _json_texts(values: list[Any]) -> list[Any]:
    """Values as a text or JSON column takes them: text as it is, lists and dicts as JSON, the rest as str."""
    return [v if v is None or isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
            for v in values]


def _update_sqlite(conn: Connection, ids: Sequence[int], values: dict[str, Any], where: str,
                   params: dict[str, Any], match: dict[str, list[Any]], bumps: list[str]) -> list[int]:
    raw = conn.connection.driver_connection
    if where or match:
        held: dict[int, tuple] = {}  # the jobs that `where` names, with their `match` columns
        for i in range(0, len(ids), 5000):
            part = list(ids[i : i + 5000])
            marks = ", ".join("?" * len(part))
            found = raw.execute(f"SELECT {', '.join(['id', *match])} FROM jobs "  # noqa: S608
                                f"WHERE id IN ({marks}) AND {_qmark(where) or 1}", [*part, *_ordered(where, params)])
            held.update((r[0], tuple(r[1:])) for r in found)
        keep = [k for k, i in enumerate(ids) if held.get(i) == tuple(match[c][k] for c in match)]
    else:
        keep = list(range(len(ids)))
    if not keep:
        return []
    columns = list(values)
    lists = [values[c] if isinstance(values[c], list) else [values[c]] * len(ids) for c in columns]
    rows = [tuple(_sqlite_value(conn, c, col[k]) for c, col in zip(columns, lists)) + (ids[k],) for k in keep]
    sets = ", ".join([f"{c} = ?" for c in columns] + bumps)
    raw.executemany(f"UPDATE jobs SET {sets} WHERE id = ?", rows)  # noqa: S608
    return [ids[k] for k in keep]


def insert_rows(conn: Connection, table: str, columns: dict[str, Any], n: int) -> None:
    """Insert n rows given column by column (a list: a value a row; anything else: every row's; JSON columns
    as text or as what json.dumps takes): binary COPY on PostgreSQL, executemany on SQLite."""
    names = list(columns)
    if postgresql(conn):
        kinds = [_binary_type(c, table) for c in names]
        values = []
        for c, kind in zip(names, kinds):
            v = columns[c]
            if kind == "text":  # JSON columns' lists and dicts encoded; text columns are given text
                v = _json_texts(v) if isinstance(v, list) else _json_texts([v])[0]
            values.append(v if isinstance(v, list) else itertools.repeat(v, n))
        with conn.connection.driver_connection.cursor() as cur, \
                cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(kinds)
            for row in zip(*values):
                copy.write_row(row)
        return
    lists = [[_sqlite_value(conn, c, v) for v in columns[c]] if isinstance(columns[c], list)
             else [_sqlite_value(conn, c, columns[c])] * n for c in names]
    marks = ", ".join("?" * len(names))
    conn.connection.driver_connection.executemany(
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", list(zip(*lists)))  # noqa: S608


def insert_epochs(conn: Connection, job_ids: Any, done: Any, loss: Any, mse: Any, kernel_error: Any | None,
                  first: int = 1) -> int:
    """Every job's epochs first..first+done[j]-1 from epochs x jobs arrays (row 0 the first; non-finite
    values stored as NULL): one binary COPY on PostgreSQL, executemany on SQLite, EPOCH_ROWS_CHUNK rows made at a
    time. Returns how many rows."""
    import numpy as np

    job_ids, done = np.asarray(job_ids), np.asarray(done, dtype=np.int64)
    ends = np.cumsum(done)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return 0

    def chunks() -> Iterator[tuple[Any, Any, list[Any]]]:
        """Job ids, epochs and values of EPOCH_ROWS_CHUNK rows at a time, in order."""
        for start in range(0, total, EPOCH_ROWS_CHUNK):
            row = np.arange(start, min(start + EPOCH_ROWS_CHUNK, total))
            col = np.searchsorted(ends, row, side="right")  # the row's job
            epoch = row - (ends - done)[col]  # 0-based within it
            yield job_ids[col], epoch + first, [None if v is None else v[epoch, col]
                                                for v in (loss, mse, kernel_error)]

    raw = conn.connection.driver_connection
    if postgresql(conn):
        with raw.cursor() as cur, \
                cur.copy("COPY epochs (job_id, epoch, loss, mse, kernel_error) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_SIGNATURE)
            for ids, epochs, values in chunks():
                copy.write(_epochs_binary(ids, epochs, values))
            copy.write(_TRAILER)
        return total
    for ids, epochs, values in chunks():
        floats = [[None] * len(ids) if v is None else _nullable(v) for v in values]
        raw.executemany("INSERT INTO epochs (job_id, epoch, loss, mse, kernel_error) VALUES (?, ?, ?, ?, ?)",
                        zip(ids.tolist(), epochs.tolist(), *floats))
    return total


_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + b"\0\0\0\0" + b"\0\0\0\0"
_TRAILER = b"\xff\xff"


def _epochs_binary(job_ids: Any, epochs: Any, values: list[Any]) -> bytes:
    """Epoch rows in PostgreSQL's binary COPY format (between its _SIGNATURE and _TRAILER), built with numpy: one
    fixed-size layout per pattern of missing values (a NULL field has length -1 and no bytes), each pattern's rows at
    once."""
    import numpy as np

    n = len(job_ids)
    present = np.stack([np.zeros(n, dtype=bool) if v is None else np.isfinite(v) for v in values], axis=1)
    pattern = present @ np.array([1, 2, 4])
    parts = []
    for p in np.unique(pattern):
        rows = np.nonzero(pattern == p)[0]
        fields = [("count", ">i2"), ("job_len", ">i4"), ("job", ">i4"), ("epoch_len", ">i4"), ("epoch", ">i4")]
        for k in range(3):
            fields.append((f"len{k}", ">i4"))
            if p >> k & 1:
                fields.append((f"v{k}", ">f8"))
        out = np.empty(len(rows), dtype=fields)
        out["count"], out["job_len"], out["job"], out["epoch_len"], out["epoch"] = 5, 4, job_ids[rows], 4, epochs[rows]
        for k in range(3):
            out[f"len{k}"] = 8 if p >> k & 1 else -1
            if p >> k & 1:
                out[f"v{k}"] = values[k][rows]
        parts.append(out.tobytes())
    return b"".join(parts)


def _nullable(v: Any) -> list[float | None]:
    import numpy as np

    out = v.tolist()
    finite = np.isfinite(v)
    return out if finite.all() else [x if ok else None for x, ok in zip(out, finite.tolist())]


def _sqlite_value(conn: Connection, column: str, value: Any) -> Any:
    """A value as SQLAlchemy would store it on SQLite (datetimes as its text, lists and dicts as JSON text)."""
    if isinstance(value, datetime):
        return jobs.c[column].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def _pg(where: str) -> str:
    return "AND " + _PARAM.sub(r"%(\1)s", where) if where else ""


def _qmark(where: str) -> str:
    return _PARAM.sub("?", where)


def _ordered(where: str, params: dict[str, Any]) -> list[Any]:
    return [params[m] for m in _PARAM.findall(where)]
