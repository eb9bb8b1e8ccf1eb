"""Residuals: the sum of squared residuals of every job of a batch, over a range of samples, in torch.

Every job's arithmetic is independent of the batch it trains in, so a job trained in a batch gives
bit for bit the result it gives alone (on the CPU).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MATMUL_LIMIT = 1 << 22
"""Jobs whose im2col matrix has at most this many elements train elementwise; larger ones by convolution.
(service.jobs.problem.ENGINE_BYTES counts the elementwise path's im2col in a job's memory.)"""

PARALLEL_GRAIN = 32768
"""torch's grain for splitting a reduction across threads (at::internal::GRAIN_SIZE)."""


def digest(array: np.ndarray) -> bytes:
    """A short fingerprint of an array's values and shape."""
    return hashlib.blake2b(array.tobytes(), digest_size=16).digest() + str(array.shape).encode()


def shared(arrays: Sequence[np.ndarray]) -> bool:
    """Whether every array holds the same values (one copy can serve the whole batch)."""
    first = arrays[0]
    if all(a is first for a in arrays):
        return True
    d = digest(first)
    return all(digest(a) == d for a in arrays[1:])


class Residuals:
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
        self.one_input = shared(xs)
        n, c, h, w = xs[0].shape
        self.n = n
        self.p = (h - kh + 1) * (w - kw + 1)
        self.d = ci * kh * kw
        self.elementwise = n * self.p * self.d <= MATMUL_LIMIT  # per job, so alone and batched agree
        # Sums longer than torch's parallel grain are split across threads by the batch's shape:
        # such jobs (and convolutions) go one at a time, so each sums exactly as it would alone.
        self.one_by_one = not self.elementwise or n * co * self.p > PARALLEL_GRAIN
        x = torch.from_numpy(xs[0][None] if self.one_input else np.stack(xs)).to(device)  # (1|B) x N x C x H x W
        y_np = ys[0][None] if shared(ys) else np.stack(ys)  # (1|B) x N x Co x Ho x Wo
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
                at = self.at[0 if self.one_input else i][None]
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
        out = F.conv2d(self.x[0 if self.one_input else i, s:e], w, None if bias is None else bias[0])
        y = self.y[0 if self.y.shape[0] == 1 else i, s:e]
        return (out.view(e - s, co, self.p) - y).pow(2).sum()[None]
