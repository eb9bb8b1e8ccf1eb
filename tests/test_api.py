"""klab from Python: the book's numbers, DataFrames of stored jobs, arrays and tensors in, one exception for bad
input, submit and sweep through a real worker, and an import that loads neither torch, pandas nor matplotlib."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import traceback
import warnings
from decimal import Decimal
from html import escape
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from harness import ROOT, with_terminal_stderr
from PIL import Image
from test_engine import book_data, book_manual, book_sgd
from test_worker import service_env, workers  # noqa: F401 (fixtures: a service of the test's own, its workers)

import klab
import klab.figure
from service import errors
from service.db.engine import writing
from service.db.writes import create_sweep
from service.jobs.result import EPOCH_NAMES, SUMMARY_NAMES
from service.jobs.status import JobStatus

BOOK = {"input": "edge:6x8", "kernel": "d2l"}


@pytest.fixture
def home(tmp_path: Path, setenv) -> Path:
    """A KLAB_HOME of the test's own: arrays passed to klab are saved there."""
    setenv(KLAB_HOME=str(tmp_path / "home"))
    return tmp_path / "home"


def test_run_stores_the_books_first_loop_at_a_seed(klab_db):
    r = klab.run(**BOOK, method="d2l-manual", lr=0.03, epochs=10, seed=0)
    losses, kernel = book_manual(0)
    np.testing.assert_allclose(r.epochs["loss"], losses, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r.learned_kernel, kernel, rtol=1e-6, atol=1e-6)
    assert r.id is not None and r.status is JobStatus.SUCCEEDED
    np.testing.assert_array_equal(r.true_kernel, [[1.0, -1.0]])
    assert r.identifiability == {"rank": 2, "params": 2, "identifiable": True}
    assert list(r.epochs.columns) == ["epoch", "loss", "mse", "kernel_error"]
    assert r.epochs["epoch"].tolist() == list(range(1, 11))
    stored = klab.show(r.id)
    assert stored.data == r.data
    np.testing.assert_array_equal(stored.initial_kernel, r.initial_kernel)


def test_run_without_storing_gives_the_books_second_loop(home):
    r = klab.run(**BOOK, method="d2l-sgd", lr=0.03, epochs=16, batch_size=2, seed=1, store=False)
    losses, kernel = book_sgd(1)
    np.testing.assert_allclose(r.epochs["loss"], losses, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r.learned_kernel, kernel, rtol=1e-6, atol=1e-6)
    assert r.id is None and r.spec["method"] == "d2l-sgd" and r.spec["batch_size"] == 2
    assert r.converged_epoch is None  # any key of `klab show --json` reads as an attribute
    assert set(r.gap) == {"optimization", "noise", "identifiability"}
    assert set(r.pace) == {"stable_lr", "convergence_rate", "more_epochs"}


def test_a_numpy_image_and_kernel_give_the_exact_kernel_by_least_squares(home):
    rng = np.random.default_rng(7)
    image, kernel = rng.standard_normal((8, 9)), rng.standard_normal((3, 3))
    r = klab.run(input=image, kernel=kernel, method="lstsq", store=False)
    np.testing.assert_allclose(r.lstsq_kernel, kernel, atol=1e-5)
    np.testing.assert_array_equal(r.learned_kernel, r.lstsq_kernel)
    assert r.identifiability == {"rank": 9, "params": 9, "identifiable": True}
    # the spec names the file the array was saved as: the same job again from the command line
    path = Path(r.spec["input"].removeprefix("npy:"))
    assert path.parent == home / "arrays"
    np.testing.assert_array_equal(np.load(path), image)


def test_a_torch_tensor_trains_as_the_same_image_given_by_name(home):
    """Neither the image nor the kernel is the default's (the book's were: tensors dropped on the way trained the
    defaults, and passed)."""
    from service.jobs import inputs

    image, _ = inputs.parse_input("diagonal:6x8", 0)
    tensor = torch.tensor(image).requires_grad_(True)  # a tensor that needs .detach() before numpy
    r = klab.run(input=tensor, kernel=torch.tensor([[0.5, 2.0]]), epochs=10, store=False)
    named = klab.run(input="diagonal:6x8", kernel=[[0.5, 2.0]], epochs=10, store=False)
    assert r.true_kernel.tolist() == [[0.5, 2.0]] and r.spec["input"] != "edge:6x8", r.spec
    assert r.epochs["loss"].tolist() == named.epochs["loss"].tolist()
    np.testing.assert_array_equal(r.learned_kernel, named.learned_kernel)


def test_a_kernel_of_nested_tuples_is_the_kernel_of_nested_lists(home):
    as_tuples = klab.run(kernel=((2.0, -3.0),), epochs=2, store=False)  # was 'kernel: must be a string'
    assert as_tuples.true_kernel.tolist() == [[2.0, -3.0]]  # not the default's, which a kernel dropped trains
    np.testing.assert_array_equal(as_tuples.learned_kernel, klab.run(kernel=[[2, -3]], epochs=2,
                                                                      store=False).learned_kernel)


def test_labels_without_a_kernel_learn_the_kernel_they_were_made_with(home):
    x, k, y = book_data()
    r = klab.run(input=x.numpy(), labels=y.numpy(), method="lstsq", store=False)
    assert r.true_kernel is None and r.spec["kernel"] is None
    np.testing.assert_allclose(r.learned_kernel, k.numpy(), atol=1e-6)


BAD = [
    # (id, call, the field named, words the one line must hold)
    ("negative-lr", lambda: klab.run(lr=-0.1, store=False), "lr", "greater than 0"),
    ("nan-image", lambda: klab.run(input=np.full((6, 8), np.nan), store=False), "input", "NaN"),
    ("complex-image", lambda: klab.run(input=np.ones((6, 8), complex), store=False), "input",
     "the array holds complex128 values"),
    ("object-array", lambda: klab.run(input=np.array([{"a": 1}, 2], dtype=object), store=False), "input",
     "the array holds Python objects"),
    ("one-dimensional", lambda: klab.run(input=np.ones(8), store=False), "input", "got 1 dimensions"),
    ("kernel-limit", lambda: klab.run(input=np.ones((80, 80)), kernel=np.ones((70, 70)), store=False), "kernel",
     "more than the limit 4096"),
    ("labels-shape", lambda: klab.run(**BOOK, labels=np.zeros((6, 6)), store=False), "labels", "do not fit"),
    ("three-d-kernel", lambda: klab.run(kernel=torch.ones((1, 1, 2)), store=False), "kernel", "must be 2-D or 4-D"),
    ("unknown-field", lambda: klab.submit(jobs=[{"learning_rate": 0.1}]), "learning_rate", "unknown field"),  # as
    # written: it was learning-rate, a flag no command has
    ("unknown-keyword", lambda: klab.submit(foo_bar=1), "foo_bar", "unknown field"),
    ("sweep-values", lambda: klab.run(seed=[1, 2], store=False), "seed",
     "several values make a sweep: klab.sweep(...)"),
    ("sweep-text", lambda: klab.submit(lr="0.1,0.2"), "lr", "several values make a sweep: klab.sweep(...)"),
    ("sweep-kernels", lambda: klab.run(kernel="d2l,sobel-x", store=False), "kernel",
     "several values make a sweep: klab.sweep(...)"),
    ("unknown-filter", lambda: klab.jobs(colour="red"), "colour", "unknown filter"),
    ("a-filter-of-a-list", lambda: klab.jobs(lr=[0.03]), "lr", "a filter of lr is a number or None"),  # sqlite3's
    ("a-filter-of-text-for-a-number", lambda: klab.jobs(lr="abc"), "lr", "got 'abc'"),  # psycopg's error, or none
    ("a-flag-for-a-number", lambda: klab.jobs(seed=True), "seed",  # a bool is an int: it filtered as seed 1
     "a filter of seed is a whole number or None, got True"),
    ("a-filter-of-text-for-a-flag", lambda: klab.jobs(identifiable="yes"), "identifiable",  # true on PostgreSQL only
     "a filter of identifiable is True or False or None, got 'yes'"),
    ("a-filter-past-64-bits", lambda: klab.jobs(sweep_id=2**70), "sweep_id", "past what a column holds"),
    ("a-filter-of-a-timestamp", lambda: klab.jobs(created_at=np.datetime64("2026-01-01T00:00:00")), "created_at",
     "got datetime"),
    ("a-set-of-values", lambda: klab.sweep(lr={0.01, 0.02}, local=True), "lr", "not a set"),
    ("a-frame-of-values", lambda: klab.sweep(seed=__import__("pandas").DataFrame({"s": [1]}), local=True), "seed",
     "not a DataFrame"),
    ("an-unknown-field-swept", lambda: klab.sweep(lrs=[0.1, 0.2], local=True), "lrs", "unknown field; did you mean lr"),
    ("a-plot-of-no-epochs", lambda: klab.Result({"id": 3, "status": "queued", "epochs": []}).plot(), "id",
     "job 3 has no epochs to plot (it is queued)"),  # was an empty figure; klab plot 3 refuses it so
    ("a-tag-with-a-comma", lambda: klab.sweep(seed=range(2), tags=["a,b"], local=True), "tags",
     "give them as a list (tags=['a', 'b'])"),  # in Python's words, not --tag a --tag b
    ("cuda-to-the-cpu-queue", lambda: klab.submit(device="cuda", queue="cpu"), "queue",
     'a device="cuda" job goes to the gpu queue (queue="gpu", or leave queue out)'),
    ("no-kernel-and-no-labels", lambda: klab.run(kernel="none", store=False), "kernel",
     "give a true kernel, or labels (labels=...)"),
    ("batch-size-zero", lambda: klab.run(batch_size=0, store=False), "batch_size", "greater than 0"),  # the keyword
    ("ids-and-a-sweep", lambda: klab.jobs([1], sweep=1), "ids", "give job ids or a sweep (sweep=...), not both"),
    ("a-handle-of-no-job", lambda: klab.Handle(()), "ids", "a Handle holds the ids of jobs"),  # was every job
    ("a-timeout-as-text", lambda: klab.Handle((1,)).wait(timeout="1"), "timeout", "got '1'"),  # was a TypeError
    ("a-method-no-job-has", lambda: klab.jobs(method="sgd"), "method", "unknown method 'sgd'"),  # was: no jobs
    ("a-kernel-no-job-has", lambda: klab.jobs(kernel="sobel"), "kernel", "unknown kernel 'sobel'"),
    ("unknown-job", lambda: klab.show(999), "id", "no job 999"),
    ("unknown-sweep", lambda: klab.jobs(sweep=42), "sweep", "no sweep 42"),
    ("a-job-past-64-bits", lambda: klab.show(2**64), "id", f"no job {2**64}"),  # SQLite's driver cannot bind it
    ("a-sweep-past-64-bits", lambda: klab.jobs(sweep=2**64), "sweep", f"no sweep {2**64}"),
    ("an-id-as-text", lambda: klab.show("12"), "id", "an id is a whole number, got '12'"),
    ("ids-as-text", lambda: klab.jobs("12"), "ids", "an id is a whole number, got '12'"),  # not jobs 1 and 2
    ("an-id-not-whole", lambda: klab.epochs(1.0), "ids", "an id is a whole number, got 1.0"),
    ("ids-as-bytes", lambda: klab.jobs(b"\x01\x02"), "ids", "ids are a job's id or a list of them, got b'\\x01"),
    # iterated as numbers: jobs 1 and 2
    ("ids-as-a-bytearray", lambda: klab.epochs(bytearray(b"\x03")), "ids", "a list of them, got bytearray("),
    ("ids-as-a-dict", lambda: klab.jobs({2: "x"}), "ids", "a list of them, got {2: 'x'}"),  # its keys: job 2
    ("ids-as-a-memoryview", lambda: klab.jobs(memoryview(b"\x01\x02")), "ids",
     "a list of them, got a memoryview of shape (2,)"),
    ("a-handle-of-a-memoryview", lambda: klab.Handle(memoryview(b"\x01")), "ids", "a Handle holds a tuple of job "
     "ids, got a memoryview of shape (1,)"),
    ("a-tag-filter-to-jobs", lambda: klab.jobs(tag="x"), "tag", "tag: unknown filter; choose from id, "),  # named
    # tags, a keyword klab.jobs has not
    ("a-handle-of-a-dict", lambda: klab.Handle({921: "x"}), "ids", "a Handle holds a tuple of job ids, got {921: "),
    ("an-empty-range", lambda: klab.sweep(seed=range(0), local=True), "seed", "no value given"),
    ("a-long-sweep-name", lambda: klab.sweep(seed=range(2), name="x" * 201, local=True), "name",
     "a sweep's name has 1 to 200 characters"),
    ("a-tag-not-text", lambda: klab.sweep(seed=range(2), tags=[1], local=True), "tags", "a tag is text, got 1"),
    ("a-range-to-run", lambda: klab.run(seed=range(3), store=False), "seed",
     "a valid integer; several values make a sweep: klab.sweep(...)"),  # as a list was told; a range was not
    ("an-array-to-submit", lambda: klab.submit(lr=np.array([0.1, 0.2])), "lr", "several values make a sweep"),
    ("tags-not-texts", lambda: klab.sweep(seed=range(2), tags=5, local=True), "tags", "tags are texts, or one text, "
     "got 5"),  # was a TypeError from service/
    ("a-timeout-of-nan", lambda: klab.Handle((1,)).wait(timeout=float("nan")), "timeout", "got nan"),  # never ended
    ("cancel-of-no-job", lambda: klab.Handle((999,)).cancel(), "id", "no job 999"),  # was (0, 0), where klab cancel
    # says so
    ("jobs-not-a-list", lambda: klab.submit(jobs={"seed": 1}), "jobs", "got dict; one job's values go as keywords"),
    ("a-job-not-a-mapping", lambda: klab.submit(jobs=[{"seed": 1}, 2]), "jobs", "job 2 is of type int"),
    ("a-list-item-holding-a-comma", lambda: klab.sweep(seed=["1,2"], local=True), "seed",
     "the item '1,2' holds a comma, which separates a sweep's values"),  # it swept seeds 1 and 2
    ("a-path-holding-a-comma", lambda: klab.sweep(input=["edge:6x8", "image:/a,b.png"], local=True), "input",
     "the item 'image:/a,b.png' holds a comma"),  # it was split in two, neither of them the file
    ("a-handle-of-text", lambda: klab.Handle("12").status(), "ids", "a Handle holds a tuple of job ids, got '12'"),
    # it counted jobs 1 and 2 (and its cancel would have cancelled them)
    ("a-handle-of-a-fraction", lambda: klab.Handle((1.5,)), "ids", "an id is a whole number, got 1.5"),  # job 1
    ("a-handle-of-a-bool", lambda: klab.Handle((True,)), "ids", "an id is a whole number, got True"),
    ("a-handle-of-a-sweep-as-text", lambda: klab.Handle((), sweep="2"), "sweep", "a whole number, got '2'"),
    ("an-unknown-keyword-to-run", lambda: klab.run(foo=1), "foo", "run() takes no such keyword; it takes input, "),
    # it was Python's TypeError, where klab.submit(foo=1) named the field
    ("a-misspelled-keyword", lambda: klab.run(epochz=1), "epochz", "did you mean epochs?"),
    ("a-keyword-a-read-has-not", lambda: klab.epochs(status="succeeded"), "status", "it takes ids, sweep"),
    ("a-positional-value-too-many", lambda: klab.sweeps(1), "sweeps", "too many positional arguments"),
    ("a-meta-tensor", lambda: klab.run(input=torch.zeros(6, 8, device="meta"), store=False), "input",
     "the array cannot be read as numbers: Cannot copy out of meta tensor"),  # torch's NotImplementedError
    ("a-sparse-tensor", lambda: klab.run(input=torch.eye(6).to_sparse(), store=False), "input",
     "the array cannot be read as numbers"),  # torch's TypeError
    ("a-masked-array-of-lrs", lambda: klab.sweep(lr=np.ma.array([0.1, 0.2], mask=[False, True]), local=True), "lr",
     "the array is masked"),  # its masked 0.2 was trained
    ("a-masked-array", lambda: klab.run(input=np.ma.masked_array(np.ones((6, 8)), mask=np.eye(6, 8)), store=False),
     "input", "the array is masked"),  # its mask was dropped without a word
    ("a-field-spelled-twice-to-run", lambda: klab.run(batch_size=4, **{"batch-size": 2}, store=False), "batch_size",
     "given twice (batch_size and batch-size); give it once"),  # the last spelling was kept, where submit refused it
    ("a-positional-value-to-sweep", lambda: klab.sweep("x"), "sweep", "too many positional arguments"),  # TypeError
    ("a-slip-in-a-sweeps-own-keyword", lambda: klab.sweep(seed=[1, 2], locl=True), "locl",
     "sweep() takes no such keyword; did you mean local?"),  # was "unknown field; a job's fields are input, ..."
    ("letters-swapped-in-a-sweeps-own-keyword", lambda: klab.sweep(seed=[1, 2], tgas=["a"]), "tgas",
     "sweep() takes no such keyword; did you mean tags?"),  # was "unknown field; a job's fields are ...": 0.75
    ("a-handles-misspelled-keyword", lambda: klab.Handle(ids=(1,), swep=1), "swep",
     "Handle() takes no such keyword; did you mean sweep?"),  # was Python's TypeError
    ("a-handle-of-nothing", lambda: klab.Handle(), "Handle", "missing a required argument: 'ids'"),
    ("a-slip-in-a-submits-own-keyword", lambda: klab.submit(batch_job=2), "batch_job",
     "submit() takes no such keyword; did you mean batch_jobs?"),  # was named batch-job, "did you mean batch_size?"
    ("a-sweeps-keyword-spelled-twice", lambda: klab.sweep(seed=[1, 2], batch_jobs=2, **{"batch-jobs": 3}),
     "batch_jobs", "given twice (batch_jobs and batch-jobs); give it once"),
    ("store-as-text", lambda: klab.run(epochs=1, store="no"), "store", "True or False, got 'no'"),  # stored it
    ("local-as-a-number", lambda: klab.sweep(seed=range(2), local=2), "local", "True or False, got 2"),
    ("progress-as-text", lambda: klab.Handle((1,)).wait(timeout=0, progress="off"), "progress",
     "True or False, got 'off'"),
    ("no-batch", lambda: klab.sweep(seed=range(2), batch_jobs=0, local=True), "batch_jobs", "from 1 to 100000, got 0"),
    ("batch-as-text", lambda: klab.submit(batch_jobs="8"), "batch_jobs", "a whole number from 1 to 100000, got '8'"),
    ("a-batch-past-the-most", lambda: klab.sweep(seed=range(2), batch_jobs=100_001, local=True), "batch_jobs",
     "from 1 to 100000, got 100001"),
    ("no-jobs", lambda: klab.submit(jobs=[]), "jobs", "give at least one job"),
    ("an-item-holding-a-comma", lambda: klab.sweep(seed=["1,", 2], local=True), "seed", "the item '1,' holds a comma"),
    ("a-status-no-job-has", lambda: klab.jobs(status="done"), "status", "unknown status 'done'"),  # not no jobs
    ("a-handle-of-no-job", lambda: klab.Handle((999,)).wait(progress=False), "id", "no job 999"),  # never stored,
    # not deleted while waiting
    ("a-filter-past-64-bits", lambda: klab.jobs(seed=2**63), "seed", "9223372036854775808 is past what a column holds"),
    # pandas' and numpy's arrays where one value goes (found by fuzzing): a pandas array compared equal to its first
    # name and trained the default, .item() raised ValueError, a 0-d array was iterated, a Series printed its lines
    ("a-pandas-array-of-methods", lambda: klab.run(method=pd.array(["adam"], dtype="string"), store=False), "method",
     "StringArray of shape (1,); several values make a sweep"),  # trained d2l-manual (Arrow's, with pyarrow)
    ("a-pandas-array-of-devices", lambda: klab.run(device=pd.array(["cuda"]), store=False), "device",
     "one value, got "),  # ran on the cpu
    ("a-pandas-array-of-queues", lambda: klab.submit(queue=pd.array([1, 2])), "queue",
     "a queue's name, cpu or gpu, got a value of type IntegerArray"),  # sqlite3's ProgrammingError
    ("an-array-of-queues", lambda: klab.submit(queue=np.array([1, 2])), "queue", "of type ndarray"),
    ("no-queue-as-pandas-says-it", lambda: klab.submit(queue=pd.NA), "queue", "of type NAType"),
    ("an-array-to-a-filter", lambda: klab.jobs(status=np.array([1, 2])), "status",
     "got a ndarray of shape (2,); filter the frame for more"),
    ("one-value-in-arrays-to-a-filter", lambda: klab.jobs(lr=np.array([[0.03]])), "lr",
     "got a ndarray of shape (1, 1)"),
    ("jobs-as-a-0d-array", lambda: klab.submit(jobs=np.array(2)), "jobs", "a list of mappings, one a job, got ndarray"),
    ("an-id-as-a-series", lambda: klab.show(pd.Series([1, 2])), "id", "an id is a whole number, got a Series of shape "
     "(2,)"),  # its lines, one message of three
    ("a-sweep-as-a-frame", lambda: klab.jobs(sweep=pd.DataFrame({"a": [1, 2]})), "sweep", "got a DataFrame of shape"),
    ("an-id-as-a-time", lambda: klab.show(np.timedelta64(1)), "id", "timedelta64(1)"),  # was job 1
    ("a-handle-of-bytes", lambda: klab.Handle(bytearray(b"x")), "ids", "got bytearray(b'x')"),  # was job 120
    ("ids-as-a-0d-array-of-none", lambda: klab.jobs(np.array(None, dtype=object)), "ids", "got None"),  # every job
    ("lrs-of-a-meta-tensor", lambda: klab.sweep(lr=torch.empty(2, device="meta"), local=True), "lr",
     "the array cannot be read as numbers: Cannot copy out of meta tensor"),  # torch's NotImplementedError
    ("an-lr-of-a-meta-tensor", lambda: klab.run(lr=torch.tensor(0.1, device="meta"), store=False), "lr",
     "the array cannot be read as numbers"),
    ("a-range-past-what-len-takes", lambda: klab.sweep(seed=range(10**30), local=True), "seed",
     "more than the limit 200000"),  # OverflowError
    ("a-long-range-of-steps", lambda: klab.sweep(seed=range(0, 10**12, 2), local=True), "sweep",
     "seed alone lists more than 200000 values"),  # listed whole: minutes, gigabytes
    ("tags-as-a-0d-array", lambda: klab.sweep(seed=range(2), tags=np.array("book"), local=True), "tags",
     "tags are texts, or one text, got array('book'"),  # iterated: TypeError
    ("tags-as-a-frame", lambda: klab.sweep(seed=range(2), tags=pd.DataFrame({"tag": ["book"]}), local=True), "tags",
     "got a DataFrame of shape (1, 1)"),  # its column's name stored as the tag
    ("tags-as-a-dict", lambda: klab.sweep(seed=range(2), tags={"a": 1}, local=True), "tags", "got {'a': 1}"),
    ("a-name-as-a-series", lambda: klab.sweep(seed=range(2), name=pd.Series(["a", "b"]), local=True), "name",
     "a sweep's name is text, got a Series of shape (2,)"),  # its lines
    ("a-timeout-as-a-time", lambda: klab.Handle((1,)).wait(timeout=np.timedelta64(5, "s")), "timeout",
     "timedelta64(5,'s')"),  # float()'s TypeError
    ("a-seed-as-a-time", lambda: klab.run(seed=np.datetime64(3, "ns"), store=False), "seed",
     "a number, got times (datetime64[ns])"),  # trained seed 3
    ("lrs-as-times", lambda: klab.sweep(lr=pd.Series(pd.to_timedelta([1, 2], unit="ns")), local=True), "lr",
     "a number, got times (timedelta64[ns])"),  # swept lr 1 and 2
    ("a-kernel-of-decimals-to-sweep", lambda: klab.sweep(kernel=[[Decimal(1), Decimal(-1)]], local=True), "kernel",
     "a kernel's values are numbers, got [Decimal('1'), Decimal('-1')]"),  # json's TypeError (its item)
    ("a-kernel-of-times-to-sweep", lambda: klab.sweep(kernel=[[np.timedelta64(1), np.timedelta64(-1)]], local=True),
     "kernel", "a kernel's values are numbers"),
    ("a-filter-of-a-time", lambda: klab.jobs(epochs=np.timedelta64(10, "ns")), "epochs",
     "a filter of epochs is a whole number or None"),  # filtered as epochs=10
]


@pytest.mark.parametrize(("call", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_exception_naming_the_field(klab_db, call, field, words):
    with pytest.raises(klab.BadInput) as caught:
        call()
    assert caught.value.field == field and isinstance(caught.value, errors.BadInput)  # the CLI's, too
    assert traceback.format_exception_only(caught.value)[-1].startswith(f"klab.BadInput: {field}: ")
    assert words in str(caught.value) and str(caught.value).startswith(f"{field}: ")
    assert "\n" not in str(caught.value) and "/arrays/" not in str(caught.value)
    assert " --" not in str(caught.value)  # keywords, not the command's flags
    where = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert where.filename.endswith(str(Path("klab", "errors.py")))  # raised at the API's edge, not deep inside


def test_jobs_epochs_and_sweeps_are_dataframes_of_the_stored_rows(klab_db, add_job):
    with writing() as conn:
        sweep = create_sweep(conn, {"swept": {"seed": [1, 2, 3]}, "fixed": {"lr": 0.1}}, 3, "seeds")
        swept = [add_job(conn, sweep_id=sweep, seed=s, relative=0.1 * s) for s in (1, 2, 3)]
        diverged = add_job(conn, status="diverged", relative=None, method="adam", epochs=4)
        queued = add_job(conn, status="queued", sweep_id=sweep)

    every = klab.jobs()
    assert list(every.columns) == list(SUMMARY_NAMES)
    assert every["id"].tolist() == [*swept, diverged, queued]
    assert str(every["created_at"].dtype).startswith("datetime64") and every["created_at"].dt.tz is not None
    assert klab.jobs(sweep=sweep)["id"].tolist() == [*swept, queued]
    assert klab.jobs(swept[1])["relative_error"].tolist() == pytest.approx([0.2])
    assert klab.jobs(status="diverged", method="adam")["id"].tolist() == [diverged]
    assert klab.jobs(ids=swept, relative_error=None).empty
    for frame in (every, klab.jobs(queued), klab.jobs(swept)):  # no value, some, all: one dtype (it was object,
        # float64 or int64 as the rows came)
        assert {str(frame[n].dtype) for n in ("converged_epoch", "diverged_epoch", "rank", "more_epochs")} == \
            {"Int64"}
        assert str(frame["identifiable"].dtype) == "boolean"
        # a float or text column of no value in any row was object: the queued job's alone had no relative error
        # and no queue, worker or error message
        for name in ("relative_error", "final_loss", "worker_host", "error_message", "started_at", "finished_at"):
            assert frame[name].dtype == every[name].dtype, name
        assert str(frame["relative_error"].dtype) == "float64"
        assert str(frame["error_message"].dtype) in ("str", "string")
    empty = klab.jobs([])  # no row to tell the kinds from: it was object in every column, datetime64[s] in the times
    for name in ("id", "epochs", "seed", "lr", "relative_error", "converged_epoch", "identifiable", "created_at"):
        assert empty[name].dtype == every[name].dtype, name
    assert str(empty["status"].dtype) in ("str", "string") and len(klab.jobs(status="failed")) == 0

    epochs = klab.epochs(sweep=sweep)
    assert list(epochs.columns) == list(EPOCH_NAMES)
    assert epochs.groupby("job_id").size().to_dict() == {i: 10 for i in swept}  # the queued job has none yet
    assert klab.epochs([diverged])["epoch"].tolist() == [1, 2, 3, 4]

    sweeps = klab.sweeps()
    assert list(sweeps.columns) == ["id", "name", "tags", "size", "created_at", "params",
                                    *(s.value for s in JobStatus)]
    assert str(sweeps["created_at"].dtype).startswith("datetime64") and sweeps["created_at"].dt.tz is not None
    (row,) = sweeps.to_dict("records")
    assert (row["id"], row["name"], row["size"]) == (sweep, "seeds", 3)
    assert row["params"] == {"swept": {"seed": [1, 2, 3]}, "fixed": {"lr": 0.1}}
    assert (row["succeeded"], row["queued"], row["diverged"]) == (3, 1, 0)


def test_ids_and_values_from_a_dataframe_select_as_python_numbers_do(klab_db, add_job):
    with writing() as conn:
        sweep = create_sweep(conn, {"swept": {"seed": [1, 2]}, "fixed": {}}, 2, "seeds")
        ids = [add_job(conn, sweep_id=sweep, seed=s) for s in (1, 2)]
    frame = klab.jobs()
    first = frame["id"].iloc[0]
    assert isinstance(first, np.int64)  # what a notebook hands back: a DataFrame's cell, numpy's own int
    assert klab.show(first).id == ids[0]
    assert klab.jobs(first)["id"].tolist() == [ids[0]] and klab.epochs(first)["job_id"].unique().tolist() == [ids[0]]
    assert klab.jobs(sweep=frame["sweep_id"].iloc[0])["id"].tolist() == ids
    assert klab.jobs(seed=frame["seed"].iloc[1])["id"].tolist() == [ids[1]]
    assert klab.jobs(np.array(ids[0]))["id"].tolist() == [ids[0]]  # a 0-d array: iterating it was a TypeError
    assert klab.show(np.array(ids[0])).id == ids[0]  # as jobs() reads it: was "an id is a whole number"
    assert klab.Handle(np.array(ids[0])).ids == klab.Handle(ids[0]).ids == (ids[0],)  # one id, as jobs reads it
    # (Handle(12) was a TypeError)
    lr = float(frame["lr"].iloc[0])
    assert klab.jobs(lr=np.float32(lr))["id"].tolist() == klab.jobs(lr=lr)["id"].tolist() == ids  # float32's 0.03 was
    # compared as 0.029999999329, and found no job
    none = frame["id"][frame["seed"] > 99]  # ids that select no job: none, not every job
    assert klab.jobs(none).empty and list(klab.jobs(none).columns) == list(SUMMARY_NAMES)
    assert klab.epochs(none).empty and list(klab.epochs(none).columns) == list(EPOCH_NAMES)
    with pytest.raises(klab.BadInput, match="^colour: unknown filter"):
        klab.jobs(none, colour="red")
    # a column spelled with dashes, as klab.run and job files read a field: was "unknown filter ... batch_size"
    assert klab.jobs(**{"batch-size": int(frame["batch_size"].iloc[0])})["id"].tolist() == ids
    assert klab.jobs(**{"batch-size": int(frame["batch_size"].iloc[0]) + 1}).empty  # read, not dropped
    with pytest.raises(klab.BadInput, match="^batch_size: given twice"):
        klab.jobs(batch_size=2, **{"batch-size": 2})


@pytest.mark.parametrize(("variable", "value"), [("KLAB_MAX_EPOCHS", "abc"), ("KLAB_MAX_INPUT_ELEMENTS", "-5"),
                                                 ("KLAB_DATABASE_URL", "mysql://u@h/db")])
def test_a_bad_setting_is_named_as_itself_not_as_the_field_whose_check_read_it(variable, value, setenv):
    setenv(**{variable: value})
    for call in (lambda: klab.run(epochs=2, store=False), lambda: klab.submit(epochs=2)):
        with pytest.raises(klab.BadInput) as caught:  # was `epochs: KLAB_MAX_EPOCHS: ...`, .field "epochs"
            call()
        assert caught.value.field == variable and str(caught.value).startswith(f"{variable}: ")


def test_sweep_ids_with_gaps_come_back_whole_and_filters_read_as_klab_list_reads_them(klab_db, add_job, tmp_path):
    with writing() as conn:
        sweep = create_sweep(conn, {"swept": {"seed": [1]}, "fixed": {}}, 1, "one")
        inside = add_job(conn, sweep_id=sweep, kernel="[[1, -1]]")
        outside = add_job(conn, kernel="[[1,-1]]")  # in no sweep: the column has a gap
    frame = klab.jobs()
    assert str(frame["sweep_id"].dtype) == "Int64"  # was float64: klab.jobs(sweep=1.0) is refused
    assert klab.jobs(sweep=frame["sweep_id"].dropna().iloc[0])["id"].tolist() == [inside]
    assert klab.jobs(kernel="[[1,-1]]")["id"].tolist() == [inside, outside]  # whatever spaces, as klab list
    assert klab.jobs(kernel="none").empty and klab.jobs(method="adam").empty
    Image.new("L", (8, 6)).save(tmp_path / "a.png")
    with writing() as conn:
        edge = add_job(conn, input="edge:06x8", kernel="d2l")  # kept as edge:6x8, as --input writes it
        gray = add_job(conn, input=f"image:{tmp_path / 'a.png'}:gray", kernel="d2l")  # kept as image:PATH
    for asked in ("edge:06x8", " edge:6x8 ", "edge:6x8"):  # the first two found no job: the text as typed
        assert klab.jobs(input=asked)["id"].tolist() == [edge], asked
    for asked in (f"image:{tmp_path / 'a.png'}:gray", f"image:{tmp_path / 'a.png'}"):
        assert klab.jobs(input=asked)["id"].tolist() == [gray], asked


def test_empty_database_gives_empty_frames_with_their_columns(klab_db):
    assert list(klab.jobs().columns) == list(SUMMARY_NAMES) and klab.jobs().empty
    assert list(klab.epochs().columns) == list(EPOCH_NAMES) and klab.epochs().empty
    assert klab.epochs().dtypes.astype(str).tolist() == ["int64", "int64", "float64", "float64", "float64"]
    assert klab.sweeps().empty and "succeeded" in klab.sweeps().columns
    empty = klab.sweeps().dtypes.astype(str).to_dict()  # as a frame of rows has them (they were object)
    klab.sweep(seed=[1, 2], epochs=1, local=True)
    assert klab.sweeps().dtypes.astype(str).to_dict() == empty
    assert [empty[n] for n in ("id", "size", "succeeded", "created_at")] == ["int64", "int64", "int64",
                                                                           "datetime64[us, UTC]"]


def test_a_result_shows_itself_in_a_line_as_klab_show_prints_its_error():
    result = klab.Result({"id": 4, "status": "succeeded", "error": {"relative": 1.386e-08}})
    assert repr(result) == "Result(id=4, status='succeeded', relative_error=0)"  # under float32 rounding
    assert repr(klab.Result({"id": 5, "status": "queued"})) == "Result(id=5, status='queued')"


def test_a_result_draws_a_figure_and_shows_itself_as_html(home, monkeypatch, tmp_path):
    from matplotlib.figure import Figure

    from klab.html import _CELL as CELL
    from klab.html import result_html
    from service.render import plot
    from service.render.text import render as render_text

    r = klab.run(input="edge:6x8", kernel=[[1, -1], [1, -1]], lr=0.03, epochs=10, store=False)
    html = r._repr_html_()
    for part in ("true", "learned", "least squares", "optimization", "identifiability", "rank 2 of 4",
                 escape(r.explanation)):
        assert part in html
    assert html.count("<table") == 5  # four kernels, then the gap
    text = render_text(r.data).splitlines()  # what `klab show` prints: the HTML says the same
    assert f"<b>{escape(text[0])}</b><br><small>{escape(text[1].removeprefix('spec: '))}</small>" in html
    for line in text:
        if line.startswith(("error: ", "pace: ", "learned bias: ")):
            assert escape(line) in html, line
        if gap_row := re.match(r"  (optimization|noise|identifiability) +(\S+)  ", line):  # 0 under the rounding
            assert f"{gap_row[1]}</td><td style=\"{CELL}\">{gap_row[2]}</td>" in html, line
    tiny = r.data["gap"]["noise"]  # rounding's: 3e-16 on one machine, 1.7e-15 on another (their BLAS)
    assert 0 < tiny < 1e-12 and f"e{f'{tiny:e}'.split('e')[1]}" not in html
    assert "batch size" not in html  # the book's first loop takes the whole input at once
    biased = klab.run(input="edge:6x8", bias=0.5, lr=0.01, epochs=40, store=False)
    (line,) = [line for line in render_text(biased.data).splitlines() if line.startswith("learned bias: ")]
    assert line.endswith("  (true 0.5000)") and escape(line) in biased._repr_html_()
    labels = tmp_path / "y.npy"  # labels given, no true kernel: --bias only lets a bias be learned
    np.save(labels, np.tile([0.0, 1, 0, 0, 0, -1, 0], (6, 1)))
    fitted = klab.run(input="edge:6x8", kernel=None, labels=f"npy:{labels}", bias=0.3, lr=0.01, store=False)
    assert re.fullmatch(r"learned bias: -?\d+\.\d{4}", next(line for line in render_text(fitted.data).splitlines()
                                                         if line.startswith("learned bias: ")))
    kinds = fitted.epochs.dtypes.astype(str).to_dict()  # no kernel error without a true kernel: NaN, not None
    assert kinds == {"epoch": "int64", "loss": "float64", "mse": "float64", "kernel_error": "float64"}, kinds
    assert fitted.epochs["kernel_error"].isna().all()
    cells = re.findall(r">([^<>]+)</td>", result_html({**r.data, "learned_kernel": [[0.99999, -1, float("nan")]],
                                                       "true_kernel": [[1, -1, 0]]}))
    assert cells[:9] == ["1.0000", "-1.0000", "0.0000", "1.0000", "-1.0000", "nan",  # as klab show: never -0.0000
                         "0.0000", "0.0000", "nan"]
    least = [f"{v:.4f}".replace("-0.0000", "0.0000") for row in r.data["lstsq_kernel"] for v in row]
    assert cells[9:9 + len(least)] == least and len(set(least)) > 1  # then the least-squares kernel W*
    four_d = [[[[1.0, 2.0]], [[3.0, 4.0]]]]  # each (out, in) slice named above its rows, as klab show does
    cells = re.findall(r">([^<>]+)</(?:td|small)>", result_html({**r.data, "learned_kernel": four_d,
                                                                 "true_kernel": four_d}))
    assert cells[1:7] == ["out 0, in 0", "1.0000", "2.0000", "out 0, in 1", "3.0000", "4.0000"]  # after the spec
    html = result_html({**r.data, "learned_kernel": four_d, "true_kernel": four_d})
    assert html.count('<td colspan="2" ') >= 4 and 'colspan="1"' not in html  # a slice's name over its 2 columns
    assert r.learned_kernel.dtype == np.float64 and r.learned_kernel.tolist() == r.data["learned_kernel"]  # unrounded
    fig = r.plot()
    assert isinstance(fig, Figure) and len(fig.axes) >= 4
    from IPython.core.interactiveshell import InteractiveShell  # a notebook's kernel, whose inline backend shows a
    # Figure only once pyplot made one: r.plot() showed `<Figure size 1500x900 with 8 Axes>` alone

    shown, _ = InteractiveShell.instance().display_formatter.format(r.plot())
    assert shown["image/png"].startswith(b"\x89PNG")
    InteractiveShell.clear_instance()
    png = InteractiveShell.instance().display_formatter.formatters["image/png"]

    def inline(figure: Figure) -> bytes:  # the inline backend's own display of a Figure, where it has one: kept
        return b"\x89PNG"

    png.for_type(Figure, inline)
    r.plot()
    assert png.lookup_by_type(Figure) is inline
    InteractiveShell.clear_instance()
    # a plot module that only saves PNGs (before figure_job): its picture, in a Figure
    monkeypatch.setattr(klab.figure, "plot", SimpleNamespace(plot_job=plot.plot_job))
    fallback = r.plot()
    assert isinstance(fallback, Figure) and fallback.axes[0].images[0].get_array().shape[:2] == (
        int(fig.get_figheight() * fig.dpi), int(fig.get_figwidth() * fig.dpi))
    assert (fallback.get_figwidth() * fallback.dpi, fallback.get_figheight() * fallback.dpi) == pytest.approx(
        (fig.get_figwidth() * fig.dpi, fig.get_figheight() * fig.dpi))  # a Figure of the picture's size, not turned


def test_import_klab_loads_neither_torch_pandas_nor_matplotlib():
    script = ("import sys, klab; heavy = [m for m in ('torch', 'pandas', 'matplotlib', 'worker') if m in sys.modules]; "
              "print(heavy)")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.fixture
def client_of(service_env, setenv):  # noqa: F811 (service_env is test_worker's fixture)
    """This process made a client of the test's service: its database, broker and home (service.broker.client
    keeps an app per broker: one cached for another test's broker takes none of these messages)."""
    setenv(**{k: service_env[k] for k in ("KLAB_DATABASE_URL", "KLAB_BROKER_URL", "KLAB_HOME")})
    yield service_env


def test_submit_waits_for_a_real_worker_and_equals_its_run_twin(client_of, workers, capsys):  # noqa: F811
    workers("cpu")
    image = np.random.default_rng(3).standard_normal((7, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("error", klab.NoWorker)  # a worker consumes the queue: no warning
        one = klab.submit(input=image, kernel="sobel-x", lr=0.01, epochs=12)
    assert len(one.ids) == 1 and one.sweep is None
    r = one.wait(timeout=120).result()
    twin = klab.run(input=image, kernel="sobel-x", lr=0.01, epochs=12, store=False)
    assert r.status is JobStatus.SUCCEEDED and r.worker_host.startswith("cpu0@")
    assert r.epochs["loss"].tolist() == twin.epochs["loss"].tolist()
    np.testing.assert_array_equal(r.learned_kernel, twin.learned_kernel)
    assert "1 job(s): 1 succeeded" in capsys.readouterr().err  # not a terminal: the progress as lines

    many = klab.submit(jobs=[{"seed": 1}, {"seed": 2, "method": "adam"}], **BOOK, epochs=5)
    results = many.results(timeout=120)
    assert [x.spec["seed"] for x in results] == [1, 2] and results[1].spec["method"] == "adam"
    assert many.jobs()["status"].tolist() == [JobStatus.SUCCEEDED.value] * 2
    with pytest.raises(klab.BadInput, match="2 jobs here"):
        many.result()


def test_sweep_of_lists_and_ranges_through_a_real_worker(client_of, workers):  # noqa: F811
    workers("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", klab.NoWorker)
        handle = klab.sweep(**BOOK, method="d2l-manual", epochs=10, lr=[0.01, 0.03], seed=range(3), name="lr x seed")
    assert handle.sweep is not None and len(handle.ids) == 6
    handle.wait(timeout=120, progress=False)
    frame = handle.jobs()
    assert frame["status"].tolist() == [JobStatus.SUCCEEDED.value] * 6
    assert list(zip(frame["lr"], frame["seed"])) == [(lr, s) for lr in (0.01, 0.03) for s in range(3)]
    assert len(handle.epochs()) == 60
    (row,) = klab.sweeps().to_dict("records")
    assert (row["id"], row["name"], row["size"], row["succeeded"]) == (handle.sweep, "lr x seed", 6, 6)
    assert row["params"]["swept"] == {"lr": [0.01, 0.03], "seed": [0, 1, 2]}
    losses, _ = book_manual(2, lr=0.03)
    best = klab.jobs(sweep=handle.sweep, lr=0.03, seed=2)
    np.testing.assert_allclose(best["final_loss"], losses[-1:], rtol=1e-6)


def test_a_local_sweep_trains_here_with_no_broker(klab_db, setenv):
    setenv(KLAB_BROKER_URL="redis://127.0.0.1:1/0")  # nothing listens there
    handle = klab.sweep(**BOOK, epochs=10, lr=[0.01, 0.03], seed=range(3), name="here", tags=["nb"], local=True)
    assert handle.sweep is not None and len(handle.ids) == 6
    assert handle.jobs()["status"].tolist() == [JobStatus.SUCCEEDED.value] * 6  # done when the call returns
    losses, _ = book_manual(2, lr=0.03)
    np.testing.assert_allclose(klab.jobs(sweep=handle.sweep, lr=0.03, seed=2)["final_loss"], losses[-1:], rtol=1e-6)
    (row,) = klab.sweeps().to_dict("records")
    assert (row["name"], row["tags"], row["succeeded"]) == ("here", ["nb"], 6)
    with pytest.raises(klab.BadInput, match="^queue: "):
        klab.sweep(**BOOK, seed=range(2), local=True, queue="cpu")
    with pytest.raises(klab.BadInput, match="^tol: takes one value"):
        klab.sweep(**BOOK, seed=range(2), tol=[0.1, 0.01], local=True)


def test_a_sweep_takes_arrays_tensors_and_generators_of_values_and_a_tag_as_text(klab_db, setenv):
    setenv(KLAB_BROKER_URL="redis://127.0.0.1:1/0")  # nothing listens there
    handle = klab.sweep(**BOOK, epochs=2, lr=np.array([0.01, 0.03]), seed=torch.arange(2),
                        method=(m for m in ("d2l-manual", "adam")), tags="book", local=True)
    frame = handle.jobs()
    assert len(frame) == 8 and set(frame["status"]) == {JobStatus.SUCCEEDED.value}
    assert sorted(set(frame["lr"])) == [0.01, 0.03] and sorted(set(frame["seed"])) == [0, 1]
    assert sorted(set(frame["method"])) == ["adam", "d2l-manual"]
    assert klab.sweeps()["tags"].tolist() == [["book"]]  # one tag, not b, o and k
    import pandas as pd

    for tags in (np.array(["a", "b"]), pd.Series(["c"]), np.array(["d", "e"])[0]):  # an array's truth was asked:
        klab.sweep(**BOOK, epochs=1, seed=[0], tags=tags, local=True)  # ValueError; numpy's text is one text
    assert klab.sweeps()["tags"].tolist() == [["book"], ["a", "b"], ["c"], ["d"]]
    frame = klab.sweep(**BOOK, epochs=1, lr=pd.Series([0.01, 0.03]), seed=pd.RangeIndex(2), local=True).jobs()
    assert sorted(set(frame["lr"])) == [0.01, 0.03] and sorted(set(frame["seed"])) == [0, 1]  # was a text's lines
    for kernels, inputs in ((pd.Series(["d2l", "edge-v"]), pd.DataFrame({"x": ["edge:6x8", "checker:6x6"]}).x),
                            (np.array(["d2l", "edge-v"]), klab.jobs()["input"].unique()[:1])):  # were refused as a
        # Series, or taken for one kernel's values ("the array holds <U6 values")
        frame = klab.sweep(kernel=kernels, input=inputs, epochs=1, local=True).jobs()
        assert sorted(frame["kernel"]) == sorted(["d2l", "edge-v"] * len(inputs))
        assert sorted(set(frame["input"])) == sorted(set(inputs))
    with pytest.raises(klab.BadInput, match="^kernel: must be 2-D or 4-D, got 1-D$"):  # one kernel's values, not
        klab.sweep(kernel=torch.tensor([1.0, -1.0]), seed=[0, 1], epochs=1, local=True)  # a list of kernels
    bf16 = klab.run(input=book_data()[0].to(torch.bfloat16), epochs=1, store=False)  # was a TypeError
    assert bf16.status == JobStatus.SUCCEEDED.value


def test_a_handle_that_times_out_says_how_far_its_jobs_came(client_of):
    with pytest.warns(klab.NoWorker) as warned:
        handle = klab.submit(**BOOK)  # no worker consumes it
    (line,) = [str(w.message) for w in warned]  # what `klab submit` prints after "klab: warning: "
    assert line.startswith("no live worker of this database (") and line.endswith(
        "consumes queue cpu; the jobs wait there until one starts: klab worker --queue cpu")
    assert warned[0].filename == __file__  # raised from the call the user made
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^still waiting after 0\.3 s: 1 job\(s\): 1 queued"):
        handle.wait(timeout=0.3, progress=False)
    assert time.monotonic() - started >= 0.3  # a fraction of a second waited as it is, not cut to 0
    assert handle.cancel() == (1, 0)
    assert handle.status()["by_status"] == {JobStatus.CANCELLED.value: 1}


def test_labels_without_a_kernel_mean_no_true_kernel_in_submit_and_sweep_too(client_of):
    x, k, y = book_data()
    with pytest.warns(klab.NoWorker):
        one = klab.submit(input=x.numpy(), labels=y.numpy(), method="lstsq")
        many = klab.submit(jobs=[{"labels": y.numpy()}, {"seed": 1}], input=x.numpy(), method="lstsq")
        swept = klab.sweep(input=x.numpy(), labels=y.numpy(), method="lstsq", seed=[0, 1])
    kernels = [[v if isinstance(v, str) else None for v in h.jobs()["kernel"]] for h in (one, many, swept)]  # NaN
    assert kernels == [[None], [None, "d2l"], [None, None]]  # were d2l: the labels' kernel compared with the book's
    here = klab.sweep(input=x.numpy(), labels=y.numpy(), method="lstsq", seed=[0], local=True).result()
    assert here.true_kernel is None and here.spec["kernel"] is None
    np.testing.assert_allclose(here.learned_kernel, k.numpy(), atol=1e-6)


def test_keys_spelled_as_in_a_job_file_read_as_the_keywords(client_of):
    with pytest.warns(klab.NoWorker):
        handle = klab.submit(jobs=[{"seed": 1, "batch-size": 3, "method": "adam"}])  # a JSONL line's keys, say
    assert handle.jobs()[["batch_size", "method"]].values.tolist() == [[3, "adam"]]  # was 'batch_size: unknown
    # field; did you mean batch_size?'
    with pytest.warns(klab.NoWorker):  # a job's value overrides the call's, however it is spelled
        over = klab.submit(jobs=[{"batch-size": 3}, {}], batch_size=4, method="adam")
    assert over.jobs()["batch_size"].tolist() == [3, 4]
    for call, job in (("batch-size", "batch_size"), ("batch-size", "batch-size")):  # the call's spelled with -: was
        with pytest.warns(klab.NoWorker):  # "given twice (batch-size and batch_size)", in neither mapping twice
            dashed = klab.submit(jobs=[{job: 3}, {}], **{call: 2}, method="adam")
        assert dashed.jobs()["batch_size"].tolist() == [3, 2]
    with pytest.raises(klab.BadInput, match=r"^batch_size: given twice \(batch_size and batch-size\); give it once$"):
        klab.submit(jobs=[{"batch_size": 1, "batch-size": 3}])


def test_a_sweep_takes_a_list_of_arrays_and_a_literal_kernel_as_one_value(client_of):
    images = [np.eye(4), np.ones((4, 4))]
    with pytest.warns(klab.NoWorker, match="consumes queue cpu;") as warned:
        handle = klab.sweep(input=images, kernel=[[1, -1], [-1, 1]], lr=(0.1, 0.2), epochs=3)
    assert len(warned) == 1 and warned[0].filename == __file__
    frame = handle.jobs()  # stored and queued; no worker needed to read them
    assert len(frame) == 4 and frame["kernel"].tolist() == ["[[1, -1], [-1, 1]]"] * 4
    assert frame["input"].nunique() == 2 and all(i.startswith("npy:") for i in frame["input"])
    assert sorted(set(frame["lr"])) == [0.1, 0.2]
    assert frame["status"].tolist() == [JobStatus.QUEUED.value] * 4
    assert handle.cancel() == (4, 0)


def test_run_reads_a_dashed_keyword_as_job_files_read_it():
    """klab.run(**{"batch-size": 3}) was Python's TypeError; submit and sweep (and job files) read it."""
    r = klab.run(**{"batch-size": 3}, method="d2l-sgd", epochs=1, store=False)
    assert r.spec["batch_size"] == 3


def test_a_sweeps_own_keyword_spelled_with_a_dash_is_read(klab_db, setenv):
    """klab.sweep(**{"batch-jobs": 1}) was `batch-jobs: unknown field; did you mean batch_size?`."""
    setenv(KLAB_BROKER_URL="redis://127.0.0.1:1/0")
    assert len(klab.sweep(seed=[1, 2], epochs=1, local=True, **{"batch-jobs": 1}).ids) == 2


def test_a_kernel_of_numpy_numbers_in_nested_lists_is_one_kernel(klab_db, setenv):
    """[[np.int64(1), -1]] (a row of an array's values): klab.run said `must be a string or a nested list of numbers;
    several values make a sweep`, and klab.sweep raised json's TypeError."""
    setenv(KLAB_BROKER_URL="redis://127.0.0.1:1/0")  # nothing listens there
    assert np.asarray(klab.run(epochs=1, kernel=[[np.int64(1), -1]], store=False).true_kernel).tolist() == [[1, -1]]
    assert np.asarray(klab.run(epochs=1, kernel=((np.float32(1.5), -1),), store=False).true_kernel).tolist() == \
        [[1.5, -1]]
    frame = klab.sweep(epochs=1, kernel=[[[np.int64(1), -1]], [[1, np.int64(-2)]]], local=True).jobs()
    assert frame["kernel"].tolist() == ["[[1, -1]]", "[[1, -2]]"]
    # one kernel of 0-d arrays or tensors: taken for a sweep of one-number rows, then json's TypeError
    for kernel in ([[np.array(1.0), np.array(-1.0)]], [(torch.tensor(1.0), torch.tensor(-1.0))]):
        assert klab.sweep(epochs=1, kernel=kernel, local=True).jobs()["kernel"].tolist() == ["[[1, -1]]"]
        # and klab.run, which took them for several kernels (a sweep's): `several values make a sweep`
        assert np.asarray(klab.run(epochs=1, kernel=kernel, store=False).true_kernel).tolist() == [[1, -1]]
    deep = 1.0
    for _ in range(500):  # its numbers read only once it is known to be 2 or 4 deep: a RecursionError
        deep = [deep]
    with pytest.raises(klab.BadInput, match=r"^kernel: nested more than 4 levels deep$"):
        klab.run(epochs=1, kernel=deep, store=False)
    assert klab.sweep(epochs=1, seed=range(0, 6, 2), local=True).jobs()["seed"].tolist() == [0, 2, 4]


def test_jobs_and_sweep_values_past_the_job_limit_are_refused_before_more_are_made(klab_db, setenv):
    """klab.submit(jobs=[...]) stored and queued 7 jobs past KLAB_MAX_SWEEP_JOBS=6, which `klab submit -f` refuses;
    klab.sweep read a whole generator or list before counting it (3,000,000 seeds: 8.7 s and 650 MB; a generator
    without end, until the machine ran out of memory). Nothing past the limit is read now, and nothing stored."""
    setenv(KLAB_MAX_SWEEP_JOBS="6", KLAB_BROKER_URL="redis://127.0.0.1:1/0")  # nothing listens there

    def seven_then_no_more(make):
        yield from (make(i) for i in range(7))
        raise AssertionError("read past the limit")

    with pytest.raises(klab.BadInput, match=re.escape("jobs: 7 jobs, more than the limit 6 (KLAB_MAX_SWEEP_JOBS)")):
        klab.submit(jobs=[{"seed": i} for i in range(7)])
    with pytest.raises(klab.BadInput, match=re.escape("jobs: more jobs than the limit 6 (KLAB_MAX_SWEEP_JOBS)")):
        klab.submit(jobs=seven_then_no_more(lambda i: {"seed": i}))
    class ReadPastTheLimit(list):
        def __iter__(self):
            for i, v in enumerate(super().__iter__()):
                assert i <= 6, "read past the limit"
                yield v

    with pytest.raises(klab.BadInput, match=re.escape("seed: not a number: '[0]'")):  # rows of one: no kernel
        klab.sweep(seed=ReadPastTheLimit([[i] for i in range(10)]), epochs=1)
    for values in (seven_then_no_more(int), list(range(3_000_000)), np.arange(3_000_000)):
        with pytest.raises(klab.BadInput, match=re.escape("seed alone lists more than 6 values, so more jobs than "
                                                          "the limit 6 (KLAB_MAX_SWEEP_JOBS)")):
            klab.sweep(seed=values, epochs=1)
    assert len(klab.jobs()) == 0
    rows = [[float(i), -float(i)] for i in range(1, 10)]
    swept = klab.sweep(input="random:10x10", kernel=rows, seed=[0, 1], epochs=1, local=True)  # one kernel, not a
    assert [r.true_kernel.tolist() for r in swept.results()] == [rows, rows]  # list of 9 values: its rows all kept
    setenv(KLAB_MAX_KERNEL_ELEMENTS="4")  # a limit one job of several passes: which one, as `-f jobs.jsonl` says
    with pytest.raises(klab.BadInput, match=re.escape("kernel: has 9 elements, more than the limit 4 "
                                                      "(KLAB_MAX_KERNEL_ELEMENTS) (job 2)")):
        klab.submit(jobs=[{"epochs": 1}, {"epochs": 1, "kernel": "box3"}])


def test_an_array_past_the_file_limit_names_the_limit_and_is_not_saved(klab_db, setenv, tmp_path):
    """An array over KLAB_MAX_FILE_BYTES named no variable; one whose .npy (its header added) was over it was called
    a file, and saved before it was refused."""
    setenv(KLAB_MAX_FILE_BYTES="1000", KLAB_HOME=str(tmp_path / "home"))
    for array, words in ((np.zeros((100, 100)), "the array is 80000 bytes, more than the limit 1000 "
                                                "(KLAB_MAX_FILE_BYTES)"),
                         (np.ones((10, 12)), "the array is 1088 bytes as .npy, more than the limit 1000 "
                                             "(KLAB_MAX_FILE_BYTES)")):
        with pytest.raises(klab.BadInput, match=re.escape(f"input: {words}")):
            klab.run(input=array, store=False)
    assert not list((tmp_path / "home").glob("arrays/*.npy"))


def test_an_array_under_a_klab_home_that_is_not_utf8_names_klab_home_and_is_not_saved(setenv, tmp_path):
    """A KLAB_HOME holding a byte that is not UTF-8 (0xff): the array was saved under it, then refused as the user's
    `input: holds \\udcff, half of a UTF-16 surrogate pair` (the path its job would store)."""
    home = os.fsdecode(bytes(tmp_path) + b"/bad\xffhome")
    setenv(KLAB_HOME=home)
    with pytest.raises(klab.BadInput, match=r"^KLAB_HOME: .*bad\\udcffhome holds bytes that are not UTF-8, and the "
                                            r"array is kept under it, named by a path its job stores as UTF-8 text$"):
        klab.run(input=np.ones((8, 8)), epochs=2, store=False)
    assert not os.path.exists(home)


def test_a_sweeps_array_under_a_klab_home_with_a_comma_names_klab_home_and_is_not_saved(klab_db, setenv, tmp_path):
    """The array's path, under KLAB_HOME, is a sweep's value, and a sweep's values are split at commas: it was saved,
    then refused as `input: no such file: /tmp/h (the sweep's value 'npy:/tmp/h')`. One job takes it as it is."""
    home = tmp_path / "h,comma"
    setenv(KLAB_HOME=str(home))
    x = np.ones((6, 8))
    with pytest.raises(klab.BadInput, match=r"^KLAB_HOME: .*h,comma holds a comma, and the array of a sweep is kept "
                                            r"under it, named by a path that the sweep's commas would split$"):
        klab.sweep(input=x, lr=[0.01, 0.02], epochs=2, local=True)
    assert not home.exists()
    assert klab.run(input=x, epochs=2, store=False).status is JobStatus.SUCCEEDED
    labelled = klab.sweep(input="edge:6x8", kernel=None, labels=np.ones((6, 7)), lr=[0.01, 0.02], epochs=2, local=True)
    assert len(labelled.jobs()) == 2  # labels, one value of every job, are never split


def test_a_float32_lr_is_stored_as_written_and_found_by_a_float32_filter(klab_db, setenv):
    """np.float32(0.03) was stored as 0.029999999329447746, which a filter of 0.03 does not find, nor (once filters
    read float32 as written) one of np.float32(0.03); a float32 array of lrs in a sweep likewise."""
    setenv(KLAB_BROKER_URL="redis://127.0.0.1:1/0")
    job = klab.run(epochs=1, lr=np.float32(0.03))
    sweep = klab.sweep(epochs=1, lr=np.array([0.01, 0.03], np.float32), local=True)
    assert job.spec["lr"] == 0.03 and sorted(sweep.jobs()["lr"]) == [0.01, 0.03]
    assert len(klab.jobs(lr=np.float32(0.03))) == len(klab.jobs(lr=0.03)) == 2
    one = klab.sweep(epochs=1, lr=np.array(0.03, np.float32), seed=[7, 8], local=True)  # a 0-d array, one value
    assert one.jobs()["lr"].tolist() == [0.03, 0.03] and len(klab.jobs(lr=torch.tensor(0.03).numpy())) == 4
    whole = klab.run(epochs=1, seed=np.float32(123456792), store=False)  # a whole float32 exactly, not 123456790
    assert whole.spec["seed"] == 123456792


def test_a_wait_draws_its_bar_on_stderr_and_leaves_stdout_to_the_program(klab_db, add_job, tmp_path):
    """stderr a terminal, stdout a pipe: rich drew the bar on stdout (nowhere, there); drawn on stderr, it took
    stdout over while it ran, and what the program printed meanwhile went to the terminal instead of the pipe."""
    with writing() as conn:
        queued = add_job(conn, status="queued")
    script = ("import threading, time, klab\n"
              "def talk():\n"
              "    for i in range(3):\n"
              "        print(f'DATA {i}', flush=True); time.sleep(0.2)\n"
              "threading.Thread(target=talk).start()\n"
              "try:\n"
              f"    klab.Handle(({queued},)).wait(timeout=1.5)\n"
              "except TimeoutError:\n"
              "    print('END')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAB_") and k != "NO_COLOR"}
    env.update(KLAB_DATABASE_URL=klab_db, KLAB_HOME=str(tmp_path / "home"), TERM="xterm",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    done, drawn = with_terminal_stderr([sys.executable, "-c", script], env)
    assert done.returncode == 0 and done.stdout.decode().split() == ["DATA", "0", "DATA", "1", "DATA", "2", "END"]
    assert b"0/1 jobs" in drawn and b"DATA" not in drawn  # the bar on the terminal, nothing else


def test_a_results_html_shows_what_a_page_would_play_as_written():
    """A bidi override in a stored path reordered the notebook's text; a newline joined two lines of it."""
    from klab.html import result_html

    page = result_html({"id": 1, "status": "failed", "spec": {"input": "npy:/tmp/\u202eypn.npy"},
                        "error_message": "input: no such file: /tmp/\u202eypn.npy\nsecond"})
    assert "\u202e" not in page and "/tmp/\\u202eypn.npy\\nsecond" in page and "npy:/tmp/\\u202eypn.npy" in page


def test_reading_a_sqlite_file_that_does_not_exist_makes_none(tmp_path, setenv):
    """klab.jobs() on a mistyped file made a new empty database and answered an empty frame."""
    from service.errors import DatabaseUnavailable

    setenv(KLAB_DATABASE_URL=f"sqlite:///{tmp_path / 'typo.db'}", KLAB_HOME=str(tmp_path / "home"))
    for read in (klab.jobs, klab.sweeps, klab.epochs, klab.Handle((1,)).cancel):  # cancel made it: "no job 1"
        with pytest.raises(DatabaseUnavailable, match="^no sqlite database .*typo.db: only klab db upgrade and"):
            read()
    assert not (tmp_path / "typo.db").exists()


def test_an_array_refused_for_its_values_is_never_saved(tmp_path, setenv):
    """An array of NaN, the bad input itself, was saved under KLAB_HOME/arrays before it was refused. (An array
    that is good, of a call refused for another value, stays: another call may be using the same file.)"""
    home = tmp_path / "home"
    setenv(KLAB_HOME=str(home), KLAB_DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}")
    for bad, says in ((np.full((5, 5), np.nan), "contains NaN or infinite values"), (np.ones((0, 4)), "is empty"),
                      (np.ones((6, 8), dtype=complex), "holds complex128 values"),
                      (np.array([[1, "a"], [2, 3]], dtype=object), "holds Python objects")):
        with pytest.raises(klab.BadInput, match=f"^input: .*{says}"):
            klab.run(input=bad, store=False)
        with pytest.raises(klab.BadInput, match=f"^kernel: .*{says}"):
            klab.submit(kernel=bad)
    assert not list(home.rglob("*.npy"))


def test_a_handle_takes_numpy_numbers_counts_a_sweeps_jobs_and_refuses_its_mistakes_as_bad_input(tmp_path, setenv,
                                                                                                   redis_url):
    """wait(timeout=np.int64(5)) was refused as not "a number from 0"; Handle((), sweep=S).result() of a one-job
    sweep said "0 jobs here"; .jobs(status=...) and .epochs(1) raised TypeError, where every other call says
    klab.BadInput."""
    setenv(KLAB_HOME=str(tmp_path / "home"), KLAB_DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}",
           KLAB_BROKER_URL=redis_url)
    one = klab.sweep(local=True, seed=[77], epochs=2)
    handle = klab.Handle((), sweep=one.sweep)
    assert handle.wait(timeout=np.int64(5), progress=False) is handle
    assert handle.wait(timeout=10**400, progress=False) is handle  # past a float: no limit (float() overflowed)
    assert handle.wait(timeout=np.float32(2.5), progress=False) is handle
    assert handle.result().id == one.ids[0]
    two = klab.Handle((), sweep=klab.sweep(local=True, seed=[1, 2], epochs=1).sweep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", klab.NoWorker)
        waiting = klab.Handle((), sweep=klab.sweep(seed=[1, 2], epochs=1).sweep)  # queued: no worker
    with pytest.raises(klab.BadInput, match="^result: 2 jobs here"):  # counted first: it waited for them all
        waiting.result(timeout=0.5)
    # ids given twice (an epochs frame's job_id column) are each job once, as klab.jobs and `klab status 5 5`
    # read them: status, wait, results and cancel said "id: no job " (2 ids asked, 1 row found)
    (seed,) = one.ids
    twice = klab.Handle(klab.epochs([seed]).job_id)
    assert twice.ids == (seed,) and twice.status()["jobs"] == 1 and twice.result().id == seed
    assert [r.id for r in twice.wait(progress=False).results()] == [seed]
    assert [r.id for r in klab.Handle((seed, seed)).results()] == [seed]
    for mistake, says in ((two.result, "^result: 2 jobs here"),
                          (lambda: handle.jobs(status="succeeded"), "^status: jobs\\(\\) takes no such keyword"),
                          (lambda: handle.epochs(1), "^epochs: too many positional arguments")):
        with pytest.raises(klab.BadInput, match=says):
            mistake()


def test_calls_from_threads_on_a_new_sqlite_file_and_with_one_new_array_all_go_through(tmp_path, setenv):
    """A notebook's threads (ThreadPoolExecutor): two klab.jobs() on a new SQLite file raised `KeyError: 'config'`
    from inside Alembic, which the first use's upgrade runs (5 times in 5); several calls handing the same new array
    shared one part file, and read it half written (`not a valid .npy file`) or found it moved (FileNotFoundError)."""
    import threading

    from klab.values import arrays

    def together(n: int, work) -> list[str]:
        start, errors = threading.Barrier(n), []

        def one() -> None:
            start.wait()
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - what a thread raised, to be told
                errors.append(f"{type(exc).__name__}: {exc}")
        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return errors

    for attempt in range(3):
        setenv(KLAB_HOME=str(tmp_path / f"home{attempt}"), KLAB_DATABASE_URL=None)
        assert together(4, klab.jobs) == []
    for attempt in range(10):
        x = np.random.default_rng(attempt).standard_normal((300, 300))

        def save(x=x) -> None:
            with arrays() as files:
                assert np.array_equal(np.load(files.npy("input", x)[4:], allow_pickle=False), x)
        assert together(6, save) == []


def test_a_nested_list_or_a_dataframe_as_an_input_is_told_to_be_an_array(klab_db):
    """`input=[[1.0, 2], [3, 4]]` was told `takes one value, not a list; several values make a sweep`, and the sweep
    then refused each row; a DataFrame `must be a string; several values make a sweep`."""
    import pandas as pd

    with pytest.raises(klab.BadInput, match=r"^input: is a name \(edge:6x8, npy:PATH, image:PATH\) or, from Python, "
                                            r"a numpy array or torch tensor; not a nested list of numbers$"):
        klab.run(input=[[1.0, 2, 3], [4, 5, 6]], epochs=1, store=False)
    with pytest.raises(klab.BadInput, match=r"^input: must be a string, or from Python a numpy array or torch "
                                            r"tensor$"):
        klab.run(input=pd.DataFrame(np.ones((4, 4))), epochs=1, store=False)
    with pytest.raises(klab.BadInput, match=r"^input: is a name .*; not a nested list of numbers$"):  # a sweep's too
        klab.sweep(input=[[1.0, 2, 3], [4, 5, 6]], lr=[0.01, 0.02], epochs=1, local=True)
    for labels in ([[1.0, 2], [3, 4]], [[[[1.0, 2]]]]):  # labels are a file or an array, never a name
        with pytest.raises(klab.BadInput, match=r"^labels: is npy:PATH or, from Python, a numpy array or torch "
                                                r"tensor; not a nested list of numbers$"):
            klab.run(labels=labels, kernel=None, epochs=1, store=False)
    assert klab.run(input=pd.DataFrame(np.ones((4, 4))).to_numpy(), epochs=1, store=False).status == "succeeded"


def test_a_sweeps_handle_made_by_hand_counts_no_jobs_it_does_not_know():
    """klab.Handle((), sweep=1) showed `Handle(sweep=1, jobs=0)` of a sweep of 6 jobs."""
    assert repr(klab.Handle((), sweep=1)) == "Handle(sweep=1)"
    assert repr(klab.Handle((4, 5), sweep=1)) == "Handle(sweep=1, jobs=2)"
    assert repr(klab.Handle(tuple(range(1, 11)))) == "Handle(ids=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])"
    assert repr(klab.Handle(tuple(range(1, 12)))) == "Handle(ids=[11 jobs])"


def test_the_largest_batch_and_the_largest_filter_are_taken_and_a_sweeps_handle_reads_its_jobs(klab_db):
    handle = klab.sweep(seed=[1, 2], epochs=1, batch_jobs=100_000, local=True)
    by_hand = klab.Handle((), sweep=handle.sweep)  # knows its sweep alone: read by it, not by its (no) ids
    assert sorted(by_hand.jobs()["id"]) == sorted(handle.ids) and len(by_hand.epochs()) == 2
    other = klab.run(epochs=1).id  # in no sweep
    with pytest.raises(klab.BadInput, match=r"^result: 2 jobs here; read them with \.results\(\) or \.jobs\(\)$"):
        klab.Handle((other,), sweep=handle.sweep).result()  # a sweep's handle is its sweep's: was job 1's result
    assert len(klab.jobs(seed=2**63 - 1)) == 0 and len(klab.jobs(seed=-(2**63) + 1)) == 0


def test_a_jobs_mistake_names_the_job_only_among_several(klab_db):
    with pytest.raises(klab.BadInput) as one:
        klab.submit(lr="abc")
    assert str(one.value) == "lr: not a number: 'abc'"
    with pytest.raises(klab.BadInput) as several:
        klab.submit(jobs=[{"lr": 0.1}, {"lr": "abc"}])
    assert str(several.value) == "lr: not a number: 'abc' (job 2)"


def test_the_notebooks_bar_shows_its_count_line_where_html_is_not_shown():
    """A front end without HTML (a notebook exported as text) showed `<IPython.core.display.HTML object>`."""
    from IPython.core.formatters import DisplayFormatter

    from klab.progress import _Shown

    shown, _ = DisplayFormatter().format(_Shown("<progress></progress> <code>2 of 4 jobs</code>", "2 of 4 jobs"))
    assert shown == {"text/plain": "2 of 4 jobs", "text/html": "<progress></progress> <code>2 of 4 jobs</code>"}
