"""Fixtures for the real services: a fresh SQLite file and a fresh PostgreSQL database per test,
and a Redis database index of the tests' own, flushed around each test.

A service that is missing skips its tests locally and fails them under CI=true.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("KLAB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Each pytest-xdist worker (gw0, gw1, ...) gets its own Redis database index: 13, 14, 15.
_XDIST = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_URL = os.environ.get("KLAB_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{13 + _XDIST % 3}")


def missing(service: str, why: str) -> None:
    """Skip locally; under CI a missing service is a failure, never a silent skip."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{service} is required under CI and is not available: {why}")
    pytest.skip(f"{service} not available: {why}")


def _pg_admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


def _swap_db(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    name = f"klab_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = _pg_admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        missing("PostgreSQL", str(exc.orig).splitlines()[0])
    url = _swap_db(PG_ADMIN_URL, name)
    try:
        yield url
    finally:
        from service.db import dispose_engines

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
def redis_url() -> Iterator[str]:
    """The tests' own Redis database index, flushed before and after."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        missing("Redis", str(exc))
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def klab_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    """Environment for running the real `klab` command against the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAB_")}
    env.update({"KLAB_HOME": str(tmp_path / "home"), "KLAB_DATABASE_URL": db_url, "NO_COLOR": "1"})
    return env


# --- stored jobs, for the store, query, CLI and plot tests ------------------------------------

@pytest.fixture
def klab_db(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """db_url upgraded to head and made this process's KLAB_DATABASE_URL (settings re-read)."""
    from service.db import dispose_engines, upgrade
    from service.settings import settings

    upgrade(db_url)
    monkeypatch.setenv("KLAB_DATABASE_URL", db_url)
    monkeypatch.setenv("KLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    settings.cache_clear()
    yield db_url
    dispose_engines()
    settings.cache_clear()


def fake_result(spec, relative: float | None = 0.1, status: str = "succeeded", epochs: int | None = None) -> dict:
    """A result shaped like worker.engine.run_spec's, with a chosen relative error (no torch)."""
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    true = rng.standard_normal((3, 3))
    direction = rng.standard_normal((3, 3))
    scale = 0.0 if relative is None else relative * np.linalg.norm(true) / np.linalg.norm(direction)
    learned = true + scale * direction
    n = epochs or spec.epochs
    losses = np.geomspace(10.0, 10.0 * 0.5 ** n, n) if status != "diverged" else np.geomspace(1.0, 1e12, n)
    frob = float(np.linalg.norm(learned - true))
    error = None if relative is None else {
        "frobenius": frob, "relative": relative, "max_abs": float(np.abs(learned - true).max()),
        "cosine": float((learned * true).sum() / np.linalg.norm(learned) / np.linalg.norm(true))}
    return {
        "status": status, "method": spec.method.value, "device": "cpu", "seed": spec.seed,
        "torch_version": "test", "train_seconds": 0.01,
        "epochs": [{"epoch": i + 1, "loss": float(v), "mse": float(v) / 48, "kernel_error": frob * (1 + n - i)}
                   for i, v in enumerate(losses)],
        "true_kernel": true.tolist(), "initial_kernel": np.zeros((3, 3)).tolist(), "learned_kernel": learned.tolist(),
        "learned_bias": None, "error": error, "converged_epoch": None,
        "diverged_epoch": n if status == "diverged" else None,
        "identifiability": {"rank": 9, "params": 9, "identifiable": True}, "lstsq_kernel": true.tolist(),
        "gap": {"optimization": frob, "noise": 0.0, "identifiability": 0.0},
        "explanation": f"not converged yet: training stopped {frob:.3g} from the best kernel the data allow; "
                       "train longer or raise the learning rate.",
    }


@pytest.fixture
def add_job():
    """add_job(session, relative=.., status=.., sweep_id=.., **spec) -> id: a finished job with its epochs.

    relative=None with status "queued" stores a job that has no result yet.
    """
    from service import store
    from service.models import JobStatus
    from service.spec import JobSpec

    def add(session, relative: float | None = 0.1, status: str = "succeeded", sweep_id: int | None = None,
            **spec_values) -> int:
        spec = JobSpec.parse({"input": "random:8x8", "kernel": "random:3x3", **spec_values})
        job = store.create_job(session, spec, sweep_id=sweep_id, status=JobStatus(status))
        if JobStatus(status).is_finished:
            store.save_results(session, [(job.id, fake_result(spec, relative, status))])
        session.flush()
        return job.id

    return add


@pytest.fixture
def klab_cli():
    """klab_cli(*args) -> (exit code, stdout, stderr): the real CLI entry point, run in this process."""
    from helpers import klab_main

    return klab_main
