"""Errors a user can cause, each naming the field at fault."""
from __future__ import annotations


class BadInput(ValueError):
    """A user's mistake: reported as one line naming the field, exit code 2."""

    exit_code = 2

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
