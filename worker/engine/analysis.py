"""Why a learned kernel differs from the true one: least squares, identifiability and the gap.

A is the design matrix of a job (im2col of its input: one row per output position, one column per
kernel weight, plus a column of ones with a bias). Everything here is float64 numpy, vectorized
over B jobs that share A, and never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIRECT_LIMIT = 4_000_000
"""Designs with at most this many entries are decomposed directly; larger ones through a QR of chunks."""


def im2col(x: np.ndarray, kh: int, kw: int, bias: bool) -> np.ndarray:
    """A: rows (n, ho, wo), columns (c, i, j) as in Conv2d's weight[o].reshape(-1), then bias."""
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (kh, kw), axis=(2, 3))
    n, c, ho, wo = windows.shape[:4]
    a = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)
    if bias:
        a = np.hstack([a, np.ones((a.shape[0], 1))])
    return a


def targets(y: np.ndarray) -> np.ndarray:
    """Labels N x C_out x Ho x Wo as rows (n, ho, wo) by columns C_out."""
    n, co = y.shape[:2]
    return y.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, co)


class Design:
    """The row space of A, from its singular values and right singular vectors."""

    def __init__(self, x: np.ndarray, kernel_shape: tuple[int, int, int, int], bias: bool):
        _, _, kh, kw = kernel_shape
        self.x, self.kh, self.kw, self.bias = x, kh, kw, bias
        n, c, h, w = x.shape
        self.rows = n * (h - kh + 1) * (w - kw + 1)
        self.params = c * kh * kw + int(bias)
        if self.rows * self.params <= DIRECT_LIMIT:
            self.a = im2col(x, kh, kw, bias)
            u, s, vt = np.linalg.svd(self.a, full_matrices=False)
        else:
            self.a = None
            r = np.zeros((0, self.params))
            for i in range(n):  # a QR of stacked chunks keeps A's singular values at float64 accuracy
                r = np.linalg.qr(np.vstack([r, im2col(x[i : i + 1], kh, kw, bias)]), mode="r")
            u, s, vt = None, *np.linalg.svd(r, full_matrices=False)[1:]
        # numpy.linalg.matrix_rank's tolerance, so the rank agrees with it
        tol = (s.max() if s.size else 0.0) * max(self.rows, self.params) * np.finfo(np.float64).eps
        self.rank = int((s > tol).sum())
        self.s = s[: self.rank]
        self.v = vt[: self.rank].T  # params x rank
        self.u = None if u is None else u[:, : self.rank]
        # Weights whose columns of A are identical are seen only through their sum.
        self.sums_only = (self.a is not None and not self.identifiable
                          and len(np.unique(self.a.round(12), axis=1).T) == self.rank)

    @property
    def identifiable(self) -> bool:
        return self.rank == self.params

    def solve(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Minimum-norm least squares for labels t (B x rows x C_out): W* (B x C_out x params), its SSE (B,)."""
        if self.u is not None:
            z = np.einsum("rk,bro->bko", self.u, t)  # U_r^T t
        else:
            atb = np.zeros((t.shape[0], self.params, t.shape[2]))
            per = self.rows // self.x.shape[0]
            for i in range(self.x.shape[0]):
                a = im2col(self.x[i : i + 1], self.kh, self.kw, self.bias)
                atb += np.einsum("rp,bro->bpo", a, t[:, i * per : (i + 1) * per])
            z = np.einsum("pk,bpo->bko", self.v, atb) / self.s[None, :, None]
        wstar = np.einsum("pk,bko->bop", self.v, z / self.s[None, :, None])
        if self.a is not None:
            resid = np.einsum("rp,bop->bro", self.a, wstar) - t
            sse = np.einsum("bro,bro->b", resid, resid)
        else:
            sse = np.maximum(np.einsum("bro,bro->b", t, t) - np.einsum("bko,bko->b", z, z), 0.0)
        return wstar, sse

    def project(self, w: np.ndarray) -> np.ndarray:
        """P w for w of shape (..., params): the part of w that the data determine."""
        return (w @ self.v) @ self.v.T


@dataclass(frozen=True)
class Gap:
    """||W - K|| split into optimization (P W - W*), noise (W* - P K) and identifiability ((I - P)(W - K))."""

    optimization: np.ndarray
    noise: np.ndarray | None
    identifiability: np.ndarray | None


def gaps(design: Design, w: np.ndarray, wstar: np.ndarray, k: np.ndarray | None) -> Gap:
    """The three parts of the gap for B jobs; w, wstar and k are B x C_out x params."""
    pw = design.project(w)
    optimization = np.sqrt(((pw - wstar) ** 2).sum(axis=(1, 2)))
    if k is None:
        return Gap(optimization, None, None)
    pk = design.project(k)
    noise = np.sqrt(((wstar - pk) ** 2).sum(axis=(1, 2)))
    ident = np.sqrt((((w - k) - (pw - pk)) ** 2).sum(axis=(1, 2)))
    return Gap(optimization, noise, ident)


def kernel_errors(learned: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Frobenius, relative, max-abs and cosine distances for B kernels (B x ...)."""
    b = learned.shape[0]
    d = (learned - true).reshape(b, -1)
    lf, tf = learned.reshape(b, -1), true.reshape(b, -1)
    frob = np.sqrt((d**2).sum(axis=1))
    tnorm = np.sqrt((tf**2).sum(axis=1))
    lnorm = np.sqrt((lf**2).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(tnorm > 0, frob / tnorm, np.nan)
        cosine = np.where((tnorm > 0) & (lnorm > 0), (lf * tf).sum(axis=1) / (tnorm * lnorm), np.nan)
    return {"frobenius": frob, "relative": relative, "max_abs": np.abs(d).max(axis=1), "cosine": cosine}
