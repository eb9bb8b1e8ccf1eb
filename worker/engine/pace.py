"""How fast a method can close the gap on an input: the largest stable learning rate, and the factor by
which the slowest identifiable direction of the gap shrinks each epoch.

Every method but adam is linear on this quadratic problem. With A the design matrix (service of
analysis.Design) and e = W - W* the gap in A's row space, one step on a batch b of rows A_b is

    e <- (I - lr c_b H_b) e,    H_b = A_b^T A_b,

where c_b is what the loss puts in front of the gradient: 2 for d2l-manual (the book's summed squared
error, `l.sum()`), 2 / (elements of the batch's labels) for the mean-loss methods (`nn.MSELoss`).
Momentum (torch's heavy ball, mu = MOMENTUM) carries its buffer along: (e, buf) <- [[I - lr c H, -lr mu],
[c H, mu]] (e, buf).

- d2l-manual: one step an epoch on all of A. The step shrinks every direction iff lr < 1 / lambda_max(A^T A)
  (the stable lr), and the slowest direction shrinks by max_i |1 - 2 lr lambda_i| an epoch.
- d2l-sgd: lr < min_b 2 / (c_b lambda_max(H_b)) keeps every step from growing the gap. With one batch an
  epoch that is exact; with several it is sufficient (each step is then non-expansive), and the rate is
  the spectral radius of the product of the epoch's steps, computed in the row space.
- momentum: with one batch an epoch, (1 + mu) times d2l-sgd's bound, the heavy ball's exact condition. With
  several, the buffer carried from batch to batch can make the epoch grow the gap far below that (at a third
  of it, on random inputs), and only in windows of lrs a few percent wide: the bound is then the least lr
  found at which the spectral radius of the epoch's product of (e, buf) steps reaches 1, scanning lrs
  2^(1/BOUND_SCAN) apart (coarser, down to sqrt(2), where RATE_WORK_LIMIT would be spent) from a thousandth of
  (1 + mu) times d2l-sgd's bound up to it, and bisecting the step where it first does; none where even sqrt(2)
  would spend over RATE_WORK_LIMIT. The rate is that spectral radius.
- adam scales each weight's step by its own gradient history, so no curvature bound applies: none is
  reported. lstsq has no learning rate.

Everything works in the r-dimensional row space (r the rank), from V (the eigenvectors of A^T A that span
it): V^T H_b V is r x r, each H_b summed from its batch's rows a block at a time (analysis.gram), and A is
never built whole. An epoch's steps are kept (for the rate at each lr) only within RATE_WORK_LIMIT and
RATE_MEMORY_LIMIT.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service import defaults
from service.jobs.choices import Method
from worker.engine.analysis import Design, gram

RATE_WORK_LIMIT = 2e9
"""Most multiply-adds spent on one job's rate (products of r x r matrices over an epoch's batches)."""

BOUND_SCAN = 64
"""Lrs scanned an octave for momentum's stable lr over several batches, where RATE_WORK_LIMIT allows: its epochs
can grow the gap in windows a few percent wide. Scanned sqrt(2) apart, about one random input in five (17 to 21%) had
its bound missed, up to 14 times too high; 64 an octave with the peaks looked into, none of 1,200 (against 1,024 an
octave: bench/momentum_bound.py, bench/RESULTS.md)."""

BOUND_OCTAVES = 10
"""The scan runs from 2^-10 (about a thousandth) of the per-batch bound up to it."""

BISECTIONS = 20
"""Bisections of the scanned step where an epoch first grows the gap (to a millionth of the bound)."""

PEAK_FLOOR = 1 - 1e-3
"""A peak of the scanned radii whose parabola through it and its neighbours reaches this is looked at between its
neighbours, PEAKS at most, the highest first: a window of growth may lie there. (The radius of a small lr is just
under 1, its scanned values a little uneven: every one of those peaks was looked at, and the budget spent.)"""

PEAKS = 8
"""Most peaks looked into (PEAK_FLOOR)."""

ZOOM, ZOOMS = 17, 4
PEAK_RATES = ZOOM * ZOOMS
"""Rates spent on one peak: ZOOM lrs across the two steps around it, then around the largest, ZOOMS times (its top
found to 4,096th of a step)."""


AT_BOUND = 1e-9
"""An lr within this much of the stable lr, relative, whose rate is within it of 1, is at the bound: its rate is 1
(an exact bound's rate there is 1, which float64 computes a few units of its last place either side)."""


FASTEST_BAND = 1e-3
"""A rate as fast as another within this much: its epochs shrink the gap by as much, log for log (as_fast).
Momentum's rate is flat, its heavy ball's sqrt(mu) a step, across lrs hundreds of times apart (edge:6x8 at lrs 0.0092
to 2.63, its stable lr 2.66, where the sentence said "raise the learning rate" at every one of them)."""


def as_fast(rate: np.ndarray, best: np.ndarray, band: float = FASTEST_BAND) -> np.ndarray:
    """Rates under 1 whose epochs shrink the gap as much as `best`'s within `band` (in log terms: relative to the
    rate itself, a rate of 0.9999966 was as fast as a best of 0.999)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rate < 1) & (np.log(rate) <= np.log(best) * (1 - band))


def under_bound(lr: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Lrs under the stable lr, not at it (AT_BOUND): their rate is under 1, but for float64's rounding."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(bound) & (lr < bound * (1 - AT_BOUND))


PRODUCT_BYTES = 16 * 2**20
"""Most bytes of an epoch's steps made at once to multiply them (Pace._radius), beside the curvatures kept."""

RATE_MEMORY_LIMIT = 64 * 2**20
"""Most bytes of an epoch's per-batch curvatures (r x r each) kept for the rate; beyond it none is reported.
(service.jobs.problem.ENGINE_BYTES counts them in a job's memory.)"""


class Pace:
    """A method's steps on one design: per-batch curvatures in the row space, the stable lr, and rates."""

    def __init__(self, design: Design, method: Method, batch_size: int, c_out: int):
        self.method = method
        self.stable_lr: float | None = None
        self.cs: np.ndarray | None = None  # c_b per batch of an epoch, where its steps are kept
        self.hs: np.ndarray | None = None  # V^T H_b V per batch of an epoch (batches x r x r)
        self.eigen: np.ndarray | None = None  # c * eigenvalues, with one step an epoch
        self.scanned: tuple[np.ndarray, np.ndarray] | None = None  # momentum's scanned lrs under its bound, and radii
        if method in (Method.ADAM, Method.LSTSQ) or design.rank == 0:
            return
        n = design.x.shape[0]
        if method is Method.D2L_MANUAL:
            bounds = [(0, n)]
            scale = [2.0]
        else:
            bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
            per = design.rows // n  # rows of A per sample
            scale = [2.0 / ((e - s) * per * c_out) for s, e in bounds]
        if len(bounds) == 1:
            self.eigen = scale[0] * design.lam
            largest = float(self.eigen.max())
        else:
            v, r = design.v, design.rank
            work = (2 * r if method is Method.MOMENTUM else r) ** 3 * len(bounds)  # an epoch's rate
            keep = work <= RATE_WORK_LIMIT and 8 * r * r * len(bounds) <= RATE_MEMORY_LIMIT
            largest = 0.0
            if keep:  # filled in place: a list stacked at the end held them twice
                self.cs, self.hs = np.array(scale), np.empty((len(bounds), r, r))
            for b, ((s, e), c) in enumerate(zip(bounds, scale)):
                h = v.T @ gram(design.x[s:e], design.kh, design.kw, design.bias) @ v
                largest = max(largest, c * float(np.linalg.eigvalsh(h).max()))
                if self.hs is not None:
                    self.hs[b] = h
        if largest > 0:
            bound = 2.0 / largest * (1 + defaults.MOMENTUM if method is Method.MOMENTUM else 1.0)
            if method is Method.MOMENTUM and len(bounds) > 1:  # the rates a search may spend: lrs an octave
                rates = int(RATE_WORK_LIMIT / work) - 1 - BISECTIONS
                scan = min(BOUND_SCAN, rates // BOUND_OCTAVES)
                spare = rates - scan * BOUND_OCTAVES
                bound = self._first_growing(bound, scan, spare) if keep and scan >= 2 else None
            self.stable_lr = bound

    def _first_growing(self, upper: float, per_octave: int, spare: int) -> float | None:
        """The least lr up to `upper` found at which an epoch's map grows (spectral radius 1 or more), scanning
        `per_octave` lrs an octave, then looking between two scanned lrs at the PEAKS highest peaks of the radius
        whose parabola reaches PEAK_FLOOR, as far as `spare` rates allow (a window of growth narrower than the
        scan's step, 1.0003 at its top: 0.93 on a random input, where the scan found 1.49): `upper` when none grows;
        None when even the least scanned does. The scanned lrs kept (best_lr's) are those under what it returns: a
        peak may have lowered it below lrs the scan found fast."""
        grid = upper * 2.0 ** (-np.arange(BOUND_OCTAVES * per_octave, -1, -1) / per_octave)
        radii = self._radii(grid)
        end = int(np.argmax(radii >= 1)) if (radii >= 1).any() else len(grid)  # the first scanned that grows
        if end == 0:
            return None
        self.scanned = grid[:end], radii[:end]
        lo, hi = (float(grid[end - 1]), float(grid[end])) if end < len(grid) else (upper, None)
        i = np.arange(1, end - 1)
        left, mid, right = radii[i - 1], radii[i], radii[i + 1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # the top of a parabola through three
            top = np.where(2 * mid > left + right, mid + (right - left) ** 2 / (8 * (2 * mid - left - right)), mid)
        peaks = (left <= mid) & (mid >= right) & (top >= PEAK_FLOOR)
        order = np.argsort(-top[peaks], kind="stable")[: min(PEAKS, spare // PEAK_RATES)]
        if len(order):
            at = i[peaks][order]
            tops, top_radii = self._tops(grid[at - 1], grid[at + 1])
            if (top_radii >= 1).any():
                k = np.flatnonzero(top_radii >= 1)[np.argmin(tops[top_radii >= 1])]  # the least lr that grows
                lo, hi = float(grid[at[k] - 1]), float(tops[k])
        bound = upper
        if hi is not None:
            for _ in range(BISECTIONS):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if self._radius(mid) >= 1 else (mid, hi)
            bound = lo
        under = self.scanned[0] < bound
        self.scanned = self.scanned[0][under], self.scanned[1][under]
        return bound

    def _tops(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the radius is largest between a[k] and b[k], and that radius, for every k at once: ZOOM lrs across
        each, then across the two steps around the largest, ZOOMS times (PEAK_RATES rates a peak)."""
        rows = np.arange(len(a))
        for _ in range(ZOOMS):
            lrs = a[:, None] + (b - a)[:, None] * np.linspace(0.0, 1.0, ZOOM)
            radii = self._radii(lrs.ravel()).reshape(lrs.shape)
            j = radii.argmax(axis=1)
            a, b = lrs[rows, np.maximum(j - 1, 0)], lrs[rows, np.minimum(j + 1, ZOOM - 1)]
        return lrs[rows, j], radii[rows, j]

    def rate(self, lr: float) -> float | None:
        """The factor by which the slowest identifiable direction of the gap shrinks each epoch at `lr` (momentum's
        too where its bound was not searched for: it needs no bound)."""
        if self.eigen is None and self.hs is None:
            return None
        return self._radius(lr)

    def _radius(self, lr: float) -> float:
        """The spectral radius of an epoch's map of the gap (with momentum, of the gap and the buffer) at `lr`."""
        momentum = self.method is Method.MOMENTUM
        if self.eigen is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # lr 1e308: an infinite rate, no RuntimeWarning
                if not momentum:
                    return float(np.abs(1.0 - lr * self.eigen).max())
                return max(_heavy_ball(lr * h) for h in self.eigen)
        r = self.hs.shape[1]
        d, eye, mu = 2 * r if momentum else r, np.eye(r), defaults.MOMENTUM
        epoch = np.eye(d)
        chunk = max(1, PRODUCT_BYTES // (8 * d * d))
        with np.errstate(over="ignore", invalid="ignore"):
            for s in range(0, len(self.hs), chunk):  # each chunk's steps made at once, multiplied pairwise
                c, h = self.cs[s : s + chunk, None, None], self.hs[s : s + chunk]
                if momentum:
                    steps = np.empty((len(h), d, d))
                    steps[:, :r, :r], steps[:, :r, r:] = eye - lr * c * h, -lr * mu * eye
                    steps[:, r:, :r], steps[:, r:, r:] = c * h, mu * eye
                else:
                    steps = eye - lr * c * h
                while len(steps) > 1:  # each later step times the one before it, in order
                    even = len(steps) - len(steps) % 2
                    steps = np.concatenate([steps[1:even:2] @ steps[0:even:2], steps[even:]])
                epoch = steps[0] @ epoch
        if not np.isfinite(epoch).all():  # an lr so large that an epoch's map overflows: it grows without bound
            return float("inf")
        return float(np.abs(np.linalg.eigvals(epoch)).max())

    def _radii(self, lrs: np.ndarray) -> np.ndarray:
        """_radius at many lrs at once (momentum over several batches): each lr's epoch map multiplied step by step,
        as many lrs together as PRODUCT_BYTES holds."""
        r = self.hs.shape[1]
        d, eye, mu = 2 * r, np.eye(r), defaults.MOMENTUM
        out = np.empty(len(lrs))
        chunk = max(1, PRODUCT_BYTES // (2 * 8 * d * d))  # the maps and one step for each lr
        with np.errstate(over="ignore", invalid="ignore"):
            for s in range(0, len(lrs), chunk):
                lr = lrs[s : s + chunk, None, None]
                epoch = np.broadcast_to(np.eye(d), (len(lr), d, d))
                step = np.empty((len(lr), d, d))
                step[:, :r, r:], step[:, r:, r:] = -lr * mu * eye, mu * eye
                for c, h in zip(self.cs, self.hs):
                    step[:, :r, :r], step[:, r:, :r] = eye - lr * c * h, c * h
                    epoch = step @ epoch
                finite = np.isfinite(epoch).all(axis=(1, 2))  # not: an lr so large that the map overflows
                radius = np.abs(np.linalg.eigvals(np.where(finite[:, None, None], epoch, 0.0))).max(axis=1)
                out[s : s + chunk] = np.where(finite, radius, np.inf)
        return out

    def best_lr(self) -> tuple[float, float, float] | None:
        """The lrs at which the gap shrinks fastest, as (least, most, that rate); None where not known.

        - Plain gradient descent with one step an epoch: one lr, 2 / (lambda_min + lambda_max), at the rate
          (kappa - 1) / (kappa + 1) (kappa the condition number in the row space).
        - The heavy ball with one step an epoch: a direction of curvature h shrinks by sqrt(mu) a step wherever
          lr h lies within [(1 - sqrt(mu))^2, (1 + sqrt(mu))^2], and more slowly either side; so every lr that puts
          both the least and the largest curvature there is as fast, and where none does (kappa above
          ((1 + sqrt(mu)) / (1 - sqrt(mu)))^2, about 1,444 at mu 0.9) the fastest is the one lr at which the two
          are as slow.
        - The heavy ball over several batches: the lrs scanned for its bound, under it, as fast as the least rate
          (as_fast): the widest run of them where there are several (0.0017 to 0.571 and 0.658 to 1.72 on one random
          input); the least scanned where the run reaches the scan's end (a thousandth of the per-batch bound).
        """
        if self.eigen is not None and self.method is not Method.MOMENTUM:
            lo, hi = float(self.eigen.min()), float(self.eigen.max())
            return 2.0 / (lo + hi), 2.0 / (lo + hi), (hi - lo) / (hi + lo)
        if self.eigen is not None:
            least, most = float(self.eigen.min()), float(self.eigen.max())
            s = math.sqrt(defaults.MOMENTUM)
            low, high = (1 - s) ** 2 / least, (1 + s) ** 2 / most
            if low <= high:
                return low, high, s
            a, b = high, low  # the least curvature's radius falls across [a, b], the largest's rises
            for _ in range(60):
                mid = (a + b) / 2
                a, b = (mid, b) if _heavy_ball(mid * least) > _heavy_ball(mid * most) else (a, mid)
            return a, a, max(_heavy_ball(a * least), _heavy_ball(a * most))
        if self.scanned is None:
            return None
        grid, radii = self.scanned
        if not len(grid):
            return None
        least = float(radii.min())
        near = np.concatenate([[False], as_fast(radii, np.float64(least)) | (radii == least), [False]])
        edges = np.flatnonzero(np.diff(near.astype(np.int8)))  # each run's start and end (past it), in pairs
        starts, ends = edges[::2], edges[1::2]
        widest = int(np.argmax(ends - starts))  # a run of scanned lrs, spaced alike: the widest in log lr
        return float(grid[starts[widest]]), float(grid[ends[widest] - 1]), least


@dataclass(frozen=True)
class Paces:
    """The pace of every job of a batch, as arrays (NaN where none applies)."""

    bound: np.ndarray  # the stable lr
    rate: np.ndarray
    more: np.ndarray  # epochs still needed (NaN: none, or not known)
    best_lr: np.ndarray  # the least lr that closes the gap fastest, where known
    best_high: np.ndarray  # the most (momentum's rate is flat across a range of lrs)
    best_rate: np.ndarray

    @classmethod
    def of(cls, groups: Sequence[tuple[Pace, np.ndarray]], lrs: np.ndarray, excess: np.ndarray, tol: np.ndarray
           ) -> Paces:
        """`groups`: each input's pace and the indices of its jobs; `lrs` NaN for jobs without one (lstsq);
        `excess` the mse over the optimum's (NaN where it converged or did not succeed)."""
        n = len(lrs)
        bound, rate, best_lr, best_high, best_rate = (np.full(n, np.nan) for _ in range(5))
        for pace, idx in groups:
            lr = lrs[idx]
            if np.isnan(lr).all():
                continue
            bound[idx] = np.nan if pace.stable_lr is None else pace.stable_lr
            distinct, which = np.unique(lr, return_inverse=True)  # one rate per distinct lr
            rates = np.array([np.nan if (r := pace.rate(float(v))) is None else r for v in distinct])
            if pace.stable_lr is not None:  # at the stable lr the rate is 1; float64 made it 0.999999999999999 at
                # times, and `about 10892616853088272 more epochs` beside the same job's `not converging` at others
                at_bound = ~under_bound(distinct, np.float64(pace.stable_lr)) & (rates > 1 - AT_BOUND)
                rates = np.where(at_bound, np.maximum(rates, 1.0), rates)
            rate[idx] = rates[which]
            best = pace.best_lr()
            if best is not None:
                best_lr[idx], best_high[idx], best_rate[idx] = best
        return cls(bound, rate, more_epochs(rate, excess, tol), best_lr, best_high, best_rate)

    def fields(self) -> dict[str, np.ndarray]:
        """The result fields (service.jobs.result) that hold the pace."""
        return {"stable_lr": self.bound, "convergence_rate": self.rate, "more_epochs": self.more}


def more_epochs(rate: np.ndarray, excess: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """About how many more epochs bring an mse `excess` over the optimum's within `tol`, at `rate` an epoch
    (the mse shrinks as the rate squared); NaN where it will not, or need not."""
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.ceil(np.log(tol / excess) / (2 * np.log(rate)))
    k = np.where(rate <= 0, 1.0, np.maximum(k, 1.0))
    return np.where(np.isfinite(excess) & (excess > tol) & (rate < 1), k, np.nan)


def _heavy_ball(h: float) -> float:
    """The spectral radius of the heavy ball on one direction of curvature h (lr folded in)."""
    mu = defaults.MOMENTUM
    b = 1 + mu - h
    disc = b * b - 4 * mu
    if disc < 0:
        return math.sqrt(mu)
    root = math.sqrt(disc)
    return max(abs(b + root), abs(b - root)) / 2
