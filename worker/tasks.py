"""The one task: train a batch of jobs by id. Claim, load, call the engine, store."""
from __future__ import annotations

import logging
import socket
from collections import Counter, defaultdict
from collections.abc import Sequence

from celery import Task

from service import defaults
from service.broker import TASK_TRAIN
from service.db import reads, writes
from service.db.connect import out_of_reach
from service.db.engine import writing
from service.db.reads import reading
from service.errors import BadInput, one_line
from service.jobs.problem import Problem, build_problem, problem_key, together
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus
from service.settings import settings
from worker import engine
from worker.app import app
from worker.lease import Heartbeat, claim
from worker.progress import Progress

log = logging.getLogger(__name__)
HOST = socket.gethostname()

Member = tuple[int, JobSpec, engine.Job]


def train_jobs(job_ids: Sequence[int], task_id: str, host: str = HOST, task_try: int = 0) -> dict[str, int]:
    """Claim, train (in groups that train together) and store; returns counts by status."""
    ids = claim(job_ids, host, task_id, task_try)
    if not ids:
        return {}
    with Heartbeat(ids):
        groups, failed = load(ids)
        counts: Counter[str] = Counter()
        for job_id, message in failed:
            fail([job_id], message)
            counts[JobStatus.FAILED.value] += 1
        for members in groups:
            counts.update(train_group(members))
        return dict(counts)


def load(ids: Sequence[int]) -> tuple[list[list[Member]], list[tuple[int, str]]]:
    """The jobs as engine jobs, grouped by what trains together (alike data share one Problem, built once),
    and the jobs that could not be loaded, with why."""
    groups: dict[tuple, list[Member]] = defaultdict(list)
    failed: list[tuple[int, str]] = []
    problems: dict[tuple, Problem] = {}
    with reading() as reader:
        for row in reads.to_train(reader, ids):
            job_id = row["id"]
            datasets = tuple((name, row[f"{name}_dataset_id"]) for name in ("input", "labels", "kernel"))
            try:
                spec = JobSpec.parse(row["spec"])
                key = problem_key(spec, datasets)
                if key not in problems:
                    arrays = {name: reads.dataset(reader, ds) for name, ds in datasets if ds is not None}
                    problems[key] = build_problem(spec, arrays)
            except BadInput as exc:  # validated at submit; a stored spec can still fail to load
                failed.append((job_id, f"bad input: {exc}"))
                continue
            except MemoryError:
                failed.append((job_id, f"out of memory building the data of job {job_id} "
                                       f"(input {row['input']}, kernel {row['kernel']})"))
                continue
            except Exception as exc:
                if out_of_reach(exc):
                    raise
                failed.append((job_id, f"{type(exc).__name__} loading job {job_id}: {exc}"))
                continue
            problem = problems[key]
            groups[together(problem, spec)].append(
                (job_id, spec, engine.Job(problem, seed=spec.seed, lr=spec.lr, tol=spec.tol)))
    return list(groups.values()), failed


def train_group(members: list[Member]) -> Counter[str]:
    """Train jobs that train together, and store their results (or why they failed)."""
    ids = [m[0] for m in members]
    spec = members[0][1]
    try:
        device = engine.resolve_device(spec.device.value)
    except RuntimeError as exc:
        fail(ids, str(exc))
        return Counter({JobStatus.FAILED.value: len(ids)})
    with writing() as conn:
        writes.set_device(conn, ids, device)
    progress = Progress(ids, stream=len(ids) == 1)  # long single jobs write epochs as they go
    try:
        result = engine.train([m[2] for m in members], spec.method, spec.epochs, spec.batch_size, device,
                              on_epoch=progress)
    except Exception as exc:
        if out_of_reach(exc):
            raise
        # Whatever went wrong with these jobs ends them, never the worker (nor a retry loop).
        fail(ids, failure(exc, members, device))
        return Counter({JobStatus.FAILED.value: len(ids)})
    items = []
    for job_id, (row, epochs) in zip(ids, result.rows()):
        if progress.timed_out and row["status"] == JobStatus.CANCELLED.value:
            row.update(status=JobStatus.FAILED.value, error_message=(
                f"time limit of {settings().max_job_seconds} s exceeded (KLAB_MAX_JOB_SECONDS)"))
        items.append((job_id, row, epochs))
    with writing() as conn:
        writes.save_results(conn, items)
    return Counter(row["status"] for _, row, _ in items)


def failure(exc: BaseException, members: list[Member], device: str) -> str:
    """Why a group failed, saying how large it was."""
    p = members[0][2].problem
    what = (f"{len(members)} job(s) with input {'x'.join(map(str, p.x.shape))} ({p.x.size} elements) "
            f"and kernel {'x'.join(map(str, p.kernel_shape))} on {device}")
    text = one_line(exc)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "can't allocate memory" in text.lower():
        return f"out of memory training {what}: {text}"
    return f"{type(exc).__name__} training {what}: {text}"


def fail(ids: list[int], message: str) -> None:
    with writing() as conn:
        writes.fail(conn, ids, message)


@app.task(name=TASK_TRAIN, bind=True, max_retries=None)
def train(self: Task, job_ids: list[int]) -> dict[str, int]:
    """Train the jobs with these ids (a batch of compatible jobs, or one)."""
    if not isinstance(job_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in job_ids):
        log.error("refusing a malformed task: %r", job_ids)
        return {}
    try:
        return train_jobs(job_ids, self.request.id or "", self.request.hostname or HOST, self.request.retries or 0)
    except Exception as exc:
        if not out_of_reach(exc):
            raise
        # The database is away: wait and try again, with backoff, as long as it takes.
        delay = min(defaults.RETRY_MAX_SECONDS, defaults.RETRY_FIRST_SECONDS * 2 ** min(self.request.retries, 10))
        log.warning("database unreachable (%s); retrying in %.1f s", type(exc).__name__, delay)
        raise self.retry(countdown=delay) from None
