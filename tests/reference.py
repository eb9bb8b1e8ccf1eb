"""Linear algebra done independently of the engine, by plain loops and numpy.linalg: what the engine's
least squares, rank and gaps are checked against."""
from __future__ import annotations

from typing import Any

import numpy as np


def design_matrix(x: np.ndarray, kh: int, kw: int, bias: bool) -> np.ndarray:
    """im2col by plain loops: one row per (sample, output row, output column), columns (channel, i, j)."""
    n, c, h, w = x.shape
    rows = []
    for s in range(n):
        for i in range(h - kh + 1):
            for j in range(w - kw + 1):
                row = [float(x[s, ch, i + di, j + dj]) for ch in range(c) for di in range(kh) for dj in range(kw)]
                rows.append(row + [1.0] if bias else row)
    return np.array(rows, dtype=np.float64)


def label_columns(y: np.ndarray) -> np.ndarray:
    """Labels N x C_out x Ho x Wo as rows in design_matrix's order, one column per output channel."""
    n, co, ho, wo = y.shape
    return np.array([[float(y[s, o, i, j]) for o in range(co)]
                     for s in range(n) for i in range(ho) for j in range(wo)])


def flat(kernel: Any, bias: Any, co: int) -> np.ndarray:
    """A kernel (any nesting) and an optional bias as C_out x params, the bias as the last column."""
    w = np.asarray(kernel, dtype=np.float64).reshape(co, -1)
    if bias is None:
        return w
    b = np.broadcast_to(np.asarray(bias, dtype=np.float64), (co,))
    return np.hstack([w, b[:, None]])


def reference_analysis(x: np.ndarray, y: np.ndarray, kshape: tuple[int, ...], bias: bool,
                       learned: np.ndarray, true: np.ndarray | None) -> dict[str, Any]:
    """lstsq kernel, rank and the three gaps, from numpy.linalg alone (learned/true are C_out x params)."""
    _, _, kh, kw = kshape
    a = design_matrix(x, kh, kw, bias)
    t = label_columns(y)
    wstar = np.linalg.lstsq(a, t, rcond=None)[0].T  # C_out x params
    p = np.linalg.pinv(a) @ a  # projector onto the row space of A
    out = {"rank": int(np.linalg.matrix_rank(a)), "params": a.shape[1], "wstar": wstar,
           "sse": float(((a @ wstar.T - t) ** 2).sum()),
           "optimization": float(np.linalg.norm(learned @ p.T - wstar))}
    if true is not None:
        out["noise"] = float(np.linalg.norm(wstar - true @ p.T))
        out["identifiability"] = float(np.linalg.norm((learned - true) @ (np.eye(len(p)) - p).T))
    return out
