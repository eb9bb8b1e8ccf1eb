"""The engine on an NVIDIA GPU: correctness checks on CUDA, then the batched benchmark against the CPU.

    python bench/gpu_bench.py [--jobs 1000000] [--cpu-jobs 100000] [--book-sample 300]

Checks (each prints PASS or FAIL): the book's loop reproduced on CUDA; a batch equal to its jobs
trained alone on CUDA; CUDA agreeing with the CPU for every method, shared and per-job inputs, and
the convolution path. Then N book-sized jobs (edge:6x8, d2l, d2l-manual, 10 epochs) batched on
CUDA, on the CPU (a sample, scaled) and one at a time with the book's loop (a sample, scaled),
all measured in this run. Exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_batched import timed_train

from service.jobs.choices import Method
from service.jobs.problem import build_problem
from service.jobs.spec import JobSpec
from worker.engine import Job, run_spec, train

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}".rstrip(), flush=True)
    if not ok:
        FAILED.append(name)


def book_manual(seed: int, lr: float = 0.03, epochs: int = 10) -> tuple[list[float], np.ndarray]:
    x = torch.ones((6, 8))
    x[:, 2:6] = 0
    k = torch.tensor([[1.0, -1.0]])
    y = torch.zeros((6, 7))
    for i in range(6):
        for j in range(7):
            y[i, j] = (x[i:i + 1, j:j + 2] * k).sum()
    torch.manual_seed(seed)
    conv2d = nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    x, y = x.reshape((1, 1, 6, 8)), y.reshape((1, 1, 6, 7))
    losses = []
    for _ in range(epochs):
        l = (conv2d(x) - y) ** 2
        conv2d.zero_grad()
        l.sum().backward()
        conv2d.weight.data[:] -= lr * conv2d.weight.grad
        losses.append(float(l.sum().detach()))
    return losses, conv2d.weight.data.numpy().reshape(1, 2)


def losses_of(epochs: list[dict]) -> np.ndarray:
    return np.array([e["loss"] for e in epochs], dtype=float)


def correctness() -> None:
    for seed in (0, 1, 42):
        ref_l, ref_k = book_manual(seed)
        row, epochs = run_spec(JobSpec.parse({"seed": seed, "device": "cuda"}))
        ok = np.allclose(losses_of(epochs), ref_l, rtol=1e-5, atol=1e-6) and np.allclose(
            row["learned_kernel"], ref_k, rtol=1e-5, atol=1e-6)
        check(f"book d2l-manual seed {seed} on cuda", ok,
              f"max loss diff {np.abs(losses_of(epochs) - ref_l).max():.2e}")

    for inp, kernels in (("edge:6x8", ("[[1,-1],[2,0.5]]", "random:2x2")), ("random:5x7", ("random:2x2",)),
                         ("random:2x9x9", ("random:3x2x3x3",))):
        for method in ("d2l-manual", "d2l-sgd", "momentum", "adam"):
            specs = [JobSpec.parse({"input": inp, "kernel": k, "seed": s, "lr": lr, "noise": nz, "method": method,
                                    "epochs": 12, "device": "cuda"})
                     for k in kernels for s in (0, 7) for lr in (0.002, 0.01) for nz in (0.0, 0.1)]
            jobs = [Job(build_problem(s), s.seed, s.lr) for s in specs]
            batch = train(jobs, Method(method), 12, 2, "cuda")
            cpu = train(jobs, Method(method), 12, 2, "cpu")
            worst_alone = worst_cpu = 0.0
            for i, j in enumerate(jobs):
                _, alone = train([j], Method(method), 12, 2, "cuda").row(0)
                (b_row, b), (_, c) = batch.row(i), cpu.row(i)
                if b_row["status"] != "succeeded":
                    continue
                scale = np.maximum(1.0, np.abs(losses_of(c)))
                # CUDA's reductions pick their order by tensor shape, so a batch is equal to 1e-6
                # relative, not bit for bit as on the CPU.
                worst_alone = max(worst_alone, float((np.abs(losses_of(b) - losses_of(alone)) / scale).max()))
                worst_cpu = max(worst_cpu, float((np.abs(losses_of(b) - losses_of(c)) / scale).max()))
            check(f"{method} on {inp}: batch equals alone on cuda", worst_alone <= 1e-6,
                  f"max rel diff {worst_alone:.2e}")
            check(f"{method} on {inp}: cuda agrees with cpu", worst_cpu <= 1e-4, f"max rel diff {worst_cpu:.2e}")

    big = JobSpec.parse({"input": "random:2x3x160x160", "kernel": "random:4x3x5x5", "method": "adam", "lr": 0.01,
                         "epochs": 5, "batch_size": 2})
    _, on_gpu = run_spec(JobSpec.parse({**big.to_json(), "device": "cuda"}))
    _, on_cpu = run_spec(big)
    rel = float((np.abs(losses_of(on_gpu) - losses_of(on_cpu)) / np.abs(losses_of(on_cpu))).max())
    check("convolution path (2x3x160x160, 4x3x5x5, adam) cuda agrees with cpu", rel <= 1e-4, f"max rel diff {rel:.2e}")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def benchmark(n: int, cpu_n: int, book_n: int) -> None:
    problem = build_problem(JobSpec.parse({}))
    jobs = [Job(problem, seed=s, lr=0.03) for s in range(n)]
    train(jobs[:1000], Method.D2L_MANUAL, 10, 2, "cuda")  # warm-up: CUDA context and kernels
    # train() and the analysis it leaves to the first result row (the gap, the errors), as one
    gpu, loop_s, gpu_s = timed_train(jobs, Method.D2L_MANUAL, 10, 2, "cuda")
    cpu_s = timed_train(jobs[:cpu_n], Method.D2L_MANUAL, 10, 2, "cpu")[2] * n / cpu_n
    sample = min(book_n, n)
    book_s = timed(lambda: [book_manual(s) for s in range(sample)]) * n / sample
    # spot check: the GPU batch against the CPU for a few jobs
    for i in (0, n // 2, n - 1):
        _, ref = run_spec(JobSpec.parse({"seed": i}))
        _, got = gpu.row(i)
        check(f"job {i} of the {n}-job GPU batch agrees with the CPU",
              np.allclose(losses_of(got), losses_of(ref), rtol=1e-5, atol=1e-6))
    print(f"\n{n} book-sized jobs (edge:6x8, d2l, d2l-manual, 10 epochs)")
    print(f"  GPU batched, all of train():      {gpu_s:9.3f} s  (init + epochs: {loop_s:.3f} s)")
    print(f"  CPU batched ({cpu_n} scaled):     {cpu_s:9.3f} s")
    print(f"  book loop on CPU ({sample} scaled): {book_s:9.1f} s")
    print(f"  GPU vs CPU batched: {cpu_s / gpu_s:6.1f}x   GPU vs book loop: {book_s / gpu_s:8.0f}x   "
          f"CPU batched vs book loop: {book_s / cpu_s:6.0f}x")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--cpu-jobs", type=int, default=100_000)
    ap.add_argument("--book-sample", type=int, default=300)
    ap.add_argument("--skip-checks", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU is visible: run this on a machine with an NVIDIA GPU")
        return 2
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, python {platform.python_version()}, "
          f"{torch.get_num_threads()} CPU threads")
    if not args.skip_checks:
        correctness()
    benchmark(args.jobs, args.cpu_jobs, args.book_sample)
    print(f"\n{len(FAILED)} check(s) failed" if FAILED else "\nall checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
