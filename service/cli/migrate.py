"""`klab db upgrade` and `klab db current`: the schema's migrations."""
from __future__ import annotations

import click

from service.cli import NearMissGroup, cli
from service.db.connect import HEAD
from service.db.reads import revision
from service.settings import describe, settings


@cli.group(cls=NearMissGroup)
def db() -> None:
    """Database schema: upgrade it, or see where it stands."""


@db.command("upgrade")
@click.option("--revision", "target", default="head", show_default=True, help="target revision")
def db_upgrade(target: str) -> None:
    """Apply migrations up to head (safe to run again)."""
    from service.db.engine import upgrade

    url = settings().database_url
    revision(url)  # an unreachable database is one line, before Alembic starts
    upgrade(url, target)
    click.echo(f"{describe(url)} is at revision {revision(url)}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and whether it is at head."""
    url = settings().database_url
    rev = revision(url)
    state = "head" if rev == HEAD else f"not at head {HEAD}; run: klab db upgrade"
    click.echo(f"{describe(url)}: revision {rev or 'none'} ({state})")
