"""`klab db`: the schema's migrations."""
from __future__ import annotations

import click

from service.cli import cli
from service.db import HEAD, DatabaseUnavailable, current_revision, describe, engine_for, upgrade
from service.settings import settings


@cli.group()
def db() -> None:
    """Database schema: upgrade it, or see where it stands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="target revision")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to head (safe to run again)."""
    url = settings().database_url
    _reachable(url)
    upgrade(url, revision)
    click.echo(f"{describe(url)} is at revision {current_revision(engine_for(url))}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and whether it is at head."""
    url = settings().database_url
    rev = _reachable(url)
    state = "head" if rev == HEAD else f"not at head {HEAD}; run: klab db upgrade"
    click.echo(f"{describe(url)}: revision {rev or 'none'} ({state})")


def _reachable(url: str) -> str | None:
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    try:
        return current_revision(engine_for(url))
    except DBAPIError as exc:
        from service.db import _reason  # noqa: PLC0415

        raise DatabaseUnavailable(f"cannot reach the {describe(url)}: {_reason(exc)}") from None
