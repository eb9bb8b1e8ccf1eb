"""The Celery app of the workers: `celery -A worker.app worker -Q cpu` (see `klab worker`)."""
from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from celery.worker.control import control_command

from service.broker import celery_config
from service.db.engine import dispose_engines
from service.settings import settings
from worker.lease import reaper

log = logging.getLogger(__name__)
app = Celery("klab", include=["worker.tasks"])
app.conf.update(celery_config(settings().broker_url))

_reaper_stop = threading.Event()


@worker_process_init.connect
def _child_init(**_: object) -> None:
    """Each prefork child: its own database connections, and a share of the cores for torch."""
    dispose_engines()
    threads = settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    """The main process of every worker looks for jobs of dead workers and jobs the broker lost."""
    reaper(_reaper_stop)


@worker_shutdown.connect
def _stop_reaper(**_: object) -> None:
    _reaper_stop.set()


@control_command()
def klab_info(state) -> dict:
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
