"""The engine: the book's kernel learning, many jobs at once, in plain PyTorch (no Celery, no database).

batch (train a batch), loop (the epochs), optim (update rules), residuals (the forward pass), weights
(initial weights), analysis (least squares, the gap), pace (stable lr, rate), explain (the sentence),
results (rows in the result schema's names).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.errors import one_line, out_of_memory
from service.jobs.problem import Problem, build_problem
from service.jobs.spec import JobSpec
from worker.engine.batch import checked_device, resolve_device, train
from worker.engine.job import Job
from worker.engine.loop import EpochEvent, OnEpoch
from worker.engine.results import BatchResult

__all__ = ["BatchResult", "EpochEvent", "Job", "OnEpoch", "checked_device", "failure", "resolve_device", "run_spec",
           "train", "unbuilt"]


def run_spec(spec: JobSpec, problem: Problem | None = None, on_epoch: OnEpoch | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one job from its spec (and its already built problem, if any), in this process: its result
    row and its epochs."""
    problem = problem or build_problem(spec)
    job = Job(problem, seed=spec.seed, lr=spec.lr, tol=spec.tol)
    return train([job], spec.method, spec.epochs, spec.batch_size, spec.device.value, on_epoch).row(0)


def failure(exc: BaseException, jobs: Sequence[Job], device: str) -> str:
    """Why a batch could not train, saying how large it was: a worker's and `klab sweep --local`'s alike (the
    latter said `MemoryError training ...` where a worker said `out of memory training ...`)."""
    p = jobs[0].problem
    what = (f"{len(jobs)} job(s) with input {'x'.join(map(str, p.x.shape))} ({p.x.size} elements) "
            f"and kernel {'x'.join(map(str, p.kernel_shape))} on {device}")
    return f"{'out of memory' if out_of_memory(exc) else type(exc).__name__} training {what}: {one_line(exc)}"


def unbuilt(job_id: int, input_text: str, kernel: str | None) -> str:
    """Why a job's data could not be built for memory: a worker's and `klab sweep --local`'s alike (the latter's ended
    the sweep in a line, its jobs cancelled)."""
    return f"out of memory building the data of job {job_id} (input {input_text}, kernel {kernel})"
