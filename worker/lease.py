"""Leases: a worker holds the jobs it trains by a heartbeat, and the reaper of every worker takes back the
jobs of dead workers and sends again those whose message the broker lost.

At-least-once delivery meets idempotent writes: a job is claimed only while it waits (or its lease ran
out), storing a result replaces any epochs a previous attempt wrote, and whatever a worker writes of a job,
its heartbeat, its result, its failure or a long job's epochs as it trains, goes in only while the claim it
trained under holds (service.db.writes: heartbeat, save_results, fail and streamed, given the claim's
`attempts`).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from service import broker, defaults
from service.db import reads, writes
from service.db.engine import retried, writing
from service.settings import settings

log = logging.getLogger(__name__)


def backoff(tries: int) -> float:
    """Seconds to wait before try `tries` + 1 of something that found the database away: RETRY_FIRST_SECONDS,
    doubling, at most RETRY_MAX_SECONDS."""
    return min(defaults.RETRY_MAX_SECONDS, defaults.RETRY_FIRST_SECONDS * 2 ** min(tries, 16))


def claim(ids: Sequence[int], host: str, task_id: str, task_try: int) -> list[Any]:
    """This task's jobs that it may train now, with what it needs to train them (service.db.writes.claim)."""
    lease = settings().lease_seconds
    return retried(lambda conn: writes.claim(conn, ids, host, task_id, task_try, lease), durable=False)


class Heartbeat:
    """Renews the lease of the jobs in hand (their `attempts` as the claim left them) from a thread, so a long
    epoch never looks like a dead worker."""

    def __init__(self, ids: Sequence[int], attempts: Sequence[int]):
        self.ids, self.attempts = list(ids), list(attempts)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="klab-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.wait(settings().heartbeat_seconds):
            try:
                with writing(durable=False) as conn:
                    writes.heartbeat(conn, self.ids, self.attempts)
            except Exception as exc:  # noqa: BLE001 - the task itself notices a lost database
                log.warning("heartbeat failed: %s", type(exc).__name__)


def _send_again(found: list[tuple[int, str | None]]) -> None:
    broker.publish(broker.client(), broker.tasks([(i, (q or "cpu",)) for i, q in found], defaults.BATCH_JOBS),
                   reads.identity(), again=True)


def reap() -> int:
    """Send again the jobs of dead workers: running with a lease that ran out. Returns how many."""
    s = settings()
    with writing() as conn:
        found = writes.reap(conn, s.lease_seconds, s.max_attempts)
    if found:
        _send_again(found)
        log.warning("re-queued %d job(s) whose worker stopped answering", len(found))
    return len(found)


def resend_stranded() -> int:
    """Send again jobs queued for longer than KLAB_STRANDED_SECONDS for which the broker holds no message.

    Only for queues with no message waiting (a busy queue's jobs may simply be behind others), and only
    jobs that no message delivered within that time carries. A copy sent in error is harmless: a job is
    claimed once. Returns how many were sent.
    """
    threshold = settings().stranded_seconds
    held = broker.holdings(broker.client(), threshold, reads.identity())
    if held is None:
        return 0
    idle = [q for q in broker.QUEUES if q not in held.busy_queues]
    if not idle:
        return 0
    with writing() as conn:
        found = writes.stranded(conn, threshold, idle, held.delivered_ids | in_hand())
    if found:
        _send_again(found)
        log.warning("sent again %d queued job(s) the broker held no message for (KLAB_STRANDED_SECONDS=%d)",
                    len(found), threshold)
    return len(found)


def in_hand() -> frozenset[int]:
    """The job ids of the messages this worker holds, received and not yet acknowledged: its pool's tasks and any
    waiting for it. After a reconnect a worker takes one message more than its pool runs; it waits in `unacked` for
    as long as the task before it trains, and past KLAB_STRANDED_SECONDS it read as one dropped: its jobs were sent
    again while this worker held them (harmless, claimed once, but sent and logged again every few seconds)."""
    from celery.worker import state

    return frozenset(i for request in list(state.requests.values())  # every request reserved and not ready; a dict
                     # the consumer changes meanwhile, copied in one step
                     if request.name == broker.TASK_TRAIN for i in broker.carried(request.args))


def reaper(stop: threading.Event) -> threading.Thread:
    """Start the reaper: every KLAB_STRANDED_SECONDS / 2 or lease / 2, whichever is shorter, until `stop`."""
    def loop() -> None:
        while not stop.wait(settings().reaper_seconds):
            for look in (reap, resend_stranded):
                try:
                    look()
                except Exception as exc:  # noqa: BLE001 - a database or broker outage; try again later
                    log.warning("reaper: %s: %s", look.__name__, type(exc).__name__)

    thread = threading.Thread(target=loop, name="klab-reaper", daemon=True)
    thread.start()
    return thread
