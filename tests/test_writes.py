"""Writes on SQLite and PostgreSQL: jobs, results with their epochs in bulk, datasets, status changes held to
their rules, deletes, and the README's SQL on what was written."""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import numpy as np
import pytest
from conftest import ROOT, fake_result
from sqlalchemy import func, select, text, update
from sqlalchemy.pool import NullPool

from service.db import datasets, reads, writes
from service.db.connect import Reader
from service.db.engine import upgrade, writing
from service.db.reads import reading
from service.db.schema import datasets as datasets_table
from service.db.schema import epochs, jobs, sweeps
from service.errors import BadInput
from service.jobs import status
from service.jobs.columns import Columns, json_texts
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus
from service.jobs.stored import PER_JOB, alike

SPEC = JobSpec.parse({"input": "random:8x8", "kernel": "random:3x3", "epochs": 6})


def new(conn, start: JobStatus = JobStatus.RUNNING, **kw) -> int:
    (job_id,) = writes.insert_jobs(conn, [writes.new_job(SPEC, start=start, **kw)])
    return job_id


def job(conn, job_id: int):
    return conn.execute(select(jobs).where(jobs.c.id == job_id)).one()


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    ends = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < ends, f"not within {timeout} s"
        time.sleep(0.02)


def claimed(conn, ids, host, task, attempt):
    return [r.id for r in writes.claim(conn, ids, host, task, attempt, lease=60)]


def eps(first: int, last: int, loss: float) -> list[dict]:
    """Epochs first..last as a worker streams them, each with this loss."""
    return [{"epoch": e, "loss": loss, "mse": loss, "kernel_error": None} for e in range(first, last + 1)]


def test_a_claim_is_one_statement_that_starts_waiting_jobs_and_ends_cancelled_ones(klab_db: str) -> None:
    with writing() as conn:
        go, stop, done = (new(conn, JobStatus.CREATED) for _ in range(3))
        conn.execute(update(jobs).where(jobs.c.id == stop).values(cancel_requested=True))
        rows = writes.claim(conn, [go, stop, done + 1000], "w", "t", 0, lease=60)
        assert [(r.id, r.seed, r.attempts) for r in rows] == [(go, 0, 1)]
        assert (job(conn, go).status, job(conn, go).attempts) == ("running", 1)
        assert (job(conn, stop).status, job(conn, stop).attempts) == ("cancelled", 0)
        assert job(conn, stop).finished_at is not None and job(conn, stop).started_at is None


def test_a_dead_workers_job_asked_to_stop_ends_cancelled_not_queued_again(klab_db: str) -> None:
    """It went back to queued, counted so by `klab status`, and waited for a worker to reach its message."""
    with writing() as conn:
        stop, go, spent = (new(conn, JobStatus.CREATED) for _ in range(3))
        assert claimed(conn, [stop, go, spent], "w1", "task-1", 0) == [stop, go, spent]
        assert writes.reap(conn, lease=60, max_attempts=5) == []  # their leases fresh: none taken back
        assert writes.cancel(conn, Selection.of([stop, spent], None, "id")) == (0, 2)  # asked, running
        conn.execute(update(jobs).where(jobs.c.id == spent).values(attempts=5))
        worn = new(conn, JobStatus.CREATED)  # dead as often as a job may be: failed, not sent a sixth time
        assert claimed(conn, [worn], "w1", "task-2", 0) == [worn]
        conn.execute(update(jobs).where(jobs.c.id == worn).values(attempts=5))
        conn.execute(update(jobs).values(heartbeat_at=text("'2000-01-01'")))
        assert writes.reap(conn, lease=60, max_attempts=5) == [(go, None)]
        assert [(job(conn, i).status, job(conn, i).finished_at is not None) for i in (stop, go, spent, worn)] == [
            ("cancelled", True), ("queued", False), ("cancelled", True), ("failed", True)]


def test_a_lease_runs_out_after_its_seconds_and_only_a_claims_own_heartbeat_renews_it(klab_db: str) -> None:
    with writing() as conn:
        live, lapsed, retaken = (new(conn, JobStatus.CREATED) for _ in range(3))
        assert claimed(conn, [live, lapsed, retaken], "w1", "task-1", 0) == [live, lapsed, retaken]
        now = writes.utcnow()
        beats = {live: now - timedelta(seconds=30), lapsed: now - timedelta(seconds=90),
                 retaken: now - timedelta(seconds=30)}
        for i, beat in beats.items():
            conn.execute(update(jobs).where(jobs.c.id == i).values(heartbeat_at=beat))
        conn.execute(update(jobs).where(jobs.c.id == retaken).values(attempts=2))  # claimed again since
        before = {i: job(conn, i).heartbeat_at for i in beats}  # as the database gives them back
        writes.heartbeat(conn, [live, retaken], [1, 1])  # the first claim's: renews its own job, not the other's
        assert job(conn, live).heartbeat_at > before[live] and job(conn, retaken).heartbeat_at == before[retaken]
        assert writes.reap(conn, lease=60, max_attempts=5) == [(lapsed, None)]
        assert [job(conn, i).status for i in (live, lapsed, retaken)] == ["running", "queued", "running"]


def test_a_claim_tells_alike_specs_apart_from_their_text_as_parsing_would(klab_db: str) -> None:
    def spec(**values) -> dict:
        return JobSpec.parse({"input": "edge:6x8", "kernel": "d2l", **values}).to_json()

    def by_parsing(texts: list[str]) -> tuple[list[str], list[float]]:
        parsed = [json.loads(t) for t in texts]
        return [json.dumps({k: v for k, v in p.items() if k not in PER_JOB}, sort_keys=True)
                for p in parsed], [p["tol"] for p in parsed]

    tricky = 'npy:/data/, "seed": 5, "lr": 1, "tol": 2}.npy'  # what the cut looks for, inside a string
    specs = [spec(seed=s, lr=lr, tol=tol) for s in (0, 7, 2**40) for lr in (0.03, 1e-05) for tol in (1e-4, 0.5)]
    specs += [spec(seed=1, noise=0.1), spec(seed=2, noise=0.1, lr=2.5), spec(seed=1, epochs=11),
              spec(seed=3, method="adam", tol=0.0), spec(input=tricky, kernel="[[1, -1]]", seed=4),
              spec(input=tricky.replace("5", "6"), kernel="[[1, -1]]", seed=4)]
    texts = [json.dumps(values) for values in specs]  # as the CLI stores them (service.submit)
    keys, tols = alike(texts)
    expected_keys, expected_tols = by_parsing(texts)
    assert tols == expected_tols
    groups = {k: [i for i, e in enumerate(keys) if e == k] for k in keys}
    assert sorted(groups.values()) == sorted({k: [i for i, e in enumerate(expected_keys) if e == k]
                                              for k in expected_keys}.values())
    assert len(groups) == 6  # the twelve of the first line alike, the two with noise alike, four others
    assert keys[-1] != keys[-2] and json.dumps(tricky) in keys[-2]  # the string kept whole

    # texts written otherwise (no spaces, a line break, a key twice) are parsed, every one, and group the same
    for odd in (json.dumps(specs[1], separators=(",", ":")), json.dumps(specs[1], indent=1),
                texts[1][:-1] + ', "seed": 1}'):
        keys, tols = alike([*texts[:4], odd])
        assert len(set(keys)) == 1 and set(json.loads(keys[0])).isdisjoint(PER_JOB)  # all five alike
        assert tols == [1e-4, 0.5, 1e-4, 0.5, 0.5]

    # and the worker's claim hands them over that way, from PostgreSQL and SQLite alike
    with writing() as conn:
        ids = [new(conn, JobStatus.QUEUED) for _ in range(2)]
        rows = writes.claim(conn, ids, "w", "t", 0, lease=60)
        assert [json.loads(r.spec) for r in rows] == [SPEC.to_json()] * 2
        keys, tols = alike([r.spec for r in rows])
        assert keys[0] == keys[1] and tols == [SPEC.tol] * 2


def test_stored_result_is_the_engines_plus_identity(klab_db: str) -> None:
    row, epoch_list = fake_result(SPEC, relative=0.25)
    with writing() as conn:
        job_id = new(conn)
        writes.save_rows(conn, [(job_id, row, epoch_list)])
    with reading(klab_db) as reader:
        stored = reads.result_of(reader, job_id)
    assert stored["status"] == "succeeded" and stored["true_kernel"] == row["true_kernel"]
    assert stored["learned_kernel"] == row["learned_kernel"] and stored["explanation"] == row["explanation"]
    assert stored["error"] == {"frobenius": row["frobenius_error"], "relative": 0.25, "max_abs": row["max_abs_error"],
                               "cosine": row["cosine"]}
    assert stored["identifiability"] == {"rank": 9, "params": 9, "identifiable": True}
    assert stored["gap"] == {"optimization": row["gap_optimization"], "noise": 0.0, "identifiability": 0.0}
    assert stored["pace"] == {"stable_lr": 0.5, "convergence_rate": 0.9, "more_epochs": None}
    assert stored["epochs"] == epoch_list
    assert stored["id"] == job_id and stored["spec"] == SPEC.to_json() and stored["finished_at"]


def test_a_result_replaces_the_epochs_written_while_training(klab_db: str) -> None:
    with writing() as conn:
        job_id = new(conn)
        assert writes.streamed(conn, job_id, 0, [{"epoch": e, "loss": 1.0, "mse": 1.0, "kernel_error": 1.0}
                                                 for e in range(1, 7)], 6)
        writes.save_rows(conn, [(job_id, *fake_result(SPEC, relative=0.5, epochs=3))])
        assert [e["epoch"] for e in reads.epochs_of(Reader.of(conn), job_id)] == [1, 2, 3]
        assert job(conn, job_id).epochs_done == 3 and job(conn, job_id).err_relative == 0.5


def test_a_running_jobs_latest_loss_is_in_its_row_as_its_epochs_are_written(klab_db: str) -> None:
    """`klab list` (the jobs table alone) showed a long job 11824/100000 epochs done and no loss, where `klab show`
    (its epochs) showed the latest; the README says its row keeps its latest final_loss and epochs_done."""
    with writing() as conn:
        job_id = new(conn)
        assert writes.streamed(conn, job_id, 0, [{"epoch": e, "loss": 10.0 / e, "mse": 1.0 / e, "kernel_error": 1.0}
                                                 for e in range(1, 5)], 4)
        row = job(conn, job_id)
        assert (row.epochs_done, row.final_loss, row.final_mse) == (4, 2.5, 0.25)
        assert writes.streamed(conn, job_id, 0, [], 4)  # nothing new: the latest kept
        assert writes.streamed(conn, job_id, 0, [{"epoch": 5, "loss": float("inf"), "mse": float("nan"),
                                                  "kernel_error": None}], 5)
        row = job(conn, job_id)
        assert (row.epochs_done, row.final_loss, row.final_mse) == (5, None, None)  # as a result stores them
        listed = reads.list_jobs(Reader.of(conn))
        assert [(r["id"], r["epochs_done"], r["final_loss"]) for r in listed] == [(job_id, 5, None)]
        # each batch adds to those before it (a flush that replaced them left `klab show` the latest batch alone)
        assert [e["epoch"] for e in reads.epochs_of(Reader.of(conn), job_id)] == [1, 2, 3, 4, 5]


def test_a_job_finished_twice_keeps_its_first_result_and_its_epochs(klab_db: str) -> None:
    """Two workers trained it (a lease lapsed): the second result finds it finished and is dropped."""
    with writing() as conn:
        job_id = new(conn)
        writes.save_rows(conn, [(job_id, *fake_result(SPEC, relative=0.25, epochs=6))])
        writes.save_rows(conn, [(job_id, *fake_result(SPEC, relative=0.5, epochs=3))])
        assert [e["epoch"] for e in reads.epochs_of(Reader.of(conn), job_id)] == [1, 2, 3, 4, 5, 6]
        assert job(conn, job_id).epochs_done == 6 and job(conn, job_id).err_relative == 0.25


def test_a_streamed_job_is_written_only_while_its_claim_holds(klab_db: str) -> None:
    """A worker stopped for longer than its lease resumes training a long job that another worker claimed, then
    finished: its epochs and count, written as it trains, land in neither the other's claim nor its result."""
    def stored(conn) -> tuple[int, list[tuple[int, float]]]:
        history = reads.epochs_of(Reader.of(conn), job_id)
        return job(conn, job_id).epochs_done, [(e["epoch"], e["loss"]) for e in history]

    with writing() as conn:
        job_id = new(conn, JobStatus.CREATED)
        assert claimed(conn, [job_id], "w1", "task-1", 0) == [job_id]
        assert writes.streamed(conn, job_id, 1, eps(1, 3, 1.0), 3)
        assert writes.streamed(conn, job_id, 1, [], 3)  # nothing ready: only the count, still this claim's
        assert stored(conn) == (3, [(1, 1.0), (2, 1.0), (3, 1.0)])
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(heartbeat_at=text("'2000-01-01'")))
        assert claimed(conn, [job_id], "w2", "task-2", 0) == [job_id]  # the lease ran out: another claim
        assert not writes.streamed(conn, job_id, 1, eps(4, 5, 1.0), 5)  # the first worker, resumed
        assert stored(conn) == (3, [(1, 1.0), (2, 1.0), (3, 1.0)])
        assert writes.streamed(conn, job_id, 2, eps(1, 2, 2.0), 2)  # the second starts over
        assert stored(conn) == (2, [(1, 2.0), (2, 2.0)])
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(heartbeat_at=text("'2000-01-01'")))
        assert writes.reap(conn, lease=60, max_attempts=5) == [(job_id, None)]  # sent again: no claim's
        assert not writes.streamed(conn, job_id, 2, eps(3, 3, 2.0), 3)
        assert claimed(conn, [job_id], "w3", "task-3", 0) == [job_id]
        assert writes.streamed(conn, job_id, 3, eps(1, 1, 3.0), 1)
        row, epoch_list = fake_result(SPEC, relative=0.5, epochs=6)
        assert writes.save_rows(conn, [(job_id, row, epoch_list)]) == [job_id]
        finished = stored(conn)
        for attempt in (1, 2, 3):  # no worker writes into the finished job
            assert not writes.streamed(conn, job_id, attempt, eps(3, 5, 9.0), 5)
        assert stored(conn) == finished == (6, [(e["epoch"], e["loss"]) for e in epoch_list])


def test_a_claim_that_lapsed_and_was_taken_over_neither_stores_nor_fails_the_job(klab_db: str) -> None:
    """A worker frozen past its lease while it trains a batch: meanwhile another claims one of its jobs and
    trains it alone, writing its epochs as they come. Resumed, the first stores the results of the jobs its claim
    still holds, and neither stores nor fails the one taken over, which keeps its new claim and epochs."""
    with writing() as conn:
        x, y, z = (new(conn, JobStatus.CREATED) for _ in range(3))
        assert claimed(conn, [x, y, z], "w1", "task-1", 0) == [x, y, z]
        conn.execute(update(jobs).values(heartbeat_at=text("'2000-01-01'")))  # every lease ran out
        assert claimed(conn, [x], "w2", "task-2", 0) == [x]  # sent again alone, claimed by another worker
        assert writes.streamed(conn, x, 2, eps(1, 2, 2.0), 2)
        conn.execute(update(jobs).where(jobs.c.id == z).values(cancel_requested=True))  # klab cancel
        assert writes.stopping(conn, [x, y, z], [1, 1, 1]) == ({z}, {x})  # what the first stops at its next look
        conn.execute(update(jobs).where(jobs.c.id == z).values(cancel_requested=False))
        assert writes.stopping(conn, [x, y, z], [1, 1, 1]) == (set(), {x})  # taken over, told so with no cancel
        assert writes.stopping(conn, [x], [2]) == (set(), set())  # the second goes on
        results = Columns.of_rows([fake_result(SPEC, relative=r, epochs=6) for r in (0.5, 0.25, 0.125)])
        assert writes.save_results(conn, [x, y, z], results, fresh=True, attempts=[1, 1, 1]) == [y, z]
        writes.fail(conn, [x, y, z], "the first worker's batch failed", attempts=[1, 1, 1])
        assert [(job(conn, i).status, job(conn, i).attempts, job(conn, i).worker_host) for i in (x, y, z)] == [
            ("running", 2, "w2"), ("succeeded", 1, "w1"), ("succeeded", 1, "w1")]
        assert [e["loss"] for e in reads.epochs_of(Reader.of(conn), x)] == [2.0, 2.0]
        assert job(conn, x).epochs_done == 2 and job(conn, x).err_relative is None
        assert [len(reads.epochs_of(Reader.of(conn), i)) for i in (y, z)] == [6, 6]
        writes.fail(conn, [x], "the second worker's failure", attempts=[2])  # its own claim may end it
        assert (job(conn, x).status, job(conn, x).error_message) == ("failed", "the second worker's failure")


def test_a_store_after_one_that_was_rolled_back_stores(klab_db: str) -> None:
    """A worker's connection stores task after task. The first store it made was rolled back (the database
    refused a result), and with it the table it stages results in (PostgreSQL): the next store makes it again,
    where it once failed for want of it, and with it every store of that connection."""
    with writing() as conn:
        ids = [new(conn) for _ in range(2)]
    results = Columns.of_rows([fake_result(SPEC, relative=r, epochs=3) for r in (0.5, 0.25)])
    with pytest.raises(ZeroDivisionError), writing() as conn:
        assert writes.save_results(conn, ids, results) == ids
        1 / 0  # noqa: B018 - whatever ends the transaction in an error, after the store
    for _ in range(2):
        with writing() as conn:
            assert writes.save_results(conn, ids, results) == ids
            conn.execute(update(jobs).values(status="running"))  # for the next store


def test_a_task_whose_job_ended_meanwhile_stores_the_others_each_with_its_own_epochs(klab_db: str) -> None:
    with writing() as conn:
        a, b, c = (new(conn) for _ in range(3))
        writes.save_rows(conn, [(b, *fake_result(SPEC, relative=0.25, epochs=2))])  # another worker finished it
        task = [(a, 0.5, 3), (b, 0.75, 4), (c, 0.125, 5)]
        assert sorted(writes.save_rows(conn, [(i, *fake_result(SPEC, relative=r, epochs=e)) for i, r, e in task])) \
            == [a, c]
        history = {i: [e["epoch"] for e in reads.epochs_of(Reader.of(conn), i)] for i in (a, b, c)}
        assert history == {a: [1, 2, 3], b: [1, 2], c: [1, 2, 3, 4, 5]}
        assert [job(conn, i).err_relative for i in (a, b, c)] == [0.5, 0.25, 0.125]


@pytest.mark.parametrize("count", [60, 3])  # COPY on PostgreSQL from 50 rows on, one UPDATE a row below
def test_results_in_bulk_and_their_epochs(klab_db: str, count: int) -> None:
    with writing() as conn:
        ids = [new(conn) for _ in range(count)]
        items = []
        for i in ids:
            row, epoch_list = fake_result(SPEC, relative=i / 1000, epochs=5)
            items.append((i, row, epoch_list))
        writes.save_rows(conn, items)
    with writing() as conn:
        assert conn.execute(select(func.count()).select_from(epochs)).scalar() == 5 * count
        assert [job(conn, i).err_relative for i in ids] == [i / 1000 for i in ids]
        assert {job(conn, i).status for i in ids} == {"succeeded"}


def test_a_result_ends_only_a_running_job(klab_db: str) -> None:
    with writing() as conn:
        queued = new(conn, JobStatus.CREATED)
        writes.save_rows(conn, [(queued, *fake_result(SPEC))])
        assert job(conn, queued).status == "created" and job(conn, queued).epochs_done == 0


def test_status_changes_follow_the_rules(klab_db: str) -> None:
    with writing() as conn:
        a = new(conn, JobStatus.CREATED)
        writes.mark_queued(conn, [a])
        assert job(conn, a).status == "queued" and job(conn, a).queued_at is not None
        # finished jobs are never claimed, cancelled or queued again
        assert claimed(conn, [a], "h", "t", 0) == [a]
        writes.mark_queued(conn, [a])  # its publisher, after a worker claimed it: running it stays
        assert job(conn, a).status == "running"
        writes.save_rows(conn, [(a, *fake_result(SPEC))])
        assert claimed(conn, [a], "h", "t2", 0) == []
        assert writes.cancel(conn, Selection((a,))) == (0, 0)
        writes.mark_queued(conn, [a])
        assert job(conn, a).status == "succeeded"
        with pytest.raises(ValueError, match="cannot go from"):
            writes.change_status(conn, JobStatus.SUCCEEDED, jobs.c.id == a, among={JobStatus.CANCELLED})
    with pytest.raises(ValueError, match="cannot start"):
        writes.new_job(SPEC, start=JobStatus.SUCCEEDED)


def test_an_end_other_than_success_sets_its_mark_or_is_refused(klab_db: str) -> None:
    """ix_jobs_ended_badly finds failed, diverged and cancelled jobs by their marks (service.jobs.status.MARKS):
    a change of status to one of those ends that does not set its mark is a bug, refused before any SQL."""
    with writing() as conn:
        b = new(conn, JobStatus.RUNNING)
        for end, mark in status.MARKS.items():
            for values in ({}, {mark: None}, {mark: False}):
                with pytest.raises(ValueError, match=f"ends {end.value} must have its {mark} set"):
                    writes.change_status(conn, end, jobs.c.id == b, **values)
        assert job(conn, b).status == "running"
        writes.change_status(conn, JobStatus.CANCELLED, jobs.c.id == b, cancel_requested=True)
        assert (job(conn, b).status, job(conn, b).cancel_requested) == ("cancelled", True)


def test_a_claim_takes_waiting_jobs_and_lapsed_leases_only(klab_db: str) -> None:
    with writing() as conn:
        waiting, mine, live, lapsed = (new(conn, JobStatus.CREATED) for _ in range(4))
        assert claimed(conn, [mine, live, lapsed], "w1", "task-1", 0) == [mine, live, lapsed]
        now = writes.utcnow()  # the lease is 60 s: a beat 30 s ago holds, 90 s ago lapsed
        conn.execute(update(jobs).where(jobs.c.id == live).values(heartbeat_at=now - timedelta(seconds=30)))
        conn.execute(update(jobs).where(jobs.c.id == lapsed).values(heartbeat_at=now - timedelta(seconds=90)))
        # another task: only what waits or lapsed; the retry of the same task: its own jobs too
        assert claimed(conn, [waiting, mine, live, lapsed], "w2", "task-2", 0) == [waiting, lapsed]
        assert claimed(conn, [mine], "w1", "task-1", 1) == [mine]
        assert claimed(conn, [mine], "w1", "task-1", 1) == []  # the same try again (a copy redelivered): nothing
        assert job(conn, lapsed).attempts == 2 and job(conn, lapsed).worker_host == "w2"


def test_unfinished_values_are_stored_as_null(klab_db: str) -> None:
    row, epoch_list = fake_result(SPEC, relative=0.1, status="diverged")
    epoch_list[-1]["loss"] = None
    row.update(final_loss=None, relative_error=None)
    with writing() as conn:
        job_id = new(conn)
        writes.save_rows(conn, [(job_id, row, epoch_list)])
        got = job(conn, job_id)
        assert got.final_loss is None and got.err_relative is None and got.status == "diverged"


def test_unknown_job_and_sweep_are_bad_input(klab_db: str) -> None:
    with reading(klab_db) as reader:
        with pytest.raises(BadInput, match="^id: no job 42$"):
            reads.result_of(reader, 42)
        with pytest.raises(BadInput, match="^sweep: no sweep 7$"):
            reads.sweep_name(reader, 7)


def _bits(x):
    """A value with its floats as (sign, value) pairs: -0.0 and 0.0 differ; None stays None."""
    if isinstance(x, list):
        return [_bits(v) for v in x]
    return x if x is None else (math.copysign(1.0, x), x)


def test_result_columns_are_stored_exactly_whether_shared_by_every_job_or_not(klab_db: str) -> None:
    """Arrays as the engine hands them over: a value every job shares is sent once, the others one a job
    (binary COPY on PostgreSQL); either way each double comes back bit for bit, -0.0 and 1e-300 included
    (SQLite stores a REAL -0.0 as 0), and what is not finite comes back NULL."""
    n = 4
    cols = Columns.of_rows([fake_result(SPEC, relative=0.1 * (i + 1)) for i in range(n)])
    learned = np.array([[[0.1, -0.0, 1e-300], [np.nan, 2.5e-5, 1 / 3]]] * n) * np.arange(1, n + 1)[:, None, None]
    shared = np.array([[[-0.0, 1.0, np.inf], [5e-324, 1.7976931348623157e308, 0.1]]] * n)
    cols.values.update(learned_kernel=learned, true_kernel=shared, lstsq_kernel=shared.copy(),
                       gap_noise=np.array([0.0, -0.0, 0.0, 0.0]), cosine=np.full(n, 0.5),
                       converged_epoch=np.array([np.nan, 3.0, np.nan, 5.0]), identifiable=np.array([True] * n),
                       stable_lr=np.full(n, np.nan))
    assert cols.stored("true_kernel") == "[[-0.0, 1.0, null], [5e-324, 1.7976931348623157e+308, 0.1]]"
    assert cols.stored("cosine") == 0.5 and cols.stored("stable_lr") is None and cols.stored("identifiable") is True
    assert isinstance(cols.stored("gap_noise"), list) and isinstance(cols.stored("learned_kernel"), list)
    rows = Columns.of_rows([fake_result(SPEC, relative=0.1) for _ in range(3)])  # lists, not arrays
    for name, values in [("gap_noise", [0.0, -0.0, 0.0]), ("converged_epoch", [1, 1.0, 1]),
                         ("identifiable", [True, 1, True])]:
        rows.values[name] = values
        assert _bits(rows.stored(name)) == _bits(values) if name == "gap_noise" else rows.stored(name) == values
        rows.values[name] = [values[0]] * 3
        assert rows.stored(name) == values[0] and type(rows.stored(name)) is type(values[0])
    with writing() as conn:
        ids = [new(conn) for _ in range(n)]
        assert writes.save_results(conn, ids, cols) == ids
    with writing() as conn:
        for k, i in enumerate(ids):
            got = job(conn, i)
            want = (learned[k]).tolist()
            want[1][0] = None
            assert _bits(got.learned_kernel) == _bits(want)
            assert _bits(got.true_kernel) == _bits([[-0.0, 1.0, None], [5e-324, 1.7976931348623157e308, 0.1]])
            assert got.lstsq_kernel == got.true_kernel
            signed = _bits if klab_db.startswith("postgresql") else float  # SQLite keeps a REAL 0.0 as integer 0
            assert signed(got.gap_noise) == signed([0.0, -0.0, 0.0, 0.0][k]) and got.err_cosine == 0.5
            assert got.converged_epoch == [None, 3, None, 5][k] and got.identifiable is True
            assert got.stable_lr is None and got.status == "succeeded"


def test_kernels_as_json_text_are_the_doubles_they_hold() -> None:
    rng = np.random.default_rng(7)
    for shape in [(5,), (6, 1, 2), (3, 3, 3), (2, 2, 3, 4, 4), (0, 2, 2)]:
        a = rng.standard_normal(shape) * 10.0 ** rng.integers(-300, 300, shape)
        a.reshape(-1)[:4] = [-0.0, np.nan, -np.inf, 5e-324][: a.size]
        texts = json_texts(a)
        assert len(texts) == shape[0]
        for k, t in enumerate(texts):
            want = np.where(np.isfinite(a[k]), a[k], np.nan).tolist()
            got = json.loads(t)
            flat_got, flat_want = np.ravel(np.array(got, dtype=float)), np.ravel(np.array(want, dtype=float))
            assert np.shape(got) == a.shape[1:] and np.array_equal(flat_got, flat_want, equal_nan=True)
            assert (np.signbit(flat_got) == np.signbit(flat_want))[np.isfinite(flat_want)].all()
            assert ("null" in t) == bool((~np.isfinite(a[k])).any())


def test_datasets_are_stored_once_per_content(klab_db: str) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    with writing() as conn:
        first = datasets.put_dataset(conn, a)
        assert datasets.put_dataset(conn, a.copy()) == first
        assert datasets.put_dataset(conn, a.T) != first
        assert datasets.put_dataset(conn, a.reshape(4, 3)) != first  # the same bytes, another shape
        assert datasets.put_dataset(conn, a.astype(np.int32)) != first
        assert datasets.put_dataset(conn, np.asfortranarray(a)) == first  # the same content, another memory order
        row = conn.execute(select(datasets_table.c.shape, datasets_table.c.dtype, datasets_table.c.nbytes)
                           .where(datasets_table.c.id == first)).one()
        assert (list(row.shape), row.dtype, row.nbytes) == ([3, 4], "float32", len(datasets.array_bytes(a)))
    with reading(klab_db) as reader:
        back = datasets.dataset(reader, first)
    assert back.dtype == np.float32 and np.array_equal(back, a)


def test_a_bulk_update_past_a_chunk_of_ids_changes_every_job(klab_db: str) -> None:
    """SQLite reads the jobs a bulk update may change 5,000 ids a statement: the 5,001 jobs are all changed."""
    from service.db import bulk

    with writing() as conn:
        ids = writes.insert_columns(conn, {**writes.new_job(SPEC, start=JobStatus.QUEUED, queue="cpu"),
                                           "seed": list(range(5_001))}, 5_001)
        changed = bulk.update_jobs(conn, ids, {"error_message": "x"}, where="status = :s", params={"s": "queued"})
        assert sorted(changed) == ids
        assert conn.execute(select(func.count()).where(jobs.c.error_message == "x")).scalar_one() == 5_001


def test_list_filters_sorts_and_limits(klab_db: str, add_job) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.1, 0.01]}, 2)
        a = add_job(conn, relative=0.3, sweep_id=sweep, lr=0.1)
        b = add_job(conn, relative=0.1, sweep_id=sweep, lr=0.01, method="adam")
        c = add_job(conn, relative=None, status="queued", kernel="sobel-x")
        d = add_job(conn, relative=0.2, status="diverged", lr=3.0)
    with reading(klab_db) as reader:
        ids = lambda **kw: [r["id"] for r in reads.list_jobs(reader, **kw)]  # noqa: E731
        assert ids() == [d, c, b, a]
        assert ids(sort="relative_error") == [b, d, a, c]  # a job without an error comes last
        assert ids(sort="-relative_error") == [a, d, b, c]  # either way
        assert ids(sort="lr", limit=2) == [b, c]
        assert ids(status="diverged") == [d]
        assert ids(sweep=sweep, sort="id") == [a, b]
        assert ids(method="adam") == [b]
        assert ids(kernel="sobel-x") == [c]
        with pytest.raises(BadInput, match="^sort: unknown column 'loss'"):
            reads.list_jobs(reader, sort="loss")
        with pytest.raises(BadInput, match="^status: unknown status 'done'; choose from created, queued, running, "
                                           "succeeded, diverged, failed, cancelled$"):  # every status, in their order
            reads.list_jobs(reader, status="done")
        with pytest.raises(BadInput, match="^sweep: no sweep 99"):
            reads.list_jobs(reader, sweep=99)


def test_delete_removes_jobs_epochs_and_the_sweep(klab_db: str, add_job) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {}, 2)
        add_job(conn, sweep_id=sweep)
        add_job(conn, sweep_id=sweep)
        keep = add_job(conn)
    with writing() as conn:
        assert writes.delete_jobs(conn, Selection(sweep=sweep)) == (2, 20)
    with writing() as conn:
        assert conn.execute(select(jobs.c.id)).scalars().all() == [keep]
        assert conn.execute(select(func.count()).select_from(epochs)).scalar() == 10
        assert conn.execute(select(sweeps.c.id).where(sweeps.c.id == sweep)).first() is None


def _waiting_on_a_lock(url: str) -> Callable[[], bool]:
    from sqlalchemy import create_engine

    watcher = create_engine(url, poolclass=NullPool)

    def waiting() -> bool:
        with watcher.connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND wait_event_type = 'Lock'")).scalar())
    return waiting


def test_delete_counts_the_epochs_a_worker_committed_while_it_waited_for_their_jobs(pg_url: str, add_job) -> None:
    """A worker stores a job's result and epochs in one transaction, holding the job's row; a delete of that job
    meanwhile waits for it. It counted the epochs before it waited (none yet), and the trigger then deleted those the
    worker committed, uncounted: 'deleted 2000 jobs and 0 epochs' of 2,000,000 deleted. It locks the jobs first."""
    from sqlalchemy import create_engine

    upgrade(pg_url)
    with writing(pg_url) as conn:
        job_id = new(conn)
    worker = create_engine(pg_url, poolclass=NullPool)
    with worker.connect() as held, ThreadPoolExecutor(1) as pool:
        held.execute(update(jobs).where(jobs.c.id == job_id).values(epochs_done=3))  # the job's row, held
        held.execute(text("INSERT INTO epochs (job_id, epoch, loss, mse) VALUES (:j, 1, 3, 3), (:j, 2, 2, 2), "
                          "(:j, 3, 1, 1)"), {"j": job_id})
        deleted = pool.submit(lambda: writes_retried(pg_url, Selection(ids=(job_id,))))
        wait_for(_waiting_on_a_lock(pg_url), 30)
        held.commit()
        assert deleted.result(timeout=30) == (1, 3)
    with writing(pg_url) as conn:
        assert conn.execute(select(func.count()).select_from(epochs)).scalar() == 0


def writes_retried(url: str, selection: Selection) -> tuple[int, int]:
    from service.db.engine import retried

    return retried(lambda conn: writes.delete_jobs(conn, selection), url)


def test_a_transaction_that_postgresql_ends_to_break_a_deadlock_is_run_again(pg_url: str) -> None:
    """Two transactions lock two rows in opposite orders; PostgreSQL ends the one that checks first (deadlock_timeout
    1 s; the other's 60 s) with 'deadlock detected'. retried runs it again, and it goes through once the other has
    committed: klab delete or cancel racing a worker's results failed, exit 3, and the worker failed its jobs."""
    from threading import Event

    from sqlalchemy import create_engine

    from service.db.connect import lost_race
    from service.db.engine import RACE_TRIES, retried

    upgrade(pg_url)
    with writing(pg_url) as conn:
        first, second = new(conn), new(conn)
    other = create_engine(pg_url, poolclass=NullPool)
    runs, locked, committed = [], Event(), Event()

    def work(conn) -> int:
        runs.append(len(runs) + 1)
        if len(runs) > 1:  # run again once the other has committed: PostgreSQL gives the row freed by the first run's
            # abort to whichever asks first, and a second run that asked before the other woke deadlocked again (a
            # third run, one suite in five on a loaded machine)
            committed.wait(30)
        conn.execute(update(jobs).where(jobs.c.id == second).values(epochs_done=jobs.c.epochs_done + 1))
        if len(runs) == 1:
            locked.set()
            wait_for(_waiting_on_a_lock(pg_url), 30)  # the other holds `first` and waits for `second`
        conn.execute(update(jobs).where(jobs.c.id == first).values(epochs_done=jobs.c.epochs_done + 1))
        return len(runs)

    with other.connect() as held, ThreadPoolExecutor(1) as pool:
        held.execute(text("SET deadlock_timeout = '60s'"))
        held.execute(update(jobs).where(jobs.c.id == first).values(epochs_done=jobs.c.epochs_done + 10))

        def then_second() -> None:
            locked.wait(30)
            held.execute(update(jobs).where(jobs.c.id == second).values(epochs_done=jobs.c.epochs_done + 10))
            held.commit()
            committed.set()

        done = pool.submit(then_second)
        assert retried(work, pg_url) == 2
        done.result(timeout=30)
    with writing(pg_url) as conn:
        assert dict(conn.execute(select(jobs.c.id, jobs.c.epochs_done).where(jobs.c.id.in_((first, second))))
                    .all()) == {first: 11, second: 11}
    tries: list[int] = []  # counted before the statement, which raises (an append of its result never ran)
    with pytest.raises(Exception) as other_error:  # any error but a lost race: never run again
        retried(lambda conn: (tries.append(1), conn.execute(text("SELECT 1/0"))), pg_url)
    assert not lost_race(other_error.value) and len(tries) == 1

    for code in ("40P01", "40001"):  # a deadlock; a serialization failure (a server set to serializable)
        class Lost(Exception):  # a race lost every time: run RACE_TRIES times, then said
            sqlstate = code

        def always_lost(conn) -> None:
            tries.append(1)
            raise Lost

        tries.clear()
        with pytest.raises(Lost):
            retried(always_lost, pg_url)
        assert len(tries) == RACE_TRIES, code


# --- the README's SQL --------------------------------------------------------------------------

def readme_sql() -> list[str]:
    """The SQL blocks of the README's sql section, which users paste into sqlite3 or psql."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- section: sql -->", 1)[1].split("<!-- /section: sql -->", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_readme_sql_examples_run_on_both_backends(klab_db: str, add_job) -> None:
    statements = [s.strip() for block in readme_sql() for s in block.split(";") if s.strip()]
    assert len(statements) >= 6
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.01, 0.1, 1.0]}, 3)
        assert sweep == 1  # the README's examples name sweep 1 and job 1
        # a tie on each example's order (job 4 as job 2), which the two databases broke each its own way
        for lr, rel in ((0.01, 0.4), (0.1, 0.05), (1.0, 0.2), (0.1, 0.05)):
            add_job(conn, relative=rel, sweep_id=sweep, lr=lr, kernel="sobel-x")
        blind = add_job(conn, relative=0.3, lr=0.5, kernel="laplacian")
        also_blind = add_job(conn, relative=0.3, lr=0.5, kernel="laplacian")
        add_job(conn, relative=None, status="queued", lr=0.7, kernel="laplacian")
        # nearer than the best, but no learning rate's: lstsq reads none, and a failed job's is not its best
        add_job(conn, relative=1e-8, lr=0.03, kernel="sobel-x", method="lstsq")
        add_job(conn, relative=0.01, status="failed", lr=0.9, kernel="laplacian")
        conn.execute(update(jobs).where(jobs.c.id.in_([blind, also_blind])).values(identifiable=False, rank=4))
    with writing() as conn:
        results = {}
        for statement in statements:
            results[statement.splitlines()[0]] = conn.execute(text(statement)).all()
    assert all(results.values()), [k for k, v in results.items() if not v]  # every example finds rows
    best = next(v for k, v in results.items() if "best learning rate" in k)
    assert sorted((r[0], r[1]) for r in best) == [("laplacian", 0.5), ("sobel-x", 0.1)]
    epoch5 = next(v for k, v in results.items() if "epoch 5" in k)
    assert [r[0] for r in epoch5] == [1, 2, 4, 3]  # by lr, ties by id
    assert [r[0] for r in next(v for k, v in results.items() if "best first" in k)] == [2, 4, 3, 1]
    assert [r[0] for r in next(v for k, v in results.items() if "cannot determine" in k)] == [blind, also_blind]
    for statement in statements:  # every ORDER BY ends at a key of its rows (a job's id, one job's epoch; one row
        # a group's): a tie has one order, on either database
        if "ORDER BY" in statement and "GROUP BY" not in statement and "PARTITION" not in statement:
            assert re.search(r"ORDER BY [^;]*\b(id|epoch)\s*$", statement), statement


def test_a_tasks_results_meet_their_jobs_in_one_pass_whatever_the_statistics_say(pg_url: str, monkeypatch) -> None:
    """A task's results reach their jobs through an UPDATE ... FROM the staging table they were copied into,
    planned from the statistics of jobs. Taken when no job was running (most of the time), those price the
    running jobs at one row, and the plan read the whole staging table once per job: 4,096 x 4,096 rows, 3.4 s
    a task instead of 0.12 (on the GPU machine, then here). The staging table's index on id keeps every plan to one
    look per job. Checked on the plan PostgreSQL makes for the statement sent, with the staging table filled."""
    import psycopg

    upgrade(pg_url)
    columns = writes.new_job(SPEC, start=JobStatus.RUNNING)
    with writing(pg_url) as conn:
        done = writes.insert_columns(conn, {**columns, "seed": list(range(64))}, 64)
        writes.save_rows(conn, [(i, *fake_result(SPEC, 0.2)) for i in done])
    with writing(pg_url) as conn:
        conn.exec_driver_sql("ANALYZE jobs")  # statistics of a table where no job runs
    plans: list[str] = []
    real = psycopg.Cursor.execute

    def execute(self, query, params=None, **kw):
        if "FROM _klab_job_values" in str(query):  # the results' UPDATE ... FROM staging
            plans.append("\n".join(r[0] for r in real(self, "EXPLAIN " + str(query), params).fetchall()))
            # and as a nested loop, the plan of the statistics' mistake, which a hash join here may hide: the index
            # keeps even that one look per job (without it, passed unseen: a hash join was chosen)
            for join in ("hashjoin", "mergejoin"):
                real(self, f"SET LOCAL enable_{join} = off")
            plans.append("\n".join(r[0] for r in real(self, "EXPLAIN " + str(query), params).fetchall()))
            for join in ("hashjoin", "mergejoin"):
                real(self, f"RESET enable_{join}")
        return real(self, query, params, **kw)

    monkeypatch.setattr(psycopg.Cursor, "execute", execute)
    results = [fake_result(JobSpec.parse({**SPEC.to_json(), "seed": k}), 0.2) for k in range(4096)]
    for _ in range(2):  # two tasks, as a sweep's first: the second finds more jobs than the statistics say
        with writing(pg_url) as conn:
            task = writes.insert_columns(conn, {**columns, "seed": list(range(4096))}, 4096)
        with writing(pg_url) as conn:  # results that differ from job to job, as a task's do: through staging
            assert sorted(writes.save_rows(conn, [(i, *r) for i, r in zip(task, results)])) == task
    assert len(plans) == 4 and all("Nested Loop" in shown for shown in plans[1::2]), plans
    for shown in plans:
        assert "Join Filter" not in shown, shown  # a nested loop that compares every job with every row


def test_a_claim_writes_its_jobs_new_rows_in_place_where_their_page_has_room(pg_url: str) -> None:
    """No index of jobs reads a column a claim changes (status, started_at, heartbeat_at, ...), so PostgreSQL
    writes a claimed job's new row beside the old one, with no new index entry (a HOT update), wherever the
    page has room (fillfactor 70, migration 0004). The indexes of the jobs not yet ended (0007) and of the
    failed, diverged and cancelled ones (0009) read columns no claim changes for that reason. An index on
    status, built here to show it, leaves no claim HOT (measured: 5% to 48% more claim time)."""
    upgrade(pg_url)

    def claim_counted(seeds: range, task: str) -> tuple[int, int]:
        """(rows updated, of them HOT) claiming new queued jobs, as this backend's statistics count them (the
        counts of its transactions not yet reported: the difference made by the claim)."""
        columns = {**writes.new_job(SPEC, start=JobStatus.QUEUED, queue="cpu"), "seed": list(seeds)}
        with writing(pg_url) as conn:
            ids = writes.insert_columns(conn, columns, len(seeds))
        with writing(pg_url) as conn:
            counts = text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'jobs'")
            before = conn.execute(counts).one()
            assert len(claimed(conn, ids, "h", task, 1)) == len(seeds)
            after = conn.execute(counts).one()
        return after[0] - before[0], after[1] - before[1]

    updated, hot = claim_counted(range(2000), "t1")
    assert updated == 2000 and hot >= 500, (updated, hot)
    with writing(pg_url) as conn:
        conn.execute(text("CREATE INDEX ix_jobs_status_shown ON jobs (status)"))
    assert claim_counted(range(2000, 4000), "t2") == (2000, 0)


def test_a_second_ctrl_c_while_the_chunks_being_stored_finish_stops_the_wait_quietly():
    """Ctrl-C twice during a large submission on PostgreSQL: the second came while the pool's shutdown waited for the
    storing threads, and was a traceback (`Exception ignored in <generator _stored>`). A real SIGINT, in the wait."""
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from service.submit import finish

    assert threading.current_thread() is threading.main_thread()  # where Python raises KeyboardInterrupt
    release = threading.Event()
    pool = ThreadPoolExecutor(2)
    storing = pool.submit(release.wait, 30)  # a chunk's transaction that takes its time
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    pressed = threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    try:
        pressed.start()
        started = time.monotonic()
        finish(pool)  # returns at the Ctrl-C, raising nothing
        assert time.monotonic() - started < 20 and not storing.done()
    finally:
        pressed.cancel()
        signal.signal(signal.SIGINT, previous)
        release.set()
    assert storing.result(10) is True


def test_a_batchs_epochs_are_stored_in_memory_that_does_not_grow_with_their_number(klab_db: str) -> None:
    """Every epoch row made at once took about 370 bytes a row on SQLite (a tuple of Python numbers each) and 250 on
    PostgreSQL, where a job's memory counts EPOCH_BYTES an epoch: 100 jobs of 30,000 epochs peaked at 1.3 GB, three
    times what their batch was counted to take. Measured with tracemalloc, which numpy's arrays report to."""
    import tracemalloc

    from service.db import bulk
    from service.jobs.problem import EPOCH_BYTES

    count, length = 100, 10_000
    with writing() as conn:
        ids = writes.insert_jobs(conn, [writes.new_job(SPEC, start=JobStatus.RUNNING) for _ in range(count)])
    rng = np.random.default_rng(0)
    loss, mse, kernel_error = (rng.random((length, count)) for _ in range(3))
    loss[5, 7] = np.inf  # stored as NULL
    tracemalloc.start()
    try:
        with writing() as conn:
            assert bulk.insert_epochs(conn, ids, [length] * count, loss, mse, kernel_error) == count * length
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < EPOCH_BYTES * count * length, peak
    with writing() as conn:
        rows = conn.execute(select(epochs.c.job_id, epochs.c.epoch, epochs.c.loss, epochs.c.mse)
                            .order_by(epochs.c.job_id, epochs.c.epoch)).all()
    assert len(rows) == count * length
    assert [r.epoch for r in rows[length - 2 : length + 2]] == [length - 1, length, 1, 2]  # each job's own, in order
    assert rows[7 * length + 5].loss is None and rows[7 * length + 5].mse == mse[5, 7]
    got = np.array([r.loss if r.loss is not None else np.inf for r in rows]).reshape(count, length).T
    assert np.array_equal(got, loss)


def test_a_selection_is_said_as_the_commands_take_it_again() -> None:
    """What the hints print after `follow them with klab watch ...` and `klab requeue --queued ...`: ids as the
    commands take them, one argument each (`1,2` is no id)."""
    assert str(Selection.of([3, 5, 3], None)) == "3 5" and str(Selection.of(None, 4)) == "--sweep 4"


def test_each_uploaded_array_goes_by_its_own_column_into_the_job_and_to_its_worker(klab_db: str) -> None:
    """A job's input, labels and kernel uploads each under their own column, as stored and as a claim and a peek (a
    quick task's) give them to the worker that trains it."""
    with writing() as conn:
        up = {k: datasets.put_dataset(conn, np.full((2, 2), n, dtype=np.float32))
              for n, k in enumerate(("input", "labels", "kernel"))}
        assert len(set(up.values())) == 3
        a, b = (new(conn, JobStatus.QUEUED, dataset_ids=up) for _ in range(2))
        own = (up["input"], up["labels"], up["kernel"])
        assert (job(conn, a).input_dataset_id, job(conn, a).labels_dataset_id, job(conn, a).kernel_dataset_id) == own
        (row,) = writes.claim(conn, [a], "w", "t", 0, lease=60)
        (peeked,) = writes.peek(conn, [b])
        for r in (row, peeked):
            assert (r.input_dataset_id, r.labels_dataset_id, r.kernel_dataset_id) == own


def test_what_requeue_takes_a_device_shown_a_sweep_kept_and_a_message_unsent_are_each_their_own(klab_db: str) -> None:
    with writing() as conn:
        running, queued = new(conn, JobStatus.QUEUED), new(conn, JobStatus.QUEUED)
        created = new(conn, JobStatus.CREATED)
        assert claimed(conn, [running], "w", "t", 0) == [running]
        assert writes.waiting(conn, Selection(), True) == [(queued, None), (created, None)]  # never a running job
        assert writes.waiting(conn, Selection(), False) == [(created, None)]
        writes.set_device(conn, [running], "cuda:0")  # a long job's, as it starts on its worker
        assert job(conn, running).device == "cuda:0"
        writes.unsent(conn, [queued])  # the one message the broker did not take
        assert job(conn, queued).status == JobStatus.CREATED.value
        old, new_sweep = (writes.create_sweep(conn, {}, 1) for _ in range(2))
        conn.execute(sweeps.delete().where(sweeps.c.id == old))
        assert writes.sweep_kept(conn, new_sweep) and not writes.sweep_kept(conn, old)


def test_a_claim_leaves_running_and_ended_jobs_asked_to_stop_as_they_are(klab_db: str) -> None:
    """A message delivered again, for a job alive on another worker and asked to stop, or for one that ended after
    the cancel was asked: the claim leaves both as they are (the worker that holds the first stops it)."""
    with writing() as conn:
        alive, ended = new(conn, JobStatus.QUEUED), new(conn, JobStatus.QUEUED)
        assert claimed(conn, [alive, ended], "w1", "task-1", 0) == [alive, ended]
        assert writes.cancel(conn, Selection(ids=(alive, ended))) == (0, 2)  # asked, both running
        row, epoch_list = fake_result(SPEC, 0.1, JobStatus.SUCCEEDED.value)
        assert writes.save_rows(conn, [(ended, row, epoch_list)]) == [ended]
        finished = job(conn, ended).finished_at
        assert claimed(conn, [alive, ended], "w2", "task-2", 0) == []
        assert (job(conn, alive).status, job(conn, alive).finished_at) == (JobStatus.RUNNING.value, None)
        assert (job(conn, ended).status, job(conn, ended).finished_at) == (JobStatus.SUCCEEDED.value, finished)


def test_a_quick_task_holds_a_job_still_created_as_one_waiting(klab_db: str) -> None:
    """Its message can come before the publisher marks the job queued: the job is still the task's to train or
    fail."""
    with writing() as conn:
        a = new(conn, JobStatus.CREATED)
        assert writes.stopping(conn, [a], [0], quick=True) == (set(), set())
        by = writes.trained_by("w", "t", 0, writes.utcnow())
        assert writes.fail(conn, [a], "x", [0], quick=by) == [a]
        assert (job(conn, a).status, job(conn, a).attempts, job(conn, a).worker_host) == ("failed", 1, "w")


def test_the_ids_of_jobs_deleted_are_never_given_again_after_a_batch(klab_db: str) -> None:
    with writing() as conn:
        ids = writes.insert_jobs(conn, [writes.new_job(SPEC) for _ in range(3)])
        writes.delete_jobs(conn, Selection(ids=tuple(ids)))
        assert new(conn) == ids[-1] + 1  # not ids[1] or ids[2] again


def test_a_workers_write_alone_skips_waiting_for_the_disk(pg_url: str) -> None:
    """synchronous_commit off for a worker's claims and results (durable=False), kept on for every other write."""
    upgrade(pg_url)
    for durable, said in ((True, "on"), (False, "off")):
        with writing(pg_url, durable=durable) as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == said, durable


def test_what_is_worth_waiting_for_and_what_is_not(pg_url: str, tmp_path) -> None:
    """A statement's timeout is the database away for now (a worker waits and tries again); a SQLite statement's
    error other than a lock is said at once, not tried for its minutes; an upgrade of a database out of reach says it
    cannot reach it (worth waiting for), not that it refused the upgrade."""
    import sqlite3

    import psycopg

    from service.db.connect import _while_locked, out_of_reach
    from service.errors import DatabaseUnavailable, UpgradeRefused

    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        conn.execute("SET statement_timeout = '50ms'")
        with pytest.raises(psycopg.errors.QueryCanceled) as timed_out:
            conn.execute("SELECT pg_sleep(2)")
    assert out_of_reach(timed_out.value)

    class Broken:
        tries = 0

        def execute(self, statement: str) -> None:
            Broken.tries += 1
            raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _while_locked(Broken(), "BEGIN IMMEDIATE", 30.0, lambda: None)
    assert Broken.tries == 1
    with pytest.raises(DatabaseUnavailable) as away:
        upgrade("postgresql+psycopg://u:secret@127.0.0.1:1/x")
    assert not isinstance(away.value, UpgradeRefused) and out_of_reach(away.value)
    assert "cannot reach" in str(away.value) and "secret" not in str(away.value)


def test_two_clients_storing_one_array_at_once_share_one_dataset(pg_url: str) -> None:
    """The second waits on the first's row of the same content, then finds it: its own transaction goes on (without
    its savepoint, PostgreSQL had ended the whole transaction at the unique index's refusal)."""
    from sqlalchemy import create_engine

    upgrade(pg_url)
    eng, array = create_engine(pg_url, poolclass=NullPool), np.arange(6.0)
    try:
        def waiting() -> int:  # a look of its own each time: a transaction keeps what it first read of the activity
            with eng.connect() as look:
                return look.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND wait_event_type = 'Lock'")).scalar()

        with eng.connect() as first, ThreadPoolExecutor(1) as pool:
            mine = datasets.put_dataset(first, array)  # its transaction left open

            def second() -> int:
                with eng.begin() as conn:
                    theirs = datasets.put_dataset(conn, array)
                    conn.execute(jobs.insert().values(writes.new_job(SPEC)))  # its transaction goes on
                    return theirs

            got = pool.submit(second)
            wait_for(lambda: waiting() == 1, 30)  # the second waits on the first's row
            first.commit()
            assert got.result(timeout=30) == mine
        with eng.connect() as conn:
            assert conn.execute(select(func.count()).select_from(datasets_table)).scalar() == 1
            assert conn.execute(select(func.count()).select_from(jobs)).scalar() == 1
    finally:
        eng.dispose()
