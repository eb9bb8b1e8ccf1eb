"""Sweep throughput: `klab sweep` of 100,000 book-sized jobs until every job and epoch is in PostgreSQL.

One run measures, on the same jobs (edge:6x8, kernel d2l, d2l-manual, 10 epochs, lr 0.03, seeds 0..N-1):
- the book's loop, one job at a time with one torch thread and no storage, on a sample of seeds, scaled;
- the sweep, submit to stored: the clock runs from launching the real `klab sweep ... --seed 0..N-1`
  (its Python start-up counts) until the database holds N finished jobs and 10 N epochs; and the same
  sweep with `--wait`, until that command exits 0 (what the issue's acceptance runs: it polls the
  jobs until all have ended, then prints their counts), alternated with the first. One cpu
  worker process trains it, started as `klab worker --queue cpu` starts it (service.cli.workers.worker_argv,
  the README's default concurrency) and warmed up before any clock starts; with --queue gpu, the jobs
  are --device cuda and a `klab worker --queue gpu` trains them (one process, the solo pool);
- the engine alone: the same jobs through worker.engine.train in tasks of --batch-jobs, in this process,
  with the torch threads of one worker child (no Celery, no database);
- the store: the engine's results written through the service's own write path (service.db.writes.
  save_results, one transaction per task, as a worker writes them) into running jobs, in epoch rows/s;
  and, as its baseline, a bare binary COPY of the same epoch rows (psycopg write_row, one transaction).
  Both are timed twice: from one process, and from as many forked processes at once as the worker has
  children (each taking every Nth task, its own connection), which is how `klab worker` stores.
It prints the ratios: sweep vs book, sweep vs engine, store vs bare COPY (one process, and N).

    .venv/bin/python bench/sweep_bench.py                 # 100,000 jobs, 3 repeats
    .venv/bin/python bench/sweep_bench.py --jobs 10000 --repeat 1 --concurrency 1,2
    .venv/bin/python bench/sweep_bench.py --profile-only  # cProfile of `klab sweep` and the worker task, in-process
    python3 bench/sweep_bench.py --queue gpu --jobs 1000000 --repeat 1   # on a GPU machine: a gpu worker, cuda jobs

PostgreSQL: a fresh database klab_bench_<hex> through KLAB_TEST_DATABASE_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), upgraded with `klab db upgrade`, dropped at the end.
Redis: KLAB_BENCH_REDIS_URL (default redis://127.0.0.1:6379/11), flushed before and after.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import os
import platform
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

from service import defaults  # noqa: E402
from service.cli.workers import worker_argv, worker_command  # noqa: E402

PG_ADMIN_URL = os.environ.get("KLAB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KLAB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
KLAB = str(Path(sys.executable).parent / "klab")
if not Path(KLAB).exists():  # an interpreter outside the project's venv (a GPU machine's): klab on the PATH
    KLAB = shutil.which("klab") or KLAB
EPOCHS, LR = 10, 0.03
QUEUE, DEVICE = "cpu", "cpu"
"""The worker's queue and where the sweep's jobs train: cpu and cpu, or with --queue gpu, gpu and cuda."""


def book_values() -> dict[str, Any]:
    """The sweep's job, as a spec's values (every seed's the same but its seed)."""
    return {"input": "edge:6x8", "kernel": "d2l", "method": "d2l-manual", "epochs": EPOCHS, "lr": LR,
            "device": DEVICE}


def book_argv() -> list[str]:
    """The sweep's job as `klab sweep` options, sent to the worker's queue."""
    return [a for k, v in {**book_values(), "queue": QUEUE}.items() for a in (f"--{k}", str(v))]


FINISHED = ("succeeded", "diverged", "failed", "cancelled")
POLL_SECONDS = 1.0
"""How often the database is asked whether the sweep is done. Its answer is not the clock: the sweep ends
when the worker logs its last task's success (after that task's commit), to the millisecond. Polling more
often would take from the workers the CPU it measures (a count over 100,000 rows is tens of ms)."""
STALL_SECONDS = 120.0
"""A sweep whose finished count stands still this long after the CLI returned has lost its tasks."""


# --- the machine and the services, shared with latency_bench.py -----------------------------

def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    torch_version = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (f"nproc {os.cpu_count()}, CPU {cpu}, torch {torch_version}, Python {platform.python_version()}, "
            f"load average {load}; code at {head}{' + uncommitted changes' if dirty else ''}")


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database's URL, dropped afterwards."""
    name = f"klab_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    finally:
        client.close()


def ensure_alone(url: str) -> None:
    """Refuse a Redis database index another client is on: its workers would take our tasks (and we its data)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        me = client.client_id()
        db = int(client.connection_pool.connection_kwargs.get("db", 0))
        others = [c for c in client.client_list() if int(c.get("db", -1)) == db and int(c["id"]) != me]
    finally:
        client.close()
    if others:
        raise SystemExit(f"{len(others)} other client(s) are connected to Redis database {db} ({url}); "
                         "pick a free index with KLAB_BENCH_REDIS_URL")


@contextlib.contextmanager
def flushed_redis(url: str = REDIS_URL) -> Iterator[str]:
    """The benchmark's Redis database index, checked unused, flushed before and after."""
    ensure_alone(url)
    flush_redis(url)
    try:
        yield url
    finally:
        flush_redis(url)


def service_env(db_url: str, broker_url: str, home: Path) -> dict[str, str]:
    """The environment of the CLI and the worker: no inherited KLAB_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAB_")}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # wheels a GPU machine adds
    env.update({"KLAB_HOME": str(home), "KLAB_DATABASE_URL": db_url, "KLAB_BROKER_URL": broker_url,
                "NO_COLOR": "1", "PYTHONPATH": path})
    return env


def klab(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([KLAB, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"klab {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def poll_engine(url: str) -> Engine:
    """A direct connection for polling: autocommit, so every read sees the latest commits (SQLite too)."""
    return create_engine(url, isolation_level="AUTOCOMMIT")


def reset(url: str) -> None:
    """Empty the job tables between runs, so each run writes into tables as fresh as the first's."""
    eng = poll_engine(url)
    try:
        with eng.connect() as conn:
            if eng.dialect.name == "postgresql":
                conn.execute(text("TRUNCATE epochs, jobs, sweeps RESTART IDENTITY CASCADE"))
                conn.execute(text("VACUUM ANALYZE"))
            else:
                for table in ("epochs", "jobs", "sweeps"):
                    conn.execute(text(f"DELETE FROM {table}"))
    finally:
        eng.dispose()


_LOG_LINE = re.compile(r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): (?P<level>\w+)/[^\]]*\] (?P<msg>.*)$")
_SUCCEEDED = re.compile(r"Task \S+\[(?P<id>[^\]]+)\] succeeded in (?P<s>[0-9.eE+-]+)s")
_RECEIVED = re.compile(r"Task \S+\[(?P<id>[^\]]+)\] received")


@dataclass
class TaskLog:
    """What the worker's log says about the tasks of one run (epoch seconds from its timestamps)."""

    received: list[float]
    succeeded: list[tuple[float, float]]  # (when logged, seconds the task took)
    errors: list[str]


class Worker:
    """A real Celery worker process, started as `klab worker --queue cpu --concurrency N` (or --queue gpu) starts it."""

    def __init__(self, env: dict[str, str], concurrency: int | None, log: Path, queue: str = "cpu",
                 name: str | None = None, alone: bool = True):
        self.name = name or f"bench{concurrency or ''}-{uuid.uuid4().hex[:6]}"  # none: as klab worker sizes it
        self.like = self.name + "@%"  # its jobs' worker_host, in SQL
        argv, extra = worker_argv(queue, concurrency, "INFO", self.name)  # `klab worker ... --name NAME`
        self.argv, self.extra, self.log = argv, extra, log
        self.proc = subprocess.Popen(worker_command(argv), env={**env, **extra}, cwd=ROOT,
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        if alone and "mingle: sync with" in log.read_text():
            self.stop()
            raise SystemExit(f"another worker is on the broker; its tasks and ours would mix: {log}")

    def offset(self) -> Any:
        return self.log.stat().st_size

    def tasks_since(self, offset: Any) -> TaskLog:
        with self.log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        received, succeeded, errors = [], [], []
        for line in lines:
            m = _LOG_LINE.match(line)
            if not m:
                continue
            when = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if (s := _SUCCEEDED.search(m["msg"])) is not None:
                succeeded.append((when, float(s["s"])))
            elif _RECEIVED.search(m["msg"]):
                received.append(when)
            elif m["level"] in ("ERROR", "CRITICAL"):
                errors.append(m["msg"][:300])
        return TaskLog(received, succeeded, errors)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class Workers:
    """Several worker processes on one queue, read as one (--workers N: gpu workers sharing one GPU, say)."""

    def __init__(self, env: dict[str, str], concurrency: int | None, log: Path, queue: str, count: int):
        prefix = f"bench{concurrency or ''}-{uuid.uuid4().hex[:6]}"
        self.like = prefix + "-%"
        self.members: list[Worker] = []
        try:
            for i in range(count):  # the first checks that no other worker is on the broker; the rest meet it
                self.members.append(Worker(env, concurrency, log.with_name(f"{log.stem}-{i}{log.suffix}"), queue,
                                           f"{prefix}-{i}", alone=i == 0))
        except BaseException:
            self.stop()
            raise
        self.argv, self.extra = self.members[0].argv, self.members[0].extra
        self.log = ", ".join(str(m.log) for m in self.members)

    def offset(self) -> list[int]:
        return [m.offset() for m in self.members]

    def tasks_since(self, offset: list[int]) -> TaskLog:
        logs = [m.tasks_since(o) for m, o in zip(self.members, offset)]
        return TaskLog(sorted(t for g in logs for t in g.received), sorted(t for g in logs for t in g.succeeded),
                       [e for g in logs for e in g.errors])

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linearly interpolated (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --- the baseline ------------------------------------------------------------------------------

def book_seconds_per_job(seeds: list[int], threads: int) -> tuple[float, dict[int, list[float]]]:
    """The book's first loop (bench/engine_batched.py's book_job), one seed at a time, no storage: seconds
    per job, and l.sum() per epoch."""
    import torch
    from engine_batched import EPOCHS as BOOK_EPOCHS
    from engine_batched import LR as BOOK_LR
    from engine_batched import book_job

    from service.jobs.problem import build_problem
    from service.jobs.spec import JobSpec

    if (BOOK_EPOCHS, BOOK_LR) != (EPOCHS, LR):
        raise SystemExit(f"the book's loop runs {BOOK_EPOCHS} epochs at lr {BOOK_LR}, the sweep {EPOCHS} at {LR}")
    # One thread is the book loop's best case here: with two, OpenMP waits on the other core whenever
    # anything else runs on this 2-core machine, and the loop gets several times slower.
    torch.set_num_threads(threads)
    problem = build_problem(JobSpec.parse({"input": "edge:6x8", "kernel": "d2l", "method": "d2l-manual"}))
    X, Y = torch.from_numpy(problem.x), torch.from_numpy(problem.y)
    losses: dict[int, list[float]] = {}
    started = time.perf_counter()
    for seed in seeds:
        losses[seed], _ = book_job(seed, X, Y)
    return (time.perf_counter() - started) / len(seeds), losses


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


# --- one timed sweep ---------------------------------------------------------------------------

@dataclass
class SweepRun:
    total: float  # launch of `klab sweep` to every job and epoch stored, and the CLI's exit
    cli: float  # launch to the CLI's exit (jobs stored and queued; with --wait, every job ended too)
    after_cli: float  # storage wait: the CLI's exit to the last job stored
    first_received: float | None  # launch to the worker's first task received
    tasks: int
    task_seconds: list[float]
    statuses: dict[str, int]
    attempts_over_one: int
    book_total: float = float("nan")  # the book loop's time for the same jobs, measured just before


class CliExit:
    """When a process exits, to the moment (a thread waits on it, reading its output meanwhile): the poll of the
    database, once a second, would round the CLI's time up to its next look."""

    def __init__(self, proc: subprocess.Popen, t0: float):
        self.seconds: float | None = None
        self.stderr = ""
        self.thread = threading.Thread(target=self._wait, args=(proc, t0), daemon=True)
        self.thread.start()

    def _wait(self, proc: subprocess.Popen, t0: float) -> None:
        _, self.stderr = proc.communicate()
        self.seconds = time.perf_counter() - t0

    def wait(self) -> float:
        self.thread.join()
        assert self.seconds is not None
        return self.seconds


def timed_sweep(env: dict[str, str], db_url: str, worker: Worker | Workers, jobs: int, batch_jobs: int,
                timeout: float, wait: bool = False) -> SweepRun:
    reset(db_url)
    eng = poll_engine(db_url)
    finished_sql = text("SELECT count(*) FROM jobs WHERE status IN ('" + "','".join(FINISHED) + "')")
    offset = worker.offset()
    argv = [KLAB, "sweep", *book_argv(), "--seed", f"0..{jobs - 1}", "--batch-jobs", str(batch_jobs),
            *(["--wait"] if wait else [])]
    try:
        with eng.connect() as conn:
            wall0 = time.time()
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            exited = CliExit(proc, t0)
            stored = None
            last_count, last_change = -1, t0
            while stored is None:
                now = time.perf_counter()
                cli = exited.seconds
                if cli is not None and proc.returncode != 0:
                    raise SystemExit(f"klab sweep failed ({proc.returncode}):\n{exited.stderr[-3000:]}")
                done = conn.execute(finished_sql).scalar()
                if done != last_count:
                    last_count, last_change = done, now
                elif cli is not None and now - last_change > STALL_SECONDS:
                    raise SystemExit(f"no job finished for {STALL_SECONDS:.0f} s ({done} of {jobs} done); "
                                     f"worker log: {worker.log}")
                if done >= jobs:
                    # A job's row and its epochs are committed together: count the epochs to be sure.
                    if conn.execute(text("SELECT count(*) FROM epochs")).scalar() >= jobs * EPOCHS:
                        stored = now - t0
                        break
                if now - t0 > timeout:
                    proc.kill()
                    raise SystemExit(f"the sweep did not finish in {timeout:.0f} s; worker log: {worker.log}")
                time.sleep(POLL_SECONDS)
            cli = exited.wait()
            if proc.returncode != 0:
                raise SystemExit(f"klab sweep failed ({proc.returncode}):\n{exited.stderr[-3000:]}")
            statuses = dict(conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all())
            retried = conn.execute(text("SELECT count(*) FROM jobs WHERE attempts > 1")).scalar()
            foreign = conn.execute(text("SELECT count(*) FROM jobs WHERE worker_host NOT LIKE :me"),
                                   {"me": worker.like}).scalar()
            if foreign:
                raise SystemExit(f"{foreign} job(s) were trained by another worker on the broker; numbers void")
    finally:
        eng.dispose()
    time.sleep(0.3)  # let the worker write its last log line
    log = worker.tasks_since(offset)
    if log.errors:
        print("  worker errors: " + " | ".join(log.errors[:3]))
    if log.succeeded:  # the last commit, as the worker logged it, rather than when the poll saw it
        stored = min(stored, max(when for when, _ in log.succeeded) - wall0)
    return SweepRun(total=max(stored, cli), cli=cli, after_cli=max(0.0, stored - cli),
                    first_received=(min(log.received) - wall0) if log.received else None,
                    tasks=len(log.succeeded), task_seconds=[s for _, s in log.succeeded],
                    statuses={str(k): int(v) for k, v in statuses.items()}, attempts_over_one=int(retried))


def check_against_book(db_url: str, book: dict[int, list[float]]) -> float:
    """Worst relative difference between the stored losses of the sampled seeds and the book's."""
    eng = poll_engine(db_url)
    worst = 0.0
    try:
        with eng.connect() as conn:
            rows = conn.execute(text("SELECT j.seed, e.epoch, e.loss FROM epochs e JOIN jobs j ON j.id = e.job_id "
                                     "WHERE j.seed IN (" + ",".join(map(str, book)) + ")")).all()
    finally:
        eng.dispose()
    if len(rows) != len(book) * EPOCHS:
        raise SystemExit(f"expected {len(book) * EPOCHS} stored epochs of the sampled seeds, found {len(rows)}")
    for seed, epoch, loss in rows:
        want = book[int(seed)][int(epoch) - 1]
        worst = max(worst, abs(loss - want) / max(abs(want), 1.0))
    return worst


# --- the engine alone, the store, a bare COPY -------------------------------------------------

def book_jobs(seeds: range) -> tuple[Any, list[Any]]:
    """The sweep's jobs as the engine takes them: one Problem (built once, as a worker builds it), a Job a seed."""
    from service.jobs.problem import build_problem
    from service.jobs.spec import JobSpec
    from worker.engine import Job

    spec = JobSpec.parse(book_values())
    problem = build_problem(spec)
    return spec, [Job(problem, seed=s, lr=LR, tol=spec.tol) for s in seeds]


def engine_alone(jobs: int, batch_jobs: int, threads: int) -> tuple[float, list[Any]]:
    """worker.engine.train on the sweep's jobs in tasks of batch_jobs, in this process: seconds (through each
    batch's result columns, what a worker stores), and the results."""
    import torch

    from worker.engine import train

    torch.set_num_threads(threads)
    spec, all_jobs = book_jobs(range(jobs))
    train(all_jobs[:64], spec.method, EPOCHS, spec.batch_size, DEVICE).columns  # noqa: B018 - warm-up: first calls
    results = []
    started = time.perf_counter()
    for i in range(0, jobs, batch_jobs):
        batch = train(all_jobs[i : i + batch_jobs], spec.method, EPOCHS, spec.batch_size, DEVICE)
        batch.columns  # noqa: B018 - computed once, cached: part of what the engine hands over
        results.append(batch)
    return time.perf_counter() - started, results


def running_jobs(db_url: str, jobs: int) -> list[int]:
    """The sweep's jobs stored as a worker has them after its claim (status running), by the service's writes."""
    from service.db import writes
    from service.db.engine import writing
    from service.jobs.spec import JobSpec
    from service.jobs.status import JobStatus

    reset(db_url)
    ids: list[int] = []
    for i in range(0, jobs, 10_000):
        with writing(db_url) as conn:
            ids += writes.insert_jobs(conn, [writes.new_job(JobSpec.parse({**book_values(), "seed": s}), queue=QUEUE,
                                                            start=JobStatus.RUNNING)
                                             for s in range(i, min(jobs, i + 10_000))])
    return ids


def service_store(db_url: str, ids: list[int], results: list[Any], streams: int = 1,
                  save: Callable[..., list[int]] | None = None) -> tuple[float, dict[str, float]]:
    """Seconds to store every result through service.db.writes.save_results (or `save`, which takes the same
    arguments but the claims' attempts), a task's results a transaction (writing(durable=False), as worker.tasks
    does: each job's attempts as its claim left them, 0 here), and the seconds of its two statements' calls.
    With `streams` > 1, that many forked processes store at once, as a worker's children do, each every
    streams-th task; the seconds run from their common start to the last one's commit (no phases)."""
    from service.db import bulk, writes
    from service.db.engine import dispose_engines, writing

    starts = list(itertools.accumulate((len(batch) for batch in results), initial=0))

    def connect(_: int) -> None:
        with writing(db_url, durable=False):  # the engine made and a connection pooled, as in a warm worker
            pass

    def store(k: int) -> None:
        for t in range(k, len(results), streams):
            part = ids[starts[t] : starts[t + 1]]
            with writing(db_url, durable=False) as conn:
                stored = (save(conn, part, results[t].columns, fresh=True) if save else
                          writes.save_results(conn, part, results[t].columns, fresh=True, attempts=[0] * len(part)))
            if len(stored) != len(part):
                raise SystemExit(f"save_results stored {len(stored)} of {len(part)} jobs")

    if streams > 1:
        dispose_engines()  # each child opens its own connections, as a worker child does after the fork
        return forked(streams, store, connect), {}
    connect(0)
    with phase_clock([(bulk, "update_jobs", "jobs UPDATE"), (bulk, "insert_epochs", "epochs COPY")]) as phases:
        started = time.perf_counter()
        store(0)
        return time.perf_counter() - started, dict(phases)


def forked(streams: int, work: Callable[[int], None], prepare: Callable[[int], None]) -> float:
    """Seconds for `streams` forked processes, each having run prepare(k) (k = 0..streams-1) off the clock,
    released together, to each run work(k): from their release to the last one's end. A failure in any of
    them ends the benchmark."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    gate, ends = ctx.Barrier(streams + 1), ctx.Queue()

    def attempt(step: Callable[[int], None], k: int) -> str | None:
        try:
            step(k)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops
            return f"{type(exc).__name__}: {exc}"
        return None

    def child(k: int) -> None:
        error = attempt(prepare, k)
        gate.wait(timeout=600)  # every process ready: the clock starts
        error = error or attempt(work, k)
        ends.put((time.perf_counter(), error))

    procs = [ctx.Process(target=child, args=(k,)) for k in range(streams)]
    for p in procs:
        p.start()
    gate.wait(timeout=600)
    started = time.perf_counter()
    done = [ends.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    failed = [error for _, error in done if error]
    if failed:
        raise SystemExit(f"a forked stream failed: {failed[0]}")
    return max(end for end, _ in done) - started


def epoch_rows(ids: list[int], results: list[Any]) -> list[list[tuple]]:
    """Each task's epoch rows as tuples (job id, epoch, loss, mse, kernel error or None), as a bare COPY sends them."""
    import numpy as np

    tasks = []
    at = 0
    for batch in results:
        c, rows = batch.columns, []
        ke = c.kernel_error
        for k in range(len(batch)):
            job = ids[at + k]
            rows += [(job, e + 1, float(c.loss[e, k]), float(c.mse[e, k]),
                      None if ke is None or not np.isfinite(ke[e, k]) else float(ke[e, k]))
                     for e in range(int(c.epochs_done[k]))]
        tasks.append(rows)
        at += len(batch)
    return tasks


def bare_copy(db_url: str, tasks: list[list[tuple]], streams: int = 1) -> float:
    """The baseline: the same epoch rows, built before the clock, sent by binary COPY with psycopg's write_row
    into the emptied epochs table: one transaction, or with `streams` > 1 one per forked process, each taking
    every streams-th task's rows. Seconds."""
    import psycopg

    url = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE epochs")
    held: dict[int, Any] = {}  # this process's connection, opened off the clock

    def connect(k: int) -> None:
        held[k] = psycopg.connect(url)

    def copy(k: int) -> None:
        with held.pop(k) as conn:
            with conn.cursor() as cur, \
                    cur.copy("COPY epochs (job_id, epoch, loss, mse, kernel_error) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "int4", "float8", "float8", "float8"])
                for t in range(k, len(tasks), streams):
                    for row in tasks[t]:
                        cp.write_row(row)
            conn.commit()

    if streams > 1:
        return forked(streams, copy, connect)
    connect(0)
    started = time.perf_counter()
    copy(0)
    return time.perf_counter() - started


@dataclass
class StoreRun:
    engine: float  # seconds of the engine alone on every job
    store: float  # seconds of save_results on every result
    phases: dict[str, float]  # seconds of the store in its jobs UPDATE and its epochs COPY
    bare: float  # seconds of the bare COPY of the same epoch rows
    rows: int  # epoch rows
    streams: int = 1  # processes of the concurrent store and bare COPY, as many as the worker's children
    store_n: float = 0.0  # seconds of the store in that many processes at once
    bare_n: float = 0.0  # seconds of the bare COPY in that many processes at once


def store_run(db_url: str, jobs: int, batch_jobs: int, threads: int, streams: int,
              store_jobs: int | None = None) -> StoreRun:
    """The engine on every job; the store and the bare COPY on the first store_jobs of them (all by default),
    rounded up to whole tasks."""
    engine_s, results = engine_alone(jobs, batch_jobs, threads)
    results = results[: -(-(store_jobs or jobs) // batch_jobs)]
    jobs = sum(len(b) for b in results)
    run = StoreRun(engine_s, 0.0, {}, 0.0, sum(int(b.columns.epochs_done.sum()) for b in results), streams)
    for n in sorted({1, streams}):
        ids = running_jobs(db_url, jobs)
        store_s, phases = service_store(db_url, ids, results, n)
        check_stored(db_url, jobs)
        tasks = epoch_rows(ids, results)
        bare_s = bare_copy(db_url, tasks, n)
        if n == 1:
            run.store, run.phases, run.bare = store_s, phases, bare_s
        if n == streams:
            run.store_n, run.bare_n = store_s, bare_s
    return run


def check_stored(db_url: str, jobs: int) -> None:
    eng = poll_engine(db_url)
    with eng.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM epochs")).scalar()
        ended = conn.execute(text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")).scalar()
    eng.dispose()
    if stored != jobs * EPOCHS or ended != jobs:
        raise SystemExit(f"the store left {ended} succeeded jobs and {stored} epochs, not {jobs} and {jobs * EPOCHS}")


# --- profiles ----------------------------------------------------------------------------------

def top_functions(profile: cProfile.Profile, sort: str, count: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(count)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[start:]).rstrip()


def profiles(db_url: str, broker_url: str, home: Path, jobs: int, batch_jobs: int, worker_jobs: int,
             count: int) -> None:
    """cProfile, in this process, of `klab sweep` (no worker: its tasks stay queued) and of one worker task."""
    os.environ.update({"KLAB_DATABASE_URL": db_url, "KLAB_BROKER_URL": broker_url, "KLAB_HOME": str(home),
                       "NO_COLOR": "1"})
    from service.settings import settings

    settings.cache_clear()
    from service.cli import main

    reset(db_url)
    argv = ["sweep", *book_argv(), "--seed", f"0..{jobs - 1}", "--batch-jobs", str(batch_jobs)]
    prof = cProfile.Profile()
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        prof.runcall(main, argv)
    print(f"\n== profile: klab {' '.join(argv)} in-process (no Python start-up): "
          f"{time.perf_counter() - started:.2f} s (profiled) ==")
    print(top_functions(prof, "cumulative", count))
    print("-- by own time --")
    print(top_functions(prof, "tottime", count // 2))
    flush_redis(broker_url)  # drop the tasks no worker will take
    import service.broker
    import service.db.rows
    import service.jobs.sweep
    import service.submit
    from service.db import writes

    runs = []
    for _ in range(3):
        reset(db_url)
        with phase_clock([(service.jobs.sweep, "grid", "grid"), (service.submit, "plan_sweep", "plan_sweep"),
                          (service.db.rows, "columns", "job columns"), (writes, "insert_columns", "insert_columns"),
                          (service.broker, "tasks", "broker.tasks"), (service.broker, "publish", "broker.publish")]
                         ) as phases:
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main(argv)
            phases["sweep command (all)"] = time.perf_counter() - started
        flush_redis(broker_url)
        runs.append(phases)
    parts = ", ".join(f"{k} {statistics.median(r.get(k, 0.0) for r in runs):.3f}" for k in runs[0])
    print(f"\n== the same command unprofiled, in-process, in phases (median of 3; seconds; plan_sweep is lazy: "
          f"its jobs are made as each chunk is taken, in no phase here) ==\n{parts}")

    from worker.tasks import train_jobs

    def created(seeds: range) -> list[int]:
        """Jobs stored queued, as `klab sweep` stores them (their messages never sent)."""
        from service.db.engine import writing
        from service.jobs.spec import JobSpec

        with writing(db_url) as conn:
            return writes.insert_jobs(conn, [writes.new_job(JobSpec.parse({**book_values(), "seed": s}), queue=QUEUE)
                                             for s in seeds])

    reset(db_url)
    train_jobs(created(range(64)), "bench-warmup")  # first-call costs: connections, dispatch caches
    ids = created(range(64, 64 + worker_jobs))
    prof = cProfile.Profile()
    started = time.perf_counter()
    counts = prof.runcall(train_jobs, ids, "bench-profile")
    print(f"\n== profile: worker.tasks.train_jobs on {worker_jobs} created jobs, in-process: "
          f"{time.perf_counter() - started:.2f} s (profiled), {counts} ==")
    print(top_functions(prof, "cumulative", count))
    print("-- by own time --")
    print(top_functions(prof, "tottime", count // 2))

    print(f"\n== the same task unprofiled, in phases (median of 3; seconds for {worker_jobs} jobs) ==")
    import torch

    for threads in (1, 2) if DEVICE == "cpu" else (torch.get_num_threads(),):
        torch.set_num_threads(threads)
        runs = []
        for _ in range(3):
            ids = created(range(64, 64 + worker_jobs))
            with phase_clock(worker_phases()) as phases:
                started = time.perf_counter()
                train_jobs(ids, "bench-unprofiled")
                phases["train_jobs (all)"] = time.perf_counter() - started
            runs.append(phases)
        parts = ", ".join(f"{k} {statistics.median(r.get(k, 0.0) for r in runs):.3f}" for k in runs[0])
        print(f"torch threads {threads}: {parts}")


def worker_phases() -> list[tuple[Any, str, str]]:
    import worker.engine
    import worker.tasks
    from service.db import writes

    return [(writes, "peek", "read the jobs"), (worker.tasks, "claim", "claim (not a quick task)"),
            (worker.tasks, "load", "load specs and problems"),
            (worker.engine, "train", "engine.train"), (writes, "save_results", "writes.save_results")]


@contextlib.contextmanager
def phase_clock(targets: list[tuple[Any, str, str]]) -> Iterator[dict[str, float]]:
    """Seconds spent in phases, by wrapping the functions (owner, attribute, label) called. One that no longer exists
    stops the bench: skipped, its phase went missing from the output without a word (service.submit._columns)."""
    spent: dict[str, float] = {}
    saved = []
    for owner, attr, label in targets:
        original = getattr(owner, attr, None)
        if original is None:
            raise SystemExit(f"phase {label!r}: {owner.__name__}.{attr} no longer exists; update the bench")
        spent[label] = 0.0

        def timed(*a: Any, _f: Any = original, _label: str = label, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - t0

        saved.append((owner, attr, original))
        setattr(owner, attr, timed)
    try:
        yield spent
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


# --- main --------------------------------------------------------------------------------------

def _ints(text_: str) -> list[int]:
    return [int(v) for v in text_.split(",") if v.strip()]


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like an exception, so the worker stops and the database is dropped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs in the sweep (seeds 0..N-1)")
    ap.add_argument("--batch-jobs", default=str(defaults.BATCH_JOBS), help="comma list of --batch-jobs values to "
                    "time, by default klab's (the first also sizes the engine's and the store's tasks)")
    ap.add_argument("--queue", choices=["cpu", "gpu"], default="cpu",
                    help="the worker's queue: gpu trains the jobs on cuda in a `klab worker --queue gpu` (one process)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes on the queue (a gpu worker is one "
                    "process: several share the GPU); the store is timed from as many processes as they have")
    ap.add_argument("--store-jobs", type=int, default=None,
                    help="jobs the store and the bare COPY write (default: --jobs; the engine runs on all of them)")
    ap.add_argument("--concurrency", default="",
                    help="comma list of worker concurrencies to time (default: klab worker's, the number of cores)")
    ap.add_argument("--connections", default="",
                    help="comma list of KLAB_SUBMIT_CONNECTIONS values the CLI stores with (default: klab's)")
    ap.add_argument("--wait", default="plain,wait", help="comma list of how `klab sweep` runs: plain (it exits once "
                    "every task is sent) and wait (with --wait: it exits once every job has ended)")
    ap.add_argument("--sweep-only", action="store_true", help="the book's loop and the sweeps; not the engine "
                    "alone, the store or the bare COPY")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each configuration (median)")
    ap.add_argument("--sample", type=int, default=500, help="seeds timed with the book's loop")
    ap.add_argument("--book-threads", type=int, default=1, help="torch threads of the book's loop (the baseline)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one sweep may take")
    ap.add_argument("--target", type=float, default=20.0, help="the sweep's speedup over the book asked for")
    ap.add_argument("--store-target", type=float, default=500_000, help="epoch rows/s asked of the store")
    ap.add_argument("--profile", action="store_true", help="after the timings, profile the CLI and the worker task")
    ap.add_argument("--profile-only", action="store_true", help="only the profiles, no timings")
    ap.add_argument("--profile-jobs", type=int, default=defaults.BATCH_JOBS, help="jobs in the profiled worker task")
    ap.add_argument("--profile-lines", type=int, default=30, help="functions listed per profile")
    args = ap.parse_args()
    global QUEUE, DEVICE
    QUEUE, DEVICE = args.queue, "cuda" if args.queue == "gpu" else "cpu"
    if QUEUE == "gpu" and args.concurrency:
        ap.error("--concurrency: a gpu worker is one process (solo pool)")
    n = args.jobs
    sizes = _ints(args.batch_jobs)
    concurrencies: list[int | None] = list(_ints(args.concurrency)) or [None]
    connections: list[int | None] = list(_ints(args.connections)) or [None]
    args.waits = [w == "wait" for w in args.wait.split(",")]
    if not args.waits or any(w not in ("plain", "wait") for w in args.wait.split(",")):
        ap.error("--wait: plain, wait or both")
    sample_seeds = sorted({round(i * (n - 1) / max(1, args.sample - 1)) for i in range(min(args.sample, n))})
    print(f"machine: {machine()}")
    print(f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"jobs: {n:,} (edge:6x8, d2l, d2l-manual, {EPOCHS} epochs, lr {LR}, device {DEVICE}, queue {QUEUE}); "
          f"book loop sample: "
          f"{len(sample_seeds)} seeds; repeats: {0 if args.profile_only else args.repeat}")

    with tempfile.TemporaryDirectory(prefix="klab-sweep-bench-") as tmp, pg_database() as db_url, \
            flushed_redis() as broker_url:
        env = service_env(db_url, broker_url, Path(tmp) / "home")
        if n > defaults.MAX_SWEEP_JOBS:  # a sweep larger than klab's default limit, as its README says to allow one
            env["KLAB_MAX_SWEEP_JOBS"] = str(n)
        klab(env, "db", "upgrade")
        if not args.profile_only:
            timings(args, env, db_url, Path(tmp), n, sizes, concurrencies, connections, sample_seeds)
        if args.profile or args.profile_only:
            profiles(db_url, broker_url, Path(tmp) / "home", n, sizes[0], args.profile_jobs, args.profile_lines)
        from service.db.engine import dispose_engines

        dispose_engines()


def timings(args: argparse.Namespace, env: dict[str, str], db_url: str, tmp: Path, n: int, sizes: list[int],
            concurrencies: list[int | None], connections: list[int | None], sample_seeds: list[int]) -> None:
    """Book, sweeps, engine, store and bare COPY, interleaved repeat by repeat; then the ratios."""
    book_runs: list[float] = []
    book_losses: dict[int, list[float]] = {}
    torch_threads = _default_threads()  # a gpu worker's (it sets none), before the book's loop sets 1 here
    book_seconds_per_job(sample_seeds[:5], 1)  # warm-up: first-call allocations and dispatch caches
    results: dict[tuple[int, int, int | None, bool], list[SweepRun]] = {}
    stores: list[StoreRun] = []
    worst = 0.0
    for c in concurrencies:
        log = tmp / f"worker-c{c}.log"
        with Workers(env, c, log, QUEUE, args.workers) as worker:
            per_worker = int(worker.argv[worker.argv.index("--concurrency") + 1]) if QUEUE == "cpu" else 1
            children = per_worker * args.workers
            threads = int(worker.extra.get("KLAB_TORCH_THREADS", torch_threads))
            print(f"\nworker: {args.workers} x python -m {' '.join(worker.argv)}  env {worker.extra}")
            # Warm: children forked, torch's first calls made, database connections open.
            warm = timed_sweep(env, db_url, worker, min(n, 2048), 1024, args.timeout)
            print(f"  warm-up sweep of {min(n, 2048)} jobs: {warm.total:.2f} s (not counted)")
            for r in range(args.repeat):
                per_job, book_losses = book_seconds_per_job(sample_seeds, args.book_threads)
                book_runs.append(per_job)
                for b, k, w in itertools.product(sizes, connections, args.waits):
                    cli_env = env if k is None else {**env, "KLAB_SUBMIT_CONNECTIONS": str(k)}
                    run = timed_sweep(cli_env, db_url, worker, n, b, args.timeout, w)
                    run.book_total = per_job * n
                    results.setdefault((children, b, k, w), []).append(run)
                    ok = run.statuses.get("succeeded", 0)
                    conns = "" if k is None else f", {k} connection(s)"
                    print(f"  run {r + 1} --batch-jobs {b}{conns}{' --wait' if w else ''}: total {run.total:.2f} s, "
                          f"CLI {run.cli:.2f} s, "
                          f"after CLI {run.after_cli:.2f} s, first task received {run.first_received or 0:.2f} s, "
                          f"{run.tasks} task(s) [{_runs(run.task_seconds[:8])}{' ...' if run.tasks > 8 else ''}] s, "
                          f"{ok} succeeded, {run.attempts_over_one} retried; book {per_job * 1e3:.3f} ms/job; "
                          f"load {os.getloadavg()[0]:.2f}")
                    if ok != n:
                        print(f"  NOT ALL SUCCEEDED: {run.statuses}")
                worst = max(worst, check_against_book(db_url, book_losses))
                if c == concurrencies[0] and not args.sweep_only:
                    # the engine alone and the store, between the sweeps, under the same load (worker idle)
                    store = store_run(db_url, n, sizes[0], threads, children, args.store_jobs)
                    stores.append(store)
                    print(f"  engine alone {store.engine:.2f} s ({threads} torch thread(s), one process); store "
                          f"{store.rows / store.store:,.0f} epoch rows/s ({store.store:.2f} s: "
                          + ", ".join(f"{k} {v:.2f} s" for k, v in store.phases.items())
                          + f", the rest in Python); bare COPY "
                          f"{store.rows / store.bare:,.0f} rows/s ({store.bare:.2f} s)")
                    if children > 1:
                        print(f"  {children} processes at once, as the worker's children: store "
                              f"{store.rows / store.store_n:,.0f} epoch rows/s ({store.store_n:.2f} s); bare COPY "
                              f"{store.rows / store.bare_n:,.0f} rows/s ({store.bare_n:.2f} s)")

    book_job = statistics.median(book_runs)
    book_total = book_job * n
    print(f"\nbook loop, one job at a time, no storage, {args.book_threads} torch thread(s): "
          f"{book_job * 1e3:.3f} ms/job (runs: {', '.join(f'{v * 1e3:.3f}' for v in book_runs)}) "
          f"-> {book_total:.1f} s for {n:,} jobs (scaled)")
    print(f"stored losses of the {len(sample_seeds)} sampled seeds vs the book's: within {worst:.1e} (relative)")
    if not stores:
        engine_s = float("nan")
        print_sweeps(args, results, book_total, engine_s)
        print(f"target: sweep >= {args.target:g}x the book's loop")
        return
    engine_s = statistics.median(s.engine for s in stores)
    store_rate = statistics.median(s.rows / s.store for s in stores)
    bare_rate = statistics.median(s.rows / s.bare for s in stores)
    store_runs = ", ".join(f"{s.rows / s.store:,.0f}" for s in stores)
    bare_runs = ", ".join(f"{s.rows / s.bare:,.0f}" for s in stores)
    print(f"engine alone: {engine_s:.2f} s (runs: {_runs([s.engine for s in stores])}); store through "
          f"save_results: {store_rate:,.0f} epoch rows/s (runs: {store_runs}); bare binary COPY: "
          f"{bare_rate:,.0f} rows/s (runs: {bare_runs})")
    print_sweeps(args, results, book_total, engine_s)
    print(f"\nstore vs bare COPY, one process each: {store_rate / bare_rate:.2f}x the bare rate; store "
          f"{store_rate:,.0f} rows/s{'' if store_rate >= args.store_target else ' BELOW TARGET'} "
          f"(target >= {args.store_target:,.0f})")
    streams = stores[0].streams
    if streams > 1:
        store_n = statistics.median(s.rows / s.store_n for s in stores)
        bare_n = statistics.median(s.rows / s.bare_n for s in stores)
        print(f"store vs bare COPY, {streams} processes each (the worker's children): {store_n / bare_n:.2f}x the "
              f"bare rate; store {store_n:,.0f} rows/s (runs: "
              f"{', '.join(f'{s.rows / s.store_n:,.0f}' for s in stores)})"
              f"{'' if store_n >= args.store_target else ' BELOW TARGET'}; bare COPY {bare_n:,.0f} rows/s (runs: "
              f"{', '.join(f'{s.rows / s.bare_n:,.0f}' for s in stores)})")
    print(f"target: sweep >= {args.target:g}x the book's loop")


def print_sweeps(args: argparse.Namespace, results: dict[tuple[int, int, int | None, bool], list[SweepRun]],
                 book_total: float, engine_s: float) -> None:
    print("\nspeedup: the book loop's median over the sweep's median; per run: against the book loop timed just "
          "before it (median of those)")
    print("\n| worker children | --batch-jobs | CLI connections | command | total s (median) | runs | CLI s "
          "| first task received s | worker s/task (median; tasks) | after CLI s | sweep vs book | per run "
          "| sweep vs engine |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (c, b, k, w), runs in results.items():
        total = statistics.median(r.total for r in runs)
        per_task = statistics.median(s for r in runs for s in r.task_seconds) if runs[0].task_seconds else 0
        first = [r.first_received for r in runs if r.first_received is not None]
        speedup = book_total / total
        per_run = [r.book_total / r.total for r in runs]
        command = "--wait" if w else "plain"
        print(f"| {c} | {b} | {k or 'default'} | {command} | {total:.2f} | {_runs([r.total for r in runs])} "
              f"| {statistics.median(r.cli for r in runs):.2f} "
              f"| {statistics.median(first) if first else float('nan'):.2f} | {per_task:.3f}; {runs[0].tasks} "
              f"| {statistics.median(r.after_cli for r in runs):.2f} "
              f"| **{speedup:.1f}x**{'' if speedup >= args.target else ' BELOW TARGET'} "
              f"| {statistics.median(per_run):.1f}x ({', '.join(f'{v:.1f}' for v in per_run)}) "
              f"| {f'{total / engine_s:.1f}x slower' if engine_s == engine_s else 'not run'} |")


if __name__ == "__main__":
    main()
