"""A trained batch's results as columns (service.jobs.columns): errors, the gap in three parts, the pace and
the sentence for every job at once, the analysis that depends only on the data done once per input."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from service.jobs.choices import Method
from service.jobs.columns import Columns, Nested
from service.jobs.status import TRAINED, JobStatus
from service.render.text import FLOAT32_EPS
from worker.engine import analysis
from worker.engine.explain import Facts, explain
from worker.engine.job import Job
from worker.engine.loop import Trained
from worker.engine.pace import Pace, Paces


@dataclass(frozen=True)
class Group:
    """The jobs of a batch that share one input: its design, its method's pace, their indices."""

    design: analysis.Design
    pace: Pace
    index: np.ndarray


@dataclass(frozen=True)
class Solution:
    """What the data allow: per input, the design and pace; per job, W* and the optimum's SSE."""

    groups: list[Group]
    wstar: np.ndarray  # B x C_out x params
    sse: np.ndarray  # B


@dataclass
class BatchResult:
    """Every job of one batch: `columns` holds their results; `row(i)` is one job's, in plain values."""

    jobs: Sequence[Job]
    method: Method
    device: str
    train_seconds: float  # initial weights, training loop and least squares
    loop_seconds: float  # initial weights and training loop
    initial: np.ndarray  # B x C_out x C_in x kh x kw
    initial_bias: np.ndarray | None
    trained: Trained
    solution: Solution

    def __len__(self) -> int:
        return len(self.jobs)

    def row(self, i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return self.columns.row(i)

    def rows(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        return [self.row(i) for i in range(len(self.jobs))]

    def status(self, i: int) -> JobStatus:
        return JobStatus(self._status[i])

    @cached_property
    def _status(self) -> np.ndarray:
        t = self.trained
        return np.where(t.diverged_epoch > 0, JobStatus.DIVERGED.value,
                        np.where(t.cancelled, JobStatus.CANCELLED.value, JobStatus.SUCCEEDED.value))

    @cached_property
    def epochs_done(self) -> np.ndarray:
        t = self.trained
        ran = np.where(t.cancelled, np.isfinite(t.loss).sum(axis=0), t.loss.shape[0])
        return np.where(t.diverged_epoch > 0, t.diverged_epoch, ran)

    @cached_property
    def _flat(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Learned and true weights as B x C_out x params (the bias as the last param)."""
        p0 = self.jobs[0].problem
        bsz, co = len(self.jobs), p0.kernel_shape[0]
        w = self.trained.weights.reshape(bsz, co, -1)
        if self.trained.bias is not None:
            w = np.concatenate([w, self.trained.bias[:, :, None]], axis=2)
        if p0.true_kernel is None:
            return w, None
        k = self._true.reshape(bsz, co, -1)
        if p0.has_bias:
            tb = np.array([np.nan if j.problem.true_bias is None else j.problem.true_bias for j in self.jobs])
            k = np.concatenate([k, np.repeat(tb[:, None, None], co, axis=1)], axis=2)
        return w, k

    @cached_property
    def _true(self) -> np.ndarray:
        kernels = [j.problem.true_kernel for j in self.jobs]
        if all(k is kernels[0] for k in kernels):
            return np.broadcast_to(kernels[0], (len(kernels), *kernels[0].shape))
        return np.stack(kernels)

    @cached_property
    def initial_mse(self) -> np.ndarray:
        """Each job's mse at its initial weights, before any step: the optimum's SSE plus (W0 - W*)^T G (W0 - W*),
        from the eigenvalues of G on A's row space (A is never built), over the labels' size."""
        p0, bsz = self.jobs[0].problem, len(self.jobs)
        w0 = self.initial.reshape(bsz, p0.kernel_shape[0], -1)
        if self.initial_bias is not None:
            w0 = np.concatenate([w0, self.initial_bias[:, :, None]], axis=2)
        sse = self.solution.sse.copy()
        for g in self.solution.groups:
            along = (w0[g.index] - self.solution.wstar[g.index]) @ g.design.v  # b x C_out x rank
            sse[g.index] += (g.design.lam * along**2).sum(axis=(1, 2))
        return sse / p0.y.size

    @cached_property
    def gap(self) -> analysis.Gap:
        w, k = self._flat
        parts = [(g.index, analysis.gaps(g.design, w[g.index], self.solution.wstar[g.index],
                                         None if k is None else k[g.index])) for g in self.solution.groups]
        out = []
        for name in ("optimization", "noise", "identifiability"):
            if getattr(parts[0][1], name) is None:
                out.append(None)
                continue
            column = np.empty(len(self.jobs))
            for index, gap in parts:
                column[index] = getattr(gap, name)
            out.append(column)
        return analysis.Gap(*out)

    @cached_property
    def errors(self) -> dict[str, np.ndarray] | None:
        if self.jobs[0].problem.true_kernel is None:
            return None
        return analysis.kernel_errors(self.trained.weights, self._true)

    @cached_property
    def columns(self) -> Columns:
        """Every job's result, field by field (service.jobs.result.ROW)."""
        t, s, n = self.trained, self.solution, len(self.jobs)
        p0 = self.jobs[0].problem
        done = self.epochs_done
        status = self._status
        last = np.maximum(done - 1, 0)
        cols = np.arange(n)
        final_loss = np.where(done > 0, t.loss[last, cols], np.nan)
        final_mse = np.where(done > 0, t.mse[last, cols], np.nan)
        optimum = s.sse / p0.y.size
        tol = np.array([j.tol for j in self.jobs])
        epochs = np.arange(1, t.mse.shape[0] + 1)[:, None]
        with np.errstate(invalid="ignore"):
            missed = ~(t.mse <= optimum + tol) & (epochs <= done)  # an epoch run whose mse was not within --tol
        ran = np.isin(status, [s.value for s in TRAINED])
        # converged from the epoch after the last one that missed, if the last epoch run was within --tol: a fit that
        # passed through the optimum's mse and left it (adam at a wild lr) never converged
        last_missed = np.where(missed.any(axis=0), len(epochs) - np.argmax(missed[::-1], axis=0), 0)
        converged = np.where(ran & (last_missed < done), last_missed + 1.0, np.nan)
        rank, params, sums_only = (np.empty(n), np.empty(n), np.zeros(n, dtype=bool))
        for g in s.groups:
            rank[g.index], params[g.index], sums_only[g.index] = g.design.rank, g.design.params, g.design.sums_only
        lrs = np.full(n, np.nan) if self.method is Method.LSTSQ else np.array([j.lr for j in self.jobs])
        short = ran & np.isnan(converged) & (done > 0)
        excess = np.where(short, final_mse - optimum, np.nan)
        paces = Paces.of([(g.pace, g.index) for g in s.groups], lrs, excess, tol)
        gap, errors = self.gap, self.errors or {}
        none = np.full(n, np.nan)
        # The fit ended worse than at the start: by more than --tol and than float32 could misround a sum of the
        # labels' size (n eps: a bound on any order of summation), which an lr of 1e-15 alone would show.
        worse_above = self.initial_mse * (1 + p0.y.size * FLOAT32_EPS) + tol
        with np.errstate(invalid="ignore"):  # or the mse over all the data ended above its first epoch's (not the
            # loss: a minibatch method's is its last batch's, which can rise while the fit improves)
            grew = (((done > 1) & (final_mse > t.mse[0] * (1 + p0.y.size * FLOAT32_EPS) + tol) & np.isfinite(t.mse[0])
                     & np.isfinite(final_mse)) | (final_mse > worse_above))  # by more than rounding and --tol
        values: dict[str, Any] = {
            "status": status.tolist(), "error_message": None, "device": self.device,
            "torch_version": torch.__version__, "train_seconds": self.train_seconds / n,
            "epochs_done": done, "final_loss": final_loss, "final_mse": final_mse,
            "true_kernel": None if p0.true_kernel is None else self._as_given(self._true),
            "initial_kernel": self._as_given(self.initial), "learned_kernel": self._as_given(t.weights),
            "learned_bias": t.bias,
            "lstsq_kernel": self._as_given(s.wstar[:, :, : math.prod(p0.kernel_shape[1:])]),
            "frobenius_error": errors.get("frobenius", none), "relative_error": errors.get("relative", none),
            "max_abs_error": errors.get("max_abs", none), "cosine": errors.get("cosine", none),
            "rank": rank, "params": params, "identifiable": rank == params,
            "gap_optimization": gap.optimization,
            "gap_noise": none if gap.noise is None else gap.noise,
            "gap_identifiability": none if gap.identifiability is None else gap.identifiability,
            "converged_epoch": converged, "diverged_epoch": np.where(t.diverged_epoch > 0, t.diverged_epoch, np.nan),
            **paces.fields(),
        }
        kernels = [t.weights] if p0.true_kernel is None else [t.weights, self._true]  # as service.render.text
        scale = np.max([np.sqrt(np.square(np.nan_to_num(k.reshape(n, -1), posinf=0, neginf=0)).sum(axis=1))
                        for k in kernels], axis=0)
        with np.errstate(invalid="ignore"):  # the sentence says what the gap's text says: 0 under the rounding
            said = np.where(gap.optimization < FLOAT32_EPS * scale, 0.0, gap.optimization)
        values["explanation"] = explain(Facts(
            status=status, optimization=said, noise=values["gap_noise"],
            identifiability=values["gap_identifiability"], relative=values["relative_error"], rank=rank,
            params=params, sums_only=sums_only, grew=grew, lr=lrs, lr_bound=paces.bound, rate=paces.rate,
            more=paces.more, best_lr=paces.best_lr, best_rate=paces.best_rate,
            best_high=paces.best_high, converged=converged,
            exact=np.array([j.problem.exact_labels for j in self.jobs]), overflowed=self._overflowed(),
            outputs=p0.kernel_shape[0], with_bias=self._with_bias()))
        return Columns(values=values, loss=t.loss, mse=t.mse, kernel_error=t.kernel_error, epochs_done=done)

    def _with_bias(self) -> np.ndarray | None:
        """The relative error of the learned kernel and bias together against the true ones (NaN where no true bias
        is known); None without a bias or a true kernel."""
        w, k = self._flat
        return None if k is None or self.trained.bias is None else analysis.kernel_errors(w, k)["relative"]

    def _overflowed(self) -> np.ndarray:
        """Jobs that diverged with a loss or an mse out of float32's range at that epoch (not by growth alone)."""
        t, at = self.trained, self.trained.diverged_epoch
        cols, row = np.arange(len(at)), np.maximum(at - 1, 0)
        return (at > 0) & (~np.isfinite(t.loss[row, cols]) | np.isinf(t.mse[row, cols]))

    def _as_given(self, a: np.ndarray) -> np.ndarray:
        """Kernels (jobs x ...) in the shape the user gave: 2-D for a 2-D input and kernel, else 4-D."""
        kshape = self.jobs[0].problem.kernel_shape
        a = a.reshape(len(self.jobs), *kshape)
        flags = {j.problem.single_channel for j in self.jobs}
        if flags == {True}:
            return a[:, 0, 0]
        if flags == {False}:
            return a
        return Nested.of_arrays([k[0, 0] if j.problem.single_channel else k for k, j in zip(a, self.jobs)])
