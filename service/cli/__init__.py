"""The `klab` command line: thin click commands over service/ (and, for `klab run`, the worker's engine).

Commands load their modules lazily: those that do not train never import torch.
"""
from __future__ import annotations

import difflib
import errno
import importlib
import os
import sys
from collections import Counter

try:
    import resource  # here, not where a limit is told: importing it opens a file
except ImportError:  # Windows: no such limit
    resource = None  # type: ignore[assignment]

import click

from service.errors import (
    BadInput,
    BrokerUnavailable,
    DatabaseUnavailable,
    Gone,
    Interrupted,
    one_line,
    out_of_memory,
    surrogate,
    visible,
)

# command -> (the module defining it, imported only when the command runs; its line in --help)
COMMANDS = {
    "run": ("service.cli.run", "Train one job here and now, store it, and explain the gap."),
    "submit": ("service.cli.submit", "Submit jobs to the workers (flags, -f job.yaml or -f jobs.jsonl)."),
    "sweep": ("service.cli.sweep", "A grid of lists and ranges: sent to the workers, or trained here (--local)."),
    "requeue": ("service.cli.submit", "Send again jobs that were stored but never reached the broker."),
    "cancel": ("service.cli.submit", "Cancel jobs: queued ones never start, running ones stop."),
    "status": ("service.cli.progress", "Counts by status and progress of jobs or a sweep."),
    "watch": ("service.cli.progress", "A live progress bar until the jobs or the sweep are done."),
    "workers": ("service.cli.workers", "Live workers with their queues, device and active jobs."),
    "worker": ("service.cli.workers", "Start a Celery worker on the cpu or gpu queue."),
    "list": ("service.cli.results", "One row per job, filtered and sorted."),
    "show": ("service.cli.results", "One job: kernels side by side, metrics, the gap and the loss curve."),
    "compare": ("service.cli.results", "Jobs or a sweep in one table, best first; or statistics by group."),
    "sweeps": ("service.cli.results", "The newest sweeps: name, tags, size, jobs by status, what it varies."),
    "export": ("service.cli.results", "Jobs or epochs as CSV or JSON."),
    "plot": ("service.cli.results", "A PNG of a job's loss and kernels, or of a sweep's errors."),
    "delete": ("service.cli.results", "Remove jobs (or a sweep) and their epochs."),
    "db": ("service.cli.migrate", "Database schema: upgrade it, or see where it stands."),
}


class NoSuchCommand(click.UsageError):
    """A command no group has: its message names the closest ones, or where the commands are listed."""


class OnceCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """An option of one value given twice is refused in one line: click keeps the last without a word, and `klab
        sweep --seed 0..2 --seed 5` was one job of seed 5, `klab run -f a.yaml -f b.yaml` never read a.yaml. The one
        home of the rule (`--sweep` too). --help anywhere shows the help, as click does."""
        if any(arg in ctx.help_option_names for arg in args):
            return super().parse_args(ctx, args)
        try:
            _, _, order = self.make_parser(ctx).parse_args(args=list(args))
        except click.ClickException:
            order = []  # what is wrong is said below, by click's own parse
        counts = Counter(p for p in order if isinstance(p, click.Option) and not (p.multiple or p.is_flag or p.count))
        for param, times in counts.items():
            if times > 1:
                flag = max(param.opts, key=len)
                raise BadInput(flag, f"given {times} times; give it once")
        return super().parse_args(ctx, args)


class NearMissGroup(click.Group):
    command_class = OnceCommand
    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        """An unknown command is one line naming the closest ones (`klab lis`: did you mean list?)."""
        name = args[0]
        if self.get_command(ctx, name) is None and not name.startswith("-"):
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; see {ctx.command_path} --help"
            raise NoSuchCommand(f"no such command {name!r}{hint}", ctx)
        return super().resolve_command(ctx, args)


class LazyGroup(NearMissGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            importlib.import_module(COMMANDS[name][0])
        return self.commands.get(name)

    def invoke(self, ctx: click.Context) -> object:
        """A reader that went away (`klab export ... | head -1`) ends the command with exit code 0, as for every
        command: what it read was written. Click would exit 1; stdout is pointed at /dev/null first, so that
        flushing it at exit cannot fail again."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            to_nowhere(sys.stdout)
            ctx.exit(0)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """The same for what klab itself prints as it reads its options (`klab --help | head -1`, `klab --version`),
        which exited 1."""
        try:
            return super().parse_args(ctx, args)
        except BrokenPipeError:
            to_nowhere(sys.stdout)
            ctx.exit(0)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="kernel-lab", prog_name="klab")
def cli() -> None:
    """kernel-lab: learn convolution kernels as Dive into Deep Learning does, and explain the gap."""


def to_nowhere(stream: object) -> None:
    """What is written to `stream` (or descriptor) from now on goes to /dev/null (its descriptor made /dev/null's):
    after its reader went away, or a disk filled, so that writing or flushing it at exit cannot fail again."""
    fd = stream if isinstance(stream, int) else stream.fileno()  # type: ignore[attr-defined]
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != fd:
        os.dup2(devnull, fd)
        os.close(devnull)


def _closed_streams() -> None:
    """Streams closed by whoever started klab (`klab export 1 >&-`), where Python has none and every command ended
    in a traceback: stderr becomes /dev/null on descriptor 2, so that no file klab opens takes that descriptor (and
    what a library writes there with it); with no stdout a command's output cannot be written, which is said before
    anything is done."""
    if sys.stderr is None:
        to_nowhere(2)
        sys.stderr = open(2, "w", closefd=False)
    if sys.stdout is None:
        fail("cannot write the output: stdout is closed", 1)


def fail(message: str, code: int = 2) -> None:
    """One line on stderr and the exit code: how every user-facing error ends (a newline a user typed into a
    value, `--input $'npy:a\\nb'`, is shown as \\n, an escape sequence as \\x1b: service.errors.visible)."""
    click.echo("klab: error: " + visible(message), err=True)
    sys.exit(code)


UNWRITABLE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)
"""Why writing a command's output (stdout, or export's -o FILE) can fail midway: a full disk, a quota, a file too
large, a device's error, a read-only file system."""


def _taking(before: list[str]) -> str:
    """The option that takes the next argument as its value, where the last of `before` is one (not a flag, not
    `--`, not an --option=value): the command's own options, found through its group(s)."""
    if not before or not before[-1].startswith("-") or "=" in before[-1]:
        return ""
    command: click.Command = cli
    for word in before[:-1]:
        if isinstance(command, click.Group) and not word.startswith("-"):
            command = command.get_command(click.Context(command), word) or command
    for param in command.params:
        if isinstance(param, click.Option) and before[-1] in param.opts and not (param.is_flag or param.count):
            return before[-1]
    return ""


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line and exit code 2, never a traceback."""
    _closed_streams()
    args = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(args):
        if surrogate(arg):  # bytes that are not UTF-8
            flag, _, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
            flag = flag or _taking(args[:i])  # the option whose value it is; an argument has none
            fail(f"{visible(flag) + ': ' if flag else ''}{visible(value)} holds bytes that are not UTF-8 (names, "
                 "paths and values are stored as UTF-8 text)")
    try:
        code = cli.main(args=argv, prog_name="klab", standalone_mode=False)
        sys.stdout.flush()  # what is left to write fails here, where it is said, not at the interpreter's exit
    except BadInput as exc:
        fail(str(exc), exc.exit_code)
    except (DatabaseUnavailable, BrokerUnavailable, Gone) as exc:
        fail(str(exc), exc.exit_code)
    except Interrupted as exc:
        click.echo(f"klab: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # `klab`, `klab db`: the help, whole, as click prints it
        exc.show()
        sys.exit(exc.exit_code)
    except click.NoSuchOption as exc:
        fail(f"{exc.option_name}: no such option{_option_hint(exc)}", 2)
    except click.UsageError as exc:
        fail(_usage_line(exc), 2)
    except click.Abort as exc:  # click's word for a Ctrl-C
        fail(_noted("aborted", exc), 130)
    except click.ClickException as exc:
        fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except KeyboardInterrupt as exc:
        fail(_noted("interrupted", exc), 130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:
        if exc.errno == errno.EMFILE and resource is not None:  # `ulimit -n 6`: not even a module's file to import
            fail(f"too many open files: this process may open {_open_files()} at once; raise the limit (ulimit -n)", 1)
        if exc.errno not in UNWRITABLE:
            raise
        to_nowhere(sys.stdout)  # the rest of stdout goes nowhere, as after a closed pipe
        fail(f"cannot write the output: {exc.strerror}", 1)
    except Exception as exc:
        if _interrupted(exc):  # Ctrl-C inside a driver, which raised its own error while handling it
            fail(_noted("interrupted", exc), 130)
        if _database_gone(exc):
            from service.settings import describe, settings

            fail(_noted(f"database error on the {describe(settings().database_url)}: "
                        f"{one_line(getattr(exc, 'orig', None) or exc)}", exc), 3)
        if out_of_memory(exc):  # numpy's MemoryError or torch's, for a job KLAB_MAX_JOB_MEMORY let through
            fail(_noted(f"out of memory: {one_line(exc)} (KLAB_MAX_JOB_MEMORY may let through jobs larger than "
                        "this machine holds)", exc), 1)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _open_files() -> int:
    """The most files this process may have open at once (RLIMIT_NOFILE's soft limit)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _noted(line: str, exc: BaseException | None) -> str:
    """A line and what the command noted on the exception on its way out (service.submit: what it stored), or on
    those it stands for or arose while handling: click's Abort for a KeyboardInterrupt, a second Ctrl-C while the
    first one's unwound (`aborted` alone, of a sweep stored in part)."""
    notes: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        notes += [n for n in getattr(exc, "__notes__", ()) if n not in notes]
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return "; ".join([line, *notes])


def _option_hint(exc: click.NoSuchOption) -> str:
    """The options meant by an unknown one: click's close spellings, and those it is a word of (`--by`:
    `--group-by`); else where the command's options are listed. Never --help as one meant: `klab show 1 --sweep`
    read `did you mean --help?`."""
    close = set(exc.possibilities or ()) - {"--help", "-h"}
    ctx = exc.ctx
    if ctx is not None:
        word = exc.option_name.lstrip("-")
        close |= {o for p in ctx.command.params for o in p.opts if o.startswith("--") and word in o[2:].split("-")}
    if close:
        return f"; did you mean {' or '.join(sorted(close))}?"
    return f"; see {ctx.command_path} --help" if ctx is not None else ""


def _usage_line(exc: click.UsageError) -> str:
    """A usage error as one line naming what was wrong: the option (`--lr: ...`), the argument (`id: 'x' is not a
    valid integer; see klab show --help`), or the command and where its usage is (`show: unexpected extra argument
    (2); see klab show --help`)."""
    param = getattr(exc, "param", None)
    msg = exc.format_message().replace("\n", " ")
    if isinstance(exc, click.BadOptionUsage) and param is None:  # the parser's, before any option is known:
        said = msg.removeprefix(f"Option '{exc.option_name}' ").rstrip(".")  # `klab run --lr` named no option
        return f"{exc.option_name}: {said}"
    if isinstance(exc, click.MissingParameter) and isinstance(param, click.Option) and exc.ctx is not None:
        return f"{max(param.opts, key=len)}: missing; see {exc.ctx.command_path} --help"  # klab plot without -o
    if isinstance(exc, click.BadParameter) and isinstance(param, click.Option):  # `--limit: -1 is not in ...`
        return f"{max(param.opts, key=len)}: {exc.message.rstrip('.')}"
    if isinstance(param, click.Option) and param.opts:
        return msg if param.opts[0] in msg else f"{param.opts[0]}: {msg}"
    ctx = exc.ctx
    if ctx is None or ctx.parent is None:  # the group's own: an unknown command
        return msg
    if isinstance(param, click.Argument) and isinstance(exc, (click.BadParameter, click.MissingParameter)):
        field = (param.metavar or param.name or "").strip("[].").lower()  # `id`, as --sweep names its option
        said = "missing" if isinstance(exc, click.MissingParameter) else exc.message.rstrip(".")
        return f"{field}: {said}; see {ctx.command_path} --help"
    if isinstance(exc, NoSuchCommand):  # a group's below klab (db): named, its message whole
        return f"{ctx.info_name}: {msg}"
    msg = msg[0].lower() + msg[1:].rstrip(".")
    msg = msg[len("got "):] if msg.startswith("got ") else msg
    return f"{ctx.info_name}: {msg}; see {ctx.command_path} --help"


REFUSED = ("08", "25", "53", "57", "42501")
"""SQLSTATEs (classes, or one code) of a PostgreSQL that cannot do what was asked, whatever the command: the
connection (08), a read-only server such as a standby (25006), a full disk or too little memory (53), a shutdown
(57), a role without the privilege (42501)."""


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is behind an error: psycopg raised "can't change 'autocommit' now" as SQLAlchemy's
    pool, pinging a connection when Ctrl-C came, put it back; a traceback, exit 1, where Ctrl-C is one line, 130."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _database_gone(exc: Exception) -> bool:
    """The database went away or stayed locked mid-command, or refused it (REFUSED), through SQLAlchemy or a driver
    (service.reader)."""
    if type(exc).__module__.startswith("sqlalchemy") and type(exc).__name__ == "OperationalError":
        return True
    sqlite3, psycopg = sys.modules.get("sqlite3"), sys.modules.get("psycopg")
    driver = getattr(exc, "orig", None) or exc
    state = getattr(driver, "sqlstate", None) or ""
    return (sqlite3 is not None and isinstance(exc, sqlite3.OperationalError)) or \
        (psycopg is not None and isinstance(exc, psycopg.OperationalError)) or \
        (psycopg is not None and isinstance(driver, psycopg.Error) and state.startswith(REFUSED))
