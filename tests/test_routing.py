"""Two databases on one broker: each database's messages go to queues of its own, so a worker of one never
takes (and never acknowledges) a job of the other, and nothing is lost: a job waits until a worker of its
own database starts (issue 12, item 1)."""
from __future__ import annotations

import json

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
        # `klab workers` names the database each worker serves, without its password
        listed = klab(mine, "workers", "--json")
        assert listed.returncode == 0, listed.stderr
        (info,) = json.loads(listed.stdout)
        assert info["worker"].startswith("mine@") and info["queues"] == ["cpu"]
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


def test_each_database_has_its_own_identity_and_queues(two):
    from service.broker import routed
    from service.db.reads import identity

    lite, pg = (identity(env["KLAB_DATABASE_URL"]) for env in two.values())
    assert len({lite, pg}) == 2 and all(len(i) == 12 and int(i, 16) >= 0 for i in (lite, pg))
    assert routed("cpu", lite) == f"cpu.{lite}" != routed("cpu", pg)
