"""The Celery app of the workers: `celery -A worker.app worker -Q cpu` (see `klab worker`)."""
from __future__ import annotations

import logging
import os
import threading

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from celery.worker.control import control_command

from service.celeryconfig import celery_config
from service.settings import settings

log = logging.getLogger(__name__)
app = Celery("klab", include=["worker.tasks"])
app.conf.update(celery_config(settings().broker_url))


@worker_process_init.connect
def _child_init(**_: object) -> None:
    """Each prefork child: its own database connections, and a share of the cores for torch."""
    from service.db import dispose_engines

    dispose_engines()
    threads = os.environ.get("KLAB_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))


_reaper_stop = threading.Event()


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    """The main process of every worker looks for jobs of dead workers and for jobs whose message the
    broker lost, every half lease or half stranded threshold, whichever is shorter."""
    from service import defaults
    from worker.tasks import reap, resend_stranded

    def loop() -> None:
        while not _reaper_stop.wait(defaults.reaper_seconds()):
            for look in (reap, resend_stranded):
                try:
                    look()
                except Exception as exc:  # noqa: BLE001 - a database or broker outage; try again later
                    log.warning("reaper: %s: %s", look.__name__, type(exc).__name__)

    threading.Thread(target=loop, name="klab-reaper", daemon=True).start()


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    _reaper_stop.set()


@control_command()
def klab_info(state) -> dict:  # noqa: ANN001
    """What `klab workers` shows: queues, device, pool and the job ids in hand."""
    from celery.worker.state import active_requests

    consumer = state.consumer
    queues = sorted(q.name for q in consumer.task_consumer.queues) if consumer.task_consumer else []
    jobs: list[int] = []
    for req in list(active_requests):
        args = req.args if isinstance(req.args, (list, tuple)) else []
        if args and isinstance(args[0], list):
            jobs.extend(args[0])
    return {"queues": queues, "device": _device(queues), "pool": type(consumer.pool).__module__.rsplit(".", 1)[-1],
            "active_jobs": jobs}


def _device(queues: list[str]) -> str:
    if "gpu" not in queues:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cuda (none visible)"
    return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
