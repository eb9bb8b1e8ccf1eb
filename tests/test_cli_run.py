"""`klab run` through the real console script: the book's numbers, the JSON contract, errors, no torch.

Every `klab` here is a real subprocess of the installed console script. Its start-up dominates, so the
module starts them all at once (fixture `runs`) and each test reads its own.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness import Runs, clean_env, klab, klab_main, klab_path, strict_json
from test_engine import EPOCH_KEYS, RESULT_KEYS, book_manual, book_sgd

BOOK = ["run", "--input", "edge:6x8", "--kernel", "d2l"]


def _files(d: Path) -> None:
    np.save(d / "nan.npy", np.array([[1.0, np.nan], [2.0, 3.0]]))
    np.save(d / "pickled.npy", np.array([{"a": 1}, 2], dtype=object), allow_pickle=True)
    np.save(d / "labels.npy", np.zeros((6, 6)))  # the book's job needs 6x7 labels
    (d / "not-an-image.png").write_text("hello, not a PNG")
    (d / "job.yaml").write_text("input: edge:6x8\ncolour: red\n")
    (d / "job.json").write_text('{"input": "edge:6x8", "learning_rate": 0.1}')
    (d / "2x2.yaml").write_text("input: edge:6x8\nkernel: [[1, -1], [1, -1]]\nmethod: d2l-manual\n"
                                "lr: 0.5\nepochs: 100\n")


BAD_INPUT = [
    # (id, args, extra env, the field the one line must name, words the line says)
    ("malformed-literal", ["--kernel", "[[1, -1"], {}, "kernel",
     "not a valid JSON literal: '[[1, -1'"),
    ("unknown-kernel-preset", ["--kernel", "sobel-z"], {}, "kernel",
     "unknown kernel 'sobel-z'; expected a preset (d2l, "),
    ("unknown-input-preset", ["--input", "stripes:6x8"], {}, "input",
     "unknown input 'stripes'; expected one of edge, "),
    ("unknown-method", ["--method", "rmsprop"], {}, "method",
     "unknown value 'rmsprop'; input should be 'd2l-manual', "),
    ("kernel-larger-than-input", ["--kernel", "random:7x3"], {}, "kernel",
     "is 7x3, larger than the 6x8 input"),
    ("nan-in-npy", ["--input", "npy:{files}/nan.npy"], {}, "input",
     "contains NaN or infinite values"),
    ("pickled-npy", ["--input", "npy:{files}/pickled.npy"], {}, "input",
     "pickled.npy holds Python objects; only numeric arrays are accepted"),
    ("negative-lr", ["--lr", "-0.1"], {}, "lr",
     "Input should be greater than 0"),
    ("zero-epochs", ["--epochs", "0"], {}, "epochs",
     "Input should be greater than 0"),
    ("input-limit", ["--input", "random:100x100"], {"KLAB_MAX_INPUT_ELEMENTS": "9999"}, "input",
     "has 10000 elements, more than the limit 9999 (KLAB_MAX_INPUT_ELEMENTS)"),
    ("kernel-limit", ["--kernel", "random:3x3"], {"KLAB_MAX_KERNEL_ELEMENTS": "8"}, "kernel",
     "has 9 elements, more than the limit 8 (KLAB_MAX_KERNEL_ELEMENTS)"),
    ("epoch-limit", ["--epochs", "11"], {"KLAB_MAX_EPOCHS": "10"}, "epochs",
     "11 is more than the limit 10 (KLAB_MAX_EPOCHS)"),
    ("labels-wrong-shape", ["--labels", "npy:{files}/labels.npy"], {}, "labels",
     "of shape (1, 6, 6) do not fit kernel d2l (1, 1, 1, 2) on input (1, 6, 8), "),
    ("channel-mismatch", ["--input", "random:3x6x8", "--kernel", "sobel-x"], {}, "kernel",
     "has 1 input channel(s) but the input has 3"),
    ("missing-file", ["--input", "npy:{files}/missing.npy"], {}, "input",
     "no such file: "),
    ("not-an-image", ["--input", "image:{files}/not-an-image.png"], {}, "input",
     "not-an-image.png is not a PNG or JPEG image"),
    ("yaml-unknown-key", ["-f", "{files}/job.yaml"], {}, "colour",
     "unknown field; a job's fields are input, "),
    ("json-unknown-key", ["-f", "{files}/job.json"], {}, "learning_rate",
     "unknown field; a job's fields are input, "),  # as written
]

NO_TORCH = [["--help"], ["run", "--help"], ["--version"], ["run", "--lr", "-1"], ["run", "--kernel", "random:9x9"],
            ["sweep", "--local", "--lr", "0.1,-1"], ["db", "upgrade"], ["sweeps"]]  # reading makes no database
NO_TORCH_SCRIPT = """
import sys
from service.cli import main

def call(argv):
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code
    return 0

import service.jobs.spec, service.jobs.inputs, service.jobs.problem, service.render.text, service.db.reads
print("import", "torch" in sys.modules, file=sys.stderr)
for argv in {argvs!r}:
    code = call(argv)
    print(" ".join(argv), "torch" in sys.modules, code, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    files = tmp_path_factory.mktemp("files")
    _files(files)
    r = Runs(tmp_path_factory.mktemp("runs"))
    # The acceptance command exactly (it stores into the run's own SQLite), then unstored runs.
    r.start("book-seed-0", *BOOK, "--method", "d2l-manual", "--lr", "0.03", "--epochs", "10", "--seed", "0", "--json")
    r.start("no-torch", "-c", NO_TORCH_SCRIPT.format(argvs=NO_TORCH), program=sys.executable)
    for name, args, env, *_ in BAD_INPUT:
        r.start(name, "run", *[a.replace("{files}", str(files)) for a in args], "--json", env=env)
    r.start("unknown-option", "run", "--colour", "red")
    yield r
    r.close()


def test_klab_run_json_equals_the_books_code_for_seed_0(runs):
    proc = runs.result("book-seed-0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.count("\n") == 1  # one JSON object on one line
    result = strict_json(proc.stdout)
    losses, kernel = book_manual(0)
    np.testing.assert_allclose([e["loss"] for e in result["epochs"]], losses, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result["learned_kernel"], kernel, rtol=1e-6, atol=1e-6)
    assert RESULT_KEYS <= set(result)  # storing adds the job's id, timestamps and spec
    assert result["id"] == 1 and result["spec"]["seed"] == 0 and result["created_at"].endswith("+00:00")
    assert [set(e) for e in result["epochs"]] == [EPOCH_KEYS] * 10
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, 11))
    assert result["status"] == "succeeded" and result["method"] == "d2l-manual" and result["seed"] == 0
    assert result["true_kernel"] == [[1.0, -1.0]]
    assert result["identifiability"] == {"rank": 2, "params": 2, "identifiable": True}


# The tests below call the console script's entry point in this process: torch is loaded here already.

def test_klab_run_json_equals_the_seeds_second_loop_and_has_exactly_the_documented_keys():
    code, out, err = klab_main(*BOOK, "--method", "d2l-sgd", "--lr", "0.03", "--epochs", "16", "--batch-size", "2",
                               "--seed", "1", "--json", "--no-store")
    assert code == 0 and err == "", err
    result = strict_json(out)
    losses, kernel = book_sgd(1)
    np.testing.assert_allclose([e["loss"] for e in result["epochs"]], losses, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result["learned_kernel"], kernel, rtol=1e-6, atol=1e-6)
    assert set(result) == RESULT_KEYS
    assert [set(e) for e in result["epochs"]] == [EPOCH_KEYS] * 16
    assert [e["epoch"] for e in result["epochs"]] == list(range(1, 17))
    assert set(result["error"]) == {"frobenius", "relative", "max_abs", "cosine"}
    assert set(result["gap"]) == {"optimization", "identifiability", "noise"}
    assert result["converged_epoch"] is None  # the seed's loop from a fresh start does not converge
    assert result["method"] == "d2l-sgd" and result["seed"] == 1 and result["learned_bias"] is None
    assert np.array(result["initial_kernel"]).shape == (1, 2)


def test_text_report_of_a_2x2_kernel_says_the_weights_cannot_be_told_apart(tmp_path):
    _files(tmp_path)
    code, out, err = klab_main("run", "-f", str(tmp_path / "2x2.yaml"), "--lr", "0.01", "--no-store")
    assert code == 0, err  # from a spec file, with --lr overriding the file's 0.5
    assert "lr 0.01" in out and "epochs 100" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("true"))
    assert "learned" in lines[header]
    for row in (lines[header + 1], lines[header + 2]):  # the true kernel's two rows, the learned beside them
        numbers = [float(v) for v in row.split()]
        assert numbers[:2] == [1.0, -1.0] and len(numbers) >= 4
    assert "rank 2 of 4" in out
    assert "cannot tell these weights apart" in lines[-1] and lines[-1].endswith(".")


def test_the_rank_of_a_kernel_of_several_output_channels_says_it_counts_each_channels_weights(tmp_path):
    """A 4-D kernel's output channels are each fitted alone on the same input: the analysis counts one channel's
    weights (4 of a 2x1x2x2 kernel's 8), which the report said as if they were all: 'rank 2 of 4 weights'."""
    from service.render.plot import figure_job

    code, out, err = klab_main("run", "--input", "edge:6x8", "--kernel", "[[[[1, -1], [0, 0]]], [[[2, 0], [0, 1]]]]",
                               "--method", "lstsq", "--no-store", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["identifiability"] | {"identifiable": False} == {"identifiable": False, "rank": 2, "params": 4}
    assert result["explanation"].endswith("(rank 2 of 4 weights of each of its 2 output channels); a richer input "
                                          "would.")
    code, out, err = klab_main("run", "--input", "edge:6x8", "--kernel", "[[[[1, -1], [0, 0]]], [[[2, 0], [0, 1]]]]",
                               "--method", "lstsq", "--no-store")
    assert "identifiable: no (rank 2 of 4 weights of each of its 2 output channels)" in out.splitlines()
    assert "(rank 2 of 4 weights of each of its 2 output channels)" in figure_job(result)._suptitle.get_text()
    code, out, err = klab_main("run", "--input", "edge:6x8", "--kernel", "[[[[1, -1], [0, 0]]]]", "--method", "lstsq",
                               "--no-store")
    assert "identifiable: no (rank 2 of 4 weights)" in out.splitlines()


def test_verbose_prints_the_books_lines_with_the_books_losses():
    code, out, err = klab_main(*BOOK, "--epochs", "10", "--seed", "0", "--no-store", "--verbose")
    assert code == 0 and err == "", err
    losses, _ = book_manual(0)
    lines = out.splitlines()
    assert lines[:10] == [f"epoch {i + 1}, loss {loss:.3f}" for i, loss in enumerate(losses)]
    assert lines[10] == "succeeded (not stored)"
    code, out, err = klab_main(*BOOK, "--epochs", "3", "--no-store", "--verbose", "--json")
    assert code == 0 and err.splitlines()[0] == f"epoch 1, loss {losses[0]:.3f}" and len(err.splitlines()) == 3
    assert strict_json(out)["epochs_done"] == 3  # stdout stays the one JSON object
    code, out, _ = klab_main(*BOOK, "--method", "lstsq", "--no-store", "--verbose")
    assert code == 0 and "epoch 1, loss" not in out  # nothing is trained epoch by epoch


def test_book_loss_never_prints_a_small_loss_as_zero():
    from service.cli.run import book_loss

    assert [book_loss(v) for v in (19.1578, 0.0012345, 0.00043421, 0.0, float("inf"), float("nan"))] == \
        ["19.158", "0.001", "0.000434", "0.000", "inf", "nan"]


def test_waiting_reads_the_progress_taking_no_more_than_its_share_of_the_database():
    """`watch`, `--wait` and the API's .wait() pause by one rule between reads: at least POLL_SECONDS, and a
    read that took d seconds waits d / POLL_SHARE (a 200,000-job sweep's counts take tens of milliseconds)."""
    from service.cli.progress import POLL_SECONDS, POLL_SHARE, pause

    assert pause(0.0) == POLL_SECONDS
    assert pause(0.2) == pytest.approx(0.2 / POLL_SHARE) and pause(0.2) > POLL_SECONDS


def test_progress_of_a_long_job_a_line_at_most_every_few_seconds_away_from_a_terminal():
    from types import SimpleNamespace

    from service.cli.progress import LINE_SECONDS, SHOW_AFTER_SECONDS
    from service.cli.run import Epochs

    now = [100.0]
    out = io.StringIO()
    with Epochs(1000, verbose=False, stream=out, clock=lambda: now[0]) as on_epoch:
        for epoch in range(1, 1001):
            now[0] += 0.01  # 10 s in all
            on_epoch(SimpleNamespace(epoch=epoch, loss=np.array([1.0 / epoch])))
    lines = out.getvalue().splitlines()
    assert len(lines) == int((10 - SHOW_AFTER_SECONDS) // LINE_SECONDS) >= 1
    assert lines[0].startswith("epoch ") and " of 1000, loss 0.00" in lines[0]
    first = int(lines[0].split()[1])
    assert first * 0.01 >= LINE_SECONDS  # nothing before: a short job prints nothing but its result
    quick = io.StringIO()
    with Epochs(10, verbose=False, stream=quick) as on_epoch:
        for epoch in range(1, 11):
            on_epoch(SimpleNamespace(epoch=epoch, loss=np.array([1.0])))
    assert quick.getvalue() == ""


def _unread_pipe() -> int:
    """The writing end of a pipe whose reader has already gone (`| head -1` once it has its line): every write to
    it fails (EPIPE), whatever the machine's pace."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("db", "--help"), ("list", "--help")])
def test_what_klab_prints_as_it_reads_its_options_goes_through_a_closed_pipe_cleanly(tmp_path: Path, args):
    """`klab --help | head -1`: exit code 0 and nothing on stderr, as for every command's output (the group's own
    options, read before any command runs, exited 1)."""
    gone = _unread_pipe()
    try:
        proc = subprocess.run([klab_path(), *args], env=clean_env(tmp_path / "home"), cwd=tmp_path, timeout=60,
                              text=True, stdout=gone, stderr=subprocess.PIPE)
    finally:
        os.close(gone)
    assert (proc.returncode, proc.stderr) == (0, ""), args


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_a_reader_gone_does_not_stop_the_job_klab_run_trains_from_being_stored(tmp_path: Path, stream: str):
    """`klab run -v | head -1` (the epoch lines on stdout; with --json on stderr): the lines go nowhere once their
    reader has gone, and the job trains to its end and is stored, exit 0. (It once stopped at the first line and
    stored nothing, exit 0, the job trained here lost without a word.)"""
    env = clean_env(tmp_path / "home")
    gone = _unread_pipe()
    try:
        proc = subprocess.run([klab_path(), *BOOK, "--epochs", "30", "-v", *(["--json"] if stream == "stderr" else [])],
                              env=env, cwd=tmp_path, timeout=180, text=True,
                              stdout=gone if stream == "stdout" else subprocess.PIPE,
                              stderr=gone if stream == "stderr" else subprocess.PIPE)
    finally:
        os.close(gone)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    if stream == "stdout":
        assert proc.stderr == ""
    else:  # the one JSON object, on stdout as ever
        assert json.loads(proc.stdout)["status"] == "succeeded"
    listed = klab(env, "list", "--json")
    assert [(r["status"], r["epochs"]) for r in json.loads(listed.stdout)] == [("succeeded", 30)]


@pytest.mark.parametrize("as_json", [False, True])
def test_a_result_the_database_refuses_is_printed_not_stored_before_its_error(tmp_path, setenv, as_json):
    """The database refused `klab run`'s result after training (read-only here; a full disk or a server gone alike):
    the job trained is printed as --no-store prints it, then the database's one line, exit code 3, nothing stored.
    (It printed the line alone: the training was lost without a trace.)"""
    from service.db.engine import dispose_engines, upgrade

    path = tmp_path / "klab.db"
    upgrade(f"sqlite:///{path}")
    dispose_engines()
    setenv(KLAB_HOME=str(tmp_path / "home"), KLAB_DATABASE_URL=f"sqlite:///file:{path}?mode=ro&uri=true")
    job = [*BOOK, "--epochs", "4", "--lr", "0.03", "--seed", "2", *(["--json"] if as_json else [])]
    code, out, err = klab_main(*job)
    _, alone, _ = klab_main(*job, "--no-store")
    dispose_engines()
    assert (code, err) == (3, f"klab: error: database error on the sqlite database file:{path}: attempt to write a "
                              "readonly database\n")
    if as_json:
        printed, expected = json.loads(out), json.loads(alone)
        assert "id" not in printed and printed.pop("train_seconds") > 0 and expected.pop("train_seconds") > 0
        assert printed == expected
    else:
        assert out.startswith("succeeded (not stored)\n")
        assert re.sub(r"\d+\.\d+ s\n", "", out) == re.sub(r"\d+\.\d+ s\n", "", alone)
    import sqlite3

    with sqlite3.connect(path) as db:
        assert db.execute("select count(*) from jobs").fetchone() == (0,)


def test_a_result_the_database_refuses_after_stdouts_reader_has_gone_still_says_so(tmp_path: Path):
    """`klab run -v | head -1` whose result the database then refuses: the result printed for want of its row goes
    nowhere as the epoch lines did, and the database's line comes on stderr, exit 3 (with the stream sent to nowhere
    left as it was, the print met the dead pipe again: exit 0, nothing on stderr, nothing stored)."""
    from service.db.engine import dispose_engines, upgrade

    path = tmp_path / "klab.db"
    upgrade(f"sqlite:///{path}")
    dispose_engines()
    env = clean_env(tmp_path / "home", f"sqlite:///file:{path}?mode=ro&uri=true")
    gone = _unread_pipe()
    try:
        proc = subprocess.run([klab_path(), *BOOK, "--epochs", "30", "-v"], env=env, cwd=tmp_path, timeout=180,
                              text=True, stdout=gone, stderr=subprocess.PIPE)
    finally:
        os.close(gone)
    assert (proc.returncode, proc.stderr) == (3, f"klab: error: database error on the sqlite database file:{path}: "
                                                 "attempt to write a readonly database\n")


def test_progress_lines_whose_reader_has_gone_go_nowhere_and_the_work_goes_on():
    """`klab sweep --local 2>&1 | head -1`: the progress line that finds its reader gone is the last written, and
    the work goes on (it stopped the sweep part way, exit 0, with the rest of its jobs never trained)."""
    from service.cli.progress import LINE_SECONDS, SHOW_AFTER_SECONDS, Tally

    now = [0.0]
    with os.fdopen(_unread_pipe(), "w") as stream:
        tally = Tally(100, "jobs", stream, clock=lambda: now[0])
        for done in range(1, 100):
            now[0] += (SHOW_AFTER_SECONDS + LINE_SECONDS) / 10
            tally.update(done)  # the first line fails; the next ones go to /dev/null
        assert os.path.samestat(os.fstat(stream.fileno()), os.stat(os.devnull))
        tally.close()


def test_too_few_open_files_is_one_line_not_a_traceback(tmp_path: Path):
    """Under `ulimit -n 6` a module's file could not be opened on import: a traceback of importlib's, exit 1. At
    every limit Python starts under, a command ends in its line or in none."""
    import resource

    lines = {}
    for limit in range(5, 10):
        env = clean_env(tmp_path / str(limit))
        done = subprocess.run([klab_path(), *BOOK, "--epochs", "3"], env=env, cwd=tmp_path, timeout=180, text=True,
                              capture_output=True, preexec_fn=lambda n=limit: resource.setrlimit(
                                  resource.RLIMIT_NOFILE, (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1])))
        assert done.returncode in (0, 1, 3), (limit, done.stderr)
        assert done.stderr.count("\n") == (done.returncode != 0), (limit, done.stderr)
        lines[limit] = done.stderr
    assert any(line == f"klab: error: too many open files: this process may open {n} at once; raise the limit "
               "(ulimit -n)\n" for n, line in lines.items()), lines  # told where it was met (here at 6)
    assert lines[9] == "" and (tmp_path / "9" / "klab.db").exists(), lines[9]  # enough: trained and stored


def test_a_closed_stdout_is_one_line_before_anything_is_done_and_a_closed_stderr_is_dev_null(tmp_path: Path):
    """Started with stdout or stderr closed (`klab ... >&-`, a daemon's): Python has no such stream, and every
    command ended in a traceback, exit 1."""
    env = clean_env(tmp_path / "home")
    closed_out = subprocess.run([klab_path(), *BOOK, "--epochs", "3"], env=env, cwd=tmp_path, timeout=180,
                                text=True, stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert closed_out.returncode == 1
    assert closed_out.stderr == "klab: error: cannot write the output: stdout is closed\n"
    assert not (tmp_path / "home" / "klab.db").exists()  # nothing done: the job was not trained, nor stored
    closed_err = subprocess.run([klab_path(), *BOOK, "--epochs", "3", "--no-store"], env=env, cwd=tmp_path,
                                timeout=180, text=True, stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2))
    assert closed_err.returncode == 0 and closed_err.stdout.startswith("succeeded (not stored)\n")


def test_progress_on_a_terminal_is_a_bar_on_that_terminal(monkeypatch):
    from types import SimpleNamespace

    from service.cli.progress import SHOW_AFTER_SECONDS
    from service.cli.run import Epochs

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    now, screen = [0.0], Terminal()
    with Epochs(100, verbose=False, stream=screen, clock=lambda: now[0]) as on_epoch:
        for epoch in range(1, 101):
            now[0] += 0.1
            on_epoch(SimpleNamespace(epoch=epoch, loss=np.array([2.0])))
    assert "loss 2.000" in screen.getvalue() and "━" in screen.getvalue()
    now[0], short = 0.0, Terminal()  # a job of under SHOW_AFTER_SECONDS draws no bar at all, even on a terminal
    with Epochs(100, verbose=False, stream=short, clock=lambda: now[0]) as on_epoch:
        for epoch in range(1, 101):
            now[0] += SHOW_AFTER_SECONDS / 101
            on_epoch(SimpleNamespace(epoch=epoch, loss=np.array([2.0])))
    assert short.getvalue() == ""


def test_kernel_none_with_labels_has_no_true_kernel(tmp_path):
    x = np.random.default_rng(3).standard_normal((6, 8))
    k = np.array([[0.5, -1.0, 0.25]])
    y = np.stack([np.correlate(row, k[0], mode="valid") for row in x])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["run", "--input", f"npy:{tmp_path / 'x.npy'}", "--labels", f"npy:{tmp_path / 'y.npy'}", "--method",
            "lstsq", "--no-store"]
    code, out, err = klab_main(*args, "--kernel", "none", "--json")
    assert code == 0, err
    result = strict_json(out)
    assert result["true_kernel"] is None and result["error"] is None and result["gap"]["noise"] is None
    np.testing.assert_allclose(result["learned_kernel"], k, atol=1e-5)
    code, out, err = klab_main(*args)  # without --kernel none, the default d2l kernel does not fit the labels
    assert code == 2 and err.startswith("klab: error: labels: ")


def test_kernels_come_back_in_the_shape_the_user_gave(tmp_path):
    from PIL import Image

    pixels = (np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)
    Image.fromarray(pixels, "L").save(tmp_path / "gray.png")
    shapes = {}
    for name, input_, kernel in [("image", f"image:{tmp_path / 'gray.png'}", "sobel-x"),
                                 ("book", "edge:6x8", "d2l"), ("channels", "random:1x6x8", "[[1, -1]]"),
                                 ("four", "edge:6x8", "[[[[1, -1]]]]")]:
        code, out, err = klab_main("run", "--input", input_, "--kernel", kernel, "--method", "lstsq", "--no-store",
                                   "--json")
        assert code == 0, err
        r = strict_json(out)
        shapes[name] = {np.array(r[k]).shape for k in ("true_kernel", "initial_kernel", "learned_kernel",
                                                         "lstsq_kernel")}
    assert shapes == {"image": {(3, 3)}, "book": {(1, 2)}, "channels": {(1, 2)}, "four": {(1, 1, 1, 2)}}


def test_the_report_has_no_rounding_dust_and_names_only_what_the_method_reads():
    code, out, err = klab_main("run", "--input", "edge:6x8", "--kernel", "[[1, -1], [0, 0]]", "--method", "lstsq",
                               "--no-store")
    assert code == 0, err
    spec = next(line for line in out.splitlines() if line.startswith("spec: "))
    assert "method lstsq" in spec and " lr " not in spec and "epochs" not in spec and "batch size" not in spec
    parts = ("optimization", "noise", "identifiability")
    gap = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip().startswith(parts)}
    assert gap == {"optimization": "0", "noise": "0", "identifiability": "1"}  # float64 leaves ~1e-16 in two
    assert "-0.0000" not in out
    code, out, _ = klab_main(*BOOK, "--no-store")
    spec = next(line for line in out.splitlines() if line.startswith("spec: "))
    assert "lr 0.03, epochs 10" in spec and "batch size" not in spec  # the book's first loop takes all at once
    code, out, _ = klab_main("run", "--input", "random:6x8", "--kernel", "sobel-x", "--method", "adam", "--lr",
                             "0.05", "--epochs", "300", "--bias", "0.75", "--no-store")
    assert code == 0 and "batch size 2" in out
    bias = next(line for line in out.splitlines() if line.startswith("learned bias: "))
    assert re.fullmatch(r"learned bias: 0\.7\d{3}  \(true 0\.7500\)", bias), bias  # four decimals, as the kernels
    assert "identifiability           0" in out  # a full-rank input leaves 1e-16 there


def test_kernels_columns_line_up_whatever_the_weights_size():
    from service.render.text import side_by_side

    learned = [[-140.6875, -47.4208, 3e9], [-47.1039, float("nan"), -0.5]]  # a diverged job's
    true = [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]
    lines = side_by_side([("true", true), ("learned", learned)]).splitlines()
    ends = {m.end() for line in lines[1:] for m in re.finditer(r"\S+", line)}
    assert len(ends) == 6, lines  # each number of a column ends where the others of its column end
    assert lines[1].split()[3:] == ["-140.6875", "-47.4208", "3.000e+09"] and lines[2].split()[4] == "nan"
    four_d = [[[[1.0, 2.0]], [[3.0, 4.0]]]]  # out 1, in 2, 1x2 slices: each slice is named above its rows
    assert side_by_side([("true", four_d), ("learned", four_d)]).splitlines() == [
        "true                 learned",
        "out 0, in 0",
        "  1.0000    2.0000     1.0000    2.0000",
        "out 0, in 1",
        "  3.0000    4.0000     3.0000    4.0000"]


def test_the_cli_starts_without_the_resource_module(tmp_path: Path):
    """Windows has no `resource` (the limit of open files above is told with it): klab still starts there."""
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['resource'] = None; "
                           "from service.cli import main; main(['list'])"], env=clean_env(tmp_path / "home"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "no jobs\n")  # said on stderr: stdout holds the rows alone


def test_a_cells_yes_and_no_the_loss_curves_width_and_the_time_a_job_ran():
    from service.render.text import SPARK, cell, render, sparkline

    assert (cell(True), cell(False), cell(None)) == ("yes", "no", "-")
    curve = sparkline([float(i + 1) for i in range(100)])  # 100 epochs sampled down to 60 characters
    assert len(curve) == 60 and (curve[0], curve[-1]) == (SPARK[0], SPARK[-1])
    assert render({"id": 1, "status": "succeeded", "train_seconds": 1.234}).splitlines()[-1] == "ran: 1.23 s"


def test_kernels_too_wide_for_the_terminal_go_below_each_other():
    """Three 3x3 kernels side by side took 90 columns, and an 80-column terminal folded each of their lines into the
    next: as many go in a row as fit the width, the rest below, a 4-D kernel's slices named in each row."""
    from service.render.text import side_by_side

    sobel = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
    three = [("true", sobel), ("learned", sobel), ("difference", [[0.0] * 3] * 3)]
    assert max(len(line) for line in side_by_side(three).splitlines()) > 80  # no width: one row, as when piped
    lines = side_by_side(three, width=80).splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(side_by_side(three, width=90).splitlines()) == 4  # the three need 90 columns: one row at 90,
    assert max(len(line) for line in side_by_side(three, width=89).splitlines()) <= 89  # two at 89
    assert [line.split() for line in lines if line and not line[-1].isdigit()] == [["true", "learned"], ["difference"]]
    assert side_by_side(three, width=20).count("\n\n") == 2  # one a row: none fits beside another
    four_d = [[[[1.0, 2.0]], [[3.0, 4.0]]]]
    assert side_by_side([("true", four_d), ("learned", four_d)], width=30).splitlines() == [
        "true", "out 0, in 0", "  1.0000    2.0000", "out 0, in 1", "  3.0000    4.0000", "",
        "learned", "out 0, in 0", "  1.0000    2.0000", "out 0, in 1", "  3.0000    4.0000"]


def test_dust_is_measured_against_the_kernels_norm():
    from service.render.text import FLOAT32_EPS, settled

    assert settled(1e-16, 1.0) == 0.0 and settled(1e-8, 2.0) == 0.0  # below float32's rounding of the kernel
    assert settled(1e-6, 1.0) == 1e-6 and settled(1e-8, 1e-3) == 1e-8  # a small kernel keeps small gaps
    assert settled(FLOAT32_EPS * 3, 2.0) == FLOAT32_EPS * 3 and settled(None, 1.0) is None


def test_device_cuda_trains_there_or_is_one_line_naming_the_device():
    """Both branches assert: with a GPU the job trains on it (and equals the CPU's to 1e-6); without one,
    one line naming the device, exit 2."""
    import torch

    code, out, err = klab_main("run", "--device", "cuda", "--epochs", "5", "--no-store", "--json")
    if not torch.cuda.is_available():
        assert code == 2 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith("klab: error: device: "), err
        assert "no CUDA GPU is visible" in err
        return
    assert code == 0, err
    on_gpu = json.loads(out)
    assert on_gpu["device"].startswith("cuda")
    code, out, err = klab_main("run", "--device", "cpu", "--epochs", "5", "--no-store", "--json")
    on_cpu = json.loads(out)
    for g, c in zip(on_gpu["epochs"], on_cpu["epochs"]):
        assert g["loss"] == pytest.approx(c["loss"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line on stderr naming the field, nothing on stdout, no traceback
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,field,words", [(c[0], c[3], c[4]) for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_naming_the_field(runs, name, field, words):
    proc = runs.result(name)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"klab: error: {field}: "), lines[0]
    assert words in lines[0], lines[0]  # and says what is wrong: this check's words, not another's


def test_unknown_option_exits_2_with_one_line_naming_the_option(runs):
    proc = runs.result("unknown-option")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("klab: error: ") and "--colour" in lines[0]


# ---------------------------------------------------------------------------------------------------
# Commands that do not train never import torch
# ---------------------------------------------------------------------------------------------------

def test_commands_that_do_not_train_never_import_torch(runs):
    proc = runs.result("no-torch")
    report = [line for line in proc.stderr.splitlines()
              if line.startswith("import ") or line.split(" ")[0] in ("--help", "--version", "run", "sweep", "sweeps",
                                                                      "db")]
    assert report[0] == "import False", proc.stderr  # importing service.cli, the spec, inputs, renderer and reads
    assert len(report) == len(NO_TORCH) + 1, proc.stderr
    for argv, line in zip(NO_TORCH, report[1:]):
        *_, torch_imported, code = line.split()
        assert torch_imported == "False", line
        assert code == ("2" if "-1" in argv or "0.1,-1" in argv or "random:9x9" in argv else "0"), line


def test_a_device_this_machine_lacks_is_refused_before_the_database_is_made(tmp_path):
    """`klab run --device cuda` without a GPU (none visible: CUDA_VISIBLE_DEVICES empty) made KLAB_HOME and its
    database, then said so; with a database away it said the database (exit 3), not the user's mistake."""
    home = tmp_path / "home"
    for url in (None, "postgresql://postgres@127.0.0.1:1/nowhere"):
        env = {**clean_env(home, url), "CUDA_VISIBLE_DEVICES": ""}
        for args in (("run", "--device", "cuda", "--epochs", "1"),
                     ("sweep", "--local", "--device", "cuda", "--seed", "0..1", "--epochs", "1")):
            out = klab(env, *args)
            assert (out.returncode, out.stderr) == (2, "klab: error: device: device cuda was asked for but no CUDA "
                                                       "GPU is visible\n"), (args, out.stderr)
    assert not home.exists()


def test_submit_wait_names_twenty_ids_and_marks_more():
    from service.cli.submit import submitted_line

    assert submitted_line([7]) == "submitted 7"
    assert submitted_line(list(range(1, 21))) == "submitted " + " ".join(map(str, range(1, 21)))
    assert submitted_line(list(range(1, 22))) == "submitted " + " ".join(map(str, range(1, 21))) + " ..."


def test_a_signal_the_process_was_started_ignoring_stays_ignored():
    """`nohup klab watch ...`: closing its terminal (SIGHUP) does not stop the wait."""
    import signal

    from service.cli.progress import interrupts

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupts() as check:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            check()  # nothing pressed
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_reports_small_words_and_numbers():
    """A weight from 1e5 on with an exponent; one epoch said in the singular (lstsq's); a bias with no true kernel
    (labels given) compared with none; a stored error message shown as written, on its line."""
    from service.render.text import bias_line, render, weight

    assert (weight(1e5), weight(-1e5), weight(99999.9)) == ("1.000e+05", "-1.000e+05", "99999.9000")
    one = {"status": "succeeded", "spec": {"method": "lstsq"}, "epochs": [{"epoch": 1, "loss": 0.0}]}
    assert "over 1 epoch  " in render(one)
    assert "over 2 epochs  " in render({**one, "epochs": [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]})
    learned = {"spec": {"bias": 0.5}, "learned_bias": [0.49]}
    assert bias_line({**learned, "true_kernel": None}) == "learned bias: 0.4900"
    assert bias_line({**learned, "true_kernel": [[1.0, -1.0]]}) == "learned bias: 0.4900  (true 0.5000)"
    exact = render({**one, "error": {"frobenius": 0.0, "relative": 0.0, "max_abs": 0.0, "cosine": 1.0},
                    "gap": {"optimization": 0.0, "noise": 0.0, "identifiability": 0.0}, "true_kernel": [[1.0, -1.0]],
                    "learned_kernel": [[1.0, -1.0]]}).splitlines()
    assert "error: frobenius 0, relative 0, max abs 0, cosine 1" in exact  # words, not the field's name
    assert [line.split()[:2] for line in exact if line.startswith("  ")][-3:] == [
        ["optimization", "0"], ["noise", "0"], ["identifiability", "0"]]  # a part of 0 said, not left out
    failed = render({"status": "failed", "spec": {}, "error_message": "input: no such file: /tmp/\u202eypn.npy\nmore"})
    assert failed.splitlines()[-1] == "error message: input: no such file: /tmp/\\u202eypn.npy\\nmore"


def test_run_no_store_touches_no_database(tmp_path: Path):
    """Neither made (the default SQLite file) nor reached (a PostgreSQL away): nothing is stored."""
    env = clean_env(tmp_path / "home")
    for url in (None, "postgresql+psycopg://x@127.0.0.1:1/nowhere"):
        done = subprocess.run([klab_path(), "run", "--no-store", "--method", "lstsq"], timeout=120, text=True,
                              env={**env, **({"KLAB_DATABASE_URL": url} if url else {})}, capture_output=True)
        assert done.returncode == 0 and done.stdout.startswith("succeeded (not stored)"), done.stderr
    assert not (tmp_path / "home" / "klab.db").exists()
