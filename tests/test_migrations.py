"""Alembic owns the schema: the models and the migrations agree, and every migration runs both ways."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from service import db, store
from service.db import HEAD, alembic_config, current_revision, downgrade, engine_for, session_scope, upgrade
from service.models import Base

TABLES = {"datasets", "sweeps", "jobs", "epochs"}


def test_head_constant_is_alembics_only_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert heads == [HEAD]


def test_models_and_migrations_agree(db_url: str) -> None:
    upgrade(db_url)
    with engine_for(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(db_url: str) -> None:
    upgrade(db_url)
    eng = engine_for(db_url)
    assert current_revision(eng) == HEAD
    assert TABLES <= set(inspect(eng).get_table_names())
    assert "job_summary" in inspect(eng).get_view_names()

    downgrade(db_url, "base")
    assert current_revision(eng) is None
    assert not TABLES & set(inspect(eng).get_table_names())
    assert "job_summary" not in inspect(eng).get_view_names()

    upgrade(db_url)
    assert current_revision(eng) == HEAD
    assert TABLES <= set(inspect(eng).get_table_names())
    with session_scope(db_url) as session:  # the schema is usable again, not only present
        assert session.execute(text("SELECT count(*) FROM job_summary")).scalar() == 0


def test_job_summary_has_one_row_per_job(klab_db: str, add_job) -> None:
    with session_scope() as session:
        sweep = store.create_sweep(session, {"lr": [0.01, 0.1]}, 2)
        ids = [add_job(session, relative=0.2, sweep_id=sweep.id, lr=0.01),
               add_job(session, relative=0.05, sweep_id=sweep.id, lr=0.1),
               add_job(session, relative=None, status="queued")]
    with session_scope() as session:
        rows = session.execute(text("SELECT id, lr, relative_error, epochs_done FROM job_summary ORDER BY id")).all()
    assert [r.id for r in rows] == ids  # epochs must not multiply the rows
    assert [r.relative_error for r in rows] == [0.2, 0.05, None]
    assert [r.epochs_done for r in rows] == [10, 10, 0]


def test_sqlite_runs_in_wal_mode_with_busy_timeout(sqlite_url: str) -> None:
    with engine_for(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
