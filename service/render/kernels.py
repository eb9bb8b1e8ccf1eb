"""Kernels as a figure draws them: heatmaps, with their values in the cells where they fit, on a symmetric colour
scale; and a job's true kernel, which a running job's spec gives before it is stored."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import BadInput
from service.jobs.status import JobStatus

ANNOTATE_MAX = 7
"""Kernels up to this many rows and columns (each (out, in) slice of a 4-D one) get their values in the cells."""


def true_kernel(result: dict[str, Any]) -> Any:
    """A result's true kernel; a running job's (stored when it ends) made from its spec as the worker made it, an npy
    file's not read again: a running job was drawn as having none, its kernel error absolute beside ended jobs'."""
    spec = result.get("spec") or {}
    if result.get("status") != JobStatus.RUNNING.value or not isinstance(spec.get("kernel"), str) \
            or spec["kernel"].startswith("npy:"):
        return result.get("true_kernel")
    from service.jobs.inputs import parse_kernel

    try:
        return parse_kernel(spec["kernel"], int(spec.get("seed") or 0)).tolist()
    except BadInput:  # a setting since changed: drawn as it is stored
        return None


def true_norm(result: dict[str, Any]) -> float | None:
    """The norm of a result's true kernel, where it has one that a relative error can divide by."""
    true = true_kernel(result)
    norm = float(np.linalg.norm(np.asarray(true, dtype=float))) if true is not None else 0.0
    return norm if math.isfinite(norm) and norm > 0 else None


def kernel_cells(kernel: Any) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A kernel as one 2-D array: a 4-D one as blocks, a row per out channel and a column per in channel,
    separated by a blank (NaN) line; its shape as (out, in, rows, columns)."""
    a = np.asarray(kernel, dtype=float)
    if a.ndim == 4 and a.shape[:2] == (1, 1):
        a = a[0, 0]
    if a.ndim == 2:
        return a, (1, 1, *a.shape)
    co, ci, kh, kw = a.shape
    cells = np.full((co * (kh + 1) - 1, ci * (kw + 1) - 1), np.nan)
    for o in range(co):
        for i in range(ci):
            cells[o * (kh + 1):o * (kh + 1) + kh, i * (kw + 1):i * (kw + 1) + kw] = a[o, i]
    return cells, (co, ci, kh, kw)


def heatmap(fig: Any, ax: Any, title: str, kernel: Any, cmap: str, scale: float,
            box: tuple[float, float] = (280.0, 250.0), empty: str = "none") -> None:
    """A kernel's heatmap on a symmetric colour scale; values written in the cells of kernels up to ANNOTATE_MAX
    square when they fit a `box` (points, the heatmap's room at most: a job's figure gives each 236 to 258 points
    of height, measured; 200 left a 3x2 grid of 2x2 blocks, 8 cells tall, without its values). Measured on 125
    shapes of 2-D and 4-D kernels, values of 1 and of 0.001, every value written lies within its cell."""
    import matplotlib

    ax.set_title(title)
    if kernel is None:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    cells, (co, ci, kh, kw) = kernel_cells(kernel)
    image = ax.imshow(cells, cmap=matplotlib.colormaps[cmap].with_extremes(bad="white"), vmin=-scale, vmax=scale)
    tall = cells.shape[0] / cells.shape[1] * box[0] / box[1]  # the kernel's height over its room's, about
    bar = fig.colorbar(image, ax=ax, shrink=float(np.clip(tall, 0.3, 1.0)))
    # each tick its own number: a scale of 1e-7 was written once, above the bar, over the panel's title
    bar.ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    cell_pt = min(box[0] / cells.shape[1], box[1] / cells.shape[0])  # a cell's side as drawn, about
    if co * ci == 1:
        ax.xaxis.set_major_locator(_integer_locator(kw))
        ax.yaxis.set_major_locator(_integer_locator(kh))
        ax.set_xlabel("column")
        ax.set_ylabel("row")
    else:  # one tick per block, named by its channel, as many as have room
        ax.set_xticks(*_block_ticks(ci, kw, "in", cell_pt, across=True))
        ax.set_yticks(*_block_ticks(co, kh, "out", cell_pt, across=False))
        ax.tick_params(length=0)
        label = f"(out, in) channels: {co} x {ci} blocks of {kh}x{kw}"
        narrow = cells.shape[1] * cell_pt < TICK_CHAR_PT * len(label)  # wider than its kernel: cut at the edge
        ax.set_xlabel(label.replace(": ", ":\n") if narrow else label)
    if kh > ANNOTATE_MAX or kw > ANNOTATE_MAX:
        return
    size = min(9.0, 0.85 * cell_pt / (0.6 * 6))  # six characters fit a cell
    if size < 6:
        return  # too many blocks to read their values: the colours say it
    chars = int(0.85 * cell_pt / (0.6 * size))
    for (r, c), v in np.ndenumerate(cells):
        if np.isnan(v) and (r % (kh + 1) == kh or c % (kw + 1) == kw):
            continue  # the blank between blocks
        red, green, blue, _ = image.cmap(image.norm(v)) if np.isfinite(v) else (1, 1, 1, 1)
        color = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"  # readable on the cell
        ax.text(c, r, _short(v, chars), ha="center", va="center", fontsize=size, color=color)


TICK_CHAR_PT = 6.0
"""About how wide a character of a tick label is, in points (matplotlib's 10-point sans serif)."""


def _block_ticks(n: int, side: int, word: str, cell_pt: float, across: bool) -> tuple[list[float], list[str]]:
    """Ticks at the middles of n blocks of `side` cells, named `in 3` (`3` where that has no room across the
    blocks: 12 in channels ran together as `in 9in 10in 11`), every k-th where even numbers have none."""
    room = (side + 1) * cell_pt  # a block and its blank line
    names = [f"{word} {i}" for i in range(n)]
    if across and room < TICK_CHAR_PT * (len(names[-1]) + 1):
        names = [str(i) for i in range(n)]
    need = TICK_CHAR_PT * (len(names[-1]) + 1) if across else 12.0  # a label's width, or a line's height
    step = max(1, math.ceil(need / room))
    shown = range(0, n, step)
    return [i * (side + 1) + (side - 1) / 2 for i in shown], [names[i] for i in shown]


def _short(v: float, chars: int) -> str:
    """A value in at most `chars` characters if it can be: 3 significant digits, then the whole number (-1588 where
    `-2e+03`, 26% off, was written), then 2 digits, then 1."""
    texts = [f"{v:.3g}", *([f"{v:.0f}"] if math.isfinite(v) and abs(v) >= 1 else []), f"{v:.2g}", f"{v:.0e}"]
    return next((t for t in texts if len(t) <= chars), min(texts, key=len))


def _integer_locator(n: int) -> Any:
    from matplotlib.ticker import FixedLocator, MaxNLocator

    return FixedLocator(range(n)) if n <= 16 else MaxNLocator(integer=True)


def kernel_scale(kernels: Sequence[Any], least: float = 0.0) -> float:
    """The largest finite absolute value among kernels, and no less than `least` (1 if both are 0): a symmetric
    colour scale."""
    biggest = 0.0
    for k in kernels:
        if k is None:
            continue
        a = np.abs(np.asarray(k, dtype=float))
        a = a[np.isfinite(a)]
        biggest = max(biggest, float(a.max()) if a.size else 0.0)
    return max(biggest, least) or 1.0
