"""Promises of the read commands that only a real database can check: row limits, epochs of a job stopped
early, the JSON export of jobs, and the indexes behind `klab list`'s sorts, a task's lookups of its jobs and the
reaper's looks (EXPLAIN, on SQLite and PostgreSQL), with the invariant the last index relies on."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from harness import clean_env
from harness import klab as klab_proc
from sqlalchemy import event, select, update

from service.db import reads, sweeps, writes
from service.db.connect import HEAD, Reader
from service.db.engine import upgrade, writing
from service.db.reads import reading
from service.db.schema import jobs
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus


def stopped_early(conn: Any, fake_result, epochs_asked: int, trained: int) -> int:
    """A job asked for `epochs_asked` epochs that stopped after `trained` (as a cancelled job does)."""
    spec = JobSpec.parse({"input": "random:8x8", "kernel": "random:3x3", "epochs": epochs_asked})
    (job_id,) = writes.insert_jobs(conn, [writes.new_job(spec, start=JobStatus.RUNNING)])
    writes.cancel(conn, Selection(ids=(job_id,)))
    row, epoch_list = fake_result(spec, 0.3, JobStatus.CANCELLED.value, epochs=trained)
    writes.save_rows(conn, [(job_id, row, epoch_list)])
    return job_id


def test_limit_zero_lists_every_job_and_a_job_stopped_early_shows_epochs_done_of_asked(klab_db, add_job, klab_cli):
    from conftest import fake_result

    with writing() as conn:
        made = [add_job(conn) for _ in range(60)]
        waiting = add_job(conn, status="queued", epochs=10)
        early = stopped_early(conn, fake_result, 10, 3)
    code, out, _ = klab_cli("list", "--limit", "0", "--json")
    assert code == 0 and sorted(r["id"] for r in json.loads(out)) == sorted([*made, waiting, early])
    code, out, _ = klab_cli("list")  # the default: 50
    assert code == 0 and len([line for line in out.splitlines()[1:] if line.strip()]) == 50
    code, out, _ = klab_cli("list", "--limit", "1")
    row = out.splitlines()[1].split()
    assert row[0] == str(early) and "3/10" in row, row
    code, out, _ = klab_cli("list", "--status", "queued")
    row = out.splitlines()[1].split()
    assert row[0] == str(waiting) and "0/10" in row, row  # none done yet: 0 of 10, not the 10 asked
    code, out, _ = klab_cli("show", str(early), "--json")
    shown = json.loads(out)
    assert shown["epochs_done"] == 3 and shown["status"] == "cancelled"
    assert [e["epoch"] for e in shown["epochs"]] == [1, 2, 3]


def test_export_jobs_as_json_is_every_job_with_its_kernels_as_arrays(klab_db, add_job, klab_cli, tmp_path):
    import numpy as np

    with writing() as conn:
        made = [add_job(conn, relative=r, seed=seed) for r, seed in ((0.1, 1), (0.2, 2), (0.3, 3))]
    ids = made[::2]  # with one between them: a list of ids, not a range
    code, out, err = klab_cli("export", "--ids", ",".join(map(str, ids)), "--what", "jobs", "--format", "json")
    assert code == 0, err
    exported = json.loads(out)
    assert [j["id"] for j in exported] == ids
    for job, seed, relative in zip(exported, (1, 3), (0.1, 0.3)):  # each its own, as conftest.fake_result made it
        true = np.random.default_rng(seed).standard_normal((3, 3))
        assert (job["spec"]["seed"], job["true_kernel"], job["relative_error"]) == (seed, true.tolist(), relative)
        learned = np.array(job["learned_kernel"])
        assert np.linalg.norm(learned - true) / np.linalg.norm(true) == pytest.approx(relative), job["id"]
    with reading() as reader:
        for job in exported:
            stored = reads.result_of(reader, job["id"])
            for kernel in ("true_kernel", "initial_kernel", "learned_kernel", "lstsq_kernel"):  # all that show has
                assert job[kernel] == stored[kernel] and isinstance(job[kernel], list), kernel
            assert job["relative_error"] == stored["error"]["relative"]
            assert job["spec"]["seed"] == stored["spec"]["seed"]


def explain(dialect: str) -> str:
    """What asks this database for a statement's plan."""
    return "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "


def plan(reader: Reader, sql: str, params: dict) -> str:
    return "\n".join(str(list(r.values())) for r in reader.rows(explain(reader.dialect) + sql, params))


def statements(monkeypatch) -> list[tuple[str, dict]]:
    """The statements (and their parameters) every Reader runs from now on, as they run."""
    seen: list[tuple[str, dict]] = []
    real = Reader.rows

    def spy(self, sql, params=None):
        seen.append((sql, params or {}))
        return real(self, sql, params)

    monkeypatch.setattr(Reader, "rows", spy)
    return seen


def test_list_sorts_walk_an_index(klab_db, monkeypatch):
    """The newest-first default walks the primary key and --sort relative_error the index on err_relative:
    `klab list` stays fast on millions of jobs (README). Checked on the plans the database itself chooses, with
    enough rows (20,000, analysed) that a full scan would cost more."""
    spec = JobSpec.parse({"seed": 0})
    with writing() as conn:
        columns = writes.new_job(spec, start=JobStatus.QUEUED, queue="cpu")
        methods = ["adam", "d2l-manual", "d2l-sgd", "lstsq", "momentum"]
        writes.insert_columns(conn, {**columns, "seed": list(range(20_000)),
                                     "method": [methods[i % 5] for i in range(20_000)],
                                     "err_relative": [i / 7 % 1 if i % 3 else None for i in range(20_000)]},
                              20_000)
        conn.exec_driver_sql("ANALYZE")
    seen = statements(monkeypatch)
    with reading() as reader:
        for sort, index in (("-id", "pk_jobs"), ("relative_error", "ix_jobs_err_relative"),
                            ("-relative_error", "ix_jobs_err_relative"), ("method", "ix_jobs_method"),
                            ("-method", "ix_jobs_method")):  # klab's own words: no collation of bytes to lose it
            seen.clear()
            reads.list_jobs(reader, sort=sort, limit=20)
            (sql, params), = [(s, p) for s, p in seen if s.lstrip().upper().startswith("SELECT")]
            shown = plan(reader, sql, params)
            if reader.dialect == "sqlite":
                assert "TEMP B-TREE FOR ORDER BY" not in shown, (sort, shown)  # no sort of the whole table
                if sort != "-id":
                    assert f"USING INDEX {index}" in shown, (sort, shown)
            else:
                assert f"Index Scan Backward using {index}" in shown if sort.startswith("-") else index in shown, shown
                assert "Seq Scan" not in shown, (sort, shown)
        # descending, the jobs without a relative error last: the values by the index, then the rest, in the order
        # the whole table sorted in one statement gives (6,667 jobs have none)
        whole = [r["id"] for r in reads.list_jobs(reader, sort="-relative_error", limit=0)]
        for limit in (1, 13_333, 13_334, 13_400, 20_000):
            assert [r["id"] for r in reads.list_jobs(reader, sort="-relative_error", limit=limit)] == whole[:limit]
        # either way, the jobs without a relative error last and ties by id; the first 20 are the whole's first 20
        for sort, sign in (("relative_error", 1), ("-relative_error", -1)):
            rows = reads.list_jobs(reader, sort=sort, limit=0)
            assert len(rows) == 20_000 and sum(r["relative_error"] is None for r in rows) == 6_667
            ordered = sorted(rows, key=lambda r: (r["relative_error"] is None, sign * (r["relative_error"] or 0),
                                                  r["id"]))
            assert [r["id"] for r in rows] == [r["id"] for r in ordered], sort
            assert [r["id"] for r in reads.list_jobs(reader, sort=sort, limit=20)] == [r["id"] for r in rows[:20]]


def test_list_by_sweep_or_tag_reads_those_sweeps_jobs_by_their_index(klab_db, monkeypatch):
    """`klab list --sweep S` and `--tag T` find the sweeps first and read their jobs by ix_jobs_sweep_id. Asked in
    one statement, PostgreSQL priced a tag as naming half the jobs and walked them all newest first looking for
    theirs (2 to 3.5 s on 1,000,000 jobs for a tag of an old sweep or of none). 20,000 jobs in 200 sweeps, the
    table not analysed, the tagged sweep the oldest."""
    spec = JobSpec.parse({"seed": 0})
    with writing() as conn:
        made = [writes.create_sweep(conn, {"swept": {"seed": list(range(100))}, "fixed": {}}, 100,
                                    tags=["old"] if k == 0 else ["pair"] if k in (3, 5) else []) for k in range(200)]
        columns = writes.new_job(spec, start=JobStatus.QUEUED, queue="cpu")
        ids = writes.insert_columns(conn, {**columns, "seed": list(range(20_000)),
                                           "sweep_id": [made[i // 100] for i in range(20_000)]}, 20_000)
    seen = statements(monkeypatch)
    with reading() as reader:
        for asked in ({"tag": "old"}, {"sweep": made[0]}, {"sweep": made[0], "tag": "old"}):
            seen.clear()
            listed = reads.list_jobs(reader, limit=20, **asked)
            assert [r["id"] for r in listed] == ids[:100][::-1][:20], asked  # the old sweep's newest 20
            (sql, params), = [(q, p) for q, p in seen if "FROM jobs" in q]
            shown = plan(reader, sql, params)
            assert "ix_jobs_sweep_id" in shown, (asked, shown)
            assert "pk_jobs" not in shown and "Seq Scan" not in shown, (asked, shown)
        paired = sorted(r["id"] for r in reads.list_jobs(reader, tag="pair", limit=0))
        assert paired == [*ids[300:400], *ids[500:600]]  # a tag of two sweeps: the jobs of both
        seen.clear()
        assert reads.list_jobs(reader, tag="nope") == [] and reads.list_jobs(reader, sweep=made[1], tag="old") == []
        assert not [q for q, _ in seen if "FROM jobs" in q], seen  # no sweep named: no job read


def test_sweeps_count_the_jobs_of_the_newest_by_their_index(klab_db, monkeypatch):
    """`klab sweeps` shows the newest 50 sweeps and counts only their jobs, by ix_jobs_sweep_id: counting every
    sweep's jobs took 1.2 to 3.1 s on 1,000,000 jobs in 10,000 sweeps. 20,000 jobs in 200 sweeps, not analysed."""
    spec = JobSpec.parse({"seed": 0})
    with writing() as conn:
        made = [writes.create_sweep(conn, {"swept": {"seed": list(range(100))}, "fixed": {}}, 100) for _ in range(200)]
        columns = writes.new_job(spec, start=JobStatus.QUEUED, queue="cpu")
        ids = writes.insert_columns(conn, {**columns, "seed": list(range(20_000)),
                                           "sweep_id": [made[i // 100] for i in range(20_000)]}, 20_000)
        for k in range(1, 6):  # the newest five sweeps each with a count of its own: k jobs not yet queued
            first = 20_000 - 100 * (6 - k)
            conn.execute(update(jobs).where(jobs.c.id.in_(ids[first:first + k])).values(status="created"))
    seen = statements(monkeypatch)
    with reading() as reader:
        rows, older = sweeps.list_sweeps(reader, limit=5)
        assert ([r["id"] for r in rows], older) == (made[-5:], True)
        assert [r["by_status"] for r in rows] == [{"queued": 100 - k, "created": k} for k in range(1, 6)]
        (sql, params), = [(q, p) for q, p in seen if "FROM jobs" in q]
        shown = plan(reader, sql, params)
        assert "ix_jobs_sweep_id" in shown and "Seq Scan" not in shown, shown
        assert [r["id"] for r in sweeps.list_sweeps(reader, limit=199)[0]] == made[1:]
        assert sweeps.list_sweeps(reader, limit=200)[1] is False
        rows, older = sweeps.list_sweeps(reader)
        assert (len(rows), older, rows[0]["by_status"]) == (200, False, {"queued": 100})


def succeeded_before(conn: Any, columns: dict[str, Any]) -> dict[str, Any]:
    """20,000 jobs of `columns` that succeeded, the history a status is looked for in; returns `columns`."""
    ended = {"status": JobStatus.SUCCEEDED.value, "finished_at": datetime.now(UTC)}
    writes.insert_columns(conn, {**columns, **ended, "seed": list(range(20_000))}, 20_000)
    return columns


def listed_through(reader: Reader, seen: list[tuple[str, dict]], index: str, **how: Any) -> list[int]:
    """The ids reads.list_jobs(**how) lists, its statement's plan having been seen to read `index`."""
    seen.clear()
    ids = [r["id"] for r in reads.list_jobs(reader, **how)]
    (sql, params), = [(q, p) for q, p in seen if "FROM jobs" in q]
    shown = plan(reader, sql, params)
    assert index in shown, (how, shown)
    return ids


def test_list_by_a_status_not_ended_reads_the_unfinished_jobs_index(klab_db, monkeypatch):
    """`klab list --status queued` (or created, running) reads ix_jobs_unfinished: on 1,000,000 finished jobs it
    walked every one newest first (2.2 s without statistics, 0.75 s scanning with them), now 0.4 to 37 ms."""
    from service.db.schema import UNFINISHED

    assert str(UNFINISHED.compile(compile_kwargs={"literal_binds": True})) == f"jobs.{reads.UNFINISHED}"
    spec = JobSpec.parse({"seed": 0})
    with writing() as conn:
        columns = succeeded_before(conn, writes.new_job(spec, start=JobStatus.QUEUED, queue="cpu"))
        waiting = writes.insert_columns(conn, {**columns, "seed": list(range(5))}, 5)
    seen = statements(monkeypatch)
    with reading() as reader:
        for status, expected in (("queued", waiting[::-1]), ("running", [])):
            assert listed_through(reader, seen, "ix_jobs_unfinished", status=status, limit=20) == expected
        succeeded = reads.list_jobs(reader, status="succeeded", limit=20)
        assert len(succeeded) == 20 and {r["status"] for r in succeeded} == {JobStatus.SUCCEEDED.value}


def test_list_by_an_end_other_than_success_reads_the_ended_badly_index(klab_db, monkeypatch):
    """`klab list --status failed` (diverged, cancelled) reads ix_jobs_ended_badly: on 1,000,000 succeeded jobs
    it walked every one newest first (0.75 s, 1.35 s before an ANALYZE; the whole command takes 0.26 s now). The
    jobs end the ways the service ends them; running jobs asked to stop are in the index too, listed as running."""
    from conftest import fake_result

    from service.db.schema import ENDED_BADLY

    assert reads.ENDED_BADLY == ENDED_BADLY
    spec = JobSpec.parse({"seed": 0})
    with writing() as conn:
        columns = succeeded_before(conn, writes.new_job(spec, start=JobStatus.RUNNING, queue="cpu"))
        running = writes.insert_columns(conn, {**columns, "seed": list(range(7))}, 7)
        writes.fail(conn, running[:2], "broken")
        writes.stopped(conn, running[2:3])
        assert writes.cancel(conn, Selection(ids=tuple(running[3:5]))) == (0, 2)  # asked to stop: still running
        writes.save_rows(conn, [(running[5], *fake_result(spec, 0.5, JobStatus.DIVERGED.value))])
        conn.exec_driver_sql("ANALYZE")
    seen = statements(monkeypatch)
    with reading() as reader:
        for status, expected in (("failed", running[:2]), ("cancelled", running[2:3]), ("diverged", running[5:6])):
            for sort, order in (("-id", expected[::-1]), ("lr", expected)):
                assert listed_through(reader, seen, "ix_jobs_ended_badly", status=status, sort=sort) == order
        assert [r["id"] for r in reads.list_jobs(reader, status="running")] == [running[6], *running[4:2:-1]]
        succeeded = reads.list_jobs(reader, status="succeeded", limit=20)
        assert len(succeeded) == 20 and {r["status"] for r in succeeded} == {JobStatus.SUCCEEDED.value}


def test_a_sqlite_file_of_an_older_revision_upgrades_itself_with_its_jobs(tmp_path):
    """Not only the default file: any SQLite file is one user's, and upgrades itself on first use (PostgreSQL is
    refused instead: test_db.py)."""
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    upgrade(url, "0004")
    from harness import Db

    db = Db(url)
    try:
        db.execute("INSERT INTO jobs (id, spec, status, method, input, lr, epochs, batch_size, seed, noise, "
                   "created_at, attempts, cancel_requested, task_try, epochs_done) VALUES (7, '{}', 'queued', "
                   "'adam', 'edge:6x8', 0.1, 3, 2, 0, 0, '2026-01-01 00:00:00', 0, 0, 0, 0)")
    finally:
        db.close()
    out = klab_proc(clean_env(tmp_path / "home", url), "list", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["id"] for r in json.loads(out.stdout)] == [7]
    current = klab_proc(clean_env(tmp_path / "home", url), "db", "current")
    assert current.stdout.strip().endswith(f": revision {HEAD} (head)"), current.stdout


def test_a_task_finds_its_jobs_by_the_primary_key_on_a_table_not_yet_analysed(klab_db):
    """A claim, a heartbeat or a cancel check names a task's jobs by a list of ids (service.db.writes.ids_in),
    a heartbeat and a failure with the attempts each claim left (writes.held: running jobs). On a table the
    planner has no statistics of (a new sweep's rows, just copied in), PostgreSQL priced looking up 4,096 ids in
    the primary key above reading the whole table, and every claim of a sweep read all of it."""
    spec = JobSpec.parse({"seed": 0})
    with writing() as conn:
        ids = writes.insert_columns(conn, {**writes.new_job(spec, start=JobStatus.RUNNING, queue="cpu"),
                                           "seed": list(range(30_000))}, 30_000)
    task = ids[8192 : 8192 + 8192 : 2]  # 4,096 ids, every other one: a list, not a range
    with writing() as conn:
        writes.fail(conn, task[1:2], "ended")  # no longer running: not held
        conn.execute(update(jobs).where(jobs.c.id == task[0]).values(attempts=1))  # claimed again since
    with writing() as conn:
        looks = [(writes.ids_in(conn, jobs.c.id, task), task),
                 (writes.held(conn, task, [0] * 4095 + [1]), task[2:-1])]  # the last one's attempts are 0, not 1
        for where, found in looks:
            stmt = select(jobs.c.id).where(where)
            assert sorted(conn.execute(stmt).scalars().all()) == found
            compiled = stmt.compile(conn)
            params = tuple(compiled.params[k] for k in compiled.positiontup) if compiled.positional else compiled.params
            shown = "\n".join(str(r) for r in conn.exec_driver_sql(explain(conn.dialect.name) + str(compiled),
                                                                     params))
            if conn.dialect.name == "sqlite":
                assert "SCAN jobs" not in shown and "PRIMARY KEY" in shown, shown
            else:
                assert "Seq Scan" not in shown and "pk_jobs" in shown, shown


def test_a_reapers_looks_read_the_jobs_not_yet_ended_not_every_job_ever_run(klab_db):
    """Every worker's reaper looks, every few seconds, for running jobs whose worker died and queued jobs the
    broker lost (service.db.writes.reap, stranded). On a database of 1,000,000 finished jobs, reading all of them
    took 0.63 s a look on PostgreSQL; they read ix_jobs_unfinished (migration 0007), whose rows are the jobs not
    yet ended. Checked on the plans the database chooses for the statements the looks send."""
    spec = JobSpec.parse({"seed": 0})
    with writing() as conn:
        ids = writes.insert_columns(conn, {**writes.new_job(spec, start=JobStatus.RUNNING, queue="cpu"),
                                           "seed": list(range(20_000))}, 20_000)
        writes.fail(conn, ids[:-64], "ended")  # the history: jobs that ended, as most jobs of a database have
        lost = writes.insert_columns(conn, {**writes.new_job(spec, start=JobStatus.QUEUED, queue="cpu"),
                                            "seed": list(range(8))}, 8)  # queued an hour ago, no message carries
        elsewhere = writes.insert_columns(conn, {**writes.new_job(spec, start=JobStatus.QUEUED, queue="other"),
                                                 "seed": [0]}, 1)  # a queue these looks are not for
        conn.execute(update(jobs).where(jobs.c.id.in_([*lost, *elsewhere]))
                     .values(queued_at=datetime.now(UTC) - timedelta(hours=1)))
        writes.insert_columns(conn, {**writes.new_job(spec, start=JobStatus.QUEUED, queue="cpu"), "seed": [0]},
                              1)  # queued just now: its message is on its way
        conn.exec_driver_sql("ANALYZE")
    with writing() as conn:
        statements: list[tuple[str, Any]] = []

        def sent(_conn, _cursor, statement, parameters, _context, _many):
            statements.append((statement, parameters))

        event.listen(conn, "before_cursor_execute", sent)
        assert writes.reap(conn, lease=60, max_attempts=5) == []  # their leases are fresh
        carried = frozenset(lost[:2])  # a message still carries these: never sent again
        assert writes.stranded(conn, 60, ["cpu", "gpu"], carried) == [(i, "cpu") for i in lost[2:]]
        event.remove(conn, "before_cursor_execute", sent)
        assert len(statements) == 5, statements  # reap: cancel, fail, requeue; stranded: candidates, requeue
        for statement, parameters in statements:
            shown = "\n".join(str(r) for r in conn.exec_driver_sql(explain(conn.dialect.name) + statement,
                                                                    parameters))
            assert "ix_jobs_unfinished" in shown, (statement, shown)
            if conn.dialect.name == "postgresql":
                assert "Seq Scan" not in shown, shown


def test_a_job_has_a_finished_at_exactly_when_it_ended(klab_db):
    """ix_jobs_unfinished holds the jobs whose finished_at is empty, and the reaper reads them as the jobs not
    yet ended: every way a job starts, waits, runs and ends keeps the two the same. And every job that ended
    failed, diverged or cancelled has its mark, which ix_jobs_ended_badly reads."""
    from conftest import fake_result

    from service.db.reads import ENDED_BADLY

    spec = JobSpec.parse({"seed": 0})
    with writing() as conn:
        made = {start: writes.insert_columns(conn, {**writes.new_job(spec, start=start, queue="cpu"),
                                                   "seed": list(range(12))}, 12)
                for start in (JobStatus.CREATED, JobStatus.QUEUED, JobStatus.RUNNING)}
        created, queued, running = made[JobStatus.CREATED], made[JobStatus.QUEUED], made[JobStatus.RUNNING]
        writes.mark_queued(conn, created[:4])
        claimed = [r.id for r in writes.claim(conn, queued[:4], "host", "task-1", 1, lease=60)]
        assert len(claimed) == 4
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        writes.fail(conn, running[:2], "broken")
        writes.stopped(conn, running[2:4])
        assert writes.cancel(conn, Selection(ids=(*created[4:6], *queued[4:6], *claimed[:2]))) == (4, 2)
        writes.save_rows(conn, [(i, *fake_result(spec, 0.2, JobStatus.SUCCEEDED.value)) for i in running[4:6]])
        writes.save_rows(conn, [(i, *fake_result(spec, 0.2, JobStatus.DIVERGED.value)) for i in running[6:8]])
        conn.execute(update(jobs).where(jobs.c.id.in_(claimed[2:])).values(heartbeat_at=long_ago))
        # running jobs whose worker died: one that took down its last attempt, one a cancel was asked of
        conn.execute(update(jobs).where(jobs.c.id.in_(running[8:10])).values(heartbeat_at=long_ago, attempts=5))
        conn.execute(update(jobs).where(jobs.c.id.in_(running[10:])).values(heartbeat_at=long_ago,
                                                                            cancel_requested=True))
        # waiting jobs a cancel was asked of (a reaper before 0009 queued them so), ended by the claim that meets them
        conn.execute(update(jobs).where(jobs.c.id.in_(queued[8:10])).values(cancel_requested=True))
        quick = writes.trained_by("host", "task-3", 1, datetime.now(UTC))
        assert writes.fail(conn, queued[10:], "broken", attempts=[0, 0], quick=quick) == queued[10:]
    with writing() as conn:
        assert len(writes.reap(conn, lease=60, max_attempts=5)) == 2  # their worker died: queued again
        assert len(writes.claim(conn, queued[6:10], "host", "task-2", 1, lease=60)) == 2
        ended = dict(conn.execute(select(jobs.c.id, jobs.c.status).where(
            jobs.c.id.in_([*running[8:], *queued[8:]]))).all())
        statuses = dict(conn.exec_driver_sql("SELECT status, count(*) FROM jobs GROUP BY status").all())
        mismatched = conn.exec_driver_sql(
            "SELECT id, status, finished_at FROM jobs WHERE (finished_at IS NULL) <> "
            "(status IN ('created', 'queued', 'running'))").all()
        unmarked = conn.exec_driver_sql(  # ix_jobs_ended_badly holds them all (service.jobs.status.MARKS)
            f"SELECT id, status FROM jobs WHERE status IN ('failed', 'diverged', 'cancelled') AND NOT ({ENDED_BADLY})"
        ).all()
    failed, cancelled = JobStatus.FAILED.value, JobStatus.CANCELLED.value
    assert [ended[i] for i in (*running[8:], *queued[8:])] == [failed] * 2 + [cancelled] * 4 + [failed] * 2
    assert set(statuses) == {s.value for s in JobStatus}, statuses
    assert mismatched == [] and unmarked == []


def test_text_sorts_by_its_bytes_on_postgresql_of_a_languages_collation_as_on_sqlite(tmp_path, add_job, setenv):
    """`klab list --sort input` and `compare --group-by input` order text by its UTF-8 bytes on either database. A
    PostgreSQL database of a language's collation (ICU's `en` here; en_US.UTF-8, the postgres image's default,
    alike) put npy:a.npy before npy:B.npy and _ before B, where SQLite and a C-collated PostgreSQL put them after."""
    import uuid

    from conftest import _pg_admin_engine
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from service.db.engine import dispose_engines
    from service.db.groups import grouped

    inputs = ["npy:/d/a.npy", "npy:/d/B.npy", "npy:/d/_c.npy", "npy:/d/b.npy", "npy:/d/A.npy", "npy:/d/é.npy"]
    name, admin = f"klab_test_{uuid.uuid4().hex[:12]}", _pg_admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en' "
                          "LOCALE 'C.UTF-8'"))
    try:
        urls = [f"sqlite:///{tmp_path / 'klab.db'}", make_url(str(admin.url)).set(database=name).render_as_string(
            hide_password=False)]
        for url in urls:
            setenv(KLAB_DATABASE_URL=url)
            upgrade(url)
            with writing() as conn:
                for at, path in enumerate(inputs):
                    add_job(conn, relative=0.1, input=path, kernel=path.replace("/d/", "/k/"), seed=at)
                with conn.begin_nested():
                    assert conn.exec_driver_sql("SELECT 'a' < 'B'").scalar() == (url.startswith("postgresql")), url
            with reading() as reader:
                listed = [r["input"] for r in reads.list_jobs(reader, sort="input", limit=0)]
                backwards = [r["input"] for r in reads.list_jobs(reader, sort="-input", limit=0)]
                groups = [r["input"] for r in grouped(reader, Selection(), ["input"])]
                kernels = [r["kernel"] for r in reads.list_jobs(reader, sort="kernel", limit=0)]
                kernel_groups = [r["kernel"] for r in grouped(reader, Selection(), ["kernel"])]
            dispose_engines()
            by_bytes = sorted(inputs, key=lambda i: i.encode())
            assert listed == groups == by_bytes and backwards == by_bytes[::-1], url
            assert kernels == kernel_groups == [p.replace("/d/", "/k/") for p in by_bytes], url  # kernels too
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

