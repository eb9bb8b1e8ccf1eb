"""Leases (worker/lease.py): a live worker keeps its jobs however long they train, a redelivered message of
jobs alive elsewhere does nothing, a worker frozen past its lease writes nothing into the job another one
finished, nor stores or fails a batched job another one holds, a job that kills its workers ends failed, and a
task that finds the database away waits 0.5 s, doubling, up to 30 s. Real workers, a real broker of the test's
own, PostgreSQL."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import timedelta

import pytest
from harness import klab, service_env, tails, wait_until

from service import defaults

pytestmark = pytest.mark.timeout(300)

LEASE = 2
LONG_JOB = ("--input", "random:3x96x96", "--kernel", "random:4x3x5x5", "--method", "adam", "--lr", "0.001",
            "--epochs", "100000")
"""One job that trains until it is cancelled (0.3 to 1 s a hundred epochs on the machines seen)."""
TRAINED_THROUGH = 600
"""Seconds to wait for 2,000 of its epochs to be trained through: 6 to 20 s alone, 25 s beside three busy processes
on the two cores; a bound on a failure, never a wait of a test that passes. (The test's workers once trained with a
torch thread per core, which stall each other where other processes share the cores: 109 s so, 1,679 epochs after
600 s in CI; they train with one now, harness.WorkerProcess.) The tests that wait so have a pytest timeout above
it (TRAINED_TIMEOUT): under the module's 300 s, pytest-timeout ended them first."""
TRAINED_TIMEOUT = TRAINED_THROUGH + 300


def one(env: dict[str, str], *args: str) -> int:
    out = klab(env, "submit", "--json", *args)
    assert out.returncode == 0, out.stderr
    (job_id,) = json.loads(out.stdout)["ids"]
    return job_id


def freeze(worker, db) -> None:
    """SIGSTOP a worker between two of its transactions, never inside one (where it would hold row locks)."""
    def busy() -> int:  # connections to the test's database inside a transaction, but this one
        return db.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND pid <> pg_backend_pid() AND state <> 'idle'")

    def frozen() -> bool:
        os.killpg(worker.proc.pid, signal.SIGSTOP)
        if busy() == 0:
            return True
        os.killpg(worker.proc.pid, signal.SIGCONT)
        return False

    wait_until(frozen, 30, f"the worker {worker.name} was always inside a transaction", every=0.05)


def test_backoff_is_half_a_second_doubling_to_thirty():
    from worker.lease import backoff

    assert [backoff(n) for n in range(9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff(10_000) == 30.0
    # the README's numbers, read from the README, are the code's
    readme = (defaults.__file__.rsplit("/service/", 1)[0] + "/README.md")
    with open(readme) as f:
        assert "tries again with backoff (0.5 s, doubling up to 30 s)" in f.read()


def test_a_job_training_longer_than_its_lease_on_a_live_worker_is_never_taken_back(tmp_path, pg_db, redis_server,
                                                                                  worker_procs):
    """The heartbeat renews the lease: while another worker's reaper looks every second, a job that trains
    for three leases stays with its worker, is claimed once and trained once."""
    url, db = pg_db
    env = service_env(tmp_path, url, redis_server().url(), KLAB_LEASE_SECONDS=str(LEASE))
    workers = [worker_procs(env, name).wait_ready() for name in ("one", "two")]  # the idle one only reaps
    job = one(env, *LONG_JOB)
    wait_until(lambda: db.statuses() == {"running": 1}, 60, lambda: db.statuses())
    first_host = db.scalar("SELECT worker_host FROM jobs WHERE id = :j", j=job)

    def trained_for() -> float:
        (started, beat, status), = db.rows("SELECT started_at, heartbeat_at, status FROM jobs WHERE id = :j", j=job)
        assert status in ("queued", "running"), status
        return (beat - started).total_seconds() if started and beat else 0.0

    wait_until(lambda: trained_for() > 3 * LEASE, 120, lambda: (db.rows("SELECT * FROM jobs"), tails(*workers)()))
    (status, attempts, host), = db.rows("SELECT status, attempts, worker_host FROM jobs WHERE id = :j", j=job)
    assert (status, attempts, host) == ("running", 1, first_host)
    assert klab(env, "cancel", str(job)).returncode == 0
    wait_until(lambda: db.statuses() == {"cancelled": 1}, 60, lambda: db.statuses())
    assert db.scalar("SELECT attempts FROM jobs WHERE id = :j", j=job) == 1
    for w in workers:
        assert "re-queued" not in w.text(), w.text()[-2000:]


def test_a_redelivered_message_of_jobs_alive_elsewhere_claims_nothing(tmp_path, pg_db, redis_server, worker_procs):
    from service import broker as brokers
    from service.db.reads import identity

    url, db = pg_db
    server = redis_server()
    env = service_env(tmp_path, url, server.url())
    first = worker_procs(env, "first").wait_ready()
    job = one(env, *LONG_JOB)
    wait_until(lambda: db.statuses() == {"running": 1}, 60, lambda: db.statuses())
    second = worker_procs(env, "second").wait_ready()
    # a second copy of the job's message (klab requeue --queued, a reaper's), then the very message again, as Redis
    # redelivers one after its visibility timeout: the same task id, try 0
    app = brokers.client(server.url())
    brokers.publish(app, [("cpu", [job])], identity(url))
    wait_until(lambda: "succeeded in" in second.text(), 60, tails(second))
    task_id = db.scalar("SELECT task_id FROM jobs WHERE id = :j", j=job)
    app.send_task(brokers.TASK_TRAIN, args=[[job]], queue=brokers.routed("cpu", identity(url)), task_id=task_id)
    wait_until(lambda: second.text().count("succeeded in") == 2, 60, tails(second))
    ended = re.findall(r"Task klab\.train\[([^\]]+)\] succeeded in [0-9.]+s: \{\}", second.text())
    assert len(ended) == 2 and ended[1] == task_id, second.text()[-2000:]  # each claimed nothing, trained nothing
    (status, attempts, host), = db.rows("SELECT status, attempts, worker_host FROM jobs WHERE id = :j", j=job)
    assert (status, attempts) == ("running", 1) and host.startswith("first@")
    assert klab(env, "cancel", str(job)).returncode == 0
    wait_until(lambda: db.statuses() == {"cancelled": 1}, 60, tails(first))


def test_a_message_sent_again_has_its_quick_jobs_claimed_first(tmp_path, pg_db, redis_server, worker_procs):
    """A message sent again (a reaper's, `klab requeue --queued`) goes through the claim, which counts an attempt
    against KLAB_MAX_ATTEMPTS, even for jobs a quick task would train unclaimed: its job is written when claimed and
    when ended, a first message's quick job once."""
    from test_quick import count_updates

    from service import broker as brokers
    from service.db import writes
    from service.db.engine import dispose_engines, writing
    from service.db.reads import identity
    from service.jobs.spec import JobSpec
    from service.jobs.status import JobStatus

    url, db = pg_db
    server = redis_server()
    env = service_env(tmp_path, url, server.url())
    first = one(env, "--epochs", "2")
    with writing(url) as conn:  # queued, its message not sent (as the reaper finds a job it sends again)
        (again,) = writes.insert_jobs(conn, [writes.new_job(JobSpec.parse({"epochs": 2}), start=JobStatus.QUEUED,
                                                             queue="cpu")])
        count_updates(conn)  # every UPDATE of a job row from now on
    dispose_engines()
    brokers.publish(brokers.client(server.url()), [("cpu", [again])], identity(url), again=True)
    w = worker_procs(env, "w").wait_ready()
    wait_until(lambda: db.statuses() == {"succeeded": 2}, 60, tails(w))
    counted = dict(db.rows("SELECT job_id, count(*) FROM job_writes GROUP BY job_id"))
    assert counted[first] == 1 and counted[again] >= 2, counted  # claimed, ended (and any heartbeat between)
    assert db.rows("SELECT attempts FROM jobs ORDER BY id") == [(1,), (1,)]


@pytest.mark.timeout(TRAINED_TIMEOUT)
def test_a_worker_stopped_past_its_lease_writes_nothing_into_the_job_another_worker_finished(tmp_path, pg_db,
                                                                                          redis_server, worker_procs):
    """A worker frozen for longer than its lease (SIGSTOP here; a paused machine, a swap storm) while it trains a
    long job, whose epochs it writes as they come: another worker's reaper sends the job again, that worker
    trains it through and stores it. The first, resumed, finds at its next write that the job is no longer its
    claim's, stops training it and stores nothing: the result and every epoch stay as the second stored them."""
    url, db = pg_db
    env = service_env(tmp_path, url, redis_server().url(), KLAB_LEASE_SECONDS=str(LEASE))
    first = worker_procs(env, "first").wait_ready()
    epochs = 2000  # seconds of training: the freeze below must find the job still training (400: 1.2 s on a fast
    # machine, as much as starting the freeze can take)
    job = one(env, *LONG_JOB[:-1], str(epochs))
    wait_until(lambda: (db.scalar("SELECT epochs_done FROM jobs WHERE id = :j", j=job) or 0) > 0, 60,
               lambda: (db.rows("SELECT status, epochs_done FROM jobs"), tails(first)()))

    freeze(first, db)
    try:
        second = worker_procs(env, "second").wait_ready()  # its reaper finds the lease run out
        wait_until(lambda: db.rows("SELECT status, attempts FROM jobs WHERE id = :j", j=job)[0] == ("succeeded", 2),
                   TRAINED_THROUGH,
                   lambda: (db.rows("SELECT status, attempts, epochs_done FROM jobs"), tails(second)()))
    finally:
        os.killpg(first.proc.pid, signal.SIGCONT)
    host = db.scalar("SELECT worker_host FROM jobs WHERE id = :j", j=job)
    history = "SELECT epoch, loss, mse, kernel_error FROM epochs WHERE job_id = :j ORDER BY epoch"
    stored = db.rows(history, j=job)
    assert host.startswith("second@") and [e[0] for e in stored] == list(range(1, epochs + 1))
    wait_until(lambda: "succeeded in" in first.text(), 60, tails(first))
    assert re.search(rf"job {job} is no longer this worker's .*: stopped training it, nothing stored",
                     first.text()), first.text()[-2000:]
    assert re.search(r"Task klab\.train\[[^\]]+\] succeeded in [0-9.]+s: \{\}", first.text()), first.text()[-2000:]
    (status, done, worker), = db.rows("SELECT status, epochs_done, worker_host FROM jobs WHERE id = :j", j=job)
    assert (status, done, worker) == ("succeeded", epochs, host)
    assert db.rows(history, j=job) == stored


@pytest.mark.timeout(TRAINED_TIMEOUT)
def test_a_worker_stopped_past_its_lease_neither_stores_nor_fails_a_batched_job_another_worker_holds(
        tmp_path, pg_db, redis_server, worker_procs):
    """A worker frozen past its lease while it trains two jobs as one batch, one of which is cancelled meanwhile:
    another worker's reaper sends them again, and that worker claims the other job alone and writes its epochs
    as they come. Frozen in turn, it leaves the first to finish the batch: the first stores nothing of the job the
    second holds, nor fails it (where once its result met the second's epochs, and the whole batch was failed),
    and the second, resumed, trains the job through and stores it."""
    url, db = pg_db
    broker_url = redis_server().url()
    # the first never reaps (its lease is long): only the second's reaper takes the batch back
    first = worker_procs(service_env(tmp_path, url, broker_url, KLAB_LEASE_SECONDS="600"), "first").wait_ready()
    env = service_env(tmp_path, url, broker_url, KLAB_LEASE_SECONDS=str(LEASE))
    epochs = 2000  # seconds of training for the second worker: at 300 a fast machine (0.3 s a hundred epochs) had
    # trained the job through before the freeze below found it between two transactions
    assert klab(env, "sweep", *LONG_JOB[:-1], str(epochs), "--seed", "0..1").returncode == 0
    kept, cancelled = sorted(db.scalar("SELECT array_agg(id) FROM jobs"))
    wait_until(lambda: db.statuses() == {"running": 2}, 60, lambda: (db.statuses(), tails(first)()))
    freeze(first, db)
    second = None
    try:
        assert klab(env, "cancel", str(cancelled)).returncode == 0
        second = worker_procs(env, "second").wait_ready()  # its reaper finds the leases run out
        wait_until(lambda: db.scalar("SELECT count(*) FROM epochs WHERE job_id = :j", j=kept), 120,
                   lambda: (db.rows("SELECT id, status, attempts FROM jobs"), tails(second)()))
        freeze(second, db)
        assert db.rows("SELECT id, status, attempts FROM jobs ORDER BY id") == [
            (kept, "running", 2), (cancelled, "cancelled", 1)]
        os.killpg(first.proc.pid, signal.SIGCONT)
        wait_until(lambda: "succeeded in" in first.text(), 120, tails(first))
        assert "2 of 2 job(s) were no longer this worker's" in first.text(), first.text()[-2000:]
        assert re.search(r"Task klab\.train\[[^\]]+\] succeeded in [0-9.]+s: \{\}", first.text()), first.text()[-2000:]
        assert db.rows("SELECT status, attempts, error_message FROM jobs WHERE id = :j", j=kept) == [
            ("running", 2, None)]
    finally:
        for worker in (first, second):
            if worker is not None:
                os.killpg(worker.proc.pid, signal.SIGCONT)
    wait_until(lambda: db.statuses() == {"succeeded": 1, "cancelled": 1}, TRAINED_THROUGH,
               lambda: (db.rows("SELECT id, status, attempts, error_message FROM jobs"), tails(first, second)()))
    # the second trains it through; or, frozen past its own lease (or its heartbeat starved on a loaded machine),
    # its reaper sent it again, and a later claim of either worker trained it through
    (attempts, done), = db.rows("SELECT attempts, epochs_done FROM jobs WHERE id = :j", j=kept)
    assert attempts >= 2 and done == epochs
    assert db.scalar("SELECT array_agg(epoch ORDER BY epoch) FROM epochs WHERE job_id = :j", j=kept) == list(
        range(1, epochs + 1))


def test_a_job_whose_workers_die_max_attempts_times_ends_failed_and_is_not_sent_again(tmp_path, pg_db,
                                                                                     redis_server, worker_procs):
    url, db = pg_db
    env = service_env(tmp_path, url, redis_server().url(), KLAB_LEASE_SECONDS=str(LEASE), KLAB_MAX_ATTEMPTS="2",
                      KLAB_VISIBILITY_TIMEOUT="3600")
    job = one(env, *LONG_JOB)
    for n in (1, 2):
        doomed = worker_procs(env, f"doomed{n}").wait_ready()
        wait_until(lambda n=n: db.rows("SELECT status, attempts FROM jobs")[0] == ("running", n), 120,
                   lambda doomed=doomed: (db.rows("SELECT status, attempts FROM jobs"), tails(doomed)()))
        doomed.kill()  # SIGKILL, as the out-of-memory killer would
    reaper = worker_procs(env, "reaper").wait_ready()
    wait_until(lambda: db.statuses() == {"failed": 1}, 60, lambda: (db.statuses(), tails(reaper)()))
    (message, attempts), = db.rows("SELECT error_message, attempts FROM jobs WHERE id = :j", j=job)
    assert message == "its worker stopped answering 2 times (KLAB_MAX_ATTEMPTS)" and attempts == 2
    # not sent again: nothing waits on the broker for it, and the reaper's worker never claims it
    assert "re-queued" not in reaper.text()
    other = one(env, "--epochs", "2")  # the live worker takes what comes next, and only that
    wait_until(lambda: db.scalar("SELECT status FROM jobs WHERE id = :j", j=other) == "succeeded", 60,
               tails(reaper))
    assert db.scalar("SELECT attempts FROM jobs WHERE id = :j", j=job) == 2


def test_a_task_that_finds_the_database_away_waits_half_a_second_doubling(tmp_path, pg_db, redis_server,
                                                                          worker_procs):
    """Each task's tries are logged with their wait: for every task, the waits are 0.5, 1, 2, 4 ... s in order,
    and the log's own timestamps show the task waited that long before trying again."""
    from proxy import Proxy
    from sqlalchemy.engine import make_url

    url, db = pg_db
    pg = make_url(url)
    with Proxy((pg.host or "127.0.0.1", pg.port or 5432)) as proxy:
        through = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        env = service_env(tmp_path, url, redis_server().url())
        w = worker_procs({**env, "KLAB_DATABASE_URL": through}, "patient").wait_ready()
        proxy.cut()
        job = one(env, "--epochs", "3")
        tries = re.compile(r"^\[(\S+ \S+): WARNING/\S+\] database unreachable \(\w+\); task (\S+) retrying in "
                           r"([0-9.]+) s$", re.M)
        wait_until(lambda: len(tries.findall(w.text())) >= 4, 60, tails(w))  # 0.5 + 1 + 2 s, then the 4th
        proxy.restore()
        wait_until(lambda: db.statuses() == {"succeeded": 1}, 60, tails(w))
    by_task: dict[str, list[tuple[float, float]]] = {}
    for stamp, task, wait in tries.findall(w.text()):
        at = time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")) + int(stamp.split(",")[1]) / 1000
        by_task.setdefault(task, []).append((at, float(wait)))
    assert len(by_task) == 1, by_task  # one task, retried: not a new task per try
    (seen,) = by_task.values()
    assert [wait for _, wait in seen][:4] == [0.5, 1.0, 2.0, 4.0]
    for (at, wait), (later, _) in zip(seen, seen[1:]):
        assert later - at >= wait - 0.05, seen  # it did wait before trying again
    assert db.scalar("SELECT attempts FROM jobs WHERE id = :j", j=job) == 1
    assert db.scalar("SELECT task_try FROM jobs WHERE id = :j", j=job) == len(seen)  # the try that trained it


def test_a_workers_own_messages_are_read_for_the_ids_they_carry_and_none_made_by_hand_stops_the_reaper():
    """The reaper leaves the jobs of messages its worker holds (in_hand): a message made by hand, its arguments
    not a list of ids, raised KeyError there and stopped every round of resending stranded jobs while it was held;
    a bool was read as job 1."""
    from celery.contrib.testing.mocks import TaskMessage
    from celery.worker import state
    from celery.worker.request import Request

    import worker.tasks  # noqa: F401 - klab.train registered, as in a worker
    from worker.app import app
    from worker.lease import in_hand

    held = [Request(TaskMessage("klab.train", args=a), app=app)
            for a in ([[5, 6, True]], {"job_ids": [3]}, [], ["x"], [[7], {"again": True}])]
    held.append(Request(TaskMessage("celery.accumulate", args=[[9]]), app=app))  # not klab's: carries no job
    for request in held:
        state.task_reserved(request)
    try:
        assert in_hand() == {5, 6, 7}
    finally:
        for request in held:
            state.task_ready(request)
    assert in_hand() == frozenset()


def test_the_reaper_never_sends_again_a_job_whose_message_its_worker_holds(klab_db, redis_url, setenv):
    """Jobs queued past KLAB_STRANDED_SECONDS with no message on the broker are sent again, but not those of a
    message this worker holds (in_hand: received, not yet acknowledged)."""
    from celery.contrib.testing.mocks import TaskMessage
    from celery.worker import state
    from celery.worker.request import Request
    from sqlalchemy import select, update

    import worker.tasks  # noqa: F401 - klab.train registered, as in a worker
    from service import broker as brokers
    from service.db import writes
    from service.db.engine import writing
    from service.db.reads import identity
    from service.db.schema import jobs
    from service.jobs.spec import JobSpec
    from service.jobs.status import JobStatus
    from worker.app import app
    from worker.lease import resend_stranded

    setenv(KLAB_BROKER_URL=redis_url, KLAB_STRANDED_SECONDS="5")
    with writing() as conn:
        kept, lost = writes.insert_columns(conn, {**writes.new_job(JobSpec.parse({}), start=JobStatus.QUEUED,
                                                                     queue="cpu"), "seed": [0, 1]}, 2)
        conn.execute(update(jobs).values(queued_at=writes.utcnow() - timedelta(hours=1)))
    request = Request(TaskMessage("klab.train", args=[[kept]]), app=app)
    state.task_reserved(request)
    try:
        assert resend_stranded() == 1
    finally:
        state.task_ready(request)
    with writing() as conn:
        queued_at = dict(conn.execute(select(jobs.c.id, jobs.c.queued_at)).all())
    assert queued_at[lost] - queued_at[kept] > timedelta(minutes=59)  # sent again now; the one in hand waits on
    held = brokers.holdings(brokers.client(), 5, identity())
    assert held.busy_queues == {"cpu"}  # its message waits there
    with writing() as conn:  # and while a message waits on a queue, its jobs may simply be behind it: none sent
        conn.execute(update(jobs).values(queued_at=writes.utcnow() - timedelta(hours=1)))
    assert resend_stranded() == 0


def test_the_reaper_sends_a_dead_workers_job_again_at_once(klab_db, redis_url, setenv):
    """A running job whose lease ran out goes back to queued, and its message to the broker, in the same look (not
    a look of resend_stranded's later, KLAB_STRANDED_SECONDS on)."""
    from sqlalchemy import update

    from service import broker as brokers
    from service.db import writes
    from service.db.engine import writing
    from service.db.reads import identity
    from service.db.schema import jobs
    from service.jobs.spec import JobSpec
    from service.jobs.status import JobStatus
    from worker.lease import reap

    setenv(KLAB_BROKER_URL=redis_url, KLAB_LEASE_SECONDS="60")
    with writing() as conn:
        dead, live = writes.insert_columns(conn, {**writes.new_job(JobSpec.parse({}), start=JobStatus.QUEUED,
                                                                     queue="cpu"), "seed": [0, 1]}, 2)
        assert len(writes.claim(conn, [dead, live], "gone", "t0", 0, lease=60)) == 2
        conn.execute(update(jobs).where(jobs.c.id == dead).values(heartbeat_at=writes.utcnow() - timedelta(hours=1)))
    assert brokers.holdings(brokers.client(), 5, identity()).busy_queues == frozenset()
    assert reap() == 1
    assert brokers.holdings(brokers.client(), 5, identity()).busy_queues == {"cpu"}


def test_a_workers_claim_takes_a_running_job_back_only_past_its_lease(klab_db, setenv):
    """A heartbeat a few beats old (30 s, the lease 60 s, a beat 12 s) is a live worker's: a redelivered message
    claims nothing of it."""
    from sqlalchemy import update

    from service.db import writes
    from service.db.engine import writing
    from service.db.schema import jobs
    from service.jobs.spec import JobSpec
    from service.jobs.status import JobStatus
    from worker.lease import claim

    setenv(KLAB_LEASE_SECONDS="60")
    with writing() as conn:
        (job,) = writes.insert_jobs(conn, [writes.new_job(JobSpec.parse({}), start=JobStatus.QUEUED, queue="cpu")])
    assert [r.id for r in claim([job], "a", "t1", 0)] == [job]
    with writing() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job).values(heartbeat_at=writes.utcnow() - timedelta(seconds=30)))
    assert claim([job], "b", "t2", 0) == []
    with writing() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job).values(heartbeat_at=writes.utcnow() - timedelta(seconds=61)))
    assert [r.id for r in claim([job], "b", "t2", 0)] == [job]
