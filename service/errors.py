"""What can go wrong that a user must read: their mistakes, and services out of reach. Each is one line,
with any password in it masked."""
from __future__ import annotations

import re

_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>\S*)(?P<at>@)", re.IGNORECASE)
"""user:password@ in a URL, up to the last @ before a space (a password may hold an @ or a / not escaped)."""
_QUERY_PASSWORD = re.compile(r"(?P<pre>[?&](?:password|passwd|pwd)=)[^&\s]*", re.IGNORECASE)
"""A password given as a URL's parameter (libpq's ?password=, redis-py's too)."""


class BadInput(ValueError):
    """A user's mistake: reported as one line naming the field, exit code 2."""

    exit_code = 2

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached (exit code 3) or is not at head (exit code 2): one line."""

    def __init__(self, message: str, exit_code: int = 3):
        super().__init__(message)
        self.exit_code = exit_code


class UpgradeRefused(DatabaseUnavailable):
    """The database refused an upgrade (a table of another application's in the way, a read-only server): one line,
    exit code 3, but no wait mends it (service.db.connect.out_of_reach: a worker stops, it does not retry)."""


class BrokerUnavailable(RuntimeError):
    """The broker cannot be reached: one line naming it, exit code 3."""

    exit_code = 3


class Gone(RuntimeError):
    """What a command was storing was deleted meanwhile, from another shell (klab delete): one line, exit code 1."""

    exit_code = 1


class Interrupted(RuntimeError):
    """The user pressed Ctrl-C while waiting: one line saying what goes on, exit code 130."""

    exit_code = 130


def mask(text: str) -> str:
    """Any URL's password replaced by ***, in its user part or its parameters."""
    text = _PASSWORD.sub(lambda m: f"{m['pre']}***{m['at']}", str(text))
    return _QUERY_PASSWORD.sub(lambda m: f"{m['pre']}***", text)


def one_line(exc: BaseException) -> str:
    """An exception as the first line of its message (its type's name if it has none), passwords masked."""
    text = str(exc).strip()
    return mask(text.splitlines()[0] if text else type(exc).__name__)
