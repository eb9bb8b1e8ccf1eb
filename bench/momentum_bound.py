"""Momentum's stable lr over several batches: how often the search misses a window of lrs that grows the gap.

On random inputs (N x 1 x H x W, 1x1 to 2x2 kernels, with and without a bias, every batch size short of one
batch), the bound the shipped search finds (worker.engine.pace: lrs 2^(1/BOUND_SCAN) apart, peaks looked into)
and the one a plain scan sqrt(2) apart finds (the search before 2026-12-06) are each checked against a scan
2^(1/1024) apart; it prints how many differ by more than 0.1%, the worst ratio, and the search's time against
the sqrt(2) scan's, measured in the same run.

    .venv/bin/python bench/momentum_bound.py --inputs 300 --seed 3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.jobs.choices import Method
from worker.engine import pace
from worker.engine.analysis import Design


def bound(p: pace.Pace, upper: float, per_octave: int, peaks: int) -> float | None:
    """The search at this density, with this many peaks looked into (pace.PEAKS set for the call)."""
    shipped, pace.PEAKS = pace.PEAKS, peaks
    try:
        return p._first_growing(upper, per_octave, spare=10**9)
    finally:
        pace.PEAKS = shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    ways = {"sqrt(2) scan": (2, 0), "shipped": (pace.BOUND_SCAN, pace.PEAKS), "reference": (1024, 0)}
    found: dict[str, list] = {w: [] for w in ways}
    seconds = dict.fromkeys(ways, 0.0)
    for _ in range(args.inputs):
        n = int(rng.integers(3, 9))
        x = rng.standard_normal((n, 1, int(rng.integers(3, 7)), int(rng.integers(3, 7))))
        design = Design(x, (1, 1, int(rng.integers(1, 3)), int(rng.integers(1, 3))), bool(rng.integers(0, 2)))
        batch = int(rng.integers(1, n))
        p = pace.Pace(design, Method.MOMENTUM, batch, 1)
        if p.hs is None:
            continue
        upper = 2.0 / max(c * float(np.linalg.eigvalsh(h).max()) for c, h in zip(p.cs, p.hs)) * 1.9
        for way, (per_octave, peaks) in ways.items():
            start = time.perf_counter()
            found[way].append(bound(p, upper, per_octave, peaks))
            seconds[way] += time.perf_counter() - start
    ref = found["reference"]
    print(f"{len(ref)} random inputs, seed {args.seed}; against lrs 2^(1/1024) apart:")
    for way in ("sqrt(2) scan", "shipped"):
        pairs = [(b, r) for b, r in zip(found[way], ref) if b is not None and r is not None]
        off = [b / r for b, r in pairs if abs(b / r - 1) > 1e-3]
        worst = max(off, key=lambda q: abs(q - 1), default=1.0)
        print(f"  {way:13s} differs on {len(off)} ({len(off) / len(ref):.1%}), worst {worst:.3g}x, "
              f"time {seconds[way] / seconds['sqrt(2) scan']:.2f}x the sqrt(2) scan's")


if __name__ == "__main__":
    main()
