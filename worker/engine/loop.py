"""The training loop: the book's two loops (d2l-manual, d2l-sgd) and their better cousins, for a batch of jobs.

Losses are what the book prints for each method; every epoch's mse is measured too. Jobs that diverge
stop (their weights freeze) while the others go on; `on_epoch` sees every epoch and may stop jobs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from service import defaults
from service.jobs.choices import Method
from worker.engine.optim import optimizer
from worker.engine.residuals import Residuals


@dataclass(frozen=True)
class EpochEvent:
    """What `on_epoch` receives: one epoch of every job in the batch (numpy, length B)."""

    epoch: int
    loss: np.ndarray
    mse: np.ndarray | None  # None for d2l-manual until the next epoch's forward pass measures it
    kernel_error: np.ndarray | None
    alive: np.ndarray


OnEpoch = Callable[[EpochEvent], "np.ndarray | None"]
"""Called after every epoch; may return a mask of the jobs to stop (cancelled)."""


@dataclass(frozen=True)
class Trained:
    """What the loop hands back, as float64 numpy arrays (E epochs, B jobs)."""

    loss: np.ndarray  # E x B, NaN after a job stopped
    mse: np.ndarray  # E x B
    kernel_error: np.ndarray | None  # E x B, without a true kernel None
    diverged_epoch: np.ndarray  # B, 0 where none
    cancelled: np.ndarray  # B bool
    weights: np.ndarray  # B x C_out x C_in x kh x kw
    bias: np.ndarray | None  # B x C_out


@dataclass
class _History:
    """Per-epoch records of every job, on the training device."""

    loss: torch.Tensor
    mse: torch.Tensor
    kernel_error: torch.Tensor | None

    @classmethod
    def empty(cls, epochs: int, bsz: int, with_kernel: bool, device: torch.device) -> _History:
        def nan() -> torch.Tensor:
            return torch.full((epochs, bsz), float("nan"), dtype=torch.float32, device=device)

        return cls(nan(), nan(), nan() if with_kernel else None)


def fit(res: Residuals, w: torch.Tensor, b: torch.Tensor | None, lrs: Sequence[float], true_k: torch.Tensor | None,
        method: Method, epochs: int, batch_size: int, on_epoch: OnEpoch | None = None) -> Trained:
    """Train the weights w (and bias b) of every job in place, as `method` does, for `epochs` epochs."""
    bsz, dev = w.shape[0], w.device
    n, count = res.n, res.kshape[0] * res.p  # samples; label elements per sample
    hist = _History.empty(epochs, bsz, true_k is not None, dev)
    alive = torch.ones(bsz, dtype=torch.bool, device=dev)
    diverged_at = torch.zeros(bsz, dtype=torch.int64, device=dev)
    cancelled = np.zeros(bsz, dtype=bool)
    first = None
    params = [w] if b is None else [w, b]
    for p in params:
        p.requires_grad_(True)
    opt = optimizer(method, params, lrs)

    def step(total: torch.Tensor) -> None:
        opt.step(torch.autograd.grad(total, params), alive)

    last_epoch = epochs
    for epoch in range(1, epochs + 1):
        if method is Method.D2L_MANUAL:
            sq = res.sq(w, b, 0, n)  # the book's l.sum(), before this epoch's update
            reported = sq.detach()
            if epoch > 1:  # this forward measures the weights after the previous epoch, frozen jobs' too
                prev = epoch - 2
                fill = ~torch.isnan(hist.loss[prev]) & torch.isnan(hist.mse[prev])
                hist.mse[prev] = torch.where(fill, reported / (n * count), hist.mse[prev])
            newly = _diverging(reported, epoch, alive, diverged_at, first)
            if first is None:
                first = reported.clone()
            alive &= ~newly
            step(sq.sum())
        else:
            for s in range(0, n, batch_size):
                e = min(s + batch_size, n)
                step((res.sq(w, b, s, e) / ((e - s) * count)).sum())  # nn.MSELoss, per job
            with torch.no_grad():
                s_last = ((n - 1) // batch_size) * batch_size
                total = res.sq(w, b, 0, n)
                last = total if s_last == 0 else res.sq(w, b, s_last, n)
                reported = last / ((n - s_last) * count)  # the seed's loss of the last batch
                fit = total / (n * count)
                hist.mse[epoch - 1] = torch.where(alive, fit, hist.mse[epoch - 1])
            # grown past its first by the mse over all the data: the last batch's loss alone can rise from 0 (a batch
            # fitted exactly) or from near it while the fit improves, which was called diverging
            newly = _diverging(fit, epoch, alive, diverged_at, first, also=~torch.isfinite(reported))
            if first is None:
                first = fit.clone()
            alive &= ~newly
        hist.loss[epoch - 1] = torch.where(alive | newly, reported, hist.loss[epoch - 1])
        if hist.kernel_error is not None:
            with torch.no_grad():
                d = (w - true_k).reshape(bsz, -1).double()  # weights of 1e20 and more: their squares overflow float32
                # a contiguous row sum reduces in the same order whatever the batch size (norm does not)
                kerr = (d * d).sum(dim=1).sqrt().to(hist.kernel_error.dtype)
                hist.kernel_error[epoch - 1] = torch.where(alive | newly, kerr, hist.kernel_error[epoch - 1])
        if on_epoch is not None:
            stop = on_epoch(EpochEvent(
                epoch, hist.loss[epoch - 1].cpu().numpy(),
                None if method is Method.D2L_MANUAL else hist.mse[epoch - 1].cpu().numpy(),
                None if hist.kernel_error is None else hist.kernel_error[epoch - 1].cpu().numpy(),
                alive.cpu().numpy()))
            if stop is not None and np.any(stop):
                stop_t = torch.from_numpy(np.asarray(stop, dtype=bool)).to(dev) & alive
                cancelled |= stop_t.cpu().numpy()
                alive &= ~stop_t
        if not bool(alive.any()):  # note: a CPU-GPU sync point, once per epoch
            last_epoch = epoch
            break
    if method is Method.D2L_MANUAL:  # the last epoch's mse needs one more forward pass
        with torch.no_grad():
            idx = last_epoch - 1
            after = res.sq(w, b, 0, n)
            ok = torch.isnan(hist.mse[idx]) & ~torch.isnan(hist.loss[idx])
            hist.mse[idx] = torch.where(ok, after / (n * count), hist.mse[idx])
            # the last update, which no later epoch's loss measures: weights it blew up (lr 1e300, one epoch)
            # diverged in that epoch, where they ended succeeded with a kernel of NaN
            _diverging(after, last_epoch, alive, diverged_at, first)

    def out(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().numpy().astype(np.float64)

    return Trained(loss=out(hist.loss), mse=out(hist.mse), kernel_error=out(hist.kernel_error),
                   diverged_epoch=diverged_at.cpu().numpy(), cancelled=cancelled, weights=out(w), bias=out(b))


def _diverging(loss: torch.Tensor, epoch: int, alive: torch.Tensor, diverged_at: torch.Tensor,
               first: torch.Tensor | None, also: torch.Tensor | None = None) -> torch.Tensor:
    """Jobs whose loss just became non-finite or grew past DIVERGENCE_FACTOR times its first value (where that was
    above 0: from an exact fit, any rounding is growth without bound), or that `also` marks (a reported loss that
    is not finite)."""
    bad = ~torch.isfinite(loss) if also is None else ~torch.isfinite(loss) | also
    if first is not None:
        bad |= (loss > defaults.DIVERGENCE_FACTOR * first) & (first > 0)
    newly = bad & alive
    diverged_at[newly] = epoch
    return newly
