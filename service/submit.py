"""Submitting: validate every job as a worker would build it, then store and send the jobs a chunk at a time,
so that the first worker starts at once whatever the size of the submission.

A sweep is validated once per distinct value, not once per job, and its jobs' rows are made from the
validated values, with no spec object per job. Everything is validated before anything is written, and
nothing is written while the broker is down; a broker that fails mid-way leaves the jobs not yet sent
`created`, and the error names the `klab requeue` that sends them.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from service import broker
from service.db import bulk, datasets, reads, rows, writes
from service.db.connect import Reader
from service.db.engine import retried, writing
from service.db.ids import reserve_ids
from service.errors import BadInput, BrokerUnavailable, Gone
from service.jobs import sweep as sweeps
from service.jobs.choices import Device
from service.jobs.problem import Problem, build_problem, check_memory, file_arrays, fitting, problem_key, together
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus
from service.jobs.sweep import Grid
from service.settings import describe, settings

CHUNK_JOBS = 4096
"""Jobs stored in one transaction, their tasks sent as soon as it commits: the first worker waits for no more."""

BUILT_FROM = ("input", "kernel", "labels", "bias", "method")
"""What a job's arrays are built from, besides its noise and seed (which change no shape)."""

KEYED_BY = (*BUILT_FROM, "epochs", "batch_size", "device")
"""What a job's message key depends on (its queue and service.jobs.problem.together)."""

Job = tuple[dict[str, Any], tuple, dict[str, Any]]
"""A job to store: its spec values (JSON), its message key (queue first) and the arrays it uploads."""


@contextlib.contextmanager
def cycles_uncollected() -> Iterator[None]:
    """Python's cycle collector paused while a submission or a requeue makes and sends many jobs: each job's
    few objects live until its chunk is stored or its task sent, none of them in a cycle, yet every 700 of
    them start a collection, and the full ones walk every object the imports made as well (a fifth of the
    CLI's CPU on a 100,000-job sweep: bench/RESULTS.md). Reference counting still frees everything; the
    collector resumes as it was."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def known_queue(queue: str | None) -> None:
    """--queue is cpu, gpu or not given."""
    if queue is not None and not isinstance(queue, str):  # an array's == answered for each of its items
        raise BadInput("queue", f"a queue's name, cpu or gpu, got a value of type {type(queue).__name__}")
    if queue is not None and queue not in broker.QUEUES:
        raise BadInput("queue", f"unknown queue {queue!r}; expected cpu or gpu")


def queue_for(spec: JobSpec, queue: str | None) -> str:
    """--queue wins; else cuda goes to gpu, cpu and auto to cpu."""
    if queue is not None:
        known_queue(queue)
        if queue == "cpu" and spec.device is Device.CUDA:  # a cpu worker has no GPU: it could only fail it
            raise BadInput("queue", "a --device cuda job goes to the gpu queue (--queue gpu, or leave --queue out)")
        return queue
    return "gpu" if spec.device is Device.CUDA else "cpu"


@dataclass
class Plan:
    """A validated submission: its jobs (made as they are stored), how many, and its sweep's parameters."""

    size: int
    jobs: Iterator[Job]
    sweep: dict[str, Any] | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    queues: set[str] = field(default_factory=set)  # the queues its jobs were sent to, once submitted
    sweep_id: int | None = None  # once its first jobs are stored
    datasets: dict[int, int] = field(default_factory=dict)  # id(array) -> its dataset, once uploaded


def device_of(plan: Plan) -> Device:
    """A sweep's device: one for all its jobs (not a swept field); cpu unless given."""
    return Device((plan.sweep or {}).get("fixed", {}).get("device", Device.CPU.value))


class _Built:
    """What a submission builds once for many jobs: the arrays of the files it names, and its problems."""

    def __init__(self) -> None:
        self.files: dict[tuple, dict[str, Any]] = {}
        self.problems: dict[tuple, Problem] = {}

    def of(self, spec: JobSpec, key: tuple | None = None) -> tuple[Problem, dict[str, Any]]:
        names = (spec.input, spec.kernel, spec.labels)
        if names not in self.files:
            self.files[names] = file_arrays(spec)
        key = problem_key(spec) if key is None else key
        if key not in self.problems:
            self.problems[key] = build_problem(spec, dict(self.files[names]))
        problem = self.problems[key]  # maybe another spec's: this one's method and epochs are checked too (an
        # lstsq job's problem passed a d2l-manual job of 2.7 GiB; 10 epochs' one a job of 100,000)
        check_memory(spec, problem.x.shape, problem.kernel_shape)
        return problem, self.files[names]


def plan_specs(specs: Sequence[JobSpec], queue: str | None, where: str | None = None) -> Plan:
    """Jobs given one by one (klab submit, -f jobs.jsonl): each built as a worker would, alike ones once; a mistake
    in one of several from a file (`where`) names the job, as a mistake in its values does."""
    known_queue(queue)  # the flag's mistake, not the first job's
    built = _Built()
    jobs = []
    for n, spec in enumerate(specs, 1):
        try:
            problem, files = built.of(spec)
            jobs.append((spec.to_json(), (queue_for(spec, queue), *together(problem, spec)), files))
        except BadInput as exc:
            if len(specs) == 1:
                raise
            raise BadInput(exc.field, f"{exc.message} (job {n}{f' of {where}' if where else ''})") from None
    return Plan(len(jobs), iter(jobs))


def plan_sweep(grid: Grid, queue: str | None, name: str | None = None, tags: Sequence[str] | str = ()) -> Plan:
    """The cartesian product of a grid, validated before it is made (its name and tags too: service.jobs.sweep
    says what they may be): each string value once, numbers by their
    least and greatest value (every rule on a number is a bound: lr > 0, 0 < epochs <= the limit...), and
    every combination of the values a message key depends on, built as a worker would with the largest
    noise. The jobs are then made from those values alone."""
    name, tags = sweeps.name(name), sweeps.tags(tags)
    first = {f: vs[0] for f, vs in grid.swept.items()}

    def parse(values: dict[str, Any]) -> JobSpec:
        with sweeps.naming(grid, {**first, **values}):
            return JobSpec.parse({**grid.fixed, **first, **values})

    base = parse({})
    typed: dict[str, list[Any]] = {}
    for f, values in grid.swept.items():
        if isinstance(values[0], str):
            as_json = {v: parse({f: v}).to_json()[f] for v in dict.fromkeys(values)}
            typed[f] = [as_json[v] for v in values]
        else:
            for v in {min(values), max(values)}:
                parse({f: v})
            typed[f] = list(values)
    noise = max(grid.swept.get("noise", [base.noise]))
    keyed = [f for f in grid.swept if f in KEYED_BY]
    built, keys = _Built(), {}
    for combo in itertools.product(*(grid.swept[f] for f in keyed)):
        spec = parse(dict(zip(keyed, combo)))
        loudest = spec.model_copy(update={"noise": noise})
        with sweeps.naming(grid, {**first, "noise": noise, **dict(zip(keyed, combo))},  # built with the loudest noise
                     {f: v for f, v in zip(keyed, combo) if f in BUILT_FROM}):
            problem, files = built.of(loudest, tuple((f, v) for f, v in zip(keyed, combo) if f in BUILT_FROM))
        keys[combo] = ((queue_for(spec, queue), *together(problem, spec)), files)
    names = list(grid.swept)
    positions = [names.index(f) for f in keyed]
    base_json = base.to_json()

    def jobs() -> Iterator[Job]:
        if not positions:  # nothing swept changes the key (a sweep of seeds, lrs...): one for every job
            ((key, files),) = keys.values()
            for combo in itertools.product(*(typed[f] for f in names)):
                values = base_json.copy()
                values.update(zip(names, combo))
                yield values, key, files
            return
        for combo in itertools.product(*(list(zip(typed[f], grid.swept[f])) for f in names)):
            key, files = keys[tuple([combo[p][1] for p in positions])]
            values = base_json.copy()
            values.update(zip(names, [c[0] for c in combo]))
            yield values, key, files

    return Plan(grid.size, jobs(), grid.params(), name, tags)


def submit(plan: Plan, batch_jobs: int) -> tuple[int | None, list[int]]:
    """Check the broker, then store the jobs and send them, a chunk at a time: (sweep id, job ids).

    Jobs are stored queued, their messages sent right after. If the broker fails on the way, the jobs of
    messages it did not take go back to created, the rest of the plan is stored created, and the error
    names the requeue that sends them (a job stored queued whose message never came is sent again by the
    workers anyway: service.db.writes.stranded).
    """
    broker.check()  # nothing is written while the broker is down
    identity = reads.identity()
    with cycles_uncollected():
        return _submit(plan, batch_jobs, identity)


def stored_in_part(plan: Plan, stored: int) -> str:
    """What a submission stopped midway leaves: the jobs it stored, queued (the workers send those whose message
    never went: service.db.writes.stranded); all of them, where it stopped while the last were sent."""
    if stored >= plan.size:
        what = f"sweep {plan.sweep_id}" if plan.sweep_id is not None else "the submission"
        return f"{what} was stored whole, its {plan.size:,} jobs, which run"
    if plan.sweep_id is not None:
        return (f"sweep {plan.sweep_id} was stored in part, at least {stored:,} of its {plan.size:,} jobs, "
                f"which run (klab sweeps shows how many; klab delete --sweep {plan.sweep_id} deletes them)")
    return f"at least {stored:,} of the {plan.size:,} jobs were stored, which run (klab list --status queued)"


def _submit(plan: Plan, batch_jobs: int, identity: str) -> tuple[int | None, list[int]]:
    ids: list[int] = []
    failed: list[BrokerUnavailable] = []  # the broker's failure, once it failed
    try:
        for chunk, made, start in _stored(plan, lambda: JobStatus.CREATED if failed else JobStatus.QUEUED):
            ids += made
            if start is JobStatus.CREATED:
                continue
            if failed:  # stored queued while the broker failed: no message of theirs was sent
                with writing() as conn:
                    writes.unsent(conn, made)
                continue
            plan.queues.update(key[0] for _, key, _ in chunk)
            taken: list[int] = []
            try:
                broker.publish(broker.client(), broker.tasks([(i, key) for i, (_, key, _) in zip(made, chunk)],
                                                             batch_jobs, most_jobs), identity, taken.extend)
            except BrokerUnavailable as exc:
                failed.append(exc)
                with writing() as conn:
                    writes.unsent(conn, sorted(set(made) - set(taken)))
    except BaseException as exc:  # the database lost, Ctrl-C: the jobs stored before stay queued, and run
        if ids and not failed and not isinstance(exc, Gone):  # Gone: the sweep was deleted, and says so
            exc.add_note(stored_in_part(plan, len(ids)))
        raise
    if failed:
        again = (Selection(sweep=plan.sweep_id) if plan.sweep_id is not None
                 else Selection(tuple(ids) if len(ids) <= 50 else ()))
        raise BrokerUnavailable(_and_then(failed[0], again))
    return plan.sweep_id, ids


def _stored(plan: Plan, start_as: Callable[[], JobStatus]) -> Iterator[tuple[list[Job], list[int], JobStatus]]:
    """Store a plan's jobs a chunk a transaction, each as `start_as()` says when it is begun; yield each chunk
    once committed, in order: (chunk, its ids, how stored).

    The first chunk is stored here (it creates the sweep). On PostgreSQL the next ones are then stored
    KLAB_SUBMIT_CONNECTIONS at once over as many connections, while the tasks of those before them go out,
    their ids reserved here in order, so that a sweep's ids follow its grid whichever chunk commits first.
    A failure stops the chunks not yet begun and waits for the others; those committed and not yet yielded
    stay queued, and the workers send them (writes.stranded).
    """
    connections = settings().submit_connections
    chunks = iter(lambda: list(itertools.islice(plan.jobs, CHUNK_JOBS)), [])
    pending: deque[tuple[list[Job], Future[list[int]], JobStatus]] = deque()
    pool: ThreadPoolExecutor | None = None

    def begin() -> None:  # the next chunks, until `connections` are being stored
        while len(pending) < connections and (chunk := next(chunks, None)):
            start = start_as()
            with writing() as conn:  # its arrays committed before any job refers to them
                ids = reserve_ids(conn, len(chunk))
                _upload(conn, plan, chunk)
            pending.append((chunk, pool.submit(_store_alone, plan, chunk, start, ids), start))

    try:
        for chunk in chunks:  # the first chunk, and every chunk on SQLite or with one connection
            start = start_as()
            with writing() as conn:
                made = store(conn, plan, chunk, start)
                several = connections > 1 and bulk.postgresql(conn)
            yield chunk, made, start  # its tasks go out before anything else is begun: the first worker waits less
            if several:
                pool = ThreadPoolExecutor(connections, thread_name_prefix="klab-store")
                begin()
                break
        while pending:
            chunk, stored, start = pending.popleft()
            begin()
            yield chunk, stored.result(), start
    finally:
        if pool is not None:
            finish(pool)


def finish(pool: ThreadPoolExecutor) -> None:
    """Wait for the chunks being stored (each a transaction, done in a fraction of a second), the rest cancelled.
    A second Ctrl-C stops the wait, quietly (it was a traceback, `Exception ignored in <generator _stored>`): a
    chunk then unfinished is rolled back with the process, one committed stays queued and runs (writes.stranded);
    the line says at least what was stored."""
    try:
        pool.shutdown(cancel_futures=True)
    except KeyboardInterrupt:
        return


def _store_alone(plan: Plan, chunk: list[Job], start: JobStatus, ids: list[int]) -> list[int]:
    with writing() as conn:
        return store(conn, plan, chunk, start, ids)


def most_jobs(key: tuple) -> int:
    """A message key's most jobs in one task: as many as one batch may train within KLAB_MAX_JOB_MEMORY."""
    return fitting(key[1:])


def store(conn: Connection, plan: Plan, chunk: Sequence[Job], start: JobStatus, ids: list[int] | None = None
          ) -> list[int]:
    """Store a chunk of a plan's jobs as `start`, in the caller's transaction, with `ids` (reserve_ids's)
    or new ones: its sweep with the first chunk, each array once; their ids. Jobs stored running train here
    (klab sweep --local) and go to no queue."""
    if plan.sweep is not None and plan.sweep_id is None:
        plan.sweep_id = writes.create_sweep(conn, plan.sweep, plan.size, plan.name, plan.tags)
    elif plan.sweep_id is not None and not writes.sweep_kept(conn, plan.sweep_id):
        raise Gone(f"sweep {plan.sweep_id} was deleted (klab delete) while its jobs were being stored: stopped")
    _upload(conn, plan, chunk)
    columns = rows.columns(chunk, plan.datasets, sent=start is not JobStatus.RUNNING)
    return writes.insert_columns(conn, {**writes.lifecycle(start, plan.sweep_id), **columns}, len(chunk), ids)


def _upload(conn: Connection, plan: Plan, chunk: Sequence[Job]) -> None:
    """Store the arrays of a chunk's jobs not stored yet (each once per plan)."""
    for _, _, files in chunk:
        for array in files.values():
            if id(array) not in plan.datasets:
                plan.datasets[id(array)] = datasets.put_dataset(conn, array)


def _and_then(exc: BrokerUnavailable, again: Selection) -> str:
    """The broker's error line, and the requeue that sends what it did not take."""
    return (f"{str(exc).rstrip('.')}; the jobs not yet queued will run after: "  # `refused.; the jobs` read badly
            f"klab requeue{'' if again.everything else f' {again}'}")


def send(messages: Sequence[broker.Task], again: Selection, sent_before: bool = False) -> int:
    """Publish tasks of stored jobs, marking each task's jobs queued once the broker took it; how many jobs
    were sent (`sent_before`: some may have been, as requeue --queued sends them: a worker claims them first). A
    broker that fails mid-way raises BrokerUnavailable naming the requeue that sends the rest."""
    def sent(ids: list[int]) -> None:
        with writing() as conn:
            writes.mark_queued(conn, ids)

    try:
        return broker.publish(broker.client(), messages, reads.identity(), sent, again=sent_before)
    except BrokerUnavailable as exc:
        raise BrokerUnavailable(_and_then(exc, again)) from None


def unserved(queues: set[str]) -> list[str]:
    """A line for each of these queues that no live worker of this database consumes (none known on brokers other
    than Redis): what `klab submit` and `klab sweep` print as a warning, and klab.submit and klab.sweep warn."""
    identity = reads.identity()
    where = describe(settings().database_url)
    return [f"no live worker of this database ({where}) consumes queue {q}; the jobs wait there until one starts: "
            f"klab worker --queue {q}" for q in sorted(queues) if broker.consumers(identity, q) == 0]


def requeue(selection: Selection, include_queued: bool, batch_jobs: int) -> tuple[int, set[str]]:
    """Send again jobs stored but never handed to the broker (and queued ones, with include_queued).
    Returns how many were sent and the queues they went to."""
    broker.check()
    with cycles_uncollected():
        def take(conn: Connection) -> list[tuple[int, str | None]]:
            reads.where(Reader.of(conn), selection)  # no such job or sweep: one line, exit 2
            return writes.waiting(conn, selection, include_queued)

        found = retried(take, make=False)
        queues = {q or "cpu" for _, q in found}
        return send(broker.tasks([(i, (q or "cpu",)) for i, q in found], batch_jobs), selection, include_queued), queues
