"""The engine's per-epoch callback where stored jobs train (a worker's task, a local sweep's batch):
cancellation, jobs no longer its own, the time limit, and a long single job's epochs written as it trains."""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from service import defaults
from service.db import writes
from service.db.engine import writing
from service.jobs.columns import Columns
from service.jobs.status import JobStatus
from service.settings import settings
from worker.engine import EpochEvent
from worker.engine.explain import CANCELLED_PART_WAY, TIMED_OUT_PART_WAY


class Progress:
    """Checks about once a second (FLUSH_SECONDS) which jobs were cancelled, and which are no longer under the
    claims that left them at `attempts` (deleted, or taken back: `lost`), and stops those; stops them all at the
    time limit; with `stream`, writes the one job's epochs as they come, while its claim holds. A `quick` task's
    jobs, not claimed, are lost once they no longer wait (cancelled, ended or claimed elsewhere, or deleted)."""

    def __init__(self, ids: Sequence[int], attempts: Sequence[int], stream: bool, quick: bool = False):
        if stream and (len(ids) != 1 or quick):
            raise ValueError("a streamed job is one job, claimed")
        self.ids, self.attempts = list(ids), list(attempts)
        self.stream, self.quick = stream, quick
        self.started = self.last_flush = time.monotonic()
        self.flushed = 0  # epochs already written (streaming)
        self.pending: list[dict] = []
        self.timed_out = False
        self.lost: set[int] = set()  # jobs no longer this worker's: nothing of them is to be stored here
        self.asked: set[int] = set()  # jobs stopped because `klab cancel` asked: cancelled, whatever the time limit

    def __call__(self, event: EpochEvent) -> np.ndarray | None:
        if self.stream:
            self.pending.append({"epoch": event.epoch, "loss": float(event.loss[0]),
                                 "mse": None if event.mse is None else float(event.mse[0]),
                                 "kernel_error": None if event.kernel_error is None else float(event.kernel_error[0])})
        now = time.monotonic()
        if now - self.started > settings().max_job_seconds:
            if not self.timed_out:  # a cancel asked since the last look ends its job cancelled, as asked: it ended
                self.timed_out = True  # failed at the limit when asked within the second before it
                self._look()
            return np.ones(len(self.ids), dtype=bool)
        if now - self.last_flush < defaults.FLUSH_SECONDS:
            return None
        self.last_flush = now
        cancelled = self._look()
        if cancelled or self.lost:
            return np.array([i in cancelled or i in self.lost for i in self.ids])
        return None

    def _look(self) -> set[int]:
        """Which jobs were cancelled (added to `asked`, and returned) and which are no longer this worker's (`lost`);
        a streamed job's epochs written first."""
        with writing(durable=False) as conn:
            if self.stream and not self._flush(conn):
                self.lost = set(self.ids)
                return set()
            cancelled, gone = writes.stopping(conn, self.ids, self.attempts, self.quick)
        self.lost |= gone
        self.asked |= cancelled
        return set(cancelled)

    def ended(self, results: Columns) -> None:
        """The batch's results as they are to be stored: past the time limit, the jobs it stopped failed (not those
        `klab cancel` had stopped before it: they end cancelled, as asked)."""
        if not self.timed_out:
            return
        late = f"time limit of {settings().max_job_seconds} s exceeded (KLAB_MAX_JOB_SECONDS)"
        ends = results.values["status"]
        stopped = [s == JobStatus.CANCELLED.value and i not in self.asked for i, s in zip(self.ids, ends)]
        results.values["status"] = [JobStatus.FAILED.value if x else s for s, x in zip(ends, stopped)]
        results.values["error_message"] = [late if x else None for x in stopped]
        results.values["explanation"] = [e.replace(CANCELLED_PART_WAY, TIMED_OUT_PART_WAY, 1) if x and e else e
                                         for e, x in zip(results.values["explanation"], stopped)]

    def _flush(self, conn) -> bool:
        """Write the epochs ready; whether the job is still this claim's (nothing written if not)."""
        # d2l-manual measures an epoch's mse at the next forward pass: keep the last epoch back.
        ready = self.pending[:-1]
        done = ready[-1]["epoch"] if ready else self.flushed
        if not writes.streamed(conn, self.ids[0], self.attempts[0], ready, done):
            return False
        self.pending, self.flushed = self.pending[-1:], done
        return True
