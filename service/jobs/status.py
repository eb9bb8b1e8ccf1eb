"""A job's status and the changes it may go through. Every change of status in the service names its
target here; `service.db.writes.change_status` turns it into SQL."""
from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from service.errors import BadInput


class JobStatus(StrEnum):
    CREATED = "created"
    """Stored, not yet handed to the broker."""
    QUEUED = "queued"
    """Handed to the broker, waiting for a worker."""
    RUNNING = "running"
    """Claimed by a worker, which renews its lease while it trains."""
    SUCCEEDED = "succeeded"
    DIVERGED = "diverged"
    """Its loss became non-finite or grew past DIVERGENCE_FACTOR times its first value."""
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.DIVERGED, JobStatus.FAILED, JobStatus.CANCELLED})
TRAINED = frozenset({JobStatus.SUCCEEDED, JobStatus.CANCELLED})
"""Ended with the weights its epochs led to (a cancelled job's so far): its epochs and kernel hold, to be measured
and explained (a diverged job's weights blew up, a failed one has none)."""
MARKS: dict[JobStatus, str] = {
    JobStatus.FAILED: "error_message",  # why
    JobStatus.DIVERGED: "diverged_epoch",  # when
    JobStatus.CANCELLED: "cancel_requested",  # someone asked it to stop: klab cancel, or Ctrl-C in klab sweep --local
}
"""The ends other than success, each with the column every job that ends so has set (not null, or true). No claim
changes these columns, so an index of the jobs that have one set (service.db.schema.ENDED_BADLY) finds the
failed, diverged and cancelled jobs among millions and lets claims be in-place (HOT) updates; an index on status
would not (migration 0009)."""
WAITING = frozenset({JobStatus.CREATED, JobStatus.QUEUED})
"""Not started yet: a cancel ends them at once, a claim may take them. A quick task (worker.tasks: a second or less
of training) trains its jobs without claiming them, and ends them straight from here, while they still wait: a job
that a cancel, a delete or another worker took meanwhile keeps what they wrote."""

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    # stored as sent, but the broker failed before it took the message
    JobStatus.CREATED: frozenset({JobStatus.QUEUED}),
    # handed to the broker (again: requeue --queued, a lost message, a lease that ran out)
    JobStatus.QUEUED: frozenset({JobStatus.CREATED, JobStatus.QUEUED, JobStatus.RUNNING}),
    # claimed; a message may arrive before its publisher marked it queued, or after a lease ran out
    JobStatus.RUNNING: frozenset({JobStatus.CREATED, JobStatus.QUEUED, JobStatus.RUNNING}),
    # trained under a claim; or, a quick task's (a second or less of training), straight from waiting
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING}) | WAITING,
    JobStatus.DIVERGED: frozenset({JobStatus.RUNNING}) | WAITING,
    JobStatus.FAILED: frozenset({JobStatus.RUNNING}) | WAITING,
    # waiting jobs end at once; running ones stop at their next check
    JobStatus.CANCELLED: frozenset({JobStatus.CREATED, JobStatus.QUEUED, JobStatus.RUNNING}),
}
"""Target status -> the statuses a job may reach it from."""

STARTS = frozenset({JobStatus.CREATED, JobStatus.QUEUED, JobStatus.RUNNING})
"""The statuses a job row may be created with: stored to be sent (queued, the message following at once),
stored but not sent (the broker failed meanwhile), or trained here by `klab run`."""


def sources(target: JobStatus, among: frozenset[JobStatus] | set[JobStatus] | None = None) -> frozenset[JobStatus]:
    """The statuses a change to `target` may start from (restricted to `among`); a change the rules do not
    allow is a bug, not a user's mistake."""
    allowed = ALLOWED[JobStatus(target)]
    if among is None:
        return allowed
    among = frozenset(JobStatus(s) for s in among)
    if not among <= allowed:
        raise ValueError(f"a job cannot go from {sorted(s.value for s in among - allowed)} to {target.value}")
    return among


def in_order(statuses: Iterable[str]) -> list[str]:
    """The distinct statuses, in the order a job lives through them (JobStatus's); any other after them, sorted."""
    present = set(statuses)
    known = [s.value for s in JobStatus if s.value in present]
    return known + sorted(present - set(known))


def parse(value: str) -> JobStatus:
    """A status a user typed (klab list --status)."""
    try:
        return JobStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise BadInput("status", f"unknown status {value!r}; choose from {known}") from None
