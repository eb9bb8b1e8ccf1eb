"""SQLAlchemy's side of the database: one engine per URL, write transactions, and migrations.

Only what writes (and `klab db upgrade`) comes here; reads go through service.db.connect's driver
connections, unless the database must first be created or upgraded.
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from service import defaults
from service.db.connect import (
    HEAD,
    begin_writing,
    lost_race,
    no_folder,
    out_of_reach,
    refuse_unmade,
    refused_url,
    require_head,
    sqlite_setup,
    sqlite_transaction,
    unknown_revision,
    unreachable,
)
from service.errors import BadInput, DatabaseUnavailable, UpgradeRefused, mask, one_line
from service.settings import describe, settings, sqlite_path

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
RACE_TRIES = 5
"""Times a write transaction is run before a deadlock it keeps losing is reported (retried)."""
T = TypeVar("T")

_ENGINES: dict[str, Engine] = {}
_AT_HEAD: set[str] = set()  # URLs already found at head by this process


def engine_for(url: str) -> Engine:
    """The engine for a URL, created once per process."""
    if url not in _ENGINES:
        _ENGINES[url] = _create(url)
    return _ENGINES[url]


def dispose_engines() -> None:
    """Close every pooled connection (tests, and worker children after fork)."""
    for eng in _ENGINES.values():
        eng.dispose()
    _ENGINES.clear()
    _AT_HEAD.clear()


def _create(url: str) -> Engine:
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):  # a bad port is a ValueError
        raise DatabaseUnavailable(f"KLAB_DATABASE_URL is not a database URL: {mask(url)}", 2) from None
    if u.port is not None and not 0 < u.port < 65536:  # the driver's "invalid port number" read as unreachable
        raise DatabaseUnavailable(f"KLAB_DATABASE_URL is not a database URL: port {u.port} is not 1 to 65535: "
                                  f"{mask(url)}", 2)
    if not u.drivername.startswith("sqlite"):
        try:
            return create_engine(url, pool_pre_ping=True,
                                 connect_args={"connect_timeout": defaults.CONNECT_TIMEOUT_S})
        except (ArgumentError, ImportError) as exc:  # postgresql+psycopg2: a driver kernel-lab does not install
            raise DatabaseUnavailable(f"KLAB_DATABASE_URL: cannot use {describe(url)}: {mask(str(exc))} (kernel-lab "
                                      "reaches PostgreSQL through psycopg 3: postgresql://...)", 2) from None
    if not u.database or u.database in (":memory:", "file::memory:") or u.query.get("mode") == "memory":
        raise BadInput("KLAB_DATABASE_URL", "an in-memory SQLite database would begin empty in every command and "
                                            "lose what it stored; give a file, as sqlite:////path/to/klab.db")
    folder = (sqlite_path(url) or Path(u.database)).parent  # as SQLite reads it (a `file:` URI's path): a ~ is no
    # home folder there
    if settings().is_default(url):
        settings().folder()  # KLAB_HOME, made on first use
    elif not folder.is_dir():  # a typo in a path must not become a new, empty database
        raise no_folder(url, folder)
    try:
        eng = create_engine(url, connect_args={"timeout": defaults.SQLITE_BUSY_MS / 1000})
    except (ArgumentError, ImportError) as exc:  # sqlite+aiosqlite://, sqlite+bogus://: a traceback
        raise DatabaseUnavailable(f"KLAB_DATABASE_URL: cannot use {describe(url)}: {mask(str(exc))} (kernel-lab "
                                  "reaches SQLite through Python's sqlite3: sqlite:///PATH)", 2) from None
    except ValueError as exc:  # ?timeout=abc, ?check_same_thread=maybe: the driver's parameters, read by SQLAlchemy
        raise DatabaseUnavailable(f"KLAB_DATABASE_URL: cannot use {describe(url)}: a parameter of the URL is not "
                                  f"what SQLite's driver takes: {mask(str(exc))}", 2) from None
    event.listen(eng, "connect", lambda dbapi_conn, _record: sqlite_setup(dbapi_conn))

    @event.listens_for(eng, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that later writes fails at once
        # with "database is locked" when another process wrote meanwhile, whatever the timeout. A read
        # (`peeking`) takes none: a worker frozen in one must not stop every other worker's writes.
        if conn.get_execution_options().get("klab_read"):
            conn.exec_driver_sql("BEGIN")
        else:
            try:
                begin_writing(conn.connection.driver_connection)
            except sqlite3.Error as exc:  # as SQLAlchemy wraps a driver's error, for those who read it so
                raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc

    return eng


def current_revision(url: str) -> str | None:
    """The schema revision the database is at (None for an empty database).

    A failure to connect is one line; a missing alembic_version table means no schema yet. (Telling the
    two apart by the error's text made an empty PostgreSQL database look unreachable.)
    """
    with reachable(url), engine_for(url).connect() as conn:
        conn = conn.execution_options(klab_read=True)  # a read: on SQLite no write lock (nor a wait for one)
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


_UPGRADING = threading.Lock()
"""One upgrade at a time in a process: Alembic's module-level proxies are not for threads (klab.jobs() from two
threads of a notebook on a new SQLite file: `KeyError: 'config'` from deep inside Alembic, in one of them)."""


def upgrade(url: str, revision: str = "head") -> None:
    """Run Alembic's migrations up to `revision`; one the database refuses (a table of another application's, a
    read-only server) is one line, exit code 3, whether `klab db upgrade` or a SQLite file's own upgrade ran it
    (the API raised SQLAlchemy's error of many lines)."""
    from alembic import command

    try:
        with _UPGRADING:
            command.upgrade(alembic_config(url), revision)
    except DBAPIError as exc:
        orig = exc.orig if exc.orig is not None else exc
        if out_of_reach(exc) or refused_url(orig):  # lost on the way: worth waiting for, as any other read or write;
            raise unreachable(url, orig) from None  # or a URL the driver refuses: each said as every command says it
        raise UpgradeRefused(f"the {describe(url)} refused the upgrade: {one_line(exc.orig)}") from None
    finally:
        _AT_HEAD.discard(url)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    with _UPGRADING:
        command.downgrade(alembic_config(url), revision)
    _AT_HEAD.discard(url)


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS.parent / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def ready_engine(url: str | None = None) -> Engine:
    """An engine whose database is at head: a SQLite file upgrades itself, anything else must be upgraded."""
    url = url or settings().database_url
    engine = engine_for(url)
    if url in _AT_HEAD:
        return engine
    rev = current_revision(url)
    if (unknown := unknown_revision(rev, url)) is not None:  # before any upgrade: Alembic read '001' as 0010, and
        raise unknown  # tracebacked on '0009_x' (SQLite upgrades a revision that sorts below head)
    if engine.dialect.name == "sqlite" and (rev is None or rev < HEAD):
        upgrade(url)
        rev = HEAD
    require_head(rev, url)
    _AT_HEAD.add(url)
    return engine


@contextmanager
def reachable(url: str) -> Iterator[None]:
    """A database that cannot be reached, as one line naming it (exit code 3)."""
    try:
        yield
    except DBAPIError as exc:
        raise unreachable(url, exc.orig if exc.orig is not None else exc) from None


@contextmanager
def peeking(url: str | None = None) -> Iterator[Connection]:
    """A connection in a transaction that only reads (SQLAlchemy Core's, where service.db.reads's Reader will not
    do): on SQLite it takes no write lock (service.db.writes.peek, a quick task's read of its jobs)."""
    with ready_engine(url).connect() as conn:
        conn = conn.execution_options(klab_read=True)
        with conn.begin():
            yield conn


@contextmanager
def writing(url: str | None = None, durable: bool = True, make: bool = True) -> Iterator[Connection]:
    """A connection in a write transaction on a database at head: committed on success, rolled back on error.
    `make=False` (what changes jobs already stored: cancel, delete, requeue): a SQLite file that does not exist is
    refused as reading refuses it (service.db.connect.refuse_unmade), not made to answer "no job 1".

    `durable=False` (a worker's claims and results): PostgreSQL does not wait for the transaction to reach
    the disk before answering. A machine that loses power may lose the last fraction of a second of such
    commits, never a part of one: those jobs are then taken back and trained again (service.db.writes.reap
    and stranded), as after a worker's death.
    """
    url = url or settings().database_url
    if not make:
        refuse_unmade(url)
    with sqlite_transaction(url), ready_engine(url).begin() as conn:
        if not durable and conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        yield conn


def retried(work: Callable[[Connection], T], url: str | None = None, durable: bool = True, make: bool = True) -> T:
    """`work(conn)` in a write transaction (writing's), run again, up to RACE_TRIES times, when PostgreSQL ended it to
    break a deadlock (service.db.connect.lost_race): `klab delete --sweep` while a worker stored its results failed
    "deadlock detected", exit 3; a worker that lost the same race failed the jobs it had trained."""
    tried = 1
    while True:
        try:
            with writing(url, durable, make) as conn:
                return work(conn)
        except Exception as exc:
            if not lost_race(exc) or tried >= RACE_TRIES:
                raise
            tried += 1
