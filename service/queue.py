"""Submitting jobs: validate every spec, store the jobs, publish their ids to the broker.

The CLI publishes by task name through a bare Celery app, so it never imports the worker (torch).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service import defaults, store
from service.celeryconfig import QUEUES, TASK_TRAIN, celery_config
from service.errors import BadInput, BrokerUnavailable
from service.models import Job, JobStatus, utcnow
from service.settings import mask
from service.spec import Device, JobSpec, build_problem, file_arrays, problem_key


@lru_cache(maxsize=4)
def broker_app(broker_url: str):  # noqa: ANN201
    """A Celery app that only publishes (no tasks registered, no torch)."""
    from celery import Celery  # noqa: PLC0415

    app = Celery("klab-client")
    app.conf.update(celery_config(broker_url))
    app.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}
    return app


def check_broker(broker_url: str) -> None:
    """Fail fast, before anything is written, when the broker does not answer."""
    try:
        if broker_url.startswith(("redis://", "rediss://", "unix://")):
            import redis  # noqa: PLC0415

            client = redis.Redis.from_url(broker_url, socket_connect_timeout=2, socket_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        else:
            with broker_app(broker_url).connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is the same one line
        raise BrokerUnavailable(f"cannot reach the broker {mask(broker_url)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return mask(text.splitlines()[0]) if text else type(exc).__name__


def queue_for(spec: JobSpec, queue: str | None) -> str:
    """--queue wins; else cuda goes to gpu, cpu and auto to cpu."""
    if queue is not None:
        if queue not in QUEUES:
            raise BadInput("queue", f"unknown queue {queue!r}; expected cpu or gpu")
        return queue
    return "gpu" if spec.device is Device.CUDA else "cpu"


@dataclass(frozen=True)
class Prepared:
    """A validated spec with its queue, batch key and uploaded arrays."""

    spec: JobSpec
    queue: str
    key: tuple
    arrays: dict[str, Any]


def prepare(specs: Sequence[JobSpec], queue: str | None) -> list[Prepared]:
    """Validate every spec as a worker would build it; a bad one stops the whole submission."""
    shapes: dict[tuple, tuple] = {}
    out = []
    for spec in specs:
        arrays = file_arrays(spec)
        shape_key = problem_key(spec)
        if shape_key not in shapes:
            p = build_problem(spec, dict(arrays))
            shapes[shape_key] = (p.x.shape, p.y.shape, p.kernel_shape, p.has_bias)
        q = queue_for(spec, queue)
        key = (q, *shapes[shape_key], spec.method.value, spec.epochs, spec.batch_size, spec.device.value)
        out.append(Prepared(spec, q, key, arrays))
    return out


def batches(items: Sequence[tuple[int, Prepared]], batch_jobs: int) -> list[tuple[str, list[int]]]:
    """Compatible jobs grouped into tasks of at most batch_jobs ids: (queue, ids)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for job_id, prep in items:
        groups[prep.key].append(job_id)
    out = []
    for key, ids in groups.items():
        for i in range(0, len(ids), batch_jobs):
            out.append((key[0], ids[i : i + batch_jobs]))
    return out


def create_jobs(session: Session, prepared: Sequence[Prepared], sweep_id: int | None) -> list[int]:
    """Insert the jobs (status created) in bulk; ids in the order given."""
    dataset_ids: dict[int, int] = {}
    rows = []
    now = utcnow()
    for prep in prepared:
        ds = {}
        for name, array in prep.arrays.items():
            key = id(array)
            if key not in dataset_ids:
                dataset_ids[key] = store.put_dataset(session, array)
            ds[name] = dataset_ids[key]
        rows.append({**store.job_columns(prep.spec), "sweep_id": sweep_id, "queue": prep.queue,
                     "status": JobStatus.CREATED.value, "created_at": now, "attempts": 0, "task_try": 0,
                     "cancel_requested": False, "epochs_done": 0, "input_dataset_id": ds.get("input"),
                     "labels_dataset_id": ds.get("labels"), "kernel_dataset_id": ds.get("kernel")})
    return store.insert_jobs(session, rows)


def publish(session_factory, broker_url: str, tasks: Sequence[tuple[str, list[int]]]) -> int:  # noqa: ANN001
    """Send each task and mark its jobs queued; stops at the first failure and raises BrokerUnavailable."""
    app = broker_app(broker_url)
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for queue, ids in tasks:
                app.send_task(TASK_TRAIN, args=[ids], queue=queue, producer=producer)
                with session_factory() as session:
                    waiting = [JobStatus.CREATED.value, JobStatus.QUEUED.value]
                    session.execute(update(Job).where(Job.id.in_(ids), Job.status.in_(waiting))
                                    .values(status=JobStatus.QUEUED.value, queued_at=utcnow()))
                sent += len(ids)
    except BrokerUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - kombu/redis errors vary; all mean the same here
        raise BrokerUnavailable(f"cannot reach the broker {mask(broker_url)}: {_first_line(exc)}") from None
    return sent


def batches_by_queue(items: Sequence[tuple[int, str]], batch_jobs: int) -> list[tuple[str, list[int]]]:
    """Job ids grouped per queue into tasks of at most batch_jobs (workers regroup them by shape)."""
    per: dict[str, list[int]] = defaultdict(list)
    for job_id, queue in items:
        per[queue].append(job_id)
    return [(q, ids[i : i + batch_jobs]) for q, ids in per.items() for i in range(0, len(ids), batch_jobs)]


def publish_ids(app, tasks: Sequence[tuple[str, list[int]]]) -> None:  # noqa: ANN001
    """Send tasks without touching job rows (their status is already set)."""
    with app.producer_or_acquire() as producer:
        for queue, ids in tasks:
            app.send_task(TASK_TRAIN, args=[ids], queue=queue, producer=producer)


@dataclass(frozen=True)
class Holdings:
    """What a Redis broker holds now: the queues with messages waiting, and the job ids of messages
    delivered to a worker less than `young` seconds ago and not yet acknowledged."""

    busy_queues: frozenset[str]
    delivered_ids: frozenset[int]


def holdings(app, young: float) -> Holdings | None:  # noqa: ANN001
    """Look into a Redis broker (kombu's list per queue and its `unacked` hash); None for other brokers.

    kombu's Redis transport moves a message from its queue to `unacked` in two steps (BRPOP, then a
    MULTI from the worker): a broker that dies between them loses the message, whatever its persistence.
    A message in `unacked` for longer than `young` belongs to a worker that dropped it when its
    connection broke, and Redis gives it back only after the visibility timeout.
    """
    import json  # noqa: PLC0415
    import time  # noqa: PLC0415
    from base64 import b64decode  # noqa: PLC0415

    with app.connection_for_read() as conn:
        if conn.transport.driver_type != "redis":
            return None
        conn.ensure_connection(max_retries=1, timeout=5)  # a broker away: try at the next look, never hang
        channel = conn.default_channel
        client = channel.client
        busy = frozenset(q for q in QUEUES if channel._size(q))
        since = {tag: score for tag, score in client.zrange(channel.unacked_index_key, 0, -1, withscores=True)}
        now = time.time()
        ids: set[int] = set()
        for tag, raw in client.hgetall(channel.unacked_key).items():
            if now - since.get(tag, 0.0) >= young:
                continue
            try:
                message = json.loads(raw)[0]
                body = message["body"]
                if message.get("properties", {}).get("body_encoding") == "base64":
                    body = b64decode(body)
                args = json.loads(body)[0]
                ids.update(i for i in args[0] if isinstance(i, int))
            except (ValueError, KeyError, IndexError, TypeError):
                continue  # not one of ours: it carries no job ids
        return Holdings(busy, frozenset(ids))


def unqueued(session: Session, job_ids: Sequence[int] | None = None, sweep_id: int | None = None,
             include_queued: bool = False) -> list[Job]:
    """Jobs created but never handed to the broker (what `klab requeue` sends again), or also queued ones."""
    states = [JobStatus.CREATED.value] + ([JobStatus.QUEUED.value] if include_queued else [])
    stmt = select(Job).where(Job.status.in_(states))
    if sweep_id is not None:
        stmt = stmt.where(Job.sweep_id == sweep_id)
    if job_ids is not None:
        stmt = stmt.where(Job.id.in_(list(job_ids)))
    return list(session.scalars(stmt.order_by(Job.id)))


def describe_batches(tasks: Sequence[tuple[str, list[int]]]) -> str:
    n = sum(len(ids) for _, ids in tasks)
    return f"{n} job(s) in {len(tasks)} task(s)"


BATCH_JOBS = defaults.BATCH_JOBS
