"""`klab list`, `show`, `compare`, `export`, `delete` on SQLite and PostgreSQL, and what they never do."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from harness import clean_env, klab_path, wait_until, with_terminal_stderr
from harness import klab as klab_proc
from sqlalchemy import select, update

from service.db import reads, writes
from service.db.connect import Reader
from service.db.engine import upgrade, writing
from service.db.reads import reading
from service.db.schema import epochs
from service.db.schema import jobs as jobs_table
from service.db.schema import sweeps as sweeps_table
from service.jobs import result
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus
from service.render import table as tables

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
"""For what does not depend on the backend (rendering, argument checks): PostgreSQL adds only time."""


@pytest.fixture
def jobs(klab_db: str, add_job) -> dict[str, int]:
    """A sweep over lr (one job diverged), a job outside it, and a queued job without results."""
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.01, 0.1, 1.0]}, 3, name="lr")
        made = {
            "sweep": sweep,
            "slow": add_job(conn, relative=0.4, sweep_id=sweep, lr=0.01),
            "best": add_job(conn, relative=0.05, sweep_id=sweep, lr=0.1),
            "blown": add_job(conn, relative=0.9, status="diverged", sweep_id=sweep, lr=1.0),
            "adam": add_job(conn, relative=0.2, method="adam", kernel="sobel-x", input="random:6x6", seed=3),
            "queued": add_job(conn, relative=None, status="queued"),
        }
    return made


def utc(t: datetime) -> datetime:
    """A time SQLAlchemy read, as an aware UTC datetime (SQLite's come back without an offset)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def stored(job_id: int):
    with writing() as conn:
        return conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).one()


def captured_sql(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the read commands send, as the driver receives it."""
    statements: list[str] = []
    sent = Reader._sql

    def record(self: Reader, sql: str) -> str:
        statements.append(sent(self, sql))
        return statements[-1]

    monkeypatch.setattr(Reader, "_sql", record)
    return statements


# --- list ------------------------------------------------------------------------------------

def test_list_shows_one_row_per_job_newest_first(jobs: dict[str, int], klab_cli) -> None:
    code, out, err = klab_cli("list")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["id", "status", "method"] and "rel. error" in lines[0]
    listed = sorted((v for k, v in jobs.items() if k != "sweep"), reverse=True)
    assert [int(line.split()[0]) for line in lines[1:]] == listed
    assert "\x1b[" not in out and "━" not in out  # not a terminal: plain text
    epochs = {int(line.split()[0]): line.split()[6] for line in lines[1:]}
    assert epochs[jobs["best"]] == "10" and epochs[jobs["queued"]] == "0/10"  # done: the total alone


def test_list_filters_sort_limit_json(jobs: dict[str, int], klab_cli) -> None:
    def ids(*args: str) -> list[int]:
        code, out, err = klab_cli("list", "--json", *args)
        assert code == 0, err
        return [r["id"] for r in json.loads(out)]

    assert ids("--sweep", str(jobs["sweep"]), "--sort", "relative_error") == [jobs["best"], jobs["slow"], jobs["blown"]]
    assert ids("--sort", "-relative_error", "--limit", "2") == [jobs["blown"], jobs["slow"]]
    assert ids("--sort", "relative-error")[-1] == jobs["queued"]  # no error: last
    assert ids("--status", "diverged") == [jobs["blown"]]
    # a status of those not flagged: the filter itself, not the index's condition for the rest, selects them
    assert ids("--status", "succeeded") == [jobs["adam"], jobs["best"], jobs["slow"]]
    assert ids("--status", "cancelled") == []
    assert ids("--method", "adam") == ids("--kernel", "sobel-x") == [jobs["adam"]]
    assert ids("--sort", "lr", "--limit", "1") == [jobs["slow"]]
    assert ids("--sort", "lr") == [jobs["slow"], jobs["adam"], jobs["queued"], jobs["best"], jobs["blown"]]  # equal
    # lrs by id
    code, out, _ = klab_cli("list", "--json", "--limit", "1")
    row = json.loads(out)[0]
    assert set(reads.LIST_COLUMNS) <= set(row) and row["epochs_done"] == 0 and row["relative_error"] is None


@SQLITE_ONLY
def test_lstsq_jobs_show_no_learning_rate_or_epochs(klab_db: str, add_job, klab_cli) -> None:
    """Solved in one step: their lr and epochs (from the spec's defaults) mean nothing, so the tables say '-'."""
    with writing() as conn:
        solved = add_job(conn, relative=1e-9, method="lstsq")
        trained = add_job(conn, relative=0.2, lr=0.05, epochs=7)
    rows = {line.split()[0]: line.split() for line in klab_cli("list")[1].splitlines()[1:]}
    assert rows[str(solved)][2:7] == ["lstsq", "random:8x8", "random:3x3", "-", "-"]
    assert rows[str(trained)][2:7] == ["d2l-manual", "random:8x8", "random:3x3", "0.05", "7"]
    lines = klab_cli("compare", str(solved), str(trained))[1].splitlines()
    assert lines[1].split()[:4] == ["id", "method", "lr", "epochs"]
    assert lines[2].split()[:4] == [str(solved), "lstsq", "-", "-"] and lines[3].split()[2:4] == ["0.05", "7"]
    code, out, _ = klab_cli("list", "--json")
    assert code == 0 and {r["id"]: r["lr"] for r in json.loads(out)}[solved] == 0.03  # the data keep the spec


@SQLITE_ONLY
def test_list_errors_are_one_line_naming_the_option(jobs: dict[str, int], klab_cli, setenv) -> None:
    for args, field in ((["--sort", "loss"], "sort"), (["--sweep", "99"], "sweep"), (["--status", "done"], "status"),
                        (["--limit", "-1"], "--limit: -1 is not in the range"),
                        # each was taken: --id as -id, a tag no sweep can have answered with no jobs
                        (["--sort", "--id"], "sort"), (["--sort", "-+lr"], "sort"), (["--tag", ""], "tag"),
                        (["--tag", "a,b"], "tag: a tag has no commas, got 'a,b'; select by one tag")):
        code, out, err = klab_cli("list", *args)
        assert code == 2 and out == "", args
        assert err.startswith(f"klab: error: {field}") and err.count("\n") == 1, err
    setenv(KLAB_DATABASE_URL="postgresql+psycopg://x@127.0.0.1:1/nowhere")  # a bad --sort is said before the
    code, out, err = klab_cli("list", "--sort", "bogus")  # database is opened, not "cannot reach"
    assert (code, out) == (2, "") and err.startswith("klab: error: sort: unknown column 'bogus'"), err


def test_list_never_reads_the_epochs_table(jobs: dict[str, int], klab_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    statements = captured_sql(monkeypatch)
    assert klab_cli("list", "--sort", "-final_loss", "--sweep", str(jobs["sweep"]))[0] == 0
    assert any("FROM jobs" in s for s in statements)
    assert not [s for s in statements if re.search(r"(FROM|JOIN)\s+epochs\b|\bepochs\.", s)]


# --- show ------------------------------------------------------------------------------------

@SQLITE_ONLY
def test_show_prints_spec_kernels_metrics_gap_and_loss(jobs: dict[str, int], klab_cli) -> None:
    with writing() as conn:  # three parts of three sizes, each of which a row could be shown in place of
        conn.execute(update(jobs_table).where(jobs_table.c.id == jobs["best"])
                     .values(gap_noise=0.0123, gap_identifiability=0.000456))
    code, out, err = klab_cli("show", str(jobs["best"]))
    assert code == 0, err
    with reading() as reader:
        shown = reads.result_of(reader, jobs["best"])
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("true"))
    assert lines[at].split() == ["true", "learned", "difference"]
    true, learned = np.array(shown["true_kernel"]), np.array(shown["learned_kernel"])
    printed = np.array([[float(v) for v in line.split()] for line in lines[at + 1:at + 4]])
    assert printed.shape == (3, 9)  # each row: the true kernel's, the learned one's, learned minus true
    np.testing.assert_allclose(printed, np.hstack([true, learned, learned - true]), rtol=0, atol=5e-5)
    assert "lr 0.1" in out and f"sweep {jobs['sweep']}" in out
    assert "relative 0.05" in out and "identifiable: yes (rank 9 of 9 weights)" in out
    optimization = f"{shown['gap']['optimization']:.4g}"
    assert re.search(rf"optimization\s+{optimization}\s+\|\|P W - W\*\|\|: learned vs the best kernel", out)
    assert re.search(r"noise\s+0\.0123\s+\|\|W\* - P K\|\|", out) and \
        re.search(r"identifiability\s+0\.000456\s+\|\|\(I - P\)", out), out
    assert "pace: stable lr 0.5, rate 0.9, more epochs -" in out
    assert shown["explanation"] in out
    losses = [e["loss"] for e in shown["epochs"]]  # 10 halved nine times, drawn on a log scale from top to bottom
    assert f"loss 10 -> {losses[-1]:.4g} over 10 epochs  █" in out and re.search(r"  █[▁▂▃▄▅▆▇]{8}▁\n", out), out
    assert "converged at epoch" not in out and "diverged at epoch" not in out  # neither happened
    code, blown, _ = klab_cli("show", str(jobs["blown"]))
    assert code == 0 and "\ndiverged at epoch 10\n" in blown, blown  # the epoch its loss left every bound
    with writing() as conn:
        conn.execute(update(jobs_table).where(jobs_table.c.id == jobs["best"]).values(converged_epoch=7))
    assert "\nconverged at epoch 7\n" in klab_cli("show", str(jobs["best"]))[1]


def test_show_json_is_the_stored_result(jobs: dict[str, int], klab_cli) -> None:
    with writing() as conn:  # the gap's three parts apart, so that none passes for another
        conn.execute(update(jobs_table).where(jobs_table.c.id == jobs["blown"])
                     .values(gap_noise=0.0123, gap_identifiability=0.000456))
    code, out, _ = klab_cli("show", str(jobs["blown"]), "--json")
    shown = json.loads(out)
    job = stored(jobs["blown"])  # what SQLAlchemy reads
    with writing() as conn:
        rows = conn.execute(select(epochs).where(epochs.c.job_id == job.id).order_by(epochs.c.epoch)).all()
    assert code == 0 and shown["status"] == job.status == "diverged" and shown["spec"] == job.spec
    assert shown["learned_kernel"] == job.learned_kernel and shown["true_kernel"] == job.true_kernel
    assert shown["error"]["relative"] == job.err_relative
    assert shown["gap"] == {"optimization": job.gap_optimization, "noise": 0.0123, "identifiability": 0.000456}
    assert shown["identifiability"]["identifiable"] is job.identifiable is True
    for name in ("created_at", "finished_at"):  # the stored instant, in UTC with its offset on either database
        assert shown[name].endswith("+00:00") and datetime.fromisoformat(shown[name]) == utc(getattr(job, name))
    assert shown["pace"]["stable_lr"] == job.stable_lr == 0.5
    assert [(e["epoch"], e["loss"], e["kernel_error"]) for e in shown["epochs"]] == \
        [(e.epoch, e.loss, e.kernel_error) for e in rows]
    assert len(shown["epochs"]) == 10


@SQLITE_ONLY
def test_show_unknown_id(klab_db: str, klab_cli) -> None:
    assert klab_cli("show", "7") == (2, "", "klab: error: id: no job 7\n")


def test_ids_and_limits_past_64_bits_are_answered_not_sent_to_the_driver(jobs: dict[str, int], klab_cli) -> None:
    """No database holds an id past 2**63 - 1, and neither driver binds one (SQLite's OverflowError, PostgreSQL's
    bigint out of range for a LIMIT): such an id names no job or sweep, such a limit is no limit."""
    huge = str(2**64)
    assert klab_cli("show", huge) == (2, "", f"klab: error: id: no job {huge}\n")
    assert klab_cli("show", "--", "-" + huge) == (2, "", f"klab: error: id: no job -{huge}\n")
    for command in (["list"], ["compare"], ["compare", "--group-by", "lr"], ["export"], ["status"], ["delete"],
                    ["cancel"], ["requeue"], ["plot", "-o", "x.png"]):
        assert klab_cli(*command, "--sweep", huge) == (2, "", f"klab: error: sweep: no sweep {huge}\n"), command
    assert klab_cli("list", "--limit", "5")[1] == klab_cli("list", "--limit", huge)[1]
    assert len(json.loads(klab_cli("list", "--limit", huge, "--sort", "-relative_error", "--json")[1])) == 5
    for most in (huge, str(2**63 - 1)):  # the largest a column holds is no limit either (SQLite's OverflowError)
        code, out, err = klab_cli("sweeps", "--limit", most)
        assert (code, err, out.splitlines()[1].split()[:2]) == (0, "", [str(jobs["sweep"]), "lr"]), most
    assert len(klab_cli("list", "--limit", "0")[1].splitlines()) == 1 + 5  # nothing was deleted


# --- compare ---------------------------------------------------------------------------------

def test_compare_best_first_with_shared_parameters_once(jobs: dict[str, int], klab_cli) -> None:
    code, out, err = klab_cli("compare", "--sweep", str(jobs["sweep"]))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("all jobs: method d2l-manual, input random:8x8")
    assert "batch" not in lines[0]  # d2l-manual steps on the whole input: its batch size means nothing
    assert lines[1].split()[:2] == ["id", "lr"]
    assert [int(line.split()[0]) for line in lines[2:]] == [jobs["best"], jobs["slow"], jobs["blown"]]


@SQLITE_ONLY
def test_compare_marks_what_a_method_never_reads(klab_db: str, add_job, klab_cli) -> None:
    with writing() as conn:
        ids = [add_job(conn, method=m, batch_size=b) for m, b in (("lstsq", 4), ("d2l-manual", 2), ("adam", 3))]
    code, out, err = klab_cli("compare", *map(str, ids))
    assert code == 0, err
    header, *rows = out.splitlines()[1:]
    assert header.split()[:5] == ["id", "method", "lr", "epochs", "batch"]  # lstsq reads no lr nor epochs
    assert {int(r.split()[0]): r.split()[2:5] for r in rows} == {ids[0]: ["-", "-", "-"], ids[1]: ["0.03", "10", "-"],
                                                                 ids[2]: ["0.03", "10", "3"]}
    with writing() as conn:  # least squares alone, stored with lrs and epochs that differ: columns no job reads
        solved = [add_job(conn, method="lstsq", lr=lr, epochs=e) for lr, e in ((0.03, 10), (0.01, 30))]
    code, out, err = klab_cli("compare", *map(str, solved))
    assert code == 0 and out.splitlines()[1].split()[:3] == ["id", "status", "done"], out  # were lr and epochs: all -


@SQLITE_ONLY
def test_compare_names_a_bias_or_tol_that_differs_and_shares_only_what_every_method_reads(klab_db: str, add_job,
                                                                                            klab_cli) -> None:
    with writing() as conn:
        plain, biased, loose = (add_job(conn, **more) for more in ({}, {"bias": 0.5}, {"tol": 0.01}))
        manual, least = (add_job(conn, method=m) for m in ("d2l-manual", "lstsq"))
    lines = klab_cli("compare", str(plain), str(biased))[1].splitlines()
    assert lines[1].split()[:2] == ["id", "bias"] and "bias" not in lines[0]  # a job with a bias and one without
    assert {r.split()[0]: r.split()[1] for r in lines[2:]} == {str(plain): "-", str(biased): "0.5"}
    lines = klab_cli("compare", str(plain), str(loose))[1].splitlines()
    assert lines[1].split()[:2] == ["id", "tol"]
    assert {r.split()[0]: r.split()[1] for r in lines[2:]} == {str(plain): "0.0001", str(loose): "0.01"}
    assert "tol" not in klab_cli("compare", str(plain), str(manual))[1]  # alike: said nowhere, as the plot does
    title, header = klab_cli("compare", str(manual), str(least))[1].splitlines()[:2]
    assert title.startswith("all jobs: input random:8x8") and "batch" not in title + header  # neither reads it
    assert header.split()[:4] == ["id", "method", "lr", "epochs"]  # only one reads them: each job's, or -
    with writing() as conn:
        both = [add_job(conn, bias=0.5, tol=0.01) for _ in range(2)]
    title, header = klab_cli("compare", *map(str, both))[1].splitlines()[:2]
    assert title.endswith(", bias 0.5, tol 0.01") and "bias" not in header  # shared: said once (was nowhere)
    assert "tol" not in klab_cli("compare", str(plain), str(manual))[1].splitlines()[0]  # the defaults are not said


def test_compare_of_a_sweep_whose_jobs_were_all_deleted_says_so(klab_db: str, klab_cli) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"seed": [1, 2]}, 2)
    assert klab_cli("compare", "--sweep", str(sweep)) == (0, "", "no jobs\n")  # was a traceback (IndexError)


def test_a_table_title_is_shown_as_written_not_read_as_markup() -> None:
    rows = [{"id": 1, "status": "succeeded"}]
    for title in ("sweep 1 (a[/]b)", "sweep 2 ([bold red]hidden[/bold red] name)"):  # a traceback; a word gone red
        drawn = tables.rich_table(["id", "status"], rows, title=title, force_terminal=True, width=80)
        assert "".join(title.split()) in "".join(re.sub(r"\x1b\[[0-9;]*m", "", drawn).split())  # wrapped as wide
        # as the table


def test_progress_short_of_every_epoch_is_never_said_to_be_100_percent() -> None:
    from service.cli.progress import count_line

    line = count_line({"jobs": 3, "finished": 2, "by_status": {"queued": 1, "cancelled": 2}, "epochs_done": 12348,
                       "epochs_total": 12358})
    assert line.endswith("epochs 12348/12358 (99%)")  # was 100%, with a job still queued
    assert count_line({"jobs": 2, "finished": 1, "by_status": {"running": 1, "succeeded": 1}, "epochs_done": 10,
                       "epochs_total": 20}).endswith("(50%)")


def test_compare_ids_csv_and_json(jobs: dict[str, int], klab_cli) -> None:
    ids = [str(jobs[k]) for k in ("queued", "adam", "slow", "best")]
    code, out, _ = klab_cli("compare", *ids, "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0]) == list(result.SUMMARY_NAMES)
    assert [int(r["id"]) for r in rows] == [jobs["best"], jobs["adam"], jobs["slow"], jobs["queued"]]
    assert float(rows[0]["relative_error"]) == 0.05 and rows[-1]["relative_error"] == ""
    code, out, _ = klab_cli("compare", *ids, "--json")
    assert [r["id"] for r in json.loads(out)] == [int(r["id"]) for r in rows]


@SQLITE_ONLY
def test_tables_show_rounding_dust_as_show_does_and_the_data_keep_it(klab_db: str, klab_cli) -> None:
    """A least-squares job on the book's input: float64 leaves ~3e-16 in two parts of its gap, below float32's
    rounding of the kernel. `show`, `compare` and `list` print 0 there alike; --csv and --json keep the value."""
    ids = []
    for method in ("lstsq", "d2l-manual"):
        code, out, err = klab_cli("run", "--input", "edge:6x8", "--kernel", "d2l", "--method", method, "--json")
        assert code == 0, err
        ids.append(str(json.loads(out)["id"]))
    code, out, _ = klab_cli("compare", *ids, "--csv")
    raw = {r["id"]: r for r in csv.DictReader(io.StringIO(out))}
    dust = {k: float(raw[ids[0]][k]) for k in ("gap_optimization", "gap_noise")}
    assert all(abs(v) < 1e-12 for v in dust.values()), dust  # float64 dust (here ~3e-16; 0 on some CPUs)
    lines = klab_cli("compare", *ids)[1].splitlines()
    heads = re.split(r"\s{2,}", lines[1].strip())
    rows = {line.split()[0]: dict(zip(heads, re.split(r"\s{2,}", line.strip()))) for line in lines[2:]}
    assert (rows[ids[0]]["gap opt."], rows[ids[0]]["gap noise"]) == ("0", "0")
    assert float(rows[ids[1]]["gap opt."]) > 1e-3 and rows[ids[1]]["gap noise"] == "0"  # training's gap stays
    shown = {line.split()[0]: line.split()[1] for line in klab_cli("show", ids[0])[1].splitlines()
             if line.strip().startswith(("optimization", "noise"))}
    assert shown == {"optimization": "0", "noise": "0"}
    code, out, _ = klab_cli("compare", *ids, "--json")
    assert {r["id"]: r["gap_noise"] for r in json.loads(out)}[int(ids[0])] == dust["gap_noise"]


def test_settle_measures_each_distance_on_its_own_scale() -> None:
    from service.render.text import FLOAT32_EPS, settle

    row = {"true_kernel": [[3.0, -4.0]], "gap_noise": 1e-16, "gap_optimization": 4 * FLOAT32_EPS,
           "max_abs_error": 6 * FLOAT32_EPS, "relative_error": 0.5 * FLOAT32_EPS, "final_loss": 1e-20}
    assert settle(row) == {**row, "gap_noise": 0.0, "gap_optimization": 0.0, "relative_error": 0.0}  # |K| = 5
    assert settle({**row, "true_kernel": None, "learned_kernel": [[0.6, -0.8]]})["gap_optimization"] > 0  # |W| = 1
    assert settle({"gap_noise": 1e-16, "relative_error": 1e-9}) == {"gap_noise": 1e-16, "relative_error": 0.0}
    blown = {"true_kernel": [[1.0, -1.0]], "learned_kernel": [[3e30, -4e30]], "gap_identifiability": 4.5e15,
             "gap_optimization": 5e30}  # a diverged job: float64's rounding of its weights, not a gap, on rank 2 of 2
    assert settle(blown) == {**blown, "gap_identifiability": 0.0}  # on the larger norm, the learned one's


def test_jobs_are_counted_in_the_order_a_job_lives_through_its_statuses() -> None:
    from service.render.text import counted

    assert counted({"succeeded": 8, "cancelled": 1, "created": 2, "failed": 3, "queued": 4, "diverged": 5,
                    "running": 6}) == \
        "2 created, 4 queued, 6 running, 8 succeeded, 5 diverged, 3 failed, 1 cancelled"
    assert counted({"weird": 1, "queued": 2}) == "2 queued, 1 weird" and counted({}) == ""


def test_a_convergence_rate_under_one_never_reads_one() -> None:
    # 1 or more means the gap never closes: lr 1e-9 on edge:6x8 closes at 1 - 1.2e-8 an epoch, which 4 digits round to 1
    from service.render.text import factor, shown_value

    assert [factor(r) for r in (0.8, 0.99988, 0.999999988, 1.0, 1.8, 0.99999)] == \
        ["0.8", "0.9999", "0.99999999", "1", "1.8", "0.99999"]
    assert factor(0.99988, 3) == "0.9999" and factor(0.667, 3) == "0.667"
    assert shown_value("convergence_rate", 0.999999988, 0.0) == "0.99999999"
    assert shown_value("convergence_rate", None, 0.0) is None


@SQLITE_ONLY
def test_show_and_compare_print_a_rate_just_under_one_as_under_one(klab_db: str, klab_cli) -> None:
    code, out, _ = klab_cli("run", "--lr", "1e-9", "--json")
    job = json.loads(out)
    assert code == 0 and 0.99999 < job["pace"]["convergence_rate"] < 1
    shown = klab_cli("show", str(job["id"]))[1]
    assert "rate 0.99999999," in shown and "(the gap shrinks x0.99999999 an epoch)" in shown
    header, row = klab_cli("compare", str(job["id"]))[1].splitlines()
    assert header.split()[-3:] == ["rate", "more", "epochs"] and row.split()[-2] == "0.99999999"


@SQLITE_ONLY
def test_compare_needs_ids_or_a_sweep_not_both(jobs: dict[str, int], klab_cli) -> None:
    assert klab_cli("compare") == (2, "", "klab: error: id: give job ids or --sweep\n")
    code, _, err = klab_cli("compare", "1", "--sweep", str(jobs["sweep"]))
    assert code == 2 and err == "klab: error: id: give job ids or --sweep, not both\n"
    code, _, err = klab_cli("compare", str(jobs["best"]), "999")
    assert code == 2 and err == "klab: error: id: no job 999\n"
    assert klab_cli("compare", "--sweep", "42")[2] == "klab: error: sweep: no sweep 42\n"


# --- compare --group-by, sweeps, tags -----------------------------------------------------------

@pytest.fixture
def seeds(klab_db: str, add_job) -> dict[str, object]:
    """A tagged sweep over lr, method and seeds with known relative errors (one job failed, one queued), and
    an untagged sweep."""
    errors = {(0.01, "d2l-manual"): [0.5, 0.25, 0.75, 0.5], (0.1, "d2l-manual"): [0.5 + 1e-9, 0.5, 0.5 - 1e-9],
              (0.1, "adam"): [0.125]}
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"swept": {"lr": [0.01, 0.1], "method": ["d2l-manual", "adam"],
                                                     "seed": [0, 1, 2, 3]}, "fixed": {"epochs": 10}}, 11, "grid",
                                    ["book", "lr"])
        other = writes.create_sweep(conn, {"swept": {"seed": list(range(500))}, "fixed": {}}, 1)
        for (lr, method), values in errors.items():
            for seed, rel in enumerate(values):
                add_job(conn, relative=rel, sweep_id=sweep, lr=lr, method=method, seed=seed)
        add_job(conn, relative=None, status="failed", sweep_id=sweep, lr=0.1, method="adam", seed=1)
        add_job(conn, relative=None, status="queued", sweep_id=sweep, lr=0.01, method="adam", seed=0)
        lone = add_job(conn, relative=0.3, sweep_id=other, seed=7)
        add_job(conn, relative=0.9)  # in no sweep
    return {"sweep": sweep, "other": other, "errors": errors, "lone": lone}


def _stats(values: list[float]) -> dict[str, float | None]:
    """As exact arithmetic has them (statistics' are computed in fractions; numpy's std of [0.1] * 3 is 1.7e-17)."""
    import statistics

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def test_compare_group_by_gives_count_mean_std_min_max_per_group(seeds: dict, klab_cli) -> None:
    code, out, err = klab_cli("compare", "--sweep", str(seeds["sweep"]), "--group-by", "lr,method", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["lr"], r["method"]) for r in rows] == [(0.01, "adam"), (0.01, "d2l-manual"), (0.1, "adam"),
                                                       (0.1, "d2l-manual")]
    assert [(r["jobs"], r["succeeded"]) for r in rows] == [(1, 0), (4, 4), (2, 1), (3, 3)]
    assert rows[0]["relative_error_mean"] is None and rows[0]["final_loss_std"] is None  # queued: no values
    for r in rows[1:]:
        want = _stats(seeds["errors"][(r["lr"], r["method"])])
        for name, value in want.items():
            assert r[f"relative_error_{name}"] == (None if value is None else pytest.approx(value, rel=1e-12))
    # a spread a billion times smaller than the values survives (two passes, not E[x^2] - E[x]^2)
    assert rows[3]["relative_error_std"] == pytest.approx(1e-9, rel=1e-6)
    # the final loss is summarised too: fake_result's jobs of 10 epochs all end at the same loss
    assert rows[1]["final_loss_mean"] == pytest.approx(10.0 * 0.5 ** 10) and rows[1]["final_loss_std"] == 0.0


def test_compare_group_by_equal_values_have_no_spread(klab_db: str, add_job, klab_cli) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"swept": {"seed": [0, 1, 2, 3, 4]}, "fixed": {}}, 5)
        for seed, rel in enumerate([0.1, 0.1, 0.1, 0.3, 0.3 + 2 ** -54]):  # the mean of [0.1] * 3 rounds up
            add_job(conn, relative=rel, sweep_id=sweep, seed=seed, lr=0.01 if seed < 3 else 0.1)
    code, out, err = klab_cli("compare", "--sweep", str(sweep), "--group-by", "lr", "--json")
    assert code == 0, err
    equal, near = json.loads(out)
    assert (equal["relative_error_mean"], equal["relative_error_std"]) == (0.1, 0.0)  # as its least and greatest
    assert near["relative_error_std"] == pytest.approx(_stats([0.3, 0.3 + 2 ** -54])["std"], rel=1e-3)
    assert list(equal)[-8:] == [f"{m}_{s}" for m in ("relative_error", "final_loss") for s in ("mean", "std", "min",
                                                                                            "max")]
    code, out, _ = klab_cli("compare", "--sweep", str(sweep), "--group-by", "lr")
    assert out.splitlines()[2].split()[:7] == ["0.01", "3", "3", "0.1", "0", "0.1", "0.1"]


def test_list_finds_the_jobs_of_a_kernel_file_since_deleted(klab_db: str, add_job, klab_cli) -> None:
    """`--kernel npy:PATH` is matched as stored, never read: the file may be gone, its jobs are not."""
    with writing() as conn:
        gone = add_job(conn, kernel="npy:/nowhere/k.npy")
        add_job(conn)
    code, out, err = klab_cli("list", "--kernel", "npy:/nowhere/k.npy", "--json")
    assert (code, err, [r["id"] for r in json.loads(out)]) == (0, "", [gone])


def test_compare_group_by_a_group_of_zeros_and_a_group_without_a_true_kernel(klab_db: str, add_job, klab_cli) -> None:
    """Errors all 0 in a group (exact fits) have a spread of 0, not PostgreSQL's division by zero; the jobs without a
    true kernel are a group of their own, after the others on both databases."""
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"swept": {"seed": [0, 1]}, "fixed": {}}, 4)
        for seed in (0, 1):
            add_job(conn, relative=0.0, sweep_id=sweep, seed=seed)
            add_job(conn, relative=None, sweep_id=sweep, seed=seed, kernel="none", labels="npy:/nowhere/labels.npy")
    code, out, err = klab_cli("compare", "--sweep", str(sweep), "--group-by", "kernel", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["kernel"], r["jobs"]) for r in rows] == [("random:3x3", 2), (None, 2)]
    assert (rows[0]["relative_error_mean"], rows[0]["relative_error_std"]) == (0.0, 0.0)


def test_compare_group_by_spreads_of_tiny_values(klab_db: str, add_job, klab_cli) -> None:
    """Squared deviations under 1e-308 raised PostgreSQL's underflow error (a traceback, exit 1) and were 0 in
    SQLite (std 0 of three values apart). Stored by hand or by another tool: training makes none so small."""
    groups = {0.01: [1e-300, 2e-300, 4e-300], 0.1: [1e-170, 2e-170, 4e-170], 0.3: [0.0, 1e-300, 3e-300]}
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"swept": {"seed": [0, 1, 2]}, "fixed": {}}, 9)
        for lr, values in groups.items():
            for seed, rel in enumerate(values):
                add_job(conn, relative=rel, sweep_id=sweep, seed=seed, lr=lr)
    code, out, err = klab_cli("compare", "--sweep", str(sweep), "--group-by", "lr", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [row["lr"] for row in rows] == [0.01, 0.1, 0.3], rows  # every group, none dropped
    for row in rows:
        want = _stats(groups[row["lr"]])
        assert row["relative_error_std"] == pytest.approx(want["std"], rel=1e-12, abs=0), row
        assert row["relative_error_mean"] == pytest.approx(want["mean"], rel=1e-12, abs=0), row


@SQLITE_ONLY
def test_compare_group_by_prints_relative_errors_under_float32_rounding_as_the_jobs_tables_do(klab_db: str, add_job,
                                                                                                klab_cli) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"swept": {"seed": [0, 1, 2]}, "fixed": {}}, 3)
        for seed, rel in enumerate([2.7e-8, 3.5e-8, 4.1e-8]):  # each under 2**-23: printed 0 by list and compare
            add_job(conn, relative=rel, sweep_id=sweep, seed=seed)
    assert {line.split()[-2] for line in klab_cli("list", "--sweep", str(sweep))[1].splitlines()[1:]} == {"0"}
    row = klab_cli("compare", "--sweep", str(sweep), "--group-by", "lr")[1].splitlines()[2].split()
    assert row[:7] == ["0.03", "3", "3", "0", "0", "0", "0"]  # mean, std, min, max
    kept = json.loads(klab_cli("compare", "--sweep", str(sweep), "--group-by", "lr", "--json")[1])[0]
    assert (kept["relative_error_min"], kept["relative_error_max"]) == (2.7e-8, 4.1e-8)  # the data keep them


def test_compare_group_by_csv_and_the_table(seeds: dict, klab_cli) -> None:
    code, out, _ = klab_cli("compare", "--sweep", str(seeds["sweep"]), "--group-by", "lr", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0]) == ["lr", "jobs", "succeeded", *(f"{m}_{s}" for m in ("relative_error",
                                           "final_loss") for s in ("mean", "std", "min", "max"))]
    assert [(r["lr"], r["jobs"]) for r in rows] == [("0.01", "5"), ("0.1", "5")]
    assert float(rows[1]["relative_error_min"]) == 0.125 and float(rows[1]["relative_error_max"]) == 0.5 + 1e-9
    code, out, _ = klab_cli("compare", "--sweep", str(seeds["sweep"]), "--group-by", "batch-size,lr")
    lines = out.splitlines()
    # the statistics are over what the sweep varies and the groups do not: its own names, in its order
    assert code == 0 and lines[0] == (f"sweep {seeds['sweep']} (grid): 10 jobs in 2 groups by batch_size, lr; "
                                      "relative error and final loss over method, seed")
    assert lines[1].split()[:6] == ["batch", "lr", "jobs", "succeeded", "rel.", "error"]
    assert lines[2].split()[:5] == ["2", "0.01", "5", "4", "0.5"]
    code, out, _ = klab_cli("compare", "--sweep", str(seeds["sweep"]), "--group-by", "seed,method,lr")
    assert code == 0 and out.splitlines()[0].endswith("; relative error and final loss of each group's one job")
    head, first = out.splitlines()[1:3]
    std = head.index("rel. error std") + len("rel. error std")
    assert first[std - 1] == "-" and first[std - 2] == " "  # a std of one job: its dash under the column's end,
    # as every number's (it stood at the column's start)
    code, out, _ = klab_cli("compare", str(seeds["lone"]), "--group-by", "lr")
    title = "jobs: 1 job in 1 group by lr; relative error and final loss over the rest"  # not a sweep: unknown
    assert code == 0 and out.splitlines()[0] == title


@SQLITE_ONLY
def test_compare_group_by_refuses_what_cannot_group(seeds: dict, klab_cli) -> None:
    code, out, err = klab_cli("compare", "--sweep", str(seeds["sweep"]), "--group-by", "lr,colour")
    assert (code, out) == (2, "") and err.startswith("klab: error: group-by: cannot group by 'colour'; choose from lr")
    code, _, err = klab_cli("compare", "--sweep", str(seeds["sweep"]), "--group-by", "lr,lr")
    assert code == 2 and "names a parameter twice" in err
    assert klab_cli("compare", "--group-by", "lr")[2] == "klab: error: id: give job ids or --sweep\n"
    assert klab_cli("compare", "--sweep", "99", "--group-by", "lr")[2] == "klab: error: sweep: no sweep 99\n"


def test_sweeps_lists_name_tags_size_counts_and_what_varies(seeds: dict, klab_cli) -> None:
    code, out, err = klab_cli("sweeps")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["id", "name", "tags", "size", "jobs", "created", "at", "varies"]
    first, second = lines[1], lines[2]
    assert first.split()[:5] == [str(seeds["sweep"]), "grid", "book,", "lr", "11"]
    assert "1 queued, 8 succeeded, 1 failed" in first and "lr 0.01,0.1; method d2l-manual,adam; seed 0..3" in first
    assert second.split()[:5] == [str(seeds["other"]), "-", "-", "1", "1"] and second.endswith("seed 0..499")
    code, out, _ = klab_cli("sweeps", "--json")
    rows = json.loads(out)
    assert [(r["id"], r["name"], r["tags"], r["size"]) for r in rows] == [
        (seeds["sweep"], "grid", ["book", "lr"], 11), (seeds["other"], None, [], 1)]
    assert rows[0]["by_status"] == {"failed": 1, "queued": 1, "succeeded": 8}
    assert rows[1]["params"]["swept"]["seed"] == list(range(500))
    code, out, _ = klab_cli("sweeps", "--tag", "lr", "--json")
    assert [r["id"] for r in json.loads(out)] == [seeds["sweep"]]
    assert klab_cli("sweeps", "--tag", "nope") == (0, "", "no sweeps\n")
    assert klab_cli("sweeps", "--tag", " ") == (2, "", "klab: error: tag: a tag has 1 to 100 characters, got ' '\n")


def test_sweeps_lists_the_newest_and_says_when_there_are_older_ones(seeds: dict, klab_cli) -> None:
    code, out, err = klab_cli("sweeps", "--limit", "1", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [seeds["other"]]
    assert err == "the newest 1 sweep: --limit 0 lists every one\n"
    code, out, err = klab_cli("sweeps", "--limit", "1", "--tag", "lr")
    assert code == 0 and out.splitlines()[1].split()[:2] == [str(seeds["sweep"]), "grid"] and err == ""
    with writing() as conn:
        newer = writes.create_sweep(conn, {"swept": {"seed": [1]}, "fixed": {}}, 1, None, ["lr"])
    code, out, err = klab_cli("sweeps", "--limit", "1", "--tag", "lr", "--json")
    assert [r["id"] for r in json.loads(out)] == [newer] and err == "the newest 1 sweep tagged lr: --limit 0 lists " \
        "every one\n"
    for limit in ("3", "0"):
        code, out, err = klab_cli("sweeps", "--limit", limit)
        assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == [
            str(seeds["sweep"]), str(seeds["other"]), str(newer)] and err == ""
    assert klab_cli("sweeps", "--limit", "-1")[0] == 2


def test_list_filters_by_the_tag_of_the_jobs_sweep(seeds: dict, klab_cli) -> None:
    code, out, _ = klab_cli("list", "--tag", "book", "--limit", "0", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 10 and {r["sweep_id"] for r in rows} == {seeds["sweep"]}
    code, out, _ = klab_cli("list", "--tag", "book", "--status", "failed", "--json")
    assert [r["status"] for r in json.loads(out)] == ["failed"]
    assert klab_cli("list", "--tag", "boo") == (0, "", "no jobs\n")  # a tag matches whole, never a part


# --- export ----------------------------------------------------------------------------------

def test_export_jobs_csv_to_a_file(jobs: dict[str, int], klab_cli, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    code, out, _ = klab_cli("export", "--sweep", str(jobs["sweep"]), "-o", str(path))
    assert code == 0 and out == f"wrote 3 jobs to {path}\n"
    rows = list(csv.DictReader(path.open()))
    assert [int(r["id"]) for r in rows] == sorted([jobs["slow"], jobs["best"], jobs["blown"]])
    assert b"\r" not in path.read_bytes()  # lines end as the terminal's do: \n, not csv's \r\n
    learned = stored(jobs["best"]).learned_kernel
    assert json.loads(rows[1]["learned_kernel"]) == learned and json.loads(rows[1]["spec"])["lr"] == 0.1
    one = tmp_path / "one.csv"
    assert klab_cli("export", str(jobs["best"]), "-o", str(one)) == (0, f"wrote 1 job to {one}\n", "")


def test_export_to_a_json_file_writes_json_unless_told_otherwise(jobs: dict[str, int], klab_cli, tmp_path: Path):
    """`klab export 12 -o e.json` wrote CSV into e.json: the format's default was csv, whatever the file's name."""
    path = tmp_path / "jobs.JSON"
    code, out, _ = klab_cli("export", "--sweep", str(jobs["sweep"]), "-o", str(path))
    assert code == 0 and len(json.loads(path.read_text())) == 3
    code, out, _ = klab_cli("export", "--sweep", str(jobs["sweep"]), "-o", str(path), "--format", "csv")
    assert code == 0 and path.read_text().startswith("id,")
    code, out, _ = klab_cli("export", "--sweep", str(jobs["sweep"]), "-o", str(tmp_path / "jobs.txt"))
    assert code == 0 and (tmp_path / "jobs.txt").read_text().startswith("id,")


def test_export_epochs_json_and_csv(jobs: dict[str, int], klab_cli) -> None:
    code, out, _ = klab_cli("export", "--ids", f"{jobs['best']},{jobs['adam']}", "--what", "epochs",
                            "--format", "json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 20 and list(rows[0]) == list(result.EPOCH_NAMES)
    assert [(r["job_id"], r["epoch"]) for r in rows[9:11]] == [(jobs["best"], 10), (jobs["adam"], 1)]
    with writing() as conn:
        assert [r["loss"] for r in rows[:10]] == list(conn.execute(
            select(epochs.c.loss).where(epochs.c.job_id == jobs["best"]).order_by(epochs.c.epoch)).scalars())
    code, out, _ = klab_cli("export", "--sweep", str(jobs["sweep"]), "--what", "epochs")
    assert code == 0 and out.splitlines()[0] == "job_id,epoch,loss,mse,kernel_error" and len(out.splitlines()) == 31
    code, out, _ = klab_cli("export", "--ids", str(jobs["queued"]), "--format", "json", "--what", "epochs")
    assert code == 0 and json.loads(out) == []


def test_export_streams_epochs(jobs: dict[str, int], klab_db: str) -> None:
    with reading(klab_db) as reader:
        _, rows = reads.export_epochs(reader, Selection(sweep=jobs["sweep"]))
        assert not isinstance(rows, list)
        first = next(rows)
        if reader.dialect == "postgresql":  # the rows come from a server-side cursor, open while they are read
            assert [r["name"] for r in reader.rows("SELECT name FROM pg_cursors")] == ["klab_stream"]
        rest = list(rows)
    assert [(r["job_id"], r["epoch"]) for r in [first, *rest]] == \
        [(j, e) for j in sorted([jobs["slow"], jobs["best"], jobs["blown"]]) for e in range(1, 11)]


@SQLITE_ONLY
def test_export_takes_ids_as_the_other_commands_do(jobs: dict[str, int], klab_cli) -> None:
    """`klab export 12 13`, as `klab show 12` and `klab compare 12 13`; --ids 12,13 too, and both at once."""
    best, adam = jobs["best"], jobs["adam"]
    code, out, err = klab_cli("export", str(best), str(adam), "--format", "json")
    assert (code, err) == (0, "") and [j["id"] for j in json.loads(out)] == [best, adam]
    assert klab_cli("export", "--ids", f"{best},{adam}", "--format", "json")[1] == out
    code, out, _ = klab_cli("export", str(adam), "--ids", str(best), "--what", "epochs")
    assert code == 0 and {int(line.split(",")[0]) for line in out.splitlines()[1:]} == {best, adam}
    assert klab_cli("export", str(best), "--sweep", str(jobs["sweep"]))[2] == \
        "klab: error: ids: give job ids or --sweep, not both\n"


@SQLITE_ONLY
def test_export_errors(jobs: dict[str, int], klab_cli) -> None:
    assert klab_cli("export")[2] == "klab: error: ids: give job ids or --sweep\n"
    assert klab_cli("export", "--ids", "1,x")[2].startswith("klab: error: ids: must be job ids")
    assert klab_cli("export", "--ids", "999")[2] == "klab: error: ids: no job 999\n"
    assert klab_cli("export", "--ids", "1", "--format", "xml")[0] == 2


@SQLITE_ONLY
def test_export_and_plot_never_write_over_the_database_they_read(jobs: dict[str, int], klab_db: str, klab_cli,
                                                                  tmp_path: Path) -> None:
    """`klab export 1 -o ~/.klab/klab.db` replaced the database with one CSV line, and said it wrote it."""
    from service.settings import sqlite_path

    db = sqlite_path(klab_db)
    before = db.read_bytes()
    (tmp_path / "link.png").symlink_to(db)
    os.link(db, tmp_path / "hard.csv")
    for command, path in (("export", str(db)), ("export", f"{db.parent}/../{db.parent.name}/{db.name}"),
                          ("export", f"{db}-wal"), ("export", f"{db}-journal"), ("plot", str(tmp_path / "link.png")),
                          ("export", str(tmp_path / "hard.csv"))):
        code, out, err = klab_cli(command, str(jobs["best"]), "-o", path)
        assert (code, out) == (2, "") and err == (
            f"klab: error: output: {path} is klab's SQLite database or one of its files (KLAB_DATABASE_URL): "
            "writing there would destroy its jobs; choose another file\n"), err
    assert db.read_bytes() == before and not os.path.exists(f"{db}-journal")
    assert klab_cli("export", str(jobs["best"]), "-o", str(tmp_path / "jobs.csv"))[0] == 0  # beside it: written


# --- delete ----------------------------------------------------------------------------------

def test_ids_not_there_are_named_up_to_ten_and_a_queued_lstsq_job_counts_its_one_epoch(jobs, klab_cli) -> None:
    ten = [str(i) for i in range(101, 111)]
    assert klab_cli("status", *ten) == (2, "", f"klab: error: id: no job {', '.join(ten)}\n")
    assert klab_cli("status", *ten, "111") == (2, "", f"klab: error: id: no job {', '.join(ten)} ...\n")
    with writing() as conn:
        (job,) = writes.insert_jobs(conn, [writes.new_job(JobSpec.parse({"method": "lstsq"}), start=JobStatus.QUEUED,
                                                          queue="cpu")])
    assert klab_cli("status", str(job)) == (0, "1 job(s): 1 queued; epochs 0/1 (0%)\n", "")  # one step to take


def test_sweeps_names_up_to_four_values_of_a_parameter(klab_db, klab_cli) -> None:
    with writing() as conn:
        for values in ([0.01, 0.03, 0.1, 0.3], [0.01, 0.03, 0.1, 0.3, 1.0], [1.0, 0.3, 0.1, 0.03, 0.01]):
            writes.create_sweep(conn, {"swept": {"lr": values}, "fixed": {}}, len(values))
    lines = klab_cli("sweeps")[1].splitlines()
    assert lines[1].endswith("lr 0.01,0.03,0.1,0.3") and lines[2].endswith("lr 5 from 0.01 to 1"), lines
    assert lines[3].endswith("lr 5 from 0.01 to 1"), lines  # given from the largest: its least to its greatest


def test_delete_jobs_and_a_sweep(jobs: dict[str, int], klab_cli, tmp_path: Path) -> None:
    path = tmp_path / "none.csv"  # the queued job's epochs: none, in the plural as every count but 1
    assert klab_cli("export", "--what", "epochs", str(jobs["queued"]), "-o", str(path))[1] == \
        f"wrote 0 epochs to {path}\n"
    assert klab_cli("delete", str(jobs["queued"])) == (0, "deleted 1 job and 0 epochs\n", "")
    assert klab_cli("delete", str(jobs["adam"])) == (0, "deleted 1 job and 10 epochs\n", "")
    code, out, _ = klab_cli("delete", "--sweep", str(jobs["sweep"]))
    assert (code, out) == (0, f"deleted 3 jobs and 30 epochs and sweep {jobs['sweep']}\n")
    assert json.loads(klab_cli("list", "--json")[1]) == []
    assert klab_cli("delete", "--sweep", str(jobs["sweep"]))[2] == f"klab: error: sweep: no sweep {jobs['sweep']}\n"
    with writing() as conn:
        empty = writes.create_sweep(conn, {"lr": [0.1]}, 1)
    assert klab_cli("compare", "--sweep", str(empty), "--group-by", "lr")[1].startswith(
        f"sweep {empty}: 0 jobs in 0 groups by lr")
    assert klab_cli("delete", "--sweep", str(empty)) == (0, f"deleted 0 jobs and 0 epochs and sweep {empty}\n", "")
    assert klab_cli("delete")[0] == 2


# --- tables ----------------------------------------------------------------------------------

def test_tables_align_wide_characters_by_the_columns_they_take() -> None:
    """A sweep named in Chinese (and an emoji) shifted every later column of `klab sweeps | cat` to the right: each
    wide character takes two columns of a terminal, and was padded as one; on a terminal rich cut the name to
    `学习 …`, its column sized by characters. Marks that combine (Thai, Devanagari) take none."""
    from service.render.table import display_width, plain, rich_table

    assert [display_width(t) for t in ("学习核 实验 🚀", "e\u0301", "ที่นี่", "abc")] == [14, 1, 2, 3]
    rows = [{"name": "学习核 实验 🚀", "jobs": 2, "tags": "日本"}, {"name": "ที่นี่", "jobs": 3, "tags": "-"},
            {"name": "book", "jobs": 10, "tags": "x"}]
    lines = plain(["name", "jobs", "tags"], rows).splitlines()
    assert lines == ["name            jobs  tags",
                     "学习核 实验 🚀     2  日本",
                     "ที่นี่" + " " * 17 + "3  -",
                     "book              10  x"], lines
    drawn = rich_table(["name", "jobs", "tags"], rows, force_terminal=False, width=120)
    assert "学习核 实验 🚀" in drawn and "…" not in drawn, drawn
    ends = [display_width(line[:line.index(n) + len(n)]) for line, n in zip(drawn.splitlines()[2:], ("2", "3", "10"))]
    assert ends == [display_width(drawn.splitlines()[0].split("tags")[0].rstrip())] * 3, drawn  # under "jobs"


@SQLITE_ONLY
def test_small_things_said_right(klab_db: str, klab_cli) -> None:
    """An lstsq job trains one epoch whatever its --epochs; `-o -` is stdout; `1,,2` is a typo; a sweep whose jobs
    were all deleted has no jobs (it was 'no such jobs'), and its groups' table keeps its headers."""
    assert klab_cli("run", "--method", "lstsq", "--epochs", "10")[0] == 0  # solved in one step, as it is
    solved = json.loads(klab_cli("list", "--json")[1])[0]["id"]
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"swept": {"seed": [0]}, "fixed": {}}, 1)
    assert klab_cli("status", str(solved))[1] == "1 job(s): 1 succeeded; 1 of 1 epochs trained\n"  # was 1 of 10
    code, out, _ = klab_cli("export", str(solved), "-o", "-")
    assert code == 0 and out.startswith("id,sweep_id,status") and not Path("-").exists()  # was a file named -
    assert klab_cli("export", "--ids", f"{solved},,2")[2] == f"klab: error: ids: must be job ids separated by " \
                                                              f"commas, got '{solved},,2'\n"
    assert klab_cli("status", "--sweep", str(sweep))[2] == f"klab: error: sweep: sweep {sweep} has no jobs\n"
    header = klab_cli("compare", "--sweep", str(sweep), "--group-by", "lr")[1].splitlines()[1]
    assert header.split()[:5] == ["lr", "jobs", "succeeded", "rel.", "error"]  # as a table with rows has them


def test_jobs_deleted_while_waiting_are_gone_not_a_mistake(jobs: dict[str, int], klab_cli) -> None:
    """`klab watch`, `submit --wait` and `sweep --wait` poll: a job there at the first look and deleted from another
    shell since ends the wait with exit 1 (it was `id: no job N`, exit 2, a mistake the user never made)."""
    from service.cli.progress import counts
    from service.errors import BadInput, Gone

    chosen = Selection(ids=(jobs["queued"],))
    assert counts(chosen)["by_status"] == {"queued": 1}
    assert klab_cli("delete", str(jobs["queued"]))[0] == 0
    with pytest.raises(BadInput, match=f"^id: no job {jobs['queued']}$"):
        counts(chosen)  # at the first look: the id given names no job
    with pytest.raises(Gone, match=f"^no job {jobs['queued']}: deleted while waiting for it"):
        counts(chosen, waited=True)
    assert klab_cli("delete", "--sweep", str(jobs["sweep"]))[0] == 0
    with pytest.raises(Gone, match=f"^no sweep {jobs['sweep']}: deleted while waiting"):
        counts(Selection(sweep=jobs["sweep"]), waited=True)


def test_output_that_cannot_be_written_is_one_line(klab_db: str, add_job, tmp_path: Path) -> None:
    """A full disk (/dev/full) under the output, of stdout or of export -o: one line, exit 1 (it was OSError)."""
    with writing() as conn:
        job = add_job(conn)
    env = clean_env(tmp_path, klab_db)
    for args in (("list",), ("show", str(job), "--json"), ("export", str(job), "-o", "/dev/full"),
                 ("export", str(job), "--what", "epochs")):
        with open("/dev/full", "w") as full:
            done = subprocess.run([klab_path(), *args], env=env, stdout=full, stderr=subprocess.PIPE, text=True,
                                  timeout=60)
        assert (done.returncode, done.stderr) == (1, "klab: error: cannot write the output: No space left on "
                                                     "device\n"), args


def test_output_cut_short_is_removed_and_one_line(klab_db: str, add_job, tmp_path: Path) -> None:
    """A write refused midway under export -o or plot -o (a full disk; here the file size limit, EFBIG, as the OS
    refuses it: Python ignores SIGXFSZ): one line, exit 1, and no file left, where there was a truncated CSV that
    read as a whole one, or an empty PNG (and plot called it a user's mistake, exit code 2)."""
    import resource

    with writing() as conn:
        job = add_job(conn, epochs=1000)
    env = clean_env(tmp_path, klab_db)
    for args in (("plot", str(job), "-o", "whole.png"), ("export", str(job), "--what", "epochs", "-o", "whole.csv")):
        whole = subprocess.run([klab_path(), *args], env=env, capture_output=True, text=True, timeout=120,
                               cwd=tmp_path)
        assert whole.returncode == 0, whole.stderr
    most = min((tmp_path / "whole.png").stat().st_size, (tmp_path / "whole.csv").stat().st_size) // 2

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (most, most))

    for args in (("export", str(job), "--what", "epochs", "-o"), ("plot", str(job), "-o")):
        out = tmp_path / ("cut.png" if args[0] == "plot" else "cut.csv")
        out.write_text("an earlier export\n")
        done = subprocess.run([klab_path(), *args, str(out)], env=env, capture_output=True, text=True, timeout=120,
                              preexec_fn=limited)
        assert (done.returncode, done.stderr) == (1, "klab: error: cannot write the output: File too large\n"), args
        assert not out.exists(), args
    link = tmp_path / "link.csv"  # the user's link to a file: the link kept, whatever became of the file
    link.symlink_to(tmp_path / "target.csv")
    done = subprocess.run([klab_path(), "export", str(job), "--what", "epochs", "-o", str(link)], env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=limited)
    assert done.returncode == 1 and link.is_symlink(), done.stderr


def test_tables_use_color_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": 1, "status": "succeeded", "lr": 0.1}, {"id": 2, "status": "diverged", "lr": None}]
    monkeypatch.delenv("NO_COLOR", raising=False)
    colored = tables.rich_table(["id", "status", "lr"], rows, force_terminal=True, width=60)
    assert "\x1b[32msucceeded" in colored and "\x1b[31mdiverged" in colored  # green, red
    assert set(tables.STATUS_STYLE) == set(JobStatus)  # every status coloured
    every = tables.rich_table(["id", "status"], [{"id": i, "status": s.value} for i, s in enumerate(JobStatus)],
                              force_terminal=True, width=60)
    assert "\x1b[35mcancelled" in every and "\x1b[33mrunning" in every and "\x1b[36mqueued" in every
    monkeypatch.setenv("NO_COLOR", "1")
    plain_colors = tables.rich_table(["id", "status", "lr"], rows, force_terminal=True, width=60)
    assert not re.search(r"\x1b\[(3\d|9\d)m", plain_colors) and "diverged" in plain_colors
    narrow = tables.rich_table(["id", "input", "final_loss"], [{"id": 1, "input": "image:/a/long/path/to/cat.png",
                                                                 "final_loss": 1.698e10}], width=24)
    assert "1.698e+10" in narrow and "image:/…" in narrow  # free text gives way, numbers never do
    narrower = tables.rich_table(["id", "method", "input", "final_loss"], [
        {"id": 1, "method": "d2l-manual", "input": "image:/a/long/path/to/cat.png", "final_loss": 1.698e10}], width=10)
    assert "image:/…" in narrower and "d2l-man…" in narrower  # the method too, and none below 8 characters
    assert tables.plain(["id", "status", "lr"], rows).splitlines() == [
        "id  status      lr", " 1  succeeded  0.1", " 2  diverged     -"]
    no_kernels = [{"id": 1, "kernel": None, "lr": 0.1}, {"id": 12, "kernel": None, "lr": 0.03}]
    assert tables.plain(["id", "kernel", "lr"], no_kernels).splitlines() == [  # a text field of dashes alone
        "id  kernel    lr", " 1  -        0.1", "12  -       0.03"]
    assert tables.plain(["id", "final_loss"], [{"id": 1, "final_loss": None}]).splitlines() == [
        "id  final loss", " 1           -"]  # a number field of dashes alone: its kind, not its rows, aligns it
    assert tables.plain(["id", "seed"], [{"id": 1, "seed": 7}, {"id": 2, "seed": 12345}]).splitlines() == [
        "id   seed", " 1      7", " 2  12345"]  # a seed (a bigint) is a number: right-aligned
    assert tables.plain(["lr", "jobs"], [{"lr": 0.1, "jobs": 3}, {"lr": 1.0, "jobs": None}]).splitlines() == [
        " lr  jobs", "0.1     3", "  1     -"]  # a computed column (compare --group-by): its values align it


# --- the real command, in other processes ------------------------------------------------------

def test_read_commands_import_neither_torch_nor_sqlalchemy(db_url: str, add_job, tmp_path: Path) -> None:
    """The read commands run on the driver alone (service.reader): that is what makes them start fast."""
    upgrade(db_url)
    with writing(db_url) as conn:
        job = add_job(conn)
    script = f"""
import json, sys
from service.cli import main
for args in (["list"], ["show", "{job}"], ["compare", "{job}"], ["export", "--ids", "{job}", "--what", "epochs"],
             ["status", "{job}"], ["db", "current"], ["sweeps"], ["compare", "{job}", "--group-by", "lr,seed"],
             ["list", "--tag", "t"], ["list", "--method", "adam", "--kernel", "sobel-x"]):
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
print(json.dumps(sorted(m for m in ("torch", "worker.engine", "matplotlib", "celery", "sqlalchemy", "alembic",
                                    "numpy", "pydantic") if m in sys.modules)))
"""
    env = clean_env(tmp_path, db_url)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "job_id,epoch" in out.stdout and "1 job(s): 1 succeeded" in out.stdout  # the commands really ran
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_times_are_utc_whatever_the_session_time_zone(jobs: dict[str, int], klab_db: str, tmp_path: Path) -> None:
    """show, export and sweeps print times in UTC on both databases: SQLite keeps no offset, and PostgreSQL
    answers in its session's time zone (here New York's, five hours behind UTC in December)."""
    job = stored(jobs["blown"])
    env = clean_env(tmp_path / "home", klab_db, PGOPTIONS="-c timezone=America/New_York")
    created = utc(job.created_at)
    shown = json.loads(klab_proc(env, "show", str(job.id), "--json").stdout)
    assert shown["created_at"] == created.isoformat() and shown["created_at"].endswith("+00:00")
    text = klab_proc(env, "show", str(job.id)).stdout
    assert f"created {created:%Y-%m-%d %H:%M:%S} UTC, finished " in text
    exported = json.loads(klab_proc(env, "export", "--ids", str(job.id), "--format", "json").stdout)
    assert exported[0]["created_at"] == created.isoformat()
    sweep = json.loads(klab_proc(env, "sweeps", "--json").stdout)[0]
    with writing() as conn:
        sweep_created = conn.execute(select(sweeps_table.c.created_at)
                                     .where(sweeps_table.c.id == jobs["sweep"])).scalar_one()
    assert sweep["id"] == jobs["sweep"] and sweep["created_at"] == utc(sweep_created).isoformat()


def test_run_json_then_show_json_agree(db_url: str, klab_env: dict[str, str]) -> None:
    upgrade(db_url)
    ran = klab_proc(klab_env, "run", "--json", "--kernel", "sobel-x", "--input", "random:6x6", "--epochs", "12",
                    "--lr", "0.02")
    assert ran.returncode == 0, ran.stderr
    ran_json = json.loads(ran.stdout)
    shown = klab_proc(klab_env, "show", str(ran_json["id"]), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == ran_json  # the same renderer, the same stored row
    assert len(ran_json["epochs"]) == 12


def test_the_real_command_reads_postgresql(pg_url: str, add_job, tmp_path: Path) -> None:
    upgrade(pg_url)
    with writing(pg_url) as conn:
        sweep = writes.create_sweep(conn, {"seed": [1, 2]}, 2)
        first, second = add_job(conn, sweep_id=sweep, seed=1, relative=0.3), add_job(conn, sweep_id=sweep, seed=2)
    env = clean_env(tmp_path / "home", pg_url)
    listed = klab_proc(env, "list", "--json")
    assert listed.returncode == 0 and [r["id"] for r in json.loads(listed.stdout)] == [second, first]
    exported = klab_proc(env, "export", "--sweep", str(sweep), "--what", "epochs", "-o", str(tmp_path / "e.csv"))
    assert exported.returncode == 0 and len((tmp_path / "e.csv").read_text().splitlines()) == 21
    assert not (tmp_path / "home" / "klab.db").exists()  # it used PostgreSQL, not the default


def test_every_command_output_goes_through_a_closed_pipe_cleanly(klab_db: str, add_job, tmp_path: Path) -> None:
    """`klab ... | head -1`: the reader goes away after one line; nothing is printed on stderr (no 'Exception
    ignored', no traceback from a stream closed after its connection). The outputs of list, compare and export
    exceed a pipe's buffer (64 KiB), so the pipe is closed while the command still writes (list's of 120 jobs, 11 KB,
    passed with the closed pipe's error raised); show's and status's are a few lines, written whole before."""
    from harness import klab_path

    with writing() as conn:
        sweep = writes.create_sweep(conn, {"seed": list(range(1000))}, 1000)
        ids = [add_job(conn, sweep_id=sweep, seed=s, epochs=400 if s < 120 else 2) for s in range(1000)]
    env = clean_env(tmp_path / "home", klab_db)
    for args in (["list", "--limit", "0"], ["compare", "--sweep", str(sweep)]):
        whole = subprocess.run([klab_path(), *args], env=env, capture_output=True, timeout=60)
        assert whole.returncode == 0 and len(whole.stdout) > 65536 + 16384, (args, len(whole.stdout), whole.stderr)
    commands = [["list", "--limit", "0"], ["compare", "--sweep", str(sweep)], ["show", str(ids[0])],
                ["status", "--sweep", str(sweep)]]
    commands += [["export", "--sweep", str(sweep), "--what", w, "--format", f]
                 for w in ("jobs", "epochs") for f in ("csv", "json")]
    for args in commands:
        proc = subprocess.Popen([klab_path(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                bufsize=0)  # a line read, not a buffer's worth more
        first = proc.stdout.readline()
        proc.stdout.close()  # what `head -1` does
        err = proc.stderr.read().decode()
        proc.wait(60)
        assert first, args
        assert err == "", (args, err)
        assert proc.returncode == 0, (args, proc.returncode)  # what was read was written: not an error


@SQLITE_ONLY
def test_list_refuses_an_unknown_filter_value_as_it_refuses_an_unknown_status(jobs: dict[str, int], klab_cli) -> None:
    for args, field in ((["--method", "adamw"], "method"), (["--status", "succeded"], "status"),
                        (["--kernel", "sobel-z"], "kernel")):
        code, out, err = klab_cli("list", *args)
        assert code == 2 and out == "" and err.startswith(f"klab: error: {field}: unknown "), (args, err)
    code, out, err = klab_cli("list", "--method", "d2l-manual", "--kernel", "random:3x3", "--json")
    assert code == 0 and len(json.loads(out)) == 4  # known values that match: the jobs come back


@SQLITE_ONLY
def test_list_kernel_none_lists_the_jobs_given_labels_and_no_kernel(jobs: dict[str, int], klab_cli,
                                                                    tmp_path: Path) -> None:
    """`--kernel none` is how a job is submitted without a true kernel; the same words find those jobs."""
    import numpy as np

    np.save(tmp_path / "y.npy", np.zeros((8, 6)))
    code, out, err = klab_cli("run", "--input", "random:8x8", "--kernel", "none", "--labels",
                              f"npy:{tmp_path / 'y.npy'}", "--method", "lstsq", "--json")
    assert code == 0, err
    labelled = json.loads(out)["id"]
    for given in ("none", "NONE", " None "):
        code, out, err = klab_cli("list", "--kernel", given, "--json")
        assert code == 0, err
        assert [(r["id"], r["kernel"]) for r in json.loads(out)] == [(labelled, None)], given
    code, out, err = klab_cli("list", "--kernel", "random:3x3", "--json")
    assert code == 0 and labelled not in {r["id"] for r in json.loads(out)} and len(json.loads(out)) == 4
    code, out, err = klab_cli("list", "--kernel", " random:3x3 ", "--json")  # as `run --kernel ' random:3x3 '` keeps it
    assert code == 0 and len(json.loads(out)) == 4, (out, err)  # was: no jobs


def test_list_kernel_finds_a_literal_whatever_its_spaces(klab_db: str, add_job, klab_cli) -> None:
    long = json.dumps([[round(0.001 * (i + 1) * (j + 1), 3) for j in range(7)] for i in range(7)])
    longer = long[:-3] + "5]]"  # alike in their first 300 characters, which the column kept before 0013
    assert len(long) > 300 and long != longer
    with writing() as conn:
        tight = add_job(conn, kernel="[[1,-1]]")
        spaced = add_job(conn, kernel="[[1, -1]]")
        other = add_job(conn, kernel="[[1, -1, 0]]")
        cut = add_job(conn, kernel=long, input="random:12x12")
        last = add_job(conn, kernel=longer, input="random:12x12")

    def ids(kernel: str) -> list[int]:
        code, out, err = klab_cli("list", "--kernel", kernel, "--json")
        assert code == 0, err
        return sorted(r["id"] for r in json.loads(out))

    assert ids("[[1,-1]]") == ids("[[1, -1]]") == ids(" [ [1 , -1] ] ") == [tight, spaced]
    assert ids("[[1,-1,0]]") == [other]
    assert ids(long) == ids(long.replace(" ", "")) == [cut] and ids(longer) == [last]
    assert ids("[[1, 1]]") == []
    code, out, err = klab_cli("compare", str(cut), str(last), "--group-by", "kernel", "--json")
    assert code == 0 and sorted(g["kernel"] for g in json.loads(out)) == sorted([long, longer]), (out, err)
    code, out, err = klab_cli("export", str(cut), "--format", "json")
    assert code == 0 and json.loads(json.loads(out)[0]["kernel"]) == json.loads(long)  # was cut: no JSON


def test_a_kernel_literal_is_one_kernel_whatever_the_spelling_of_its_numbers(klab_db: str, klab_cli,
                                                                              tmp_path) -> None:
    """`[[1, 0.5e-1]]` typed and `kernel: [[1.0, 0.05]]` from a file (kept as json.dumps wrote it) were kept as
    given: `klab list --kernel '[[1, 0.05]]'` found one of them, `compare --group-by kernel` made two groups of the
    one kernel. Each is kept as the numbers it trains with (test_bad_input: a sweep refuses the two)."""
    (tmp_path / "job.yaml").write_text("kernel: [[1.0, 0.05]]\nepochs: 2\n")
    ids = []
    for args in (("--kernel", "[[1, 0.5e-1]]"), ("-f", str(tmp_path / "job.yaml")), ("--kernel", " [[1.00,5E-2]] ")):
        code, out, err = klab_cli("run", *args, "--epochs", "2", "--json")
        assert code == 0, err
        ids.append(json.loads(out)["id"])
        assert json.loads(out)["spec"]["kernel"] == "[[1, 0.05]]", out
    for given in ("[[1, 0.05]]", "[[1,5e-2]]", "[[1.0, 0.050]]"):
        code, out, err = klab_cli("list", "--kernel", given, "--json")
        assert code == 0 and sorted(r["id"] for r in json.loads(out)) == ids, (given, out, err)
    code, out, err = klab_cli("compare", *map(str, ids), "--group-by", "kernel", "--json")
    assert code == 0 and [(g["kernel"], g["jobs"]) for g in json.loads(out)] == [("[[1, 0.05]]", 3)], (out, err)


def test_a_made_input_and_a_random_kernel_are_kept_by_their_numbers(klab_db: str, klab_cli) -> None:
    """`edge:06x8` trained as `edge:6x8` and was kept as typed: `compare --group-by input` made two groups of one
    input, `klab list --kernel random:2x2` missed the jobs given `random:02x2`."""
    ids = []
    for given in (("edge:06x8", "random:02x2"), ("edge:6x8", "random:2x02"), ("edge:6x08", "random:2x2")):
        code, out, err = klab_cli("run", "--input", given[0], "--kernel", given[1], "--epochs", "2", "--json")
        assert code == 0, err
        ids.append(json.loads(out)["id"])
        assert [json.loads(out)["spec"][f] for f in ("input", "kernel")] == ["edge:6x8", "random:2x2"], out
    for kernel in ("random:2x2", "random:002x2"):
        code, out, err = klab_cli("list", "--kernel", kernel, "--json")
        assert code == 0 and sorted(r["id"] for r in json.loads(out)) == ids, (kernel, out, err)
    code, out, err = klab_cli("compare", *map(str, ids), "--group-by", "input,kernel", "--json")
    assert code == 0 and [(g["input"], g["kernel"], g["jobs"]) for g in json.loads(out)] == [
        ("edge:6x8", "random:2x2", 3)], (out, err)


def test_a_sweeps_kernel_literals_are_kept_by_their_numbers_and_its_messages_quote_them_as_typed() -> None:
    """The sweep's params keep its literals as its jobs do; a message about one quotes it as typed, not as kept
    (`the sweep's value '[[1, 2]]'` for a `[[1.0,2.0]]` typed)."""
    from service.errors import BadInput
    from service.jobs.sweep import grid
    from service.submit import plan_sweep

    g = grid({"kernel": "[[1.0,2.0]],[[0.5E1,-0]]", "input": "random:3x8x8"})
    assert g.params() == {"swept": {"kernel": ["[[1, 2]]", "[[5, 0]]"]}, "fixed": {"input": "random:3x8x8"}}
    with pytest.raises(BadInput, match=r"^kernel: has 1 input channel\(s\) but the input has 3 \(the sweep's value "
                                       r"'\[\[1.0,2.0\]\]'\)$"):
        plan_sweep(g, None)
    assert grid({"kernel": "[[1e0, 2]]", "seed": "1,2"}).params()["fixed"] == {"kernel": "[[1, 2]]"}


def test_a_text_column_of_dashes_alone_stays_left_and_a_column_named_numbers_goes_right() -> None:
    """`klab sweeps` of unnamed, untagged sweeps keeps its name and tags columns on the left; compare --group-by's
    std of one job a group (dashes alone) is right-aligned as the numbers of its neighbours."""
    from service.render import table

    head, row = table.plain(["name", "std"], [{"name": None, "std": None}], numbers=["std"]).splitlines()
    assert (head, row) == ("name  std", "-       -")


def test_watch_draws_its_bar_on_the_terminal_of_stderr_and_writes_nothing_else_to_stdout(klab_db: str, add_job,
                                                                                       tmp_path: Path) -> None:
    """stderr a terminal, stdout a pipe (`klab watch ... > counts.txt`): the bar went to stdout (rich's default),
    where it was drawn nowhere and left a blank line before the counts."""
    with writing() as conn:
        job = add_job(conn)
    env = {k: v for k, v in clean_env(tmp_path / "home", klab_db).items() if k != "NO_COLOR"}  # a bar, not lines
    done, _ = with_terminal_stderr([klab_path(), "watch", str(job)], {**env, "TERM": "xterm"})
    assert done.returncode == 0 and done.stdout.decode() == "1 job(s): 1 succeeded; 10 of 10 epochs trained\n"


def test_a_path_holding_a_newline_or_an_escape_stays_on_its_row(klab_db: str, klab_cli, tmp_path: Path) -> None:
    """A file named with a newline, a carriage return and an escape sequence: `klab list` drew a row of its own for
    what followed the newline, and every command played the escape on the terminal."""
    import numpy as np

    odd = tmp_path / "b\nfake row\r\x1b[31m.npy"
    np.save(odd, np.random.default_rng(0).random((6, 8)))
    assert klab_cli("run", "--input", f"npy:{odd}", "--epochs", "2")[0] == 0
    shown = f"npy:{tmp_path}/b\\nfake row\\r\\x1b[31m.npy"
    for args in (("list",), ("show", "1"), ("compare", "1"), ("compare", "--group-by", "input", "1")):
        code, out, err = klab_cli(*args)
        rows = [line for line in out.splitlines() if "fake row" in line]
        assert code == 0 and "\x1b" not in out and "\r" not in out and len(rows) == 1, (args, out)
        assert shown in rows[0], (args, rows)
    assert json.loads(klab_cli("list", "--json")[1])[0]["input"] == f"npy:{odd}"  # the data keep the name as it is


def test_requeue_of_an_empty_database_sends_nothing_and_says_so(klab_db: str, klab_cli, setenv, redis_url) -> None:
    setenv(KLAB_BROKER_URL=redis_url)
    assert klab_cli("requeue") == (0, "queued 0 job(s)\n", "")  # then `id: no such jobs`, exit 2
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"seed": [1, 2]}, 2)  # its jobs all deleted
    assert klab_cli("requeue", "--sweep", str(sweep)) == (0, "queued 0 job(s)\n", "")  # `sweep N has no jobs`


def test_a_cosine_under_1_never_reads_1() -> None:
    """0.9999838957684337 printed `cosine 1`: a kernel exactly aligned with the true one."""
    from service.render.text import shown_value

    assert shown_value("cosine", 0.9999838957684337, 1.0) == "0.99998"
    assert shown_value("cosine", -0.9999838957684337, 1.0) == "-0.99998"
    assert shown_value("cosine", 0.5, 1.0) == "0.5" and shown_value("cosine", 1.0, 1.0) == 1.0
    assert shown_value("cosine", 0.0, 1.0) == "0"  # orthogonal: never -0
    # an angle under the weights' float32 rounding (an exact lstsq fit's, whose distances read 0) reads 1
    assert shown_value("cosine", 0.9999999999999998, 1.0) == 1.0 and shown_value("cosine", -(1 - 2e-16), 1.0) == -1.0
    assert shown_value("cosine", 1 - 1e-13, 1.0) == "0.9999999999999"


def test_watch_away_from_a_terminal_says_the_same_counts_once(klab_db: str, add_job, klab_cli, monkeypatch,
                                                              setenv, redis_url) -> None:
    """`klab watch 1 2>log` on a job that waits: its count line once, not again every LINE_SECONDS while nothing
    changes; then the line of its end."""
    import threading

    import service.cli.progress as progress

    setenv(KLAB_BROKER_URL=redis_url)
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.05)
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.05)
    with writing() as conn:
        job = add_job(conn, relative=None, status="queued")

    looks, counts = [], progress.counts

    def counted(*args, **kwargs):
        looks.append(1)
        return counts(*args, **kwargs)

    monkeypatch.setattr(progress, "counts", counted)

    def cancel_later() -> None:
        wait_until(lambda: len(looks) >= 6, 60, "six looks")  # the counts the same in each, LINE_SECONDS apart
        with writing() as conn:
            writes.cancel(conn, Selection(ids=(job,)))

    later = threading.Thread(target=cancel_later)
    later.start()
    code, out, err = klab_cli("watch", str(job))
    later.join()
    assert (code, out) == (0, "1 job(s): 1 cancelled; 0 of 10 epochs trained\n"), (out, err)
    assert err.splitlines() == ["1 job(s): 1 queued; epochs 0/10 (0%)"], err


def test_an_output_stopped_by_ctrl_c_is_removed_and_a_png_named_in_capitals_is_one(klab_db: str, add_job, klab_cli,
                                                                                   tmp_path: Path) -> None:
    from service.cli.results import _output

    cut = tmp_path / "cut.csv"
    with pytest.raises(KeyboardInterrupt), _output(str(cut)) as f:
        f.write("id\n1\n")
        raise KeyboardInterrupt
    assert not cut.exists()
    with writing() as conn:
        job = add_job(conn)
    assert klab_cli("plot", str(job), "-o", str(tmp_path / "FIG.PNG"))[0] == 0
    assert (tmp_path / "FIG.PNG").read_bytes().startswith(b"\x89PNG")


def test_plot_overlays_the_jobs_in_the_order_given(klab_db: str, add_job, klab_cli, monkeypatch,
                                                    tmp_path: Path) -> None:
    """`klab plot 5 3`: job 5 first (its colour, its place in the legend and the title's `job 5 ... to job 3`)."""
    from service.render import plot

    with writing() as conn:
        first, second = add_job(conn, seed=1), add_job(conn, seed=2)
    drawn, figure_jobs = [], plot.figure_jobs
    monkeypatch.setattr(plot, "figure_jobs", lambda results: drawn.append([r["id"] for r in results])
                        or figure_jobs(results))
    assert klab_cli("plot", str(second), str(first), "-o", str(tmp_path / "two.png"))[0] == 0
    assert drawn == [[second, first]]
