"""`klab workers` and `klab worker`: the live workers, and starting one."""
from __future__ import annotations

import json
import math
import os
import re
import socket
import sys

import click

from service.cli import cli
from service.cli.options import NumberRange, WholeRange
from service.errors import BadInput, visible


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON list, one object a worker")
@click.option("--timeout", type=NumberRange(0.1, 60), default=1.5, show_default=True,
              help="seconds to wait for replies (0.1 to 60)")
def workers(as_json: bool, timeout: float) -> None:
    """Live workers with their queues, the database they serve, device and active jobs."""
    from service import broker

    if math.isnan(timeout):  # no range holds it, and click's lets it through
        raise BadInput("--timeout", "nan is not in the range 0.1<=x<=60")
    broker.check()
    rows = broker.workers(timeout)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no workers answered")
        return
    for r in rows:
        click.echo(worker_line(r))


def worker_line(r: dict) -> str:
    """A worker's line in `klab workers`: what it answered (a database named with a newline kept to its line), its
    first 10 active jobs and how many in all."""
    held = r.get("active_jobs", [])
    active = ", ".join(str(j) for j in held[:10]) + (f", ... ({len(held)} in all)" if len(held) > 10 else "") or "-"
    return visible(f"{r['worker']}  queues {','.join(r.get('queues', []))}  database {r.get('database')}  "
                   f"device {r.get('device')}  pool {r.get('pool')}  active jobs {active}")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""A worker's node name before `@host`: what Celery, `klab workers` and the broker's presence keys tell it by."""


ALONE = ("--without-gossip", "--without-mingle")
"""Celery's talk between workers, which klab never uses (it revokes nothing; its workers find each other through
the database and its own presence keys): mingle cost every start a second ("searching for neighbors"), and gossip
logged a traceback of 100 lines at every broker restart ("Error on restarting Gossip", Celery 5.7)."""


LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""Celery's log levels (refused here in one line, before Celery's own usage text could be)."""


def worker_command(argv: list[str]) -> list[str]:
    """The command that runs worker_argv's celery line as `klab worker` runs it: through worker/__main__.py, which
    imports klab's app before celery looks for it in the current folder (a user's own worker.py there was taken for
    it)."""
    return [sys.executable, "-P", "-m", "worker", *argv[1:]]


def worker_argv(queue: str, concurrency: int | None, loglevel: str, name: str | None = None,
                threads: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The plain celery command line a worker runs (`klab worker` runs it by worker_command), and the environment it
    adds. Its node name is `<name>@<host>`, the queue's name unless given; a cpu worker's children have `threads`
    torch threads each (the user's KLAB_TORCH_THREADS), or the cores split among them."""
    env: dict[str, str] = {}
    node = f"{name or queue}@%h"
    if queue == "gpu":
        argv = ["celery", "-A", "worker.app", "worker", "-Q", "gpu", "--pool", "solo", "--hostname", node, *ALONE,
                "--loglevel", loglevel.upper()]
    else:
        n = concurrency or os.cpu_count() or 1
        argv = ["celery", "-A", "worker.app", "worker", "-Q", "cpu", "--pool", "prefork", "--concurrency", str(n),
                "--hostname", node, *ALONE, "--loglevel", loglevel.upper()]
        env["KLAB_TORCH_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // n))  # the cores split
    return argv, env


@cli.command()
@click.option("--queue", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="the queue it takes jobs from")
@click.option("--concurrency", type=WholeRange(1, 256), default=None,
              help="prefork children for the cpu queue [default: the number of cores]")
@click.option("--gpu", "gpu_index", type=WholeRange(0, 64), default=None, help="GPU index for the gpu queue")
@click.option("--loglevel", default="info", show_default=True, type=click.Choice(LOGLEVELS, case_sensitive=False),
              help="what the worker logs")
@click.option("--name", default=None, help="node name before @host [default: the queue's]; several workers on one "
              "host (gpu workers sharing a GPU) each need their own")
def worker(queue: str, concurrency: int | None, gpu_index: int | None, loglevel: str, name: str | None) -> None:
    """Start a Celery worker with safe settings (solo pool on one GPU; prefork with torch threads split)."""
    if queue == "gpu" and concurrency not in (None, 1):
        raise BadInput("concurrency", "the gpu queue runs one job at a time (solo pool): CUDA does not survive fork; "
                       "to keep a GPU busy, start several gpu workers, each with its own --name")
    if queue != "gpu" and gpu_index is not None:
        raise BadInput("gpu", "only a worker of the gpu queue takes a GPU (--queue gpu --gpu N)")
    if name is not None and not NAME.fullmatch(name):
        raise BadInput("name", f"{name!r} is not a node name: letters, digits, '.', '_' and '-', "
                       "starting with a letter or digit, at most 64")
    from service import broker
    from service.db.reads import identity
    from service.settings import settings

    if queue == "gpu":
        from worker import no_gpu

        if gpu_index is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_index)  # before torch: the one device it may see
        if why := no_gpu():  # said in one line before Celery prints its banner, exit code 2
            raise BadInput("queue", why)
    broker.checked_url()  # a malformed URL is one line here (the broker itself may come up later: it is waited for)
    identity()  # a database that is unreachable or not at head is one line here, not a worker that waits
    node = f"{name or queue}@{socket.gethostname()}"  # as Celery reads %h
    if broker.taken(node):
        raise BadInput("name", f"a worker named {node} is already running on this broker; give each worker on a host "
                       "its own --name")
    argv, env = worker_argv(queue, concurrency, loglevel, name, settings().torch_threads)
    os.environ.update(env)  # with CUDA_VISIBLE_DEVICES set above for --gpu
    os.execvp(sys.executable, worker_command(argv))  # noqa: S606 - our own argv: no shell, no user text

