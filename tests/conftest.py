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
REDIS_URL = os.environ.get("KLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


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
