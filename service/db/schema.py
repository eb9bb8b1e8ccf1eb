"""The tables, as SQLAlchemy Core sees them: datasets, sweeps, jobs and epochs (SQLite and PostgreSQL).

Jobs and epochs take their columns from the result schema (service.jobs.result). Epochs are keyed on
(job_id, epoch), which serves both one job's history and one epoch across a sweep (a lookup per job).
A job row keeps its latest loss and epoch count, so listing jobs never reads the epochs table.
Migrations own the schema in the database; a test checks that Alembic finds nothing to change.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from service.jobs import result
from service.jobs.status import MARKS
from service.jobs.sweep import NAME_LENGTH

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    return datetime.now(UTC)


SQLITE_DECLARED = {"input": 300, "kernel": 300}
"""Texts held whole since 0013 that a SQLite file still declares VARCHAR(300), as 0001 made them: SQLite never
enforces a declared length, and declaring another would copy the table (its view and triggers with it)."""


def _type(f: result.Field):
    if f.kind == "text" and f.name in SQLITE_DECLARED:
        return Text().with_variant(String(SQLITE_DECLARED[f.name]), "sqlite")
    if f.kind == "text":
        return String(f.length) if f.length else Text()
    return {"int": Integer(), "bigint": BigInteger(), "float": Float(), "bool": Boolean(), "json": JSON(),
            "time": DateTime(timezone=True)}[f.kind]


def _column(f: result.Field, primary: bool = False) -> Column:
    args = []
    if f.references:
        cascade = "CASCADE" if f.references == "sweeps.id" else None
        args.append(ForeignKey(f.references, ondelete=cascade))
    return Column(f.col, _type(f), *args, primary_key=primary, nullable=f.nullable and not primary, index=f.index)


datasets = Table(
    "datasets", metadata,
    Column("id", Integer, primary_key=True),
    Column("sha256", String(64), unique=True, nullable=False),
    Column("shape", JSON, nullable=False),
    Column("dtype", String(16), nullable=False),
    Column("nbytes", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
"""An uploaded array (input, labels or kernel), stored once per content hash (sha256 of its .npy bytes)."""

sweeps = Table(
    "sweeps", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(NAME_LENGTH)),
    Column("params", JSON, nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("tags", JSON, nullable=False, server_default=text("'[]'")),
)
"""The parameters a sweep expanded: {"swept": {name: values}, "fixed": {name: value}}, and its tags (a list)."""

database_identity = Table(
    "database_identity", metadata,
    Column("identity", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
"""One row, written by migration 0005: the name of this database's queues on the broker (service.broker.routed)."""

id_floors = Table(
    "id_floors", metadata,
    Column("name", String(16), primary_key=True),
    Column("last_id", BigInteger, nullable=False),
)
"""On SQLite, the greatest id each table ('jobs', 'sweeps') ever gave (migration 0010): new ids start above it,
never at a deleted row's (service.db.ids). PostgreSQL's sequences do this themselves; its rows stay unused."""

jobs = Table(
    "jobs", metadata,
    *(_column(f, primary=f.name == "id") for f in result.JOB),
    postgresql_with={"fillfactor": 70},  # room on each page for some claims to update a job in place (migration 0004)
)

BY_TRIGGERS = {"postgresql": {"fk_jobs_sweep_id_sweeps"}}
"""Foreign keys of the tables above that a database of a dialect keeps by triggers instead (migration 0008:
on PostgreSQL, the new jobs' sweeps are checked once per statement, not once per row)."""


def compared(dialect: str):
    """Alembic's include_object for a database of `dialect` (migrations/env.py, and the test that the models and
    the migrations agree): every object, but the foreign keys that it keeps by triggers."""
    skipped = BY_TRIGGERS.get(dialect, set())

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return not (type_ == "foreign_key_constraint" and name in skipped)

    return include


UNFINISHED = jobs.c.finished_at.is_(None)
"""Created, queued or running: a job gets its finished_at as it ends, and no job leaves an end
(service.jobs.status). The predicate of ix_jobs_unfinished (migration 0007): a reaper's looks for running jobs
whose worker died and queued ones the broker lost read the jobs not yet ended, not every job ever run; a
claim and a heartbeat change no column of it, so they are in-place (HOT) updates wherever the page has room:
about 4 in 10 of a sweep's claims under fillfactor 70 (fillfactor 50 fits them all, and makes the table 41% to 44%
larger once its jobs have ended: bench/RESULTS.md)."""

Index("ix_jobs_unfinished", jobs.c.id, postgresql_where=UNFINISHED, sqlite_where=UNFINISHED)


def _marked(column: str) -> str:
    return column if result.BY_NAME[column].kind == "bool" else f"{column} IS NOT NULL"


ENDED_BADLY = " OR ".join(_marked(c) for c in MARKS.values())
"""Failed, diverged or cancelled, as SQL: a job that ends so has its status's mark set (service.jobs.status.MARKS);
so have a few others (a running job asked to stop), which the status asked for leaves out. The predicate of
ix_jobs_ended_badly (migration 0009): `klab list --status failed` reads those jobs, not every job ever run (0.75 s
on 1,000,000 succeeded ones, 0.26 s now, the whole command). A claim changes no column of it, so claims can stay
in-place (HOT) updates, which an index on status would end."""

Index("ix_jobs_ended_badly", jobs.c.id, postgresql_where=text(ENDED_BADLY), sqlite_where=text(ENDED_BADLY))


def unfinished(status: str) -> ColumnElement[bool]:
    """Jobs of a status that has not ended, said so that the database reads them through ix_jobs_unfinished."""
    return UNFINISHED & (jobs.c.status == status)


epochs = Table(
    "epochs", metadata,
    *(_column(f, primary=f.name in ("job_id", "epoch")) for f in result.EPOCH),
)

JSON_COLUMNS = frozenset(c.name for c in jobs.columns if isinstance(c.type, JSON))
