"""Two databases on one broker: each database's messages go to queues of its own, so a worker of one never
takes (and never acknowledges) a job of the other, and nothing is lost: a job waits until a worker of its
own database starts (issue 12, item 1)."""
from __future__ import annotations

import json
import time
from base64 import b64decode, b64encode

import pytest
from harness import Db, klab, queue_key, service_env, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def two(tmp_path, sqlite_url, pg_url, redis_url):
    """A SQLite and a PostgreSQL database sharing one Redis; the PostgreSQL URL carries a password (trust auth
    ignores it) so that `klab workers` can be seen masking it."""
    secret_pg = pg_url.replace("postgres@", "postgres:hunter2@", 1)
    assert "hunter2" in secret_pg
    return {"lite": service_env(tmp_path / "lite", sqlite_url, redis_url),
            "pg": service_env(tmp_path / "pg", secret_pg, redis_url)}


def submitted(env: dict[str, str], *args: str) -> tuple[int, str]:
    out = klab(env, "submit", "--json", *args)
    assert out.returncode == 0, out.stderr
    (job_id,) = json.loads(out.stdout)["ids"]
    return job_id, out.stderr


@pytest.mark.parametrize("served,other", [("lite", "pg"), ("pg", "lite")])
def test_a_worker_never_takes_a_job_of_another_database(two, worker_procs, redis_url, served, other):
    import redis

    broker = redis.Redis.from_url(redis_url)
    mine, theirs = two[served], two[other]
    ours = Db(mine["KLAB_DATABASE_URL"])
    foreign = Db(theirs["KLAB_DATABASE_URL"])
    try:
        worker_procs(mine, "mine").wait_ready()
        # job 1 in the other database, whose ids start at 1 too: a worker reading ids alone would take it
        stranger, warned = submitted(theirs, "--seed", "7")
        assert stranger == 1
        assert "klab: warning: no live worker of this database" in warned and "queue cpu" in warned, warned
        assert "hunter2" not in warned
        # the served database's own job is trained: its worker consumes, and still leaves the other's message
        own = klab(mine, "submit", "--seed", "7", "--wait", "--json")
        assert own.returncode == 0 and json.loads(own.stdout)["status"] == "succeeded", own.stderr
        assert own.stderr == ""  # a worker serves this database's queue: no warning
        assert ours.rows("SELECT id, seed, status FROM jobs") == [(1, 7, "succeeded")]  # nothing of the other's
        assert broker.llen(queue_key(theirs["KLAB_DATABASE_URL"])) == 1  # never taken, never acknowledged
        assert foreign.statuses() == {"queued": 1}
        # sending it again warns the same way (and a second copy of its message is harmless: claimed once)
        again = klab(theirs, "requeue", "--queued", str(stranger))
        assert again.returncode == 0 and again.stdout.strip() == "queued 1 job(s)", again.stderr
        assert "klab: warning: no live worker of this database" in again.stderr and "hunter2" not in again.stderr
        assert broker.llen(queue_key(theirs["KLAB_DATABASE_URL"])) == 2
        sent = [body(m) for m in broker.lrange(queue_key(theirs["KLAB_DATABASE_URL"]), 0, -1)]  # newest first
        assert sent == [[[[stranger]], {"again": True}], [[[stranger]], {}]]  # sent again: claimed, never a quick task
        # `klab workers` names the database each worker serves, without its password
        listed = klab(mine, "workers", "--json")
        assert listed.returncode == 0, listed.stderr
        (info,) = json.loads(listed.stdout)
        assert info["worker"].startswith("mine@") and info["queues"] == ["cpu"]
        assert (info["pool"], info["device"], info["active_jobs"]) == ("prefork", "cpu", [])  # as klab workers says
        assert info["database"].startswith(("sqlite database", "postgresql database"))
        assert "hunter2" not in listed.stdout
        # the other database's worker starts: its job is trained, where it belongs
        worker_procs(theirs, "theirs").wait_ready()
        wait_until(lambda: foreign.statuses() == {"succeeded": 1}, 120, lambda: foreign.statuses())
        (host, attempts), = foreign.rows("SELECT worker_host, attempts FROM jobs")
        assert host.startswith("theirs@") and attempts == 1
        assert ours.scalar("SELECT count(*) FROM jobs") == 1 and foreign.scalar("SELECT count(*) FROM jobs") == 1
    finally:
        ours.close()
        foreign.close()


def body(raw: bytes) -> list:
    """A klab.train message's arguments and keyword arguments, as kombu's Redis transport keeps them."""
    message = json.loads(raw)
    assert message["properties"]["body_encoding"] == "base64"
    return json.loads(b64decode(message["body"]))[:2]


def test_a_message_of_another_database_delivered_and_not_acknowledged_is_not_this_ones(redis_url):
    """`--wait` (holds_none) and the reaper (holdings) read kombu's `unacked` hash, which every database on the
    broker shares: a message of another database's queue there, its job ids the same numbers, is not this
    database's job in hand (else --wait waits on that other database's tasks, and the reaper leaves a stranded job of
    this one unsent while a job of the same id trains elsewhere)."""
    import redis

    from service.broker import UNACKED, client, holdings, holds_none, routed

    mine, theirs = "a" * 12, "b" * 12
    r = redis.Redis.from_url(redis_url)
    for tag, identity, ids in (("t-theirs", theirs, [1, 2]), ("t-mine", mine, [3])):
        message = {"body": b64encode(json.dumps([[ids], {}, {}]).encode()).decode(),
                   "properties": {"body_encoding": "base64", "delivery_tag": tag}}
        r.hset(UNACKED, tag, json.dumps([message, "", routed("cpu", identity)]))
        r.zadd("unacked_index", {tag: time.time()})
    try:
        assert not holds_none(r, mine) and not holds_none(r, theirs) and holds_none(r, "c" * 12)
        r.hdel(UNACKED, "t-mine")
        assert holds_none(r, mine) and not holds_none(r, theirs)
        r.hset(UNACKED, "t-mine", json.dumps([message, "", routed("cpu", mine)]))
        app = client(redis_url)
        assert holdings(app, 60, mine).delivered_ids == {3} and holdings(app, 60, theirs).delivered_ids == {1, 2}
        r.zadd("unacked_index", {"t-mine": time.time() - 120})  # delivered 2 minutes ago: a dead worker's, not held
        assert holdings(app, 60, mine).delivered_ids == set() and holdings(app, 180, mine).delivered_ids == {3}
    finally:
        r.delete(UNACKED, "unacked_index")
        r.close()


def test_each_database_has_its_own_identity_and_queues(two):
    from service.broker import routed
    from service.db.reads import identity

    lite, pg = (identity(env["KLAB_DATABASE_URL"]) for env in two.values())
    assert len({lite, pg}) == 2 and all(len(i) == 12 and int(i, 16) >= 0 for i in (lite, pg))
    assert routed("cpu", lite) == f"cpu.{lite}" != routed("cpu", pg)


def test_a_worker_stopped_cleanly_is_gone_from_the_broker_at_once(tmp_path, redis_url, worker_procs):
    """`klab submit` right after the only worker's warm shutdown warns that no worker serves the queue (its presence
    withdrawn as it stops), not the PRESENCE_SECONDS after, while the jobs wait unserved."""
    env = service_env(tmp_path, f"sqlite:///{tmp_path / 'k.db'}", redis_url)
    worker = worker_procs(env, "leaving").wait_ready()
    served = klab(env, "submit", "--epochs", "1")
    assert served.returncode == 0 and "no live worker" not in served.stderr, served.stderr
    worker.stop()
    assert worker.proc.returncode is not None
    unserved = klab(env, "submit", "--epochs", "1")
    assert unserved.returncode == 0 and "klab: warning: no live worker of this database" in unserved.stderr, \
        unserved.stderr
