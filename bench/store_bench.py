"""Store benchmark: 100,000 jobs of 10 epochs each (1.1 million rows) into SQLite and PostgreSQL.

Reports rows per second for the bulk path (finished jobs through service.db.writes.insert_jobs, then their
epochs through service.db.bulk.insert_epochs: COPY for both on PostgreSQL), and for writes.save_rows (the path
`klab run` takes; workers store whole batches: sweep_bench.py) on a slice; then times the real `klab list
--limit 20` (newest first, by relative error, the failed ones; and the reads no index serves: every job sorted
by lr, a kernel no job has, one a quarter of them have, a literal), `show ID`, `compare`, `status` and
`sweeps` on the filled database, each of which should answer in under a second (on 1,000,000 jobs those that
read every job take 0.55 to 0.8 s: bench/RESULTS.md), against the same commands forced through SQLAlchemy's
engine (the baseline: how every read command ran before service.db.connect's driver connections), interleaved
in the same run.

    .venv/bin/python bench/store_bench.py                 # full size, both backends
    .venv/bin/python bench/store_bench.py --jobs 10000 --backends sqlite

PostgreSQL: a fresh database klab_bench_<hex> is created through KLAB_TEST_DATABASE_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test) and dropped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sqlalchemy import create_engine, insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from service.db import writes  # noqa: E402
from service.db.engine import dispose_engines, upgrade, writing  # noqa: E402
from service.db.reads import reading  # noqa: E402
from service.db.schema import sweeps as sweeps_table  # noqa: E402
from service.db.schema import utcnow  # noqa: E402
from service.jobs import result  # noqa: E402
from service.jobs.spec import JobSpec  # noqa: E402
from service.jobs.status import JobStatus  # noqa: E402
from service.settings import describe  # noqa: E402

PG_ADMIN_URL = os.environ.get("KLAB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KLAB = str(Path(sys.executable).parent / "klab")
CHUNK = 5_000
"""Jobs per transaction on the bulk path."""
SWEEP_SIZE = 100
"""Jobs per sweep, so `klab compare --sweep` and the sweep queries have something realistic to read."""


def engine_like_result(spec: JobSpec, rng: np.random.Generator) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A result shaped like worker.engine.run_spec's, (row, epochs) (3x3 kernels, every field filled)."""
    true = rng.standard_normal((3, 3))
    learned = true + 0.01 * rng.standard_normal((3, 3))
    losses = np.geomspace(10.0, 1e-3, spec.epochs)
    frob = float(np.linalg.norm(learned - true))
    epochs = [{"epoch": i + 1, "loss": float(v), "mse": float(v) / 36, "kernel_error": frob * (spec.epochs - i)}
              for i, v in enumerate(losses)]
    row = {
        "status": "succeeded", "error_message": None, "device": "cpu", "torch_version": "2.13.0+cpu",
        "train_seconds": 0.02, "epochs_done": len(epochs), "final_loss": epochs[-1]["loss"],
        "final_mse": epochs[-1]["mse"],
        "true_kernel": true.tolist(), "initial_kernel": (0.1 * true).tolist(), "learned_kernel": learned.tolist(),
        "learned_bias": None, "lstsq_kernel": true.tolist(),
        "frobenius_error": frob, "relative_error": frob / float(np.linalg.norm(true)),
        "max_abs_error": float(np.abs(learned - true).max()), "cosine": 0.9999,
        "rank": 9, "params": 9, "identifiable": True,
        "gap_optimization": frob, "gap_noise": 1e-16, "gap_identifiability": 1e-16,
        "converged_epoch": None, "diverged_epoch": None, "stable_lr": 0.05, "convergence_rate": 0.97,
        "more_epochs": 120,
        "explanation": f"not converged yet: training stopped {frob:.3g} from the best kernel the data allow; "
                       "train longer or raise the learning rate.",
    }
    return row, epochs


LRS = (0.001, 0.003, 0.01, 0.03, 0.1)
KERNELS = ("sobel-x", "sobel-y", "laplacian", "box3")


def job_rows(n: int, epochs: int, sweep_ids: list[int], start: int
             ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(job row, its epochs) for jobs start..start+n: a few templates, each job with its own lr, seed and kernel."""
    rng = np.random.default_rng(start)
    templates = {}
    for k in KERNELS:
        spec = JobSpec.parse({"input": "random:6x6", "kernel": k, "epochs": epochs, "method": "d2l-sgd"})
        templates[k] = (spec, engine_like_result(spec, rng))
    for i in range(start, start + n):
        kernel = KERNELS[i % len(KERNELS)]
        spec, (row, epoch_list) = templates[kernel]
        lr, seed = LRS[(i // len(KERNELS)) % len(LRS)], i
        cols = writes.new_job(spec, start=JobStatus.RUNNING, sweep_id=sweep_ids[i // SWEEP_SIZE], queue="cpu")
        cols.update(spec=json.dumps({**json.loads(cols["spec"]), "lr": lr, "seed": seed}), lr=lr, seed=seed)
        res = result.columns_of(row)
        res["err_relative"] = float(res["err_relative"] * (1 + (i % 97) / 10))  # something to sort by
        yield ({**cols, **res, "finished_at": utcnow(), "attempts": 1, "task_try": 1}, epoch_list)


def bulk_store(url: str, jobs: int, epochs: int) -> dict[str, float]:
    """Finished jobs through writes.insert_jobs, their epochs through bulk.insert_epochs (epochs x jobs
    arrays, as a worker's batch hands them over), CHUNK jobs a transaction."""
    from service.db import bulk

    with writing(url) as conn:
        sweeps = [{"name": f"bench {s}", "size": SWEEP_SIZE, "created_at": utcnow(),  # params as klab writes them
                   "params": {"swept": {"lr": list(LRS), "kernel": list(KERNELS),
                                        "seed": list(range(s * SWEEP_SIZE, (s + 1) * SWEEP_SIZE))}, "fixed": {}}}
                  for s in range((jobs + SWEEP_SIZE - 1) // SWEEP_SIZE)]
        sweep_ids = list(conn.execute(insert(sweeps_table).returning(sweeps_table.c.id,
                                                                     sort_by_parameter_order=True),
                                      sweeps).scalars())
    t_jobs = t_epochs = 0.0
    n_epochs = 0
    for start in range(0, jobs, CHUNK):
        batch = list(job_rows(min(CHUNK, jobs - start), epochs, sweep_ids, start))
        with writing(url) as conn:
            t0 = time.perf_counter()
            ids = writes.insert_jobs(conn, [row for row, _ in batch])
            t1 = time.perf_counter()
            columns = {k: np.array([[e[k] for e in epoch_list] for _, epoch_list in batch]).T
                       for k in ("loss", "mse", "kernel_error")}
            bulk.insert_epochs(conn, ids, [len(epoch_list) for _, epoch_list in batch], columns["loss"],
                               columns["mse"], columns["kernel_error"])
        t2 = time.perf_counter()  # committed
        n_epochs += sum(len(epoch_list) for _, epoch_list in batch)
        t_jobs += t1 - t0
        t_epochs += t2 - t1
    total = t_jobs + t_epochs
    return {"jobs": jobs, "epochs": n_epochs, "jobs_s": t_jobs, "epochs_s": t_epochs, "total_s": total,
            "rows_per_s": (jobs + n_epochs) / total, "jobs_per_s": jobs / t_jobs, "epochs_per_s": n_epochs / t_epochs}


def save_results_path(url: str, jobs: int, epochs: int, batch: int = 100) -> dict[str, float]:
    """insert_jobs (running) + save_rows, `batch` jobs a transaction, as `klab run` stores its job."""
    spec = JobSpec.parse({"input": "random:6x6", "kernel": "sobel-x", "epochs": epochs, "method": "d2l-sgd"})
    row, epoch_list = engine_like_result(spec, np.random.default_rng(0))
    t0 = time.perf_counter()
    for start in range(0, jobs, batch):
        with writing(url) as conn:
            made = writes.insert_jobs(conn, [writes.new_job(spec, start=JobStatus.RUNNING)
                                             for _ in range(min(batch, jobs - start))])
            writes.save_rows(conn, [(job_id, row, epoch_list) for job_id in made])
    elapsed = time.perf_counter() - t0
    return {"jobs": jobs, "rows_per_s": jobs * (1 + epochs) / elapsed, "total_s": elapsed}


SPLIT = """
import contextlib, io, json, sys, time
from service.cli import main
runs = []
for _ in range(2):
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(sys.argv[1:])
        except SystemExit:
            pass
    runs.append(time.perf_counter() - t0)
print(json.dumps({"first": runs[0], "again": runs[1]}), file=sys.stderr)
"""
"""The command twice in one interpreter: the second run is the database work and output alone, without
the imports the first run pays for."""

THROUGH_ENGINE = """
import sys
from service.db import reads
reads.open_reader = lambda url: None  # every read through service.db.engine's SQLAlchemy engine
from service.cli import main
main(sys.argv[1:])
"""
"""The baseline: the same command with the driver-only path turned off."""


def _process_times(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one process run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {out.stderr.strip()}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def cli_times(url: str, args: list[str], repeat: int = 5) -> dict[str, float]:
    """The real `klab ARGS` (a fresh process each time): wall time, the process's CPU time (what the wall
    time comes to on an idle machine, since the database work is milliseconds), the command alone, and
    the baseline through SQLAlchemy's engine, interleaved with the real runs so both see the same load."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KLAB_")}, "KLAB_DATABASE_URL": url,
           "KLAB_HOME": tempfile.gettempdir()}
    walls, cpus, engine_walls = [], [], []
    for _ in range(repeat):
        wall, cpu = _process_times([KLAB, *args], env)
        walls.append(wall)
        cpus.append(cpu)
        engine_walls.append(_process_times([sys.executable, "-c", THROUGH_ENGINE, *args], env)[0])
    splits = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", SPLIT, *args], env=env, capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
        splits.append(json.loads(out.stderr.strip().splitlines()[-1]))
    return {"best": min(walls), "median": statistics.median(walls), "cpu": min(cpus),
            "again": min(s["again"] for s in splits), "engine_best": min(engine_walls),
            "engine_median": statistics.median(engine_walls),
            "ratio": statistics.median(engine_walls) / statistics.median(walls)}


def bench(name: str, url: str, jobs: int, epochs: int, analyze: bool = False) -> dict[str, Any]:
    upgrade(url)
    print(f"\n{name}: storing {jobs:,} jobs x {epochs} epochs ({jobs * (1 + epochs):,} rows)", flush=True)
    bulk = bulk_store(url, jobs, epochs)
    print(f"  bulk insert: {bulk['total_s']:.1f} s, {bulk['rows_per_s']:,.0f} rows/s "
          f"(jobs {bulk['jobs_per_s']:,.0f}/s, epochs {bulk['epochs_per_s']:,.0f}/s)", flush=True)
    slice_jobs = max(100, min(5_000, jobs // 20))
    saved = save_results_path(url, slice_jobs, epochs)
    print(f"  insert_jobs + save_rows, {slice_jobs:,} jobs in batches of 100: {saved['total_s']:.1f} s, "
          f"{saved['rows_per_s']:,.0f} rows/s", flush=True)
    dispose_engines()
    return {"bulk": bulk, "save_results": saved, "cli": time_cli(url, analyze)}


def time_cli(url: str, analyze: bool = False) -> dict[str, dict[str, float]]:
    """`klab list`, `show`, `compare`, `status` and `sweeps` on a filled database, each in a fresh process;
    `analyze`: after an ANALYZE, as a database whose autovacuum has gathered its statistics answers them
    (without, as right after a large change: this machine's PostgreSQL runs without autovacuum)."""
    if analyze:
        with writing(url) as conn:
            conn.exec_driver_sql("ANALYZE")
        print("  after ANALYZE", flush=True)
    with reading(url) as reader:
        middle = reader.one("SELECT max(id) / 2 AS middle FROM jobs")["middle"]
        sweep = reader.one("SELECT sweep_id FROM jobs WHERE id = :id", {"id": middle})["sweep_id"]
    dispose_engines()
    commands = {
        "klab --version (startup floor)": ["--version"],
        "klab list --limit 20": ["list", "--limit", "20"],
        "klab list --limit 20 --sort relative_error": ["list", "--limit", "20", "--sort", "relative_error"],
        "klab list --limit 20 --status failed": ["list", "--limit", "20", "--status", "failed"],
        # the reads that no index serves: each reads every job (README, klab list)
        "klab list --limit 20 --sort lr": ["list", "--limit", "20", "--sort", "lr"],
        "klab list --limit 20 --kernel d2l (no such job)": ["list", "--limit", "20", "--kernel", "d2l"],
        "klab list --limit 20 --kernel sobel-x (a quarter of the jobs)": ["list", "--limit", "20", "--kernel",
                                                                         "sobel-x"],
        "klab list --limit 20 --kernel '[[1, -1]]' (a literal, no such job)": ["list", "--limit", "20", "--kernel",
                                                                              "[[1, -1]]"],
        f"klab show {middle}": ["show", str(middle)],
        f"klab compare --sweep {sweep}": ["compare", "--sweep", str(sweep)],
        f"klab status --sweep {sweep}": ["status", "--sweep", str(sweep)],
        "klab sweeps": ["sweeps"],
    }
    timings = {}
    print(f"  load average {os.getloadavg()[0]:.1f}", flush=True)
    driver = "sqlite3" if url.startswith("sqlite") else "psycopg"
    floor = [_process_times([sys.executable, "-c", f"import click, {driver}"]) for _ in range(3)]
    print(f"  python -c 'import click, {driver}' (the floor under every command that reads the database): "
          f"wall best {min(w for w, _ in floor):.2f} s; CPU {min(c for _, c in floor):.2f} s", flush=True)
    for label, args in commands.items():
        t = timings[label] = cli_times(url, args)
        line = (f"  {label}: wall best {t['best']:.2f} s, median {t['median']:.2f} s; CPU {t['cpu']:.2f} s; "
                f"run again in the same process {t['again'] * 1000:.0f} ms")
        if args != ["--version"]:
            line += (f"; through SQLAlchemy's engine best {t['engine_best']:.2f} s, median {t['engine_median']:.2f} s: "
                     f"{t['ratio']:.1f}x slower (median over median)")
        print(line, flush=True)
    return timings


def _pg_database() -> tuple[str, Any, str]:
    name = f"klab_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False), admin, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--keep", action="store_true", help="keep the filled databases and print their URLs")
    parser.add_argument("--time-only", metavar="URL", help="only time the CLI on an already filled database")
    parser.add_argument("--analyze", action="store_true", help="ANALYZE the database before timing the CLI")
    args = parser.parse_args()
    if args.time_only:
        print(f"machine: {os.cpu_count()} CPUs, {_cpu_model()}; timing the CLI on {describe(args.time_only)}")
        time_cli(args.time_only, args.analyze)
        return
    print(f"machine: {os.cpu_count()} CPUs, {_cpu_model()}, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    results = {}
    for backend in args.backends.split(","):
        if backend == "sqlite":
            tmp = tempfile.mkdtemp(prefix="klab_bench_")
            path = Path(tmp) / "bench.db"
            try:
                results["SQLite"] = bench("SQLite", f"sqlite:///{path}", args.jobs, args.epochs, args.analyze)
                print(f"  database file: {path.stat().st_size / 2**20:.0f} MiB")
            finally:
                dispose_engines()
                if args.keep:
                    print(f"  kept: sqlite:///{path}")
                else:
                    shutil.rmtree(tmp)
        elif backend == "postgresql":
            url, admin, name = _pg_database()
            try:
                results["PostgreSQL"] = bench("PostgreSQL", url, args.jobs, args.epochs, args.analyze)
            finally:
                dispose_engines()
                if args.keep:
                    print(f"  kept: {url}")
                else:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        else:
            raise SystemExit(f"unknown backend {backend!r}")
    slow = [f"{b}: {label} {t['best']:.2f} s" for b, r in results.items() for label, t in r["cli"].items()
            if not label.startswith("klab --version") and t["best"] >= 1.0]
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print("\nall commands answered in under a second" if not slow else
          "\nslower than a second (wall, fresh process): " + "; ".join(slow))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
