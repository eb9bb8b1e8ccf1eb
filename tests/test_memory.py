"""Memory: the analysis works from A^T A and A^T y without building A, every job's memory is estimated when it is
validated, and a job that cannot fit in KLAB_MAX_JOB_MEMORY is one line, exit 2, nothing stored, on the command
line and on a worker. Peaks are measured in processes of their own (ru_maxrss)."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import ROOT, clean_env, klab, klab_path
from harness import service_env as env_of

from service import defaults
from service.errors import BadInput
from service.jobs.choices import Method
from service.jobs.problem import ENGINE_BYTES, build_problem, gib, job_memory
from service.jobs.spec import JobSpec
from service.settings import Settings

GIB = 2**30

MEASURED = """
import json, resource, subprocess, sys
cap = int(sys.argv[1])
def limit():
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
out = subprocess.run(sys.argv[2:], capture_output=True, text=True, preexec_fn=limit)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr, "peak": peak}))
"""
"""Runs a command as the only child of a fresh process, under an optional address-space cap, and reports its
peak resident memory."""

GROWTH = """
import json, sys, threading
from service.jobs.spec import JobSpec
from worker.engine import run_spec

def anonymous():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))

run_spec(JobSpec.parse({"input": "random:40x40", "kernel": "sobel-x", "epochs": 2}))  # libraries loaded, warmed
before, peak, done = anonymous(), [0], threading.Event()

def watch():
    while not done.wait(0.001):
        peak[0] = max(peak[0], anonymous())

watcher = threading.Thread(target=watch)
watcher.start()
row, _ = run_spec(JobSpec.parse(json.loads(sys.argv[1])))
done.set()
watcher.join()
print(json.dumps({"growth": peak[0] - before, "status": row["status"], "rank": int(row["rank"])}))
"""
"""Trains one job in a fresh process and reports how far its anonymous resident memory (its arrays, not the pages
of libraries, which come and go with the machine's other work) rose above what the process held when it started,
sampled every millisecond."""


def measured(env: dict[str, str], *args: str, cap: int = 0, timeout: float = 600) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURED, str(cap), klab_path(), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def stored_jobs(home: Path) -> int:
    db = home / "klab.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


# ---------------------------------------------------------------------------------------------------
# The analysis never builds A
# ---------------------------------------------------------------------------------------------------

@pytest.mark.timeout(900)
def test_least_squares_on_1536x1536_with_a_15x15_kernel_peaks_under_1_5_gib(tmp_path):
    """Its im2col matrix alone is 4 GiB (2,316,484 rows x 225 weights, float64); it peaked at 11.9 GiB."""
    env = clean_env(tmp_path / "home")
    out = measured(env, "run", "--input", "random:1536x1536", "--kernel", "random:15x15", "--method", "lstsq",
                   "--no-store", "--json")
    assert out["rc"] == 0, out["stderr"]
    assert out["peak"] < 1.5 * GIB, f"peak resident memory {out['peak'] / GIB:.2f} GiB"
    result = json.loads(out["stdout"])
    assert result["identifiability"] == {"rank": 225, "params": 225, "identifiable": True}
    # noise-free labels (rounded to float32): the least-squares kernel is the true one, to float32's rounding
    np.testing.assert_allclose(result["lstsq_kernel"], result["true_kernel"], atol=1e-6)
    assert result["epochs"][0]["loss"] < 1e-5  # the SSE of float32-rounded labels, not of cancellation


@pytest.mark.timeout(600)
@pytest.mark.parametrize("values", [
    dict(input="random:2048x2048", kernel="sobel-x", method="d2l-manual", lr=1e-9, epochs=2),  # torch's convolution
    dict(input="random:1024x1024", kernel="random:15x15", method="lstsq", bias=0.5, noise=0.1),
    dict(input="random:32x1x128x128", kernel="random:3x1x5x5", method="momentum", lr=1e-3, epochs=2, batch_size=4),
], ids=lambda v: f"{v['method']}-{v['input']}")
def test_the_estimate_bounds_what_a_job_takes(values, tmp_path):
    spec = JobSpec.parse(values)
    problem = build_problem(spec)
    estimate = job_memory(problem.x.shape, problem.kernel_shape, problem.has_bias, spec.method, spec.epochs)
    done = subprocess.run([sys.executable, "-c", GROWTH, json.dumps(values)], env=clean_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=540, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "succeeded" and out["rank"] == problem.x.shape[1] * np.prod(problem.kernel_shape[2:]) \
        + int(problem.has_bias)
    assert 0 < out["growth"] <= estimate, f"grew {out['growth'] / 2**20:.0f} MiB, estimated {estimate / 2**20:.0f}"


# ---------------------------------------------------------------------------------------------------
# The estimate, the limit and the one-line refusal
# ---------------------------------------------------------------------------------------------------

def test_the_limit_is_a_setting_with_a_documented_default():
    assert Settings.from_env({}).max_job_memory == defaults.MAX_JOB_MEMORY == 2 * GIB
    assert Settings.from_env({"KLAB_MAX_JOB_MEMORY": str(8 * GIB)}).max_job_memory == 8 * GIB
    with pytest.raises(BadInput, match="^KLAB_MAX_JOB_MEMORY: must be positive"):
        Settings.from_env({"KLAB_MAX_JOB_MEMORY": "0"})


def test_the_estimate_grows_with_what_the_job_makes():
    small = job_memory((1, 1, 64, 64), (1, 1, 3, 3), False, Method.D2L_MANUAL, 10)
    channels = job_memory((1, 1, 64, 64), (64, 1, 3, 3), False, Method.D2L_MANUAL, 10)
    assert small < channels
    # least squares on a 4096x4096 input with a 64x64 kernel: no training, G is 4096 x 4096
    lstsq = job_memory((1, 1, 4096, 4096), (1, 1, 64, 64), False, Method.LSTSQ, 10)
    assert 32 * 4096**2 < lstsq < GIB
    # and on an input no larger than the kernel, G is what counts (the input's share 0.3 MiB, G's 512 MiB)
    assert job_memory((1, 1, 64, 64), (1, 1, 64, 64), False, Method.LSTSQ, 10) > 32 * 4096**2
    # as many output channels as the kernel limit allows: labels 4096 times the input
    assert job_memory((1, 1, 4096, 4096), (4096, 1, 1, 1), False, Method.LSTSQ, 10) > 1000 * GIB


def test_least_squares_on_an_input_larger_than_its_labels_counts_the_input_as_read(setenv):
    """16 channels of 64x64 and one output channel: the input as read (a float64 draw, its float64 and float32
    copies, 20 bytes an element) outweighs the labels and G, and is what the estimate and the refusal say."""
    need = job_memory((1, 16, 64, 64), (1, 16, 2, 2), False, Method.LSTSQ, 1)
    assert need == ENGINE_BYTES + 20 * 16 * 64 * 64 == 185_860_096
    setenv(KLAB_MAX_JOB_MEMORY="185700000")
    spec = JobSpec.parse({"input": "random:16x64x64", "kernel": "random:1x16x2x2", "method": "lstsq", "epochs": 1})
    with pytest.raises(BadInput) as caught:
        build_problem(spec)
    assert str(caught.value) == ("memory: the job needs about 177.2 MiB at once (input 1x16x64x64, kernel 1x16x2x2, "
                                 "method lstsq), more than the limit 177.1 MiB (KLAB_MAX_JOB_MEMORY)")


def test_a_batch_holds_as_many_jobs_as_fit_in_the_limit_together(setenv):
    from types import SimpleNamespace

    from service.jobs.problem import ENGINE_BYTES, fitting, together
    from worker.tasks import load

    def key(values: dict) -> tuple:
        spec = JobSpec.parse({"kernel": "d2l", "epochs": 10, **values})
        return together(build_problem(spec, {}), spec)

    big = key({"input": "random:256x256"})
    own = job_memory((1, 1, 256, 256), (1, 1, 1, 2), False, Method.D2L_MANUAL, 10) - ENGINE_BYTES
    assert fitting(big) == (2 * GIB - ENGINE_BYTES) // own  # jobs beside one engine: 183
    assert (fitting(big) + 1) * own + ENGINE_BYTES > 2 * GIB >= fitting(big) * own + ENGINE_BYTES
    assert fitting(key({"input": "edge:6x8"})) > defaults.BATCH_JOBS  # the book's jobs: the task's size decides
    setenv(KLAB_MAX_JOB_MEMORY=str(ENGINE_BYTES + 5 * own))
    assert fitting(big) == 5
    setenv(KLAB_MAX_JOB_MEMORY=str(ENGINE_BYTES // 2))
    assert fitting(big) == 1  # a job that fits alone trains alone, however low the limit

    # a worker given more jobs than fit (a task sent again is sized by --batch-jobs alone) trains them in batches
    setenv(KLAB_MAX_JOB_MEMORY=str(ENGINE_BYTES + 5 * own))
    spec = json.dumps({"input": "random:256x256", "kernel": "d2l", "labels": None, "bias": None, "noise": 0.0,
                       "method": "d2l-manual", "lr": 0.03, "epochs": 10, "batch_size": 2, "seed": 0,
                       "tol": 1e-4, "device": "cpu"})
    rows = [SimpleNamespace(id=i, seed=i, lr=0.03, spec=spec.replace('"seed": 0', f'"seed": {i}'), attempts=1,
                            input="random:256x256", kernel="d2l", input_dataset_id=None, labels_dataset_id=None,
                            kernel_dataset_id=None)
            for i in range(12)]  # as a claim returns them (service.db.writes._claimed)
    groups, failed = load(rows)
    assert failed == [] and [g.ids for g in groups] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert [[j.seed for j in g.jobs] for g in groups] == [g.ids for g in groups]


def test_an_input_too_large_for_memory_is_refused_in_one_line_without_a_traceback(tmp_path):
    """Within every limit of the input and kernel, but not of memory. Under an address-space cap of 4 GiB, any
    attempt at the job's arrays would fail loudly (it once tried 496 GiB): the refusal comes first."""
    home = tmp_path / "home"
    env = clean_env(home, OPENBLAS_NUM_THREADS="1")
    out = measured(env, "run", "--input", "random:4096x4096", "--kernel", "random:64x64", "--epochs", "2", cap=4 * GIB,
                   timeout=120)
    assert out["rc"] == 2
    assert out["stdout"] == ""
    lines = out["stderr"].splitlines()
    assert len(lines) == 1, out["stderr"]
    assert lines[0].startswith("klab: error: memory: the job needs about ")
    assert "GiB at once (input 1x1x4096x4096, kernel 1x1x64x64, method d2l-manual)" in lines[0]
    assert lines[0].endswith("more than the limit 2 GiB (KLAB_MAX_JOB_MEMORY)")
    assert out["peak"] < GIB
    assert stored_jobs(home) == 0


def test_a_job_past_the_machines_memory_under_a_raised_limit_is_one_line_and_nothing_stored(tmp_path):
    """KLAB_MAX_JOB_MEMORY raised past what the machine holds (the README allows 2**62): `klab run` ended in numpy's
    MemoryError traceback, exit 1. Under an address-space cap of 4 GiB, so that the attempt fails at once."""
    home = tmp_path / "home"
    env = clean_env(home, OPENBLAS_NUM_THREADS="1", KLAB_MAX_INPUT_ELEMENTS=str(2**62), KLAB_MAX_JOB_MEMORY=str(2**62))
    for store in ([], ["--no-store"]):
        out = measured(env, "run", *store, "--input", "random:100000x100000", "--epochs", "1", cap=4 * GIB,
                       timeout=120)
        assert (out["rc"], out["stdout"]) == (1, ""), out
        (line,) = out["stderr"].splitlines()
        assert line.startswith("klab: error: out of memory: Unable to allocate 74.5 GiB for an array with shape "
                               "(100000, 100000) and data type float64 (KLAB_MAX_JOB_MEMORY may let through jobs "
                               "larger than this machine holds)"), line
    assert stored_jobs(home) == 0


def test_torchs_allocation_failure_is_out_of_memory_too_and_a_local_sweep_fails_its_jobs_and_goes_on(tmp_path):
    """An input that fits where its convolution does not: torch's allocator raised RuntimeError ("can't allocate
    memory"), which `klab run` let out as a traceback; `klab sweep --local` stored `MemoryError training ...` where a
    worker says `out of memory training ...`, or (its data not built) ended in one line, its jobs cancelled. Under an
    address-space cap of 3.5 GiB: which allocation fails first, numpy's or torch's, is the allocator's."""
    from service.errors import out_of_memory

    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**45)  # 512 TiB: past any address space, whatever the kernel's overcommit
    assert out_of_memory(caught.value) and not out_of_memory(RuntimeError("shape mismatch")), caught.value
    home = tmp_path / "home"
    env = clean_env(home, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", KLAB_MAX_INPUT_ELEMENTS=str(2**62),
                    KLAB_MAX_JOB_MEMORY=str(2**62))
    big = ("--input", "random:12000x12000", "--kernel", "d2l", "--epochs", "1")
    out = measured(env, "run", *big, cap=3584 * 2**20, timeout=300)
    assert (out["rc"], out["stdout"]) == (1, "") and len(out["stderr"].splitlines()) == 1, out
    assert out["stderr"].startswith("klab: error: out of memory: "), out["stderr"]
    out = measured(env, "sweep", "--local", *big, "--seed", "0..1", cap=3584 * 2**20, timeout=300)
    assert out["rc"] == 0, out
    with sqlite3.connect(home / "klab.db") as conn:
        ended = conn.execute("SELECT status, error_message FROM jobs ORDER BY id").fetchall()
    assert [s for s, _ in ended] == ["failed", "failed"], ended
    assert all(m.startswith(("out of memory training ", "out of memory building the data of job ")) for _, m in ended)


def test_the_limit_is_where_the_estimate_says(tmp_path):
    home = tmp_path / "home"
    args = ("run", "--input", "random:256x256", "--kernel", "sobel-x", "--epochs", "2")
    need = job_memory((1, 1, 256, 256), (1, 1, 3, 3), False, Method.D2L_MANUAL, 2)
    out = klab(clean_env(home, KLAB_MAX_JOB_MEMORY=str(need - 1)), *args)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr == (f"klab: error: memory: the job needs about {need / 2**20:.9g} MiB at once (input "
                          "1x1x256x256, kernel 1x1x3x3, method d2l-manual), more than the limit "
                          f"{(need - 1) / 2**20:.9g} MiB (KLAB_MAX_JOB_MEMORY)\n")  # with the digits that tell
    # them apart: both were "186 MiB"
    assert f"{need / 2**20:.8g}" == f"{(need - 1) / 2**20:.8g}"
    assert stored_jobs(home) == 0
    out = klab(clean_env(home, KLAB_MAX_JOB_MEMORY=str(need)), *args)
    assert out.returncode == 0, out.stderr
    assert stored_jobs(home) == 1


def test_a_worker_refuses_a_job_whose_labels_need_more_than_its_limit(tmp_path, setenv):
    """A worker whose limit is lower than the client's: labels from a file set the kernel's shape, and the build
    refuses a job past its limit in one line, as it does with a true kernel (untested, the check could go)."""
    np.save(tmp_path / "y.npy", np.zeros((1, 1, 510, 510)))
    spec = JobSpec.parse({"input": "random:512x512", "labels": f"npy:{tmp_path / 'y.npy'}", "kernel": "none"})
    assert build_problem(spec).kernel_shape == (1, 1, 3, 3)  # within the default limit
    setenv(KLAB_MAX_JOB_MEMORY="100000000")
    with pytest.raises(BadInput, match=r"^memory: the job needs about \d+ MiB at once \(input 1x1x512x512, kernel "
                                       r"1x1x3x3, method d2l-manual\), more than the limit 95.4 MiB"):
        build_problem(spec)


def test_a_limit_under_the_engines_share_names_itself_in_its_own_unit(tmp_path):
    assert [gib(n) for n in (3 * GIB // 2, 512 * 2**20, 2048, 1000, 1)] == [
        "1.5 GiB", "512 MiB", "2 KiB", "1000 bytes", "1 byte"]
    assert [gib(n) for n in (GIB, 2**20, 1024)] == ["1 GiB", "1 MiB", "1 KiB"]  # at each unit
    assert [gib(n) for n in (GIB - 1, 1000 * 2**20, 1023 * 2**10, 5000 * GIB)] == [  # whole numbers written whole:
        "1024 MiB", "1000 MiB", "1023 KiB", "5000 GiB"]  # 1.02e+03 MiB and 1e+03 MiB were
    home = tmp_path / "home"
    out = klab(clean_env(home, KLAB_MAX_JOB_MEMORY="1000"), "run", "--no-store")
    need = job_memory((1, 1, 6, 8), (1, 1, 1, 2), False, Method.D2L_MANUAL, 10)
    assert ENGINE_BYTES < need < ENGINE_BYTES + 2**20  # the book's job is almost all the engine's share
    assert out.returncode == 2 and out.stderr == (
        f"klab: error: memory: the job needs about {need / 2**20:.3g} MiB at once (input 1x1x6x8, kernel 1x1x1x2, "
        "method d2l-manual), more than the limit 1000 bytes (KLAB_MAX_JOB_MEMORY)\n")  # was 0.000954 MiB


def test_submit_and_sweep_refuse_before_the_broker_or_the_database(tmp_path):
    """Validation estimates every job: nothing is stored and the (absent) broker is never asked."""
    home = tmp_path / "home"
    env = clean_env(home, f"sqlite:///{home / 'klab.db'}", KLAB_BROKER_URL="redis://127.0.0.1:9/0")
    out = klab(env, "submit", "--input", "random:4096x4096", "--kernel", "sobel-x")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("klab: error: memory: ") and "(KLAB_MAX_JOB_MEMORY)" in out.stderr
    out = klab(env, "sweep", "--input", "edge:6x8,random:4096x4096", "--kernel", "sobel-x")
    assert out.returncode == 2, out.stderr
    assert "input 1x1x4096x4096" in out.stderr and "(KLAB_MAX_JOB_MEMORY)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert stored_jobs(home) == 0


def test_each_job_that_shares_its_data_with_another_is_estimated_on_its_own(tmp_path):
    """Jobs of one submission or sweep that share their data were built once and estimated once, by the first of
    them: an lstsq job let a d2l-manual job of 2.7 GiB through, 10 epochs a job of 100,000; both were stored and
    queued, and failed on the worker."""
    home = tmp_path / "home"
    env = clean_env(home, f"sqlite:///{home / 'klab.db'}", KLAB_BROKER_URL="redis://127.0.0.1:9/0")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"input": "random:4096x4096", "method": "lstsq"}\n'
                    '{"input": "random:4096x4096", "method": "d2l-manual"}\n')
    out = klab(env, "submit", "-f", str(jobs))
    assert out.returncode == 2 and out.stderr.startswith("klab: error: memory: ") and out.stderr.endswith(
        f"method d2l-manual), more than the limit 2 GiB (KLAB_MAX_JOB_MEMORY) (job 2 of {jobs})\n"), out.stderr
    need = job_memory((1, 1, 2914, 4095), (1, 1, 1, 2), False, Method.D2L_MANUAL, 100_000)
    assert job_memory((1, 1, 2914, 4095), (1, 1, 1, 2), False, Method.D2L_MANUAL, 10) < 2 * GIB < need
    out = klab(env, "sweep", "--input", "random:2914x4095", "--epochs", "10,100000", "--lr", "1e-9")
    assert out.returncode == 2 and "input 1x1x2914x4095" in out.stderr and "(KLAB_MAX_JOB_MEMORY)" in out.stderr
    assert stored_jobs(home) == 0


def test_labels_that_do_not_fit_the_kernel_are_named_before_the_memory_a_job_cannot_have(tmp_path):
    """The check before a made input is drawn named memory first for labels of the wrong shape, an estimate of a job
    that cannot exist (and `submit`, which reads the labels first, named the labels)."""
    home = tmp_path / "home"
    np.save(tmp_path / "y.npy", np.zeros((1998, 1998)))
    out = klab(clean_env(home, KLAB_MAX_JOB_MEMORY="200000000"), "run", "--input", "random:2000x2000", "--kernel",
               "random:5x5", "--labels", f"npy:{tmp_path / 'y.npy'}")
    assert out.returncode == 2 and out.stderr.startswith("klab: error: labels: of shape (1, 1998, 1998) do not fit "
                                                         "kernel random:5x5"), out.stderr


def test_a_job_too_large_is_refused_before_its_input_is_drawn(tmp_path):
    """With KLAB_MAX_INPUT_ELEMENTS raised, a 200000x200000 random input was drawn before the estimate refused
    its job: numpy's MemoryError (298 GiB) in a 35-line traceback."""
    home = tmp_path / "home"
    env = clean_env(home, KLAB_MAX_INPUT_ELEMENTS=str(200_000**2))
    out = measured(env, "run", "--input", "random:200000x200000", "--kernel", "random:3x3", "--method", "lstsq",
                   cap=4 * GIB, timeout=120)
    assert out["rc"] == 2 and out["stdout"] == "", out["stderr"]
    assert out["stderr"].startswith("klab: error: memory: the job needs about ") and "\n" not in out["stderr"][:-1]
    assert stored_jobs(home) == 0


# ---------------------------------------------------------------------------------------------------
# On a worker
# ---------------------------------------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_a_worker_refuses_a_job_too_large_for_its_limit_before_training(tmp_path, redis_url, pg_url, worker_procs):
    """A job validated under the client's limit reaches a worker whose limit is lower: it fails with the one line,
    and the worker lives on to train the next job."""
    env = env_of(tmp_path, pg_url, redis_url)
    big = job_memory((1, 1, 512, 512), (1, 1, 3, 3), False, Method.D2L_MANUAL, 10)
    small = job_memory((1, 1, 6, 8), (1, 1, 1, 2), False, Method.D2L_MANUAL, 10)
    assert small < big
    worker = worker_procs({**env, "KLAB_MAX_JOB_MEMORY": str(big - 1)}, "lowmem").wait_ready()
    out = klab(env, "submit", "--input", "random:512x512", "--kernel", "sobel-x", "--wait", "--json")
    result = json.loads(out.stdout)
    assert result["status"] == "failed", result
    assert result["epochs_done"] in (0, None) and result["started_at"] is not None
    assert result["error_message"].startswith("bad input: memory: the job needs about ")
    assert result["error_message"].endswith("(KLAB_MAX_JOB_MEMORY)")
    assert worker.proc.poll() is None and len(worker.children()) == 1
    out = klab(env, "submit", "--wait", "--json")  # the book's job
    assert json.loads(out.stdout)["status"] == "succeeded", out.stderr
