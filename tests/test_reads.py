"""service.db.connect and service.db.reads: the read commands' SQL, straight through sqlite3 or psycopg, reads
the same values SQLAlchemy does, on both backends and by every path a connection can come."""
from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import fake_result
from harness import clean_env, klab_path
from sqlalchemy import select

from service.db import connect, reads, writes
from service.db.connect import HEAD, Reader
from service.db.engine import current_revision, dispose_engines, downgrade, engine_for, upgrade, writing
from service.db.reads import reading, revision
from service.db.schema import epochs as epochs_table
from service.db.schema import jobs
from service.jobs import result
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus


def core_value(row: Any, name: str) -> Any:
    """A column as SQLAlchemy reads it, times as UTC text (SQLite's come back without an offset)."""
    value = getattr(row, result.BY_NAME[name].col)
    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)).isoformat()
    return value


@pytest.fixture
def varied_jobs(db_url: str, add_job) -> list[int]:
    """Jobs with every kind of value: finished, diverged with nulls, unidentifiable, biased, never run."""
    upgrade(db_url)
    spec = JobSpec.parse({"input": "random:5x7", "kernel": "random:2x2", "bias": 1.0, "epochs": 4, "seed": 2**40})
    with writing(db_url) as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.1]}, 1)
        ids = [add_job(conn, relative=0.25, sweep_id=sweep), add_job(conn, relative=None, status="diverged"),
               add_job(conn, status="queued")]
        (job_id,) = writes.insert_jobs(conn, [writes.new_job(spec, start=JobStatus.RUNNING)])
        row, epoch_list = fake_result(spec, relative=0.5, epochs=3)
        row.update(learned_bias=[0.125], rank=3, params=5, identifiable=False)
        writes.save_rows(conn, [(job_id, row, epoch_list)])
        ids.append(job_id)
    return ids


@pytest.mark.parametrize("path", ["direct", "engine", "write"])
def test_every_column_reads_as_sqlalchemy_reads_it(db_url: str, varied_jobs: list[int], path: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "engine":  # as for a SQLite database still to upgrade, or a URL only SQLAlchemy reads
        monkeypatch.setattr(reads, "open_reader", lambda url: None)
    if db_url.startswith("postgresql"):  # sessions in a zone not UTC: PostgreSQL gives the instant there, shown in
        monkeypatch.setenv("PGTZ", "Asia/Kolkata")  # UTC all the same (on a server in UTC, times left as given passed)
        dispose_engines()
    with writing(db_url) as conn:
        if db_url.startswith("postgresql"):
            assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "Asia/Kolkata"
        core = {r.id: r for r in conn.execute(select(jobs).where(jobs.c.id.in_(varied_jobs)))}
        stored_epochs = {j: conn.execute(select(epochs_table).where(epochs_table.c.job_id == j)
                                         .order_by(epochs_table.c.epoch)).all() for j in varied_jobs}
        if path == "write":  # what `klab run` prints of what it stored, inside its transaction
            r = Reader.of(conn)
            results = {j: reads.result_of(r, j) for j in varied_jobs}
            columns, rows = reads.export_jobs(r, Selection(tuple(varied_jobs)))
            exported = list(rows)
    if path != "write":
        with reading(db_url) as r:
            assert r.dialect == engine_for(db_url).dialect.name
            results = {j: reads.result_of(r, j) for j in varied_jobs}
            columns, rows = reads.export_jobs(r, Selection(tuple(varied_jobs)))
            exported = list(rows)
    assert [row["id"] for row in exported] == sorted(varied_jobs)
    for row in exported:
        for column in columns:
            assert row[column] == core_value(core[row["id"]], column), (row["id"], column)
    for j, shown in results.items():
        job = core[j]
        flat = {**shown, **{f.name: (shown[f.group] or {}).get(f.key or f.name) for f in result.JOB if f.group}}
        for name in result.RESULT_NAMES:
            assert flat[name] == core_value(job, name), (j, name)
        assert shown["epochs"] == [{"epoch": e.epoch, "loss": e.loss, "mse": e.mse,
                                    "kernel_error": e.kernel_error} for e in stored_epochs[j]]
    biased = results[varied_jobs[3]]
    assert biased["learned_bias"] == [0.125] and biased["identifiability"]["identifiable"] is False
    assert biased["started_at"] == biased["created_at"] and biased["seed"] == 2**40
    assert results[varied_jobs[2]]["error"] is None and results[varied_jobs[2]]["epochs"] == []


def test_a_read_sees_one_moment_and_never_holds_up_a_writer(db_url: str, add_job) -> None:
    upgrade(db_url)
    with writing(db_url) as conn:
        first = add_job(conn)
    with reading(db_url) as r:
        assert [row["id"] for row in reads.list_jobs(r)] == [first]
        with writing(db_url) as conn:  # a worker storing a result while `klab show` reads
            second = add_job(conn)
        assert [row["id"] for row in reads.list_jobs(r)] == [first]  # the read's own snapshot
        assert reads.progress(r, Selection(sweep=None, ids=(first,)))["jobs"] == 1
    with reading(db_url) as r:
        assert [row["id"] for row in reads.list_jobs(r)] == [second, first]


def test_postgresql_reads_are_read_only(pg_url: str) -> None:
    import psycopg

    upgrade(pg_url)
    with reading(pg_url) as r, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        r.rows("DELETE FROM jobs RETURNING id")


def test_sqlite_not_at_head_upgrades_itself_through_the_engine(sqlite_url: str) -> None:
    assert connect.open_reader(sqlite_url) is None  # no file yet: the fast path never creates one
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
    with reading(sqlite_url) as r:
        assert reads.list_jobs(r) == []
    assert revision(sqlite_url) == HEAD
    downgrade(sqlite_url, "0002")
    dispose_engines()  # this process remembers databases it found at head
    assert revision(sqlite_url) == "0002"
    with reading(sqlite_url) as r:
        assert reads.list_jobs(r) == []
    assert current_revision(sqlite_url) == HEAD
    downgrade(sqlite_url, "base")
    dispose_engines()
    assert revision(sqlite_url) is None
    with reading(sqlite_url) as r:
        assert reads.list_jobs(r) == []
    assert current_revision(sqlite_url) == HEAD


def test_a_url_only_sqlalchemy_reads_goes_through_the_engine(sqlite_url: str) -> None:
    url = sqlite_url + "?timeout=20"
    assert connect.open_reader(url) is None
    with reading(url) as r:
        assert reads.list_jobs(r) == [] and r.dialect == "sqlite"


def test_job_summary_view_has_the_summary_columns(db_url: str) -> None:
    """The CLI reads the jobs table under the names the job_summary view gives SQL users: the same names."""
    upgrade(db_url)
    with reading(db_url) as r:
        cur = r.conn.cursor()
        cur.execute("SELECT * FROM job_summary WHERE 1 = 0")
        names = [d[0] for d in cur.description]
        cur.close()
    assert names == list(result.SUMMARY_NAMES)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_database_lost_in_the_middle_of_a_read_is_one_line(klab_db: str, add_job, klab_cli,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg
    from conftest import PG_ADMIN_URL

    with writing(klab_db) as conn:
        add_job(conn)
    listed = reads.list_jobs

    def after_losing_the_connection(r: Reader, **options: Any) -> list[dict[str, Any]]:
        pid = r.one("SELECT pg_backend_pid() AS pid")["pid"]
        with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return listed(r, **options)

    monkeypatch.setattr(reads, "list_jobs", after_losing_the_connection)
    code, out, err = klab_cli("list")
    assert (code, out) == (3, "") and err.count("\n") == 1, err
    assert err.startswith("klab: error: database error on the postgresql database klab_test_"), err  # named none


def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path, klab_cli, setenv) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    setenv(KLAB_DATABASE_URL=f"sqlite:///{path}")
    for args in (["list"], ["show", "1"], ["db", "current"]):
        code, out, err = klab_cli(*args)
        assert (code, out) == (3, "") and err == f"klab: error: cannot reach the sqlite database {path}: " \
                                                 "file is not a database\n", (args, err)
    assert path.read_text().startswith("these are my notes")  # left as it was


def test_a_sqlite_file_on_a_full_disk_says_its_disk_is_full(tmp_path: Path) -> None:
    """A SQLite file (in WAL mode) whose disk has no room for its shared-memory file: SQLite says only `disk I/O
    error`, and every command said it could not reach the database, as of a server away. A tmpfs of its own, in a
    mount namespace of its own (`unshare`: gone with the shell, whatever the test's end)."""
    folder = tmp_path / "small"
    folder.mkdir()
    env = clean_env(folder)
    script = (f'mount -t tmpfs -o size=512k tmpfs "$KLAB_HOME" && "{klab_path()}" db upgrade >/dev/null && '
              'head -c 1048576 /dev/zero > "$KLAB_HOME/fill" 2>/dev/null; df --output=avail -B1 "$KLAB_HOME"; '
              f'for args in list "show 1" run; do "{klab_path()}" $args; echo "exit code $?"; done')
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.split()[:2] == ["Avail", "0"], (done.stdout, done.stderr)
    assert done.stdout.split()[2:] == ["exit", "code", "3"] * 3, done.stdout  # nothing printed but the lines
    line = (f"klab: error: the sqlite database {folder}/klab.db cannot be opened: its disk is full (0 bytes free "
            f"in {folder}): disk I/O error\n")
    assert done.stderr == line * 3, done.stderr


def test_a_role_without_the_right_to_read_is_one_line_exit_3(pg_url: str, tmp_path: Path) -> None:
    """A PostgreSQL role that may log in but not read klab's tables (SQLSTATE 42501): the database refusing the
    command, said in one line as any other refusal, not psycopg's traceback."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    upgrade(pg_url)
    dispose_engines()
    role = f"klab_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        env = clean_env(tmp_path / "home", make_url(pg_url).set(username=role).render_as_string(hide_password=False))
        out = subprocess.run([klab_path(), "list"], env=env, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout) == (3, ""), out.stderr
        (line,) = out.stderr.splitlines()
        assert line.startswith("klab: error: database error on the postgresql database ") and \
            line.endswith("permission denied for table alembic_version"), line
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
