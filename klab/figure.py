"""A job's figure for Python: service.render.plot's, as a matplotlib Figure rather than a PNG file."""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.render import plot

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def job_figure(result: dict[str, Any]) -> Figure:
    """The figure `klab plot ID` saves: the job's curves and its true, learned and difference kernels."""
    make = getattr(plot, "figure_job", None)
    _shown_in_ipython()
    if make is not None:
        return make(result)
    return _from_png(result)


def _shown_in_ipython() -> None:
    """In IPython (a notebook), a Figure shown as its PNG: matplotlib's inline backend registers that display only
    once pyplot makes a figure, and klab's are made without pyplot, so `r.plot()` in a fresh notebook showed
    `<Figure size 1500x900 with 8 Axes>` alone. The inline backend's own display, where it has one, is kept."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return
    from matplotlib.figure import Figure

    png = shell.display_formatter.formatters["image/png"]
    try:
        png.lookup_by_type(Figure)
    except KeyError:
        png.for_type(Figure, _png)


def _png(fig: Figure) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _from_png(result: dict[str, Any]) -> Figure:
    """Where service.render.plot only saves PNGs: plot_job's PNG, shown in a Figure of its size."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    with tempfile.TemporaryDirectory() as folder:
        pixels = imread(plot.plot_job(result, Path(folder) / "job.png"))
    dpi = 100
    fig = Figure(figsize=(pixels.shape[1] / dpi, pixels.shape[0] / dpi), dpi=dpi)  # no pyplot: nothing global
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(pixels)
    ax.set_axis_off()
    return fig
