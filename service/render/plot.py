"""PNG plots of results: one job (loss curve and kernels) or a sweep (error against what it varied).

matplotlib is imported on first use, with the Agg backend, so nothing else in `klab` pays for it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.render.text import difference, grid

DPI = 100
JOB_SIZE = (16.0, 4.0)
"""Inches of a job's figure: the loss curve and three kernel heatmaps in a row."""

SWEEP_PANEL = (5.5, 4.0)
"""Inches of each panel of a sweep's figure (one panel per swept parameter)."""

ANNOTATE_MAX = 7
"""Kernels up to this many rows and columns get their values written in the cells."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_job(result: dict[str, Any], path: str | Path) -> Path:
    """The loss curve (log scale) and heatmaps of the true, learned and difference kernels."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=JOB_SIZE, dpi=DPI)
    spec = result.get("spec") or {}
    fig.suptitle(f"job {result.get('id')}: {result.get('method')} on {spec.get('input')}, "
                 f"kernel {spec.get('kernel') or 'from labels'}, lr {spec.get('lr')}: {result.get('status')}")
    _loss(axes[0], result.get("epochs") or [])
    true, learned, diff = result.get("true_kernel"), result.get("learned_kernel"), difference(result)
    scale = _scale([true, learned])
    _heatmap(fig, axes[1], "true kernel", true, "viridis", -scale, scale)
    _heatmap(fig, axes[2], "learned kernel", learned, "viridis", -scale, scale)
    dscale = _scale([diff]) or 1.0
    _heatmap(fig, axes[3], "learned - true", diff, "RdBu_r", -dscale, dscale)
    fig.subplots_adjust(left=0.05, right=0.95, bottom=0.13, top=0.82, wspace=0.3)  # tight_layout costs 0.5 s
    return _save(fig, path)


def _loss(ax, epochs: Sequence[dict[str, Any]]) -> None:
    pts = [(e["epoch"], e["loss"]) for e in epochs if e.get("loss") is not None and math.isfinite(e["loss"])]
    ax.set_title("loss")
    ax.set_xlabel("epoch")
    if not pts:
        ax.text(0.5, 0.5, "no epochs", ha="center", va="center", transform=ax.transAxes)
        return
    x, y = zip(*pts)
    ax.plot(x, y, marker="o" if len(pts) <= 50 else None, markersize=3)
    if all(v > 0 for v in y):
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)


def _scale(kernels: Sequence[Any]) -> float:
    vals = [np.abs(np.array(grid(k), dtype=float)) for k in kernels if k is not None]
    finite = [v[np.isfinite(v)] for v in vals]
    return max((float(v.max()) for v in finite if v.size), default=1.0) or 1.0


def _heatmap(fig, ax, title: str, kernel: Any, cmap: str, vmin: float, vmax: float) -> None:
    ax.set_title(title)
    if kernel is None:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    cells = np.array(grid(kernel), dtype=float)
    image = ax.imshow(cells, cmap=cmap, vmin=vmin, vmax=vmax)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    rows, cols = cells.shape
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    if rows <= ANNOTATE_MAX and cols <= ANNOTATE_MAX:
        for (i, j), v in np.ndenumerate(cells):
            r, g, b, _ = image.cmap(image.norm(v)) if np.isfinite(v) else (1, 1, 1, 1)
            color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"  # readable on the cell
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=9, color=color)


def plot_sweep(rows: Sequence[dict[str, Any]], params: Sequence[str], path: str | Path,
               title: str = "") -> Path:
    """Relative error against each swept parameter; jobs without an error drawn as red crosses on top."""
    plt = _pyplot()
    params = list(params) or ["id"]
    fig, axes = plt.subplots(1, len(params), figsize=(SWEEP_PANEL[0] * len(params), SWEEP_PANEL[1]),
                             dpi=DPI, squeeze=False)
    fig.suptitle(title or "relative error")
    errors = [r.get("relative_error") for r in rows]
    finite = [e for e in errors if e is not None and math.isfinite(e)]
    log_y = bool(finite) and all(e > 0 for e in finite)
    top = max(finite) * (2 if log_y else 1.1) if finite else 1.0
    for ax, name in zip(axes[0], params):
        values = [r.get(name) for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = values
            if all(v > 0 for v in values):
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values})
            xs = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right")
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ok = [(x, e) for x, e in zip(xs, errors) if e is not None and math.isfinite(e)]
        bad = [x for x, e in zip(xs, errors) if e is None or not math.isfinite(e)]
        if ok:
            ax.scatter(*zip(*sorted(ok)), color="tab:blue", label="relative error", zorder=3)
            if numeric:
                best = {}
                for x, e in ok:
                    best[x] = min(e, best.get(x, e))
                ax.plot(sorted(best), [best[x] for x in sorted(best)], color="tab:blue", alpha=0.5,
                        label="best at each value")
        if bad:
            ax.scatter(bad, [top] * len(bad), color="tab:red", marker="x", label="no error (diverged/failed)",
                       zorder=3)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("relative error")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.12 / len(params), right=1 - 0.03 / len(params), bottom=0.2, top=0.88,
                        wspace=0.3)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
