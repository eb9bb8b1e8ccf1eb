"""Fixtures: a fresh SQLite file and a fresh PostgreSQL database per test, a redis-server of the test session's
own (flushed around each test), redis-servers and worker processes of a test's own, stored jobs, and
settings read anew from a test's environment. The machinery itself is in harness.py.

A service that is missing skips its tests locally and fails them under CI=true. Tests that need a
service (PostgreSQL, Redis, a worker) are marked `services`: `pytest -m "not services"` runs the rest.
"""
from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ROOT, Db, RedisServer, WorkerProcess, clean_env, klab_main, missing

__all__ = ["ROOT"]

PG_ADMIN_URL = os.environ.get("KLAB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KLAB_TEST_REDIS_URL")
"""A Redis to use instead of the session's own redis-server (nobody else may use it meanwhile)."""

SERVICE_FIXTURES = {"pg_url", "pg_db", "redis_url", "redis_server", "worker_procs"}
"""A test that takes one of these (or db_url on PostgreSQL) needs a running service."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("KLAB_TEST_DOCKER") != "1":  # `make test-compose` runs them, on a Docker engine it starts
        docker = [item for item in items if item.get_closest_marker("docker")]
        if docker:
            config.hook.pytest_deselected(items=docker)
            items[:] = [item for item in items if not item.get_closest_marker("docker")]
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        param = getattr(getattr(item, "callspec", None), "params", {}).get("db_url")
        if names & SERVICE_FIXTURES or param == "postgresql":
            item.add_marker(pytest.mark.services)


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Every test reads the settings from its own environment."""
    from service.settings import settings

    settings.cache_clear()
    yield
    settings.cache_clear()


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """setenv(KLAB_X="1", ...): set variables (None: unset) and read the settings anew."""
    from service.settings import settings

    def apply(**values: str | None) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        settings.cache_clear()

    return apply


# --- databases -------------------------------------------------------------------------------------

def _pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    name = f"klab_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = _pg_admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        missing("PostgreSQL", str(exc.orig).splitlines()[0])
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from service.db.engine import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'klab.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def pg_db(pg_url: str) -> Iterator[tuple[str, Db]]:
    db = Db(pg_url)
    yield pg_url, db
    db.close()


@pytest.fixture
def klab_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    """Environment for running the real `klab` command against the test database."""
    return clean_env(tmp_path / "home", db_url)


@pytest.fixture
def klab_db(db_url: str, tmp_path: Path, setenv: Callable[..., None]) -> Iterator[str]:
    """db_url upgraded to head and made this process's KLAB_DATABASE_URL."""
    from service.db.engine import dispose_engines, upgrade

    upgrade(db_url)
    setenv(KLAB_DATABASE_URL=db_url, KLAB_HOME=str(tmp_path / "home"), NO_COLOR=None)
    yield db_url
    dispose_engines()


@pytest.fixture
def klab_cli() -> Callable[..., tuple[int, str, str]]:
    """klab_cli(*args) -> (exit code, stdout, stderr): the real CLI entry point, run in this process."""
    return klab_main


# --- stored jobs -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def engine_result() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One job the engine really trained, once per session: the shape every made-up result takes, so that a
    change in what the engine hands over (a field added, renamed or dropped) reaches every test that stores,
    reads or draws results."""
    from service.jobs.spec import JobSpec
    from worker.engine import run_spec

    return run_spec(JobSpec.parse({"input": "random:8x8", "kernel": "random:3x3", "epochs": 3, "seed": 1}))


def fake_result(spec: Any, relative: float | None = 0.1, status: str = "succeeded", epochs: int | None = None
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A result row and epochs of the engine's shape (engine_result), with a chosen relative error: the values
    a test needs (sorting, statuses, many epochs) that a real job cannot be made to give on demand."""
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    true = rng.standard_normal((3, 3))
    direction = rng.standard_normal((3, 3))
    scale = 0.0 if relative is None else relative * np.linalg.norm(true) / np.linalg.norm(direction)
    learned = true + scale * direction
    n = epochs or spec.epochs
    losses = np.geomspace(10.0, 10.0 * 0.5 ** n, n) if status != "diverged" else np.geomspace(1.0, 1e12, n)
    frob = float(np.linalg.norm(learned - true))
    epoch_list = [{"epoch": i + 1, "loss": float(v), "mse": float(v) / 48, "kernel_error": frob * (1 + n - i)}
                  for i, v in enumerate(losses)]
    row = {
        "status": status, "error_message": "a test's failure" if status == "failed" else None,  # its mark
        "device": "cpu", "torch_version": "test", "train_seconds": 0.01,
        "epochs_done": n, "final_loss": epoch_list[-1]["loss"], "final_mse": epoch_list[-1]["mse"],
        "true_kernel": true.tolist(), "initial_kernel": np.zeros((3, 3)).tolist(), "learned_kernel": learned.tolist(),
        "learned_bias": None, "lstsq_kernel": true.tolist(),
        "frobenius_error": None if relative is None else frob, "relative_error": relative,
        "max_abs_error": None if relative is None else float(np.abs(learned - true).max()),
        "cosine": None if relative is None else
        float((learned * true).sum() / np.linalg.norm(learned) / np.linalg.norm(true)),
        "rank": 9, "params": 9, "identifiable": True,
        "gap_optimization": frob, "gap_noise": 0.0, "gap_identifiability": 0.0,
        "converged_epoch": None, "diverged_epoch": n if status == "diverged" else None,
        "stable_lr": 0.5, "convergence_rate": 0.9, "more_epochs": None,
        "explanation": f"not converged yet: training stopped {frob:.3g} from the best kernel the data allow; "
                       "train longer or raise the learning rate.",
    }
    real, real_epochs = engine_result()
    assert set(row) == set(real), set(row) ^ set(real)  # the engine's fields, no more and no fewer
    assert all(set(e) == set(real_epochs[0]) for e in epoch_list), set(real_epochs[0])
    return {**real, **row}, epoch_list


@pytest.fixture
def add_job() -> Callable[..., int]:
    """add_job(conn, relative=.., status=.., sweep_id=.., **spec) -> id: a job with its result and epochs,
    or, with status created or queued, one that has none yet."""
    from service.db import writes
    from service.jobs.selection import Selection
    from service.jobs.spec import JobSpec
    from service.jobs.status import JobStatus

    def add(conn: Any, relative: float | None = 0.1, status: str = "succeeded", sweep_id: int | None = None,
            **spec_values: Any) -> int:
        spec = JobSpec.parse({"input": "random:8x8", "kernel": "random:3x3", **spec_values})
        end = JobStatus(status)
        (job_id,) = writes.insert_jobs(conn, [writes.new_job(spec, sweep_id=sweep_id, queue="cpu",
                                                              start=JobStatus.RUNNING if end.is_finished
                                                              else JobStatus.CREATED)])
        if end is JobStatus.QUEUED:
            writes.mark_queued(conn, [job_id])
        if end is JobStatus.CANCELLED:  # asked to stop, as a job a worker stops is (service.jobs.status.MARKS)
            writes.cancel(conn, Selection(ids=(job_id,)))
        if end.is_finished:
            row, epoch_list = fake_result(spec, relative, status)
            writes.save_rows(conn, [(job_id, row, epoch_list)])
        return job_id

    return add


# --- redis-servers and workers of a test's own ---------------------------------------------------------

@pytest.fixture
def redis_url(session_redis: str) -> Iterator[str]:
    """The session's own Redis, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(session_redis, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        missing("Redis", str(exc))
    yield session_redis
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this test session alone (a free port, nothing kept on disk): a worker of another
    test run on this machine can never take this session's messages, nor this session's workers theirs."""
    if REDIS_URL:
        yield REDIS_URL
        return
    server = RedisServer(tmp_path_factory.mktemp("session-redis"), persistent=False)
    yield server.url()
    server.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """redis_server(persistent=True, password=None) -> a started redis-server of the test's own, killed at the end.

    Tests that kill their broker, or must not share one with other test runs, take this one."""
    started: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def worker_procs(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """worker_procs(env, name, queue="cpu", concurrency=1) -> a started worker (not yet waited for); killed at
    the end."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], name: str, queue: str = "cpu", concurrency: int = 1,
              loglevel: str = "INFO") -> WorkerProcess:
        w = WorkerProcess(env, name, tmp_path / f"{name}.log", queue, concurrency, loglevel)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()
