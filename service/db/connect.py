"""Connections to the database through its driver (sqlite3, psycopg), and the Reader every read goes
through (service.db.reads opens them). No SQLAlchemy here: the read commands start in a tenth of a
second because of it.

Also the two things every connection shares, whichever way it was opened: the SQLite settings
(`sqlite_setup`) and the schema-version check (`require_head`).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service import defaults
from service.errors import DatabaseUnavailable, UpgradeRefused, one_line
from service.settings import describe, settings, sqlite_path

HEAD = "0015"
"""The newest migration in migrations/versions (a test keeps this in step with Alembic's head)."""

STREAM_ROWS = 10_000
"""Rows fetched at a time by Reader.stream (a server-side cursor on PostgreSQL)."""

INTEGER_MOST = 2**63 - 1
"""The largest integer either database keeps (a 64-bit column): an id past it names no row (and the drivers refuse
to bind it), a limit past it is no limit."""

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


class ForkGuard:
    """No fork while a thread of this process is in a SQLite transaction. SQLite keeps, in the process, which of its
    files the process has locked; a child forked meanwhile (Celery replacing a dead pool child while the worker's
    reaper wrote) inherits that note without the lock, and each of its writes ever after was "database is locked".
    Transactions go on at once, any number (a thread's nested ones too); a fork waits until none is open (and new
    ones wait for it), at most FORK_WAIT_S, then forks anyway."""

    FORK_WAIT_S = 60.0

    def __init__(self) -> None:
        self._cond, self._open, self._forking, self._mine = threading.Condition(), 0, False, threading.local()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        depth = getattr(self._mine, "depth", 0)
        with self._cond:
            if not depth:  # a thread already in one goes on: a fork waiting for it would wait for ever
                self._cond.wait_for(lambda: not self._forking)
            self._open += 1
        self._mine.depth = depth + 1
        try:
            yield
        finally:
            self._mine.depth = depth
            with self._cond:
                self._open -= 1
                self._cond.notify_all()

    def between(self) -> None:
        """Called by a thread whose transactions hold no lock for now (a write whose BEGIN found SQLite's lock held
        by another process, before it tries again): a fork waiting for them goes on now, and the thread goes on once
        it is done. A write waiting minutes for that lock held every fork for FORK_WAIT_S, and the fork then went on
        while the write was open."""
        depth = getattr(self._mine, "depth", 0)
        if not depth:
            return
        with self._cond:
            self._open -= depth
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._forking)
            self._open += depth

    def before_fork(self) -> None:
        self._cond.acquire()
        self._forking = True
        own = getattr(self._mine, "depth", 0)  # a thread forking inside its own transactions waits for the others'
        self._cond.wait_for(lambda: self._open == own, timeout=self.FORK_WAIT_S)

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._cond.notify_all()
        self._cond.release()

    def after_fork_in_child(self) -> None:
        """Only the forking thread goes on in the child, with its own transactions, if any (its thread-local depth
        is kept: they end here as they began)."""
        self._cond, self._forking = threading.Condition(), False
        self._open = getattr(self._mine, "depth", 0)


FORKS = ForkGuard()
os.register_at_fork(before=FORKS.before_fork, after_in_parent=FORKS.after_fork_in_parent,
                    after_in_child=FORKS.after_fork_in_child)


def sqlite_transaction(url: str) -> contextlib.AbstractContextManager[None]:
    """What a transaction on `url` holds through it: on SQLite, the process's ForkGuard."""
    return FORKS.transaction() if url.lower().startswith("sqlite") else contextlib.nullcontext()


def sqlite_setup(conn: sqlite3.Connection) -> None:
    """Every SQLite connection: WAL (a reader never blocks a writer), the busy timeout, foreign keys
    (deletes cascade), and transactions begun by us, not by the driver."""
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout={defaults.SQLITE_BUSY_MS}")
    # a new file turned to WAL by two connections at once: one is "database is locked" at once, the busy timeout not
    # asked (two threads' first klab.jobs() on a new SQLite file, or two processes')
    _while_locked(conn, "PRAGMA journal_mode=WAL", defaults.SQLITE_BUSY_MS / 1000, lambda: time.sleep(0.01))
    for pragma in ("foreign_keys=ON", "synchronous=NORMAL"):
        conn.execute(f"PRAGMA {pragma}")


def begin_writing(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE: the write lock, waited for SQLITE_TRY_MS at a time while another process holds it, for up to
    SQLITE_WRITE_WAIT_S. One busy timeout was all it had: a `klab run`, a `sweep --local` or a `db upgrade` started
    while a worker stored a large task (15,000,000 epochs: 37 s) failed "database is locked", exit 3, the job it had
    trained lost. Nothing is done before the lock is held, so nothing is done twice; between two tries the process
    holds no lock, and a fork waiting for its transactions goes on (ForkGuard.between)."""
    # tries of a second: a worker's reaper waiting out a whole busy timeout held the worker's fork of a new pool
    # child for 30 s, and Celery killed the child it forked next, not told in time that it was up
    conn.execute(f"PRAGMA busy_timeout={defaults.SQLITE_TRY_MS}")
    try:
        _while_locked(conn, "BEGIN IMMEDIATE", defaults.SQLITE_WRITE_WAIT_S, FORKS.between)
    finally:
        conn.execute(f"PRAGMA busy_timeout={defaults.SQLITE_BUSY_MS}")


def _while_locked(conn: sqlite3.Connection, statement: str, seconds: float, pause: Callable[[], None]) -> None:
    """`statement`, tried again while SQLite answers "database is locked", for up to `seconds`; `pause()` between."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        pause()


REVISIONS = tuple(f"{n:04d}" for n in range(1, int(HEAD) + 1))
"""Every migration's revision, oldest first (migrations/versions: 0001_..., each the next's down_revision)."""


def unknown_revision(revision: str | None, url: str) -> DatabaseUnavailable | None:
    """A database whose alembic_version names a revision no migration here has: a newer klab's, or another
    application's, which `klab db upgrade` cannot move (exit code 2)."""
    if revision is None or revision in REVISIONS:
        return None
    return DatabaseUnavailable(f"the {describe(url)} is at revision {revision}, which this kernel-lab does not have "
                               f"(its newest is {HEAD}): a newer kernel-lab's, or another application's database", 2)


def require_head(revision: str | None, url: str) -> None:
    """A schema that is missing or not at head: one line saying what to run (exit code 2)."""
    if revision == HEAD:
        return
    where = describe(url)
    if revision is None:
        raise DatabaseUnavailable(f"the {where} has no kernel-lab schema; run: klab db upgrade", 2)
    if (unknown := unknown_revision(revision, url)) is not None:
        raise unknown
    raise DatabaseUnavailable(f"the {where} is at revision {revision}, not {HEAD}; run: klab db upgrade", 2)


def no_folder(url: str, folder: Path) -> DatabaseUnavailable:
    """A SQLite file whose folder does not exist: a typo in a path must not become a new, empty database (exit 2)."""
    return DatabaseUnavailable(f"the folder of the {describe(url)} does not exist: {folder}", 2)


def refuse_unmade(url: str) -> None:
    """What only reads or changes jobs already stored (`make=False`: list, show, cancel, delete...) refuses a SQLite
    file that does not exist, but the default one: a name mistyped, or a file moved away, became a new empty
    database that answered "no jobs" (a missing folder is refused by every command: no_folder)."""
    path = sqlite_path(url)  # with a query or an escape too
    if path is not None and not path.exists() and path.parent.is_dir() and not settings().is_default(url):
        raise DatabaseUnavailable(f"no {describe(url)}: only klab db upgrade and the commands that store jobs make "
                                  "one", 2)


_REFUSED_URL = re.compile(r"invalid (URI query parameter|connection option|\w+ value|value for parameter)"
                          r"|^no such (access mode|vfs|cache mode): ")
"""libpq's words for a URL it refuses (?bogus=1, ?sslmode=bogus), the server's for a parameter the URL sets
(?client_encoding=bogus, ?options=-c TimeZone=bogus), and SQLite's for a file: URI's (?mode=bogus, ?vfs=bogus): the
user's mistake, not a database away."""


def refused_url(exc: BaseException) -> bool:
    """Whether a driver's error (not SQLAlchemy's wrapping of it) is its refusal of the URL (_REFUSED_URL), as it
    connects: with no SQLSTATE (a server's own error in a statement, `invalid input value for enum`, has one)."""
    return bool(_REFUSED_URL.search(str(exc))) and getattr(exc, "sqlstate", None) is None


def unreachable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """A database that cannot be reached, as one line naming it (exit code 3); a URL its driver refuses names
    KLAB_DATABASE_URL (exit code 2); a SQLite file on a full disk says so."""
    if refused_url(exc):
        return DatabaseUnavailable(f"KLAB_DATABASE_URL: the {describe(url)}'s driver refuses the URL: "
                                   f"{one_line(exc)}", 2)
    if (full := _disk_full(url, exc)) is not None:
        return DatabaseUnavailable(f"the {describe(url)} cannot be opened: its disk is full ({full}): "
                                   f"{one_line(exc)}")
    return DatabaseUnavailable(f"cannot reach the {describe(url)}: {one_line(exc)}")


FULL_BYTES = 1 << 20
"""Free bytes under which a SQLite file's disk I/O error is read as its disk being full."""


def _disk_full(url: str, exc: BaseException) -> str | None:
    """How full a SQLite file's disk is, where that is why it could not be opened: in WAL mode SQLite maps a
    shared-memory file beside it and, with no room for it, says only `disk I/O error` (the line said the database
    could not be reached, as of a server away). None where its disk has room, or for another database."""
    path = sqlite_path(url)
    if path is None or not isinstance(exc, sqlite3.Error):
        return None
    words = str(exc)
    if "database or disk is full" not in words and "disk I/O error" not in words:
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    return f"{free:,} bytes free in {path.parent}" if free < FULL_BYTES else None


_RACES = ("40P01", "40001")
"""PostgreSQL's deadlock_detected and serialization_failure: it ended the transaction to let another go on."""


def lost_race(exc: BaseException) -> bool:
    """Whether PostgreSQL ended a transaction to break a deadlock with another (a worker storing results while klab
    delete or cancel changes the same jobs: each locks many job rows, each in its own order): nothing is wrong with
    it, and run again it goes through (service.db.engine.retried)."""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) in _RACES


_GONE = ("connection", "could not connect", "server closed", "terminating", "timeout", "database is locked",
         "the database system is")


def out_of_reach(exc: BaseException) -> bool:
    """Whether an error means the database is out of reach for now (worth waiting for), as opposed to a bug
    or bad data; through SQLAlchemy or a driver alike."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.exit_code == 3 and not isinstance(exc, UpgradeRefused)
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", None) or exc
    if not type(orig).__module__.startswith(("sqlite3", "psycopg")):
        return False
    return any(s in str(orig).lower() for s in _GONE)


class Reader:
    """A driver connection inside one transaction, answering SQL written with :name parameters.

    Rows come back as dicts of the driver's own values; service.db.reads decodes the few that differ
    between the backends (JSON and timestamps are text in SQLite, booleans are 0 and 1).
    """

    def __init__(self, conn: Any, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self._streams: list[Generator[dict[str, Any], None, None]] = []

    @classmethod
    def of(cls, connection: Any) -> Reader:
        """Read inside a SQLAlchemy connection's transaction (what `klab run` and a write print)."""
        return cls(connection.connection.driver_connection, connection.dialect.name)

    def bytewise(self, column: str) -> str:
        """A text column sorted by its UTF-8 bytes, as SQLite sorts it: a PostgreSQL database of a language's
        collation (en_US.UTF-8, ICU; the postgres image's default) put `npy:a.npy` before `npy:B.npy`."""
        return column if self.dialect == "sqlite" else f'{column} COLLATE "C"'

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

    def stream(self, sql: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Rows one at a time, STREAM_ROWS fetched at once: never the whole result in memory. A stream left
        half read is closed by end_streams, before its connection is."""
        rows = self._stream(sql, params)
        self._streams.append(rows)
        return rows

    def end_streams(self) -> None:
        """Close the streams still open while their connection is (a reader of the output that went away, a
        closed pipe, leaves one half read; closed later, its cursor would find the connection gone)."""
        for rows in self._streams:
            rows.close()
        self._streams.clear()

    def _stream(self, sql: str, params: dict[str, Any] | None) -> Generator[dict[str, Any], None, None]:
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

    def revision(self, url: str) -> str | None:
        """The revision in alembic_version (None: no schema); a file that is not a database is one line."""
        has_table = ("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
                     if self.dialect == "sqlite" else "SELECT count(*) AS n FROM pg_catalog.pg_tables "
                     "WHERE tablename = 'alembic_version' AND schemaname = ANY(current_schemas(false))")
        try:
            if not self.one(has_table)["n"]:
                return None
            found = self.one("SELECT version_num FROM alembic_version")
        except sqlite3.DatabaseError as exc:
            raise unreachable(url, exc) from None
        return None if found is None else found["version_num"]


def sqlite_file(url: str) -> Path | None:
    """The file of a plain SQLite URL (sqlite:///PATH, no query, no escape: sqlite3 opens the path as written),
    whether it exists or not; None for any other (service.settings.sqlite_path reads those too)."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("sqlite", "sqlite+pysqlite") or any(c in rest for c in "?%"):
        return None
    return sqlite_path(url)


def open_reader(url: str) -> Reader | None:
    """A driver connection, begun read-only, for a plain SQLite file or PostgreSQL URL; None otherwise."""
    scheme, _, rest = url.partition("://")
    if scheme in ("sqlite", "sqlite+pysqlite"):
        path = sqlite_file(url)
        if path is None or not path.is_file():
            return None  # no file yet (service.db.engine creates it), or a URL only SQLAlchemy reads
        try:
            conn = sqlite3.connect(path, timeout=defaults.SQLITE_BUSY_MS / 1000)
            sqlite_setup(conn)
            conn.execute("BEGIN")  # deferred: a snapshot that never blocks a writer (WAL)
        except sqlite3.Error as exc:
            raise unreachable(url, exc) from None
        return Reader(conn, "sqlite")
    if scheme not in ("postgresql+psycopg", "postgresql", "postgres") or not _well_formed(url):
        return None
    import psycopg

    try:
        conn = psycopg.connect("postgresql://" + rest, connect_timeout=defaults.CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        raise unreachable(url, exc) from None
    except psycopg.Error:  # an option libpq does not know: service.db.engine says which
        return None
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # show reads a job and its epochs as of one moment
    return Reader(conn, "postgresql")


def _well_formed(url: str) -> bool:
    try:
        port = urlsplit(url).port  # a port that is not a number, or past 65535, raises
    except ValueError:
        return False
    return port != 0  # service.db.engine says what is wrong with these
