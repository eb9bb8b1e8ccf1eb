"""`train`: a batch of jobs that train together, from initial weights to their analysed results.

Jobs that share input shape, kernel shape, method, epochs and batch size train together: their weights
are stacked and every job's residuals are computed at once (service.jobs.problem.together says which).
Jobs never mix: each job's loss depends on its own weights only, so the gradient of the summed loss is
each job's own gradient, and updates use each job's own lr. Nothing here knows of Celery or a database.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from service.errors import BadInput
from service.jobs.choices import Method
from service.jobs.problem import shapes
from worker.engine import analysis
from worker.engine.job import Job
from worker.engine.loop import OnEpoch, Trained, fit
from worker.engine.pace import Pace
from worker.engine.residuals import Residuals, digest, shared
from worker.engine.results import BatchResult, Group, Solution
from worker.engine.weights import batch_initial_weights


def resolve_device(device: str) -> str:
    """`auto` is cuda where a GPU is visible, else cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for but no CUDA GPU is visible")
        # TF32 would round every product to 10 bits of mantissa: results must match the CPU's float32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def checked_device(device: str) -> str:
    """resolve_device, a GPU this machine lacks told as the user's mistake (klab run, sweep --local, their API)."""
    try:
        return resolve_device(device)
    except RuntimeError as exc:
        raise BadInput("device", str(exc)) from None


def train(jobs: Sequence[Job], method: Method, epochs: int, batch_size: int, device: str = "cpu",
          on_epoch: OnEpoch | None = None) -> BatchResult:
    """Train jobs that share their shapes together; `on_epoch` may return a mask of jobs to cancel."""
    method = Method(method)
    device = resolve_device(device)
    if len({(*shapes(p), p.true_kernel is None) for p in {id(j.problem): j.problem for j in jobs}.values()}) != 1:
        raise ValueError("jobs of one batch must share input shape, kernel shape and bias, and each have a true "
                         "kernel or none")
    started = time.perf_counter()
    p0 = jobs[0].problem
    w0, b0 = batch_initial_weights([j.seed for j in jobs], p0.kernel_shape, p0.has_bias)
    trained = None
    if method is not Method.LSTSQ:
        res = Residuals([j.problem.x for j in jobs], [j.problem.y for j in jobs], p0.kernel_shape, device)
        true_k = None
        if p0.true_kernel is not None:
            true_k = torch.from_numpy(np.stack([j.problem.true_kernel for j in jobs]).astype(np.float32)).to(device)
        trained = fit(res, w0.to(device, copy=True), None if b0 is None else b0.to(device, copy=True),
                      [j.lr for j in jobs], true_k, method, epochs, batch_size, on_epoch)
        del res, true_k  # the training's copies of the data go before the analysis starts
    loop_seconds = time.perf_counter() - started
    solution = _solve(jobs, method, batch_size)
    if trained is None:
        trained = _least_squares(jobs, solution)
    return BatchResult(jobs=jobs, method=method, device=device, train_seconds=time.perf_counter() - started,
                       loop_seconds=loop_seconds,
                       initial=w0.numpy().astype(np.float64),
                       initial_bias=None if b0 is None else b0.numpy().astype(np.float64),
                       trained=trained, solution=solution)


def _solve(jobs: Sequence[Job], method: Method, batch_size: int) -> Solution:
    """Least squares, the row space of A and the method's pace, once per distinct input."""
    p0 = jobs[0].problem
    bsz, co = len(jobs), p0.kernel_shape[0]
    one_input = shared([j.problem.x for j in jobs])
    keys = [b""] * bsz if one_input else [digest(j.problem.x) for j in jobs]
    members: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    groups = []
    for index in members.values():
        design = analysis.Design(jobs[index[0]].problem.x, p0.kernel_shape, p0.has_bias)
        groups.append(Group(design, Pace(design, method, batch_size, co), np.array(index)))
    one_label = shared([j.problem.y for j in jobs])
    params = groups[0].design.params
    wstar, sse = np.empty((bsz, co, params)), np.empty(bsz)
    for g in groups:
        if one_label:
            ws, ss = g.design.solve([p0.y])
            wstar[g.index], sse[g.index] = ws[0], ss[0]
        else:
            ws, ss = g.design.solve([jobs[i].problem.y for i in g.index])
            wstar[g.index], sse[g.index] = ws, ss
    return Solution(groups=groups, wstar=wstar, sse=sse)


def _least_squares(jobs: Sequence[Job], s: Solution) -> Trained:
    """lstsq jobs: W* itself, in one step (one epoch, its loss the optimum's SSE)."""
    p0 = jobs[0].problem
    bsz, kshape = len(jobs), p0.kernel_shape
    kdim = math.prod(kshape[1:])
    weights = s.wstar[:, :, :kdim].reshape((bsz, *kshape))
    kerr = None
    if p0.true_kernel is not None:
        ks = np.stack([j.problem.true_kernel for j in jobs])
        kerr = np.sqrt(((weights - ks).reshape(bsz, -1) ** 2).sum(axis=1))[None]
    return Trained(loss=s.sse[None].copy(), mse=(s.sse / p0.y.size)[None], kernel_error=kerr,
                   diverged_epoch=np.zeros(bsz, dtype=np.int64), cancelled=np.zeros(bsz, dtype=bool),
                   weights=weights, bias=s.wstar[:, :, kdim] if p0.has_bias else None)
