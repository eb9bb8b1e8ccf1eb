"""Why a learned kernel differs from the true one: least squares, identifiability and the gap.

A is the design matrix of a job (im2col of its input: one row per output position, one column per kernel
weight, plus a column of ones with a bias). A has a row per output position and can be far larger than the
input, so it is never built: everything here works from G = A^T A and A^T y (weights x weights, weights x
outputs), correlations of the input with itself and with the labels, summed through the windows of the
input's rows (service.jobs.inputs.row_windows, kh times smaller than A's rows) a block at a time. Float64
numpy, vectorized over B jobs that share A; never imports torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.jobs.inputs import BLOCK_BYTES, blocks, row_blocks, row_windows

EPS = float(np.finfo(np.float64).eps)
REFINE_LIMIT = 8
"""The most refining steps of a least-squares solve (Design.refinements), each a pass over the input."""


def gram(x: np.ndarray, kh: int, kw: int, bias: bool) -> np.ndarray:
    """G = A^T A, from the windows of the input's rows: kh times fewer products than A's rows would take.

    With R_u the windows of input row u (rows (n, w) over the output columns, columns (c, j)), A's columns of kernel
    row i are R_{h+i} over the output rows h, so G's block of kernel rows (i, i') is S(i, i') = sum_h R_{h+i}^T
    R_{h+i'}. The blocks S(0, i') are summed outright; shifting by an output row gives the others:
    S(i+1, i'+1) = S(i, i') - R_i^T R_i' + R_{Ho+i}^T R_{Ho+i'}. The bias column, A's column sums, likewise.
    """
    n, c, h, w = x.shape
    ho, q = h - kh + 1, c * kw
    s = np.zeros((kh, kh, q, q))  # S(i, i'), columns (c, j) by (c, j)
    sums = np.zeros((kh, q))  # A's column sums, kernel row by (c, j)
    for at, rows, cols in row_blocks(n, ho, w - kw + 1, kh, q):
        nr = rows.stop - rows.start
        rw = row_windows(x, at, rows.start, rows.stop + kh - 1, cols, kw)
        left = rw[:nr].reshape(-1, q)
        for i in range(kh):
            s[0, i] += left.T @ rw[i : i + nr].reshape(-1, q)
        sums[0] += left.sum(axis=0)
    if kh > 1:
        edges = np.zeros((2, kh - 1, kh - 1, q, q))  # R_i^T R_i' and R_{Ho+i}^T R_{Ho+i'}
        edge_sums = np.zeros((2, kh - 1, q))
        for at, _, cols in blocks(n, 1, w - kw + 1, 8 * (kh - 1) * q):
            for e, u in enumerate((0, ho)):
                rw = row_windows(x, at, u, u + kh - 1, cols, kw)  # kh - 1 rows x positions x (c, j)
                edges[e] += np.tensordot(rw, rw, axes=([1], [1])).transpose(0, 2, 1, 3)
                edge_sums[e] += rw.sum(axis=1)
        for i in range(1, kh):
            s[i, 0] = s[0, i].T
        for i in range(kh - 1):
            s[i + 1, 1:] = s[i, :-1] - edges[0, i] + edges[1, i]
            sums[i + 1] = sums[i] - edge_sums[0, i] + edge_sums[1, i]
        del edges
    d = c * kh * kw
    g = np.zeros((d + int(bias),) * 2)
    g[:d, :d] = s.reshape(kh, kh, c, kw, c, kw).transpose(2, 0, 3, 4, 1, 5).reshape(d, d)  # (c, i, j) both ways
    del s
    g[:d, :d] += g[:d, :d].T  # exactly symmetric: the blocks off the first kernel row were shifted there
    g[:d, :d] *= 0.5
    if bias:
        g[:d, d] = g[d, :d] = to_params(sums[:, :, None], c, kw)[:, 0]
        g[d, d] = n * ho * (w - kw + 1)
    return g


def to_params(by_rows: np.ndarray, c: int, kw: int) -> np.ndarray:
    """Values by kernel row and (c, j) (kh x c*kw x k) as rows in the order of A's columns, (c, i, j) (c*kh*kw x k)."""
    kh, _, k = by_rows.shape
    return by_rows.reshape(kh, c, kw, k).transpose(1, 0, 2, 3).reshape(c * kh * kw, k)


def by_rows(params: np.ndarray, c: int, kh: int, kw: int) -> np.ndarray:
    """Rows in the order of A's columns, (c, i, j) (c*kh*kw x k), by kernel row and (c, j) (kh x c*kw x k)."""
    k = params.shape[1]
    return params.reshape(c, kh, kw, k).transpose(1, 0, 2, 3).reshape(kh, c * kw, k)


def label_rows(ys: Sequence[np.ndarray], at: slice, rows: slice, cols: slice) -> np.ndarray:
    """The labels of B jobs (each N x C_out x Ho x Wo) at a block of output positions, as row_windows orders them:
    output rows by positions (n, w) by (B C_out), float64."""
    y = np.stack([yy[at, :, rows, cols] for yy in ys])  # B x n x C_out x rows x columns
    b, _, co, nr = y.shape[:4]
    return y.transpose(3, 1, 4, 0, 2).reshape(nr, -1, b * co).astype(np.float64)


class Design:
    """The row space of A, from the eigenvectors of G = A^T A (A is never built whole)."""

    def __init__(self, x: np.ndarray, kernel_shape: tuple[int, int, int, int], bias: bool):
        _, _, kh, kw = kernel_shape
        self.x, self.kh, self.kw, self.bias = x, kh, kw, bias
        n, c, h, w = x.shape
        self.rows = n * (h - kh + 1) * (w - kw + 1)
        self.params = c * kh * kw + int(bias)
        g = gram(x, kh, kw, bias)
        lam, vecs = np.linalg.eigh(g)  # ascending; G's eigenvalues are A's singular values squared
        # The rank: G's eigenvalues come with errors absolute in lambda, proportional to lambda_max. Summing the
        # rows' products into G can err by up to about rows * eps * lambda_max (the worst case of a sum of `rows`
        # terms), and eigh by about params * eps * lambda_max. So an eigenvalue counts only above
        # max(rows, params) * eps * lambda_max: numpy.linalg.matrix_rank's factor, applied to squared singular
        # values. Exact zeros (repeated rows or columns, as in edge:6x8 with a 2x2 kernel) fall far below it.
        # Unlike matrix_rank on A itself, singular values between max(rows, params) * eps * s_max and
        # sqrt(max(rows, params) * eps) * s_max (about 1.5e-8 * sqrt(rows) * s_max) count as zero: G cannot tell
        # them from rounding, and float32 training could not determine such directions either.
        self.tol = max(float(lam[-1]), 0.0) * max(self.rows, self.params) * EPS if lam.size else 0.0
        keep = lam > self.tol
        self.rank = int(keep.sum())
        self.lam = lam[keep][::-1].copy()  # the nonzero eigenvalues of G, largest first
        self.v = vecs[:, keep][:, ::-1].copy()  # params x rank: an orthonormal basis of A's row space
        # Weights whose columns of A are identical are seen only through their sum.
        self.sums_only = not self.identifiable and distinct_columns(g, self.tol) == self.rank

    @property
    def identifiable(self) -> bool:
        return self.rank == self.params

    @property
    def s(self) -> np.ndarray:
        """A's nonzero singular values, largest first."""
        return np.sqrt(self.lam)

    def solve(self, ys: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Minimum-norm least squares for the labels of B jobs (each N x C_out x Ho x Wo): W* (B x C_out x params)
        and its SSE (B,).

        W* = G+ A^T y (G+ = V diag(1/lambda) V^T, the pseudo-inverse on the row space), then refined with the
        residual r = y - A W* computed from the input itself: W* += G+ A^T r (refinements() times). The normal
        equations alone lose accuracy as cond(A)^2; each step takes the error down by about cond(A)^2 * eps, to
        about cond(A) * eps while cond(A)^2 * eps < 1. The SSE is ||r||^2 less what the last step removes
        (r^T A G+ A^T r), never ||y||^2 - ||A W*||^2, which would cancel."""
        b, co = len(ys), ys[0].shape[1]
        w = self._pinv(self._correlate(ys, None)[0])
        for _ in range(self.refinements()):
            atr, sse = self._correlate(ys, w)
            step = self._pinv(atr)
            sse = np.maximum(sse - np.einsum("pj,pj->j", step, atr), 0.0)
            w = w + step
        wstar = w.T.reshape(b, co, self.params)
        return wstar, sse.reshape(b, co).sum(axis=1)

    def refinements(self) -> int:
        """How many refining steps bring W* to about cond(A) * eps: each one shrinks the error by about
        rho = cond(A)^2 * eps, from rho itself after the normal equations, so k steps leave rho^(k+1). One for a
        well-conditioned A (cond 100: rho 2e-12); 4 for cond(A) 8e6, where one left W* 1e-5 off numpy's lstsq.
        Where rho is not well under 1 the steps would not converge: one, as before, within REFINE_LIMIT."""
        if self.rank == 0:
            return 1
        cond2 = float(self.lam[0] / self.lam[-1])  # cond(A)^2 on the row space
        rho, floor = cond2 * EPS, np.sqrt(cond2) * EPS
        if rho >= 0.5:
            return 1
        return int(min(max(np.ceil(np.log(floor) / np.log(rho)) - 1, 1), REFINE_LIMIT))

    def _correlate(self, ys: Sequence[np.ndarray], w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """A^T r and ||r||^2 for the residuals r = y - A w of every label column (params x (B C_out), (B C_out,));
        with w None, A^T y."""
        n, c, h, wd = self.x.shape
        kh, kw, q, cols_out = self.kh, self.kw, c * self.kw, len(ys) * ys[0].shape[1]
        d = c * kh * kw
        atr, sse = np.zeros((kh, q, cols_out)), np.zeros(cols_out)
        bias_row = np.zeros(cols_out)
        wr = None if w is None else by_rows(w[:d], c, kh, kw)
        for at, rows, cols in row_blocks(n, h - kh + 1, wd - kw + 1, kh, q + 3 * cols_out):
            nr = rows.stop - rows.start
            rw = row_windows(self.x, at, rows.start, rows.stop + kh - 1, cols, kw)
            r = label_rows(ys, at, rows, cols)  # output rows x positions x label columns
            if wr is not None:
                for i in range(kh):
                    r -= rw[i : i + nr] @ wr[i]
                if self.bias:
                    r -= w[d]
                sse += np.einsum("hmj,hmj->j", r, r)
            for i in range(kh):
                atr[i] += rw[i : i + nr].reshape(-1, q).T @ r.reshape(-1, cols_out)
            bias_row += r.sum(axis=(0, 1))
        out = to_params(atr, c, kw)
        return (np.vstack([out, bias_row]) if self.bias else out), sse

    def _pinv(self, atb: np.ndarray) -> np.ndarray:
        """G+ atb: the minimum-norm solution of G w = atb in A's row space (params x columns)."""
        return self.v @ ((self.v.T @ atb) / self.lam[:, None])

    def project(self, w: np.ndarray) -> np.ndarray:
        """P w for w of shape (..., params): the part of w that the data determine (NaN where w is not finite: a
        diverged job's weights)."""
        with np.errstate(invalid="ignore", over="ignore"):
            return (w @ self.v) @ self.v.T


def distinct_columns(g: np.ndarray, tol: float) -> int:
    """How many distinct columns A has, from G: columns p and q are the same when ||a_p - a_q||^2 =
    G_pp + G_qq - 2 G_pq is within 2 tol (the unit vector (e_p - e_q) / sqrt(2) is then a null direction of G)."""
    d = np.diag(g)
    first = np.empty(len(d), dtype=np.int64)
    step = max(1, BLOCK_BYTES // (8 * len(d)))
    for s in range(0, len(d), step):
        far = d[s : s + step, None] + d[None, :] - 2.0 * g[s : s + step]
        first[s : s + step] = (far <= 2.0 * tol).argmax(axis=1)  # the first column equal to each
    return len(np.unique(first))


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
    with np.errstate(invalid="ignore", over="ignore"):  # weights of inf beside NaN (lr 1e38): NaN, said without a
        # RuntimeWarning on the user's terminal
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
