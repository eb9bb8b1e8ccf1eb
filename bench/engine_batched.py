"""100,000 book-sized jobs trained batched through the engine vs one at a time with the book's loop.

Each job: edge:6x8, kernel d2l, d2l-manual, 10 epochs, lr 0.03, seed s for s in 0..N-1. The book's loop
(torch.manual_seed(s); nn.Conv2d(1, 1, (1, 2), bias=False); ten manual steps) is timed on a sample of
jobs and scaled to N; the engine trains all N in one call to worker.engine.train (with the analysis it
leaves to the first result row, the gap and the errors, counted in). Both are measured in this run, on
this machine.

    .venv/bin/python bench/engine_batched.py [--jobs N] [--sample S]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn

from service.jobs.choices import Method
from service.jobs.problem import build_problem
from service.jobs.spec import JobSpec
from worker.engine import BatchResult, Job, OnEpoch, train

EPOCHS, LR = 10, 0.03


def book_job(seed: int, X: torch.Tensor, Y: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """The book's first loop for one seed, recording l.sum() every epoch as the engine does."""
    torch.manual_seed(seed)
    conv2d = nn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    losses = []
    for _ in range(EPOCHS):
        Y_hat = conv2d(X)
        l = (Y_hat - Y) ** 2
        conv2d.zero_grad()
        l.sum().backward()
        conv2d.weight.data[:] -= LR * conv2d.weight.grad
        losses.append(l.sum().item())
    return losses, conv2d.weight.data.reshape(1, 2).clone()


def timed_train(jobs: list[Job], method: Method, epochs: int, batch_size: int, device: str = "cpu",
                on_epoch: OnEpoch | None = None) -> tuple[BatchResult, float, float]:
    """worker.engine.train with its analysis done, timed: the result, the seconds of its initial weights +
    training loop, and the seconds of it all (train() and the gap and errors it leaves to the first row)."""
    t0 = time.perf_counter()
    result = train(jobs, method, epochs, batch_size, device, on_epoch)
    _ = result.gap, result.errors  # computed once for the whole batch, on first use
    return result, result.loop_seconds, time.perf_counter() - t0


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"nproc {os.cpu_count()}, CPU {cpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"numpy {np.__version__}, Python {platform.python_version()}, load average "
            f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000, help="jobs trained batched (seeds 0..N-1)")
    ap.add_argument("--sample", type=int, default=300, help="jobs timed one at a time with the book's loop")
    ap.add_argument("--records", type=int, default=1_000, help="per-job result rows (BatchResult.row) built and timed")
    ap.add_argument("--repeat", type=int, default=3, help="times each measurement is repeated (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, sample = args.jobs, min(args.sample, args.jobs)
    print(f"machine: {machine()}")
    print(f"jobs: {n:,} (edge:6x8, d2l, d2l-manual, {EPOCHS} epochs, lr {LR}); book loop sample: {sample}")

    spec = JobSpec.parse({"input": "edge:6x8", "kernel": "d2l", "method": "d2l-manual", "lr": LR, "epochs": EPOCHS})
    problem = build_problem(spec)  # built once and shared by every job
    t0 = time.perf_counter()
    jobs = [Job(problem, seed=s, lr=LR) for s in range(n)]
    make_jobs = time.perf_counter() - t0

    X = torch.from_numpy(problem.x)
    Y = torch.from_numpy(problem.y)
    book_job(0, X, Y)  # warm-up: first-call allocations and dispatch caches
    train(jobs[:2], Method.D2L_MANUAL, EPOCHS, 2)

    # Alternate the two so that load from elsewhere on the machine hits both alike.
    book_per_job, engine_train, engine_total, book_cpu, engine_cpu = [], [], [], [], []
    result = None
    sample_seeds = np.linspace(0, n - 1, sample).round().astype(int)
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        book = [book_job(int(s), X, Y) for s in sample_seeds]
        book_per_job.append((time.perf_counter() - t0) / sample)
        book_cpu.append((time.process_time() - c0) / sample)
        c0 = time.process_time()
        result, train_s, total_s = timed_train(jobs, Method.D2L_MANUAL, EPOCHS, 2)
        engine_total.append(total_s)
        engine_cpu.append(time.process_time() - c0)
        engine_train.append(train_s)

    # The engine's jobs are the book's jobs: check the sampled ones.
    worst_loss = worst_kernel = 0.0
    trained = result.trained
    for (losses, kernel), s in zip(book, sample_seeds):
        worst_loss = max(worst_loss, float(np.max(np.abs(trained.loss[:, s] - losses) / np.maximum(np.abs(losses), 1))))
        worst_kernel = max(worst_kernel, float(np.abs(trained.weights[s].reshape(1, 2) - kernel.numpy()).max()))
    assert worst_loss < 1e-5 and worst_kernel < 1e-5, (worst_loss, worst_kernel)

    records = min(args.records, n)
    t0 = time.perf_counter()
    for i in range(records):
        result.row(i)
    record_per_job = (time.perf_counter() - t0) / records

    book_total = statistics.median(book_per_job) * n
    train_s, total_s = statistics.median(engine_train), statistics.median(engine_total)
    records_s = record_per_job * n
    print(f"book loop, one job at a time: {statistics.median(book_per_job) * 1e3:.3f} ms/job "
          f"(runs: {', '.join(f'{v * 1e3:.3f}' for v in book_per_job)}) -> {book_total:.1f} s for {n:,} jobs (scaled)")
    print(f"engine train(), initial weights + training loop: {train_s:.3f} s "
          f"(runs: {', '.join(f'{v:.3f}' for v in engine_train)})")
    print(f"engine train(), with initial weights and analysis: {total_s:.3f} s "
          f"(runs: {', '.join(f'{v:.3f}' for v in engine_total)})")
    print(f"Job objects: {make_jobs:.3f} s; result records: {record_per_job * 1e6:.1f} us/job -> {records_s:.1f} s "
          f"for {n:,} (scaled from {records})")
    print(f"agreement on the {sample} sampled jobs: losses within {worst_loss:.1e} (relative), "
          f"kernels within {worst_kernel:.1e}")
    print(f"CPU time (process): book loop {statistics.median(book_cpu) * 1e3:.3f} ms/job -> "
          f"{statistics.median(book_cpu) * n:.1f} s scaled; engine train() {statistics.median(engine_cpu):.3f} s; "
          f"ratio {statistics.median(book_cpu) * n / statistics.median(engine_cpu):.0f}x")
    print(f"speedup, train() vs book loop: {book_total / total_s:.0f}x (target >= 100x)")
    print(f"speedup, initial weights + training loop vs book loop: {book_total / train_s:.0f}x")
    print(f"speedup, train() + all records vs book loop: {book_total / (total_s + records_s):.1f}x")
    if not math.isfinite(book_total / total_s) or book_total / total_s < 100:
        print("BELOW TARGET")


if __name__ == "__main__":
    main()
