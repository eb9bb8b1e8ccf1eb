"""Settings from the environment, built once per process (`settings()`), with passwords masked for printing."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Settings:
    home: Path
    """KLAB_HOME: where the default SQLite database lives (default ~/.klab)."""
    database_url: str
    """KLAB_DATABASE_URL: SQLAlchemy URL (default sqlite:///$KLAB_HOME/klab.db)."""
    broker_url: str
    """KLAB_BROKER_URL: the Celery broker (default redis://localhost:6379/0)."""

    @property
    def is_default_database(self) -> bool:
        return "KLAB_DATABASE_URL" not in os.environ or not os.environ["KLAB_DATABASE_URL"]

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ.get("KLAB_HOME") or Path.home() / ".klab").expanduser()
        url = os.environ.get("KLAB_DATABASE_URL") or f"sqlite:///{home / 'klab.db'}"
        broker = os.environ.get("KLAB_BROKER_URL") or "redis://localhost:6379/0"
        return cls(home=home, database_url=normalize_url(url), broker_url=broker)


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings.from_env()


def normalize_url(url: str) -> str:
    """postgresql:// and postgres:// URLs go through psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)", re.IGNORECASE)


def mask(text: str) -> str:
    """Any URL's password replaced by ***."""
    return _PASSWORD.sub(lambda m: f"{m['pre']}***{m['at']}", str(text))


def describe(url: str) -> str:
    """Where a database URL points, for messages: host and database, never the password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return mask(url)
    backend = scheme.split("+")[0].lower()
    if backend == "sqlite":
        path = rest.partition("/")[2].partition("?")[0]
        return f"sqlite database {unquote(path) or ':memory:'}"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        return mask(url)
    return f"{backend} database {unquote(parts.path.lstrip('/'))} on {host or 'localhost'}:{port or 5432}"


def reason(exc: BaseException) -> str:
    """A driver's error as one line, passwords masked."""
    msg = str(exc).strip()
    return mask(msg.splitlines()[0] if msg else type(exc).__name__)
