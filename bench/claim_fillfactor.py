"""Claims by the jobs table's fillfactor: how many of a sweep's claims are HOT, their cost, the table's size.

The table is made with fillfactor 70 (migration 0004) so that a claim can write its job's new row on the
row's own page (a HOT update: no new entry in any index). A page of queued jobs holds about 16 of them, and
fillfactor 70 leaves room for the new rows of about 6: the other claims move their row. Each run here:
a fresh database at head, its jobs table set to one fillfactor (`ALTER TABLE`, before any row); the real
`klab sweep` stores --jobs queued jobs (no worker; the broker's messages are dropped); then, in this
process, the jobs are either only claimed (`worker.lease.claim`, tasks of --batch-jobs, as a worker's task
claims them) or trained and stored (`worker.tasks.train_jobs`, the whole task: a quick one, the book's, claims
nothing). It prints the seconds of those calls, the updates of jobs and how many were HOT (the statistics of
PostgreSQL, flushed by closing the connections; a claim updates each job once, a whole quick task once, a whole
claimed task twice), and the table's pages
after the sweep was stored and at the end. Fillfactors interleave run by run; the first one given is the
baseline of the ratios.

    .venv/bin/python bench/claim_fillfactor.py                         # 70,50; claims only; 2 repeats
    .venv/bin/python bench/claim_fillfactor.py --fillfactors 70,60,50 --mode train

PostgreSQL and Redis as bench/sweep_bench.py takes them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_bench as sb
from sqlalchemy import text


def stats(db_url: str) -> tuple[int, int, int]:
    """Updates of jobs, how many were HOT, and the table's pages."""
    eng = sb.poll_engine(db_url)
    with eng.connect() as conn:
        row = conn.execute(text("SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size('jobs') / 8192 "
                                "FROM pg_stat_user_tables WHERE relname = 'jobs'")).one()
    eng.dispose()
    return row[0], row[1], row[2]


def one_run(fillfactor: int, mode: str, jobs: int, batch_jobs: int) -> dict[str, float]:
    from service.db.engine import dispose_engines

    with sb.pg_database() as db_url, sb.flushed_redis() as broker, tempfile.TemporaryDirectory() as home:
        env = sb.service_env(db_url, broker, Path(home))
        sb.klab(env, "db", "upgrade")
        eng = sb.poll_engine(db_url)
        with eng.connect() as conn:
            conn.execute(text(f"ALTER TABLE jobs SET (fillfactor = {int(fillfactor)})"))
        eng.dispose()
        sb.klab(env, "sweep", *sb.book_argv(), "--seed", f"0..{jobs - 1}", "--batch-jobs", str(batch_jobs))
        sb.flush_redis(broker)  # no worker takes these messages: this process claims the jobs
        os.environ.update({"KLAB_DATABASE_URL": db_url, "KLAB_BROKER_URL": broker, "KLAB_HOME": home})
        from service.settings import settings

        settings.cache_clear()
        from worker.lease import claim
        from worker.tasks import train_jobs

        eng = sb.poll_engine(db_url)
        with eng.connect() as conn:
            ids = list(conn.execute(text("SELECT id FROM jobs ORDER BY id")).scalars())
        eng.dispose()
        before = stats(db_url)
        started = time.perf_counter()
        for i in range(0, len(ids), batch_jobs):
            part = ids[i : i + batch_jobs]
            if mode == "claim":
                claim(part, "bench", f"task-{i}", 0)
            else:
                train_jobs(part, f"task-{i}", "bench")
        seconds = time.perf_counter() - started
        dispose_engines()  # a backend that ends flushes its statistics, as it ends: wait for them
        expected, deadline = len(ids), time.monotonic() + 30  # at least one update a job, whichever the mode
        while (after := stats(db_url))[0] - before[0] < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"seconds": seconds, "updates": after[0] - before[0], "hot": after[1] - before[1],
                "pages_stored": before[2], "pages_end": after[2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fillfactors", default="70,50", help="comma list; the first is the baseline")
    ap.add_argument("--mode", choices=["claim", "train"], default="claim",
                    help="claim only (worker.lease.claim), or the whole task (worker.tasks.train_jobs: quick)")
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--batch-jobs", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    try:
        factors = [int(f) for f in args.fillfactors.split(",")]
    except ValueError:
        ap.error(f"--fillfactors: not a list of integers: {args.fillfactors!r}")
    if not all(10 <= f <= 100 for f in factors):
        ap.error("--fillfactors: each must be between 10 and 100")
    print(f"machine: {sb.machine()}")
    print(f"{args.jobs:,} queued jobs of `klab sweep`, {args.mode} in tasks of {args.batch_jobs:,}")
    runs: dict[int, list[dict[str, float]]] = {f: [] for f in factors}
    for r in range(args.repeat):
        for f in factors:
            run = one_run(f, args.mode, args.jobs, args.batch_jobs)
            runs[f].append(run)
            print(f"run {r + 1} fillfactor {f}: {args.mode} {run['seconds']:.2f} s, updates {run['updates']:,.0f}, "
                  f"HOT {run['hot']:,.0f}, pages {run['pages_stored']:,.0f} stored, {run['pages_end']:,.0f} at the end",
                  flush=True)
    base = statistics.median(r["seconds"] for r in runs[factors[0]])
    base_pages = statistics.median(r["pages_end"] for r in runs[factors[0]])
    print(f"\n| fillfactor | {args.mode} s, median (runs) | speed vs {factors[0]} ({factors[0]}'s s / these) "
          f"| HOT share of the updates | pages at the end | size vs {factors[0]} (these / {factors[0]}'s) |")
    print("|---|---|---|---|---|---|")
    for f in factors:
        sec = statistics.median(r["seconds"] for r in runs[f])
        hot = statistics.median(r["hot"] / max(r["updates"], 1) for r in runs[f])
        pages = statistics.median(r["pages_end"] for r in runs[f])
        each = ", ".join(f"{r['seconds']:.2f}" for r in runs[f])
        print(f"| {f} | {sec:.2f} ({each}) | {base / sec:.2f}x | "
              f"{hot:.0%} | {pages:,.0f} | {pages / base_pages:.2f}x |")


if __name__ == "__main__":
    main()
