"""Latency: one small job (edge:6x8, d2l, d2l-manual, 10 epochs) from submit to stored result, warm worker.

The service path, in this process (no CLI start-up): the clock starts before the spec is parsed, then
service.submit.plan_specs (the job built as a worker would) and service.submit.submit (what `klab submit`
calls: the broker checked, the job row stored queued in one transaction, its task sent), and the job row is
polled (status finished) every ~2 ms on a direct autocommit connection; the clock stops when the row says
finished (its epochs are committed in the same transaction). 200 jobs, one after another, after a few warm-up
jobs; median and 95th percentile. Then the same through the real CLI, `klab submit --wait --json` (its Python
start-up and its 0.25 s polling included), on fewer runs.

    .venv/bin/python bench/latency_bench.py                         # PostgreSQL and SQLite
    .venv/bin/python bench/latency_bench.py --jobs 50 --cli-runs 5 --backends postgresql

PostgreSQL: a fresh database through KLAB_TEST_DATABASE_URL, dropped at the end; SQLite: a file in a
temporary directory. Redis: KLAB_BENCH_REDIS_URL (default redis://127.0.0.1:6379/11), flushed around.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import text
from sweep_bench import (
    KLAB,
    ROOT,
    Worker,
    exit_on_sigterm,
    flushed_redis,
    klab,
    machine,
    percentile,
    pg_database,
    poll_engine,
    service_env,
    top_functions,
)

JOB = {"input": "edge:6x8", "kernel": "d2l", "method": "d2l-manual", "epochs": 10}
FINISHED = ("succeeded", "diverged", "failed", "cancelled")
POLL_SECONDS = 0.002
TARGET_MS = 100.0


@contextlib.contextmanager
def database(backend: str, tmp: Path) -> Iterator[str]:
    if backend == "postgresql":
        with pg_database() as url:
            yield url
    elif backend == "sqlite":
        yield f"sqlite:///{tmp / 'klab.db'}"
    else:
        raise SystemExit(f"unknown backend {backend!r}")


def _utc_seconds(value: datetime | str | None) -> float | None:
    """A stored timestamp (naive means UTC; SQLite gives text) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def service_path(url: str, jobs: int, warmup: int, worker_name: str) -> dict[str, list[float]]:
    """Submit one job at a time through the service's functions; seconds per phase, per job."""
    from service.jobs.spec import JobSpec
    from service.settings import settings
    from service.submit import plan_specs, submit

    assert settings().database_url == url, "service.submit stores into KLAB_DATABASE_URL: set it to url"
    status_sql = text("SELECT status, started_at, finished_at, worker_host FROM jobs WHERE id = :id")
    phases: dict[str, list[float]] = {k: [] for k in ("total", "submit", "to_start", "in_worker", "to_seen")}
    eng = poll_engine(url)
    try:
        with eng.connect() as conn:
            for i in range(warmup + jobs):
                wall0 = time.time()
                t0 = time.perf_counter()
                _, ids = submit(plan_specs([JobSpec.parse({**JOB, "seed": i})], None), 1)
                submitted = time.perf_counter() - t0
                while True:
                    row = conn.execute(status_sql, {"id": ids[0]}).one()
                    if row.status in FINISHED:
                        break
                    if time.perf_counter() - t0 > 60:
                        raise SystemExit(f"job {ids[0]} not finished after 60 s (status {row.status})")
                    time.sleep(POLL_SECONDS)
                total = time.perf_counter() - t0
                if row.status != "succeeded":
                    raise SystemExit(f"job {ids[0]} ended {row.status}")
                if i < warmup:
                    continue
                if not str(row.worker_host).startswith(worker_name + "@"):
                    raise SystemExit(f"job {ids[0]} was trained by {row.worker_host}, another worker on the broker")
                started, finished = _utc_seconds(row.started_at), _utc_seconds(row.finished_at)
                phases["total"].append(total)
                phases["submit"].append(submitted)
                if started is not None and finished is not None:
                    # The worker's and this process's clocks are the same host's clock.
                    phases["to_start"].append(started - (wall0 + submitted))
                    phases["in_worker"].append(finished - started)
                    phases["to_seen"].append(wall0 + total - finished)
    finally:
        eng.dispose()
    return phases


def profile_worker(url: str, jobs: int, lines: int) -> None:
    """cProfile, in this process, of the worker's task on single jobs: worker.tasks.train_jobs([id])."""
    import cProfile

    from service.db.engine import writing
    from service.jobs.spec import JobSpec
    from service.jobs.status import JobStatus
    from service.settings import settings
    from service.submit import plan_specs, store
    from worker.tasks import train_jobs

    assert settings().database_url == url, "service.submit stores into KLAB_DATABASE_URL: set it to url"

    def one(seed: int) -> list[int]:  # stored queued as klab submit stores it; no message: trained here
        plan = plan_specs([JobSpec.parse({**JOB, "seed": seed})], "cpu")
        with writing() as conn:
            return store(conn, plan, list(plan.jobs), JobStatus.QUEUED)

    for seed in range(5):  # first-call costs
        train_jobs(one(20_000 + seed), "bench-warmup")
    ids = [one(30_000 + seed) for seed in range(jobs)]
    prof = cProfile.Profile()
    started = time.perf_counter()
    for job_ids in ids:
        prof.runcall(train_jobs, job_ids, "bench-profile")
    per_job = (time.perf_counter() - started) / jobs
    ids = [one(40_000 + seed) for seed in range(jobs)]
    started = time.perf_counter()
    for job_ids in ids:
        train_jobs(job_ids, "bench-unprofiled")
    print(f"\n== profile: worker.tasks.train_jobs([id]) on {jobs} single jobs, in-process: {per_job * 1e3:.1f} ms/job "
          f"profiled, {(time.perf_counter() - started) / jobs * 1e3:.1f} ms/job unprofiled ==")
    print(top_functions(prof, "cumulative", lines))
    print("-- by own time --")
    print(top_functions(prof, "tottime", lines // 2))


def cli_path(env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall seconds of `klab submit --wait --json`, and of `klab --version` (the CLI's start-up alone)."""
    argv = [KLAB, "submit", *[f"--{k}={v}" for k, v in JOB.items()], "--wait", "--json"]
    submits, startups = [], []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run([*argv, f"--seed={10_000 + i}"], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        elapsed = time.perf_counter() - t0
        if out.returncode != 0 or json.loads(out.stdout)["status"] != "succeeded":
            raise SystemExit(f"klab submit failed ({out.returncode}): {out.stderr[-2000:]}")
        t0 = time.perf_counter()
        subprocess.run([KLAB, "--version"], env=env, cwd=ROOT, capture_output=True, check=True)
        startup = time.perf_counter() - t0
        if i:  # the first one warms the file cache
            submits.append(elapsed)
            startups.append(startup)
    return submits, startups


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values) * 1e3:.1f} ms, p95 {percentile(values, 95) * 1e3:.1f} ms, "
            f"min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f} (n={len(values)})")


def main() -> None:
    exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200, help="jobs timed through the service path")
    ap.add_argument("--warmup", type=int, default=10, help="jobs run first and not counted")
    ap.add_argument("--cli-runs", type=int, default=20, help="`klab submit --wait --json` runs (0: skip)")
    ap.add_argument("--backends", default="postgresql,sqlite")
    ap.add_argument("--concurrency", type=int, default=1, help="the cpu worker's --concurrency")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also cProfile the worker's task on N single jobs, in this process")
    ap.add_argument("--profile-lines", type=int, default=30, help="functions listed per profile")
    args = ap.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if len(backends) > 1:
        # One process per backend: its settings are read once, its broker connections end with it.
        for backend in backends:
            argv, skip = [], False
            for a in sys.argv[1:]:
                if not skip and not a.startswith("--backends"):
                    argv.append(a)
                skip = a == "--backends"
            code = subprocess.run([sys.executable, __file__, *argv, f"--backends={backend}"]).returncode
            if code:
                raise SystemExit(code)
        return
    print(f"machine: {machine()}")
    print(f"date: {datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"job: {JOB}; {args.jobs} jobs one after another (+{args.warmup} warm-up), poll every "
          f"{POLL_SECONDS * 1e3:.0f} ms; worker concurrency {args.concurrency}")
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="klab-latency-bench-") as tmp, \
                database(backend, Path(tmp)) as url, flushed_redis() as broker_url:
            env = service_env(url, broker_url, Path(tmp) / "home")
            klab(env, "db", "upgrade")
            # settings() is read once per process: the URL is set before anything reads it.
            os.environ.update({k: env[k] for k in ("KLAB_DATABASE_URL", "KLAB_BROKER_URL", "KLAB_HOME")})
            from service.settings import settings

            settings.cache_clear()
            with Worker(env, args.concurrency, Path(tmp) / "worker.log") as worker:
                phases = service_path(url, args.jobs, args.warmup, worker.name)
                submits, startups = cli_path(env, args.cli_runs) if args.cli_runs else ([], [])
                errors = worker.tasks_since(0).errors
            if args.profile:
                profile_worker(url, args.profile, args.profile_lines)
            from service.db.engine import dispose_engines

            dispose_engines()
        median_ms = statistics.median(phases["total"]) * 1e3
        print(f"\n{backend}: submit to stored result, service path: {_ms(phases['total'])}; "
              f"target median < {TARGET_MS:.0f} ms: {'met' if median_ms < TARGET_MS else 'NOT MET'}")
        print(f"  parse, plan, check broker, store the row, send task:   {_ms(phases['submit'])}")
        print(f"  submitted to started by the worker (started_at):       {_ms(phases['to_start'])}")
        print(f"  claimed to finished_at (train, analyse, store):        {_ms(phases['in_worker'])}")
        print(f"  finished_at to seen by the poll (commit, poll):        {_ms(phases['to_seen'])}")
        if submits:
            print(f"  klab submit --wait --json (real CLI, fresh process):  {_ms(submits)}")
            print(f"  klab --version (the CLI's Python start-up alone):     {_ms(startups)}")
        if errors:
            print("  worker errors: " + " | ".join(errors[:3]))


if __name__ == "__main__":
    main()
