"""`klab status` and `klab watch`: how far jobs or a sweep have come (reads only)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from service.cli import cli, to_nowhere
from service.cli.options import selected
from service.errors import BadInput, Gone, Interrupted
from service.jobs.selection import Selection
from service.render.text import counted

POLL_SECONDS = 0.25
"""How often `watch` and `--wait` read the jobs' progress, at most."""

POLL_SHARE = 0.1
"""The most of the database's time the polling may take: a read that takes d seconds waits d / POLL_SHARE
before the next (a 200,000-job sweep's counts take tens of milliseconds, which the workers need more)."""


def pause(took: float) -> float:
    """Seconds to wait before the next read of the progress, after one that took `took` seconds."""
    return max(POLL_SECONDS, took / POLL_SHARE)


LINE_SECONDS = 5.0
"""Away from a terminal, the shortest time between two progress lines."""

SHOW_AFTER_SECONDS = 1.0
"""Work done here (`klab run`'s epochs, `klab sweep --local`'s jobs) shows its progress once it has taken this
long: a short job prints nothing more than its result."""


class Tally:
    """Progress of work done in this process, on stderr: rich's bar on a terminal, else a line at most every
    LINE_SECONDS; nothing before SHOW_AFTER_SECONDS. `clock` and `stream` may be given (tests)."""

    def __init__(self, total: int, unit: str, stream: Any = None, clock: Any = None) -> None:
        self.total, self.unit, self.clock = total, unit, clock or time.monotonic
        self.stream = stream or sys.stderr
        self.started = self.last_line = self.clock()
        self.bar: Any = None
        self.terminal = self.stream.isatty() and not os.environ.get("NO_COLOR")

    def update(self, done: int, note: str = "") -> None:
        now = self.clock()
        if now - self.started < SHOW_AFTER_SECONDS or done >= self.total:
            return
        if self.terminal:
            self._bar().update(self.task, completed=done, description=note or self.unit)
        elif now - self.last_line >= LINE_SECONDS:
            try:
                self.stream.write(f"{self.unit} {done} of {self.total}{', ' + note if note else ''}\n")
                self.stream.flush()
            except BrokenPipeError:  # its reader went away (`klab sweep --local 2>&1 | head -1`): the work goes on
                to_nowhere(self.stream)
            self.last_line = now

    def _bar(self) -> Any:
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), transient=True, console=Console(file=self.stream))
            self.task = self.bar.add_task(self.unit, total=self.total)
            self.bar.start()
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextlib.contextmanager
def interrupts() -> Iterator[Callable[[], None]]:
    """Ctrl-C that cannot be lost, for loops that wait or train: SIGINT raises KeyboardInterrupt as usual and also
    sets a flag, which the `check` given to the loop turns into KeyboardInterrupt at its next step.

    Python runs a signal's handler wherever the main thread is, finalizers included (a database connection's
    `__del__`, run when the garbage collector frees it), and an exception raised in a finalizer is printed as
    "Exception ignored" and dropped: a Ctrl-C landing there was lost, and `watch` went on waiting for jobs no
    worker would train. A SIGINT that the process was started ignoring stays ignored.

    SIGTERM (`kill`) and SIGHUP (its terminal closed) stop it the same way: Python's default for them ends the
    process where it stands, and a `klab sweep --local` so ended left the jobs it was training `running` for
    good (no worker holds their lease, so no reaper takes them back)."""
    pressed = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal pressed
        pressed = True
        raise KeyboardInterrupt

    def check() -> None:
        if pressed:
            raise KeyboardInterrupt

    installed = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        if previous is signal.SIG_IGN:
            continue
        try:
            signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (a notebook's): Python's own handling, as it is
            break
        installed[sig] = previous
    try:
        yield check
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


def counts(selection: Selection, waited: bool = False) -> dict[str, Any]:
    """Jobs by status and epochs (service.db.reads.progress); `waited`: the jobs were there at an earlier look, so
    jobs or a sweep now missing were deleted meanwhile (Gone, exit 1), no mistake of the user's."""
    from service.db.reads import progress, reading

    try:
        with reading(make=False) as reader:
            return progress(reader, selection)
    except BadInput as exc:
        if not waited:
            raise
        raise deleted(exc.message) from None


def deleted(missing: str) -> Gone:
    """Jobs or a sweep found at an earlier look and missing now (`missing`: `no sweep 3`): deleted meanwhile."""
    return Gone(f"{missing}: deleted while waiting for it (klab delete)")


def count_line(c: dict[str, Any]) -> str:
    """Jobs by status, then the epochs: trained of what is left to train, or, once all ended, of those asked."""
    parts = counted(c["by_status"])
    if c["finished"] == c["jobs"]:
        return f"{c['jobs']} job(s): {parts}; {c['epochs_done']} of {c['epochs_asked']} epochs trained"
    pct = 100.0 * c["epochs_done"] / c["epochs_total"] if c["epochs_total"] else 100.0
    pct = min(pct, 99.0) if c["epochs_done"] < c["epochs_total"] else pct  # 12348 of 12358 is not 100% yet
    return f"{c['jobs']} job(s): {parts}; epochs {c['epochs_done']}/{c['epochs_total']} ({pct:.0f}%)"


def wait(selection: Selection, quiet: bool = False, stored: bool = False, broker_asked: bool = True) -> dict[str, Any]:
    """Poll until every selected job is finished: a progress bar of epochs on a terminal, else a line on
    stderr whenever the counts change (at most every LINE_SECONDS). Ctrl-C stops the waiting, not the jobs.
    Returns the counts once all have ended.

    The counts read every selected job, so they are read no more often than their own cost allows (pause: a
    100,000-job sweep's took 0.2 s, so the next came 2 s later, and `--wait` ended up to 2 s after the sweep's
    last job). On a Redis broker the looks between ask it, every POLL_SECONDS over one connection, whether it
    still holds a message of this database (service.broker.holds_none): once it holds none, every task sent has
    ended, and the counts are read at once. Messages that wait for no worker (a queue nobody serves) keep it from
    ever holding none, and a broker that does not answer (within its timeout) is asked no more: the paced reads
    end the wait. `stored`: the command itself stored the jobs, so that, gone at the first look, they were deleted
    meanwhile (Gone, exit code 1), not asked for by mistake (a sweep deleted as `klab sweep --local` trained it said
    `sweep: no sweep 3`, exit code 2). `broker_asked` False: the database's reads alone (`klab sweep --local`,
    whose jobs no broker carries)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from service import broker
    from service.db.reads import identity

    show = not quiet and sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    lines = not quiet and not show
    last_line, last_at, counted_at, counting, was_idle = "", 0.0, -math.inf, 0.0, False
    try:
        with interrupts() as check, broker.redis_client() if broker_asked else contextlib.nullcontext() as told, \
                Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                         transient=True, disable=not show, console=Console(file=sys.stderr),
                         redirect_stdout=False) as bar:
            # on stderr's terminal, the one `show` asked: on stdout, `--wait --json > file` drew nothing and wrote a
            # blank line into the file
            task = bar.add_task("epochs", total=None)
            c: dict[str, Any] | None = None
            while True:
                started = time.monotonic()
                idle = told is not None and c is not None and broker_idle(told, identity())
                if idle is None:
                    told = None  # it did not answer: the database's reads alone, as on another broker
                if c is None or started - counted_at >= pause(counting) or idle and not was_idle:
                    c, counted_at = counts(selection, c is not None or stored), started
                    counting = time.monotonic() - started
                    if c["finished"] == c["jobs"]:
                        return c
                    bar.update(task, total=c["epochs_total"], completed=c["epochs_done"],
                               description=f"{c['finished']}/{c['jobs']} jobs")
                    line = count_line(c)
                    if lines and line != last_line and time.monotonic() - last_at >= (LINE_SECONDS if last_line else 0):
                        click.echo(line, err=True)
                        last_line, last_at = line, time.monotonic()
                was_idle = bool(idle)
                check()
                time.sleep(POLL_SECONDS if told is not None else pause(time.monotonic() - started))
                check()
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting; the jobs go on: follow them with klab watch {selection}") from None


def broker_idle(r: Any, identity: str) -> bool | None:
    """Whether the broker holds no message of database `identity` (service.broker.holds_none); None when it does
    not answer within its timeout (a broker gone, frozen or cut off)."""
    from service.broker import holds_none

    try:
        return holds_none(r, identity)
    except Exception:  # noqa: BLE001 - whatever keeps the broker from answering, the database still does
        return None


@cli.command()
@selected()
@click.option("--json", "as_json", is_flag=True, help="print the counts as a JSON object")
def status(selection: Selection, as_json: bool) -> None:
    """Counts by status and progress of jobs or a sweep."""
    c = counts(selection)
    click.echo(json.dumps(c) if as_json else count_line(c))


@cli.command()
@selected()
def watch(selection: Selection) -> None:
    """A live progress bar until the jobs or the sweep are done."""
    click.echo(count_line(wait(selection)))
