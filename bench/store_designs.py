"""Store designs: what finishing a job costs PostgreSQL, as shipped and as designs that are not built.

The sweep benchmark (bench/sweep_bench.py) times the store as shipped: each task's results written into
running jobs by service.db.writes.save_results (the results' columns copied into a staging table, one
`UPDATE jobs ... FROM` it, the epochs by binary COPY). That UPDATE is never HOT (it sets err_relative,
which is indexed), so every finished job writes a new row version and an entry in each of the four
indexes of jobs. This script times, on the same results and in the same run, that store and prototypes
of other designs, none of which the service has:

- shipped: save_results as it is;
- replace: each running job deleted (RETURNING what the claim and the CLI stored) and copied back whole,
  finished, by binary COPY: a way around the UPDATE's new row version that keeps the lifecycle as it is;
- split: the result columns in a table of their own, filled by binary COPY (its primary key and an index
  on err_relative there, dropped from jobs), and jobs updated only in status and finished_at;
- once: the same table, and no write to jobs at all when a job ends: the floor of a design in which a
  job's status is known from its result's presence (a change of the job lifecycle and of every reader);
- once-checked: once with the check such a design needs (and `once` leaves out): a result is kept only for
  a job still running in jobs and not yet ended by another result, so the results go through a staging
  table by binary COPY and one `INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING`, as save_results'
  UPDATE goes through its staging table; the epochs of the jobs kept only;
- once-selected: the same check made first, by one SELECT of the task's jobs still running and without a
  result, and the results of those copied straight into the table (a result another worker stored between
  the two would make the COPY fail on the primary key: a real design would then take once-checked's path);
- unindexed-error: save_results without the index on jobs.err_relative (what `--sort relative_error`
  reads);
- unindexed-method: save_results without the index on jobs.method (what `klab list --method` reads);
- brin-epochs: save_results with the epochs' primary key (job_id, epoch) replaced by a BRIN index on
  job_id (int4_minmax_multi_ops), which PostgreSQL keeps almost for free and summarizes only at VACUUM.

Each design is timed from one process and from two at once (the worker's two children on 2 cores), on
100,000 jobs (10 epochs each) stored as running, designs interleaved repeat by repeat; it prints epoch
rows/s, how many of the jobs' updates were HOT, and how long reading one job's epochs takes right after
the store (what `klab show` reads; best of a few jobs).

    .venv/bin/python bench/store_designs.py --repeat 3
    .venv/bin/python bench/store_designs.py --designs shipped,brin-epochs --batch-jobs 4096

PostgreSQL only: a fresh database through KLAB_TEST_DATABASE_URL, as bench/sweep_bench.py makes it.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_bench as sb
from sqlalchemy import Column, Integer, Table, text

DESIGNS = ("shipped", "replace", "split", "once", "once-checked", "once-selected", "unindexed-error",
           "unindexed-method", "brin-epochs")
RESULT_TABLE = ("split", "once", "once-checked", "once-selected")
"""The designs that store a result in a table of its own."""
RESULTS = "_klab_design_results"
"""The prototypes' table of results (its columns: the job id and what save_results sets in jobs)."""


def result_columns() -> list[str]:
    from service.jobs import result

    return [result.BY_NAME[n].col for n in result.ROW if n != "status"]


STAGING = "_klab_design_staging"
"""once-checked's staging table: a temporary copy of RESULTS' columns, emptied at each commit."""


def save_elsewhere(conn: Any, ids: list[int], columns: Any, fresh: bool = False, touch_jobs: bool = True,
                   checked: str | None = None) -> list[int]:
    """A task's results into the results table by binary COPY, its epochs as save_results writes them, and
    (touch_jobs) each job's status and end time set in jobs; `checked`: only the results of jobs running in jobs
    and without a result yet, through a staging table ("staging") or a SELECT first ("select"). Takes
    save_results' arguments (`fresh` unused: the prototypes store into jobs that have no epochs)."""
    import numpy as np

    from service.db import bulk
    from service.db.schema import utcnow
    from service.jobs import result

    values = {result.BY_NAME[n].col: columns.stored(n) for n in result.ROW}
    status = values.pop("status")
    if not isinstance(status, str):
        raise SystemExit("the prototypes store tasks whose jobs all end alike")
    stored = list(ids)
    if touch_jobs:
        with conn.connection.driver_connection.cursor() as cur:
            cur.execute("UPDATE jobs SET status = %s, finished_at = %s WHERE id = ANY(%s) AND status = 'running' "
                        "RETURNING id", (status, utcnow(), stored))
            stored = [r[0] for r in cur.fetchall()]
    rows = {"job_id": list(ids), **{c: values[c] for c in result_columns()}}
    raw = conn.connection.driver_connection
    if checked == "select":
        kept = {r[0] for r in raw.execute(
            f"SELECT id FROM jobs WHERE id BETWEEN %s AND %s AND id = ANY(%s) AND status = 'running' AND NOT EXISTS "
            f"(SELECT 1 FROM {RESULTS} r WHERE r.job_id = jobs.id)", (min(ids), max(ids), list(ids))).fetchall()}
        if len(kept) < len(ids):
            raise SystemExit("once-selected measures tasks whose jobs are all running")
        checked = None
    if not checked:
        bulk.insert_rows(conn, RESULTS, rows, len(ids))
        bulk.insert_epochs(conn, np.asarray(ids), np.asarray(columns.epochs_done), columns.loss, columns.mse,
                           columns.kernel_error)
        return stored
    raw.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING} ON COMMIT DELETE ROWS AS "
                f"SELECT * FROM {RESULTS} WITH NO DATA")
    raw.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {STAGING}_id ON {STAGING} (job_id)")  # as save_results' staging
    bulk.insert_rows(conn, STAGING, rows, len(ids))
    names = ", ".join(rows)
    stored = [r[0] for r in raw.execute(
        f"INSERT INTO {RESULTS} ({names}) SELECT {', '.join(f's.{c}' for c in rows)} FROM {STAGING} s "
        f"JOIN jobs j ON j.id = s.job_id WHERE j.status = 'running' ON CONFLICT (job_id) DO NOTHING "
        "RETURNING job_id").fetchall()]
    raw.execute(f"TRUNCATE {STAGING}")
    keep = np.isin(np.asarray(ids), stored)
    bulk.insert_epochs(conn, np.asarray(ids)[keep], np.asarray(columns.epochs_done)[keep], columns.loss[:, keep],
                       columns.mse[:, keep], None if columns.kernel_error is None else columns.kernel_error[:, keep])
    return stored


def replace(conn: Any, ids: list[int], columns: Any, fresh: bool = False) -> list[int]:
    """A task's running jobs deleted (RETURNING what they hold) and copied back whole, finished, by binary COPY."""
    import numpy as np

    from service.db import bulk
    from service.db.schema import jobs, utcnow
    from service.jobs import result

    values = {result.BY_NAME[n].col: columns.stored(n) for n in result.ROW}
    values["finished_at"] = utcnow()
    keep = [c.name for c in jobs.columns if c.name not in values]
    listed = ", ".join(f"{c}::text AS {c}" if c == "spec" else c for c in keep)
    raw = conn.connection.driver_connection
    with raw.cursor(binary=True) as cur:
        cur.execute(f"DELETE FROM jobs WHERE id = ANY(%s) AND status = 'running' RETURNING {listed}", (list(ids),))
        held = {r[0]: r for r in cur.fetchall()}
    at = [k for k, i in enumerate(ids) if i in held]
    names = keep + list(values)
    kinds = [bulk._binary_type(c) for c in names]
    lists = [v if isinstance(v, list) else [v] * len(ids) for v in values.values()]
    lists = [bulk._json_texts(v) if kind == "text" else v for v, kind in zip(lists, kinds[len(keep):])]
    with raw.cursor() as cur, cur.copy(f"COPY jobs ({', '.join(names)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(kinds)
        for k in at:
            copy.write_row((*held[ids[k]], *(v[k] for v in lists)))
    stored = [ids[k] for k in at]
    ke = columns.kernel_error
    bulk.insert_epochs(conn, np.asarray(ids)[at], np.asarray(columns.epochs_done)[at], columns.loss[:, at],
                       columns.mse[:, at], None if ke is None else ke[:, at])
    return stored


def prepare(db_url: str, design: str) -> None:
    """The tables as the design has them: first as shipped (jobs' own indexes, the epochs' primary key),
    then the design's change."""
    eng = sb.poll_engine(db_url)
    with eng.connect() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {RESULTS}"))
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_err_relative ON jobs (err_relative)"))
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_method ON jobs (method)"))
        conn.execute(text("DROP INDEX IF EXISTS ix_epochs_job_id_brin"))
        if not conn.execute(text("SELECT 1 FROM pg_constraint WHERE conname = 'pk_epochs'")).first():
            conn.execute(text("ALTER TABLE epochs ADD CONSTRAINT pk_epochs PRIMARY KEY (job_id, epoch)"))
        if design in RESULT_TABLE:
            conn.execute(text(f"CREATE TABLE {RESULTS} AS SELECT id AS job_id, {', '.join(result_columns())} "
                              "FROM jobs WITH NO DATA"))
            conn.execute(text(f"ALTER TABLE {RESULTS} ADD PRIMARY KEY (job_id)"))
            conn.execute(text(f"CREATE INDEX ON {RESULTS} (err_relative)"))
        if design in (*RESULT_TABLE, "unindexed-error"):
            conn.execute(text("DROP INDEX ix_jobs_err_relative"))
        if design == "unindexed-method":
            conn.execute(text("DROP INDEX ix_jobs_method"))
        if design == "brin-epochs":
            conn.execute(text("ALTER TABLE epochs DROP CONSTRAINT pk_epochs"))
            conn.execute(text("CREATE INDEX ix_epochs_job_id_brin ON epochs USING brin (job_id int4_minmax_multi_ops)"))
    eng.dispose()


def lookup_ms(db_url: str, ids: list[int]) -> float:
    """Milliseconds to read one job's epochs as `klab show` reads them: the best of a few jobs, spread
    over the table."""
    eng = sb.poll_engine(db_url)
    best = float("inf")
    with eng.connect() as conn:
        for job in (ids[len(ids) // 10], ids[len(ids) // 2], ids[-1], ids[len(ids) // 10]):
            started = time.perf_counter()
            got = conn.execute(text("SELECT epoch, loss, mse, kernel_error FROM epochs WHERE job_id = :id "
                                    "ORDER BY epoch"), {"id": job}).all()
            best = min(best, time.perf_counter() - started)
            if not got:
                raise SystemExit(f"job {job} has no epochs after the store")
    eng.dispose()
    return best * 1e3


def updates(db_url: str) -> tuple[int, int]:
    """Row updates of jobs so far, and how many of them were HOT."""
    eng = sb.poll_engine(db_url)
    with eng.connect() as conn:
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
        row = conn.execute(text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                "WHERE relname = 'jobs'")).one()
    eng.dispose()
    return row[0], row[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--batch-jobs", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--streams", type=int, default=2, help="processes storing at once (the worker's children)")
    ap.add_argument("--designs", default=",".join(DESIGNS), help=f"comma list of ({', '.join(DESIGNS)})")
    args = ap.parse_args()
    designs = args.designs.split(",")
    if unknown := sorted(set(designs) - set(DESIGNS)):
        ap.error(f"--designs: no design {', '.join(unknown)} (known: {', '.join(DESIGNS)})")
    from service.db.schema import jobs, metadata

    print(f"machine: {sb.machine()}")
    for name in (RESULTS, STAGING):  # for bulk.insert_rows' COPY types
        Table(name, metadata, Column("job_id", Integer, primary_key=True),
              *(jobs.c[c]._copy() for c in result_columns()))
    rates: dict[tuple[str, int], list[float]] = {}
    lookups: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="klab-store-designs-") as tmp, sb.pg_database() as db_url:
        sb.klab(sb.service_env(db_url, sb.REDIS_URL, Path(tmp) / "home"), "db", "upgrade")
        _, results = sb.engine_alone(args.jobs, args.batch_jobs, 1)
        rows = sum(int(b.columns.epochs_done.sum()) for b in results)
        for r in range(args.repeat):
            for design in designs:
                save = (functools.partial(save_elsewhere, touch_jobs=design == "split",
                                          checked={"once-checked": "staging", "once-selected": "select"}.get(design))
                        if design in RESULT_TABLE else replace if design == "replace" else None)
                seen = []
                before = updates(db_url)
                for streams in sorted({1, args.streams}):
                    ids = sb.running_jobs(db_url, args.jobs)  # empties the tables first
                    prepare(db_url, design)
                    seconds, _ = sb.service_store(db_url, ids, results, streams, save)
                    rates.setdefault((design, streams), []).append(rows / seconds)
                    seen.append(f"{streams} process(es) {rows / seconds:,.0f}")
                upd, hot = (a - b for a, b in zip(updates(db_url), before))
                lookup = lookup_ms(db_url, ids)
                lookups.setdefault(design, []).append(lookup)
                print(f"run {r + 1} {design}: epoch rows/s {', '.join(seen)}; jobs updates {upd:,}, HOT {hot:,}; "
                      f"one job's epochs read in {lookup:.1f} ms", flush=True)
        from service.db.engine import dispose_engines

        dispose_engines()
    base = "shipped" if "shipped" in designs else designs[0]  # the service's own store, measured in the same run
    print(f"\n| design | processes | epoch rows/s, median | vs {base} (same processes) | runs | one job's epochs, ms "
          f"(runs) |\n|---|---|---|---|---|---|")
    for (design, streams), values in rates.items():
        ratio = statistics.median(values) / statistics.median(rates[(base, streams)])
        print(f"| {design} | {streams} | {statistics.median(values):,.0f} | {ratio:.2f}x | "
              f"{', '.join(f'{v:,.0f}' for v in values)} | {', '.join(f'{v:.1f}' for v in lookups[design])} |")


if __name__ == "__main__":
    main()
