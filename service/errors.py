"""Errors a user can cause, each naming the field at fault."""
from __future__ import annotations


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


class BrokerUnavailable(RuntimeError):
    """The broker cannot be reached: one line naming it, exit code 3."""

    exit_code = 3
