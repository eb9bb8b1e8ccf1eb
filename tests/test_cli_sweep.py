"""`klab sweep --local` (worker.local: trained here, batched, stored with no broker), sweep files with lists and
ranges, and tags, on SQLite and PostgreSQL. No broker runs here: a local sweep needs none."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from service.db.engine import writing
from service.db.reads import reading, result_of
from service.db.schema import epochs as epochs_table
from service.db.schema import jobs as jobs_table
from service.db.schema import sweeps as sweeps_table
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus

NO_BROKER = "redis://:pw@127.0.0.1:notaport/0"
"""A URL no Redis client reads: a local sweep that asked the broker anything would end in one line naming
KLAB_BROKER_URL, exit code 2 (at a port where nothing listens, a look that tolerates a broker away went unseen)."""


@pytest.fixture
def here(klab_db: str, setenv) -> str:
    setenv(KLAB_BROKER_URL=NO_BROKER)
    return klab_db


def stored_jobs(sweep_id: int) -> list:
    with writing() as conn:
        return conn.execute(select(jobs_table).where(jobs_table.c.sweep_id == sweep_id).order_by(jobs_table.c.id)).all()


def test_a_local_sweep_trains_here_batched_and_each_job_is_what_klab_run_gives(here: str, klab_cli, monkeypatch
                                                                              ) -> None:
    """Jobs of two kernel shapes and of noisy labels (a problem per seed) train in batches, and each stored
    result is bit for bit the one the job gives alone on the CPU."""
    from worker import local
    from worker.engine import run_spec

    batches, train = [], local._train
    monkeypatch.setattr(local, "_train", lambda spec, ids, jobs: batches.append(len(ids)) or train(spec, ids, jobs))
    code, out, err = klab_cli("sweep", "--local", "--input", "edge:6x8", "--kernel", "d2l,edge-v", "--lr", "0.01,0.03",
                              "--seed", "0..2", "--noise", "0,0.1", "--epochs", "6", "--name", "here", "--tag", "t1",
                              "--batch-jobs", "4")
    assert code == 0, err
    assert batches == [4] * 6  # each kernel's 12 jobs in batches of --batch-jobs
    lines = out.splitlines()
    assert lines[0].startswith("sweep 1: 24 jobs, trained here in ") and lines[0].endswith(" s")
    assert lines[1] == "24 job(s): 24 succeeded; 144 of 144 epochs trained"
    assert lines[2] == "compare them with: klab compare --sweep 1"
    rows = stored_jobs(1)
    assert len(rows) == 24 and {r.status for r in rows} == {JobStatus.SUCCEEDED.value}
    assert {r.queue for r in rows} == {None} and all(r.started_at and r.finished_at for r in rows)
    with reading() as reader:
        for row in rows[::5] + rows[-1:]:
            spec = JobSpec.parse(row.spec if isinstance(row.spec, dict) else json.loads(row.spec))
            alone, epochs = run_spec(spec)
            got = result_of(reader, row.id)
            assert got["learned_kernel"] == alone["learned_kernel"], (row.id, spec)
            assert [e["loss"] for e in got["epochs"]] == [e["loss"] for e in epochs]
            assert got["error"]["relative"] == alone["relative_error"]
    with writing() as conn:
        sweep = conn.execute(select(sweeps_table)).one()
    assert (sweep.name, sweep.tags, sweep.size) == ("here", ["t1"], 24)
    assert sweep.params["swept"] == {"kernel": ["d2l", "edge-v"], "lr": [0.01, 0.03], "seed": [0, 1, 2],
                                     "noise": [0, 0.1]}


def test_a_local_sweep_prints_json_and_results_as_a_submitted_one_does(here: str, klab_cli) -> None:
    code, out, err = klab_cli("sweep", "--local", "--seed", "1,2", "--epochs", "3", "--json")
    assert code == 0, err
    made = json.loads(out)
    assert (made["sweep"], made["size"], len(made["ids"])) == (1, 2, 2)
    assert err == ""  # stdout holds the JSON, and nothing else is said
    code, out, err = klab_cli("sweep", "--local", "--seed", "1,2", "--epochs", "3", "--json", "--wait")
    results = json.loads(out)
    assert code == 0 and [r["seed"] for r in results] == [1, 2] and results[0]["sweep_id"] == 2
    assert err.startswith("sweep 2: 2 jobs, trained here in ")


def test_a_sweep_file_sweeps_its_lists_and_ranges(here: str, klab_cli, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("input: edge:6x8\n"
                    "kernel: [[1, -1]]            # a kernel written as nested lists is one kernel\n"
                    "method: [d2l-manual, adam]   # a YAML list sweeps\n"
                    "lr: 0.01:0.1:3               # as on the command line: log-spaced\n"
                    "batch-size: 1:4:3            # not base 60\n"
                    "seed: 0..1\n"
                    "epochs: 4\n")
    code, out, err = klab_cli("sweep", "--local", "-f", str(path), "--epochs", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["size"] == 2 * 3 * 3 * 2
    with writing() as conn:
        params = conn.execute(select(sweeps_table.c.params)).scalar_one()
        epochs = conn.execute(select(func.max(jobs_table.c.epochs_done))).scalar_one()
    assert params["swept"] == {"method": ["d2l-manual", "adam"], "lr": [0.01, 0.0316227766017, 0.1],
                               "batch_size": [1, 2, 4], "seed": [0, 1]}
    assert params["fixed"] == {"input": "edge:6x8", "kernel": "[[1, -1]]", "epochs": 2}  # the flag won
    kernels = tmp_path / "kernels.json"
    kernels.write_text(json.dumps({"kernel": [[[1, -1]], [[1], [-1]], "sobel-x"], "input": "random:5x5",
                                   "method": "lstsq"}))
    code, out, err = klab_cli("sweep", "--local", "-f", str(kernels), "--json")
    assert code == 0, err
    with writing() as conn:
        got = conn.execute(select(jobs_table.c.kernel, jobs_table.c.status).where(jobs_table.c.sweep_id == 2)
                           .order_by(jobs_table.c.id)).all()
    assert got == [("[[1, -1]]", "succeeded"), ("[[1], [-1]]", "succeeded"), ("sobel-x", "succeeded")]
    assert epochs == 2


def test_a_flag_replaces_a_file_value_it_could_not_sweep(here: str, klab_cli, tmp_path: Path) -> None:
    """A list in a field that takes one value is not read when a flag gives that field: `tol: [0.1, 0.2]` with
    --tol 0.1 was refused as a list of tol, where `klab run` takes the flag; without the flag it is refused."""
    path = tmp_path / "sweep.yaml"
    path.write_text("tol: [0.1, 0.2]\nbatch-size: [1, 2]\nseed: [1, 2]\nepochs: 2\n")
    code, out, err = klab_cli("sweep", "--local", "-f", str(path), "--tol", "0.1", "--batch-size", "3", "--json")
    assert code == 0, err
    with writing() as conn:
        params = conn.execute(select(sweeps_table.c.params)).scalar_one()
    assert params["swept"] == {"seed": [1, 2]}
    assert params["fixed"] == {"tol": 0.1, "batch_size": 3, "epochs": 2}
    code, out, err = klab_cli("sweep", "--local", "-f", str(path), "--batch-size", "3")
    assert (code, out) == (2, "") and err == ("klab: error: tol: takes one value, not a list; only input, kernel, "
                                              "method, lr, epochs, batch_size, seed, noise can be swept\n")


def test_sweeps_tells_values_far_apart_without_counting_between_them(here: str, klab_cli) -> None:
    """`klab sweeps` checked whether whole numbers were consecutive by building their range: seeds 1 and
    9007199254740993 ended in a MemoryError's traceback."""
    code, _, err = klab_cli("sweep", "--local", "--seed", "1,9007199254740993", "--epochs", "1", "--method", "lstsq")
    assert code == 0, err
    code, out, err = klab_cli("sweeps")
    assert code == 0 and out.splitlines()[1].endswith("seed 1,9007199254740993"), (out, err)


def test_a_sweep_file_without_a_true_kernel(here: str, klab_cli, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((6, 8))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x[:, :-1] - x[:, 1:])
    path = tmp_path / "sweep.yaml"
    path.write_text(f"input: npy:{tmp_path / 'x.npy'}\nlabels: npy:{tmp_path / 'y.npy'}\nkernel: null\n"
                    "method: d2l-manual\nlr: [0.01, 0.02]\nepochs: 30\n")
    code, out, err = klab_cli("sweep", "--local", "-f", str(path), "--json", "--wait")
    assert code == 0, err
    results = json.loads(out)
    assert [r["true_kernel"] for r in results] == [None, None]
    np.testing.assert_allclose(results[1]["learned_kernel"], [[1.0, -1.0]], atol=0.05)


@pytest.mark.parametrize("kernels", ["none,random:2x3", "random:2x3,none"])
def test_labels_with_a_true_kernel_and_without_one_in_one_sweep_are_each_their_twin(here: str, klab_cli,
                                                                                   tmp_path: Path, kernels) -> None:
    """Jobs given labels, some with a true kernel and some with none, trained in one batch: a kernel-less job first
    cost the others their errors and gaps ("no true kernel to compare with"), and one last failed every job of the
    batch (ValueError: all input arrays must have the same shape)."""
    from worker.engine import run_spec

    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((6, 8)))
    np.save(tmp_path / "y.npy", rng.standard_normal((5, 6)))
    code, out, err = klab_cli("sweep", "--local", "--input", f"npy:{tmp_path / 'x.npy'}", "--labels",
                              f"npy:{tmp_path / 'y.npy'}", "--kernel", kernels, "--method", "d2l-manual,adam",
                              "--lr", "0.005", "--epochs", "4", "--seed", "0..1", "--json", "--wait")
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == 8 and {r["status"] for r in results} == {JobStatus.SUCCEEDED.value}
    for got in results:
        alone, epochs = run_spec(JobSpec.parse(got["spec"]))
        assert (got["true_kernel"] is None) == (got["spec"]["kernel"] is None), got["spec"]
        assert got["true_kernel"] == alone["true_kernel"] and got["learned_kernel"] == alone["learned_kernel"]
        assert [(e["loss"], e["kernel_error"]) for e in got["epochs"]] == [(e["loss"], e["kernel_error"])
                                                                          for e in epochs]
        assert (got["error"] or {}).get("relative") == alone["relative_error"]
        assert got["gap"]["noise"] == alone["gap_noise"] and got["explanation"] == alone["explanation"]


@pytest.mark.parametrize("swept,job,loss,relative", [
    (("--method", "d2l-manual,d2l-sgd"), ("method", "d2l-sgd"), "0.3706", "1.111"),  # cuts the book's image in rows
    (("--noise", "0.5", "--seed", "1,2"), ("seed", 2), "9.504", "0.2971"),  # each seed draws noise of its own
])
def test_jobs_whose_data_differ_only_by_method_or_noises_seed_are_each_their_twin(here: str, klab_cli, swept, job,
                                                                                  loss, relative) -> None:
    """Jobs of one sweep share one problem only where it is the same: the d2l-sgd job shared d2l-manual's uncut
    image (loss 0.4241, where its twin `klab run --method d2l-sgd --epochs 3` ends at 0.3706), and seed 2 shared
    seed 1's noise (loss 8.2, where its twin ends at 9.504)."""
    from worker.engine import run_spec

    code, out, err = klab_cli("sweep", "--local", "--epochs", "3", *swept, "--json", "--wait")
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == 2 and {r["status"] for r in results} == {JobStatus.SUCCEEDED.value}
    for got in results:
        alone, epochs = run_spec(JobSpec.parse(got["spec"]))
        assert [e["loss"] for e in got["epochs"]] == [e["loss"] for e in epochs], got["spec"]
        assert got["learned_kernel"] == alone["learned_kernel"] and got["error"]["relative"] == alone["relative_error"]
    (second,) = [r for r in results if r["spec"][job[0]] == job[1]]
    assert second["id"] == results[1]["id"]  # trained after the job it shared its problem with
    assert f"{second['epochs'][-1]['loss']:.4g}" == loss  # the twin's, as klab run prints them
    assert f"{second['error']['relative']:.4g}" == relative


def test_a_job_stopped_by_the_time_limit_is_said_so_not_cancelled(here: str, klab_cli, setenv) -> None:
    setenv(KLAB_MAX_JOB_SECONDS="1")
    code, out, err = klab_cli("sweep", "--local", "--seed", "0,1", "--epochs", "100000", "--json")
    assert code == 0, err
    (job, _) = stored_jobs(json.loads(out)["sweep"])
    assert job.status == "failed" and job.error_message == "time limit of 1 s exceeded (KLAB_MAX_JOB_SECONDS)"
    assert job.explanation.startswith("stopped at the time limit (KLAB_MAX_JOB_SECONDS) before its last epoch; "
                                      "up to then, ")  # it began "cancelled before its last epoch"


def test_a_local_sweep_stopped_by_an_error_says_what_it_trained_and_keeps(here: str, klab_cli, monkeypatch) -> None:
    """Out of memory (or the database lost) past the first batch ended `klab sweep --local` in its line alone, where a
    Ctrl-C says how many jobs were trained and that the sweep keeps them. Made to happen, deterministically, as the
    second batch trains."""
    import worker.local as local

    train, calls = local._train, []

    def train_then_fail(spec, ids, batch) -> None:
        calls.append(ids)
        if len(calls) == 2:
            raise MemoryError("Unable to allocate 1.07 GiB for an array")
        train(spec, ids, batch)

    monkeypatch.setattr(local, "_train", train_then_fail)
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..3", "--epochs", "1", "--batch-jobs", "1")
    assert (code, out) == (1, "") and len(err.splitlines()) == 1, err
    assert err == ("klab: error: out of memory: Unable to allocate 1.07 GiB for an array (KLAB_MAX_JOB_MEMORY may let "
                   "through jobs larger than this machine holds); 1 of 4 jobs trained; sweep 1 keeps them\n"), err
    stopped = "klab sweep --local stopped at MemoryError: Unable to allocate 1.07 GiB for an array"
    assert [(r.status, r.error_message) for r in stored_jobs(1)] == [("succeeded", None)] + [("failed", stopped)] * 3


def test_a_local_sweep_stopped_by_a_database_error_stores_the_drivers_words(here: str, klab_cli, monkeypatch) -> None:
    """The jobs a database error stopped end failed with the driver's error, as the command's line says it, not
    SQLAlchemy's wrapping of it (`OperationalError: (sqlite3.OperationalError) database or disk is full`)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    import worker.local as local

    train, calls = local._train, []

    def train_then_fail(spec, ids, batch) -> None:
        calls.append(ids)
        if len(calls) == 2:
            raise OperationalError("INSERT INTO epochs", None, sqlite3.OperationalError("database or disk is full"))
        train(spec, ids, batch)

    monkeypatch.setattr(local, "_train", train_then_fail)
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..3", "--epochs", "1", "--batch-jobs", "1")
    assert (code, out) == (3, "") and err.endswith(": database or disk is full; 1 of 4 jobs trained; sweep 1 keeps "
                                                   "them\n"), err
    stopped = "klab sweep --local stopped at OperationalError: database or disk is full"
    assert [(r.status, r.error_message) for r in stored_jobs(1)] == [("succeeded", None)] + [("failed", stopped)] * 3


@pytest.mark.parametrize("refused", ["epochs", "epochs and jobs"])
def test_a_local_sweep_on_a_full_disk_fails_the_jobs_it_could_not_save_and_names_its_sweep(pg_url, tmp_path, setenv,
                                                                                         klab_cli, refused) -> None:
    """The database's disk fills as `klab sweep --local` saves its first batch: the jobs it had stored ended
    cancelled, as if someone had asked, with no word of why, and its line named no sweep (0 jobs trained). They end
    failed, saying why, as a worker's do, and the line names the sweep that keeps them. A PostgreSQL too full to
    mark them failed (new heap pages for 4,096 rows) leaves them running, which no worker ends: the line says so,
    and how to end them, where it said they had failed. PostgreSQL's own refusal, SQLSTATE 53100, raised by a
    trigger where a full disk raises it."""
    from service.db.engine import dispose_engines, upgrade

    upgrade(pg_url)
    setenv(KLAB_DATABASE_URL=pg_url, KLAB_HOME=str(tmp_path / "home"), KLAB_BROKER_URL=NO_BROKER, NO_COLOR=None)
    with writing() as conn:
        conn.exec_driver_sql("""CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$""")
        conn.exec_driver_sql("CREATE TRIGGER full_disk BEFORE INSERT ON epochs FOR EACH ROW "
                             "EXECUTE FUNCTION full_disk()")
        if refused == "epochs and jobs":
            conn.exec_driver_sql("CREATE TRIGGER full_disk BEFORE UPDATE ON jobs FOR EACH ROW "
                                 "WHEN (NEW.status <> 'running') EXECUTE FUNCTION full_disk()")
    dispose_engines()
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..3", "--epochs", "2", "--batch-jobs", "2")
    assert (code, out) == (3, ""), err
    kept = ("keeps the jobs stored so far, failed" if refused == "epochs" else
            "keeps the jobs stored so far; 4 of its jobs are left running, which no worker will end: klab delete "
            "--sweep 1")
    assert err.startswith("klab: error: database error on the postgresql database ") and err.endswith(
        f": could not extend file: No space left on device; 0 of 4 jobs trained; sweep 1 {kept}\n"), err
    stopped = "klab sweep --local stopped at DiskFull: could not extend file: No space left on device"
    ended = [("failed", stopped, 0)] if refused == "epochs" else [("running", None, 0)]
    assert [(r.status, r.error_message, r.epochs_done) for r in stored_jobs(1)] == ended * 4


def after_the_first_batch(monkeypatch, act) -> list[list[int]]:
    """Each batch's ids as `klab sweep --local` trains them (it looking before every batch, as its batches' Progress
    does once a FLUSH_SECONDS), `act(conn)` done right after the first is saved, in a transaction of its own: what a
    command from another shell does."""
    import worker.local as local
    from service import defaults

    monkeypatch.setattr(defaults, "FLUSH_SECONDS", 0.0)
    train, calls = local._train, []

    def train_then_act(spec, ids, batch) -> None:
        calls.append(ids)
        train(spec, ids, batch)
        if len(calls) == 1:
            with writing() as conn:
                act(conn)

    monkeypatch.setattr(local, "_train", train_then_act)
    return calls


def test_a_local_sweep_cancelled_meanwhile_trains_no_batch_after(here: str, klab_cli, monkeypatch) -> None:
    """`klab cancel --sweep` from another shell while `klab sweep --local` trains its first batch: the batches
    after it train nothing and their jobs end cancelled, having trained none, as a worker's claim leaves them.
    Each batch trained a second before it looked (a job of one epoch, `succeeded`), and 4,096 one-job batches took
    over an hour to stop. The cancel is made, deterministically, right after the first batch is saved, and the
    sweep looks before every batch (it looks once a FLUSH_SECONDS, as its batches' Progress does)."""
    from service.db import writes
    from service.jobs.selection import Selection

    calls = after_the_first_batch(monkeypatch, lambda conn: writes.cancel(conn, Selection(sweep=1)))  # cancel --sweep 1
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..3", "--epochs", "1", "--batch-jobs", "1")
    assert (code, len(calls)) == (0, 1), (err, calls)
    assert [(r.status, r.epochs_done) for r in stored_jobs(1)] == [("succeeded", 1)] + [("cancelled", 0)] * 3
    with writing() as conn:
        assert conn.execute(select(func.count()).select_from(epochs_table)).scalar_one() == 1


def test_a_local_sweep_trains_no_job_deleted_meanwhile(here: str, klab_cli, monkeypatch) -> None:
    """`klab delete 2,3,4` from another shell while `klab sweep --local` trains job 1: the batches of the jobs deleted
    train nothing (each trained its second before its Progress looked, and stored nothing of it)."""
    from service.db import writes
    from service.jobs.selection import Selection

    calls = after_the_first_batch(monkeypatch, lambda conn: writes.delete_jobs(conn, Selection(ids=(2, 3, 4))))
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..3", "--epochs", "1", "--batch-jobs", "1")
    assert (code, calls) == (0, [[1]]), (err, calls)
    assert [(r.id, r.status) for r in stored_jobs(1)] == [(1, "succeeded")]


def test_a_local_sweep_whose_database_drops_as_a_batch_trains_stops_with_the_databases_error(
        here: str, klab_cli, monkeypatch) -> None:
    """The database out of reach at a batch's look while it trains (its Progress): the sweep stops with the
    database's error, exit code 3, as at any other write, not going on with the batch's jobs failed as if the
    engine had."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    import worker.progress
    from service import defaults

    monkeypatch.setattr(defaults, "FLUSH_SECONDS", 0.0)

    def look(self):
        raise OperationalError("SELECT", None, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(worker.progress.Progress, "_look", look)
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..3", "--epochs", "3", "--batch-jobs", "1")
    assert (code, out) == (3, "") and err.endswith(": database is locked; 0 of 4 jobs trained; sweep 1 keeps the jobs "
                                                   "stored so far, failed\n"), err
    stopped = "klab sweep --local stopped at OperationalError: database is locked"
    assert [(r.status, r.error_message) for r in stored_jobs(1)] == [("failed", stopped)] * 4


def test_a_local_sweep_stopped_where_the_database_cannot_say_what_it_keeps_counts_what_it_trained(
        here: str, klab_cli, monkeypatch) -> None:
    """Stopped by a database error, with the database unable to say the sweep's statuses after it: the line says
    what the count of jobs trained tells, that the sweep keeps them."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    import service.db.reads
    import worker.local as local

    train, calls = local._train, []
    gone = OperationalError("SELECT", None, sqlite3.OperationalError("disk I/O error"))

    def train_then_fail(spec, ids, batch) -> None:
        calls.append(ids)
        if len(calls) == 2:
            monkeypatch.setattr(service.db.reads, "progress", lambda *a, **k: (_ for _ in ()).throw(gone))
            raise gone
        train(spec, ids, batch)

    monkeypatch.setattr(local, "_train", train_then_fail)
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..3", "--epochs", "1", "--batch-jobs", "1")
    assert (code, out) == (3, "") and err.endswith(": disk I/O error; 1 of 4 jobs trained; sweep 1 keeps them\n"), err


def test_a_local_sweep_deleted_as_its_last_batch_trains_says_so_in_one_line(here: str, klab_cli, monkeypatch) -> None:
    """`klab delete --sweep` from another shell as `klab sweep --local` trains its one chunk: the look at its results
    found no sweep and said `sweep: no sweep 1`, exit code 2, a user's mistake the user never made. It was deleted
    meanwhile: one line saying so, exit code 1, as for any wait."""
    import worker.local as local
    from service.db import writes
    from service.jobs.selection import Selection

    train = local._train

    def train_then_delete(spec, ids, batch) -> None:
        train(spec, ids, batch)
        with writing() as conn:  # what klab delete --sweep 1 does, in its own transaction
            writes.delete_jobs(conn, Selection(sweep=1))

    monkeypatch.setattr(local, "_train", train_then_delete)
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..1", "--epochs", "1")
    assert (code, err) == (1, "klab: error: no sweep 1: deleted while waiting for it (klab delete)\n"), (out, err)


def test_a_sweep_deleted_after_the_waits_last_look_says_so_in_one_line(here: str, klab_cli, monkeypatch) -> None:
    """Deleted between the wait's last look and the read of the results it prints (--json): `sweep: no sweep 1`,
    exit code 2, as the wait's looks once said; now as they say."""
    import service.cli.submit as submit
    from service.db import writes
    from service.jobs.selection import Selection

    real_wait = submit.wait

    def wait_then_delete(*args, **kwargs):
        ended = real_wait(*args, **kwargs)
        with writing() as conn:  # what klab delete --sweep 1 does, in its own transaction
            writes.delete_jobs(conn, Selection(sweep=1))
        return ended

    monkeypatch.setattr(submit, "wait", wait_then_delete)
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..1", "--epochs", "1", "--json", "--wait")
    assert (code, out) == (1, "") and err.splitlines()[-1] == ("klab: error: no sweep 1: deleted while waiting for it "
                                                               "(klab delete)"), (out, err)


def test_a_local_sweep_deleted_meanwhile_stops_with_one_line(here: str, klab_cli, monkeypatch) -> None:
    """`klab delete --sweep` from another shell while `klab sweep --local` trains it: at its next chunk the
    sweep says so in one line, exit code 1, and stores nothing more (where it once ended in a traceback of the
    database's foreign-key error). The delete is made, deterministically, right after the first batch is saved."""
    import worker.local as local
    from service.db import writes
    from service.jobs.selection import Selection
    from service.submit import CHUNK_JOBS

    train, deleted = local._train, []

    def train_then_delete(spec, ids, batch) -> None:
        train(spec, ids, batch)
        if not deleted:
            with writing() as conn:  # what klab delete --sweep S does, in its own transaction
                sweep = conn.execute(select(jobs_table.c.sweep_id).where(jobs_table.c.id == ids[0])).scalar_one()
                deleted.append((sweep, writes.delete_jobs(conn, Selection(sweep=sweep))))

    monkeypatch.setattr(local, "_train", train_then_delete)
    code, out, err = klab_cli("sweep", "--local", "--seed", f"0..{CHUNK_JOBS}", "--epochs", "1")  # two chunks
    (sweep, (n_jobs, _)), = deleted
    assert n_jobs == CHUNK_JOBS
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (f"klab: error: sweep {sweep} was deleted (klab delete) while its jobs were being "
                                    "stored: stopped"), err
    assert "Traceback" not in err
    with writing() as conn:
        assert conn.execute(select(func.count()).select_from(jobs_table)).scalar() == 0
        assert conn.execute(select(func.count()).select_from(sweeps_table)).scalar() == 0


def test_a_sweep_deleted_while_its_jobs_are_sent_stops_with_one_line_and_no_note(klab_db: str, redis_url: str,
                                                                                  setenv, klab_cli, monkeypatch):
    """`klab delete --sweep` from another shell while `klab sweep` stores and sends its chunks: at its next chunk
    it says so in one line, exit code 1, without the note of a sweep stored in part (which it no longer is)."""
    import service.submit as submit
    from service import broker
    from service.db import writes
    from service.errors import Gone
    from service.jobs.selection import Selection
    from service.jobs.sweep import grid

    setenv(KLAB_BROKER_URL=redis_url)
    store, publish, stored = submit.store, broker.publish, []

    def deleted() -> None:  # what klab delete --sweep S does, in its own transaction
        with writing() as conn:
            writes.delete_jobs(conn, Selection(sweep=stored[0].sweep_id))

    def store_and_note(conn, plan, chunk, start, ids=None):
        stored.append(plan)
        if len(stored) == 2 and klab_db.startswith("postgresql"):  # chunks after the first go over connections
            deleted()  # of their own, as the first one's tasks go out: deleted before the second is begun
        return store(conn, plan, chunk, start, ids)

    def publish_then_delete(*args, **kwargs):  # SQLite: one chunk after the other, deleted once the first's are sent
        sent = publish(*args, **kwargs)
        if klab_db.startswith("sqlite"):
            deleted()
        return sent

    monkeypatch.setattr(submit, "store", store_and_note)
    monkeypatch.setattr(broker, "publish", publish_then_delete)
    code, out, err = klab_cli("sweep", "--seed", f"0..{submit.CHUNK_JOBS}")  # two chunks
    assert (code, out, err) == (1, "", f"klab: error: sweep {stored[0].sweep_id} was deleted (klab delete) while its "
                                       "jobs were being stored: stopped\n")
    with writing() as conn:
        assert conn.execute(select(func.count()).select_from(jobs_table)).scalar() == 0
    stored.clear()  # the same from Python (klab.sweep): the error carries no note of jobs kept
    with pytest.raises(Gone) as caught:
        submit.submit(submit.plan_sweep(grid({"seed": f"0..{submit.CHUNK_JOBS}"}), None), submit.CHUNK_JOBS)
    assert getattr(caught.value, "__notes__", []) == [] and len(stored) == 2


def first_cancelled_then_timed_out(seconds: int, klab_cli, setenv, monkeypatch) -> list:
    """Two jobs of a local sweep trained together (a minute's work) under a time limit of `seconds`, the first
    cancelled by `klab cancel`'s own write just before the batch trains: their stored rows."""
    import worker.local as local
    from service.db import writes
    from service.jobs.selection import Selection

    setenv(KLAB_MAX_JOB_SECONDS=str(seconds))
    train = local._train

    def cancel_one_then_train(spec, ids, batch) -> None:
        with writing() as conn:
            assert writes.cancel(conn, Selection((ids[0],))) == (0, 1)
        train(spec, ids, batch)

    monkeypatch.setattr(local, "_train", cancel_one_then_train)
    code, out, err = klab_cli("sweep", "--local", "--input", "random:96x96", "--kernel", "random:5x5", "--seed", "0,1",
                              "--method", "adam", "--lr", "0.01", "--epochs", "100000", "--json")
    assert code == 0, err
    return stored_jobs(json.loads(out)["sweep"])


def test_a_job_cancelled_before_the_time_limit_stopped_its_batch_ends_cancelled(here: str, klab_cli, setenv,
                                                                               monkeypatch) -> None:
    """Two jobs trained together; `klab cancel` of the first (made just before the batch trains: it stops at the
    first check, about a second in), then the time limit stops the second at 4 s. The first ends cancelled, as
    asked, where it once ended failed with the second, `time limit of 4 s exceeded`, having stopped seconds before
    it."""
    asked, late = first_cancelled_then_timed_out(4, klab_cli, setenv, monkeypatch)
    assert (asked.status, asked.error_message) == (JobStatus.CANCELLED.value, None)
    assert asked.explanation.startswith("cancelled before its last epoch; up to then, ")
    assert (late.status, late.error_message) == (JobStatus.FAILED.value,
                                                 "time limit of 4 s exceeded (KLAB_MAX_JOB_SECONDS)")
    assert 0 < asked.epochs_done < late.epochs_done < 100_000


def test_a_job_cancelled_in_the_last_second_before_the_time_limit_ends_cancelled(here: str, klab_cli, setenv,
                                                                                 monkeypatch) -> None:
    """The cancel is read about once a second; the time limit, checked first, stopped the batch without reading the
    cancels asked since the last look: a job cancelled within the second before the limit ended failed, `time limit
    exceeded`, though `klab cancel` had said it was asked to stop. A limit of 1 s comes before any look."""
    asked, late = first_cancelled_then_timed_out(1, klab_cli, setenv, monkeypatch)
    assert (asked.status, asked.error_message) == (JobStatus.CANCELLED.value, None)
    assert (late.status, late.error_message) == (JobStatus.FAILED.value,
                                                 "time limit of 1 s exceeded (KLAB_MAX_JOB_SECONDS)")


def test_klab_cancel_stops_a_local_sweeps_running_jobs_as_a_workers(here: str, klab_cli, monkeypatch) -> None:
    """`klab cancel` from another shell while `klab sweep --local` trains: its running jobs stop at the next
    check (about a second), as a worker's do, and end cancelled with their kernel so far (where `cancel` once
    said it asked them to stop, and they trained to their last epoch). The cancel is made, deterministically,
    just before the batch trains."""
    import worker.local as local
    from service.db import writes
    from service.jobs.selection import Selection

    train = local._train

    def cancel_then_train(spec, ids, batch) -> None:
        with writing() as conn:  # what klab cancel does, in its own transaction
            assert writes.cancel(conn, Selection(tuple(ids))) == (0, len(ids))  # none waiting; all asked to stop
        train(spec, ids, batch)

    monkeypatch.setattr(local, "_train", cancel_then_train)
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..1", "--epochs", "100000", "--json")
    assert code == 0, err
    rows = stored_jobs(json.loads(out)["sweep"])
    assert [r.status for r in rows] == [JobStatus.CANCELLED.value] * 2
    assert all(0 < r.epochs_done < 100000 and r.cancel_requested for r in rows), [r.epochs_done for r in rows]
    assert all(r.explanation.startswith("cancelled before its last epoch; up to then, ") for r in rows)


def test_an_interrupted_local_sweep_leaves_no_job_running(here: str) -> None:
    """Ctrl-C between two batches: the batches saved keep their results, the rest of what was stored ends
    cancelled (no worker would ever take back a job running here)."""
    from service.jobs.sweep import grid
    from service.submit import plan_sweep
    from worker.local import train_plan

    plan = plan_sweep(grid({"seed": "0..9", "epochs": "2"}), None, "stopped")

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_plan(plan, 4, stop)
    rows = stored_jobs(plan.sweep_id)
    assert [r.status for r in rows] == [JobStatus.SUCCEEDED.value] * 4 + [JobStatus.CANCELLED.value] * 6
    assert all(r.finished_at is not None for r in rows)
    assert [bool(r.cancel_requested) for r in rows] == [False] * 4 + [True] * 6  # the user asked: its mark


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_before_any_job_of_a_local_sweep_trained_says_what_it_keeps(tmp_path: Path, sig: str) -> None:
    """`klab sweep --local` stores its first chunk (running), then trains it; Ctrl-C ends those cancelled. With none
    trained it said `0 of 10 jobs trained; sweep 1 keeps them`, as if it kept none. `kill` (SIGTERM) and a closed
    terminal (SIGHUP) ended the process where it stood, its jobs left running for good: no reaper takes back a job
    whose lease no worker holds."""
    import signal
    import sqlite3
    import subprocess

    from harness import clean_env, klab_path, wait_until

    env = clean_env(tmp_path / "home")
    proc = subprocess.Popen([klab_path(), "sweep", "--local", "--epochs", "100000", "--lr", "0.001", "--seed", "0..9"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "home" / "klab.db"

    def running() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(db) as conn:
            try:
                return conn.execute("SELECT count(*) FROM jobs WHERE status = 'running'").fetchone()[0]
            except sqlite3.OperationalError:  # not made yet
                return 0

    try:
        wait_until(lambda: running() == 10, 60, "the sweep's jobs stored")
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    said = "klab: stopped: 0 of 10 jobs trained; sweep 1 keeps the jobs stored so far, cancelled"
    assert err.strip().splitlines()[-1] == said, err
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall() == [("cancelled", 10)]


def test_a_local_sweep_stopped_while_its_first_chunk_is_stored_says_nothing_was(here: str, klab_cli,
                                                                                monkeypatch) -> None:
    """A Ctrl-C (or kill) inside the first chunk's transaction rolls the sweep back with it: the line named sweep 1,
    which did not exist (and which the next sweep would be)."""
    import worker.local

    real = worker.local.store

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the sweep and its first jobs written, not committed
        raise KeyboardInterrupt

    monkeypatch.setattr(worker.local, "store", interrupted)
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..9", "--epochs", "1")
    assert (code, out) == (130, "") and err.strip() == "klab: stopped: 0 of 10 jobs trained; nothing was stored", err
    monkeypatch.undo()
    assert klab_cli("sweeps") == (0, "", "no sweeps\n")


def test_a_submission_stopped_before_its_first_chunk_was_stored_says_nothing_was(klab_db: str, klab_cli, setenv,
                                                                                 redis_url, monkeypatch) -> None:
    """Ctrl-C inside the first chunk's transaction, which it rolls back: no note of jobs stored (`at least 0 of the 3
    jobs were stored`), nor of a sweep to delete that does not exist."""
    import service.submit

    setenv(KLAB_BROKER_URL=redis_url)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(service.submit, "store", interrupted)
    for args in (("sweep", "--seed", "0..2"), ("submit", "--seed", "1")):
        code, out, err = klab_cli(*args)
        assert (code, out, err.strip()) == (130, "", "klab: error: aborted"), args


def test_what_a_submission_stored_in_part_says_and_where_its_jobs_go(klab_db: str, klab_cli, setenv, redis_url,
                                                                    tmp_path: Path) -> None:
    """The count of a submission stored in part, in its order; a job of device auto sent to the cpu queue as asked;
    a file of a cpu job then a cuda job warns of both queues, no worker serving either."""
    from types import SimpleNamespace

    from service.submit import stored_in_part

    assert stored_in_part(SimpleNamespace(size=10_000, sweep_id=None), 4096) == (
        "at least 4,096 of the 10,000 jobs were stored, which run (klab list --status queued)")
    setenv(KLAB_BROKER_URL=redis_url)
    code, out, err = klab_cli("submit", "--device", "auto", "--queue", "cpu", "--epochs", "1")
    assert code == 0, err
    (job,) = map(int, out.split())
    with writing() as conn:
        assert conn.execute(select(jobs_table.c.queue).where(jobs_table.c.id == job)).scalar_one() == "cpu"
    two = tmp_path / "two.jsonl"
    two.write_text('{"seed": 1}\n{"device": "cuda"}\n')
    code, out, err = klab_cli("submit", "-f", str(two))
    assert code == 0 and "consumes queue cpu;" in err and "consumes queue gpu;" in err, err
