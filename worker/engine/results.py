"""A trained batch's results: errors, the gap in three parts, the pace, and one row per job in the result
schema's names (service.jobs.result)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from service.jobs.spec import Method
from service.jobs.status import JobStatus
from worker.engine import analysis
from worker.engine.explain import Facts, explain
from worker.engine.job import Job
from worker.engine.loop import Trained
from worker.engine.pace import JobPace, Pace


@dataclass(frozen=True)
class Solution:
    """What the data allow, per job: its design, its method's pace, W* and the optimum's SSE."""

    designs: list[analysis.Design]
    paces: list[Pace]
    one_input: bool
    wstar: np.ndarray  # B x C_out x params
    sse: np.ndarray  # B


@dataclass
class BatchResult:
    """Every job of one batch, as arrays; `row(i)` is one job's result row and its epochs."""

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
        k = np.stack([j.problem.true_kernel for j in self.jobs]).reshape(bsz, co, -1)
        if p0.has_bias:
            tb = np.array([np.nan if j.problem.true_bias is None else j.problem.true_bias for j in self.jobs])
            k = np.concatenate([k, np.repeat(tb[:, None, None], co, axis=1)], axis=2)
        return w, k

    @cached_property
    def gap(self) -> analysis.Gap:
        w, k = self._flat
        s = self.solution
        if s.one_input:
            return analysis.gaps(s.designs[0], w, s.wstar, k)
        parts = [analysis.gaps(d, w[i : i + 1], s.wstar[i : i + 1], None if k is None else k[i : i + 1])
                 for i, d in enumerate(s.designs)]
        return analysis.Gap(*(None if getattr(parts[0], name) is None else
                              np.concatenate([getattr(p, name) for p in parts])
                              for name in ("optimization", "noise", "identifiability")))

    @cached_property
    def errors(self) -> dict[str, np.ndarray] | None:
        p0 = self.jobs[0].problem
        if p0.true_kernel is None:
            return None
        return analysis.kernel_errors(self.trained.weights, np.stack([j.problem.true_kernel for j in self.jobs]))

    def status(self, i: int) -> JobStatus:
        if self.trained.diverged_epoch[i]:
            return JobStatus.DIVERGED
        return JobStatus.CANCELLED if self.trained.cancelled[i] else JobStatus.SUCCEEDED

    def epochs_done(self, i: int) -> int:
        t = self.trained
        d = int(t.diverged_epoch[i])
        return d if d else int(np.isfinite(t.loss[:, i]).sum() if t.cancelled[i] else t.loss.shape[0])

    def converged_epoch(self, i: int) -> int | None:
        job = self.jobs[i]
        ok = np.nonzero(self.trained.mse[: self.epochs_done(i), i] <= self._optimum(i) + job.tol)[0]
        return int(ok[0]) + 1 if ok.size else None

    def _optimum(self, i: int) -> float:
        """The mse of W*."""
        return float(self.solution.sse[i] / self.jobs[i].problem.y.size)

    def row(self, i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One job's result row (service.jobs.result.ROW) and its epochs."""
        job, t, s = self.jobs[i], self.trained, self.solution
        p = job.problem
        kshape = p.kernel_shape

        def kernel(a: np.ndarray | None) -> Any:
            if a is None:
                return None
            a = a.reshape(kshape)
            return _floats(a[0, 0] if p.single_channel else a)

        last = self.epochs_done(i)
        ke = t.kernel_error
        epochs = [{"epoch": e + 1, "loss": _float(t.loss[e, i]), "mse": _float(t.mse[e, i]),
                   "kernel_error": None if ke is None else _float(ke[e, i])} for e in range(last)]
        status = self.status(i)
        design = s.designs[i]
        gap = {name: None if part is None else _float(part[i])
               for name, part in (("optimization", self.gap.optimization), ("noise", self.gap.noise),
                                  ("identifiability", self.gap.identifiability))}
        errors = {k: _float(v[i]) for k, v in self.errors.items()} if self.errors is not None else {}
        converged = self.converged_epoch(i) if status is JobStatus.SUCCEEDED else None
        short = status is JobStatus.SUCCEEDED and converged is None and last
        pace = JobPace.of(s.paces[i], None if self.method is Method.LSTSQ else job.lr,
                          float(t.mse[last - 1, i]) - self._optimum(i) if short else None, job.tol)
        row = {
            "status": status.value, "error_message": None, "device": self.device, "torch_version": torch.__version__,
            "train_seconds": self.train_seconds / len(self.jobs), "epochs_done": last,
            "final_loss": epochs[-1]["loss"] if epochs else None, "final_mse": epochs[-1]["mse"] if epochs else None,
            "true_kernel": kernel(p.true_kernel), "initial_kernel": kernel(self.initial[i]),
            "learned_kernel": kernel(t.weights[i]),
            "learned_bias": None if t.bias is None else _floats(t.bias[i]),
            "lstsq_kernel": kernel(s.wstar[i][:, : math.prod(kshape[1:])]),
            "frobenius_error": errors.get("frobenius"), "relative_error": errors.get("relative"),
            "max_abs_error": errors.get("max_abs"), "cosine": errors.get("cosine"),
            "rank": design.rank, "params": design.params, "identifiable": design.identifiable,
            "gap_optimization": gap["optimization"], "gap_noise": gap["noise"],
            "gap_identifiability": gap["identifiability"],
            "converged_epoch": converged, "diverged_epoch": int(t.diverged_epoch[i]) or None, **pace.row(),
        }
        row["explanation"] = explain(Facts(
            status=status, optimization=gap["optimization"], noise=gap["noise"],
            identifiability=gap["identifiability"], relative=row["relative_error"], rank=design.rank,
            params=design.params, sums_only=bool(design.sums_only),
            grew=len(epochs) > 1 and _grew(t.loss[:last, i]), pace=pace))
        return row, epochs

    def rows(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        return [self.row(i) for i in range(len(self.jobs))]


def _grew(losses: np.ndarray) -> bool:
    return bool(np.isfinite(losses[[0, -1]]).all() and losses[-1] > losses[0])


def _float(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _floats(a: np.ndarray) -> Any:
    """Nested lists for JSON, with null for non-finite values."""
    if a.ndim == 0:
        return _float(a)
    if np.all(np.isfinite(a)):
        return a.tolist()
    return [_floats(x) for x in a]
