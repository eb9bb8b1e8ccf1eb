"""Quick tasks (worker.tasks): a task whose jobs all wait and take a second or less to train trains them without
claiming them, and writes each job's row once, when it ends, with what a claim would have written; whatever took
one of its jobs meanwhile (a cancel, a delete, another worker's claim or result) keeps it. SQLite and PostgreSQL,
the real task code in this process."""
from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import select, text, update

from service import defaults
from service.db import writes
from service.db.engine import writing
from service.db.schema import epochs, jobs
from service.jobs.problem import together, work
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus
from worker import tasks

BOOK = {"input": "edge:6x8", "kernel": "d2l", "epochs": 10, "lr": 0.03}
SETTLED = ("id", "task_id", "created_at", "started_at", "finished_at", "heartbeat_at", "queued_at", "train_seconds")
"""Columns that differ between two runs of the same jobs (when, and which task); every other is compared."""


def submit(n: int, **values) -> list[int]:
    with writing() as conn:
        return writes.insert_jobs(conn, [writes.new_job(JobSpec.parse({**BOOK, **values, "seed": s}),
                                                        start=JobStatus.QUEUED, queue="cpu") for s in range(n)])


def rows(ids: list[int]) -> list[dict]:
    with writing() as conn:
        return [dict(r._mapping) for r in conn.execute(select(jobs).where(jobs.c.id.in_(ids)).order_by(jobs.c.id))]


def history(ids: list[int]) -> list[tuple]:
    with writing() as conn:
        found = conn.execute(select(epochs.c.job_id, epochs.c.epoch, epochs.c.loss, epochs.c.mse)
                             .where(epochs.c.job_id.in_(ids)).order_by(epochs.c.job_id, epochs.c.epoch))
        return [(ids.index(r.job_id), *r[1:]) for r in found]


def count_updates(conn) -> None:
    """Count every UPDATE of a job row, by a trigger (the test's own table: the product has none)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("CREATE TABLE job_writes (job_id int)"))
        conn.execute(text("CREATE FUNCTION count_job_write() RETURNS trigger LANGUAGE plpgsql AS "
                          "$$ BEGIN INSERT INTO job_writes VALUES (NEW.id); RETURN NEW; END $$"))
        conn.execute(text("CREATE TRIGGER counted AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION "
                          "count_job_write()"))
    else:
        conn.execute(text("CREATE TABLE job_writes (job_id int)"))
        conn.execute(text("CREATE TRIGGER counted AFTER UPDATE ON jobs BEGIN "
                          "INSERT INTO job_writes VALUES (NEW.id); END"))


def writes_of(ids: list[int]) -> dict[int, int]:
    with writing() as conn:
        found = conn.execute(text("SELECT job_id, count(*) FROM job_writes GROUP BY job_id")).all()
    return {i: n for i, n in found if i in ids}


@pytest.mark.parametrize(("values", "jobs", "quick"), [
    ({}, defaults.BATCH_JOBS, True),  # the book's task: 10 ms of training
    ({"epochs": 10_000}, defaults.BATCH_JOBS, False),
    # tasks of a few tens of jobs that train for 1.4 s, step by step (test_faults' tasks held in hand)
    ({"input": "random:24x24", "kernel": "random:3x3", "epochs": 3000}, 10, False),
    ({"input": "random:12x12", "kernel": "random:3x3", "epochs": 3000}, 20, False),
    ({"method": "adam", "epochs": 1000}, 10, False),
    # storing is the most of these: 1.6 to 3.9 million epoch rows, 5 to 20 s (a hunt's, with real workers)
    ({"epochs": 400}, defaults.BATCH_JOBS, False),
    ({"input": "ones:1x2", "kernel": "[[1.0]]", "epochs": 950}, defaults.BATCH_JOBS, False),
    ({}, 20_000, False),  # klab requeue --batch-jobs 20000
    ({"epochs": 50}, defaults.BATCH_JOBS, True),  # 0.64 s, claim-less, on PostgreSQL
])
def test_a_task_of_about_a_second_or_less_is_quick(values, jobs, quick):
    from service.jobs.problem import build_problem

    spec = JobSpec.parse({**BOOK, **values})
    assert (work(together(build_problem(spec), spec), jobs) <= defaults.QUICK_WORK) is quick


def test_a_quick_task_writes_each_job_once_and_stores_what_a_claimed_task_stores(klab_db, monkeypatch) -> None:
    with writing() as conn:
        count_updates(conn)
    quick = submit(6, method="d2l-manual") + submit(2, method="adam")
    assert tasks.train_jobs(quick, "task-q", "host-q") == {"succeeded": 8}
    assert writes_of(quick) == {i: 1 for i in quick}  # stored queued, then ended: no claim between

    monkeypatch.setattr(defaults, "QUICK_WORK", 0.0)  # every task claims its jobs first, as before quick tasks
    claimed = submit(6, method="d2l-manual") + submit(2, method="adam")
    assert tasks.train_jobs(claimed, "task-c", "host-c") == {"succeeded": 8}
    assert writes_of(claimed) == {i: 2 for i in claimed}  # claimed, then ended

    for q, c in zip(rows(quick), rows(claimed), strict=True):
        assert (q["status"], q["attempts"], q["task_try"], q["worker_host"], q["task_id"]) == (
            "succeeded", 1, 0, "host-q", "task-q")
        assert all(isinstance(q[t], datetime) for t in ("started_at", "heartbeat_at", "finished_at"))
        assert q["started_at"] == q["heartbeat_at"] <= q["finished_at"]
        settled = set(SETTLED) | {"worker_host"}
        assert {k: v for k, v in q.items() if k not in settled} == {k: v for k, v in c.items() if k not in settled}
    assert history(quick) == history(claimed) and len(history(quick)) == 80


def test_what_took_a_quick_tasks_jobs_meanwhile_keeps_them(klab_db, caplog) -> None:
    """Between a quick task's read and its results: one job cancelled, one deleted, one claimed and one ended by
    another worker (a copy of the message). The task stores the other two alone, and ends nothing else."""
    ids = submit(6)
    with writing() as conn:
        peeked = writes.peek(conn, ids)
    assert [r.id for r in peeked] == ids and {r.status for r in peeked} == {"queued"}
    groups, failed = tasks.load(peeked)
    assert not failed and [g.ids for g in groups] == [ids]
    cancelled, deleted, running, done, *kept = ids
    with writing() as conn:
        assert writes.cancel(conn, Selection((cancelled,))) == (1, 0)
        conn.execute(jobs.delete().where(jobs.c.id == deleted))
        assert [r.id for r in writes.claim(conn, [running], "other", "t2", 0, lease=60)] == [running]
    assert tasks.train_jobs([done], "t3", "other") == {"succeeded": 1}
    with writing() as conn:
        assert set(writes.stopping(conn, ids, [0] * 6, quick=True)[1]) == {cancelled, deleted, running, done}
    group = groups[0]
    group.quick = writes.trained_by("mine", "t1", 0, writes.utcnow())
    with caplog.at_level("WARNING", logger="worker.tasks"):
        assert tasks.train_group(group) == {"succeeded": 2}
    assert "4 of 6 job(s) of this quick task no longer waited when they ended" in caplog.text
    found = {r["id"]: r for r in rows(ids)}
    assert deleted not in found
    def seen(i: int) -> tuple:
        return found[i]["status"], found[i]["worker_host"], found[i]["attempts"]

    assert [seen(i) for i in (cancelled, running, done)] == [
        ("cancelled", None, 0), ("running", "other", 1), ("succeeded", "other", 1)]
    assert [seen(i) for i in kept] == [("succeeded", "mine", 1)] * 2
    with writing() as conn:
        counted = dict(conn.execute(select(epochs.c.job_id, text("count(*)")).group_by(epochs.c.job_id)).all())
    assert counted == {done: 10, **{i: 10 for i in kept}}  # none of the cancelled, the deleted or the running


def test_a_job_claimed_and_sent_back_meanwhile_is_no_longer_a_quick_tasks(klab_db) -> None:
    """Between a quick task's read and its results, another worker claims a job, streams an epoch and dies, and the
    reaper sends the job again: queued as the task read it, but by a claim the task never held. The task leaves it to
    its new message, and stores the others: matched by status alone, it took the job as its own, met the dead
    worker's epoch, and its whole group rolled back and ended failed."""
    ids = submit(3)
    with writing() as conn:
        peeked = writes.peek(conn, ids)
    groups, failed = tasks.load(peeked)
    assert not failed and [g.ids for g in groups] == [ids]
    taken = ids[0]
    with writing() as conn:
        (row,) = writes.claim(conn, [taken], "dead", "t0", 0, lease=60)
        assert writes.streamed(conn, taken, row.attempts, [{"epoch": 1, "loss": 9.0, "mse": 9.0, "kernel_error": 9.0}],
                               1)
        conn.execute(update(jobs).where(jobs.c.id == taken).values(heartbeat_at=datetime(2000, 1, 1)))
        assert writes.reap(conn, lease=60, max_attempts=5) == [(taken, "cpu")]
    group = groups[0]
    group.quick = writes.trained_by("mine", "t1", 0, writes.utcnow())
    assert tasks.train_group(group) == {"succeeded": 2}
    assert [(r["status"], r["worker_host"], r["attempts"]) for r in rows(ids)] == [
        ("queued", "dead", 1), ("succeeded", "mine", 1), ("succeeded", "mine", 1)]


def test_a_quick_task_that_cannot_load_a_job_fails_it_as_a_claimed_one_would(klab_db) -> None:
    ids = submit(3)
    with writing() as conn:  # a stored spec that no longer parses (an older kernel-lab's, a hand edit)
        conn.execute(update(jobs).where(jobs.c.id == ids[0]).values(spec={**BOOK, "epochs": -1}))
    assert tasks.train_jobs(ids, "t", "h") == {"failed": 1, "succeeded": 2}
    bad = rows(ids)[0]
    assert (bad["status"], bad["attempts"], bad["worker_host"]) == ("failed", 1, "h")
    assert bad["error_message"].startswith("bad input: epochs")


def test_jobs_each_with_a_random_input_of_their_own_count_each_inputs_analysis(klab_db) -> None:
    """2,048 jobs of random 24x24 inputs (one per seed) take a second or more to load and train, each input built and
    analysed: not quick. The same jobs on one input are."""
    for values, quick in (({"input": "random:24x24", "kernel": "random:3x3"}, False), ({"noise": 0.1}, True)):
        ids = submit(2048, **values)
        with writing() as conn:
            groups, failed = tasks.load(writes.peek(conn, ids))
        assert not failed and (sum(g.work for g in groups) <= defaults.QUICK_WORK) is quick, values


@pytest.mark.parametrize("beside", [0, 1], ids=["alone", "beside a new job"])
def test_a_job_sent_again_with_the_epochs_a_dead_worker_streamed_has_them_replaced(klab_db, beside) -> None:
    """A job trained alone writes its epochs as it goes; its worker dies, the reaper sends it again, queued. A quick
    task that trains it then replaces those epochs (it took them for none, and ended failed on their key), alone or
    in a batch with a job never claimed (whose epochs it may write as new: not the whole batch's)."""
    job, *fresh = submit(1 + beside)
    with writing() as conn:
        (row,) = writes.claim(conn, [job], "dead", "t0", 0, lease=60)
        assert writes.streamed(conn, job, row.attempts, [{"epoch": e, "loss": 9.0, "mse": 9.0, "kernel_error": 9.0}
                                                         for e in (1, 2, 3)], 3)
        conn.execute(update(jobs).where(jobs.c.id == job).values(heartbeat_at=datetime(2000, 1, 1)))
        assert writes.reap(conn, lease=60, max_attempts=5) == [(job, "cpu")]
    assert tasks.train_jobs([job, *fresh], "t1", "h") == {"succeeded": 1 + beside}
    stored, *_ = rows([job])
    assert (stored["status"], stored["attempts"], stored["error_message"]) == ("succeeded", 2, None)
    assert [e[1] for e in history([job])] == list(range(1, 11)) and 9.0 not in [e[2] for e in history([job])]


def test_jobs_sent_again_are_claimed_first(klab_db) -> None:
    """A reaper's messages and Redis's given-back ones (`again`): each claim counts an attempt, so a job whose
    workers die KLAB_MAX_ATTEMPTS times ends failed, where a quick task's death would count none."""
    with writing() as conn:
        count_updates(conn)
    ids = submit(3)
    assert tasks.train_jobs(ids, "t", "h", again=True) == {"succeeded": 3}
    assert writes_of(ids) == {i: 2 for i in ids}  # claimed, then ended
    assert [r["attempts"] for r in rows(ids)] == [1, 1, 1]


@pytest.mark.parametrize("why", ["running", "cancel asked"])
def test_a_task_with_a_job_a_claim_must_look_at_claims_them_all(klab_db, why) -> None:
    """A job running (its lease may have run out), or waiting with a cancel asked: the task goes through the claim,
    which takes back or ends those, as it always did."""
    ids = submit(3)
    with writing() as conn:
        if why == "running":
            writes.claim(conn, ids[:1], "dead", "t0", 0, lease=60)
            conn.execute(update(jobs).where(jobs.c.id == ids[0]).values(heartbeat_at=datetime(2000, 1, 1)))
        else:
            conn.execute(update(jobs).where(jobs.c.id == ids[0]).values(cancel_requested=True))
    ended = tasks.train_jobs(ids, "t1", "h")
    assert ended == ({"succeeded": 3} if why == "running" else {"succeeded": 2})
    first = rows(ids)[0]
    assert (first["status"], first["attempts"]) == (("succeeded", 2) if why == "running" else ("cancelled", 0))
    assert [r["attempts"] for r in rows(ids)[1:]] == [1, 1]


def test_a_claimed_task_whose_claim_takes_fewer_jobs_than_it_read_loads_those_it_took(klab_db, monkeypatch) -> None:
    """A task too long to be quick reads its jobs waiting and loads them, then claims them: a job cancelled between
    the read and the claim is not taken, and the task trains the others alone (its loaded groups, which hold the
    cancelled job, are not used: used, they end the task in a KeyError; no test held this)."""
    monkeypatch.setattr(defaults, "QUICK_WORK", 0.0)
    ids = submit(3)
    real = tasks.claim

    def claim_after_a_cancel(*args, **kwargs):
        with writing() as conn:
            assert writes.cancel(conn, Selection((ids[0],))) == (1, 0)
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "claim", claim_after_a_cancel)
    assert tasks.train_jobs(ids, "t", "h") == {"succeeded": 2}
    assert [(r["status"], r["attempts"], r["epochs_done"]) for r in rows(ids)] == [
        ("cancelled", 0, 0), ("succeeded", 1, 10), ("succeeded", 1, 10)]
    assert [at for at, *_ in history(ids)] == [1] * 10 + [2] * 10  # the second and third jobs, 10 epochs each


def test_a_quick_tasks_read_of_its_jobs_takes_no_write_lock(klab_db) -> None:
    """A worker frozen (SIGSTOP, a paused machine) while it reads its task's jobs held SQLite's one write lock, so
    every other worker's reaper waited on it and jobs it should have sent again as stranded stayed queued."""
    import sqlite3

    from service.db.engine import peeking

    ids = submit(3)
    with peeking() as conn:
        assert [r.id for r in writes.peek(conn, ids)] == ids  # the read is under way: its snapshot held
        if conn.dialect.name == "sqlite":
            other = sqlite3.connect(conn.engine.url.database, timeout=0.2, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # another writer: "database is locked" if the read held the lock
                other.execute("UPDATE jobs SET queued_at = queued_at WHERE id = ?", (ids[0],))
                other.execute("COMMIT")
            finally:
                other.close()
        else:
            with writing() as other:  # PostgreSQL's reads never held a lock a writer waits on: one would fail here
                other.exec_driver_sql("SET LOCAL lock_timeout = '2s'")  # (it waited for the test's timeout)
                done = other.execute(update(jobs).where(jobs.c.id == ids[0]).values(queued_at=jobs.c.queued_at))
                assert done.rowcount == 1


def test_a_task_counts_only_the_jobs_it_ended(klab_db) -> None:
    """A job that another worker claimed before this task could fail it is none of this task's counts (no
    "failed: 1", nor a count of 0)."""
    (job,) = submit(1)
    with writing() as conn:
        assert [r.id for r in writes.claim(conn, [job], "other", "t0", 0, lease=60)] == [job]
    assert tasks.trained([], [(job, "could not load it")], {job: 0}, None) == {}
    assert rows([job])[0]["status"] == "running"


def test_a_task_of_groups_each_quick_but_together_not_claims_its_jobs(klab_db, monkeypatch) -> None:
    """What a task trains is the sum of its groups' work: two groups under QUICK_WORK each, over it together, are
    claimed and held by a heartbeat, not trained unclaimed for longer than a quick task's second."""
    from service.jobs.problem import build_problem

    each = [work(together(build_problem(s), s), 2) for s in (JobSpec.parse({**BOOK, "input": i})
                                                              for i in ("edge:6x8", "edge:6x9"))]
    monkeypatch.setattr(defaults, "QUICK_WORK", 1.5 * max(each))
    assert sum(each) > defaults.QUICK_WORK
    with writing() as conn:
        count_updates(conn)
    ids = submit(2) + submit(2, input="edge:6x9")
    assert tasks.train_jobs(ids, "t", "h") == {"succeeded": 4}
    assert writes_of(ids) == {i: 2 for i in ids}  # claimed, then ended


def test_a_task_of_ids_that_are_not_whole_numbers_is_refused(klab_db) -> None:
    """A message made by hand: True (and 1.0) are no job ids, though Python takes them for 1."""
    (job,) = submit(1)
    assert job == 1
    for ids in ([True], [1.0], ["1"], "1", [[1]]):
        assert tasks.train(ids) == {}, ids
    assert rows([job])[0]["status"] == JobStatus.QUEUED.value
