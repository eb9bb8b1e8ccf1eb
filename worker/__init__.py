"""kernel-lab's workers: the engine that trains (engine/), and the Celery app and task around it (app,
tasks, lease, progress). Imports flow one way: worker -> service."""
from __future__ import annotations

import os

from service.jobs.choices import Device


def device_first(device: Device | str) -> None:
    """A GPU this machine lacks, told as the user's mistake before the database is made or reached (klab run,
    sweep --local and their API). Only cuda can fail, and only it imports torch here: a database that is away is
    still said before torch is imported for cpu and auto."""
    if Device(device) is Device.CUDA:
        from worker.engine import checked_device

        checked_device(Device.CUDA.value)


def no_gpu() -> str | None:
    """Why a worker of the gpu queue cannot serve here (it would take gpu jobs only to fail them), or None: torch
    sees no GPU. `klab worker --queue gpu` refuses so before it starts Celery, the plain celery line when it starts."""
    import torch

    if torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # unset, not the text None
    return (f"the gpu queue needs a GPU, and torch sees none (torch {torch.__version__}, "
            f"{'CUDA_VISIBLE_DEVICES unset' if visible is None else f'CUDA_VISIBLE_DEVICES={visible!r}'})")
