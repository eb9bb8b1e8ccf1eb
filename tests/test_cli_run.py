"""`klab run` through the real console script: the book's numbers, the JSON contract, errors, no torch.

Every `klab` here is a real subprocess of the installed console script. Its start-up dominates, so the
module starts them all at once (fixture `runs`) and each test reads its own.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from harness import Runs, klab_main, strict_json
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
    # (id, args, extra env, the field the one line must name)
    ("malformed-literal", ["--kernel", "[[1, -1"], {}, "kernel"),
    ("unknown-kernel-preset", ["--kernel", "sobel-z"], {}, "kernel"),
    ("unknown-input-preset", ["--input", "stripes:6x8"], {}, "input"),
    ("unknown-method", ["--method", "rmsprop"], {}, "method"),
    ("kernel-larger-than-input", ["--kernel", "random:7x3"], {}, "kernel"),
    ("nan-in-npy", ["--input", "npy:{files}/nan.npy"], {}, "input"),
    ("pickled-npy", ["--input", "npy:{files}/pickled.npy"], {}, "input"),
    ("negative-lr", ["--lr", "-0.1"], {}, "lr"),
    ("zero-epochs", ["--epochs", "0"], {}, "epochs"),
    ("input-limit", ["--input", "random:100x100"], {"KLAB_MAX_INPUT_ELEMENTS": "9999"}, "input"),
    ("kernel-limit", ["--kernel", "random:3x3"], {"KLAB_MAX_KERNEL_ELEMENTS": "8"}, "kernel"),
    ("epoch-limit", ["--epochs", "11"], {"KLAB_MAX_EPOCHS": "10"}, "epochs"),
    ("labels-wrong-shape", ["--labels", "npy:{files}/labels.npy"], {}, "labels"),
    ("channel-mismatch", ["--input", "random:3x6x8", "--kernel", "sobel-x"], {}, "kernel"),
    ("missing-file", ["--input", "npy:{files}/missing.npy"], {}, "input"),
    ("not-an-image", ["--input", "image:{files}/not-an-image.png"], {}, "input"),
    ("yaml-unknown-key", ["-f", "{files}/job.yaml"], {}, "colour"),
    ("json-unknown-key", ["-f", "{files}/job.json"], {}, "learning-rate"),
]

NO_TORCH = [["--help"], ["run", "--help"], ["--version"], ["run", "--lr", "-1"], ["run", "--kernel", "random:9x9"]]
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
    for name, args, env, _ in BAD_INPUT:
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


def test_cuda_without_a_gpu_is_one_line_naming_the_device():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    code, out, err = klab_main("run", "--device", "cuda", "--epochs", "1", "--no-store")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("klab: error: device: "), err


# ---------------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line on stderr naming the field, nothing on stdout, no traceback
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,field", [(case[0], case[3]) for case in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_naming_the_field(runs, name, field):
    proc = runs.result(name)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"klab: error: {field}: "), lines[0]
    assert len(lines[0]) > len(f"klab: error: {field}: ") + 5  # and says what is wrong


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
              if line.startswith("import ") or line.split(" ")[0] in ("--help", "--version", "run")]
    assert report[0] == "import False", proc.stderr  # importing service.cli, the spec, inputs, renderer and reads
    assert len(report) == len(NO_TORCH) + 1, proc.stderr
    for argv, line in zip(NO_TORCH, report[1:]):
        *_, torch_imported, code = line.split()
        assert torch_imported == "False", line
        assert code == ("2" if "-1" in argv or "random:9x9" in argv else "0"), line
