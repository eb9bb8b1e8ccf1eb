"""`klab list`, `show`, `compare`, `export`, `plot`, `delete`: reading stored results (no torch)."""
from __future__ import annotations

from service.cli import cli  # noqa: F401
