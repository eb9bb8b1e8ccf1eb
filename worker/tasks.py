"""The one task: train a batch of jobs by id. Claim, load, call the engine, store."""
from __future__ import annotations

import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from celery import Task

from service import defaults
from service.broker import TASK_TRAIN
from service.db import writes
from service.db.connect import out_of_reach
from service.db.datasets import dataset
from service.db.engine import peeking, retried, writing
from service.db.reads import reading
from service.db.schema import utcnow
from service.errors import BadInput, one_line
from service.jobs.problem import Problem, build_problem, fitting, random_input, seeded, together, work
from service.jobs.spec import JobSpec
from service.jobs.status import FINISHED, WAITING, JobStatus
from service.jobs.stored import alike
from worker import engine
from worker.app import app
from worker.lease import Heartbeat, backoff, claim
from worker.progress import Progress

log = logging.getLogger(__name__)
HOST = socket.gethostname()


@dataclass
class Group:
    """Jobs that train together: one spec stands for them (their method, epochs, batch size, device)."""

    spec: JobSpec
    most: int  # jobs that fit in one batch (service.jobs.problem.fitting)
    ids: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)  # each job's, as its claim left them
    jobs: list[engine.Job] = field(default_factory=list)
    quick: dict[str, Any] | None = None  # a quick task's trained_by (service.db.writes): its jobs are not claimed

    @property
    def fresh(self) -> bool:
        """No epochs of theirs stored yet: every job's first claim, or a quick task's jobs never claimed (a job trained
        alone writes its epochs as it goes: a dead worker's, sent again, has some)."""
        return all(a == (0 if self.quick is not None else 1) for a in self.attempts)

    @property
    def work(self) -> float:
        """How much loading and training them takes (service.jobs.problem.work)."""
        problems = len({id(j.problem) for j in self.jobs})  # one shared, or one a job (seeded)
        inputs = problems if random_input(self.spec) else 1
        return work(together(self.jobs[0].problem, self.spec), len(self.jobs), problems, inputs)


def train_jobs(job_ids: Sequence[int], task_id: str, host: str = HOST, task_try: int = 0, again: bool = False
               ) -> dict[str, int]:
    """Train (in groups that train together) and store; returns counts by status. A quick task (every job waiting,
    at most QUICK_WORK to train: a second or so) trains its jobs without claiming them, and ends those still waiting
    as its claim would have; any other claims its jobs first, and holds them by a heartbeat while it trains. So does
    one whose jobs were sent `again` (a reaper's, a redelivery): each claim counts an attempt, and a job whose workers
    die KLAB_MAX_ATTEMPTS times ends failed."""
    if again:
        return claimed(job_ids, host, task_id, task_try, None)
    with peeking() as conn:
        rows = writes.peek(conn, job_ids)
    waiting = [r for r in rows if r.status in WAITING and not r.cancel_requested]
    if not waiting or len(waiting) < sum(r.status not in FINISHED for r in rows):
        return claimed(job_ids, host, task_id, task_try, None)  # none to train, or some a claim must look at
    groups, failed = load(waiting)
    if sum(g.work for g in groups) > defaults.QUICK_WORK:
        return claimed(job_ids, host, task_id, task_try, (waiting, groups, failed))
    quick = writes.trained_by(host, task_id, task_try, utcnow())
    for group in groups:
        group.quick = quick
    return trained(groups, failed, {r.id: r.attempts for r in waiting}, quick)


def claimed(job_ids: Sequence[int], host: str, task_id: str, task_try: int,
            loaded: tuple[list[Any], list[Group], list[tuple[int, str]]] | None) -> dict[str, int]:
    """Claim a task's jobs, then train and store them holding them by a heartbeat; `loaded`: those it read waiting,
    loaded (their groups are used again if the claim took each of them, and no other)."""
    rows = claim(job_ids, host, task_id, task_try)
    if not rows:
        return {}
    attempts = {r.id: r.attempts for r in rows}
    with Heartbeat(list(attempts), list(attempts.values())):
        if loaded and attempts == {r.id: r.attempts + 1 for r in loaded[0]}:
            groups, failed = loaded[1:]
            for group in groups:
                group.attempts = [attempts[i] for i in group.ids]
        else:
            groups, failed = load(rows)
        return trained(groups, failed, attempts, None)


def trained(groups: list[Group], failed: list[tuple[int, str]], attempts: dict[int, int],
            quick: dict[str, Any] | None) -> dict[str, int]:
    """Fail the jobs that could not be loaded, train and store the rest; counts by status."""
    counts: Counter[str] = Counter()
    for job_id, message in failed:
        counts.update(fail([job_id], message, [attempts[job_id]], quick))
    for group in groups:
        counts.update(train_group(group))
    return dict(+counts)  # the jobs this task ended, by status (none that others held or ended meanwhile)


def load(rows: Sequence[Any]) -> tuple[list[Group], list[tuple[int, str]]]:
    """The claimed jobs as engine jobs, grouped by what trains together, in batches that fit in
    KLAB_MAX_JOB_MEMORY together (service.jobs.problem.fitting). Jobs alike but for their seed, lr and
    tol (service.jobs.stored.PER_JOB) share one parsed spec, and jobs whose data are alike one Problem, built
    once. Also the jobs that could not be loaded, with why."""
    by_spec: dict[tuple, list[tuple[Any, float]]] = {}
    texts, tols = alike([row.spec for row in rows])
    for row, text, tol in zip(rows, texts, tols):
        by_spec.setdefault((text, row.input_dataset_id, row.labels_dataset_id, row.kernel_dataset_id),
                         []).append((row, tol))
    groups: dict[tuple, Group] = {}  # each key's batch being filled
    batches: list[Group] = []
    failed: list[tuple[int, str]] = []
    with ExitStack() as stack:
        arrays: dict[tuple, dict[str, Any]] = {}

        def build(spec: JobSpec, row: Any, datasets: tuple) -> Problem | str:
            """The job's problem, or why it cannot be built."""
            try:
                if datasets not in arrays:
                    named = [(name, ds) for name, ds in zip(("input", "labels", "kernel"), datasets) if ds is not None]
                    reader = stack.enter_context(reading()) if named else None
                    arrays[datasets] = {name: dataset(reader, ds) for name, ds in named}
                return build_problem(spec.model_copy(update={"seed": row.seed}), dict(arrays[datasets]))
            except BadInput as exc:
                return f"bad input: {exc}"
            except MemoryError:
                return engine.unbuilt(row.id, row.input, row.kernel)
            except Exception as exc:
                if out_of_reach(exc):
                    raise
                return f"{type(exc).__name__} loading job {row.id}: {exc}"

        for (_, *datasets), members in by_spec.items():
            first = members[0][0]
            try:
                spec = JobSpec.parse(json.loads(first.spec))
            except BadInput as exc:  # validated at submit; a stored spec can still fail to load
                failed += [(r.id, f"bad input: {exc}") for r, _ in members]
                continue
            shared = None if seeded(spec) else build(spec, first, tuple(datasets))  # one problem, or one a seed
            shared_key = together(shared, spec) if isinstance(shared, Problem) else None
            for row, tol in members:
                problem = shared or build(spec, row, tuple(datasets))
                if isinstance(problem, str):
                    failed.append((row.id, problem))
                    continue
                key = shared_key or together(problem, spec)
                group = groups.get(key)
                if group is None or len(group.ids) >= group.most:  # a full batch trains on its own
                    group = groups[key] = Group(spec, fitting(key))
                    batches.append(group)
                group.ids.append(row.id)
                group.attempts.append(row.attempts)
                group.jobs.append(engine.Job(problem, seed=row.seed, lr=row.lr, tol=tol))
    return batches, failed


def train_group(group: Group) -> Counter[str]:
    """Train jobs that train together, and store their results (or why they failed)."""
    ids, spec = group.ids, group.spec
    try:
        device = engine.resolve_device(spec.device.value)
    except RuntimeError as exc:
        return fail(ids, str(exc), group.attempts, group.quick)
    stream = len(ids) == 1 and group.quick is None  # a long single job shows where it runs, and writes its epochs
    if stream:
        with writing() as conn:
            writes.set_device(conn, ids, device)
    progress = Progress(ids, group.attempts, stream, quick=group.quick is not None)
    try:
        result = engine.train(group.jobs, spec.method, spec.epochs, spec.batch_size, device, on_epoch=progress)
        if stream and progress.lost:
            log.warning("job %d is no longer this worker's (its lease ran out meanwhile, and it was sent again, "
                        "claimed or ended elsewhere; or it was deleted): stopped training it, nothing stored", ids[0])
            return Counter()
        results = result.columns
    except Exception as exc:
        if out_of_reach(exc):
            raise
        # Whatever went wrong with these jobs ends them, never the worker (nor a retry loop).
        return fail(ids, engine.failure(exc, group.jobs, device), group.attempts, group.quick)
    progress.ended(results)
    try:
        stored = retried(lambda conn: writes.save_results(conn, ids, results, fresh=group.fresh and not stream,
                                                          attempts=group.attempts, quick=group.quick), durable=False)
    except Exception as exc:
        if out_of_reach(exc):
            raise
        # Results the database refuses (a bug, bad data) end the jobs failed, saying why, once: left running,
        # they would come back as a dead worker's and fail later as "its worker stopped answering".
        message = f"{type(exc).__name__} storing the results of {len(ids)} job(s): {one_line(exc)}"
        return fail(ids, message, group.attempts, group.quick)
    if len(stored) < len(ids) and group.quick is not None:
        log.warning("%d of %d job(s) of this quick task no longer waited when they ended (cancelled, deleted, or "
                    "claimed or ended elsewhere meanwhile): their results were not stored", len(ids) - len(stored),
                    len(ids))
    elif len(stored) < len(ids):
        log.warning("%d of %d job(s) were no longer this worker's when they ended (their lease ran out meanwhile, "
                    "and they were claimed or ended elsewhere; or they were deleted): their results were not stored",
                    len(ids) - len(stored), len(ids))
    kept = set(stored)
    return Counter(s for i, s in zip(ids, results.values["status"]) if i in kept)


def fail(ids: list[int], message: str, attempts: list[int], quick: dict[str, Any] | None = None) -> Counter[str]:
    """End failed the jobs whose claims (`attempts`, as they left them) still hold, or a quick task's still waiting;
    how many, as counts by status."""
    failed = retried(lambda conn: writes.fail(conn, ids, message, attempts, quick))
    return Counter({JobStatus.FAILED.value: len(failed)})


@app.task(name=TASK_TRAIN, bind=True)
def train(self: Task, job_ids: list[int], again: bool = False) -> dict[str, int]:
    """Train the jobs with these ids (a batch of compatible jobs, or one); `again`: sent before
    (service.broker.publish), as is a message Redis gives back (redelivered)."""
    if not isinstance(job_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in job_ids):
        log.error("refusing a malformed task: %r", job_ids)
        return {}
    again = again is True or bool((self.request.delivery_info or {}).get("redelivered"))
    tries = self.request.retries or 0  # a message retried by an earlier release counts its tries
    while True:
        try:
            return train_jobs(job_ids, self.request.id or "", self.request.hostname or HOST, tries, again)
        except Exception as exc:
            if not out_of_reach(exc):
                raise
            away = type(exc).__name__
        # The database is away: wait and try again, with backoff, as long as it takes, here and holding the message
        # (acknowledged once the task ends). A retry sent to the broker (Task.retry) went to the back of the queue:
        # it waited for every task behind it, and a long job it held lost its lease and trained twice.
        delay = backoff(tries)
        log.warning("database unreachable (%s); task %s retrying in %.1f s", away, self.request.id, delay)
        time.sleep(delay)
        tries += 1
