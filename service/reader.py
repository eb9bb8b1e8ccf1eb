"""Reading the database without SQLAlchemy: the connection under `klab list`, `show`, `compare`, `export`,
`plot` and `db current`.

Those commands only read, and importing SQLAlchemy takes longer than their work on a database of
a hundred thousand jobs (0.3 to 0.6 s of CPU against a few milliseconds). So they connect through the
driver itself, the standard library's sqlite3 or psycopg, check that the schema is at head, and
run plain SQL (service.query). Whatever that fast path does not handle goes through service.db as
every other command does and reads through that engine's driver connection, with the same SQL:
a SQLite database not yet at head (it upgrades itself there), a schema that is missing or behind
(refused there, with what to run), and any URL other than a plain SQLite file or PostgreSQL.
"""
from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.errors import DatabaseUnavailable
from service.settings import describe, reason, settings

HEAD = "0002"
"""The newest migration in migrations/versions (a test keeps this in step with Alembic's head)."""

SQLITE_BUSY_MS = 30_000
"""How long SQLite waits for another process's lock before giving up."""

CONNECT_TIMEOUT_S = 5
"""How long to wait for PostgreSQL to answer a connection."""

STREAM_ROWS = 10_000
"""Rows fetched at a time by Reader.stream (a server-side cursor on PostgreSQL)."""

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class Reader:
    """A driver connection inside one transaction, answering SQL written with :name parameters.

    Rows come back as dicts of the driver's own values; service.query decodes the few that differ
    between the backends (JSON and timestamps are text in SQLite, booleans are 0 and 1).
    """

    def __init__(self, conn: Any, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect

    @classmethod
    def of_session(cls, session: Any) -> "Reader":
        """Read inside a SQLAlchemy session's transaction (what `klab run` and `submit --wait` print)."""
        return cls(session.connection().connection.driver_connection, session.get_bind().dialect.name)

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else _NAMED.sub(r"%(\1)s", sql)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql(sql), params or {})
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            cur.close()

    def one(self, sql: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """A statement that changes rows, in the caller's transaction; how many rows it changed."""
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql(sql), params or {})
            return cur.rowcount
        finally:
            cur.close()

    def stream(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Rows one at a time, STREAM_ROWS fetched at once: never the whole result in memory."""
        if self.dialect == "sqlite":
            cur = self.conn.cursor()  # sqlite3 steps through the result as it is read
        else:
            cur = self.conn.cursor(name="klab_stream")  # a server-side cursor
            cur.itersize = STREAM_ROWS
        try:
            cur.execute(self._sql(sql), params or {})
            names = [d[0] for d in cur.description]
            while batch := cur.fetchmany(STREAM_ROWS):
                for row in batch:
                    yield dict(zip(names, row))
        finally:
            cur.close()


@contextmanager
def reading(url: str | None = None) -> Iterator[Reader]:
    """A Reader on a database at head, in one transaction that only reads (one consistent snapshot)."""
    url = url or settings().database_url
    direct = _direct(url)
    if direct is not None:
        try:
            yield direct
        finally:
            direct.conn.close()
        return
    from service.db import ready_engine  # noqa: PLC0415 - the slow path: upgrades, refusals, other URLs

    engine = ready_engine(url)
    raw = engine.raw_connection()
    try:
        dialect = engine.dialect.name
        if dialect == "sqlite":
            raw.driver_connection.execute("BEGIN")  # service.db's SQLite connections do not begin by themselves
        yield Reader(raw.driver_connection, dialect)
    finally:
        raw.rollback()
        raw.close()


def revision(url: str | None = None) -> str | None:
    """The schema revision a database is at (None: no schema), without changing anything."""
    url = url or settings().database_url
    opened = _connect(url)
    if opened is None:
        from service.db import current_revision, engine_for, reachable  # noqa: PLC0415

        with reachable(url):
            return current_revision(engine_for(url))
    try:
        return _revision(opened, url)
    finally:
        opened.conn.close()


def _direct(url: str) -> Reader | None:
    """A Reader straight through the driver, or None where service.db must take over."""
    opened = _connect(url)
    if opened is None:
        return None
    try:
        at_head = _revision(opened, url) == HEAD
    except BaseException:
        opened.conn.close()
        raise
    if not at_head:
        opened.conn.close()
        return None
    return opened


def _connect(url: str) -> Reader | None:
    """A driver connection, begun read-only, for a plain SQLite file or PostgreSQL URL; None otherwise."""
    scheme, _, rest = url.partition("://")
    if scheme in ("sqlite", "sqlite+pysqlite"):
        path = rest.partition("/")[2]
        if not path or path == ":memory:" or any(c in path for c in "?%") or not Path(path).is_file():
            return None  # no file yet (service.db creates it), or a URL only SQLAlchemy reads
        try:
            conn = sqlite3.connect(path, timeout=SQLITE_BUSY_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            conn.execute("BEGIN")  # deferred: a snapshot that never blocks a writer (WAL)
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot reach the {describe(url)}: {reason(exc)}") from None
        return Reader(conn, "sqlite")
    if scheme not in ("postgresql+psycopg", "postgresql", "postgres") or not _well_formed(url):
        return None
    import psycopg  # noqa: PLC0415 - only for PostgreSQL

    try:
        conn = psycopg.connect("postgresql://" + rest, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot reach the {describe(url)}: {reason(exc)}") from None
    except psycopg.Error:  # an option libpq does not know: service.db says which
        return None
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # show reads a job and its epochs as of one moment
    return Reader(conn, "postgresql")


def _well_formed(url: str) -> bool:
    try:
        urlsplit(url).port  # a port that is not a number raises
    except ValueError:
        return False
    return True


def _revision(reader: Reader, url: str) -> str | None:
    """The revision in alembic_version; a file that is not a database, or unreadable, is one line."""
    try:
        return _read_revision(reader)
    except sqlite3.DatabaseError as exc:
        raise DatabaseUnavailable(f"cannot reach the {describe(url)}: {reason(exc)}") from None


def _read_revision(reader: Reader) -> str | None:
    has_table = ("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
                 if reader.dialect == "sqlite" else "SELECT count(*) AS n FROM pg_catalog.pg_tables "
                 "WHERE tablename = 'alembic_version' AND schemaname = ANY(current_schemas(false))")
    if not reader.one(has_table)["n"]:
        return None
    found = reader.one("SELECT version_num FROM alembic_version")
    return None if found is None else found["version_num"]
