"""kernel-lab's workers: the engine that trains (engine/), and the Celery app and task around it (app,
tasks, lease, progress). Imports flow one way: worker -> service."""
from __future__ import annotations

from service.jobs.choices import Device


def device_first(device: Device | str) -> None:
    """A GPU this machine lacks, told as the user's mistake before the database is made or reached (klab run,
    sweep --local and their API). Only cuda can fail, and only it imports torch here: a database that is away is
    still said before torch is imported for cpu and auto."""
    if Device(device) is Device.CUDA:
        from worker.engine import checked_device

        checked_device(Device.CUDA.value)
