"""Alembic owns the schema: the models and the migrations agree, and every migration runs both ways."""
from __future__ import annotations

import contextlib
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from harness import clean_env, klab, wait_until
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from service.db import schema, writes
from service.db.connect import HEAD, REVISIONS
from service.db.engine import (
    alembic_config,
    current_revision,
    dispose_engines,
    downgrade,
    engine_for,
    upgrade,
    writing,
)
from service.db.schema import compared, metadata
from service.jobs import result
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.settings import describe

TABLES = {"datasets", "sweeps", "jobs", "epochs"}
REFUSED = (IntegrityError, sqlite3.IntegrityError, psycopg.errors.IntegrityError)
"""A row refused by a key or a trigger, through SQLAlchemy or through the driver (the bulk paths' COPY)."""


def test_head_constant_is_alembics_only_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert heads == [HEAD]


def test_every_revision_is_known_in_order() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert tuple(reversed([r.revision for r in script.walk_revisions()])) == REVISIONS


NEWER = f"{int(HEAD) + 1:04d}"
"""The revision a newer kernel-lab would be at."""


def test_upgrade_refuses_what_it_cannot_do_in_one_line(pg_url: str, tmp_path) -> None:
    """A revision that is none, a database of a newer kernel-lab (or another Alembic application's), a table of
    another application's in the way, a read-only server: one line each, never Alembic's or psycopg's traceback."""
    env = clean_env(tmp_path, pg_url)

    def line(*args: str, **extra: str) -> tuple[int, str]:
        done = klab({**env, **extra}, *args)
        assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr[-2000:]
        return done.returncode, done.stderr

    assert line("db", "upgrade", "--revision", "-1") == (2, "klab: error: revision: no revision '-1'; choose head or "
                                                         f"one of {', '.join(REVISIONS)}\n")
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id int)")  # another application's
    code, err = line("db", "upgrade")
    assert code == 3 and err.endswith('refused the upgrade: relation "jobs" already exists\n')
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("DROP TABLE jobs")
        conn.execute("CREATE TYPE st AS ENUM ('queued'); CREATE TABLE jobs (id int, status st, cancel_requested bool, "
                     "error_message text, diverged_epoch int, epochs_done int); CREATE TABLE alembic_version "
                     "(version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('0008')")
    code, err = line("db", "upgrade")  # a server's error in a migration that reads like a URL's: not the URL's
    assert code == 3 and "refused the upgrade: invalid input value for enum st: " in err, err
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("DROP TABLE jobs; DROP TABLE alembic_version; DROP TYPE st")
    assert klab(env, "db", "upgrade").returncode == 0
    done = klab({**env, "PGOPTIONS": "-c default_transaction_read_only=on"}, "run", "--epochs", "1")  # a standby's
    assert (done.returncode, done.stderr) == (3, f"klab: error: database error on the {describe(pg_url)}: cannot "
                                                 "execute nextval() in a read-only transaction\n")  # named no database
    assert done.stdout.startswith("succeeded (not stored)\n")  # what it trained, before the line (test_cli_run)
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(f"UPDATE alembic_version SET version_num = '{NEWER}'")  # a newer kernel-lab's
    for args in (("db", "current"), ("db", "upgrade"), ("list",)):
        code, err = line(*args)  # they said: not at head, run klab db upgrade; which raised Alembic's error
        assert code == 2 and f"at revision {NEWER}, which this kernel-lab does not have (its newest is" in err, args


def test_upgrades_at_once_on_a_new_database_wait_for_each_other(pg_url: str, tmp_path) -> None:
    """Compose's migrate service and a user's `klab db upgrade` at once, on an empty database: each waits for the
    one before it (where the second once found the database empty too and ended in a duplicate key, exit 3). Made
    certain here: the version table is held locked until all three wait, then all go at once."""
    env = clean_env(tmp_path, pg_url)
    plain = pg_url.replace("+psycopg", "")
    with psycopg.connect(plain) as holder, psycopg.connect(plain, autocommit=True) as watcher:
        holder.execute("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)")
        holder.commit()
        holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        with ThreadPoolExecutor(3) as pool:
            runs = [pool.submit(klab, env, "db", "upgrade") for _ in range(3)]
            # (a connection in a transaction sees pg_stat_activity as it was when the transaction first read it)
            activity = "SELECT wait_event_type, query FROM pg_stat_activity WHERE datname = current_database()"
            wait_until(lambda: [w for w, _ in watcher.execute(activity)].count("Lock") == 3, 60,
                       lambda: watcher.execute(activity).fetchall())
            holder.rollback()
            done = [r.result() for r in runs]
    assert [(d.returncode, d.stderr) for d in done] == [(0, "")] * 3
    assert all(d.stdout.endswith(f"is at revision {HEAD}\n") for d in done), [d.stdout for d in done]
    assert current_revision(pg_url) == HEAD


def test_upgrades_at_once_of_a_new_sqlite_file_wait_for_each_other(tmp_path) -> None:
    """Two commands that each upgrade one new SQLite file at once: both read it empty, then the second applied the
    steps the first had applied (`duplicate column name`, `table ... already exists`, exit 3, one time in twenty).
    Here the file's write lock is held until all four have opened it (its -wal), then released; each upgrade is one
    transaction that begins by taking that lock, so the others wait and find the file at head. The race needs one
    to begin between two steps of another, which this does not force (it passed on the old code): the next test
    checks, deterministically, that an upgrade is one transaction."""
    import os

    from harness import Client

    path = tmp_path / "klab.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    env = clean_env(tmp_path / "home", f"sqlite:///{path}")
    clients = [Client(env, "db", "upgrade") for _ in range(4)]

    def opened(pid: int) -> bool:
        with contextlib.suppress(OSError):
            return any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"{path}-wal" for fd in os.listdir(f"/proc/{pid}/fd"))
        return False

    wait_until(lambda: all(opened(c.proc.pid) for c in clients), 60, "both upgrades opened the file")
    holder.execute("ROLLBACK")
    holder.close()
    done = [c.result(120) for c in clients]
    assert [(d.returncode, d.stderr) for d in done] == [(0, "")] * 4
    assert current_revision(f"sqlite:///{path}") == HEAD


def test_an_upgrade_of_sqlite_is_one_transaction_whole_or_not_at_all(tmp_path) -> None:
    """What makes upgrades at once wait for each other (above): on SQLite Alembic committed after each step, so
    another command could begin between two steps, from the revision it read, and apply them again. A file at 0008
    whose 0010 step fails (a table of that name in the way) now stays at 0008, where it was left at 0009."""
    url = f"sqlite:///{tmp_path / 'klab.db'}"
    upgrade(url, "0008")
    with sqlite3.connect(tmp_path / "klab.db") as conn:
        conn.execute("CREATE TABLE id_floors (x int)")  # what 0010 creates
    done = klab(clean_env(tmp_path / "home", url), "db", "upgrade")
    assert done.returncode == 3 and "refused the upgrade: table id_floors already exists" in done.stderr, done
    assert current_revision(url) == "0008"
    from service.db.engine import ready_engine
    from service.errors import DatabaseUnavailable

    with pytest.raises(DatabaseUnavailable) as refused:  # the file's own upgrade, as the API meets it: it was
        ready_engine(url)  # SQLAlchemy's OperationalError of many lines
    assert str(refused.value).endswith("refused the upgrade: table id_floors already exists")
    assert refused.value.exit_code == 3 and "\n" not in str(refused.value)
    from service.db.connect import out_of_reach

    assert not out_of_reach(refused.value)  # no wait mends it: a worker stops, where it waited for ever
    with sqlite3.connect(tmp_path / "klab.db") as conn:  # 0009's index rolled back with the rest
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'ix_jobs_ended_badly'").fetchone() == (0,)


@pytest.mark.parametrize("stored", ["0009_x", "001", ""])
def test_a_sqlite_file_at_a_revision_no_migration_has_is_refused_not_upgraded(tmp_path, stored) -> None:
    """A SQLite file upgrades itself when behind head, and a revision was behind when it sorted below "0010":
    '0009_x' and '' were Alembic's traceback, '001' was read as 0010 (head), and commands ran on 0009's schema."""
    url = f"sqlite:///{tmp_path / 'klab.db'}"
    upgrade(url, "0009")
    with sqlite3.connect(tmp_path / "klab.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (stored,))
    env = clean_env(tmp_path / "home", url)
    for args in (("list",), ("run", "--epochs", "1"), ("delete", "1")):
        done = klab(env, *args)
        assert (done.returncode, done.stdout) == (2, "") and done.stderr.count("\n") == 1, (args, done.stderr[-500:])
        assert f"is at revision {stored}, which this kernel-lab does not have" in done.stderr, done.stderr
    assert current_revision(url) == stored


def test_db_current_of_a_sqlite_file_not_made_yet_makes_none(tmp_path) -> None:
    env = clean_env(tmp_path / "home")
    done = klab(env, "db", "current")
    assert (done.returncode, done.stderr) == (0, "") and "revision none" in done.stdout, done
    assert not (tmp_path / "home" / "klab.db").exists()


def test_an_upgrade_to_a_revision_behind_the_database_is_refused_not_ignored(tmp_path) -> None:
    env = clean_env(tmp_path / "home")
    assert klab(env, "db", "upgrade", "--revision", "0005").returncode == 0
    done = klab(env, "db", "upgrade", "--revision", "0003")
    assert (done.returncode, done.stdout) == (2, "") and done.stderr.endswith(
        "klab.db is at revision 0005, past 0003: klab db upgrade does not go back\n"), done.stderr
    assert klab(env, "db", "upgrade", "--revision", "0005").returncode == 0  # where it is: nothing to do
    assert current_revision(f"sqlite:///{tmp_path / 'home' / 'klab.db'}") == "0005"


def test_models_and_migrations_agree(db_url: str) -> None:
    """As Alembic's autogenerate compares them (migrations/env.py): on PostgreSQL, triggers keep jobs.sweep_id's
    key (0008), and the next tests check that they do what the key did."""
    upgrade(db_url)
    with engine_for(db_url).connect() as conn:
        dialect = conn.dialect.name
        diff = compare_metadata(MigrationContext.configure(conn, opts={"include_object": compared(dialect)}),
                                metadata)
        keys = {k["name"] for k in inspect(conn).get_foreign_keys("jobs")}
    assert diff == []
    assert ("fk_jobs_sweep_id_sweeps" in keys) is (dialect == "sqlite")


def test_partial_indexes_hold_the_rows_the_models_say(db_url: str) -> None:
    """What Alembic's compare leaves out: a partial index's WHERE (ix_jobs_unfinished, ix_jobs_ended_badly, the
    readers' and the reaper's paths). Each is compared with the same index made from the model in the same database,
    as the database itself writes them back (PostgreSQL: pg_get_expr; SQLite: the statement, its name aside)."""
    from sqlalchemy.schema import CreateIndex

    upgrade(db_url)
    eng = engine_for(db_url)
    dialect = eng.dialect.name
    partial = [i for table in metadata.tables.values() for i in table.indexes
               if i.dialect_options[dialect]["where"] is not None]
    assert {i.name for i in partial} >= {"ix_jobs_unfinished", "ix_jobs_ended_badly"}
    read = ("SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :name" if dialect == "postgresql" else
            "SELECT replace(sql, :name, '') FROM sqlite_master WHERE type = 'index' AND name = :name")
    with eng.connect() as conn:
        for index in partial:
            probe = f"probe_{index.name}"
            conn.exec_driver_sql(str(CreateIndex(index).compile(dialect=eng.dialect)).replace(index.name, probe, 1))
            migrated = conn.execute(text(read), {"name": index.name}).scalar_one()
            modelled = conn.execute(text(read), {"name": probe}).scalar_one()
            assert " ".join(migrated.split()) == " ".join(modelled.split()), index.name
        conn.rollback()


def test_downgrade_to_base_and_upgrade_again(db_url: str) -> None:
    upgrade(db_url)
    eng = engine_for(db_url)
    assert current_revision(db_url) == HEAD
    assert TABLES <= set(inspect(eng).get_table_names())
    assert "job_summary" in inspect(eng).get_view_names()

    downgrade(db_url, "base")
    assert current_revision(db_url) is None
    assert not TABLES & set(inspect(eng).get_table_names())
    assert "job_summary" not in inspect(eng).get_view_names()

    upgrade(db_url)
    assert current_revision(db_url) == HEAD
    assert TABLES <= set(inspect(eng).get_table_names())
    with writing(db_url) as conn:  # the schema is usable again, not only present
        assert conn.execute(text("SELECT count(*) FROM job_summary")).scalar() == 0


def schema_of(url: str) -> dict[str, Any]:
    """What a revision leaves in a database: tables with their columns, indexes and foreign keys; views, triggers,
    PostgreSQL's functions and table options, SQLite's view and trigger SQL."""
    dispose_engines()
    with engine_for(url).connect() as conn:
        seen = inspect(conn)
        found: dict[str, Any] = {t: (sorted((c["name"], str(c["type"]), c["nullable"]) for c in seen.get_columns(t)),
                                     sorted((i["name"], tuple(i["column_names"])) for i in seen.get_indexes(t)),
                                     sorted((k["name"], tuple(k["constrained_columns"]), k["referred_table"],
                                             str(sorted(k.get("options", {}).items())))
                                            for k in seen.get_foreign_keys(t)))
                                 for t in seen.get_table_names() if t != "alembic_version"}
        if conn.dialect.name == "postgresql":
            for name, sql in (
                    ("views", "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'"),
                    ("functions", "SELECT proname, prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                                  "WHERE nspname = 'public'"),
                    ("triggers", "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal"),
                    ("options", "SELECT relname, coalesce(array_to_string(reloptions, ','), '') FROM pg_class c "
                                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE nspname = 'public' AND relkind = 'r'")):
                found[name] = sorted((a, " ".join(b.split())) for a, b in conn.execute(text(sql)))
        else:
            found["sql"] = sorted((kind, name, " ".join((sql or "").split())) for kind, name, sql in conn.execute(
                text("SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger')")))
    dispose_engines()
    return found


def test_each_downgrade_leaves_what_the_revision_before_it_made(db_url: str) -> None:
    """Every migration runs both ways, step by step: the test above checked base and head alone, and downgrades
    that left a column (0002), no view (0003), no foreign key (0004) or a later trigger function (0012) passed."""
    made = {}
    for revision in REVISIONS:
        upgrade(db_url, revision)
        made[revision] = schema_of(db_url)
    for revision in reversed(REVISIONS[:-1]):
        downgrade(db_url, revision)
        assert schema_of(db_url) == made[revision], revision


def test_job_summary_has_one_row_per_job(klab_db: str, add_job) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.01, 0.1]}, 2)
        ids = [add_job(conn, relative=0.2, sweep_id=sweep, lr=0.01),
               add_job(conn, relative=0.05, sweep_id=sweep, lr=0.1),
               add_job(conn, relative=None, status="queued")]
    with writing() as conn:
        rows = conn.execute(text("SELECT id, lr, relative_error, epochs_done FROM job_summary ORDER BY id")).all()
    assert [r.id for r in rows] == ids  # epochs must not multiply the rows
    assert [r.relative_error for r in rows] == [0.2, 0.05, None]
    assert [r.epochs_done for r in rows] == [10, 10, 0]


def test_sqlite_runs_in_wal_mode_with_busy_timeout(sqlite_url: str) -> None:
    with engine_for(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000  # the README's "30 s busy timeout"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_the_view_is_what_the_result_schema_says(db_url: str) -> None:
    """The view's SQL is written out in its revision (history does not change); at head it is the schema's: its
    names, each over the column the schema reads it from (two names over each other's columns passed)."""
    from conftest import fake_result

    from service.jobs.status import JobStatus

    upgrade(db_url)
    spec = JobSpec.parse({"input": "random:8x8", "kernel": "random:3x3"})
    with writing(db_url) as conn:
        (job_id,) = writes.insert_jobs(conn, [writes.new_job(spec, queue="cpu", start=JobStatus.RUNNING)])
        writes.save_rows(conn, [(job_id, *fake_result(spec, 0.3))])
        names = list(conn.execute(text("SELECT * FROM job_summary WHERE 1 = 0")).keys())
        viewed = dict(conn.execute(text("SELECT * FROM job_summary")).mappings().one())
        read = dict(conn.execute(text(f"SELECT {result.select_list(result.SUMMARY_NAMES)} FROM jobs")).mappings().one())
    assert names == list(result.SUMMARY_NAMES)
    assert viewed == read and len({v for v in viewed.values() if isinstance(v, float)}) >= 8, viewed


def test_a_database_of_an_older_revision_keeps_its_jobs_through_the_upgrade(db_url: str) -> None:
    upgrade(db_url, "0002")
    with engine_for(db_url).begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, spec, status, method, input, lr, epochs, batch_size, seed, noise, "
                          "created_at, attempts, cancel_requested, task_try, epochs_done, err_relative) VALUES "
                          "(1, '{}', 'succeeded', 'adam', 'edge:6x8', 0.1, 3, 2, 0, 0, '2026-01-01', 1, false, 0, 3, "
                          "0.5)"))
    upgrade(db_url)
    with writing(db_url) as conn:
        row = conn.execute(text("SELECT id, relative_error, stable_lr FROM job_summary")).one()
    assert tuple(row) == (1, 0.5, None)


def test_deleting_jobs_in_sql_deletes_their_epochs(klab_db: str, add_job) -> None:
    """epochs has no foreign key since 0004 (it made COPY four times slower); a trigger keeps what the key
    kept: a job deleted by any SQL, one row or many in one statement, takes its epochs with it."""
    with writing() as conn:
        keep, one, *many = [add_job(conn) for _ in range(5)]
    with writing() as conn:
        conn.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": one})
        conn.execute(text(f"DELETE FROM jobs WHERE id IN ({', '.join(map(str, many))})"))
    with writing() as conn:
        left = conn.execute(text("SELECT DISTINCT job_id FROM epochs")).scalars().all()
        assert left == [keep]
        assert conn.execute(text("SELECT count(*) FROM epochs")).scalar() == 10


def test_a_job_names_a_sweep_that_exists_and_goes_with_it(klab_db: str, add_job) -> None:
    """What jobs.sweep_id's foreign key kept, kept on PostgreSQL by 0008's triggers (and by the key on SQLite):
    no job, stored by COPY or by SQL, names a missing sweep; a sweep deleted by SQL takes its jobs and their
    epochs with it; a sweep's id does not change under its jobs."""
    with writing() as conn:
        sweep, other = (writes.create_sweep(conn, {}, 2) for _ in range(2))
        for _ in range(2):
            add_job(conn, sweep_id=sweep)
        theirs = add_job(conn, sweep_id=other)
    missing = other + 1
    copied = "spec, status, method, input, lr, epochs, batch_size, seed, noise, created_at, attempts, " \
             "cancel_requested, task_try, epochs_done"
    for change in (lambda conn: add_job(conn, sweep_id=missing),  # COPY on PostgreSQL
                   lambda conn: conn.execute(text(f"INSERT INTO jobs ({copied}, sweep_id) SELECT {copied}, :s "
                                                  "FROM jobs"), {"s": missing}),
                   lambda conn: conn.execute(text("UPDATE jobs SET sweep_id = :s WHERE id = :j"),
                                             {"s": missing, "j": theirs}),
                   lambda conn: conn.execute(text("UPDATE sweeps SET id = :s WHERE id = :o"),
                                             {"s": missing, "o": other})):
        with pytest.raises(REFUSED, match="(?i)foreign key|sweep_id"), writing() as conn:
            change(conn)
    with writing() as conn:
        conn.execute(text("UPDATE jobs SET sweep_id = NULL WHERE id = :j"), {"j": theirs})
        conn.execute(text("UPDATE jobs SET sweep_id = :o WHERE id = :j"), {"o": other, "j": theirs})
        conn.execute(text("DELETE FROM sweeps WHERE id = :s"), {"s": sweep})
    with writing() as conn:
        assert conn.execute(text("SELECT id, sweep_id FROM jobs")).all() == [(theirs, other)]
        assert conn.execute(text("SELECT DISTINCT job_id FROM epochs")).scalars().all() == [theirs]


def test_a_truncate_takes_what_a_delete_takes(pg_url: str, tmp_path, setenv, add_job) -> None:
    """PostgreSQL fires no DELETE trigger on TRUNCATE (0011): `TRUNCATE jobs` left every epoch behind, and
    `TRUNCATE sweeps` left its jobs naming no sweep, which RESTART IDENTITY then gave to the next sweep."""
    upgrade(pg_url)
    setenv(KLAB_DATABASE_URL=pg_url, KLAB_HOME=str(tmp_path / "home"))

    def rows(conn: Any) -> tuple[list[tuple], list[int]]:
        return (conn.execute(text("SELECT id, sweep_id FROM jobs ORDER BY id")).all(),
                conn.execute(text("SELECT DISTINCT job_id FROM epochs ORDER BY job_id")).scalars().all())

    with writing() as conn:
        sweep = writes.create_sweep(conn, {}, 2)
        swept = [add_job(conn, sweep_id=sweep) for _ in range(2)]
        alone = add_job(conn)
    with writing() as conn:
        assert rows(conn) == ([(swept[0], sweep), (swept[1], sweep), (alone, None)], [*swept, alone])
        conn.execute(text("TRUNCATE sweeps RESTART IDENTITY"))
    with writing() as conn:
        assert rows(conn) == ([(alone, None)], [alone])  # the sweep's jobs went, and their epochs
        again = writes.create_sweep(conn, {}, 1)  # the truncated sweep's id: it finds none of its jobs
        assert again == sweep and add_job(conn, sweep_id=again) > alone
        conn.execute(text("TRUNCATE jobs"))
    with writing() as conn:
        assert rows(conn) == ([], [])  # every epoch went with the jobs (before 0011 every one stayed)
        assert conn.execute(text("SELECT count(*) FROM sweeps")).scalar() == 1
        add_job(conn, sweep_id=again)
        conn.execute(text("TRUNCATE sweeps, jobs, epochs RESTART IDENTITY"))  # all at once, as before
    with writing() as conn:
        assert rows(conn) == ([], []) and conn.execute(text("SELECT count(*) FROM sweeps")).scalar() == 0


def test_a_sweeps_epochs_are_found_by_the_primary_key_not_by_reading_them_all(pg_url: str, tmp_path, setenv,
                                                                              add_job) -> None:
    """`klab delete` (its own DELETE of epochs, then the trigger's) and a DELETE in SQL (the trigger's) find a
    sweep's epochs by epochs' primary key: PostgreSQL joined `job_id IN (SELECT ...)` for a sweep of 300 jobs by
    reading every epoch of the table (the delete of 300 jobs that had none took 40 s on 251,000,000; 0012). The
    reads of a sweep's epochs (`klab export --what epochs`, results), whose SQL is of that form too, did not: they
    read through a cursor, which PostgreSQL plans to return its first rows soon, by the index. Counted by
    PostgreSQL's own statistics of the table's scans, beside 400,000 epochs of other jobs."""
    from service.db import reads

    upgrade(pg_url)
    setenv(KLAB_DATABASE_URL=pg_url, KLAB_HOME=str(tmp_path / "home"))
    copied = "spec, status, method, input, lr, epochs, batch_size, seed, noise, created_at, attempts, " \
             "cancel_requested, task_try, epochs_done"
    with writing() as conn:
        first, second, third = (writes.create_sweep(conn, {}, 300) for _ in range(3))
        model = add_job(conn, status="queued")  # no epoch: nothing in the setup reads epochs, whose scans are counted
        for sweep, n in ((None, 2000), (first, 300), (second, 300), (third, 300)):  # 2,000 jobs of 200 epochs each,
            # two sweeps of 300 jobs that have none yet, and one of 300 jobs of 10
            conn.execute(text(f"INSERT INTO jobs ({copied}, sweep_id) SELECT {copied}, :s FROM jobs, "
                              "generate_series(1, :n) WHERE id = :j"), {"s": sweep, "n": n, "j": model})
        for sweep, n in ((None, 200), (third, 10)):
            conn.execute(text("INSERT INTO epochs (job_id, epoch, loss) SELECT j.id, e, 0.5 FROM jobs j, "
                              "generate_series(1, :n) e WHERE j.sweep_id IS NOT DISTINCT FROM :s AND j.id <> :j"),
                         {"s": sweep, "n": n, "j": model})
    engine = engine_for(pg_url)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    dispose_engines()  # the setup's connections end, and with them the scans they counted (the upgrade read epochs),
    # which PostgreSQL would otherwise add up to 10 s later, into a count below
    engine = engine_for(pg_url)

    def alone() -> bool:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid()")).scalar() == 0

    wait_until(alone, 30, "the setup's connections did not end")

    def scans() -> tuple[int, int]:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return tuple(conn.execute(text("SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                                           "WHERE relname = 'epochs'")).one())

    def without_a_scan(done: Any) -> Any:
        before = scans()
        value = done()  # in a transaction of its own, whose backend counts its scans when it ends
        after = wait_until(lambda: (now := scans()) != before and now, 30, "PostgreSQL counted no scan of epochs")
        assert after[0] == before[0], f"epochs read whole (scans {before} -> {after})"
        return value

    def delete(work: Any) -> None:
        with writing() as conn:
            work(conn)
            conn.execute(text("SELECT pg_stat_force_next_flush()"))  # counted as soon as this transaction ends

    def read(work: Any) -> Any:
        with reads.reading() as reader:
            value = work(reader)
            reader.one("SELECT pg_stat_force_next_flush() AS f")
            return value

    without_a_scan(lambda: delete(lambda conn: writes.delete_jobs(conn, Selection(sweep=first))))
    without_a_scan(lambda: delete(lambda conn: conn.execute(text("DELETE FROM jobs WHERE sweep_id = :s"),
                                                            {"s": second})))
    exported = without_a_scan(lambda: read(lambda r: list(reads.export_epochs(r, Selection(sweep=third))[1])))
    assert len(exported) == 3000 and [e["epoch"] for e in exported[:11]] == [*range(1, 11), 1]
    got = without_a_scan(lambda: read(lambda r: reads.results(r, Selection(sweep=third))))
    assert len(got) == 300 and {len(g["epochs"]) for g in got} == {10}
    with writing() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 2301
        assert conn.execute(text("SELECT count(*) FROM epochs")).scalar() == 403_000


def test_a_sweep_deleted_while_its_jobs_are_stored_leaves_no_job_without_its_sweep(pg_url: str) -> None:
    """The triggers lock the sweeps that new jobs name, as the key did: a DELETE of the sweep waits for the
    transaction storing its jobs and then deletes them; jobs stored while the sweep's DELETE is under way wait
    for it and are refused."""
    upgrade(pg_url)
    engine = engine_for(pg_url)
    spec = JobSpec.parse({})

    def store(conn: Any, sweep: int) -> None:
        writes.insert_jobs(conn, [writes.new_job(spec, sweep_id=sweep) for _ in range(3)])

    def waiting() -> bool:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                     "AND datname = current_database()")).scalar() > 0

    def delete(sweep: int) -> None:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM sweeps WHERE id = :s"), {"s": sweep})

    with writing(pg_url) as conn:
        first, second = (writes.create_sweep(conn, {}, 3) for _ in range(2))
    with ThreadPoolExecutor(1) as other:
        with engine.begin() as conn:  # jobs stored first, the sweep deleted meanwhile
            store(conn, first)
            deleting = other.submit(delete, first)
            wait_until(waiting, 30, "the DELETE did not wait for the jobs' transaction", every=0.01)
        deleting.result(30)
        with engine.begin() as conn:  # the sweep deleted first, jobs stored meanwhile
            conn.execute(text("DELETE FROM sweeps WHERE id = :s"), {"s": second})

            def late() -> None:
                with engine.begin() as c:
                    store(c, second)

            storing = other.submit(late)
            wait_until(waiting, 30, "storing the jobs did not wait for the DELETE", every=0.01)
        with pytest.raises(REFUSED, match="sweep_id"):
            storing.result(30)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM sweeps")).scalar() == 0


def test_sweeps_made_before_tags_have_none_and_tags_go_with_a_downgrade(db_url: str) -> None:
    """0006 adds sweeps.tags: a sweep stored at 0005 gets an empty list; back at 0005 the column is gone."""
    upgrade(db_url, "0005")
    with engine_for(db_url).begin() as conn:
        conn.execute(text("INSERT INTO sweeps (name, params, size, created_at) VALUES ('old', '{}', 0, '2026-01-01')"))
    upgrade(db_url)
    with writing(db_url) as conn:
        tagged = writes.create_sweep(conn, {}, 0, "new", ["book", "lr"])
    with engine_for(db_url).connect() as conn:
        rows = {r.name: r.tags for r in conn.execute(select(schema.sweeps.c.name, schema.sweeps.c.tags))}
    assert rows == {"old": [], "new": ["book", "lr"]} and tagged > 0
    downgrade(db_url, "0005")
    assert "tags" not in {c["name"] for c in inspect(engine_for(db_url)).get_columns("sweeps")}
    upgrade(db_url)
    assert current_revision(db_url) == HEAD


def test_jobs_that_ended_badly_before_0009_get_their_mark_and_are_listed(db_url: str) -> None:
    """0009 indexes the failed, diverged and cancelled jobs by their marks (service.jobs.status.MARKS). A job
    stored before it without its mark (Ctrl-C in `klab sweep --local` left cancel_requested false) gets one, so
    `klab list --status` still finds it; a succeeded job gets none."""
    from service.db import reads

    upgrade(db_url, "0008")
    columns = ("id, spec, status, method, input, lr, epochs, batch_size, seed, noise, created_at, attempts, "
               "cancel_requested, task_try, epochs_done, finished_at")
    with engine_for(db_url).begin() as conn:
        for job_id, status in enumerate(("succeeded", "failed", "diverged", "cancelled", "failed"), start=1):
            conn.execute(text(f"INSERT INTO jobs ({columns}) VALUES ({job_id}, '{{}}', '{status}', 'adam', "
                              "'edge:6x8', 0.1, 3, 2, 0, 0, '2026-01-01', 1, false, 0, 2, '2026-01-01')"))
        conn.execute(text("UPDATE jobs SET error_message = 'CUDA out of memory' WHERE id = 5"))  # its own reason
    upgrade(db_url)
    with engine_for(db_url).begin() as conn:
        assert conn.execute(text("SELECT error_message FROM jobs WHERE id = 5")).scalar_one() == "CUDA out of memory"
        conn.execute(text("DELETE FROM jobs WHERE id = 5"))
    with engine_for(db_url).connect() as conn:
        marked = conn.execute(text("SELECT id, error_message IS NOT NULL, diverged_epoch, cancel_requested "
                                   f"FROM jobs WHERE {reads.ENDED_BADLY} ORDER BY id")).all()
    assert [tuple(r) for r in marked] == [(2, True, None, False), (3, False, 2, False), (4, False, None, True)]
    with reads.reading(db_url) as reader:
        for job_id, status in ((2, "failed"), (3, "diverged"), (4, "cancelled"), (1, "succeeded")):
            assert [r["id"] for r in reads.list_jobs(reader, status=status)] == [job_id], status
    downgrade(db_url, "0008")
    assert "ix_jobs_ended_badly" not in {i["name"] for i in inspect(engine_for(db_url)).get_indexes("jobs")}
    upgrade(db_url)


def test_inputs_and_kernels_cut_to_300_characters_before_0013_are_made_whole(db_url: str) -> None:
    """Before 0013 jobs.input and jobs.kernel were cut to 300 characters (the spec kept them whole): two kernels
    alike in their first 300 were one. 0013 restores them from the spec; a downgrade cuts them again (its column, on
    PostgreSQL, refuses more)."""
    upgrade(db_url, "0012")
    kernels = [json.dumps([[[[i / 7 + j for i in range(9)] for j in range(3)]]] * 2)[:-5] + f"{last}]]]]"
               for last in (1, 9)]  # alike but for their last weight
    path = "npy:/" + "d/" * 160 + "x.npy"
    columns = ("spec, status, method, input, kernel, lr, epochs, batch_size, seed, noise, created_at, attempts, "
               "cancel_requested, task_try, epochs_done")
    rows = [(kernels[0], "edge:6x8"), (kernels[1], path), ("d2l", "edge:6x8"), ("x" * 300, "edge:6x8")]
    with engine_for(db_url).begin() as conn:  # as 0012's kernel-lab stored them: the columns cut, the spec whole
        for kernel, input_ in rows:
            conn.execute(text(f"INSERT INTO jobs ({columns}) VALUES (:spec, 'created', 'adam', :input, :kernel, 0.1, "
                              "3, 2, 0, 0, '2026-01-01', 0, false, 0, 0)"),
                         {"spec": json.dumps({"kernel": kernel, "input": input_}), "kernel": kernel[:300],
                          "input": input_[:300]})
    upgrade(db_url, "0013")  # 0014 writes the literals' whole numbers (1.0) as 1
    with engine_for(db_url).connect() as conn:
        got = [tuple(r) for r in conn.execute(text("SELECT kernel, input FROM jobs ORDER BY id"))]
        groups = conn.execute(text("SELECT count(DISTINCT kernel) FROM job_summary")).scalar_one()
    assert got == rows and len(kernels[0]) > 300 and len(path) > 300 and groups == 4
    downgrade(db_url, "0012")
    with engine_for(db_url).connect() as conn:
        cut = [tuple(r) for r in conn.execute(text("SELECT kernel, input FROM jobs ORDER BY id"))]
    assert cut == [(k[:300], i[:300]) for k, i in rows]
    upgrade(db_url)
    assert current_revision(db_url) == HEAD


def test_kernel_literals_kept_as_typed_before_0014_are_kept_by_their_numbers(db_url: str) -> None:
    """Before 0014 a kernel literal was kept as typed (`[[1, 0.5e-1]]`) and as json.dumps wrote a file's
    (`[[1.0, 0.05]]`): two kernels to `klab list --kernel` and `compare --group-by kernel`. 0014 writes each as the
    numbers it trains with, in the column, in the spec (as json.dumps wrote it, its keys in their order, or
    otherwise) and in sweeps' params; other kernels and a spec's other keys are left as they were."""
    from service.db import reads

    upgrade(db_url, "0013")
    four = json.dumps([[[[1.0, 2.5e-3], [3, 4]]]])
    wide = json.dumps([[round((i * 32 + j) / 1024 - 0.5, 4) for j in range(32)] for i in range(32)],
                      separators=(",", ":"))  # 1,024 weights in 7,000 characters, no spaces: PostgreSQL's btree
    # index refused the upgrade (an entry past 2704 bytes)
    given = ["[[1, 0.5e-1]]", "[[1.0, 0.05]]", "[[1,-1]]", "d2l", four, None, wide, "[[2.0, 1e2]]"]
    specs = [json.dumps({"input": "edge:6x8", "kernel": k, "seed": 3}) for k in given[:-1]]
    specs.append(json.dumps({"kernel": given[-1], "input": "edge:6x8"}, separators=(",", ":")))  # written otherwise
    columns = ("spec, status, method, input, kernel, lr, epochs, batch_size, seed, noise, created_at, attempts, "
               "cancel_requested, task_try, epochs_done")
    with engine_for(db_url).begin() as conn:
        conn.execute(text("INSERT INTO sweeps (params, size, created_at) VALUES (:p, 2, '2026-01-01')"),
                     {"p": json.dumps({"swept": {"kernel": ["[[1,5e-2]]", "d2l"]}, "fixed": {"kernel2": "[[1.0]]"}})})
        conn.execute(text("INSERT INTO sweeps (params, size, created_at) VALUES (:p, 2, '2026-01-01')"),
                     {"p": json.dumps({"swept": {"seed": [1, 2]}, "fixed": {"kernel": "[[1.0, -1.0]]"}})})
        for spec, kernel in zip(specs, given):
            conn.execute(text(f"INSERT INTO jobs ({columns}) VALUES (:spec, 'created', 'adam', 'edge:6x8', :kernel, "
                              "0.1, 3, 2, 0, 0, '2026-01-01', 0, false, 0, 0)"), {"spec": spec, "kernel": kernel})
    upgrade(db_url)
    assert current_revision(db_url) == HEAD
    want = ["[[1, 0.05]]", "[[1, 0.05]]", "[[1, -1]]", "d2l", "[[[[1, 0.0025], [3, 4]]]]", None,
            json.dumps([[int(v) if v == int(v) else v for v in row] for row in json.loads(wide)]), "[[2, 100]]"]
    with engine_for(db_url).connect() as conn:
        got = conn.execute(text("SELECT kernel, CAST(spec AS text) FROM jobs ORDER BY id")).all()
        params = [json.loads(p) for p in conn.execute(text("SELECT CAST(params AS text) FROM sweeps ORDER BY id"))
                  .scalars()]
        groups = conn.execute(text("SELECT count(DISTINCT kernel) FROM job_summary")).scalar_one()
    assert [k for k, _ in got] == want and groups == 6  # were 7: the first two apart
    assert [s for _, s in got[:-1]] == [json.dumps({"input": "edge:6x8", "kernel": k, "seed": 3}) for k in want[:-1]]
    assert json.loads(got[-1][1]) == {"kernel": "[[2, 100]]", "input": "edge:6x8"}
    assert params == [{"swept": {"kernel": ["[[1, 0.05]]", "d2l"]}, "fixed": {"kernel2": "[[1.0]]"}},
                      {"swept": {"seed": [1, 2]}, "fixed": {"kernel": "[[1, -1]]"}}]
    with reads.reading(db_url) as reader:
        found = [r["id"] for r in reads.list_jobs(reader, kernel="[[1.00, 5e-2]]")]
    assert sorted(found) == [1, 2]
    downgrade(db_url, "0013")
    upgrade(db_url)
    with engine_for(db_url).connect() as conn:
        assert conn.execute(text("SELECT kernel FROM jobs ORDER BY id")).scalars().all() == want


def test_made_inputs_and_random_kernels_kept_as_typed_before_0015_are_kept_by_their_numbers(db_url: str) -> None:
    """Before 0015 `edge:06x8` (and `image:PATH:gray`, `random:02x2`) were kept as typed: another input (kernel) than
    `edge:6x8` to `compare --group-by` and to `klab list --kernel`. 0015 writes each as what it trains, in the column,
    in the spec (as json.dumps wrote it, or otherwise) and in sweeps' params; other texts are left as they were."""
    upgrade(db_url, "0014")
    given = [("edge:06x8", "random:02x2"), ("image:/p/a.png:gray", "d2l"), ("edge:6x8", "random:2x2"),
             ("random:01x2x3", None), ("image:/p/a.png:rgb", "[[1, 2]]"), ("edge:6x08", "random:2x2x2")]
    specs = [json.dumps({"input": i, "kernel": k, "seed": 3}) for i, k in given[:-1]]
    specs.append(json.dumps({"kernel": given[-1][1], "input": given[-1][0]}, separators=(",", ":")))  # otherwise
    columns = ("spec, status, method, input, kernel, lr, epochs, batch_size, seed, noise, created_at, attempts, "
               "cancel_requested, task_try, epochs_done")
    with engine_for(db_url).begin() as conn:
        conn.execute(text("INSERT INTO sweeps (params, size, created_at) VALUES (:p, 2, '2026-01-01')"),
                     {"p": json.dumps({"swept": {"input": ["edge:06x8", "npy:/x.npy", "edge:6x8"]},
                                       "fixed": {"kernel": "random:2x02", "kernel2": "random:02x2"}})})
        conn.execute(text("INSERT INTO sweeps (params, size, created_at) VALUES (:p, 2, '2026-01-01')"),
                     {"p": json.dumps({"swept": {"kernel": ["random:03x3", "d2l"]}, "fixed": {"input": "ones:4x4"}})})
        conn.execute(text("INSERT INTO sweeps (params, size, created_at) VALUES (:p, 2, '2026-01-01')"),
                     {"p": json.dumps({"swept": {"kernel": ["random:03x3", "random:3x3"]}, "fixed": {"seed": 1}})})
        for spec, (input_, kernel) in zip(specs, given):
            conn.execute(text(f"INSERT INTO jobs ({columns}) VALUES (:spec, 'created', 'adam', :input, :kernel, 0.1, "
                              "3, 2, 0, 0, '2026-01-01', 0, false, 0, 0)"),
                         {"spec": spec, "input": input_, "kernel": kernel})
    upgrade(db_url)
    assert current_revision(db_url) == HEAD
    want = [("edge:6x8", "random:2x2"), ("image:/p/a.png", "d2l"), ("edge:6x8", "random:2x2"),
            ("random:1x2x3", None), ("image:/p/a.png:rgb", "[[1, 2]]"), ("edge:6x8", "random:2x2x2")]
    with engine_for(db_url).connect() as conn:
        got = conn.execute(text("SELECT input, kernel, CAST(spec AS text) FROM jobs ORDER BY id")).all()
        params = [json.loads(p) for p in conn.execute(text("SELECT CAST(params AS text) FROM sweeps ORDER BY id"))
                  .scalars()]
        groups = conn.execute(text("SELECT count(DISTINCT input) FROM job_summary")).scalar_one()
    assert [(i, k) for i, k, _ in got] == want and groups == 4  # were 6
    assert [s for *_, s in got[:-1]] == [json.dumps({"input": i, "kernel": k, "seed": 3}) for i, k in want[:-1]]
    assert json.loads(got[-1][2]) == {"kernel": "random:2x2x2", "input": "edge:6x8"}
    assert params == [{"swept": {"input": ["edge:6x8", "npy:/x.npy"]},
                       "fixed": {"kernel": "random:2x2", "kernel2": "random:02x2"}},
                      {"swept": {"kernel": ["random:3x3", "d2l"]}, "fixed": {"input": "ones:4x4"}},
                      {"swept": {"kernel": ["random:3x3"]}, "fixed": {"seed": 1}}]  # kernels alone: each once
    downgrade(db_url, "0014")
    upgrade(db_url)
    with engine_for(db_url).connect() as conn:
        assert [tuple(r) for r in conn.execute(text("SELECT input, kernel FROM jobs ORDER BY id"))] == want


def test_a_deleted_jobs_or_sweeps_id_is_never_given_again(db_url: str, add_job) -> None:
    """SQLite gave a new job the greatest id plus one, a deleted job's: a worker still training the deleted one
    took the new job for it and stored its results there (a hunt saw sweep B's jobs hold sweep A's 85 epochs).
    0010 keeps the greatest id each table gave; the ids deleted before it are not known, so it starts at max."""
    from service.jobs.selection import Selection

    upgrade(db_url, "0009")
    columns = ("spec, status, method, input, lr, epochs, batch_size, seed, noise, created_at, attempts, "
               "cancel_requested, task_try, epochs_done")
    with engine_for(db_url).begin() as conn:  # ids as the database gives them (PostgreSQL: its sequence)
        old = [conn.execute(text(f"INSERT INTO jobs ({columns}) VALUES ('{{}}', 'created', 'adam', 'edge:6x8', 0.1, "
                                 "3, 2, 0, 0, '2026-01-01', 0, false, 0, 0) RETURNING id")).scalar_one()
               for _ in range(3)]
        conn.execute(text(f"DELETE FROM jobs WHERE id = {old[0]}"))  # before 0010: its floor is the greatest id
    upgrade(db_url)
    with writing(db_url) as conn:
        writes.delete_jobs(conn, Selection(ids=(old[-1],)))
        sweep = writes.create_sweep(conn, {}, 1)
        assert sweep == 1  # the first sweep, whatever the jobs' ids
        first = add_job(conn, sweep_id=sweep)
    with writing(db_url) as conn:
        writes.delete_jobs(conn, Selection(sweep=sweep))  # the newest job and the newest sweep
    with writing(db_url) as conn:
        again = writes.create_sweep(conn, {}, 1)
        second = add_job(conn, sweep_id=again)
    assert (first, second) == (old[-1] + 1, old[-1] + 2)  # were both old[-1]: the deleted job's id, twice over
    assert again == sweep + 1


def test_a_database_whose_identity_was_deleted_is_told_a_fix_that_works(db_url: str, tmp_path, redis_url) -> None:
    # it was told to "downgrade it to 0004 and upgrade it again": klab has no downgrade, and upgrade never goes back
    upgrade(db_url)
    with engine_for(db_url).begin() as conn:
        conn.execute(text("DELETE FROM database_identity"))
    env = clean_env(tmp_path / "home", db_url, KLAB_BROKER_URL=redis_url)
    out = klab(env, "submit", "--epochs", "1")  # its queue is named by the identity
    assert (out.returncode, out.stdout) == (2, "") and len(out.stderr.splitlines()) == 1, out.stderr
    said = f"klab: error: the {describe(db_url)} has no identity (its table database_identity is empty): give it one, "
    assert out.stderr.startswith(said) and "downgrade" not in out.stderr
    fix = out.stderr.removeprefix(said).strip()
    with engine_for(db_url).begin() as conn:
        conn.execute(text(fix))  # the SQL it names, as given, on either database
        identity = conn.execute(text("SELECT identity FROM database_identity")).scalar_one()
    assert len(identity) == 12 and int(identity, 16) >= 0
    assert klab(env, "submit", "--epochs", "1").returncode == 0


def test_jobs_queued_before_0002_are_known_as_sent_since_they_were_made(db_url: str) -> None:
    """0002's queued_at: a job queued before it is taken to have been sent when it was made (the reaper's look for
    messages lost reads it: a NULL never matched, and a lost job was never sent again); a job only created was never
    sent, and has none."""
    upgrade(db_url, "0001")
    columns = ("spec, status, method, input, lr, epochs, batch_size, seed, noise, created_at, attempts, "
               "cancel_requested, task_try, epochs_done")
    with engine_for(db_url).begin() as conn:
        for status in ("queued", "created"):
            conn.execute(text(f"INSERT INTO jobs ({columns}) VALUES ('{{}}', '{status}', 'adam', 'edge:6x8', 0.1, 3, "
                              "2, 0, 0, '2026-01-01', 0, false, 0, 0)"))
    upgrade(db_url, "0002")
    with engine_for(db_url).connect() as conn:
        assert [tuple(r) for r in conn.execute(text("SELECT status, queued_at IS NOT NULL FROM jobs ORDER BY id"))] \
            == [("queued", True), ("created", False)]
    upgrade(db_url)
