"""The engine: the book's kernel learning, many jobs at once, in plain PyTorch (no Celery, no database).

batch (train a batch), loop (the epochs), optim (update rules), residuals (the forward pass), weights
(initial weights), analysis (least squares, the gap), pace (stable lr, rate), explain (the sentence),
results (rows in the result schema's names).
"""
from __future__ import annotations

from typing import Any

from service.jobs.problem import Problem, build_problem
from service.jobs.spec import JobSpec
from worker.engine.batch import checked_device, resolve_device, train
from worker.engine.job import Job
from worker.engine.loop import EpochEvent, OnEpoch
from worker.engine.results import BatchResult

__all__ = ["BatchResult", "EpochEvent", "Job", "OnEpoch", "checked_device", "resolve_device", "run_spec", "train"]


def run_spec(spec: JobSpec, problem: Problem | None = None, on_epoch: OnEpoch | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train one job from its spec (and its already built problem, if any), in this process: its result
    row and its epochs."""
    problem = problem or build_problem(spec)
    job = Job(problem, seed=spec.seed, lr=spec.lr, tol=spec.tol)
    return train([job], spec.method, spec.epochs, spec.batch_size, spec.device.value, on_epoch).row(0)
