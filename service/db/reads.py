"""Every read of stored jobs, as plain SQL through a Reader (service.db.connect): lists, one job's result,
comparisons, progress and exports.

Columns come from the result schema (service.jobs.result). Listing and comparing read the jobs table's
own columns (latest loss, epochs done, metrics); only a job's result and the epochs export read the
epochs table.

SQL is formatted here from the schema's column names and from placeholders made here (:i0, :i1, ...)
only; every value a user gives is bound as a parameter. The statements that are formatted say so
(`noqa: S608`, ruff's check for SQL built from strings).
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from service.db import filters
from service.db.connect import HEAD, INTEGER_MOST, Reader, no_folder, open_reader, refuse_unmade, sqlite_transaction
from service.errors import BadInput, DatabaseUnavailable
from service.jobs import result
from service.jobs import status as statuses
from service.jobs.choices import Method, input_text
from service.jobs.selection import Selection
from service.settings import describe, settings, sqlite_path

LIST_COLUMNS = ("id", "status", "method", "input", "kernel", "lr", "epochs", "final_loss", "relative_error",
                "identifiable")
"""What `klab list` shows, and what it can sort by."""

LIST_EXTRA = ("epochs_done", "sweep_id")
"""Also in each `klab list` row (the table shows epochs as done/total)."""

UNFINISHED = "finished_at IS NULL"
"""service.db.schema.UNFINISHED as SQL text (reads stay free of SQLAlchemy): the predicate of ix_jobs_unfinished,
which holds exactly for the jobs whose status has not ended."""

ENDED_BADLY = "error_message IS NOT NULL OR diverged_epoch IS NOT NULL OR cancel_requested"
"""service.db.schema.ENDED_BADLY as SQL text: the predicate of ix_jobs_ended_badly, which holds for every failed,
diverged or cancelled job (and a few running ones asked to stop)."""

SWEPT = ("lr", "epochs", "seed", "batch_size", "noise", "method", "kernel", "input")
"""The parameters a sweep may vary, in the order its plot shows them."""

_DECODE = {f.name: f.kind for f in result.JOB if f.kind in ("json", "time", "bool")}


@contextmanager
def reading(url: str | None = None, make: bool = True) -> Iterator[Reader]:
    """A Reader on a database at head, in one transaction that only reads (one consistent snapshot).

    Straight through the driver where it can; a SQLite file still to create or upgrade, or a URL only
    SQLAlchemy understands, goes through service.db.engine first (which upgrades or refuses), then
    reads through that engine's driver connection, with the same SQL. `make=False` (the commands and functions
    that only read): a SQLite file that does not exist is refused, but for the default one, not made: a name
    mistyped, or a file moved away, became a new empty database that answered "no jobs".
    """
    url = url or settings().database_url
    if not make:
        refuse_unmade(url)
    with sqlite_transaction(url):  # no fork meanwhile (service.db.connect.ForkGuard)
        direct = open_reader(url)
        if direct is not None:
            try:
                if direct.revision(url) == HEAD:
                    yield direct
                    return
            finally:
                direct.end_streams()
                direct.conn.close()
        from service.db.engine import ready_engine

        engine = ready_engine(url)
        raw = engine.raw_connection()
        reader = Reader(raw.driver_connection, engine.dialect.name)
        try:
            if engine.dialect.name == "sqlite":
                raw.driver_connection.execute("BEGIN")
            yield reader
        finally:
            reader.end_streams()
            raw.rollback()
            raw.close()


def revision(url: str | None = None) -> str | None:
    """The schema revision a database is at (None: no schema), without changing anything."""
    url = url or settings().database_url
    opened = open_reader(url)
    if opened is None:
        if (path := sqlite_path(url)) is not None and not path.exists():  # a query or an escape too
            if not settings().is_default(url) and not path.parent.is_dir():  # not `revision none; run: klab db
                # upgrade`, which refuses it so
                raise no_folder(url, path.parent)
            if settings().is_default(url):  # KLAB_HOME made as every command makes it, or refused as they refuse it
                settings().folder()  # (a file in its way): not `revision none; run: klab db upgrade`, which fails
            return None  # a SQLite file not made yet: none, and none made by looking (klab db current)
        from service.db.engine import current_revision

        return current_revision(url)
    try:
        return opened.revision(url)
    finally:
        opened.conn.close()


def identity(url: str | None = None) -> str:
    """The identity of a database (migration 0005): its queues on the broker are named after it. Read once
    per database and process; a database at head always has one."""
    url = url or settings().database_url
    if url not in _identities:
        with reading(url) as reader:
            row = reader.one("SELECT identity FROM database_identity")
        if row is None:  # only if someone emptied the table by hand; klab never goes back a revision to remake it
            fix = f"INSERT INTO database_identity VALUES ('{uuid.uuid4().hex[:12]}', CURRENT_TIMESTAMP)"  # noqa: S608
            # a message to a user, never run here; a fresh identity as migration 0005 makes one
            raise DatabaseUnavailable(f"the {describe(url)} has no identity (its table database_identity is empty): "
                                      f"give it one, {fix}", 2)
        _identities[url] = row["identity"]
    return _identities[url]


_identities: dict[str, str] = {}


def iso_utc(value: datetime | str) -> str:
    """A stored time as ISO 8601 text in UTC (+00:00), whatever the database: SQLite gives back the UTC time it was
    given (service.db.schema.utcnow) without an offset, PostgreSQL the instant in its session's time zone."""
    t = datetime.fromisoformat(value) if isinstance(value, str) else value
    if t.tzinfo is None:
        return t.isoformat() + "+00:00"  # what the aware time's isoformat() gives, at a third of its cost
    return t.astimezone(UTC).isoformat()


def _decode(row: dict[str, Any], sqlite: bool) -> dict[str, Any]:
    """A row with the values SQLAlchemy's types would give, timestamps as ISO 8601 text in UTC."""
    for name, value in row.items():
        kind = _DECODE.get(name)
        if value is None or kind is None:
            continue
        if kind == "time":
            row[name] = iso_utc(value)
        elif sqlite and kind == "json":
            row[name] = json.loads(value)
        elif sqlite and kind == "bool":
            row[name] = bool(value)
    return row


def _fetch(reader: Reader, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    sqlite = reader.dialect == "sqlite"
    return [_decode(r, sqlite) for r in reader.rows(sql, params)]


BYTEWISE = ("input", "kernel")
"""Text columns of what users write (paths, literals), sorted by their bytes on either database (Reader.bytewise);
method and status hold klab's own words, which sort alike in every collation, so ix_jobs_method serves its sort."""


def _order(reader: Reader, name: str, descending: bool) -> str:
    f = result.BY_NAME[name]
    key = f"{reader.bytewise(f.col) if name in BYTEWISE else f.col} {'DESC' if descending else 'ASC'}"
    if f.nullable:  # a job that has not finished sorts after every finished one, either way
        key += " NULLS LAST"
    return key if name == "id" else f"{key}, id ASC"


def parse_sort(sort: str) -> tuple[str, bool]:
    """A --sort value ("relative_error", "-lr") as a column name and whether it is descending."""
    descending = sort.startswith("-")
    name = (sort[1:] if sort[:1] in ("-", "+") else sort).strip().replace("-", "_")  # one sign: --id, +-lr are none
    if name not in LIST_COLUMNS:
        raise BadInput("sort", f"unknown column {sort!r}; choose from {', '.join(LIST_COLUMNS)} "
                       "(prefix - for descending)")
    return name, descending


def sweep_name(reader: Reader, sweep_id: int) -> str | None:
    """A sweep's name (None if it has none); an unknown sweep is bad input."""
    row = abs(sweep_id) <= INTEGER_MOST and reader.one("SELECT name FROM sweeps WHERE id = :id", {"id": sweep_id})
    if not row:
        raise BadInput("sweep", f"no sweep {sweep_id}")
    return row["name"]


def ids_in(reader: Reader, ids: Sequence[int], column: str = "id") -> tuple[str, dict[str, Any]]:
    """`column` (of jobs: id, or sweep_id) is one of `ids`, as one parameter however many: an array on PostgreSQL
    (between the least and the greatest id too, for the column's index: service.db.writes.ids_in), on SQLite JSON."""
    ids = [int(i) for i in ids]
    if reader.dialect == "postgresql":
        return (f"{column} BETWEEN :least AND :greatest AND {column} = ANY(:ids)",
                {"ids": ids, "least": min(ids, default=0), "greatest": max(ids, default=0)})
    return f"{column} IN (SELECT value FROM json_each(:ids))", {"ids": json.dumps(ids)}  # noqa: S608


def where(reader: Reader, selection: Selection, field: str = "id") -> tuple[str, dict[str, Any]]:
    """A WHERE clause on jobs for the jobs a selection names, checked to exist (a sweep, or every id)."""
    if selection.sweep is not None:
        sweep_name(reader, selection.sweep)
        return "sweep_id = :sweep", {"sweep": selection.sweep}
    if selection.everything:
        return "1 = 1", {}
    clause, params = ids_in(reader, selection.ids)
    if reader.one(f"SELECT count(*) AS n FROM jobs WHERE {clause}", params)["n"] < len(selection.ids):  # noqa: S608
        found = {r["id"] for r in reader.rows(f"SELECT id FROM jobs WHERE {clause}", params)}  # noqa: S608
        missing = [i for i in selection.ids if i not in found]
        raise BadInput(field, f"no job {', '.join(map(str, missing[:10]))}" + (" ..." if len(missing) > 10 else ""))
    return clause, params


def tagged(reader: Reader, tag: str) -> str:
    """SQL that holds for a row of sweeps whose tags include the parameter :tag (tags: a JSON list)."""
    if reader.dialect == "postgresql":
        return "EXISTS (SELECT 1 FROM json_array_elements_text(sweeps.tags) AS t(value) WHERE t.value = :tag)"
    return "EXISTS (SELECT 1 FROM json_each(sweeps.tags) AS t WHERE t.value = :tag)"


def list_jobs(reader: Reader, *, status: str | None = None, sweep: int | None = None,
              method: str | None = None, kernel: str | None = None, tag: str | None = None, sort: str = "-id",
              limit: int | None = 50) -> list[dict[str, Any]]:
    """One row per job, filtered and sorted, from the jobs table (and, by tag, its sweep's row)."""
    name, descending = parse_sort(sort)
    conditions, params = [], {}
    if status is not None:
        wanted = statuses.parse(status)
        conditions.append("status = :status")
        params["status"] = wanted.value
        if not wanted.is_finished:  # read through ix_jobs_unfinished, not by walking every job ever run
            conditions.append(UNFINISHED)
        elif wanted in statuses.MARKS:  # through ix_jobs_ended_badly (the predicate as the index says it)
            conditions.append(f"({ENDED_BADLY})")
    if sweep is not None or tag is not None:
        kept = _sweeps_listed(reader, sweep, tag)
        if not kept:
            return []
        clause, named = ids_in(reader, kept, "sweep_id")
        conditions.append(clause)
        params.update(named)
    if method is not None:
        conditions.append("method = :method")
        params["method"] = method
    if kernel is not None:
        sql, named = filters.kernel_is(kernel)
        conditions.append(sql)
        params.update(named)

    def listed(more: list[str], order: str, n: int | None) -> list[dict[str, Any]]:
        where = conditions + more
        sql = f"SELECT {result.select_list(LIST_COLUMNS + LIST_EXTRA)} FROM jobs"  # noqa: S608
        sql += (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}"
        limited = n and n <= INTEGER_MOST  # a limit past any table's size is none
        return _fetch(reader, sql + " LIMIT :limit", {**params, "limit": n}) if limited else _fetch(reader, sql, params)

    f = result.BY_NAME[name]
    if descending and f.nullable and f.index and limit:
        # Descending with the jobs without a value last is no order the column's index (ascending, nulls last)
        # can be walked in, and PostgreSQL sorted every job (1.5 s on 1,000,000): the values first, the index
        # walked backwards, then the jobs without one.
        found = listed([f"{f.col} IS NOT NULL"], f"{f.col} DESC, id ASC", limit)
        return found + (listed([f"{f.col} IS NULL"], "id ASC", limit - len(found)) if len(found) < limit else [])
    return listed([], _order(reader, name, descending), limit)


def _sweeps_listed(reader: Reader, sweep: int | None, tag: str | None) -> list[int]:
    """The sweeps whose jobs `klab list --sweep/--tag` shows, found before their jobs are read, then read as a list
    (service.db.reads.ids_in) by ix_jobs_sweep_id. Asked in the jobs' statement, `sweep_id = :sweep` on a table not
    yet analysed and a tag's sweeps always had PostgreSQL walk every job newest first, looking for theirs: on
    1,000,000 jobs, 2.1 s for an old sweep, 2 to 3.5 s for a tag of an old sweep or of none."""
    if sweep is not None:
        sweep_name(reader, sweep)  # an unknown sweep is bad input
    if tag is None:
        return [sweep] if sweep is not None else []
    found = reader.rows(f"SELECT id FROM sweeps WHERE {tagged(reader, tag)}", {"tag": tag})  # noqa: S608
    return [r["id"] for r in found if sweep is None or r["id"] == sweep]


def compare(reader: Reader, selection: Selection, also: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The jobs' summaries, best first by relative error (jobs without one last), with the fields `also`."""
    clause, params = where(reader, selection)
    names = (*result.SUMMARY_NAMES, *also)
    return _fetch(reader, f"SELECT {result.select_list(names)} FROM jobs WHERE {clause} "  # noqa: S608
                          f"ORDER BY {_order(reader, 'relative_error', False)}", params)


SWEEP_POINT = ("id", "status", *SWEPT, "relative_error")
"""What a sweep's plot reads of each job."""


def sweep_points(reader: Reader, selection: Selection) -> list[dict[str, Any]]:
    """Each job's id, status, swept parameters and relative error, by id: a sweep's plot, lean for 200,000 jobs."""
    clause, params = where(reader, selection)
    rows = _fetch(reader, f"SELECT {result.select_list(SWEEP_POINT)} FROM jobs WHERE {clause}", params)  # noqa: S608
    return sorted(rows, key=itemgetter("id"))  # its dots drawn in one order on either database: one PNG


def progress(reader: Reader, selection: Selection) -> dict[str, Any]:
    """How far jobs or a sweep have come: jobs by status; epochs trained (epochs_done) of those that will have
    been once every job has ended (epochs_total: what finished jobs trained, what the others asked for),
    and of those asked for (epochs_asked)."""
    clause, params = where(reader, selection)
    rows = reader.rows("SELECT status, count(*) AS n, sum(epochs_done) AS done, "  # noqa: S608
                       f"sum(CASE WHEN method = :solved THEN 1 ELSE epochs END) AS total FROM jobs WHERE {clause} "
                       "GROUP BY status", {**params, "solved": Method.LSTSQ.value})  # one step, whatever its epochs
    by_status = {r["status"]: int(r["n"]) for r in rows}
    if not by_status:
        raise BadInput("sweep", f"sweep {selection.sweep} has no jobs") if selection.sweep is not None else \
            BadInput("id", "no such jobs")
    finished = {r["status"] for r in rows if statuses.JobStatus(r["status"]).is_finished}
    done = sum(int(r["done"] or 0) for r in rows)  # trained: a job cancelled before it started trained none
    total = sum(int((r["done"] if r["status"] in finished else r["total"]) or 0) for r in rows)
    return {"jobs": sum(by_status.values()), "by_status": by_status, "epochs_done": done,
            "epochs_total": total, "epochs_asked": sum(int(r["total"] or 0) for r in rows),
            "finished": sum(by_status[s] for s in finished)}


def varying(rows: Sequence[dict[str, Any]], names: Sequence[str] = SWEPT) -> list[str]:
    """The parameters that take more than one value across rows."""
    return [n for n in names if len({repr(r.get(n)) for r in rows}) > 1]


def export_jobs(reader: Reader, selection: Selection) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and a stream of full job rows (summary, kernels, spec), by id."""
    clause, params = where(reader, selection, "ids")
    sqlite = reader.dialect == "sqlite"
    rows = reader.stream(f"SELECT {result.select_list(result.EXPORT_NAMES)} FROM jobs WHERE {clause} ORDER BY id",  # noqa: S608
                         params)
    return list(result.EXPORT_NAMES), (_decode(r, sqlite) for r in rows)


def _where_any(reader: Reader, selection: Selection | None) -> tuple[str, dict[str, Any]]:
    """where() for a selection, or for none: no job (an empty list of ids given from Python, klab.tables)."""
    return where(reader, selection, "ids") if selection is not None else ("1 = 0", {})


def export_epochs(reader: Reader, selection: Selection | None) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """Column names and a stream of epoch rows, by job and epoch, never all in memory at once (None: no job)."""
    clause, params = _where_any(reader, selection)
    names = ", ".join(result.EPOCH_NAMES)
    sql = (f"SELECT {names} FROM epochs WHERE job_id IN (SELECT id FROM jobs WHERE {clause}) "  # noqa: S608
           "ORDER BY job_id, epoch")
    return list(result.EPOCH_NAMES), reader.stream(sql, params)


def epochs_of(reader: Reader, job_id: int) -> list[dict[str, Any]]:
    """One job's epochs, in order."""
    return reader.rows("SELECT epoch, loss, mse, kernel_error FROM epochs WHERE job_id = :id ORDER BY epoch",
                       {"id": job_id})


def result_of(reader: Reader, job_id: int) -> dict[str, Any]:
    """A stored job as `klab show --json` prints it (service.jobs.result.to_json), epochs included."""
    found = _fetch(reader, f"SELECT {result.select_list(result.RESULT_NAMES)} FROM jobs WHERE id = :id",  # noqa: S608
                   {"id": job_id}) if abs(job_id) <= INTEGER_MOST else []
    if not found:
        raise BadInput("id", f"no job {job_id}")
    return result.to_json(found[0], epochs_of(reader, job_id))


def results(reader: Reader, selection: Selection) -> list[dict[str, Any]]:
    """The results of the jobs a selection names, by id: one query for the jobs, one for all their epochs."""
    clause, params = where(reader, selection)
    rows = _fetch(reader, f"SELECT {result.select_list(result.RESULT_NAMES)} FROM jobs WHERE {clause} "  # noqa: S608
                          "ORDER BY id", params)
    epochs: dict[int, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
    for e in reader.stream(f"SELECT job_id, epoch, loss, mse, kernel_error FROM epochs "  # noqa: S608
                           f"WHERE job_id IN (SELECT id FROM jobs WHERE {clause}) ORDER BY job_id, epoch", params):
        epochs[e.pop("job_id")].append(e)
    return [result.to_json(r, epochs[r["id"]]) for r in rows]


def summaries(reader: Reader, selection: Selection | None, equal: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """The job_summary rows of the jobs a selection names (None: no job), by id, where each summary column named
    in `equal` equals its value (None: is null); a status, a method or a kernel is read as `klab list` reads it."""
    clause, params = _where_any(reader, selection)
    conditions = [clause]
    for n, (name, value) in enumerate((equal or {}).items()):
        if name not in result.SUMMARY_NAMES:
            raise BadInput(name, f"unknown filter; choose from {', '.join(result.SUMMARY_NAMES)}")
        col = result.BY_NAME[name].col
        if name == "kernel" and value is not None:  # as `klab list --kernel`: a literal whatever its spaces
            sql, named = filters.kernel_is(filters.known(None, value)[1])
            conditions.append(sql)
            params.update(named)
            continue
        if value is None:
            conditions.append(f"{col} IS NULL")
            continue
        if name == "method":
            filters.known(value, None)  # an unknown one is refused, as by `klab list --method`
        if name == "input" and isinstance(value, str):  # as a job keeps it: `edge:06x8` found no job of edge:6x8
            value = input_text(value.strip())
        conditions.append(f"{col} = :f{n}")
        params[f"f{n}"] = statuses.parse(value).value if name == "status" else value
    return _fetch(reader, f"SELECT {result.select_list(result.SUMMARY_NAMES)} FROM jobs "  # noqa: S608
                          f"WHERE {' AND '.join(conditions)} ORDER BY id", params)
