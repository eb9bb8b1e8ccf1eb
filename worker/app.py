"""The Celery app of the workers: `celery -A worker.app worker -Q cpu` (see `klab worker`)."""
from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import warnings
from typing import NoReturn

from celery import Celery, bootsteps
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown
from celery.worker.control import control_command

from service import broker, defaults
from service.broker import celery_config
from service.db import reads
from service.db.engine import dispose_engines
from service.errors import BadInput, DatabaseUnavailable, mask
from service.settings import describe, settings
from worker import no_gpu
from worker.lease import backoff, reaper

log = logging.getLogger(__name__)
app = Celery("klab", include=["worker.tasks"])
try:
    app.conf.update(celery_config(broker.checked_url()))  # the KLAB_* settings are read here first
except BadInput as exc:  # the plain celery line (compose's) printed a traceback; `klab worker` says this first
    sys.stderr.write(f"klab: error: {exc}\n")
    raise SystemExit(2) from None


_ready = threading.Event()
"""Celery has said "ready.": a start of the consumer after it is one after losing the broker."""


class _TakingTasksAgain(bootsteps.StartStopStep):
    """Once a worker takes tasks again after losing its broker, it says so. Celery says "Connected" for its
    consumer's own connection, then sets up the rest; its events' connection, lost there, is retried without a line:
    a broker killed at that moment left "Cannot connect ... Trying again" the log's last word while the worker
    trained (found by test_faults). Its password masked as klab masks every URL it prints."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c) -> None:
        if _ready.is_set():
            log.info("taking tasks again from %s", mask(c.connection.as_uri(include_password=True)))


app.steps["consumer"].add(_TakingTasksAgain)

_reaper_stop = threading.Event()
_serving: dict[str, object] = {}  # this worker's database identity, queues (as users name them) and name


@celeryd_after_setup.connect
def _consume_this_databases_queues(sender: str, instance, **_: object) -> None:
    """`-Q cpu` means this database's cpu queue: consume `cpu.<identity>` (service.broker.routed), never
    another database's messages. Waits for the database if it is away; stops if it is not at head."""
    queues = instance.app.amqp.queues
    named = [q for q in broker.QUEUES if q in (queues.consume_from or {app.conf.task_default_queue: None})]
    if "gpu" in named and (why := no_gpu()):
        _stop(why, 2)  # exit code 2, as `klab worker --queue gpu` refuses it before Celery starts
    identity = _identity()
    for q in named:
        queues.select_add(broker.routed(q, identity))
        queues.deselect(q)
    _serving.update(identity=identity, queues=named, hostname=sender)
    _announce()  # a broker still away (a worker started before it) is told again at the next beat
    threading.Thread(target=_keep_present, name="klab-presence", daemon=True).start()
    log.info("serving %s (identity %s): queues %s", describe(settings().database_url), identity,
             ", ".join(broker.routed(q, identity) for q in named))


@celeryd_after_setup.connect
def _quiet_reconnections(**_: object) -> None:
    """Celery warns at every reconnection to the broker that `worker_cancel_long_running_tasks_on_connection_loss`
    will change (9 lines, a broker restart's); klab sets it, False (service/broker.py: a job keeps training, its
    claim holds), and Celery warns whatever it is set to. Said here, after Celery's logging set its warnings to
    "always"."""
    warnings.filterwarnings("ignore", message="\nIn Celery 5.1 we introduced an optional breaking change",
                            category=CPendingDeprecationWarning)


def _stop(message: str, code: int) -> NoReturn:
    """A worker that cannot serve its database stops in one line, with `klab worker`'s exit code (2: the user's
    setting; it exited 1)."""
    sys.stderr.write(f"klab worker: {message}\n")
    raise SystemExit(code)


def _identity() -> str:
    tries = 0
    while True:
        try:
            return reads.identity()
        except BadInput as exc:  # KLAB_HOME a file, an in-memory SQLite URL: Celery logged the traceback, consumed
            _stop(str(exc), exc.exit_code)  # the bare queue and said it was ready
        except DatabaseUnavailable as exc:
            if exc.exit_code != 3:  # not at head, or no identity: nothing to wait for
                _stop(str(exc), exc.exit_code)
            log.warning("waiting for the database: %s", exc)
        time.sleep(backoff(tries))
        tries += 1


def _keep_present() -> None:
    """Renew this worker's presence on the broker (what `klab submit` looks for) until it stops."""
    while not _reaper_stop.wait(defaults.PRESENCE_SECONDS / 3):
        _announce()


def _announce() -> None:
    """Say on the broker that this worker serves its queues, for PRESENCE_SECONDS."""
    try:
        broker.announce(_serving["identity"], _serving["queues"], _serving["hostname"], defaults.PRESENCE_SECONDS)
    except Exception as exc:  # noqa: BLE001 - the broker is away: try again at the next beat
        log.warning("presence: %s", type(exc).__name__)


@worker_process_init.connect
def _child_init(**_: object) -> None:
    """Each prefork child: its own database connections, a share of the cores for torch, and what the imports
    made (torch's, Celery's: some 250,000 objects) kept out of the cycle collector's walks. Each task makes a few
    objects a claimed job, which start a collection every 700; the full ones walked all of those imports'
    objects every time: 0.12 of 1.12 s of CPU for 45,000 jobs, 0.03 s once frozen (bench/RESULTS.md)."""
    dispose_engines()
    threads = settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)
        log.info("torch threads in this pool process: %d (KLAB_TORCH_THREADS)", torch.get_num_threads())
    gc.freeze()
    log.info("objects left out of the cycle collector's walks in this pool process: %d", gc.get_freeze_count())


@worker_ready.connect
def _said_ready(**_: object) -> None:
    _ready.set()


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    """The main process of every worker looks for jobs of dead workers and jobs the broker lost."""
    reaper(_reaper_stop)


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    _reaper_stop.set()
    if _serving:
        try:
            broker.withdraw(_serving["identity"], _serving["queues"], _serving["hostname"])
        except Exception as exc:  # noqa: BLE001 - the presence expires by itself
            log.warning("presence: %s", type(exc).__name__)


@control_command()
def klab_info(state) -> dict:
    """What `klab workers` shows: queues (as users name them), device, pool, the job ids in hand, and the
    database it serves (host and name, never a password) with its identity."""
    from celery.worker.state import active_requests

    consumer = state.consumer
    identity = _serving.get("identity")
    on_broker = sorted(q.name for q in consumer.task_consumer.queues) if consumer.task_consumer else []
    queues = [q for q in broker.QUEUES if broker.routed(q, str(identity)) in on_broker]
    jobs: list[int] = []
    for req in list(active_requests):
        args = req.args if isinstance(req.args, (list, tuple)) else []
        if args and isinstance(args[0], list):
            jobs.extend(args[0])
    return {"queues": queues, "device": _device(queues), "pool": type(consumer.pool).__module__.rsplit(".", 1)[-1],
            "active_jobs": jobs, "database": describe(settings().database_url), "identity": identity}


def _device(queues: list[str]) -> str:
    if "gpu" not in queues:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cuda (none visible)"
    return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
