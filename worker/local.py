"""Jobs trained in this process, batched as a worker batches them, and stored with no broker: `klab sweep
--local`.

A plan's jobs (service.submit: validated before anything is stored) are stored running a chunk at a time,
then trained by the engine in groups of jobs that train together (their message key, made of
service.jobs.problem.together), at most batch_jobs at once, and their results saved column by column
(service.db.writes.save_results). Jobs alike but for their seed, lr and tol share one parsed spec, and
jobs whose data are alike one Problem, as a worker's do.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from service import defaults
from service.db import writes
from service.db.connect import out_of_reach
from service.db.engine import peeking, retried, writing
from service.errors import BadInput, one_line
from service.jobs.problem import Problem, build_problem, problem_key
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus
from service.jobs.stored import PER_JOB
from service.submit import CHUNK_JOBS, Job, Plan, most_jobs, store
from worker import engine
from worker.progress import Progress

Batch = tuple[JobSpec, list[int], list[engine.Job]]
"""Jobs that train together: the spec that stands for them (method, epochs, batch size, device), their ids
and the engine's jobs."""


def train_plan(plan: Plan, batch_jobs: int, trained: Callable[[int], None] | None = None) -> list[int]:
    """Store, train and save every job of a plan, a chunk at a time; their ids. `trained(n)` hears of each
    batch of n jobs saved. Stopped midway, the jobs stored and not yet saved end cancelled at a Ctrl-C, failed,
    saying why, at an error (stopped)."""
    jobs = iter(plan.jobs)
    first = next(jobs, None)
    if first is None:
        return []
    engine.checked_device(first[0]["device"])  # the device is one for a whole sweep: checked before storing
    ids: list[int] = []
    for chunk in _chunks(itertools.chain([first], jobs)):
        with writing() as conn:
            made = store(conn, plan, chunk, JobStatus.RUNNING)
        ids += made
        left, looked = set(made), time.monotonic()
        try:
            for spec, batch_ids, batch in batches(made, chunk, batch_jobs, left):
                if time.monotonic() - looked >= defaults.FLUSH_SECONDS:  # as often as a batch's Progress looks
                    batch_ids, batch = _unstopped(batch_ids, batch, left)
                    looked = time.monotonic()
                if batch:
                    _train(spec, batch_ids, batch)
                left -= set(batch_ids)
                if trained is not None:
                    trained(len(batch_ids))
        except BaseException as exc:
            if left:
                stopped(sorted(left), exc)
            raise
    return ids


def _unstopped(ids: list[int], jobs: list[engine.Job], left: set[int]) -> tuple[list[int], list[engine.Job]]:
    """Of a batch about to train, the jobs neither cancelled (klab cancel) nor deleted since they were stored, as a
    worker's claim leaves them: those cancelled end so, having trained none, and leave `left` with those deleted.
    (Its Progress first looks a second in: each batch of a sweep cancelled or deleted trained that second and
    stored it, a job of one epoch `succeeded`, and 4,096 one-job batches took over an hour to stop.) Looked at
    once a FLUSH_SECONDS at most: a look a batch made one-job batches 1.2x to 1.3x slower."""
    with peeking() as conn:  # a read: no write lock on SQLite
        cancelled, gone = writes.stopping(conn, ids, [0] * len(ids))
    if not cancelled and not gone:
        return ids, jobs
    if cancelled:
        with writing(durable=False) as conn:
            writes.stopped(conn, sorted(cancelled))
    left -= cancelled | gone
    kept = [(i, job) for i, job in zip(ids, jobs) if i not in cancelled and i not in gone]
    return [i for i, _ in kept], [job for _, job in kept]


def stopped(ids: list[int], exc: BaseException) -> None:
    """Jobs stored and not saved when the sweep stopped: cancelled, as asked, at a Ctrl-C; failed at an error,
    saying which, as a worker fails the jobs it cannot store (a full disk ended them cancelled, which nobody had
    asked, with no word of why). Where the database that failed the sweep refuses this too (a full PostgreSQL), they
    stay running, and the sweep's error is the one said."""
    if not isinstance(exc, Exception):
        with writing() as conn:
            writes.stopped(conn, ids)
        return
    cause = getattr(exc, "orig", None) or exc  # the driver's, as the command's line says it
    try:
        with writing() as conn:
            writes.fail(conn, ids, f"klab sweep --local stopped at {type(cause).__name__}: {one_line(cause)}")
    except Exception:  # noqa: BLE001, S110 - the error the sweep stopped at is raised next (its line counts them)
        pass


def _chunks(jobs: Iterator[Job]) -> Iterator[list[Job]]:
    while chunk := list(itertools.islice(jobs, CHUNK_JOBS)):
        yield chunk


def batches(ids: Sequence[int], chunk: Sequence[Job], batch_jobs: int, left: set[int]) -> Iterator[Batch]:
    """Stored jobs as the engine's, grouped by their message key (what trains together) in batches of at most
    batch_jobs, and no more than fit in KLAB_MAX_JOB_MEMORY together (service.submit.most_jobs). A job
    whose data cannot be built fails at once, with why, and is taken out of `left`."""
    specs: dict[tuple, JobSpec] = {}
    problems: dict[tuple, Problem] = {}
    groups: dict[tuple, list[tuple[int, JobSpec, dict[str, Any], dict[str, Any]]]] = {}
    for job_id, (values, key, files) in zip(ids, chunk):
        alike = tuple((k, v) for k, v in values.items() if k not in PER_JOB)
        if alike not in specs:
            specs[alike] = JobSpec.parse(values)
        groups.setdefault(key, []).append((job_id, specs[alike], values, files))
    failed: list[tuple[int, str]] = []
    for key, members in groups.items():
        size = min(batch_jobs, most_jobs(key))
        for i in range(0, len(members), size):
            batch_ids, batch = [], []
            for job_id, spec, values, files in members[i : i + size]:
                own = spec.model_copy(update={"seed": values["seed"]})
                try:
                    pk = problem_key(own)
                    if pk not in problems:
                        problems[pk] = build_problem(own, dict(files))
                except BadInput as exc:
                    failed.append((job_id, f"bad input: {exc}"))
                    continue
                except MemoryError:  # as a worker's: the job fails, the sweep goes on (it ended, its jobs cancelled)
                    failed.append((job_id, engine.unbuilt(job_id, own.input, own.kernel)))
                    continue
                batch_ids.append(job_id)
                batch.append(engine.Job(problems[pk], seed=values["seed"], lr=values["lr"], tol=values["tol"]))
            if failed:
                with writing() as conn:
                    for job_id, message in failed:
                        writes.fail(conn, [job_id], message)
                left -= {job_id for job_id, _ in failed}
                failed.clear()
            if batch:
                yield members[i][1], batch_ids, batch


def _train(spec: JobSpec, ids: list[int], jobs: list[engine.Job]) -> None:
    """Train one batch and save its results; a batch that cannot train fails, saying how large it was. Its jobs
    stop as a worker's do: cancelled (klab cancel) or deleted meanwhile, or at the time limit (Progress)."""
    progress = Progress(ids, [0] * len(ids), stream=False)  # stored running here: no claim counted
    try:
        results = engine.train(jobs, spec.method, spec.epochs, spec.batch_size, spec.device.value,
                               on_epoch=progress).columns
    except Exception as exc:
        if out_of_reach(exc):
            raise
        # Whatever went wrong with these jobs ends them, never the sweep.
        with writing() as conn:
            writes.fail(conn, ids, engine.failure(exc, jobs, spec.device.value))
        return
    progress.ended(results)
    retried(lambda conn: writes.save_results(conn, ids, results, fresh=True))
