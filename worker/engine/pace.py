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
- momentum: (1 + mu) times d2l-sgd's bound, the heavy ball's condition on each batch's quadratic (exact
  with one batch); the rate is the spectral radius of the epoch's product of (e, buf) steps.
- adam scales each weight's step by its own gradient history, so no curvature bound applies: none is
  reported. lstsq has no learning rate.

Everything works in the r-dimensional row space (r the rank), from V (A's right singular vectors):
V^T H_b V is r x r, and nothing larger than the engine's design is built.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service import defaults
from service.jobs.spec import Method
from worker.engine.analysis import Design, im2col

RATE_WORK_LIMIT = 2e9
"""Most multiply-adds spent on one job's rate (products of r x r matrices over an epoch's batches)."""


class Pace:
    """A method's steps on one design: per-batch curvatures in the row space, the stable lr, and rates."""

    def __init__(self, design: Design, method: Method, batch_size: int, c_out: int):
        self.method = method
        self.stable_lr: float | None = None
        self.steps: list[tuple[float, np.ndarray]] = []  # (c_b, V^T H_b V) per batch of an epoch
        self.eigen: np.ndarray | None = None  # c * eigenvalues, with one step an epoch
        if method in (Method.ADAM, Method.LSTSQ) or design.rank == 0:
            return
        n = design.x.shape[0]
        per = design.rows // n  # rows of A per sample
        if method is Method.D2L_MANUAL:
            bounds = [(0, n)]
            scale = [2.0]
        else:
            bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
            scale = [2.0 / ((e - s) * per * c_out) for s, e in bounds]
        if len(bounds) == 1:
            self.eigen = scale[0] * design.s**2
            largest = float(self.eigen.max())
        else:
            v = design.v
            for (s, e), c in zip(bounds, scale):
                a = design.a[s * per : e * per] if design.a is not None else \
                    im2col(design.x[s:e], design.kh, design.kw, design.bias)
                av = a @ v  # rows x r
                self.steps.append((c, av.T @ av))
            largest = max(c * float(np.linalg.eigvalsh(h).max()) for c, h in self.steps)
        if largest > 0:
            self.stable_lr = 2.0 / largest * (1 + defaults.MOMENTUM if method is Method.MOMENTUM else 1.0)

    def rate(self, lr: float) -> float | None:
        """The factor by which the slowest identifiable direction of the gap shrinks each epoch at `lr`."""
        if self.stable_lr is None:
            return None
        momentum = self.method is Method.MOMENTUM
        if self.eigen is not None:
            if not momentum:
                return float(np.abs(1.0 - lr * self.eigen).max())
            return max(_heavy_ball(lr * h) for h in self.eigen)
        r = self.steps[0][1].shape[0]
        if (2 * r if momentum else r) ** 3 * len(self.steps) > RATE_WORK_LIMIT:
            return None
        eye = np.eye(r)
        epoch = np.eye(2 * r if momentum else r)
        mu = defaults.MOMENTUM
        for c, h in self.steps:
            if momentum:
                step = np.block([[eye - lr * c * h, -lr * mu * eye], [c * h, mu * eye]])
            else:
                step = eye - lr * c * h
            epoch = step @ epoch
        return float(np.abs(np.linalg.eigvals(epoch)).max())

    def best_lr(self) -> tuple[float, float] | None:
        """For plain gradient descent with one step an epoch: the lr at which the gap shrinks fastest, and
        that rate ((kappa - 1) / (kappa + 1), kappa the condition number in the row space)."""
        if self.eigen is None or self.method is Method.MOMENTUM:
            return None
        lo, hi = float(self.eigen.min()), float(self.eigen.max())
        return 2.0 / (lo + hi), (hi - lo) / (hi + lo)


@dataclass(frozen=True)
class JobPace:
    """The pace of one job at its lr: its result fields, and what they say in words."""

    lr: float | None
    stable_lr: float | None
    rate: float | None
    more: int | None
    best: tuple[float, float] | None  # the fastest lr and its rate, where known

    @classmethod
    def of(cls, pace: Pace, lr: float | None, excess: float | None, tol: float) -> JobPace:
        """`lr` None: no learning rate (lstsq); `excess`: the mse over the optimum's, if it has not converged."""
        if lr is None:
            return cls(None, None, None, None, None)
        rate = pace.rate(lr)
        more = None if excess is None else more_epochs(rate, excess, tol)
        return cls(lr, pace.stable_lr, rate, more, pace.best_lr())

    def row(self) -> dict[str, float | int | None]:
        """The result fields (service.jobs.result) that hold the pace."""
        return {"stable_lr": _finite(self.stable_lr), "convergence_rate": _finite(self.rate), "more_epochs": self.more}

    def too_fast(self) -> str | None:
        """Why training blew up or cannot close, when the lr is above the stable one."""
        if self.lr is None or self.stable_lr is None or self.lr <= self.stable_lr:
            return None
        return (f"lr {self.lr:.3g} is above the largest stable learning rate {self.stable_lr:.3g} for this input; "
                "lower --lr below it.")

    def stalled(self) -> str | None:
        """The gap does not shrink at this lr (a rate of 1 or more), the lr being within the bound."""
        if self.rate is None or self.rate < 1.0 or self.too_fast():
            return None
        return f"at lr {self.lr:.3g} the gap does not shrink; lower --lr."

    def closing(self) -> str | None:
        """How long the gap takes to close at this lr, and the lr that closes it fastest."""
        if self.more is None or self.rate is None:
            return None
        words = (f"about {self.more} more epoch{'s' if self.more != 1 else ''} at this lr would reach --tol "
                 f"(the gap shrinks x{self.rate:.3g} an epoch)")
        if self.best is not None and self.best[1] < self.rate * 0.95:
            words += f"; lr {self.best[0]:.3g} would close it fastest (x{self.best[1]:.3g} an epoch)"
        return words


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _heavy_ball(h: float) -> float:
    """The spectral radius of the heavy ball on one direction of curvature h (lr folded in)."""
    mu = defaults.MOMENTUM
    b = 1 + mu - h
    disc = b * b - 4 * mu
    if disc < 0:
        return math.sqrt(mu)
    root = math.sqrt(disc)
    return max(abs(b + root), abs(b - root)) / 2


def more_epochs(rate: float | None, excess: float, tol: float) -> int | None:
    """About how many more epochs bring an mse `excess` over the optimum's within `tol`, at `rate` a step
    (the mse shrinks as the rate squared)."""
    if rate is None or not math.isfinite(excess) or excess <= tol:
        return None
    if rate >= 1.0:
        return None
    if rate <= 0.0:
        return 1
    return max(1, math.ceil(math.log(tol / excess) / (2 * math.log(rate))))
