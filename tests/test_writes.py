"""The store on SQLite and PostgreSQL: jobs, epochs in bulk, datasets, queries, and the README's SQL."""
from __future__ import annotations

import re

import numpy as np
import pytest
from sqlalchemy import func, select, text, update

from conftest import ROOT, fake_result
from service import query, store
from service.db import session_scope
from service.errors import BadInput
from service.models import Epoch, Job, JobStatus, Sweep
from service.reader import Reader, reading
from service.spec import JobSpec

SPEC = JobSpec.parse({"input": "random:8x8", "kernel": "random:3x3", "epochs": 6})


def test_stored_result_is_the_engines_plus_identity(klab_db: str) -> None:
    result = fake_result(SPEC, relative=0.25)
    with session_scope() as session:
        job = store.create_job(session, SPEC, status=JobStatus.RUNNING)
        store.save_results(session, [(job.id, result)])
        job_id = job.id
    with reading(klab_db) as reader:
        stored = query.result_of(reader, job_id)
    for key in ("status", "true_kernel", "learned_kernel", "error", "identifiability", "gap", "explanation",
                "diverged_epoch"):
        assert stored[key] == result[key], key
    assert stored["epochs"] == result["epochs"]
    assert stored["id"] == job_id and stored["spec"] == SPEC.to_json() and stored["finished_at"]


def test_storing_again_replaces_the_epochs(klab_db: str) -> None:
    with session_scope() as session:
        job = store.create_job(session, SPEC)
        store.save_results(session, [(job.id, fake_result(SPEC, epochs=6))])
        store.save_results(session, [(job.id, fake_result(SPEC, relative=0.5, epochs=3))])
        assert [e["epoch"] for e in query.epochs_of(Reader.of_session(session), job.id)] == [1, 2, 3]
        assert session.get(Job, job.id).epochs_done == 3
        assert session.get(Job, job.id).err_relative == 0.5


def test_insert_epochs_in_bulk(klab_db: str) -> None:
    with session_scope() as session:
        ids = [store.create_job(session, SPEC).id for _ in range(3)]
        rows = ((j, e, 1.0 / e, None, float("nan") if e == 2 else 0.5) for j in ids for e in range(1, 1001))
        assert store.insert_epochs(session, rows) == 3000
    with session_scope() as session:
        assert session.execute(select(func.count()).select_from(Epoch)).scalar() == 3000
        assert query.epochs_of(Reader.of_session(session), ids[1])[999] == {"epoch": 1000, "loss": 0.001, "mse": None,
                                                                            "kernel_error": 0.5}


def test_unfinished_values_are_stored_as_null(klab_db: str) -> None:
    result = fake_result(SPEC, relative=0.1, status="diverged")
    result["epochs"][-1]["loss"] = float("inf")
    result["error"]["relative"] = float("nan")
    with session_scope() as session:
        job = store.create_job(session, SPEC)
        store.save_results(session, [(job.id, result)])
        assert job.final_loss is None and job.err_relative is None and job.status == "diverged"


def test_unknown_job_and_sweep_are_bad_input(klab_db: str) -> None:
    with reading(klab_db) as reader:
        with pytest.raises(BadInput, match="^id: no job 42$"):
            query.result_of(reader, 42)
        with pytest.raises(BadInput, match="^sweep: no sweep 7$"):
            query.sweep_name(reader, 7)


def test_datasets_are_stored_once_per_content(klab_db: str) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    with session_scope() as session:
        first = store.put_dataset(session, a)
        assert store.put_dataset(session, a.copy()) == first
        other = store.put_dataset(session, a.T)
        assert other != first
    with session_scope() as session:
        back = store.get_dataset(session, first)
    assert back.dtype == np.float32 and np.array_equal(back, a)


def test_list_filters_sorts_and_limits(klab_db: str, add_job) -> None:
    with session_scope() as session:
        sweep = store.create_sweep(session, {"lr": [0.1, 0.01]}, 2).id
        a = add_job(session, relative=0.3, sweep_id=sweep, lr=0.1)
        b = add_job(session, relative=0.1, sweep_id=sweep, lr=0.01, method="adam")
        c = add_job(session, relative=None, status="queued", kernel="sobel-x")
        d = add_job(session, relative=0.2, status="diverged", lr=3.0)
    with reading(klab_db) as reader:
        ids = lambda **kw: [r["id"] for r in query.list_jobs(reader, **kw)]  # noqa: E731
        assert ids() == [d, c, b, a]
        assert ids(sort="relative_error") == [b, d, a, c]  # a job without an error comes last
        assert ids(sort="-relative_error") == [a, d, b, c]  # either way
        assert ids(sort="lr", limit=2) == [b, c]
        assert ids(status="diverged") == [d]
        assert ids(sweep=sweep, sort="id") == [a, b]
        assert ids(method="adam") == [b]
        assert ids(kernel="sobel-x") == [c]
        with pytest.raises(BadInput, match="^sort: unknown column 'loss'"):
            query.list_jobs(reader, sort="loss")
        with pytest.raises(BadInput, match="^status: unknown status"):
            query.list_jobs(reader, status="done")
        with pytest.raises(BadInput, match="^sweep: no sweep 99"):
            query.list_jobs(reader, sweep=99)


def test_delete_removes_jobs_epochs_and_the_sweep(klab_db: str, add_job) -> None:
    with session_scope() as session:
        sweep = store.create_sweep(session, {}, 2).id
        add_job(session, sweep_id=sweep)
        add_job(session, sweep_id=sweep)
        keep = add_job(session)
    with session_scope() as session:
        assert query.delete_jobs(Reader.of_session(session), sweep=sweep) == (2, 20)
    with session_scope() as session:
        assert session.execute(select(Job.id)).scalars().all() == [keep]
        assert session.execute(select(func.count()).select_from(Epoch)).scalar() == 10
        assert session.get(Sweep, sweep) is None
        with pytest.raises(BadInput, match="^id: no job 12345$"):
            query.delete_jobs(Reader.of_session(session), [keep, 12345])
        assert session.get(Job, keep) is not None


# --- the README's SQL --------------------------------------------------------------------------

def readme_sql() -> list[str]:
    """The SQL blocks of the README's sql section, which users paste into sqlite3 or psql."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("<!-- section: sql -->", 1)[1].split("<!-- /section: sql -->", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_readme_sql_examples_run_on_both_backends(klab_db: str, add_job) -> None:
    statements = [s.strip() for block in readme_sql() for s in block.split(";") if s.strip()]
    assert len(statements) >= 6
    with session_scope() as session:
        sweep = store.create_sweep(session, {"lr": [0.01, 0.1, 1.0]}, 3).id
        assert sweep == 1  # the README's examples name sweep 1 and job 1
        for lr, rel in ((0.01, 0.4), (0.1, 0.05), (1.0, 0.2)):
            add_job(session, relative=rel, sweep_id=sweep, lr=lr, kernel="sobel-x")
        blind = add_job(session, relative=0.3, lr=0.5, kernel="laplacian")
        add_job(session, relative=None, status="queued", lr=0.7, kernel="laplacian")
        session.execute(update(Job).where(Job.id == blind).values(identifiable=False, rank=4))
    with session_scope() as session:
        results = {}
        for statement in statements:
            results[statement.splitlines()[0]] = session.execute(text(statement)).all()
    assert all(results.values()), [k for k, v in results.items() if not v]  # every example finds rows
    best = next(v for k, v in results.items() if "best learning rate" in k)
    assert sorted((r[0], r[1]) for r in best) == [("laplacian", 0.5), ("sobel-x", 0.1)]
    epoch5 = next(v for k, v in results.items() if "epoch 5" in k)
    assert len(epoch5) == 3
