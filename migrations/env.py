"""Alembic environment: the URL comes from the caller or from kernel-lab's settings, never alembic.ini."""
from __future__ import annotations

from alembic import context
from sqlalchemy import text

from service.db.engine import engine_for
from service.db.schema import compared, metadata
from service.settings import settings

config = context.config
url = config.attributes.get("url") or settings().database_url
target_metadata = metadata


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"),
                      include_object=compared("sqlite" if url.startswith("sqlite") else "postgresql"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        with engine_for(url).connect() as connection:
            _run(connection)
    else:
        _run(connectable)


MIGRATING = 0x6B6C6162  # "klab": the PostgreSQL advisory lock every upgrade and downgrade holds while it runs


def _run(connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    # SQLite too in one transaction, which begins by taking the write lock (service.db.engine's BEGIN IMMEDIATE):
    # Alembic runs SQLite's DDL outside any by default, so two commands upgrading one new file at once both applied
    # the same step (`duplicate column name: tags`, exit 3); the second now waits, then finds the file at head.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=sqlite,
                      transactional_ddl=True, include_object=compared(connection.dialect.name))
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two at once (compose's migrate and a user's `klab db upgrade`) would both find the database empty and
            # the second end in a duplicate key: it waits here for the first to commit, then reads where it ended.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATING})
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
