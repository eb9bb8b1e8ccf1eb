"""The engine: the book's kernel learning, many jobs at once, in plain PyTorch.

Jobs that share input shape, kernel shape, method, epochs and batch size train together: their
weights are stacked and one matmul (shared input) or one grouped convolution (per-job inputs)
computes every job's output. Jobs never mix: each job's loss depends on its own weights only, so
the gradient of the summed loss is each job's own gradient, and updates use each job's own lr.
Nothing here knows of Celery or a database; callers watch progress through `on_epoch`.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from service import analysis, defaults
from service.spec import JobSpec, Method, Problem, build_problem

MATMUL_LIMIT = 1 << 22
"""Jobs whose im2col matrix has at most this many elements train elementwise; larger ones by convolution."""

PARALLEL_GRAIN = 32768
"""torch's grain for splitting a reduction across threads (at::internal::GRAIN_SIZE)."""

VECTOR_INIT_MIN = 32
"""Batches of at least this many jobs draw their initial weights through a vectorized MT19937."""


@dataclass(frozen=True)
class Job:
    """One job as the engine sees it: its arrays and the knobs that may differ inside a batch."""

    problem: Problem
    seed: int = defaults.SEED
    lr: float = defaults.LR
    tol: float = defaults.TOL


@dataclass(frozen=True)
class EpochEvent:
    """What `on_epoch` receives: one epoch of every job in the batch (numpy, length B)."""

    epoch: int
    loss: np.ndarray
    mse: np.ndarray | None  # None for d2l-manual until the next epoch's forward pass measures it
    kernel_error: np.ndarray | None
    alive: np.ndarray


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


def group_key(job: Job, method: Method, epochs: int, batch_size: int) -> tuple:
    """Jobs with equal keys can train in one batch."""
    p = job.problem
    return (p.x.shape, p.y.shape, p.kernel_shape, p.has_bias, method, epochs, batch_size)


def initial_weights(seed: int, shape: tuple[int, int, int, int], bias: bool,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What `torch.manual_seed(seed); nn.Conv2d(...)` starts from, without nn.Conv2d's overhead."""
    co, ci, kh, kw = shape
    fan_in = ci * kh * kw
    # nn.Conv2d.reset_parameters: kaiming_uniform_(a=sqrt(5)), then bias uniform in +-1/sqrt(fan_in)
    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))
    bound = math.sqrt(3.0) * (gain / math.sqrt(fan_in))
    generator.manual_seed(seed)
    w = torch.empty(shape).uniform_(-bound, bound, generator=generator)
    b = None
    if bias:
        bb = 1 / math.sqrt(fan_in)
        b = torch.empty(co).uniform_(-bb, bb, generator=generator)
    return w, b


def _mt19937_first(seeds: np.ndarray, k: int) -> np.ndarray:
    """The first k outputs of torch's CPU generator (MT19937) after manual_seed(s), for every seed (B x k)."""
    s = (np.asarray(seeds, dtype=np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    state = np.empty((397 + k, s.size), dtype=np.uint32)
    state[0] = s
    mult = np.uint32(1812433253)
    with np.errstate(over="ignore"):
        for j in range(1, 397 + k):
            prev = state[j - 1]
            state[j] = mult * (prev ^ (prev >> np.uint32(30))) + np.uint32(j)
    out = np.empty((k, s.size), dtype=np.uint32)
    for i in range(k):  # the first twist needs only state[i], state[i + 1] and state[i + 397]
        y = (state[i] & np.uint32(0x80000000)) | (state[i + 1] & np.uint32(0x7FFFFFFF))
        v = state[i + 397] ^ (y >> np.uint32(1)) ^ np.where(y & np.uint32(1), np.uint32(0x9908B0DF), np.uint32(0))
        v ^= v >> np.uint32(11)
        v ^= (v << np.uint32(7)) & np.uint32(0x9D2C5680)
        v ^= (v << np.uint32(15)) & np.uint32(0xEFC60000)
        v ^= v >> np.uint32(18)
        out[i] = v
    return out.T


def _uniform(raw: np.ndarray, bound: float) -> np.ndarray:
    """torch's CPU float uniform_(-bound, bound) from raw 32-bit outputs (its float math, fused)."""
    lo, hi = np.float32(-bound), np.float32(bound)
    x = (raw & np.uint32(0xFFFFFF)).astype(np.float64) * 2.0**-24
    return (x * np.float64(hi - lo) + np.float64(lo)).astype(np.float32)


def batch_initial_weights(seeds: Sequence[int], shape: tuple[int, int, int, int], bias: bool
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`initial_weights` for many seeds at once: B x C_out x C_in x kh x kw (and B x C_out)."""
    gen = torch.Generator()
    k = math.prod(shape) + (shape[0] if bias else 0)
    if len(seeds) < VECTOR_INIT_MIN or k > 227:
        inits = [initial_weights(s, shape, bias, gen) for s in seeds]
        return torch.stack([w for w, _ in inits]), torch.stack([b for _, b in inits]) if bias else None
    co, ci, kh, kw = shape
    fan_in = ci * kh * kw
    bound = math.sqrt(3.0) * (math.sqrt(2.0 / (1 + math.sqrt(5) ** 2)) / math.sqrt(fan_in))
    raw = _mt19937_first(np.asarray(seeds, dtype=np.uint64), k)
    nw = math.prod(shape)
    w = torch.from_numpy(_uniform(raw[:, :nw], bound).reshape(len(seeds), *shape))
    b = torch.from_numpy(_uniform(raw[:, nw:], 1 / math.sqrt(fan_in))) if bias else None
    # The emulation must agree with torch's own generator; check the first seed of every batch.
    w1, b1 = initial_weights(int(seeds[0]), shape, bias, gen)
    if not torch.equal(w1, w[0]) or (bias and not torch.equal(b1, b[0])):
        inits = [initial_weights(s, shape, bias, gen) for s in seeds]
        return torch.stack([w for w, _ in inits]), torch.stack([b for _, b in inits]) if bias else None
    return w, b


def _digest(array: np.ndarray) -> bytes:
    return hashlib.blake2b(array.tobytes(), digest_size=16).digest() + str(array.shape).encode()


def _shared(arrays: Sequence[np.ndarray]) -> bool:
    first = arrays[0]
    if all(a is first for a in arrays):
        return True
    d = _digest(first)
    return all(_digest(a) == d for a in arrays[1:])


class _Operator:
    """Sums of squared residuals per job over samples [s, e), for every job at once.

    Every job's arithmetic is independent of the batch it trains in, so a job trained in a batch
    gives bit for bit the result it gives alone: small problems use elementwise products summed
    over the kernel's weights (a gemm's rounding would depend on the batch size), large ones a
    convolution per job. Each job's residual is contiguous, so its sum reduces in one fixed order.
    """

    def __init__(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], kshape: tuple[int, ...],
                 device: str):
        co, ci, kh, kw = kshape
        self.kshape = kshape
        self.b = len(xs)
        self.shared = _shared(xs)
        n, c, h, w = xs[0].shape
        self.n = n
        self.p = (h - kh + 1) * (w - kw + 1)
        self.d = ci * kh * kw
        self.elementwise = n * self.p * self.d <= MATMUL_LIMIT  # per job, so alone and batched agree
        # Sums longer than torch's parallel grain are split across threads by the batch's shape:
        # such jobs (and convolutions) go one at a time, so each sums exactly as it would alone.
        self.one_by_one = not self.elementwise or n * co * self.p > PARALLEL_GRAIN
        x = torch.from_numpy(xs[0][None] if self.shared else np.stack(xs)).to(device)  # (1|B) x N x C x H x W
        y_np = ys[0][None] if _shared(ys) else np.stack(ys)  # (1|B) x N x Co x Ho x Wo
        y = torch.from_numpy(y_np.astype(np.float32)).to(device).reshape(y_np.shape[0], n, co, self.p)
        if self.elementwise:
            cols = F.unfold(x.reshape(-1, c, h, w), (kh, kw))  # ((1|B) N) x D x P
            self.at = cols.view(x.shape[0], n, self.d, self.p).transpose(1, 2).reshape(
                x.shape[0], self.d, n * self.p).contiguous()  # (1|B) x D x (N P)
            self.y = y.transpose(1, 2).reshape(y.shape[0], co, n * self.p).contiguous()  # (1|B) x Co x (N P)
        else:
            self.x = x
            self.y = y  # (1|B) x N x Co x P

    def sq(self, w: torch.Tensor, bias: torch.Tensor | None, s: int, e: int) -> torch.Tensor:
        """Per job, the sum over samples [s, e) of squared residuals (B,)."""
        if not self.one_by_one:
            return self._elementwise(w, bias, self.at, self.y, s, e)
        sums = []
        for i in range(self.b):
            bi = None if bias is None else bias[i : i + 1]
            if self.elementwise:
                at = self.at[0 if self.shared else i][None]
                y = self.y[0 if self.y.shape[0] == 1 else i][None]
                sums.append(self._elementwise(w[i : i + 1], bi, at, y, s, e))
            else:
                sums.append(self._conv(w[i], bi, i, s, e))
        return torch.cat(sums)

    def _elementwise(self, w: torch.Tensor, bias: torch.Tensor | None, at_all: torch.Tensor, y: torch.Tensor,
                     s: int, e: int) -> torch.Tensor:
        b, co, p = w.shape[0], self.kshape[0], self.p
        w3 = w.reshape(b, co, self.d)
        at = at_all[:, :, s * p : e * p]
        out = w3[:, :, 0:1] * at[:, None, 0]
        for k in range(1, self.d):
            out = out + w3[:, :, k : k + 1] * at[:, None, k]
        if bias is not None:
            out = out + bias.view(b, co, 1)
        return (out - y[:, :, s * p : e * p]).pow(2).sum(dim=(1, 2))

    def _conv(self, w: torch.Tensor, bias: torch.Tensor | None, i: int, s: int, e: int) -> torch.Tensor:
        co = self.kshape[0]
        out = F.conv2d(self.x[0 if self.shared else i, s:e], w, None if bias is None else bias[0])
        y = self.y[0 if self.y.shape[0] == 1 else i, s:e]
        return (out.view(e - s, co, self.p) - y).pow(2).sum()[None]


@dataclass
class BatchResult:
    """Every job of one batch, as arrays; `record(i)` gives one job's JSON object."""

    jobs: Sequence[Job]
    method: Method
    device: str
    train_seconds: float
    loss: np.ndarray  # E x B
    mse: np.ndarray  # E x B
    kernel_error: np.ndarray | None  # E x B
    initial: np.ndarray  # B x Co x Ci x kh x kw
    learned: np.ndarray
    learned_bias: np.ndarray | None  # B x Co
    status: list[str]
    diverged_epoch: np.ndarray  # B, 0 where none
    cancelled: np.ndarray  # B bool
    lstsq: np.ndarray  # B x Co x params
    sse_opt: np.ndarray  # B
    rank: np.ndarray
    params: int
    sums_only: np.ndarray
    gap: analysis.Gap
    errors: dict[str, np.ndarray] | None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.jobs)

    def converged_epoch(self, i: int) -> int | None:
        count = self.jobs[i].problem.y.size
        last = self.epochs_done(i)
        ok = np.nonzero(self.mse[:last, i] <= self.sse_opt[i] / count + self.jobs[i].tol)[0]
        return int(ok[0]) + 1 if ok.size else None

    def epochs_done(self, i: int) -> int:
        d = int(self.diverged_epoch[i])
        return d if d else int(np.isfinite(self.loss[:, i]).sum() if self.cancelled[i] else self.loss.shape[0])

    def record(self, i: int) -> dict[str, Any]:
        """One job's result with exactly the keys of `klab run --json`."""
        job = self.jobs[i]
        p = job.problem
        shape2d = p.single_channel
        kshape = p.kernel_shape
        kdim = math.prod(kshape[1:])

        def kernel(a: np.ndarray | None) -> Any:
            if a is None:
                return None
            a = a.reshape(kshape)
            return _floats(a[0, 0] if shape2d else a)

        last = self.epochs_done(i)
        ke = self.kernel_error
        epochs = [
            {"epoch": e + 1, "loss": _float(self.loss[e, i]), "mse": _float(self.mse[e, i]),
             "kernel_error": None if ke is None else _float(ke[e, i])}
            for e in range(last)
        ]
        ident = {"rank": int(self.rank[i]), "params": self.params,
                 "identifiable": bool(self.rank[i] == self.params)}
        gap = {"optimization": _float(self.gap.optimization[i]),
               "noise": None if self.gap.noise is None else _float(self.gap.noise[i]),
               "identifiability": None if self.gap.identifiability is None else _float(self.gap.identifiability[i])}
        error = None
        if self.errors is not None:
            error = {k: _float(v[i]) for k, v in self.errors.items()}
        return {
            "status": self.status[i],
            "method": self.method.value,
            "device": self.device,
            "seed": job.seed,
            "torch_version": torch.__version__,
            "train_seconds": self.train_seconds / len(self.jobs),
            "epochs": epochs,
            "true_kernel": kernel(p.true_kernel),
            "initial_kernel": kernel(self.initial[i]),
            "learned_kernel": kernel(self.learned[i]),
            "learned_bias": None if self.learned_bias is None else _floats(self.learned_bias[i]),
            "error": error,
            "converged_epoch": self.converged_epoch(i) if self.status[i] == "succeeded" else None,
            "diverged_epoch": int(self.diverged_epoch[i]) or None,
            "identifiability": ident,
            "lstsq_kernel": kernel(self.lstsq[i][:, :kdim]),
            "gap": gap,
            "explanation": analysis.explain(gap, {**ident, "sums_only": bool(self.sums_only[i])},
                                            self.status[i], None if error is None else error["relative"],
                                            grew=len(epochs) > 1 and _grew(self.loss[:last, i])),
        }


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


OnEpoch = Callable[[EpochEvent], "np.ndarray | None"]


def train(jobs: Sequence[Job], method: Method, epochs: int, batch_size: int, device: str = "cpu",
          on_epoch: OnEpoch | None = None) -> BatchResult:
    """Train jobs that share a group key together; `on_epoch` may return a mask of jobs to cancel."""
    method = Method(method)
    device = resolve_device(device)
    keys = {group_key(j, method, epochs, batch_size) for j in jobs}
    if len(keys) != 1:
        raise ValueError("jobs of one batch must share input shape, kernel shape, bias, method and epochs")
    started = time.perf_counter()
    p0 = jobs[0].problem
    bsz = len(jobs)
    kshape = p0.kernel_shape
    co = kshape[0]
    w0, b0 = batch_initial_weights([j.seed for j in jobs], kshape, p0.has_bias)

    ys = [j.problem.y for j in jobs]
    y_shared = _shared(ys)
    n = p0.x.shape[0]
    count = p0.y[0].size  # elements per sample
    cancelled = np.zeros(bsz, dtype=bool)
    if method is Method.LSTSQ:
        loss = mse = kerr = None
        w_final, b_final = None, None
        diverged = np.zeros(bsz, dtype=np.int64)
    else:
        op = _Operator([j.problem.x for j in jobs], ys, kshape, device)
        true_k = None
        if p0.true_kernel is not None:
            true_k = torch.from_numpy(np.stack([j.problem.true_kernel for j in jobs]).astype(np.float32)).to(device)
        lr = torch.tensor([j.lr for j in jobs], dtype=torch.float32, device=device)
        loss, mse, kerr, diverged, w_final, b_final, cancelled = _loop(
            op, w0.to(device, copy=True), None if b0 is None else b0.to(device, copy=True), lr, true_k, method, epochs,
            batch_size, n, count, on_epoch, [j.lr for j in jobs])
    train_seconds = time.perf_counter() - started
    return _analyse(jobs, method, device, started, train_seconds, w0, loss, mse, kerr, w_final, b_final,
                    diverged, cancelled, y_shared)


def _loop(op: _Operator, w: torch.Tensor, b: torch.Tensor | None, lr: torch.Tensor,
          true_k: torch.Tensor | None, method: Method, epochs: int, batch_size: int, n: int, count: int,
          on_epoch: OnEpoch | None, lrs: list[float]):
    bsz = w.shape[0]
    dev = w.device
    loss_hist = torch.full((epochs, bsz), float("nan"), device=dev)
    mse_hist = torch.full((epochs, bsz), float("nan"), device=dev)
    kerr_hist = None if true_k is None else torch.full((epochs, bsz), float("nan"), device=dev)
    alive = torch.ones(bsz, dtype=torch.bool, device=dev)
    diverged_at = torch.zeros(bsz, dtype=torch.int64, device=dev)
    first = None
    w.requires_grad_(True)
    if b is not None:
        b.requires_grad_(True)
    params = [w] if b is None else [w, b]
    lr_w = lr.view(-1, 1, 1, 1, 1)
    lr_b = lr.view(-1, 1)
    state = [dict() for _ in params]
    step = 0
    cancelled = np.zeros(bsz, dtype=bool)

    def apply(grads: list[torch.Tensor], scale: torch.Tensor | None = None) -> None:
        nonlocal step
        step += 1
        with torch.no_grad():
            keep = alive
            for i, (prm, g) in enumerate(zip(params, grads)):
                lrt = lr_w if i == 0 else lr_b
                st = state[i]
                if method is Method.MOMENTUM:
                    buf = st.get("buf")
                    buf = g.clone() if buf is None else buf.mul_(defaults.MOMENTUM).add_(g)
                    st["buf"] = buf
                    new = prm - lrt * buf
                elif method is Method.ADAM:
                    b1, b2 = defaults.ADAM_BETAS
                    m = st.setdefault("m", torch.zeros_like(prm))
                    v = st.setdefault("v", torch.zeros_like(prm))
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    bc1 = 1 - b1**step
                    bc2_sqrt = (1 - b2**step) ** 0.5
                    step_size = torch.tensor([-lv / bc1 for lv in lrs], dtype=torch.float32,
                                             device=dev).view(lrt.shape)
                    denom = (v.sqrt() / bc2_sqrt).add_(defaults.ADAM_EPS)
                    new = prm + step_size * m / denom
                else:
                    new = prm - lrt * g
                mask = keep.view((-1,) + (1,) * (prm.dim() - 1))
                prm.copy_(torch.where(mask, new, prm))

    def grads_of(total: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(total, params))

    last_epoch = epochs
    for epoch in range(1, epochs + 1):
        if method is Method.D2L_MANUAL:
            sq = op.sq(w, b, 0, n)  # the book's l.sum(), before this epoch's update
            reported = sq.detach()
            if epoch > 1:  # this forward measures the weights after the previous epoch, frozen jobs' too
                prev = epoch - 2
                fill = ~torch.isnan(loss_hist[prev]) & torch.isnan(mse_hist[prev])
                mse_hist[prev] = torch.where(fill, reported / (n * count), mse_hist[prev])
            newly = _check(reported, epoch, alive, diverged_at, first)
            if first is None:
                first = reported.clone()
            alive &= ~newly
            apply(grads_of(sq.sum()))
        else:
            for s in range(0, n, batch_size):
                e = min(s + batch_size, n)
                sq = op.sq(w, b, s, e) / ((e - s) * count)  # nn.MSELoss, per job
                apply(grads_of(sq.sum()))
            with torch.no_grad():
                s_last = ((n - 1) // batch_size) * batch_size
                total = op.sq(w, b, 0, n)
                last = total if s_last == 0 else op.sq(w, b, s_last, n)
                reported = last / ((n - s_last) * count)  # the seed's loss of the last batch
                mse_hist[epoch - 1] = torch.where(alive, total / (n * count), mse_hist[epoch - 1])
            newly = _check(reported, epoch, alive, diverged_at, first)
            if first is None:
                first = reported.clone()
            alive &= ~newly
        loss_hist[epoch - 1] = torch.where(alive | newly, reported, loss_hist[epoch - 1])
        if kerr_hist is not None:
            with torch.no_grad():
                d = (w - true_k).reshape(bsz, -1)
                # a contiguous row sum reduces in the same order whatever the batch size (norm does not)
                kerr = (d * d).sum(dim=1).sqrt()
                kerr_hist[epoch - 1] = torch.where(alive | newly, kerr, kerr_hist[epoch - 1])
        if on_epoch is not None:
            stop = on_epoch(EpochEvent(
                epoch, loss_hist[epoch - 1].cpu().numpy(),
                None if method is Method.D2L_MANUAL else mse_hist[epoch - 1].cpu().numpy(),
                None if kerr_hist is None else kerr_hist[epoch - 1].cpu().numpy(),
                alive.cpu().numpy()))
            if stop is not None and np.any(stop):
                stop_t = torch.from_numpy(np.asarray(stop, dtype=bool)).to(dev) & alive
                cancelled |= stop_t.cpu().numpy()
                alive &= ~stop_t
        if not bool(alive.any()):  # note: a CPU-GPU sync point, once per epoch
            last_epoch = epoch
            break
    if method is Method.D2L_MANUAL:
        with torch.no_grad():
            sq = op.sq(w, b, 0, n)
            idx = last_epoch - 1
            ok = torch.isnan(mse_hist[idx]) & ~torch.isnan(loss_hist[idx])
            mse_hist[idx] = torch.where(ok, sq / (n * count), mse_hist[idx])
    w_final = w.detach().cpu().numpy().astype(np.float64)
    b_final = None if b is None else b.detach().cpu().numpy().astype(np.float64)
    return (loss_hist.cpu().numpy().astype(np.float64), mse_hist.cpu().numpy().astype(np.float64),
            None if kerr_hist is None else kerr_hist.cpu().numpy().astype(np.float64),
            diverged_at.cpu().numpy(), w_final, b_final, cancelled)


def _check(loss: torch.Tensor, epoch: int, alive: torch.Tensor, diverged_at: torch.Tensor,
           first: torch.Tensor | None) -> torch.Tensor:
    """Jobs whose loss just became non-finite or grew past DIVERGENCE_FACTOR times its first value."""
    bad = ~torch.isfinite(loss)
    if first is not None:
        bad |= loss > defaults.DIVERGENCE_FACTOR * first
    newly = bad & alive
    diverged_at[newly] = epoch
    return newly


def _analyse(jobs, method, device, started, train_seconds, w0, loss, mse, kerr, w_final, b_final,
             diverged, cancelled, y_shared) -> BatchResult:
    p0 = jobs[0].problem
    bsz = len(jobs)
    kshape = p0.kernel_shape
    co = kshape[0]
    kdim = math.prod(kshape[1:])
    # Least squares and the row space of A, once per distinct input.
    designs: dict[bytes, analysis.Design] = {}
    per_job: list[analysis.Design] = []
    first_design = None
    shared_x = _shared([j.problem.x for j in jobs])
    for j in jobs:
        if shared_x and first_design is not None:
            per_job.append(first_design)
            continue
        key = _digest(j.problem.x)
        if key not in designs:
            designs[key] = analysis.Design(j.problem.x, kshape, p0.has_bias)
        per_job.append(designs[key])
        first_design = per_job[-1]
    params = per_job[0].params
    t_all = [analysis.targets(j.problem.y) for j in (jobs[:1] if y_shared else jobs)]

    wstar = np.empty((bsz, co, params))
    sse = np.empty(bsz)
    if shared_x and y_shared:
        ws, ss = per_job[0].solve(t_all[0][None])
        wstar[:], sse[:] = ws[0], ss[0]
    elif shared_x:
        wstar[:], sse[:] = per_job[0].solve(np.stack(t_all))
    else:
        for i in range(bsz):
            ws, ss = per_job[i].solve(t_all[0 if y_shared else i][None])
            wstar[i], sse[i] = ws[0], ss[0]

    if method is Method.LSTSQ:
        w_final = wstar[:, :, :kdim].reshape((bsz, *kshape))
        b_final = wstar[:, :, kdim] if p0.has_bias else None
        count = p0.y.size
        loss = sse[None].copy()
        mse = (sse / count)[None]
    w_flat = w_final.reshape(bsz, co, kdim)
    if b_final is not None:
        w_flat = np.concatenate([w_flat, b_final[:, :, None]], axis=2)
    k_flat = None
    errors = None
    if p0.true_kernel is not None:
        ks = np.stack([j.problem.true_kernel for j in jobs])
        k_flat = ks.reshape(bsz, co, kdim)
        if p0.has_bias:
            tb = np.array([np.nan if j.problem.true_bias is None else j.problem.true_bias for j in jobs])
            k_flat = np.concatenate([k_flat, np.repeat(tb[:, None, None], co, axis=1)], axis=2)
        errors = analysis.kernel_errors(w_final, ks)
        if method is Method.LSTSQ:
            kerr = errors["frobenius"][None]
    gap = analysis.gaps(per_job[0], w_flat, wstar, k_flat) if shared_x else _gaps_each(per_job, w_flat, wstar, k_flat)
    status = ["diverged" if diverged[i] else "cancelled" if cancelled[i] else "succeeded" for i in range(bsz)]
    return BatchResult(
        jobs=jobs, method=method, device=device, train_seconds=time.perf_counter() - started,
        loss=loss, mse=mse, kernel_error=kerr, initial=w0.numpy().astype(np.float64), learned=w_final,
        learned_bias=b_final, status=status, diverged_epoch=diverged, cancelled=cancelled, lstsq=wstar,
        sse_opt=sse, rank=np.array([d.rank for d in per_job]), params=params,
        sums_only=np.array([d.sums_only for d in per_job]), gap=gap, errors=errors,
        extra={"train_only_seconds": train_seconds})


def _gaps_each(designs, w, wstar, k) -> analysis.Gap:
    parts = [analysis.gaps(d, w[i : i + 1], wstar[i : i + 1], None if k is None else k[i : i + 1])
             for i, d in enumerate(designs)]
    cat = lambda name: None if getattr(parts[0], name) is None else np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return analysis.Gap(cat("optimization"), cat("noise"), cat("identifiability"))


def run_spec(spec: JobSpec, problem: Problem | None = None, on_epoch: OnEpoch | None = None) -> dict[str, Any]:
    """Train one job from its spec (and its already built problem, if any), in this process."""
    problem = problem or build_problem(spec)
    job = Job(problem, seed=spec.seed, lr=spec.lr, tol=spec.tol)
    return train([job], spec.method, spec.epochs, spec.batch_size, spec.device.value, on_epoch).record(0)
