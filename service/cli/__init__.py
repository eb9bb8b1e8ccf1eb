"""The `klab` command line. Commands that do not train never import torch."""
from __future__ import annotations

import sys

import click

from sqlalchemy.exc import OperationalError

from service.db import DatabaseUnavailable
from service.errors import BadInput
from service.settings import mask


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="kernel-lab", prog_name="klab")
def cli() -> None:
    """kernel-lab: learn convolution kernels as Dive into Deep Learning does, and explain the gap."""


def fail(message: str, code: int = 2) -> None:
    """One line on stderr and the exit code: how every user-facing error ends."""
    click.echo(f"klab: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line and exit code 2, never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="klab", standalone_mode=False)
    except BadInput as exc:
        fail(str(exc), exc.exit_code)
    except DatabaseUnavailable as exc:
        fail(str(exc), exc.exit_code)
    except OperationalError as exc:  # the database went away in the middle of a command
        fail(f"database error: {mask(str(exc.orig or exc).strip().splitlines()[0])}", 3)
    except click.UsageError as exc:
        param = getattr(exc, "param", None)
        name = param.opts[0] if param is not None and getattr(param, "opts", None) else None
        msg = exc.format_message().replace("\n", " ")
        fail(f"{name}: {msg}" if name and name not in msg else msg, 2)
    except click.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)


from service.cli import db as _db, query as _query, run as _run  # noqa: E402,F401  - registers commands
