"""Plots of results as matplotlib Figures: one job (loss, kernel error, kernels), several jobs overlaid, or a sweep
(relative error per value of what it varied, mean and spread over seeds), and `save` to write one as a PNG.

matplotlib is imported on first use (on the Agg canvas, never through pyplot), so nothing else in `klab` pays
for it. Shared pieces (figures, ticks, heatmaps, group aggregates) are in service.render.axes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from service.jobs.status import JobStatus, in_order
from service.jobs.sweep import INTEGER, SWEEPABLE
from service.render import axes as ax_
from service.render import kernels
from service.render.axes import DPI, new_figure
from service.render.text import FLOAT32_EPS, IGNORED_BY, cell, difference, kernel_scale, rank_words, settled, shared

__all__ = ["DPI", "figure_job", "figure_jobs", "figure_sweep", "plot_job", "save"]

JOB_SIZE = (15.0, 9.0)
"""Inches of a job's figure: loss and kernel error over epochs above, the three kernels below."""

JOBS_SIZE = (15.0, 6.5)
"""Inches of several jobs overlaid: loss and kernel error, the legend below (one row of it: the figure grows by
LEGEND_ROW for each further row, so that many jobs leave the axes their height)."""

LEGEND_ROW = 0.22
"""Inches of one row of a legend in 9 pt type, and a little more (0.14 to 0.2 as drawn)."""

LEGEND_MOST = 40
"""Most jobs an overlay names in its legend; more are drawn unnamed, in order (9,000 named: a figure 66,628 px tall)."""

SWEEP_PANEL = (6.5, 4.5)
"""Inches of each panel of a sweep's figure (one per parameter it varies, seeds aside), at most 3 to a row."""

LOG_EPOCHS = 200
"""Runs longer than this get a log epoch axis: a long run spends most epochs near its floor, and a log axis gives
the first ten epochs as much room as the last nine thousand. Shorter runs keep a linear axis, on which geometric
convergence (a constant rate an epoch) is a straight line on the log loss axis. Every epoch is drawn, never thinned:
a spike stays visible, and matplotlib's path simplification keeps 100,000 epochs fast."""

LINESTYLES = ("-", "--", "-.", ":")
"""Overlaid jobs differ in line style as well as colour: two jobs that trained alike stay visible."""

SHOW_EACH_JOB = 2000
"""Sweeps of up to this many jobs also show each job's error as a faint dot beside the group's mean."""

MAX_COLOURS = 10
"""A second varying parameter colours a sweep's panels if it has at most this many values."""

SPEC_SHOWN = ("method", "lr", "epochs", "batch_size", "seed", "input", "kernel", "labels", "bias", "noise", "tol",
              "device")
"""A job's spec as titles and legends name it, in this order (None, and a noise of 0, are left out)."""

ESSENTIALS = SPEC_SHOWN[:-2]
"""What a job's title names of its spec (tol and device only where several jobs differ in them)."""

FLOOR_SHOWN = 1e-6
"""The kernel error's floor (unidentifiable directions and label noise) is drawn from this relative size up: float32
rounding below it."""

OWN_SCALE = 10.0
"""The learned kernel gets a colour scale of its own when its largest value is this many times the true one's
(a diverged job), so that the true kernel stays readable."""


def save(fig: Any, path: str | Path | IO[bytes]) -> Path | IO[bytes]:
    """Write a figure as a PNG (its directory must exist), to a path or an open binary file."""
    fig.savefig(path := path if hasattr(path, "write") else Path(path), format="png", dpi=DPI)
    return path


def plot_job(result: dict[str, Any], path: str | Path) -> Path:
    return save(figure_job(result), path)


# --- one job, several jobs ---------------------------------------------------------------------------------

def _spec(result: dict[str, Any]) -> dict[str, Any]:
    """What a job was asked to do: its stored spec, or what an unstored result says of it."""
    return result.get("spec") or {k: result.get(k) for k in ("method", "seed") if result.get(k) is not None}


def _name(key: str) -> str:
    return key.replace("_", " ")


def _described(spec: dict[str, Any], keys: Sequence[str], differ: Sequence[str] = ()) -> str:
    """The spec's values of `keys`, less what is unset, a noise of 0 (but where jobs `differ` in it: beside noise
    0.1, a job of none is named so) and what its method never reads."""
    ignored = IGNORED_BY.get(spec.get("method"), ())
    shown = [k for k in keys if spec.get(k) is not None and not (k == "noise" and spec[k] == 0 and k not in differ)
             and k not in ignored]
    return ", ".join(f"{_name(k)} {cell(spec[k])}" for k in shown)


def _kernel_errors(epochs: Sequence[dict[str, Any]], norm: float | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The kernel error of each epoch, relative to the true kernel's norm where it has one, raised to the weights'
    float32 rounding as a sweep's are (_errors: an exactly learned kernel keeps the log axis); how many were raised."""
    x, y = ax_.series(epochs, "kernel_error", norm or 1.0)
    return x, *_raised(y)


def _raised(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Relative errors with those under the weights' float32 rounding raised to it (NaN kept), and how many were."""
    under = values < FLOAT32_EPS
    return np.where(under, FLOAT32_EPS, values), int(under.sum())


def _job_title(result: dict[str, Any]) -> str:
    head = f"job {result['id']}" if result.get("id") is not None else "job (not stored)"
    lines = [f"{head}: {result.get('status')}: {_described(_spec(result), ESSENTIALS)}"]  # wrapped as drawn (title)
    err, ident = result.get("error") or {}, result.get("identifiability") or {}
    rel = settled(err.get("relative"), 1.0)  # 0 under the weights' float32 rounding, as klab show prints it
    facts = [f"relative error {cell(rel)}" if rel is not None else f"no relative error ({ax_.unmeasured(result)})"]
    if ident.get("identifiable") is not None:
        facts.append(("identifiable" if ident["identifiable"] else "not identifiable")
                     + f" ({rank_words(result)})")
    for key in ("converged_epoch", "diverged_epoch"):
        if result.get(key) is not None:
            facts.append(f"{key.removesuffix('_epoch')} at epoch {result[key]}")
    lines.append(", ".join(facts))
    if result.get("explanation"):  # not wrapped here too: a line wrapped twice left a word alone on a line
        lines.append(result["explanation"])
    return "\n".join(lines)


def figure_job(result: dict[str, Any]) -> Any:
    """One job: loss and relative kernel error over the same epochs (where one has no value too), then the true,
    learned and difference kernels."""
    fig = new_figure(*JOB_SIZE)
    ax_.title(fig, _job_title(result))
    grid = fig.add_gridspec(2, 6, height_ratios=(1, 1.1))
    loss_ax = fig.add_subplot(grid[0, :3])
    err_ax = fig.add_subplot(grid[0, 3:], sharex=loss_ax)
    epochs = result.get("epochs") or []
    last = int(max((e["epoch"] for e in epochs), default=1))
    loss = ax_.series(epochs, "loss")
    norm = kernels.true_norm(result)
    *error, floored = _kernel_errors(epochs, norm)
    loss_ax.plot(*loss, marker="o" if loss[0].size <= 50 else None, markersize=3, color="tab:blue")
    err_ax.plot(*error, marker="o" if error[0].size <= 50 else None, markersize=3, color="tab:green")
    no_loss, no_error = ax_.no_values([result])
    ax_.curve_axes(loss_ax, "loss (as the book prints it)", "loss", last, [loss[1]], last > LOG_EPOCHS, empty=no_loss,
                   past=len(epochs) - loss[0].size)
    gap, scale = result.get("gap") or {}, kernel_scale(result)  # the gaps as show prints them: 0 under rounding
    p = {n: settled(gap.get(k) or 0.0, scale) for n, k in (("unidentifiable", "identifiability"), ("noise",) * 2)}
    floor, drawn = math.hypot(*p.values()) / (norm or 1.0), [error[1]]  # named by the parts there are (not "+ noise")
    if norm and floor > FLOOR_SHOWN:  # what training cannot remove: directions the data cannot see, and label noise
        err_ax.axhline(floor, c="tab:purple", ls="--", label=f"floor: {' + '.join(filter(p.get, p))} ({floor:.3g})")
        drawn.append(np.array([floor]))
    ax_.curve_axes(err_ax, "kernel error: how far the learned kernel is from the true one",
                   "relative error ||W - K|| / ||K||" if norm else "kernel error ||W - K||", last, drawn,
                   last > LOG_EPOCHS, floored, no_error)
    for a in (loss_ax, err_ax):
        for key, colour in (("converged_epoch", "tab:green"), ("diverged_epoch", "tab:red")):
            if result.get(key) is not None:
                a.axvline(result[key], color=colour, linestyle=":",
                          label=f"{key.removesuffix('_epoch')} (epoch {result[key]})")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    true, learned, diff = kernels.true_kernel(result), result.get("learned_kernel"), difference(result)
    scale, own = kernels.kernel_scale([true]), kernels.kernel_scale([learned])
    learned_title = "learned kernel W"
    if true is None or own <= OWN_SCALE * scale:
        scale = own = max(scale, own) if true is not None else own
    else:
        learned_title += " (a colour scale of its own)"
    # a difference under the weights' float32 rounding (klab show's 0.0000) drawn pale: on a scale of its own, one
    least = kernels.kernel_scale([diff], FLOAT32_EPS * kernel_scale(result))  # of ±1e-8 was full red and blue
    for n, (title, kernel, cmap, s) in enumerate((("true kernel K", true, "viridis", scale),
                                                  (learned_title, learned, "viridis", own),
                                                  ("difference W - K", diff, "RdBu_r", least))):
        kernels.heatmap(fig, fig.add_subplot(grid[1, 2 * n:2 * n + 2]), title, kernel, cmap, s,
                    empty="when it ends" if result.get("status") == JobStatus.RUNNING.value
                    and (n == 1 or _spec(result).get("kernel") is not None) else "none")
    return fig


def figure_jobs(results: Sequence[dict[str, Any]]) -> Any:
    """Several jobs overlaid: loss and relative kernel error, each job named by its id and what differs."""
    if len(results) == 1:
        return figure_job(results[0])
    import matplotlib

    specs = [_spec(r) for r in results]
    differing = [k for k in SPEC_SHOWN if len({repr(s.get(k)) for s in specs}) > 1]
    differ, alike = shared(specs, SPEC_SHOWN, differing)  # alike: read by every job's method, too
    ends = [(f"job {r.get('id')}", f" ({r.get('status')}, relative error "
             f"{cell(settled((r.get('error') or {}).get('relative'), 1.0))})") for r in results]
    room = int((JOBS_SIZE[0] * 72 * 0.95 - 40) / (0.6 * 9)) - max(len(a) + len(b) + 2 for a, b in ends)
    labels = [a + (f": {named}" if named else "") + b  # what differs shortened to the figure's width, ends kept
              for (a, b), named in zip(ends, ax_.fitted([_described(s, differ, differ) for s in specs], room))]
    named = len(results) <= LEGEND_MOST
    widest = max(len(t) for t in labels) * 0.55 * 9 + 40  # points, 9 pt font
    ncols = max(1, min(len(results), int(JOBS_SIZE[0] * 72 * 0.95 // widest)))
    fig = new_figure(JOBS_SIZE[0], JOBS_SIZE[1] + ((-(-len(results) // ncols) - 1) * LEGEND_ROW if named else 0))
    loss_ax, err_ax = fig.subplots(1, 2, sharex=True)
    common = _described(specs[0], [k for k in ESSENTIALS if k in alike])
    ax_.title(fig, f"{len(results)} jobs" + (f", all with {common}" if common else "")
                 + ("\nrelative error after training in the legend" if named else
                    f"\ncoloured in order, job {results[0].get('id')} purple to job {results[-1].get('id')} yellow "
                    f"(more than {LEGEND_MOST}: not named; klab compare lists them)"))
    cmap = matplotlib.colormaps["tab10" if len(results) <= 10 else "viridis"]
    last = int(max((e["epoch"] for r in results for e in r.get("epochs") or []), default=1))
    all_relative, losses, errors, floored = True, [], [], 0
    for n, (r, label) in enumerate(zip(results, labels)):
        colour = cmap(n if len(results) <= 10 else n / (len(results) - 1))
        norm = kernels.true_norm(r)
        all_relative &= norm is not None
        loss = ax_.series(r.get("epochs") or [], "loss")
        *error, raised = _kernel_errors(r.get("epochs") or [], norm)
        floored += raised
        style = ({"color": colour, "linestyle": LINESTYLES[n % len(LINESTYLES)], "markersize": 3} if named
                 else {"color": colour, "linewidth": 0.6, "markersize": 3})  # equal runs show; thin where many
        marked = [size == 1 or named and size <= 30 for size in (loss[0].size, error[0].size)]  # lstsq's 1 too
        loss_ax.plot(*loss, label=ax_.literal(label) if named else None, marker="o" if marked[0] else None, **style)
        err_ax.plot(*error, marker="o" if marked[1] else None, **style)
        losses.append(loss[1])
        errors.append(error[1])
    no_loss, no_error = ax_.no_values(results)
    past = sum(len(r.get("epochs") or []) for r in results) - sum(v.size for v in losses)
    ax_.curve_axes(loss_ax, "loss", "loss", last, losses, last > LOG_EPOCHS, empty=no_loss, past=past)
    ax_.curve_axes(err_ax, "kernel error", "relative error ||W - K|| / ||K||" if all_relative else
                   "kernel error ||W - K|| (relative where a true kernel is known)", last, errors,
                   last > LOG_EPOCHS, floored, no_error)
    if named:
        fig.legend(loc="outside lower center", ncols=ncols, fontsize=9)
    return fig


# --- a sweep -------------------------------------------------------------------------------------------------

def _column(rows: Sequence[dict[str, Any]], name: str) -> list[Any]:
    return [r.get(name) for r in rows]


def _errors(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, bool]:
    """The relative errors (NaN for none), those under the weights' float32 rounding raised to it, and whether
    any was. Such an error is 0 as reports print it (service.render.text.settled); drawn at the rounding, it leaves
    the axis logarithmic for the rest (one exactly learned kernel once made a whole sweep's axis linear)."""
    e = np.array(_column(rows, "relative_error"), dtype=float)
    e, raised = _raised(np.where(np.isfinite(e), e, np.nan))
    return e, raised > 0


def _fixed(rows: Sequence[dict[str, Any]], params: Sequence[str]) -> str:
    if not rows:
        return ""
    fixed = [p for p in SWEEPABLE if p not in params and p in rows[0] and len(set(_column(rows, p))) == 1]
    return _described(rows[0], [p for p in SPEC_SHOWN if p in fixed])


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _codes(values: list[Any]) -> tuple[list[Any], np.ndarray, bool]:
    """A parameter's distinct values (sorted) and each row's index among them; whether they are numbers."""
    numeric = _is_numeric(values)
    arr = np.array(values, dtype=float) if numeric else np.array(["-" if v is None else str(v) for v in values])
    distinct, index = np.unique(arr, return_inverse=True)
    return distinct.tolist(), index, numeric


def figure_sweep(rows: Sequence[dict], params: Sequence[str], title: str = "", swept: Sequence[str] = ()) -> Any:
    """A sweep's relative error per value of each parameter it varies: mean and spread over the seeds (and any
    parameter not on that panel), coloured by a second varying parameter, jobs without an error by status above.
    A sweep over seeds only (or nothing) shows the distribution of its relative errors instead."""
    shown = [p for p in params if p != "seed"]
    errors, floored = _errors(rows)
    finite = errors[np.isfinite(errors)]
    log = bool(finite.size and (finite > 0).all())
    fixed, only = _fixed(rows, [*params, *swept]), ", ".join(f"{_name(p)} {cell(rows[0][p])}" for p in swept)
    head = title or f"{len(rows)} job{'s' * (len(rows) != 1)}"
    head += (f"; of what it varied, only {only} is stored" if only else "") + (f"\nfixed: {fixed}" if fixed else "")
    head += f"\nrelative errors {ax_.FLOORED} drawn at it" if floored else ""
    if not shown:
        return _figure_distribution(rows, errors, log, head)
    status = np.array(_column(rows, "status"))
    flagged = ~np.isfinite(errors) | (status != JobStatus.SUCCEEDED.value)
    missing = in_order(status[flagged].tolist())
    across, down = min(len(shown), 3), -(-len(shown) // 3)
    fig = new_figure(SWEEP_PANEL[0] * across, (SWEEP_PANEL[1] + (0.4 + 0.3 * len(missing) if missing else 0)) * down)
    ax_.title(fig, head + f"\nrelative error at each value: line {'geometric ' if log else ''}mean, band "
                 f"{ax_.BAND[0]:.0f}th-{ax_.BAND[1]:.0f}th percentile")
    grid = fig.add_gridspec(2 * down if missing else down, across, height_ratios=(0.3 * len(missing) + 0.3, 4) * down
                            if missing else None)
    codes = {p: _codes(_column(rows, p)) for p in shown}
    for at, name in enumerate(shown):
        row, col = divmod(at, across)
        ax = fig.add_subplot(grid[2 * row + 1 if missing else row, col])
        strip = fig.add_subplot(grid[2 * row, col], sharex=ax) if missing else None
        by = next((p for p in shown if p != name and len(codes[p][0]) <= MAX_COLOURS), None)
        _panel(ax, name, codes[name], codes[by] if by else None, by, errors, log, len(rows) <= SHOW_EACH_JOB)
        rest = [_name(p) for p in params if p not in (name, by)]
        ax.set_xlabel(_name(name) + (f" (spread over {', '.join(rest)})" if rest else " (one job at each point)"))
        if strip is not None:
            ax_.status_strip(strip, codes[name], flagged, status[flagged], missing)
    return fig


def _positions(name: str, code: tuple[list[Any], np.ndarray, bool], ax: Any) -> np.ndarray:
    """Where each distinct value sits on the x axis, the axis set up for them."""
    distinct, _, numeric = code
    if numeric:
        ax_.numeric_axis(ax, np.array(distinct, dtype=float), name in INTEGER)
        return np.array(distinct, dtype=float)
    ax_.category_axis(ax, distinct)
    return np.arange(len(distinct), dtype=float)


def _panel(ax: Any, name: str, code: tuple[list[Any], np.ndarray, bool], colour: tuple | None, by: str | None,
           errors: np.ndarray, log: bool, each: bool) -> None:
    import matplotlib

    xs = _positions(name, code, ax)
    ok = np.isfinite(errors)
    cindex = colour[1] if colour else np.zeros(errors.size, dtype=int)
    ncolours = len(colour[0]) if colour else 1
    keys = code[1] * ncolours + cindex
    stats = ax_.groups(keys[ok], errors[ok], log)
    palette = matplotlib.colormaps["tab10"]
    names = ax_.shortened([cell(v) for v in colour[0]]) if colour else []
    for c in range(ncolours):
        mine = stats["key"] % ncolours == c
        if not mine.any():
            continue
        colour_c = palette(c) if colour else "tab:blue"
        shift = 0.0 if code[2] or ncolours == 1 else (c - (ncolours - 1) / 2) * 0.6 / ncolours
        x = xs[stats["key"][mine] // ncolours] + shift
        label = ax_.literal(names[c]) if colour else "relative error"
        ax.plot(x, stats["mean"][mine], marker="o", markersize=4, color=colour_c, label=label, zorder=3,
                linestyle="-" if code[2] else "none")
        low, high = stats["low"][mine], stats["high"][mine]
        if code[2]:
            ax.fill_between(x, low, high, color=colour_c, alpha=0.2, linewidth=0)
        else:
            ax.vlines(x, low, high, color=colour_c, alpha=0.6, linewidth=3)
        if each:
            jobs = ok & (cindex == c)
            ax.scatter(xs[code[1][jobs]] + shift, errors[jobs], s=8, color=colour_c, alpha=0.3, linewidths=0, zorder=2)
    if log:
        ax.set_yscale("log")
        ax_.log_labels(ax.yaxis, errors[ok])
    if not ok.any():
        ax.text(0.5, 0.5, "no job has a relative error", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("relative error")
    ax.grid(True, which="both", alpha=0.3)
    if colour and ax.get_legend_handles_labels()[0]:  # no line drawn, no legend (matplotlib warned of it on stderr)
        ax.legend(fontsize=8, title=_name(by), title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))


def _figure_distribution(rows: Sequence[dict[str, Any]], errors: np.ndarray, log: bool, head: str) -> Any:
    """The relative errors' histogram (of the seeds: the only thing that varies), and every job by status."""
    fig = new_figure(11.0, 4.5)
    hist, counts = fig.subplots(1, 2, width_ratios=(3, 1))
    finite = errors[np.isfinite(errors)]
    ax_.title(fig, head + ("\nrelative error over the seeds" if len(rows) > 1 else ""))
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        bins = int(np.clip(np.sqrt(finite.size), 10, 60))
        if log and hi >= lo * ax_.SAME:
            edges = np.geomspace(lo, hi, bins + 1)
            hist.set_xscale("log")
            ax_.log_labels(hist.xaxis, finite)
        else:
            half = 0.5 * (abs(lo) or 1.0)  # one value: one bin around it
            edges = np.linspace(lo, hi, bins + 1) if hi >= lo * ax_.SAME else np.array([lo - half, hi + half])
        freq, edges = np.histogram(finite, edges)
        hist.stairs(freq, edges, fill=True, alpha=0.6, color="tab:blue")
        middle = float(np.exp(np.log(finite).mean())) if log else float(finite.mean())
        band = np.percentile(finite, ax_.BAND)
        hist.axvline(middle, color="black", label=f"{'geometric ' if log else ''}mean {ax_.settled_error(middle)}")
        hist.axvspan(*band, color="tab:orange", alpha=0.15, label=f"{ax_.BAND[0]:.0f}th-{ax_.BAND[1]:.0f}th percentile "
                     f"{ax_.settled_error(band[0])} to {ax_.settled_error(band[1])}")
        hist.legend(fontsize=8)
    else:
        hist.text(0.5, 0.5, "no job has a relative error", ha="center", va="center", transform=hist.transAxes)
    hist.set_xlabel("relative error")
    hist.set_ylabel(f"jobs ({finite.size} of {len(rows)} have a relative error)")
    ax_.integer_ticks(hist.yaxis, False)
    status = np.array(_column(rows, "status"))
    labels = in_order(status.tolist())
    heights = [int((status == s).sum()) for s in labels]
    counts.barh(range(len(labels)), heights, color=[ax_.status_style(s)[1] if s != JobStatus.SUCCEEDED.value
                                                    else "tab:blue" for s in labels])
    for y, h in enumerate(heights):
        counts.annotate(str(h), (h, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    counts.set_yticks(range(len(labels)), labels)
    counts.invert_yaxis()
    counts.xaxis.set_visible(False)  # the counts are written beside the bars
    counts.set_title("jobs by status", fontsize=10)
    counts.margins(x=0.3)
    return fig
