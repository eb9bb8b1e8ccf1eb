"""The database: one engine per URL, sessions handed out, and the schema checked against head."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service.errors import DatabaseUnavailable
from service.reader import HEAD, SQLITE_BUSY_MS
from service.settings import describe, mask, reason, settings

__all__ = ["HEAD", "SQLITE_BUSY_MS", "DatabaseUnavailable", "describe", "engine_for", "ready_engine", "session_scope"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


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
    _sessionmaker.cache_clear()
    _readonly.cache_clear()


def _create(url: str) -> Engine:
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):  # a bad port is a ValueError
        raise DatabaseUnavailable(f"KLAB_DATABASE_URL is not a database URL: {mask(url)}", 2) from None
    if u.drivername.startswith("sqlite"):
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})

        @event.listens_for(eng, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we begin transactions ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(eng, "begin")
        def _begin(conn) -> None:  # noqa: ANN001
            # Writers take the write lock up front: a deferred transaction that later writes fails at
            # once with "database is locked" when another process wrote meanwhile, whatever the
            # timeout. Read-only sessions begin deferred, so a slow reader never blocks the workers.
            readonly = conn.get_execution_options().get("klab_readonly")
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return eng
    try:
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    except (ArgumentError, ImportError) as exc:
        raise DatabaseUnavailable(f"cannot use {describe(url)}: {mask(str(exc))}", 2) from None


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None for an empty database).

    A failure to connect propagates; a missing alembic_version table means no schema yet. (Telling the
    two apart by the error's text made an empty PostgreSQL database look unreachable.)
    """
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(url: str, revision: str = "head") -> None:
    """Run Alembic's migrations up to `revision`."""
    from alembic import command  # noqa: PLC0415 - only when migrating

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command  # noqa: PLC0415

    command.downgrade(alembic_config(url), revision)


def alembic_config(url: str):  # noqa: ANN201
    from alembic.config import Config  # noqa: PLC0415

    cfg = Config(str(MIGRATIONS.parent / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def ready_engine(url: str | None = None) -> Engine:
    """An engine whose database is at head: SQLite upgrades itself, anything else must be upgraded."""
    url = url or settings().database_url
    engine = engine_for(url)
    if url in _AT_HEAD:
        return engine
    with reachable(url):
        rev = current_revision(engine)
    if rev == HEAD:
        _AT_HEAD.add(url)
        return engine
    if engine.dialect.name == "sqlite" and (rev is None or rev < HEAD):
        upgrade(url)
        _AT_HEAD.add(url)
        return engine
    where = describe(url)
    if rev is None:
        raise DatabaseUnavailable(f"the {where} has no kernel-lab schema; run: klab db upgrade", 2)
    raise DatabaseUnavailable(f"the {where} is at revision {rev}, not {HEAD}; run: klab db upgrade", 2)


@contextmanager
def reachable(url: str) -> Iterator[None]:
    """A database that cannot be reached, as one line naming the host (exit 3)."""
    try:
        yield
    except DBAPIError as exc:
        why = reason(exc.orig if exc.orig is not None else exc)
        raise DatabaseUnavailable(f"cannot reach the {describe(url)}: {why}") from None


@lru_cache(maxsize=8)
def _readonly(engine: Engine) -> Engine:
    return engine.execution_options(klab_readonly=True)


@lru_cache(maxsize=8)
def _sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None, readonly: bool = False) -> Iterator[Session]:
    """A session on a database at head, committed on success and rolled back on error."""
    engine = ready_engine(url)
    if readonly:
        engine = _readonly(engine)
    session = _sessionmaker(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
