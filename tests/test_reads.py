"""service.reader and service.query: the read commands' SQL, straight through sqlite3 or psycopg, read the
same values SQLAlchemy's models do, on both backends and by every path a connection can come."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import fake_result
from service import models, query, reader, store
from service.db import HEAD, current_revision, dispose_engines, downgrade, engine_for, session_scope, upgrade
from service.models import Job, JobStatus
from service.reader import Reader, reading, revision
from service.spec import JobSpec


def orm_value(job: Job, column: str) -> Any:
    value = getattr(job, query.SUMMARY.get(column, column))
    return value.isoformat() if isinstance(value, datetime) else value


@pytest.fixture
def varied_jobs(db_url: str, add_job) -> list[int]:
    """Jobs with every kind of value: finished, diverged with nulls, unidentifiable, biased, never run."""
    upgrade(db_url)
    spec = JobSpec.parse({"input": "random:5x7", "kernel": "random:2x2", "bias": True, "epochs": 4, "seed": 2**40})
    with session_scope(db_url) as session:
        sweep = store.create_sweep(session, {"lr": [0.1]}, 1).id
        ids = [add_job(session, relative=0.25, sweep_id=sweep), add_job(session, relative=None, status="diverged"),
               add_job(session, status="queued")]
        job = store.create_job(session, spec, status=JobStatus.RUNNING)
        result = fake_result(spec, relative=0.5, epochs=3)
        result["learned_bias"] = [0.125]
        result["identifiability"] = {"rank": 3, "params": 5, "identifiable": False}
        store.save_results(session, [(job.id, result)])
        job.started_at = job.created_at
        ids.append(job.id)
    return ids


@pytest.mark.parametrize("path", ["direct", "engine", "session"])
def test_every_column_reads_as_sqlalchemy_reads_it(db_url: str, varied_jobs: list[int], path: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "engine":  # as for a SQLite database still to upgrade, or a URL only SQLAlchemy reads
        monkeypatch.setattr(reader, "_direct", lambda url: None)
    with session_scope(db_url, readonly=True) as session:
        orm = {j: session.get(Job, j) for j in varied_jobs}
        if path == "session":
            r = Reader.of_session(session)
            results = {j: query.result_of(r, j) for j in varied_jobs}
            columns, rows = query.export_jobs(r, varied_jobs)
            exported = list(rows)
        else:
            with reading(db_url) as r:
                assert r.dialect == engine_for(db_url).dialect.name
                results = {j: query.result_of(r, j) for j in varied_jobs}
                columns, rows = query.export_jobs(r, varied_jobs)
                exported = list(rows)
        assert [row["id"] for row in exported] == sorted(varied_jobs)
        for row in exported:
            for column in columns:
                assert row[column] == orm_value(orm[row["id"]], column), (row["id"], column)
        for j, result in results.items():
            job = orm[j]
            for key in ("id", "status", "method", "device", "seed", "torch_version", "true_kernel", "learned_kernel",
                        "initial_kernel", "learned_bias", "lstsq_kernel", "explanation", "created_at", "started_at",
                        "finished_at", "sweep_id", "queue", "epochs_done", "spec"):
                assert result[key] == orm_value(job, key), (j, key)
            assert result["error"] == (None if job.err_frobenius is None else {
                "frobenius": job.err_frobenius, "relative": job.err_relative, "max_abs": job.err_max_abs,
                "cosine": job.err_cosine})
            assert result["identifiability"] == (None if job.rank is None else {
                "rank": job.rank, "params": job.params, "identifiable": job.identifiable})
            epochs = session.execute(select(models.Epoch).where(models.Epoch.job_id == j)
                                     .order_by(models.Epoch.epoch)).scalars().all()
            assert result["epochs"] == [{"epoch": e.epoch, "loss": e.loss, "mse": e.mse,
                                         "kernel_error": e.kernel_error} for e in epochs]
    biased = results[varied_jobs[3]]
    assert biased["learned_bias"] == [0.125] and biased["identifiability"]["identifiable"] is False
    assert biased["started_at"] == biased["created_at"] and biased["seed"] == 2**40
    assert results[varied_jobs[2]]["error"] is None and results[varied_jobs[2]]["epochs"] == []


def test_a_read_sees_one_moment_and_never_holds_up_a_writer(db_url: str, add_job) -> None:
    upgrade(db_url)
    with session_scope(db_url) as session:
        first = add_job(session)
    with reading(db_url) as r:
        assert [row["id"] for row in query.list_jobs(r)] == [first]
        with session_scope(db_url) as session:  # a worker storing a result while `klab show` reads
            second = add_job(session)
        assert [row["id"] for row in query.list_jobs(r)] == [first]  # the read's own snapshot
        assert query.progress(r, [first, second])["jobs"] == 1
    with reading(db_url) as r:
        assert [row["id"] for row in query.list_jobs(r)] == [second, first]


def test_postgresql_reads_are_read_only(pg_url: str) -> None:
    import psycopg

    upgrade(pg_url)
    with reading(pg_url) as r, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        r.execute("DELETE FROM jobs")


def test_sqlite_not_at_head_upgrades_itself_through_service_db(sqlite_url: str) -> None:
    assert reader._direct(sqlite_url) is None  # no file yet: the fast path never creates one
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
    with reading(sqlite_url) as r:
        assert query.list_jobs(r) == []
    assert revision(sqlite_url) == HEAD
    downgrade(sqlite_url, "base")
    dispose_engines()  # this process remembers databases it found at head
    assert revision(sqlite_url) is None and reader._direct(sqlite_url) is None
    with reading(sqlite_url) as r:
        assert query.list_jobs(r) == []
    assert current_revision(engine_for(sqlite_url)) == HEAD
    direct = reader._direct(sqlite_url)
    assert direct is not None
    direct.conn.close()


def test_a_url_only_sqlalchemy_reads_goes_through_service_db(sqlite_url: str) -> None:
    url = sqlite_url + "?timeout=20"
    assert reader._direct(url) is None
    with reading(url) as r:
        assert query.list_jobs(r) == [] and r.dialect == "sqlite"


def test_statuses_are_the_models() -> None:
    assert query.STATUSES == tuple(s.value for s in JobStatus)
    assert query.FINISHED == {s.value for s in models.FINISHED}
    assert set(query.SUMMARY.values()) <= set(Job.__table__.columns.keys())
    assert set(query.RESULT_COLUMNS) | set(query.EXPORT_EXTRA) <= set(Job.__table__.columns.keys())


def test_job_summary_view_has_the_summary_columns(db_url: str) -> None:
    """The CLI reads the jobs table under the names the job_summary view gives SQL users: the same names."""
    upgrade(db_url)
    with reading(db_url) as r:
        cur = r.conn.cursor()
        cur.execute("SELECT * FROM job_summary WHERE 1 = 0")
        names = [d[0] for d in cur.description]
        cur.close()
    assert set(query.SUMMARY) <= set(names)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_database_lost_in_the_middle_of_a_read_is_one_line(klab_db: str, add_job, klab_cli,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from conftest import PG_ADMIN_URL

    with session_scope(klab_db) as session:
        add_job(session)
    listed = query.list_jobs

    def after_losing_the_connection(r: Reader, **options: Any) -> list[dict[str, Any]]:
        pid = r.one("SELECT pg_backend_pid() AS pid")["pid"]
        with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return listed(r, **options)

    monkeypatch.setattr(query, "list_jobs", after_losing_the_connection)
    code, out, err = klab_cli("list")
    assert (code, out) == (3, "") and err.startswith("klab: error: database error: ") and err.count("\n") == 1, err


def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path, klab_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import settings

    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    monkeypatch.setenv("KLAB_DATABASE_URL", f"sqlite:///{path}")
    settings.cache_clear()
    try:
        for args in (["list"], ["show", "1"], ["db", "current"]):
            code, out, err = klab_cli(*args)
            assert (code, out) == (3, "") and err == f"klab: error: cannot reach the sqlite database {path}: " \
                                                     "file is not a database\n", (args, err)
    finally:
        settings.cache_clear()
    assert path.read_text().startswith("these are my notes")  # left as it was
