"""`klab db upgrade` and `klab db current`: the schema's migrations."""
from __future__ import annotations

import click

from service.cli import NearMissGroup, cli
from service.db.connect import HEAD, REVISIONS, unknown_revision
from service.db.reads import revision
from service.errors import BadInput
from service.settings import describe, settings


@cli.group(cls=NearMissGroup)
def db() -> None:
    """Database schema: upgrade it, or see where it stands."""


@db.command("upgrade")
@click.option("--revision", "target", default="head", show_default=True, help="target revision")
def db_upgrade(target: str) -> None:
    """Apply migrations up to head (safe to run again)."""
    from service.db.engine import upgrade

    if target not in ("head", *REVISIONS):
        raise BadInput("revision", f"no revision {target!r}; choose head or one of {', '.join(REVISIONS)}")
    url = settings().database_url
    if (unknown := unknown_revision(now := revision(url), url)) is not None:  # an unreachable database: one line too
        raise unknown
    if now is not None and target in REVISIONS and REVISIONS.index(now) > REVISIONS.index(target):
        raise BadInput("revision", f"the {describe(url)} is at revision {now}, past {target}: klab db upgrade does not "
                                   "go back")
    upgrade(url, target)  # one the database refuses is one line (exit code 3)
    click.echo(f"{describe(url)} is at revision {revision(url)}")


@db.command("current")
def db_current() -> None:
    """Print the database's revision and whether it is at head."""
    url = settings().database_url
    rev = revision(url)
    if (unknown := unknown_revision(rev, url)) is not None:
        raise unknown
    state = "head" if rev == HEAD else f"not at head {HEAD}; run: klab db upgrade"
    click.echo(f"{describe(url)}: revision {rev or 'none'} ({state})")
