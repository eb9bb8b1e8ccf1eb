"""One large job, time per epoch: through worker.engine.train vs a bare PyTorch loop doing the same.

The job: input random 8x3x256x256 (8 samples of 3x256x256), kernel random 8x3x5x5, adam, lr 0.01,
batch size 8, 20 epochs. The engine's epoch loop is timed from its on_epoch callbacks; its analysis
(least squares, rank, gaps) is reported apart. The bare loop: torch.manual_seed; nn.Conv2d(3, 8, 5,
bias=False); torch.optim.Adam; nn.MSELoss; each epoch a forward/backward/step on the batch, then the
seed's after-epoch loss on the last batch. Runs alternate (engine, bare, engine, bare, ...).

    .venv/bin/python bench/engine_large.py [--epochs 20] [--runs 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from engine_batched import machine, timed_train
from torch import nn

from service.jobs import inputs
from service.jobs.choices import Method
from service.jobs.problem import Problem
from worker.engine import Job

N, C, H, W = 8, 3, 256, 256
KSHAPE = (8, 3, 5, 5)
LR, BATCH, SEED = 0.01, 8, 0


def make_problem() -> Problem:
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    kernel = rng.standard_normal(KSHAPE)
    y = inputs.correlate(x, kernel)  # float64 N x 8 x 252 x 252
    return Problem(x=x, y=y, true_kernel=kernel, kernel_shape=KSHAPE, true_bias=None, has_bias=False,
                   single_channel=False)


def run_engine(problem: Problem, epochs: int) -> dict:
    stamps: list[float] = []
    cpu: list[float] = []

    def on_epoch(event) -> None:
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    started = time.perf_counter()
    result, train_only, total = timed_train([Job(problem, seed=SEED, lr=LR)], Method.ADAM, epochs, BATCH,
                                            on_epoch=on_epoch)
    return {"first": stamps[0] - started, "per_epoch": (stamps[-1] - stamps[0]) / (epochs - 1),
            "cpu_per_epoch": (cpu[-1] - cpu[0]) / (epochs - 1),
            "analysis": total - train_only, "wall": time.perf_counter() - started,
            "loss": result.trained.loss[:, 0], "kernel": result.trained.weights[0]}


def run_bare(problem: Problem, epochs: int) -> dict:
    started = time.perf_counter()
    X = torch.from_numpy(problem.x)
    Y = torch.from_numpy(problem.y.astype(np.float32))
    torch.manual_seed(SEED)
    conv2d = nn.Conv2d(C, KSHAPE[0], kernel_size=KSHAPE[2:], bias=False)
    trainer = torch.optim.Adam(conv2d.parameters(), lr=LR)
    loss = nn.MSELoss()
    stamps, cpu, losses = [], [], []
    for _ in range(epochs):
        for s in range(0, N, BATCH):
            _data, _label = X[s : s + BATCH], Y[s : s + BATCH]
            l = loss(conv2d(_data), _label)
            trainer.zero_grad()
            l.backward()
            trainer.step()
        with torch.no_grad():  # the seed's after-epoch loss on the last batch
            losses.append(loss(conv2d(_data), _label).item())
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
    return {"first": stamps[0] - started, "per_epoch": (stamps[-1] - stamps[0]) / (epochs - 1),
            "cpu_per_epoch": (cpu[-1] - cpu[0]) / (epochs - 1),
            "wall": time.perf_counter() - started, "loss": np.array(losses),
            "kernel": conv2d.weight.detach().numpy().astype(np.float64)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3, help="runs of each, alternating")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"job: input {N}x{C}x{H}x{W}, kernel {'x'.join(map(str, KSHAPE))}, adam, lr {LR}, batch {BATCH}, "
          f"{args.epochs} epochs")
    problem = make_problem()
    run_bare(problem, 2)  # warm-up of both paths
    run_engine(problem, 2)

    engine, bare, ratios, cpu_ratios = [], [], [], []
    for i in range(args.runs):
        e = run_engine(problem, args.epochs)
        b = run_bare(problem, args.epochs)
        engine.append(e)
        bare.append(b)
        ratios.append(e["per_epoch"] / b["per_epoch"])
        cpu_ratios.append(e["cpu_per_epoch"] / b["cpu_per_epoch"])
        print(f"run {i + 1}: engine {e['per_epoch'] * 1e3:.1f} ms/epoch (first epoch {e['first'] * 1e3:.0f} ms, "
              f"analysis {e['analysis']:.2f} s, wall {e['wall']:.2f} s); bare {b['per_epoch'] * 1e3:.1f} ms/epoch "
              f"(first epoch {b['first'] * 1e3:.0f} ms, wall {b['wall']:.2f} s); ratio {ratios[-1]:.3f}; "
              f"CPU time per epoch: engine {e['cpu_per_epoch'] * 1e3:.1f} ms, bare {b['cpu_per_epoch'] * 1e3:.1f} ms, "
              f"ratio {cpu_ratios[-1]:.3f}")

    rel = np.max(np.abs(engine[-1]["loss"] - bare[-1]["loss"]) / np.abs(bare[-1]["loss"]))
    kdiff = np.max(np.abs(engine[-1]["kernel"] - bare[-1]["kernel"]))
    print(f"agreement: losses within {rel:.1e} (relative), kernels within {kdiff:.1e}")
    print(f"engine per epoch (median): {statistics.median(r['per_epoch'] for r in engine) * 1e3:.1f} ms; "
          f"bare per epoch (median): {statistics.median(r['per_epoch'] for r in bare) * 1e3:.1f} ms")
    print(f"engine analysis (median): {statistics.median(r['analysis'] for r in engine):.2f} s")
    print(f"median ratio engine/bare of CPU time per epoch: {statistics.median(cpu_ratios):.3f} "
          "(process CPU time: less sensitive to other load than wall time; with 1 thread, the work itself)")
    ratio = statistics.median(ratios)
    print(f"median ratio engine/bare per epoch: {ratio:.3f} (target <= 1.1)"
          + ("" if ratio <= 1.1 else "  ABOVE TARGET"))


if __name__ == "__main__":
    main()
