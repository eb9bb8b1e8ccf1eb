"""The one task: train a batch of jobs by id. Load, call the engine, store.

At-least-once delivery meets idempotent writes: a job is claimed only while it is queued (or its
lease ran out because its worker died), and storing a result replaces any epochs a previous
attempt wrote.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict
from datetime import timedelta
import numpy as np
from celery import Task
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError

from service import defaults, store
from service.celeryconfig import QUEUES, TASK_TRAIN
from service.db import DatabaseUnavailable, session_scope
from service.errors import BadInput
from service.models import Job, JobStatus, utcnow
from service.spec import JobSpec, Problem, build_problem, problem_key
from worker import engine
from worker.app import app

log = logging.getLogger(__name__)
HOST = socket.gethostname()


def claim(job_ids: list[int], host: str, task_id: str, task_try: int) -> list[Job]:
    """Mark the task's claimable jobs running; returns them (others are finished, cancelled or live elsewhere).

    Claimable: queued; or running under an earlier try of this same task (it gave up and scheduled
    this retry); or running with a lease that ran out (its worker died). A redelivered copy of a
    message whose jobs are alive elsewhere claims nothing.
    """
    now = utcnow()
    stale = now - timedelta(seconds=defaults.lease_seconds())
    with session_scope() as session:
        running = Job.status == JobStatus.RUNNING.value
        claimable = or_(Job.status.in_([JobStatus.CREATED.value, JobStatus.QUEUED.value]),
                        running & (Job.task_id == task_id) & (Job.task_try < task_try),
                        running & (Job.heartbeat_at < stale))
        ids = session.scalars(
            update(Job).where(Job.id.in_(job_ids), claimable, Job.cancel_requested.is_(False))
            .values(status=JobStatus.RUNNING.value, started_at=now, heartbeat_at=now, worker_host=host,
                    task_id=task_id, task_try=task_try, attempts=Job.attempts + 1)
            .returning(Job.id)).all()
        # Jobs cancelled before they started end here, never having run.
        session.execute(update(Job).where(Job.id.in_(job_ids), Job.cancel_requested.is_(True),
                                          Job.status.in_([JobStatus.CREATED.value, JobStatus.QUEUED.value]))
                        .values(status=JobStatus.CANCELLED.value, finished_at=now))
        jobs = list(session.scalars(select(Job).where(Job.id.in_(ids)).order_by(Job.id)))
        for job in jobs:
            session.expunge(job)
        return jobs


class Heartbeat:
    """Renews the lease of the jobs in hand from a thread, so a long epoch never looks like a dead worker."""

    def __init__(self, ids: list[int]):
        self.ids = ids
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="klab-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.wait(defaults.heartbeat_seconds()):
            try:
                with session_scope() as session:
                    session.execute(update(Job).where(Job.id.in_(self.ids), Job.status == JobStatus.RUNNING.value)
                                    .values(heartbeat_at=utcnow()))
            except Exception as exc:  # noqa: BLE001 - the task itself notices a lost database
                log.warning("heartbeat failed: %s", type(exc).__name__)


def reap() -> int:
    """Send again the jobs of dead workers: running with a lease that ran out. Returns how many."""
    from service.queue import batches_by_queue, publish_ids  # noqa: PLC0415

    stale = utcnow() - timedelta(seconds=defaults.lease_seconds())
    with session_scope() as session:
        orphaned = (Job.status == JobStatus.RUNNING.value) & (Job.heartbeat_at < stale)
        # A job that took its worker down this many times is not sent again to take down another.
        session.execute(update(Job).where(orphaned, Job.attempts >= defaults.max_attempts()).values(
            status=JobStatus.FAILED.value, finished_at=utcnow(),
            error_message=f"its worker stopped answering {defaults.max_attempts()} times (KLAB_MAX_ATTEMPTS)"))
        found = session.execute(
            update(Job).where(orphaned).values(status=JobStatus.QUEUED.value, task_id=None, queued_at=utcnow())
            .returning(Job.id, Job.queue)).all()
    if found:
        publish_ids(app, batches_by_queue([(r.id, r.queue or "cpu") for r in found], defaults.BATCH_JOBS))
        log.warning("re-queued %d job(s) whose worker stopped answering", len(found))
    return len(found)


def resend_stranded() -> int:
    """Send again jobs queued for longer than KLAB_STRANDED_SECONDS for which the broker holds no message.

    Only for queues with no message waiting (a busy queue's jobs may simply be behind others), and only
    jobs that no message delivered within that time carries. A copy sent in error is harmless: a job is
    claimed once. Returns how many were sent.
    """
    from service.queue import batches_by_queue, holdings, publish_ids  # noqa: PLC0415

    threshold = defaults.stranded_seconds()
    held = holdings(app, threshold)
    if held is None:
        return 0
    idle = [q for q in QUEUES if q not in held.busy_queues]
    if not idle:
        return 0
    now = utcnow()
    waiting = (Job.status == JobStatus.QUEUED.value) & (Job.queued_at < now - timedelta(seconds=threshold))
    with session_scope() as session:
        candidates = session.scalars(select(Job.id).where(waiting, Job.queue.in_(idle))).all()
        lost = [i for i in candidates if i not in held.delivered_ids]
        if not lost:
            return 0
        # The same condition again: another worker's reaper may have sent them since.
        found = session.execute(update(Job).where(Job.id.in_(lost), waiting).values(queued_at=now)
                                .returning(Job.id, Job.queue)).all()
    if found:
        publish_ids(app, batches_by_queue([(r.id, r.queue or "cpu") for r in found], defaults.BATCH_JOBS))
        log.warning("sent again %d queued job(s) the broker held no message for (KLAB_STRANDED_SECONDS=%d)",
                    len(found), threshold)
    return len(found)


def load(job: Job, session, problems: dict[tuple, Problem]) -> tuple[JobSpec, engine.Job]:  # noqa: ANN001
    """A job's spec and engine job; jobs whose data are alike share one Problem (built once)."""
    spec = JobSpec.parse(job.spec)
    datasets = (("input", job.input_dataset_id), ("labels", job.labels_dataset_id), ("kernel", job.kernel_dataset_id))
    key = problem_key(spec, datasets)
    if key not in problems:
        arrays = {name: store.get_dataset(session, ds_id) for name, ds_id in datasets if ds_id is not None}
        problems[key] = build_problem(spec, arrays)
    return spec, engine.Job(problems[key], seed=spec.seed, lr=spec.lr, tol=spec.tol)


class Progress:
    """The engine's per-epoch callback: heartbeats, cancellation, streamed epochs, the time limit."""

    def __init__(self, ids: list[int], stream: bool):
        self.ids = ids
        self.stream = stream  # long single jobs write epochs as they go
        self.started = self.last_flush = self.last_beat = time.monotonic()
        self.flushed = 0  # epochs already written (streaming)
        self.pending: list[tuple] = []
        self.timed_out = False

    def __call__(self, event: engine.EpochEvent) -> np.ndarray | None:
        if self.stream:
            self.pending.append((self.ids[0], event.epoch, float(event.loss[0]),
                                 None if event.mse is None else float(event.mse[0]),
                                 None if event.kernel_error is None else float(event.kernel_error[0])))
        now = time.monotonic()
        if now - self.started > defaults.max_job_seconds():
            self.timed_out = True
            return np.ones(len(self.ids), dtype=bool)
        if now - self.last_flush < defaults.FLUSH_SECONDS:
            return None
        self.last_flush = now
        with session_scope() as session:
            if self.stream and self.pending:
                self._flush(session)
            if self.stream:
                session.execute(update(Job).where(Job.id.in_(self.ids)).values(epochs_done=self.flushed))
            cancelled = set(session.scalars(select(Job.id).where(Job.id.in_(self.ids),
                                                                 Job.cancel_requested.is_(True))))
        if cancelled:
            return np.array([i in cancelled for i in self.ids])
        return None

    def _flush(self, session) -> None:  # noqa: ANN001
        # d2l-manual measures an epoch's mse at the next forward pass: keep the last epoch back.
        ready, self.pending = self.pending[:-1], self.pending[-1:]
        if ready:
            store.replace_epochs(session, [self.ids[0]], ready, from_epoch=ready[0][1])
            self.flushed = ready[-1][1]


def train_jobs(job_ids: list[int], task_id: str, host: str = HOST, task_try: int = 0) -> dict[str, int]:
    """Claim, train (batched by group key) and store; returns counts by status."""
    jobs = claim(job_ids, host, task_id, task_try)
    if not jobs:
        return {}
    with Heartbeat([j.id for j in jobs]):
        return _train_claimed(jobs)


def _train_claimed(jobs: list[Job]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    groups: dict[tuple, list[tuple[int, JobSpec, engine.Job]]] = defaultdict(list)
    failed: list[tuple[int, str]] = []
    problems: dict[tuple, Problem] = {}
    with session_scope() as session:
        for job in jobs:
            try:
                spec, ej = load(job, session, problems)
            except BadInput as exc:  # validated at submit; a stored spec can still fail to load
                failed.append((job.id, f"bad input: {exc}"))
                continue
            except MemoryError:
                failed.append((job.id, f"out of memory building the data of job {job.id} "
                                       f"(input {job.input}, kernel {job.kernel})"))
                continue
            except Exception as exc:
                if unreachable(exc):
                    raise
                failed.append((job.id, f"{type(exc).__name__} loading job {job.id}: {exc}"))
                continue
            key = engine.group_key(ej, spec.method, spec.epochs, spec.batch_size) + (spec.device.value,)
            groups[key].append((job.id, spec, ej))
    for job_id, message in failed:
        _fail([job_id], message)
        counts["failed"] += 1
    for members in groups.values():
        ids = [m[0] for m in members]
        spec0 = members[0][1]
        try:
            device = engine.resolve_device(spec0.device.value)
        except RuntimeError as exc:
            _fail(ids, str(exc))
            counts["failed"] += len(ids)
            continue
        with session_scope() as session:
            session.execute(update(Job).where(Job.id.in_(ids)).values(device=device))
        stream = len(ids) == 1
        progress = Progress(ids, stream)
        try:
            result = engine.train([m[2] for m in members], spec0.method, spec0.epochs, spec0.batch_size,
                                  device, on_epoch=progress)
        except Exception as exc:
            if unreachable(exc):
                raise
            # Whatever went wrong with these jobs ends them, never the worker (nor a retry loop).
            _fail(ids, _failure(exc, members, device))
            counts["failed"] += len(ids)
            continue
        items = []
        for i, job_id in enumerate(ids):
            record = result.record(i)
            if progress.timed_out and record["status"] == "cancelled":
                record["status"] = JobStatus.FAILED.value
            items.append((job_id, record))
            counts[record["status"]] += 1
        with session_scope() as session:
            store.save_results(session, items)
            if progress.timed_out:
                session.execute(update(Job).where(Job.id.in_(ids), Job.status == JobStatus.FAILED.value).values(
                    error_message=f"time limit of {defaults.max_job_seconds()} s exceeded (KLAB_MAX_JOB_SECONDS)"))
    return dict(counts)


def _failure(exc: BaseException, members: list, device: str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    p = members[0][2].problem
    what = (f"{len(members)} job(s) with input {'x'.join(map(str, p.x.shape))} ({p.x.size} elements) "
            f"and kernel {'x'.join(map(str, p.kernel_shape))} on {device}")
    low = text.lower()
    if isinstance(exc, MemoryError) or "out of memory" in low or "can't allocate memory" in low:
        return f"out of memory training {what}: {text}"
    return f"{type(exc).__name__} training {what}: {text}"


def _fail(ids: list[int], message: str) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id.in_(ids)).values(
            status=JobStatus.FAILED.value, error_message=message, finished_at=utcnow()))


def unreachable(exc: BaseException) -> bool:
    """Whether an error means the database is (for now) out of reach, as opposed to a bug or bad data."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.exit_code == 3
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        text = str(exc.orig or exc).lower()
        return any(s in text for s in ("connection", "could not connect", "server closed", "terminating",
                                       "timeout", "database is locked", "the database system is"))
    return False


@app.task(name=TASK_TRAIN, bind=True, max_retries=None)
def train(self: Task, job_ids: list[int]) -> dict[str, int]:
    """Train the jobs with these ids (a batch of compatible jobs, or one)."""
    if not isinstance(job_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in job_ids):
        log.error("refusing a malformed task: %r", job_ids)
        return {}
    try:
        return train_jobs(job_ids, self.request.id or "", self.request.hostname or HOST, self.request.retries or 0)
    except Exception as exc:
        if not unreachable(exc):
            raise
        # The database is away: wait and try again, with backoff, as long as it takes.
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(self.request.retries, 10))
        log.warning("database unreachable (%s); retrying in %.1f s", type(exc).__name__, delay)
        raise self.retry(countdown=delay) from None


RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
