"""`klab plot` and service.render.plot: what each figure promises, read from its artists before it is saved (axes
scales, integer ticks, the values in kernel cells, statuses, legends, titles, nothing outside the figure), and
the real command: PNGs written, mistakes refused with one line, nothing heavy imported."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from conftest import fake_result
from harness import clean_env
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import to_rgba
from matplotlib.patches import StepPatch
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from service.db import reads, writes
from service.db.connect import Reader
from service.db.engine import writing
from service.jobs.problem import build_problem
from service.jobs.result import to_json
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.jobs.status import JobStatus
from service.render import axes as plot_axes
from service.render import kernels, plot
from service.render.text import FLOAT32_EPS

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
"""Drawing does not depend on the backend; the sweep's plot still reads both."""

SUCCEEDED, DIVERGED, FAILED, CANCELLED = (s.value for s in (JobStatus.SUCCEEDED, JobStatus.DIVERGED,
                                                              JobStatus.FAILED, JobStatus.CANCELLED))


# --- helpers -------------------------------------------------------------------------------------------------

def opened(path: Path) -> tuple[tuple[int, int], int]:
    """A PNG's size and how many distinct colors it holds (a blank or single-color image has few)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB")).astype(np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return (rgb.shape[1], rgb.shape[0]), len(np.unique(packed))


def readable(fig: Any) -> None:
    """Nothing drawn outside the figure, and no two tick labels of an axis overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches()
    tight = fig.get_tightbbox(renderer)
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01 and tight.x1 <= width + 0.01 and tight.y1 <= height + 0.01, tight
    box = fig.bbox
    for text in [fig._suptitle, *(t for a in fig.axes for t in (a.title, a.xaxis.label, a.yaxis.label))]:
        if text is not None and text.get_visible() and text.get_text():
            extent = text.get_window_extent(renderer)
            assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, text.get_text()
            assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, text.get_text()
    for a in fig.axes:
        frame = a.get_window_extent(renderer)
        for axis, lo, hi in ((a.xaxis, frame.x0, frame.x1), (a.yaxis, frame.y0, frame.y1)):
            if not axis.get_visible():
                continue
            shown = [t.get_window_extent(renderer) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
            shown = [e for e in shown if lo - 1 <= ((e.x0 + e.x1) / 2 if axis is a.xaxis else (e.y0 + e.y1) / 2)
                     <= hi + 1]
            for first, second in zip(shown, shown[1:]):
                assert not Bbox.intersection(first.shrunk(0.98, 0.98), second.shrunk(0.98, 0.98)), \
                    [t.get_text() for t in axis.get_ticklabels()]


def integer_ticks(a: Any, axis: str = "x") -> list[float]:
    """The ticks within an axis' view, checked to be integers."""
    lo, hi = sorted(a.get_xlim() if axis == "x" else a.get_ylim())
    ticks = [t for t in (a.get_xticks() if axis == "x" else a.get_yticks()) if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    return ticks


def by_title(fig: Any, start: str) -> Any:
    (found,) = [a for a in fig.axes if a.get_title().startswith(start)]
    return found


def result_of(spec_values: dict[str, Any], relative: float | None = 0.1, status: str = SUCCEEDED,
              epochs: int | None = None, **fields: Any) -> dict[str, Any]:
    """A result as `klab show --json` gives it, from the fixtures' fake engine (no torch)."""
    spec = JobSpec.parse({"input": "random:12x12", "kernel": "random:3x3", **spec_values})
    row, epoch_list = fake_result(spec, relative, status, epochs)
    row.update(fields)
    return {**to_json(row, epoch_list, stored=False, spec=spec.to_json()), "id": fields.get("id", 7),
            "spec": spec.to_json()}


def sweep_rows(errors: dict[tuple[float, str], list[float | None]], statuses: dict[int, str] | None = None
               ) -> list[dict[str, Any]]:
    """Summary rows of an lr x method sweep, one per seed, with these relative errors."""
    rows = []
    for (lr, method), values in errors.items():
        for seed, e in enumerate(values):
            rows.append({"id": len(rows) + 1, "status": SUCCEEDED, "method": method, "input": "edge:6x8",
                         "kernel": "d2l", "lr": lr, "epochs": 10, "batch_size": 2, "seed": seed, "noise": 0.0,
                         "relative_error": e})
    for i, status in (statuses or {}).items():
        rows[i]["status"] = status
    return rows


# --- one job ---------------------------------------------------------------------------------------------

def test_job_figure_shows_loss_and_kernel_error_with_the_answer_in_its_title() -> None:
    result = result_of({"lr": 0.03, "epochs": 10, "method": "d2l-manual"}, relative=0.25)
    fig = plot.figure_job(result)
    title = fig._suptitle.get_text()
    # the book's first loop takes the whole input at once: its batch size is left out, as `klab show` does
    assert "job 7: succeeded" in title and "method d2l-manual, lr 0.03, epochs 10, seed 0, input" in title
    assert "batch size" not in title
    assert "method adam, lr 0.03, epochs 10, batch size 2, seed 0" in plot.figure_job(
        result_of({"lr": 0.03, "epochs": 10, "method": "adam"}))._suptitle.get_text()
    assert "input random:12x12, kernel random:3x3" in title
    assert "relative error 0.25" in title and "identifiable (rank 9 of 9 weights)" in title
    loss, error = by_title(fig, "loss"), by_title(fig, "kernel error")
    (loss_line,), (error_line,) = loss.get_lines(), error.get_lines()
    assert loss_line.get_xdata().tolist() == list(range(1, 11))
    assert np.allclose(loss_line.get_ydata(), [e["loss"] for e in result["epochs"]])
    norm = np.linalg.norm(result["true_kernel"])
    assert np.allclose(error_line.get_ydata(), [e["kernel_error"] / norm for e in result["epochs"]])
    assert error.get_ylabel().startswith("relative error")
    for a in (loss, error):
        assert a.get_yscale() == "log" and a.get_xscale() == "linear"
        assert integer_ticks(a)[-1] == 10
    readable(fig)


def test_a_perfect_fit_keeps_both_curves_on_log_axes() -> None:
    """A job that learns the kernel exactly (d2l-manual on checker:6x8) reaches a loss and a kernel error of 0:
    once, that made both axes linear, its whole geometric convergence a corner against the axis. The loss's zeros
    go below the log axis and its kernel errors sit at the float32 rounding, each said under its axis."""
    result = result_of({"lr": 0.03, "epochs": 10}, relative=0.0)
    norm = float(np.linalg.norm(result["true_kernel"]))
    result["epochs"] = [{"epoch": n, "loss": 60 * 0.01 ** n if n < 7 else 0.0, "mse": 0.0,
                         "kernel_error": norm * 0.1 ** n if n < 6 else 0.0} for n in range(1, 11)]
    for fig, jobs in ((plot.figure_job(result), 1), (plot.figure_jobs([result, {**result, "id": 8}]), 2)):
        loss, error = by_title(fig, "loss"), by_title(fig, "kernel error")
        assert loss.get_yscale() == error.get_yscale() == "log"
        assert loss.get_xlabel() == f"epoch\nexactly 0 at {4 * jobs} epochs: below this log axis"
        assert error.get_xlabel() == f"epoch\nunder the weights' float32 rounding (1.19e-07) at {5 * jobs} epochs: " \
                                     "drawn at it"
        ys = error.get_lines()[0].get_ydata()
        assert np.allclose(ys[:5], 0.1 ** np.arange(1, 6)) and (ys[5:] == 2.0 ** -23).all()
        readable(fig)
    # a relative error under that rounding reads 0, as klab show prints it, in the title and in the legend
    result["error"]["relative"] = 3.011e-09
    assert "relative error 0, identifiable" in plot.figure_job(result)._suptitle.get_text()
    labels = plot.figure_jobs([result, {**result, "id": 8}]).axes[0].get_legend_handles_labels()[1]
    assert labels[0].endswith("(succeeded, relative error 0)"), labels


def test_one_value_gets_a_readable_log_axis() -> None:
    """A least-squares job (one epoch) whose kernel error is its floor, label noise: matplotlib's view of one value
    was so narrow that seven labels all read 0.0136. One value gets a decade around it, labels that differ."""
    result = result_of({"method": "lstsq", "input": "random:8x8", "noise": 0.1}, relative=0.0136, epochs=1)
    norm = float(np.linalg.norm(result["true_kernel"]))
    result["epochs"][0]["kernel_error"] = 0.0136 * norm * (1 + 1e-9)
    result["gap"].update(optimization=0.0, noise=0.0136 * norm)
    fig = plot.figure_job(result)
    fig.canvas.draw()
    for a in (by_title(fig, "loss"), by_title(fig, "kernel error")):
        low, high = a.get_ylim()
        assert a.get_yscale() == "log" and high / low > 9
        shown = [t.get_text() for t in [*a.get_yticklabels(), *a.get_yticklabels(minor=True)]
                 if low <= t.get_position()[1] <= high and t.get_text()]
        assert len(shown) >= 2 and len(set(shown)) == len(shown), shown
    readable(fig)
    rows = sweep_rows({(lr, "lstsq"): [0.0136] * 3 for lr in (0.01, 0.1)})  # lstsq never reads lr: one error
    fig = plot.figure_sweep(rows, ["lr", "seed"], "")
    fig.canvas.draw()
    low, high = fig.axes[0].get_ylim()
    assert high / low > 9
    rows = sweep_rows({(0.01, "lstsq"): [0.0136, 0.0136 * (1 + 1e-9)]})  # a seed sweep of it: one bar
    hist = [a for a in plot.figure_sweep(rows, ["seed"], "").axes if a.get_xlabel() == "relative error"][0]
    (bars,) = [p for p in hist.patches if isinstance(p, StepPatch)]
    assert bars.get_data().values.tolist() == [2]


def test_a_long_run_gets_a_log_epoch_axis_with_every_epoch_drawn() -> None:
    result = result_of({"epochs": 5000, "method": "d2l-sgd"}, relative=1e-4, epochs=20)
    result["epochs"] = [{"epoch": n, "loss": 10 * 0.99 ** n + 1e-12, "mse": 0.1 * 0.99 ** n,
                         "kernel_error": 0.995 ** n + 1e-6} for n in range(1, 5001)]
    fig = plot.figure_job(result)
    for start in ("loss", "kernel error"):
        a = by_title(fig, start)
        assert a.get_xscale() == "log" and a.get_xlim() == (1, 5000)
        assert {1, 10, 100, 1000, 5000} <= set(integer_ticks(a))
        assert [t.get_text() for t in a.get_xticklabels() if t.get_text() == "1000"] == ["1000"]
        assert len(a.get_lines()[0].get_xdata()) == 5000  # thinned nowhere
    readable(fig)


def test_a_run_of_tens_of_thousands_of_epochs_ticks_its_decades_and_a_narrow_error_reads_each_tick() -> None:
    result = result_of({"epochs": 30000, "method": "d2l-sgd"}, relative=1e-4, epochs=20)
    result["epochs"] = [{"epoch": n, "loss": 10 * 0.99 ** n + 1e-12, "mse": 0.1 * 0.99 ** n,
                         "kernel_error": 1.192 + 0.007 * 0.5 ** n} for n in range(1, 30001)]  # it cannot go under
    fig = plot.figure_job(result)
    assert integer_ticks(by_title(fig, "loss")) == [1, 10, 100, 1000, 10000]  # 5000, 10000, 20000 ran together
    labels = [t.get_text() for t in by_title(fig, "kernel error").get_yticklabels() if t.get_text()]
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels  # were 1.2, 1.2, 1.2, 1.2, 1.2, 1.19, ...
    readable(fig)


def test_a_title_naming_long_paths_stays_in_the_figure() -> None:
    """Arrays given to klab.run are named npy:$KLAB_HOME/arrays/SHA256.npy: two of them ran past both edges."""
    result = result_of({}, relative=0.1)
    result["spec"].update(input=f"npy:/home/someone/.klab/arrays/{'a' * 64}.npy",
                          labels=f"npy:/home/someone/.klab/arrays/{'b' * 64}.npy")
    fig = plot.figure_job(result)
    assert fig._suptitle.get_text().count("\n") >= 3
    readable(fig)


def test_a_dollar_in_a_name_or_a_path_is_drawn_as_written(tmp_path) -> None:
    """matplotlib read text between two $ as mathtext: a sweep named `cost $^$ run` or an input file named
    `c$\\frac{$.npy` was a traceback and no PNG, `$5 and $6` drawn in italics without its dollars."""
    rows = sweep_rows({(lr, "momentum"): [0.2] for lr in (0.01, 0.02)})
    rows[1]["input"] = "npy:c$\\frac{$.npy"  # a second input: a panel whose ticks name it
    job = result_of({})
    job["spec"]["input"] = "npy:c$\\frac{$.npy"
    sweep = plot.figure_sweep(rows, ["lr", "input"], "sweep 2 (cost $^$ run, $5 and $6): 2 jobs")
    for fig in (sweep, plot.figure_job(job)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # parsing turned off whole, matplotlib's own log ticks collapsed the axes
            path = plot.save(fig, tmp_path / "figure.png")
        assert opened(path)[1] > 100
        drawn = [t._preprocess_math(t.get_text()) for t in fig.findobj(Text)
                 if "$" in t.get_text() and "mathdefault" not in t.get_text()]  # matplotlib's own ticks aside
        assert drawn and not [text for text, math in drawn if math], drawn  # as text, not mathtext
        assert "npy:c$\\frac{$.npy" in " ".join(text for text, _ in drawn)
    assert "sweep 2 (cost $^$ run, $5 and $6)" in sweep._suptitle._preprocess_math(sweep.get_suptitle())[0]
    plain = plot.figure_job(result_of({}))
    plot.save(plain, tmp_path / "plain.png")  # drawn: its tick labels made
    ticks = [t for a in plain.axes for t in a.get_yticklabels() if t.get_text().startswith("$\\mathdefault")]
    assert ticks and all(t.get_parse_math() for t in ticks)  # matplotlib's own log ticks (10^-2) stay mathtext:
    # with parsing turned off whole they were drawn as `$\mathdefault{10^{-2}}$`, and collapsed the axes


def test_a_sweep_none_of_whose_jobs_has_an_error_yet_draws_without_warnings() -> None:
    """Queued jobs of an lr x method sweep: `klab plot --sweep` printed matplotlib's "No artists with labels found to
    put in legend" on stderr, twice."""
    rows = sweep_rows({(lr, m): [None, None] for lr in (0.01, 0.03) for m in ("d2l-manual", "adam")},
                      {i: "queued" for i in range(8)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot.figure_sweep(rows, ["lr", "method"], "sweep 4: 8 jobs")
    assert [t for t in fig.findobj(Text) if t.get_text() == "no job has a relative error"]


def test_a_long_explanation_is_wrapped_once_as_drawn() -> None:
    """The explanation was wrapped at 150 characters, then again to the figure's width: `shrinks` alone on a line."""
    sentence = ("not converged yet: training stopped 0.974 from the best kernel the data allow; about 14 more epochs "
                "at this lr would reach --tol (the gap shrinks x0.76 an epoch); lr 0.0278 would close it fastest "
                "(x0.667 an epoch).")
    fig = plot.figure_job(result_of({}, explanation=sentence))
    lines = fig.get_suptitle().split("\n")
    assert " ".join(lines[2:]) == sentence and all(len(line.split()) > 3 for line in lines), lines
    readable(fig)


def test_a_one_epoch_job_has_one_epoch_tick() -> None:
    """lstsq solves in one step: its axis spans epoch 1 alone, and shows 1, not 0.96, 0.98, 1.00, 1.02."""
    result = result_of({"method": "lstsq"}, relative=0.0, epochs=1)
    fig = plot.figure_job(result)
    for start in ("loss", "kernel error"):
        assert integer_ticks(by_title(fig, start)) == [1]
    readable(fig)


def test_a_diverged_jobs_rounding_is_no_floor() -> None:
    """`klab run --lr 1e30`: weights of 1e30 leave 4.5e15 of float32 rounding in the identifiability gap of a job the
    data determine (full rank), which `klab show` prints as 0; the plot drew it as a floor, 'unidentifiable + noise
    (3.21e+15)'."""
    result = result_of({"epochs": 1}, relative=1.8e31, rank=9, params=9, identifiable=True,
                       learned_kernel=np.full((3, 3), 1.6e30).tolist(), gap_identifiability=4.5e15, gap_noise=3.1e-16)
    fig = plot.figure_job(result)
    assert not [line for line in by_title(fig, "kernel error").get_lines() if line.get_label().startswith("floor")]
    readable(fig)


def test_epochs_without_a_finite_kernel_error_say_so_not_no_epochs() -> None:
    result = result_of({"epochs": 3}, relative=None, status=DIVERGED)
    for e in result["epochs"]:
        e["kernel_error"] = None  # weights past float32's range
    fig = plot.figure_job(result)
    notes = [t.get_text() for t in by_title(fig, "kernel error").texts]
    assert "no finite kernel error (weights past float32)" in notes and "no epochs" not in notes, notes
    readable(fig)


def test_a_loss_that_left_float32_part_way_is_said_under_its_panel() -> None:
    """`klab run --lr 1e20 --epochs 5` diverges at epoch 2, its loss stored as none there: the panel drew epoch 1's
    point alone and said nothing of epoch 2, where a job with no finite loss at all says "no finite loss"."""
    result = result_of({"epochs": 5}, relative=None, status=DIVERGED, epochs=2, diverged_epoch=2)
    result["epochs"][1].update(loss=None)
    two = plot.figure_jobs([result, {**result, "id": 8}])
    for fig, past in ((plot.figure_job(result), "1 epoch"), (two, "2 epochs")):
        loss = by_title(fig, "loss")
        assert loss.get_xlabel() == f"epoch\npast float32 at {past}: not drawn"
        assert list(loss.texts) == []
        readable(fig)


def test_a_job_whose_only_epoch_diverged_says_no_finite_loss_and_shows_its_divergence() -> None:
    """`klab run --lr 1e15 --epochs 5 --method d2l-sgd` diverges at its first epoch, stored with no finite loss: the
    loss panel said "no epochs" of a job of one, and the line of its divergence lay on the axes' left edge."""
    result = result_of({"epochs": 5}, relative=None, status=DIVERGED, epochs=1, diverged_epoch=1)
    result["epochs"][0].update(loss=None, kernel_error=None)
    fig = plot.figure_job(result)
    for title, note in (("loss", "no finite loss (past float32)"),
                        ("kernel error", "no finite kernel error (weights past float32)")):
        panel = by_title(fig, title)
        assert [t.get_text() for t in panel.texts] == [note]
        lo, hi = panel.get_xlim()
        assert [line.get_xdata()[0] for line in panel.get_lines() if "diverged" in line.get_label()] == [1]
        assert lo < 1 < hi
    readable(fig)
    overlay = plot.figure_jobs([result, {**result, "id": 8}])  # said "no epochs" too
    assert [t.get_text() for t in by_title(overlay, "loss").texts] == ["no finite loss (past float32)"]
    assert [t.get_text() for t in by_title(overlay, "kernel error").texts] == [
        "no finite kernel error (weights past float32)"]
    running = {**result_of({}, status=JobStatus.RUNNING.value), "epochs": [], "true_kernel": None}  # as stored: its
    # true kernel comes with its result; beside a job with none to measure
    free = result_of({}, epochs=5, true_kernel=None)
    for e in free["epochs"]:
        e["kernel_error"] = None
    for jobs in ([running, {**free, "id": 8}], [running]):  # it said the weights went past float32, or (alone) that
        # the running job had no true kernel
        fig = plot.figure_jobs(jobs)
        assert [t.get_text() for t in by_title(fig, "kernel error").texts] == ["no epochs"]


def test_a_difference_under_float32_rounding_is_drawn_pale_not_as_an_error() -> None:
    """lstsq on labels made by sobel-x learns it to about 1e-8 (klab show: a difference of 0.0000, the title: the
    kernel matches): on a colour scale of its own, ±1.4e-8, the difference's cells were full red and blue."""
    true = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    learned = true + np.array([[1.4e-8, -1e-8, 0], [0, 1.2e-8, -1.4e-8], [0, 0, 1e-9]])
    result = result_of({"method": "lstsq"}, relative=1e-8, true_kernel=true.tolist(), learned_kernel=learned.tolist())
    (image,) = by_title(plot.figure_job(result), "difference W - K").get_images()
    low, high = image.get_clim()
    assert high == -low == pytest.approx(FLOAT32_EPS * np.linalg.norm(true))  # the weights' own rounding
    assert max(abs(image.norm(v) - 0.5) for v in (learned - true).ravel()) < 0.02  # all but white
    off = true + 0.5 * np.eye(3)  # a real difference keeps a scale of its largest value
    result = result_of({}, relative=0.1, true_kernel=true.tolist(), learned_kernel=off.tolist())
    fig = plot.figure_job(result)
    (image,) = by_title(fig, "difference W - K").get_images()
    assert image.get_clim() == (-0.5, 0.5)
    np.testing.assert_array_equal(image.get_array(), off - true)  # W - K, its sign as its title says
    assert {t.get_text() for t in by_title(fig, "difference W - K").texts} == {"0.5", "0"}
    (image,) = by_title(fig, "learned kernel").get_images()
    np.testing.assert_array_equal(image.get_array(), off)  # the learned kernel's values, not the true one's


def test_not_identifiable_and_diverged_are_said_and_drawn() -> None:
    hidden = result_of({"epochs": 20}, relative=0.5, rank=4, params=9, identifiable=False, gap_identifiability=1.5,
                       explanation="the data cannot tell these weights apart")
    fig = plot.figure_job(hidden)
    assert "not identifiable (rank 4 of 9 weights)" in fig._suptitle.get_text()
    assert "the data cannot tell these weights apart" in fig._suptitle.get_text()
    floors = [line for line in by_title(fig, "kernel error").get_lines() if line.get_label().startswith("floor")]
    assert len(floors) == 1
    assert floors[0].get_ydata()[0] == pytest.approx(1.5 / np.linalg.norm(hidden["true_kernel"]))
    diverged = result_of({"epochs": 12}, relative=None, status=DIVERGED)
    fig = plot.figure_job(diverged)
    assert "diverged at epoch 12" in fig._suptitle.get_text()
    assert "no relative error (" in fig._suptitle.get_text()
    nan_weights = result_of({"epochs": 12}, relative=None, status=DIVERGED, learned_kernel=[[float("nan")] * 3] * 3)
    assert "no relative error (weights past float32)" in plot.figure_job(nan_weights)._suptitle.get_text()  # was:
    # "no true kernel or no result", for a job that has both
    marks = [line.get_label() for line in by_title(fig, "loss").get_lines()]
    assert "diverged (epoch 12)" in marks
    readable(fig)


@pytest.mark.parametrize("side, written", [(7, True), (8, False)])
def test_kernel_values_are_written_in_cells_up_to_7x7(side: int, written: bool) -> None:
    rng = np.random.default_rng(side)
    true = rng.standard_normal((side, side))
    result = {**result_of({}), "true_kernel": true.tolist(), "learned_kernel": (true + 0.01).tolist()}
    fig = plot.figure_job(result)
    cells = by_title(fig, "true kernel").texts
    if not written:
        assert len(cells) == 0
        return
    assert len(cells) == side * side
    image = by_title(fig, "true kernel").images[0]
    def luminance(rgba: tuple[float, ...]) -> float:
        return 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]

    for text in cells:
        col, row = text.get_position()
        assert float(text.get_text()) == pytest.approx(true[row, col], rel=5e-3, abs=5e-3)
        cell = image.cmap(image.norm(true[row, col]))  # written in black or white, whichever stands out on it
        assert abs(luminance(to_rgba(text.get_color())) - luminance(cell)) >= 0.5, (text.get_text(), cell)
    assert len(by_title(fig, "difference").texts) == side * side
    readable(fig)


def test_a_large_value_in_a_cell_is_written_as_its_whole_number_where_it_fits() -> None:
    """-1587.76 was written -2e+03 (26% off) in a 5x5 kernel's cell, beside -980 in the next."""
    true = np.full((5, 5), -980.0)
    true[0, 0], true[0, 1] = -1587.76, 0.5
    result = {**result_of({}), "true_kernel": true.tolist(), "learned_kernel": true.tolist()}
    texts = {tuple(t.get_position()): t.get_text() for t in by_title(plot.figure_job(result), "true kernel").texts}
    assert (texts[(0, 0)], texts[(1, 0)], texts[(2, 0)]) == ("-1588", "0.5", "-980")


@pytest.mark.parametrize("shape, scale", [((3, 2, 2, 2), 1.0), ((2, 3, 3, 3), 1.0), ((3, 2, 2, 4), 1.0),
                                          ((2, 2, 4, 4), 1.0), ((1, 2, 2, 2), 1.2345e-3)])
def test_a_4d_kernel_is_labelled_by_out_and_in_channel(shape: tuple[int, ...], scale: float) -> None:
    """(3, 2, 2, 2) was drawn without its values; (3, 2, 2, 4)'s and small values ('0.00252') were a little wider
    than their cells."""
    rng = np.random.default_rng(3)
    true = rng.standard_normal(shape) * scale
    result = {**result_of({}), "true_kernel": true.tolist(), "learned_kernel": (true * 0.9).tolist()}
    fig = plot.figure_job(result)
    a = by_title(fig, "true kernel")
    assert [t.get_text() for t in a.get_xticklabels()] == [f"in {i}" for i in range(shape[1])]
    assert [t.get_text() for t in a.get_yticklabels()] == [f"out {o}" for o in range(shape[0])]
    assert "(out, in)" in a.get_xlabel()
    assert len(a.texts) == true.size  # every weight, none for the blanks between blocks
    readable(fig)
    cell = abs(a.transData.transform((1, 1)) - a.transData.transform((0, 0)))  # pixels of one cell
    renderer = fig.canvas.get_renderer()
    assert all(t.get_window_extent(renderer).width < cell[0] and t.get_window_extent(renderer).height < cell[1]
               for t in a.texts)  # each value within its cell
    if shape != (2, 3, 3, 3):
        return
    assert list(a.get_xticks()) == [1.0, 5.0, 9.0] and list(a.get_yticks()) == [1.0, 5.0]  # each block's middle
    cells, shape = kernels.kernel_cells(true)
    assert shape == (2, 3, 3, 3) and cells.shape == (7, 11)
    assert cells[4:7, 8:11].tolist() == true[1, 2].tolist() and np.isnan(cells[3]).all()
    readable(fig)
    one_channel = plot.figure_job({**result, "true_kernel": true[:1, :1].tolist(), "learned_kernel": None})
    assert by_title(one_channel, "true kernel").get_xlabel() == "column"  # (1, 1, kh, kw) is a 2-D kernel


def test_a_diverged_learned_kernel_gets_its_own_colour_scale() -> None:
    result = result_of({})
    result["learned_kernel"] = (np.array(result["true_kernel"]) * 1e4).tolist()
    fig = plot.figure_job(result)
    true_image, learned_image = by_title(fig, "true kernel").images[0], by_title(fig, "learned kernel").images[0]
    assert true_image.norm.vmax == pytest.approx(np.abs(result["true_kernel"]).max())
    assert learned_image.norm.vmax == pytest.approx(np.abs(result["learned_kernel"]).max())
    assert "of its own" in by_title(fig, "learned kernel").get_title()


# --- several jobs ----------------------------------------------------------------------------------------

def test_several_jobs_overlaid_are_named_by_id_and_what_differs() -> None:
    results = [result_of({"lr": lr, "epochs": 300}, relative=rel, id=i) for i, lr, rel in
               ((3, 0.01, 0.2), (4, 0.03, 0.02), (5, 0.1, None))]
    results[2]["status"] = DIVERGED
    fig = plot.figure_jobs(results)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["job 3: lr 0.01 (succeeded, relative error 0.2)",
                      "job 4: lr 0.03 (succeeded, relative error 0.02)",
                      "job 5: lr 0.1 (diverged, relative error -)"]
    assert "3 jobs, all with method d2l-manual, epochs 300" in fig._suptitle.get_text()
    for start in ("loss", "kernel error"):
        a = by_title(fig, start)
        assert len(a.get_lines()) == 3 and a.get_xscale() == "log"
        integer_ticks(a)
    assert len({line.get_linestyle() for line in by_title(fig, "loss").get_lines()}) == 3  # equal runs stay visible
    readable(fig)
    noisy = [result_of({"noise": noise, "seed": 5}, id=i) for i, noise in ((12, 0.1), (13, 0.0))]
    labels = [t.get_text() for t in plot.figure_jobs(noisy).legends[0].get_texts()]
    assert [label.split(" (")[0] for label in labels] == ["job 12: noise 0.1", "job 13: noise 0"]  # was `job 13`


def test_a_running_job_is_drawn_against_its_true_kernel_as_it_will_be_once_ended() -> None:
    """A job's kernels are stored when it ends, its epochs as it trains: a running job was drawn as having no true
    kernel, its kernel error absolute (beside ended jobs' relative errors in an overlay, 4 times theirs)."""
    ended = result_of({"seed": 3, "epochs": 30}, id=8)
    ended["true_kernel"] = build_problem(JobSpec.parse(ended["spec"])).true_kernel[0, 0].tolist()  # as the worker's
    running = {**ended, "id": 9, "status": JobStatus.RUNNING.value, "true_kernel": None, "learned_kernel": None,
               "error": None, "explanation": None}
    assert np.linalg.norm(ended["true_kernel"]) > 1.5  # relative and absolute errors would differ
    fig = plot.figure_job(running)
    assert "no relative error (not ended yet)" in fig._suptitle.get_text()
    err = by_title(fig, "kernel error")
    assert err.get_ylabel() == "relative error ||W - K|| / ||K||"
    ended_err = by_title(plot.figure_job(ended), "kernel error")
    np.testing.assert_array_equal(err.get_lines()[0].get_ydata(), ended_err.get_lines()[0].get_ydata())
    assert by_title(fig, "true kernel K").get_images()  # drawn from its spec, not "none"
    assert [t.get_text() for t in by_title(fig, "learned kernel W").texts] == ["when it ends"]
    labelled = {**running, "spec": {**running["spec"], "kernel": None}}  # labels alone: never a true kernel
    fig_labels = plot.figure_job(labelled)
    assert "no relative error (no true kernel)" in fig_labels._suptitle.get_text()
    assert [t.get_text() for t in by_title(fig_labels, "difference").texts] == ["none"]
    both = by_title(plot.figure_jobs([running, ended]), "kernel error")
    assert both.get_ylabel() == "relative error ||W - K|| / ||K||"
    np.testing.assert_array_equal(*(line.get_ydata() for line in both.get_lines()))
    other = {**ended, "id": 10, "true_kernel": (3 * np.array(ended["true_kernel"])).tolist()}  # each by its own norm
    lines = by_title(plot.figure_jobs([ended, other]), "kernel error").get_lines()
    for line, r in zip(lines, (ended, other), strict=True):
        np.testing.assert_allclose(line.get_ydata(), np.array([e["kernel_error"] for e in r["epochs"]])
                                   / np.linalg.norm(r["true_kernel"]), rtol=1e-12)
    from service.render.text import render, side_by_side

    shown = render(running)  # `klab show` printed no kernel where the plot draws its true one
    assert side_by_side([("true", ended["true_kernel"]), ("learned", None), ("difference", None)]) in shown
    readable(fig)


def test_overlaid_jobs_share_only_what_every_method_reads_and_name_a_bias_one_has() -> None:
    fig = plot.figure_jobs([result_of({"method": m, "batch_size": 2}, id=i) for i, m in ((1, "d2l-manual"),
                                                                                         (2, "lstsq"))])
    assert "batch" not in fig._suptitle.get_text() and "seed 0" in fig._suptitle.get_text()  # neither reads it
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "job 1: method d2l-manual, lr 0.03, epochs 10 (succeeded, relative error 0.1)",
        "job 2: method lstsq (succeeded, relative error 0.1)"]
    fig = plot.figure_jobs([result_of({}, id=1), result_of({"bias": 0.5}, id=2)])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "job 1 (succeeded, relative error 0.1)", "job 2: bias 0.5 (succeeded, relative error 0.1)"]


def test_an_overlays_legend_of_long_kernels_stays_in_the_figure_naming_each_job() -> None:
    """Two 5x5 kernels as literals (about 200 characters each entry): the legend ran past both edges of the figure,
    neither entry's job id nor its relative error left in it."""
    rng = np.random.default_rng(1)
    kernels = [json.dumps(np.round(rng.standard_normal((5, 5)), 4).tolist()) for _ in range(2)]
    fig = plot.figure_jobs([result_of({"kernel": k, "method": "lstsq"}, id=181 + i) for i, k in enumerate(kernels)])
    readable(fig)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [t[:13] for t in texts] == ["job 181: kern", "job 182: kern"], texts
    assert all(t.endswith("(succeeded, relative error 0.1)") and "…" in t for t in texts), texts
    assert texts[0] != texts[1], texts


def test_many_jobs_overlaid_leave_the_axes_their_height() -> None:
    def heights(n: int) -> list[float]:
        fig = plot.figure_jobs([result_of({"lr": 0.001 * (i + 1), "seed": i}, relative=0.1, id=i) for i in range(n)])
        readable(fig)
        renderer = fig.canvas.get_renderer()
        out = []
        for a in (by_title(fig, "loss"), by_title(fig, "kernel error")):
            frame = a.get_window_extent(renderer)
            assert a.yaxis.label.get_window_extent(renderer).height <= frame.height  # beside its axis, not above
            out.append(frame.height)
        return out

    few, many = heights(3), heights(40)  # 40 jobs: a legend of 20 rows below the axes
    assert min(many) >= 0.95 * min(few), (few, many)


def test_more_jobs_overlaid_than_a_legend_names_are_drawn_unnamed_in_a_figure_of_one_size() -> None:
    """9,000 jobs overlaid made a legend of 9,000 rows: a PNG 66,628 pixels tall, minutes to draw. Past
    LEGEND_MOST the jobs are drawn in order of the ids given, unnamed, and the figure keeps its size."""
    def figure(n: int) -> Any:
        return plot.figure_jobs([result_of({"lr": 0.001 * (i + 1), "seed": i}, relative=0.1, id=i + 1)
                                 for i in range(n)])

    named, unnamed, many = figure(plot.LEGEND_MOST), figure(plot.LEGEND_MOST + 1), figure(600)
    assert len(named.legends[0].get_texts()) == plot.LEGEND_MOST
    assert named.get_size_inches()[1] > plot.JOBS_SIZE[1]
    for fig, n in ((unnamed, plot.LEGEND_MOST + 1), (many, 600)):
        readable(fig)
        assert not fig.legends and tuple(fig.get_size_inches()) == plot.JOBS_SIZE
        assert f"coloured in order, job 1 purple to job {n} yellow" in fig._suptitle.get_text()
        lines = by_title(fig, "loss").get_lines()
        assert len(lines) >= n
        viridis = matplotlib.colormaps["viridis"]  # as the title says
        assert (to_rgba(lines[0].get_color()), to_rgba(lines[n - 1].get_color())) == (viridis(0.0), viridis(1.0))


def test_a_one_epoch_job_among_more_than_a_legend_names_is_still_drawn() -> None:
    """Unnamed jobs were drawn as lines without markers: an lstsq job's single epoch, a line of one point, drew
    nothing, while the footnote said its rounding was "drawn at it"."""
    for n in (plot.LEGEND_MOST, plot.LEGEND_MOST + 1):
        results = [result_of({"lr": 0.001 * (i + 1), "seed": i}, relative=0.1, id=i + 1) for i in range(n - 1)]
        results.append(result_of({"method": "lstsq", "seed": n}, relative=0.05, epochs=1, id=n))
        fig = plot.figure_jobs(results)
        for panel in ("loss", "kernel error"):
            ones = [line for line in by_title(fig, panel).get_lines() if len(line.get_xdata()) == 1]
            assert len(ones) == 1 and ones[0].get_marker() == "o", (n, panel)  # seen
            assert list(ones[0].get_xdata()) == [1]
            many = [line for line in by_title(fig, panel).get_lines() if len(line.get_xdata()) == 10]
            named = n <= plot.LEGEND_MOST
            assert len(many) == n - 1 and {line.get_marker() for line in many} == {"o" if named else "None"}


# --- sweeps ----------------------------------------------------------------------------------------------

def test_sweep_panels_aggregate_over_seeds_coloured_by_the_other_parameter() -> None:
    rng = np.random.default_rng(0)
    errors = {(lr, m): list(rng.uniform(0.1, 0.4, 20) * lr * (2 if m == "adam" else 1))
              for lr in (0.001, 0.01, 0.1) for m in ("adam", "d2l-manual")}
    errors[(1.0, "d2l-manual")] = [None] * 3
    rows = sweep_rows(errors, {120: DIVERGED, 121: DIVERGED, 122: FAILED, 0: CANCELLED, 1: CANCELLED})
    rows[0]["relative_error"] = rows[1]["relative_error"] = None
    params = reads.varying(rows)
    assert params == ["lr", "seed", "method"]
    fig = plot.figure_sweep(rows, params, "sweep 4 (demo): 123 jobs")
    title = fig._suptitle.get_text()
    assert title.startswith("sweep 4 (demo): 123 jobs\nfixed: epochs 10, batch size 2, input edge:6x8, kernel d2l")
    panels = [a for a in fig.axes if a.get_ylabel() == "relative error"]
    assert [a.get_xlabel() for a in panels] == ["lr (spread over seed)", "method (spread over seed)"]
    lr, method = panels
    assert lr.get_xscale() == "log" and lr.get_yscale() == "log"
    assert [t.get_text() for t in lr.get_xticklabels()] == ["0.001", "0.01", "0.1", "1"]
    assert lr.get_legend().get_title().get_text() == "method"
    assert [t.get_text() for t in lr.get_legend().get_texts()] == ["adam", "d2l-manual"]
    (adam,) = [line for line in lr.get_lines() if line.get_label() == "adam"]
    expected = [np.exp(np.log([e for e in errors[(x, "adam")] if e is not None]).mean()) for x in (0.001, 0.01, 0.1)]
    assert adam.get_xdata().tolist() == [0.001, 0.01, 0.1]
    assert np.allclose(adam.get_ydata(), [np.exp(np.log(errors[(0.001, "adam")][2:]).mean()), *expected[1:]])
    assert [t.get_text() for t in method.get_xticklabels()] == ["adam", "d2l-manual"]
    assert method.get_legend().get_title().get_text() == "lr"
    strips = [a for a in fig.axes if a.get_title().startswith("jobs that did not succeed")]
    assert len(strips) == 2
    for strip in strips:  # by status, in JobStatus's order, never lumped together
        assert [t.get_text() for t in strip.get_yticklabels()] == [DIVERGED, FAILED, CANCELLED]
    assert sorted(t.get_text() for t in strips[1].texts) == ["1", "2", "2"]  # d2l-manual 2 + 1, adam 2
    for strip, adam_at in zip(strips, (0.001, 0.0)):  # each count at its value, on its status's row, as its marker
        assert {(t.get_text(), float(t.xy[0]), t.xy[1]) for t in strip.texts} == \
            {("2", 1.0, 0), ("1", 1.0, 1), ("2", adam_at, 2)}
        assert [set(c.get_offsets()[:, 1]) for c in strip.collections] == [{0}, {1}, {2}]
    # the band, 10th to 90th percentile over the seeds (of the logs, on a log axis): lr's filled between, method's
    # drawn as a line each
    def band(found: list[float]) -> np.ndarray:
        return np.exp(np.percentile(np.log(found), (10, 90)))

    (adam_band,) = [c for c in lr.collections if isinstance(c, PolyCollection)][:1]  # fill_between's
    at = adam_band.get_paths()[0].vertices
    for x in (0.001, 0.01, 0.1):
        found = errors[(x, "adam")][2 if x == 0.001 else 0:]
        np.testing.assert_allclose(sorted(set(at[np.isclose(at[:, 0], x), 1])), band(found), rtol=1e-12)
    first_lr = [c for c in method.collections if isinstance(c, LineCollection)][0]  # lr 0.001, per method
    for segment, m in zip(first_lr.get_segments(), ("adam", "d2l-manual")):
        found = errors[(0.001, m)][2 if m == "adam" else 0:]
        np.testing.assert_allclose(sorted(segment[:, 1]), band(found), rtol=1e-12)
    assert not [t for t in fig.findobj(Text) if "diverged/failed" in t.get_text()]
    readable(fig)


@pytest.mark.parametrize("field", ["kernel", "input"])
def test_a_sweep_of_arrays_names_their_paths_readably(field: str) -> None:
    """`klab.sweep(kernel=["d2l", [[1, 1]], array])` keeps the array as npy:$KLAB_HOME/arrays/<sha256>.npy: its
    110 characters as a category's label collapsed the panel's axes (matplotlib warned so on stderr), the title's
    last line over the data, the label cut at the figure's edge; as a legend's entry, the panel squeezed."""
    home = "npy:/home/someone/.klab/arrays/"
    paths = [home + "d4d723856960f44591577c92e3b373d8f667c96469eaea926139801448f2fcff.npy",
             home + "d4d723856960f44591577c92e3b373d8f667c96469eaea926139801448f2fcfe.npy"]  # alike but at the end
    middle = ["[[0.1234, 0.5678, 0.9012], [0.3456, 0.7890, 0.1234], [0.5678, 0.9012, 0.3456]]",
              "[[0.1234, 0.5678, 0.9012], [0.3456, 0.7891, 0.1234], [0.5678, 0.9012, 0.3456]]"]  # alike but in the
    # middle: every label was drawn whole, and the panel collapsed again
    values = ["d2l", *middle, *paths] if field == "kernel" else ["edge:6x8", *paths]
    rows = []
    for value in values:
        for lr in (0.01, 0.03):
            rows.append({"id": len(rows) + 1, "status": SUCCEEDED, "method": "d2l-manual", "input": "edge:6x8",
                         "kernel": "d2l", "lr": lr, "epochs": 10, "batch_size": 2, "seed": 0, "noise": 0.0,
                         field: value, "relative_error": 0.1 * len(rows) + 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
        fig = plot.figure_sweep(rows, [field, "lr"], f"sweep 1: {len(rows)} jobs")
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    tight, box = fig.get_tightbbox(renderer), fig.get_size_inches()
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01 and tight.x1 <= box[0] + 0.01 and tight.y1 <= box[1] + 0.01, tight
    title = fig._suptitle.get_window_extent(renderer)
    for a in fig.axes:  # each panel its height, under the title, its x label inside the figure
        frame, xlabel = a.get_window_extent(renderer), a.xaxis.label.get_window_extent(renderer)
        assert frame.height > 0.25 * fig.bbox.height and frame.y1 < title.y0 and xlabel.y0 >= 0, (frame, title)
    panel, other = [a for a in fig.axes if a.get_ylabel() == "relative error"]
    labels = [t.get_text() for t in panel.get_xticklabels()]
    entries = [t.get_text() for t in other.get_legend().get_texts()]
    for shown in (labels, entries):
        assert len(set(shown)) == len(values) and max(map(len, shown)) <= 36, shown  # apart, and short
        assert [t for t in shown if ".789" in t] == [t for t in shown if t.startswith("[[0.12")], shown  # where
        # the two literals differ
        assert {t for t in shown if t.endswith(("2fcff.npy", "2fcfe.npy"))} == {
            t for t in shown if t.startswith("npy:/home/")}, shown  # each path's ends kept


def test_long_labels_alike_in_several_places_are_cut_apart_around_each_difference() -> None:
    """Four literals differing in two places (a 2x2 grid of values) were all drawn whole: each pair apart at its first
    difference read alike with another pair; a label's window around a difference repeated the tail kept after it
    (`...kernel…nel.npy`)."""
    from service.render.axes import shortened

    base = "[[0.1234567, 0.2345678, 0.3456789, 0.4567890, 0.5678901]]"
    four = [base, base.replace("78, ", "79, "), base.replace("90, ", "91, "),
            base.replace("78, ", "79, ").replace("90, ", "91, ")]
    cut = shortened(four)
    assert len(set(cut)) == 4 and max(map(len, cut)) <= 36, cut
    assert [("45679" in c, "67891" in c) for c in cut] == [(False, False), (True, False), (False, True), (True, True)]
    paths = [f"npy:/tmp/data/experiment_{e}/run_{r}/kernel.npy" for e in "AB" for r in "12"]
    cut = shortened(paths)
    assert len(set(cut)) == 4 and all(c.endswith("/kernel.npy") and c.count("kernel") == 1 for c in cut), cut
    assert shortened(["x" * 28, "x" * 29, "d2l"]) == ["x" * 28, "x" * 13 + "…" + "x" * 14, "d2l"]
    one_hot = sorted("[[" + ",".join("0.5" if j == i else "0.25" for j in range(12)) + "]]" for i in range(12))
    cut = shortened(one_hot)  # each apart in its own place: four came back whole (62 characters), windows kept
    # only around the first 8 of every place the group differed in
    assert len(set(cut)) == 12 and max(map(len, cut)) <= 40, cut


def test_long_labels_of_different_lengths_keep_only_where_they_differ() -> None:
    """A stored literal drops a weight's trailing zero (0.7890 as 0.789): read character by character from the start,
    every character after that weight differed, and both labels were kept whole to their ends (48 characters), the
    sweep's panel squeezed to a fifth of its figure."""
    from service.render.axes import shortened

    a = "[[0.1234, 0.5678, 0.9012], [0.3456, 0.7891, 0.1234], [0.5678, 0.9012, 0.3456]]"
    cut = shortened([a, a.replace("0.7891", "0.789")])
    assert len(set(cut)) == 2 and max(map(len, cut)) <= 30, cut
    assert "7891" in cut[0] and "789," in cut[1], cut
    cut = shortened([a, a.replace("0.7891", "0.789"), a.replace("0.9012]", "0.90123]")])
    assert len(set(cut)) == 3 and max(map(len, cut)) <= 40, cut  # whole, each was 80 characters
    assert "7891" in cut[0] and "789," in cut[1] and "90123" in cut[2], cut


def test_a_one_panel_sweeps_title_stays_in_the_figure() -> None:
    """One panel is 6.5 inches wide: the line of what stayed fixed (a minibatch method names its batch size, a noisy
    sweep its noise) and a long name ran past both edges, `ixed: method d2l-sgd, ... kernel d2`."""
    rows = sweep_rows({(lr, "momentum"): [0.2] for lr in (0.01, 0.02, 0.03)})
    for row in rows:
        row.update(noise=0.1, batch_size=3)
    fig = plot.figure_sweep(rows, ["lr"], f"sweep 2 ({'a long name ' * 12}): 3 jobs")
    title = fig._suptitle.get_text().replace("\n", " ")  # wrapped: every word kept
    assert "fixed: method momentum, epochs 10, batch size 3, seed 0, input edge:6x8, kernel d2l, noise 0.1" in title
    readable(fig)
    for name in ("MOMENTUM WARMUP SWEEP " * 6, "W" * 80):  # capitals are wider than a guess of the characters' width
        readable(plot.figure_sweep(rows, ["lr"], f"sweep 2 ({name}): 3 jobs"))


def test_a_swept_value_near_the_float64_most_keeps_every_point_drawn() -> None:
    """lr 0.01 beside 1e300: the log axis' margins overflowed (`overflow encountered in exp`), and the panel drew
    nothing, not even the job that succeeded at 0.01."""

    for least in (0.01, 1e-300):  # and a least value near the float64 least, whose margin underflowed to 0
        rows = sweep_rows({(least, "d2l-manual"): [0.63], (1e300, "d2l-manual"): [None]}, {1: DIVERGED})
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # matplotlib's overflow and log-limit warnings were the symptom
            fig = plot.figure_sweep(rows, ["lr"], "sweep 1: 2 jobs")
            readable(fig)
        (panel,) = [a for a in fig.axes if a.get_ylabel() == "relative error"]
        lo, hi = panel.get_xlim()
        assert 0 < lo <= least and 1e300 <= hi < float("inf")
        assert [t.get_text() for t in panel.get_xticklabels()] == [f"{least:g}", "1e+300"]
        drawn = [xy for c in panel.collections for xy in c.get_offsets().tolist()]
        assert [least, 0.63] in drawn, drawn


def test_a_sweep_of_noise_from_0_over_decades_keeps_0_apart_from_the_least_noise() -> None:
    """Noise 0, 0.01, 0.1, 1 on a linear axis put 0 and 0.01 a hundredth of it apart: their labels read `00.01`.
    A symmetric log axis, linear up to 0.01, spaces them."""
    rows = sweep_rows({(noise, "d2l-manual"): [0.001 + noise] * 3 for noise in (0.0, 0.01, 0.1, 1.0)})
    for row in rows:
        row["noise"], row["lr"] = row["lr"], 0.03
    fig = plot.figure_sweep(rows, ["noise", "seed"], "sweep 2: 12 jobs")
    (panel,) = [a for a in fig.axes if a.get_ylabel() == "relative error"]
    assert panel.get_xscale() == "symlog"
    assert [t.get_text() for t in panel.get_xticklabels()] == ["0", "0.01", "0.1", "1"]
    readable(fig)
    rows[0].update(status=FAILED, relative_error=None)  # one at 0, one at 0.01: far apart as drawn, so each is counted
    rows[3].update(status=FAILED, relative_error=None)
    fig = plot.figure_sweep(rows, ["noise", "seed"], "sweep 2: 12 jobs")
    (strip,) = [a for a in fig.axes if a.get_title().startswith("jobs that did not succeed")]
    assert sorted(t.get_text() for t in strip.texts) == ["1", "1"]  # measured as if linear: too close to write


def test_four_varied_parameters_take_two_rows_of_at_most_three_panels() -> None:
    rows = [{**row, "input": i, "kernel": k, "relative_error": row["relative_error"] * (1 + n)}
            for n, (i, k) in enumerate(itertools.product(("edge:6x8", "checker:6x8"), ("d2l", "sobel-x")))
            for row in sweep_rows({(lr, m): [0.1, 0.2] for lr in (0.01, 0.1) for m in ("adam", "d2l-manual")})]
    rows[0]["status"], rows[0]["relative_error"] = DIVERGED, None
    fig = plot.figure_sweep(rows, reads.varying(rows), "")
    panels = [a for a in fig.axes if a.get_ylabel() == "relative error"]
    assert [a.get_xlabel().split()[0] for a in panels] == ["lr", "method", "kernel", "input"]
    assert (fig.get_size_inches() == (3 * plot.SWEEP_PANEL[0], 2 * (plot.SWEEP_PANEL[1] + 0.7))).all()
    corners = [(round(a.get_position().x0, 2), round(a.get_position().y0, 2)) for a in panels]
    assert corners[3][0] == corners[0][0] and corners[3][1] < corners[0][1] == corners[2][1]  # the 4th starts row 2
    strips = [a for a in fig.axes if a.get_title().startswith("jobs that did not succeed")]
    assert [s.get_position().y0 > p.get_position().y1 for s, p in zip(strips, panels)] == [True] * 4  # each on its own
    readable(fig)


def test_sweep_over_an_integer_parameter_has_integer_ticks() -> None:
    few = [{"id": i, "status": SUCCEEDED, "epochs": epochs, "seed": seed, "lr": 0.03, "relative_error": 0.3 / epochs}
           for i, (epochs, seed) in enumerate((e, s) for e in (10, 20, 40) for s in range(3))]
    fig = plot.figure_sweep(few, reads.varying(few), "")
    (a,) = fig.axes
    assert a.get_xlabel() == "epochs (spread over seed)" and a.get_xscale() == "linear"
    assert [t.get_text() for t in a.get_xticklabels()] == ["10", "20", "40"]
    assert "fixed: lr 0.03" in fig._suptitle.get_text()
    readable(fig)
    many = [{**few[0], "id": e, "epochs": e, "relative_error": 1.0 / e} for e in range(1, 31)]
    fig = plot.figure_sweep(many, ["epochs"], "")
    assert integer_ticks(fig.axes[0]) and fig.axes[0].get_xscale() == "log"
    assert fig.axes[0].get_xlabel() == "epochs (one job at each point)"
    readable(fig)


@pytest.mark.parametrize("count", [8, 12])
def test_a_sweeps_many_values_are_labelled_readably(count: int) -> None:
    """12 log-spaced lrs were labelled at 6 digits (0.00136233), side by side: one unreadable line of text."""
    lrs = np.geomspace(0.001, 0.03, count).tolist()
    rows = sweep_rows({(lr, "d2l-manual"): [0.5 / (1 + i), 0.4 / (1 + i)] for i, lr in enumerate(lrs)})
    fig = plot.figure_sweep(rows, reads.varying(rows), "")
    (a,) = fig.axes
    texts = [t.get_text() for t in a.get_xticklabels()]
    assert texts[:3] == ["0.001", f"{lrs[1]:.3g}", f"{lrs[2]:.3g}"] and len(set(texts)) == count
    readable(fig)
    close = plot.figure_sweep(sweep_rows({(lr, "adam"): [0.1] for lr in (0.01, 0.01001, 0.03)}), ["lr"], "")
    assert [t.get_text() for t in close.axes[0].get_xticklabels()] == ["0.01", "0.01001", "0.03"]  # told apart
    whole = [{**rows[0], "id": e, "epochs": e, "relative_error": 1.0 / e} for e in (1234, 2345, 4321)]
    fig = plot.figure_sweep(whole, ["epochs"], "")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1234", "2345", "4321"]  # not 1.23e+03


def test_a_narrow_error_range_keeps_every_label_inside() -> None:
    """A y range under a decade once pushed the first panel's label out of the figure."""
    rows = sweep_rows({(lr, m): [0.21, 0.25, 0.3] for lr in (0.01, 0.03) for m in ("adam", "momentum")})
    fig = plot.figure_sweep(rows, reads.varying(rows), "sweep 1: 12 jobs")
    first = fig.axes[0]
    assert first.get_yscale() == "log" and first.get_ylabel() == "relative error"
    fig.canvas.draw()
    low, high = first.get_ylim()
    shown = [t.get_text() for t in [*first.get_yticklabels(), *first.get_yticklabels(minor=True)]
             if low <= t.get_position()[1] <= high and t.get_text()]
    assert shown and all(float(t) for t in shown)  # plain numbers, not 2 x 10^-1
    readable(fig)


def test_an_exactly_learned_kernel_keeps_the_log_axis() -> None:
    """A relative error of exactly 0 (the true kernel learned to the last bit, as d2l-manual does on checker:6x8)
    made the whole sweep's axis linear, every error under 1 squashed onto the axis by those near 1,000. Such an
    error, 0 as reports print it, is drawn at the weights' float32 rounding, and the title says so."""
    rows = sweep_rows({(lr, m): [0.0, 1e-9, 1e-4] if m == "d2l-manual" and lr == 0.01 else [3e-3, 0.5, 2e3]
                       for lr in (0.01, 0.1) for m in ("adam", "d2l-manual")})
    fig = plot.figure_sweep(rows, reads.varying(rows), "sweep 5: 12 jobs")
    assert "relative errors under the weights' float32 rounding (1.19e-07) drawn at it" in fig._suptitle.get_text()
    lr = fig.axes[0]
    assert lr.get_yscale() == "log"
    (manual,) = [line for line in lr.get_lines() if line.get_label() == "d2l-manual"]
    assert np.allclose(manual.get_ydata()[0], np.exp(np.log([2.0 ** -23, 2.0 ** -23, 1e-4]).mean()))
    readable(fig)
    rows = sweep_rows({(0.01, "adam"): [1e-3, 0.5]})  # none under the rounding: nothing said
    assert "float32" not in plot.figure_sweep(rows, ["seed"], "")._suptitle.get_text()
    rows = sweep_rows({(0.01, "d2l-manual"): [0.0] * 5})  # every seed exact: its legend says 0, as reports do
    fig = plot.figure_sweep(rows, ["seed"], "")
    hist = [a for a in fig.axes if a.get_xlabel() == "relative error"][0]
    assert [t.get_text() for t in hist.get_legend().get_texts()] == ["geometric mean 0", "10th-90th percentile 0 to 0"]


def test_a_loss_of_0_at_every_epoch_says_so_and_a_job_without_a_true_kernel_says_why_it_has_no_error() -> None:
    exact = result_of({"method": "lstsq"}, relative=0.0, epochs=1)
    exact["epochs"][0]["loss"] = 0.0  # least squares fits labels made by a kernel exactly
    loss = by_title(plot.figure_job(exact), "loss")
    assert loss.get_xlabel() == "epoch\nexactly 0 at 1 epoch"  # was a bare linear axis from -0.04 to 0.04
    free = result_of({}, epochs=20, true_kernel=None)
    for e in free["epochs"]:
        e["kernel_error"] = None  # labels given, no true kernel: nothing to measure against
    fig = plot.figure_job(free)
    error, loss = by_title(fig, "kernel error"), by_title(fig, "loss")
    assert [t.get_text() for t in error.texts] == ["no true kernel"]  # was "no epochs", of a job of 20
    assert list(error.get_yticks()) == []
    # the epochs of the loss beside it (their axis was 1 to 20 without margins, its ticks every 3 where the loss's
    # were every 4; a job of one epoch had 1 to 2 beside the loss's one tick)
    assert error.get_xlim() == loss.get_xlim() and loss.get_xlim()[0] < 1 and loss.get_xlim()[1] > 20
    assert list(error.get_xticks()) == list(loss.get_xticks())
    free["epochs"] = free["epochs"][:1]
    fig = plot.figure_job(free)
    assert by_title(fig, "kernel error").get_xlim() == by_title(fig, "loss").get_xlim()
    for e in free["epochs"]:
        e["loss"] = float("nan")  # no value on either panel: the epochs the job trained
    assert by_title(plot.figure_job(free), "kernel error").get_xlim() == (0.5, 1.5)  # its one epoch in the middle
    overlay = plot.figure_jobs([free, result_of({}, epochs=20, true_kernel=None)])
    assert by_title(overlay, "kernel error").get_xlim() == by_title(overlay, "loss").get_xlim()


def test_a_seed_only_sweep_shows_the_distribution_of_its_errors() -> None:
    rng = np.random.default_rng(2)
    rows = [{"id": i, "status": SUCCEEDED, "lr": 0.03, "seed": i, "relative_error": float(e)}
            for i, e in enumerate(np.exp(rng.normal(-4, 1, 500)))]
    rows[0].update(status=CANCELLED, relative_error=None)
    rows[1].update(status=DIVERGED, relative_error=None)
    fig = plot.figure_sweep(rows, reads.varying(rows), "sweep 2: 500 jobs")
    hist = [a for a in fig.axes if a.get_xlabel() == "relative error"][0]
    (bars,) = [p for p in hist.patches if isinstance(p, StepPatch)]
    assert bars.get_data().values.sum() == 498 and hist.get_xscale() == "log"
    assert hist.get_ylabel() == "jobs (498 of 500 have a relative error)"
    legend = [t.get_text() for t in hist.get_legend().get_texts()]
    assert legend[0] == f"geometric mean {np.exp(np.log([r['relative_error'] for r in rows[2:]]).mean()):.3g}"
    found = [r["relative_error"] for r in rows[2:]]
    assert legend[1] == "10th-90th percentile {:.3g} to {:.3g}".format(*np.percentile(found, (10, 90))), legend
    (mean,) = hist.get_lines()  # drawn where the legend says: the mean's line, the band's span
    assert mean.get_xdata()[0] == np.exp(np.log(found).mean())
    (band,) = [p for p in hist.patches if p.get_label().startswith("10th")]
    np.testing.assert_allclose([band.get_x(), band.get_x() + band.get_width()], np.percentile(found, (10, 90)))
    status = by_title(fig, "jobs by status")
    assert [t.get_text() for t in status.get_yticklabels()] == [SUCCEEDED, DIVERGED, CANCELLED]
    assert sorted((t.get_text(), t.xy[1]) for t in status.texts) == [("1", 1), ("1", 2), ("498", 0)]  # beside its bar
    assert [(p.get_y() + p.get_height() / 2, p.get_width()) for p in status.patches] == [(0, 498), (1, 1), (2, 1)]
    assert status.yaxis_inverted()  # read top down: succeeded first
    readable(fig)


def test_a_seed_only_sweep_of_exact_kernels_says_0_for_its_mean_and_band_alike() -> None:
    """Ten lstsq seeds, each error 0: the legend said `geometric mean 1.19e-07` beside `percentile 0-0`."""
    rows = [{"id": i, "status": SUCCEEDED, "method": "lstsq", "seed": i, "relative_error": 0.0} for i in range(10)]
    fig = plot.figure_sweep(rows, reads.varying(rows), "sweep 3: 10 jobs")
    hist = [a for a in fig.axes if a.get_xlabel() == "relative error"][0]
    assert [t.get_text() for t in hist.get_legend().get_texts()] == ["geometric mean 0", "10th-90th percentile 0 to 0"]


def test_200000_seeds_are_aggregated_not_drawn_one_by_one() -> None:
    rng = np.random.default_rng(4)
    errors = np.exp(rng.normal(-3, 0.5, 200_000))
    rows = [{"id": i, "status": SUCCEEDED, "lr": 0.03, "method": "d2l-sgd", "seed": i, "relative_error": float(e)}
            for i, e in enumerate(errors)]
    fig = plot.figure_sweep(rows, ["seed"], "sweep 3: 200000 jobs")
    assert not [a for a in fig.axes if a.get_xlabel().startswith("seed")]
    hist = [a for a in fig.axes if a.get_xlabel() == "relative error"][0]
    assert len(hist.patches[0].get_data().values) <= 60  # bins, not jobs
    readable(fig)
    lrs = np.geomspace(1e-3, 1, 40)
    for i, r in enumerate(rows):
        r.update(lr=float(lrs[i % 40]), method=("adam", "d2l-sgd")[i // 40 % 2])
    fig = plot.figure_sweep(rows, reads.varying(rows), "sweep 3: 200000 jobs")
    biggest = max(len(line.get_xdata()) for a in fig.axes for line in a.get_lines())
    assert biggest == 40 and not [c for a in fig.axes for c in a.collections if len(c.get_offsets()) > 40]
    readable(fig)


def test_groups_agree_with_numpy_per_group() -> None:
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 7, 1000)
    values = np.exp(rng.normal(0, 1, 1000))
    for log in (False, True):
        got = plot_axes.groups(keys, values, log)
        for k in range(7):
            mine = values[keys == k]
            assert got["count"][k] == mine.size
            mean = np.exp(np.log(mine).mean()) if log else mine.mean()
            low, high = np.percentile(np.log(mine) if log else mine, plot_axes.BAND)
            assert got["mean"][k] == pytest.approx(mean)
            assert got["low"][k] == pytest.approx(np.exp(low) if log else low)
            assert got["high"][k] == pytest.approx(np.exp(high) if log else high)


# --- the command -----------------------------------------------------------------------------------------

@SQLITE_ONLY
def test_plot_job_and_jobs_write_pngs(klab_db: str, add_job, klab_cli, tmp_path: Path) -> None:
    with writing() as conn:
        first, second = add_job(conn, relative=0.3), add_job(conn, relative=0.1, lr=0.1)
    out = tmp_path / "job.png"
    assert klab_cli("plot", str(first), "-o", str(out)) == (0, f"wrote {out}\n", "")
    size, colors = opened(out)
    assert size == (plot.JOB_SIZE[0] * plot.DPI, plot.JOB_SIZE[1] * plot.DPI) and colors > 100
    both = tmp_path / "both.png"
    assert klab_cli("plot", str(first), str(second), "-o", str(both)) == (0, f"wrote {both}\n", "")
    size, colors = opened(both)
    assert size == (plot.JOBS_SIZE[0] * plot.DPI, plot.JOBS_SIZE[1] * plot.DPI) and colors > 50


def test_plot_sweep_labels_jobs_by_status(klab_db: str, add_job, klab_cli, tmp_path: Path) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.01, 0.1, 1.0], "method": ["d2l-manual", "adam"]}, 8)
        for lr, rel in ((0.01, 0.5), (0.1, 0.1), (1.0, 0.02)):
            add_job(conn, relative=rel, sweep_id=sweep, lr=lr)
            add_job(conn, relative=rel * 2, sweep_id=sweep, lr=lr, method="adam")
        add_job(conn, relative=None, status=FAILED, sweep_id=sweep, lr=3.0, method="adam")
        waiting = add_job(conn, status=JobStatus.QUEUED.value, sweep_id=sweep, lr=3.0)
        writes.cancel(conn, Selection((waiting,)))
        rows = reads.compare(Reader.of(conn), Selection(sweep=sweep))
        points = reads.sweep_points(Reader.of(conn), Selection(sweep=sweep))
    assert sorted(points, key=lambda r: r["id"]) == sorted(({k: r[k] for k in reads.SWEEP_POINT} for r in rows),
                                                           key=lambda r: r["id"])  # what the command plots
    fig = plot.figure_sweep(points, reads.varying(points), "")
    strip = [a for a in fig.axes if a.get_title().startswith("jobs that did not succeed")][0]
    assert [t.get_text() for t in strip.get_yticklabels()] == [FAILED, CANCELLED]
    assert strip.yaxis_inverted()  # read top down, as its labels
    out = tmp_path / "sweep.png"
    code, _, err = klab_cli("plot", "--sweep", str(sweep), "-o", str(out))
    assert code == 0, err
    size, colors = opened(out)
    assert size[0] == 2 * plot.SWEEP_PANEL[0] * plot.DPI and colors > 50


def test_a_sweeps_points_come_in_the_order_of_their_ids_on_either_database(klab_db: str, add_job) -> None:
    """A plot of a sweep draws each job's dot in the order its points come: PostgreSQL returned a job updated since
    (cancelled here) after the others, SQLite by id, and one sweep's PNGs differed by a few faint pixels."""
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.01, 0.1]}, 4)
        waiting = add_job(conn, status=JobStatus.QUEUED.value, sweep_id=sweep, lr=0.01)
        others = [add_job(conn, relative=0.1 * (i + 1), sweep_id=sweep, lr=lr) for i, lr in enumerate((0.1, 0.01, 0.1))]
        writes.cancel(conn, Selection((waiting,)))
        points = reads.sweep_points(Reader.of(conn), Selection(sweep=sweep))
    assert [(p["id"], p["status"]) for p in points] == [(waiting, CANCELLED), *((i, "succeeded") for i in others)]


@SQLITE_ONLY
def test_characters_no_font_draws_are_said_in_one_line_not_matplotlibs_warnings(klab_db: str, add_job, klab_cli,
                                                                                 tmp_path: Path) -> None:
    """A sweep named in characters no font here has (Chinese on this machine; a private-use character on any): two
    lines of matplotlib's warning, with a line of klab's source, for each character at each drawing of the title."""
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.01, 0.1]}, 2, name="run \ue000\ue001 \ue000")
        for lr in (0.01, 0.1):
            add_job(conn, relative=0.1, sweep_id=sweep, lr=lr)
    out = tmp_path / "sweep.png"
    assert klab_cli("plot", "--sweep", str(sweep), "-o", str(out)) == (
        0, f"wrote {out}\n", "klab: warning: no font here draws \ue000 \ue001: drawn as boxes\n")
    assert opened(out)[1] > 50


def test_a_sweep_stopped_before_its_other_values_were_stored_does_not_call_them_fixed(
        klab_db: str, add_job, klab_cli, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C in `klab sweep --local --method d2l-manual,adam`: the first chunk (d2l-manual's) is stored; the plot's
    title said `fixed: method d2l-manual`."""
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"swept": {"method": ["d2l-manual", "adam"], "seed": [0, 1, 2]},
                                           "fixed": {"lr": 0.03}}, 6)
        for seed in range(3):
            add_job(conn, relative=0.1 * (seed + 1), sweep_id=sweep, seed=seed)
    drawn = []
    monkeypatch.setattr(plot, "save", lambda fig, path: drawn.append(fig))  # the figure, not its pixels
    assert klab_cli("plot", "--sweep", str(sweep), "-o", str(tmp_path / "s.png"))[0] == 0
    title = drawn[0]._suptitle.get_text()
    assert "of what it varied, only method d2l-manual is stored" in title
    assert "fixed: lr 0.03" in title and "method" not in title.split("fixed:")[1], title


@SQLITE_ONLY
def test_plot_mistakes_are_one_line_and_write_nothing(klab_db: str, add_job, klab_cli, tmp_path: Path) -> None:
    with writing() as conn:
        job = add_job(conn)
        queued = add_job(conn, status=JobStatus.QUEUED.value)
        cancelled = add_job(conn, status=JobStatus.QUEUED.value)
        writes.cancel(conn, Selection((cancelled,)))
        empty = writes.create_sweep(conn, {}, 0)
    png = tmp_path / "x.png"
    assert klab_cli("plot", "5000", "-o", str(png))[2] == "klab: error: id: no job 5000\n"
    assert klab_cli("plot", str(job), "5000", "-o", str(png))[2] == "klab: error: id: no job 5000\n"
    assert klab_cli("plot", "-o", str(png))[2] == "klab: error: id: give job ids or --sweep\n"
    assert klab_cli("plot", str(job), "--sweep", str(empty), "-o", str(png))[0] == 2
    assert klab_cli("plot", "--sweep", str(empty), "-o", str(png))[2] == \
        f"klab: error: sweep: sweep {empty} has no jobs\n"
    assert klab_cli("plot", str(job), "-o", str(tmp_path / "x.jpg"))[2].startswith("klab: error: output: must be")
    assert klab_cli("plot", str(job))[0] == 2  # -o is required
    assert klab_cli("plot", str(queued), "-o", str(png)) == (
        2, "", f"klab: error: id: job {queued} has no epochs to plot (it is queued)\n")
    assert klab_cli("plot", str(job), str(cancelled), "-o", str(png)) == (
        2, "", f"klab: error: id: job {cancelled} has no epochs to plot (it is cancelled)\n")
    nowhere = tmp_path / "no" / "such" / "dir" / "x.png"
    code, out, err = klab_cli("plot", str(job), "-o", str(nowhere))
    assert (code, out) == (2, "") and err.startswith("klab: error: output: cannot write ") and err.count("\n") == 1
    assert not (tmp_path / "no").exists() and not png.exists()
    (tmp_path / "file.png").write_bytes(b"")  # a file where the folder would be: was "no folder"
    assert klab_cli("plot", str(job), "-o", str(tmp_path / "file.png" / "x.png"))[2] == \
        f"klab: error: output: cannot write {tmp_path}/file.png/x.png: {tmp_path}/file.png is a file, not a folder\n"


@SQLITE_ONLY
def test_plot_imports_neither_torch_nor_sqlalchemy(klab_db: str, add_job, tmp_path: Path) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.01, 0.1]}, 2)
        first, second = add_job(conn, sweep_id=sweep, lr=0.01), add_job(conn, sweep_id=sweep, lr=0.1)
    script = f"""
import json, sys
from service.cli import main
for args in (["plot", "{first}", "-o", "one.png"], ["plot", "{first}", "{second}", "-o", "two.png"],
             ["plot", "--sweep", "{sweep}", "-o", "sweep.png"]):
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
print(json.dumps(sorted(m for m in ("torch", "worker", "sqlalchemy", "alembic", "celery", "pydantic", "matplotlib")
                        if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", script], env=clean_env(tmp_path / "home", klab_db), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == ["matplotlib"]  # it drew, with matplotlib alone
    assert all(opened(tmp_path / name)[1] > 50 for name in ("one.png", "two.png", "sweep.png"))


@pytest.mark.parametrize("input_,kernel", [("random:8x8", "random:7x1"), ("edge:6x8", "random:20x1x1x2"),
                                           ("random:12x6x8", "random:2x12x2x2")])
def test_heatmaps_of_tall_or_many_channel_kernels_keep_their_labels_apart(input_: str, kernel: str) -> None:
    """A tiny difference's colour bar wrote its scale (1e-7) once above the bar, over the panel's title; 20 out
    channels of 1x2 cut their x label at the figure's edge; 12 in channels ran their labels together (`in 9in 10in
    11`)."""
    fig = plot.figure_job(result_of({"input": input_, "kernel": kernel}, relative=1e-7))
    readable(fig)
    renderer = fig.canvas.get_renderer()
    assert not [a.yaxis.get_offset_text().get_text() for a in fig.axes if a.yaxis.get_offset_text().get_text()]
    for start in ("true kernel", "learned kernel", "difference"):
        boxes = [t.get_window_extent(renderer) for t in by_title(fig, start).get_xticklabels() if t.get_text()]
        assert all(right.x0 - left.x1 >= 2 for left, right in zip(boxes, boxes[1:])), start  # 2 px apart at least


def test_a_title_wraps_between_a_sweeps_fixed_values_never_inside_one() -> None:
    """Wrapped at any space, a sweep panel's title read `fixed: method d2l-manual, epochs 10, input edge:6x8, kernel`
    over `d2l`, and `line geometric mean, band` over `10th-90th percentile`."""
    from service.render.axes import new_figure, title

    fig = new_figure(6.5, 4.5)
    text = ("fixed: method d2l-manual, epochs 10, input edge:6x8, kernel d2l\n"
            "line geometric mean, band 10th-90th percentile")
    title(fig, text)
    lines = fig._suptitle.get_text().split("\n")
    assert len(lines) > 2  # wrapped
    for part in ("fixed: method d2l-manual", "epochs 10", "input edge:6x8", "kernel d2l", "line geometric mean",
                 "band 10th-90th percentile"):
        assert any(part in line for line in lines), (part, lines)


def test_a_log_axis_with_one_round_value_in_its_span_labels_every_tick() -> None:
    """A kernel error from 0.44 down to 0.14 was labelled 0.2 alone (1, 2 and 5 times a power of ten, over a span of
    three): neither end could be read."""
    import matplotlib.pyplot as plt

    from service.render.axes import log_labels

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.44, 0.3, 0.14])
    ax.set_yscale("log")
    log_labels(ax.yaxis, np.array([0.44, 0.3, 0.14]))
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    ticks = list(ax.yaxis.get_major_ticks()) + list(ax.yaxis.get_minor_ticks())
    shown = [t.label1.get_text() for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_text()]
    assert len(shown) >= 3, shown
    plt.close(fig)


def test_the_floor_line_names_only_the_parts_there_are() -> None:
    """`[[1,-1],[0,0]]` on edge:6x8, no noise: its floor was labelled `unidentifiable + noise`."""
    result = result_of({"kernel": "[[1,-1],[0,0]]", "epochs": 10})
    result["gap"] = {"optimization": 0.0, "noise": 0.0, "identifiability": 0.707}
    labels = [line.get_label() for line in by_title(plot.figure_job(result), "kernel error").get_lines()]
    assert any(label.startswith("floor: unidentifiable (") for label in labels), labels
    result["gap"]["noise"] = 0.1
    labels = [line.get_label() for line in by_title(plot.figure_job(result), "kernel error").get_lines()]
    assert any(label.startswith("floor: unidentifiable + noise (") for label in labels), labels
    (floor,) = [line for line in by_title(plot.figure_job(result), "kernel error").get_lines()
                if line.get_label().startswith("floor")]  # the two parts are orthogonal: their norms add as squares
    assert floor.get_ydata()[0] == pytest.approx(np.hypot(0.707, 0.1) / np.linalg.norm(result["true_kernel"]))


def test_the_axes_helpers_hold_to_their_limits() -> None:
    """Each limit the axes' helpers name, at it and past it: a log epoch axis reaching 10,000 ticks its decades
    only; 31 to 61 categories keep to 30 labels; a log axis over a decade and a half writes plain numbers (matplotlib
    wrote 3 x 10^1); swept values alike to 6 digits are each labelled as themselves."""
    import matplotlib.pyplot as plt

    from service.render.axes import category_axis, log_labels, value_ticks
    from service.render.axes import integer_ticks as tick_integers  # the module's own integer_ticks reads them

    for last, ticks in ((10_000, [1, 10, 100, 1000, 10000]), (9_999, [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000,
                                                                      5000])):
        fig, ax = plt.subplots()
        ax.set_xscale("log")
        ax.set_xlim(1, last)
        tick_integers(ax.xaxis, True, last)
        assert [t for t in ax.get_xticks() if 1 <= t <= last] == ticks, last
        plt.close(fig)
    for n in (30, 31, 45, 61):
        fig, ax = plt.subplots()
        category_axis(ax, [f"c{i}" for i in range(n)])
        assert len(ax.get_xticks()) <= 30 and ax.get_xticks()[0] == 0, n
        plt.close(fig)
    fig, ax = plt.subplots()
    ax.plot([1, 2], [30, 400])
    ax.set_yscale("log")
    log_labels(ax.yaxis, np.array([30.0, 400.0]))
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    ticks = list(ax.yaxis.get_major_ticks()) + list(ax.yaxis.get_minor_ticks())
    shown = [t.label1.get_text() for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_text()]
    assert {"50", "100", "200"} <= set(shown) and not any("times" in s for s in shown), shown
    plt.close(fig)
    fig, ax = plt.subplots()
    values = [0.1000001, 0.1000002, 0.1000003]
    ax.plot(values, [1, 2, 3])
    value_ticks(ax.xaxis, values)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1000001", "0.1000002", "0.1000003"]
    plt.close(fig)


def test_a_failed_job_with_a_true_kernel_and_no_learned_one_has_no_result() -> None:
    from service.render.axes import unmeasured

    failed = {**result_of({}), "status": FAILED, "learned_kernel": None}
    assert failed["true_kernel"] is not None and unmeasured(failed) == "no result"
    assert unmeasured({**failed, "learned_kernel": [[float("inf"), 1.0]]}) == "weights past float32"
    assert unmeasured({**failed, "true_kernel": None}) == "no true kernel"


def test_kernels_cells_ticks_scale_and_norm_at_their_limits() -> None:
    """Values written in kernels of up to 7 rows and 7 columns, neither more (1x9 and 9x1 too); a tick at each row and
    column up to 16; an all-zero kernel's colour scale -1..1; no relative error against a true kernel of norm 0."""
    import matplotlib.pyplot as plt

    for shape, written in (((1, 9), False), ((9, 1), False), ((1, 7), True), ((7, 7), True)):
        fig, ax = plt.subplots()
        kernels.heatmap(fig, ax, "k", np.full(shape, 0.5).tolist(), "RdBu_r", 1.0)
        assert (len(ax.texts) == shape[0] * shape[1]) if written else not ax.texts, shape
        plt.close(fig)
    for side, each in ((16, True), (17, False)):
        fig, ax = plt.subplots()
        kernels.heatmap(fig, ax, "k", np.zeros((1, side)).tolist(), "RdBu_r", 1.0)
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if -0.5 <= t <= side - 0.5]
        assert (ticks == list(range(side))) == each, ticks
        plt.close(fig)
    assert kernels.kernel_scale([[[0.0, 0.0]]]) == 1.0 and kernels.kernel_scale([None]) == 1.0
    assert kernels.kernel_scale([[[0.0, -3.0]]], least=2.0) == 3.0
    assert kernels.true_norm({"true_kernel": None}) is None and kernels.true_norm({"true_kernel": [[0.0, 0.0]]}) is None
    assert kernels.true_norm({"true_kernel": [[3.0, -4.0]]}) == 5.0


def test_overlays_and_long_runs_at_their_limits() -> None:
    """Ten jobs overlaid take ten distinct colours in order (tab10); a run of 200 epochs keeps a linear epoch axis,
    one of 201 a log one (longer than LOG_EPOCHS); a legend says an error under the weights' rounding is 0, as the
    title and `klab show` do."""
    import matplotlib

    fig = plot.figure_jobs([result_of({"seed": s}, id=s + 1) for s in range(10)])
    jobs = [line for line in by_title(fig, "loss").get_lines() if line.get_label().startswith("job ")]
    assert [to_rgba(line.get_color()) for line in jobs] == [matplotlib.colormaps["tab10"](n) for n in range(10)]
    for n, scale in ((200, "linear"), (201, "log")):
        result = result_of({"epochs": n, "method": "d2l-sgd"}, relative=1e-3, epochs=20)
        result["epochs"] = [{"epoch": e, "loss": 0.99 ** e, "mse": 0.99 ** e, "kernel_error": 0.99 ** e}
                            for e in range(1, n + 1)]
        fig = plot.figure_job(result)
        assert {by_title(fig, t).get_xscale() for t in ("loss", "kernel error")} == {scale}, n
    exact = result_of({"seed": 1}, id=1)
    exact["error"] = {**exact["error"], "relative": 3e-9}
    fig = plot.figure_jobs([exact, result_of({"seed": 2}, id=2)])
    labels = [line.get_label() for line in by_title(fig, "loss").get_lines()]
    assert labels[:2] == ["job 1: seed 1 (succeeded, relative error 0)",
                          "job 2: seed 2 (succeeded, relative error 0.1)"]


def test_a_sweeps_title_names_its_mean_and_a_single_job_no_spread() -> None:
    """The line is a geometric mean where errors are drawn on a log axis, an arithmetic one where none is (no job
    has an error); a sweep of one stored job says nothing of errors over its seeds."""
    both = sweep_rows({(lr, m): [0.1 * lr, 0.2 * lr, 0.3 * lr] for lr in (0.01, 0.1) for m in ("adam", "d2l-manual")})
    assert "line geometric mean, band" in plot.figure_sweep(both, reads.varying(both), "")._suptitle.get_text()
    none = sweep_rows({(lr, m): [None, None] for lr in (0.01, 0.1) for m in ("adam", "d2l-manual")},
                      dict.fromkeys(range(8), FAILED))
    title = plot.figure_sweep(none, reads.varying(none), "")._suptitle.get_text()
    assert "line mean, band" in title and "geometric" not in title
    one = [{"id": 1, "status": SUCCEEDED, "lr": 0.03, "seed": 0, "relative_error": 0.1}]
    assert "over the seeds" not in plot.figure_sweep(one, ["seed"], "sweep 1: 1 job")._suptitle.get_text()
    many = one + [{**one[0], "id": 2, "seed": 1, "relative_error": 0.2}]
    assert "relative error over the seeds" in plot.figure_sweep(many, ["seed"], "sweep 1: 2 jobs")._suptitle.get_text()


def test_a_sweeps_panels_colour_by_ten_values_and_place_zero_and_categories_whole() -> None:
    """A second parameter of ten values (tab10's all) colours the first's panel; noise of 0, 0.1 and 1 (a decade
    over its least positive value) is on a symlog axis, 0 apart from 0.1; categories sit half a step in from the
    edges, their markers whole."""
    rows = [{"id": n, "status": SUCCEEDED, "method": m, "input": "edge:6x8", "kernel": "d2l", "lr": lr, "epochs": 10,
             "batch_size": b, "seed": 0, "noise": 0.0, "relative_error": 0.01 * lr * b}
            for n, (lr, b, m) in enumerate(itertools.product((0.01, 0.1), range(1, 11), ("adam", "d2l-sgd")))]
    fig = plot.figure_sweep(rows, reads.varying(rows), "")
    lr = next(a for a in fig.axes if a.get_xlabel().startswith("lr"))
    assert lr.get_legend().get_title().get_text() == "batch size" and len(lr.get_legend().get_texts()) == 10
    method = next(a for a in fig.axes if a.get_xlabel().startswith("method"))
    assert method.get_xlim() == (-0.5, 1.5)
    noisy = [{**rows[0], "id": n, "noise": noise, "seed": seed, "relative_error": 0.1 + noise}
             for n, (noise, seed) in enumerate(itertools.product((0.0, 0.1, 1.0), (0, 1)))]
    (panel,) = [a for a in plot.figure_sweep(noisy, reads.varying(noisy), "").axes
                if a.get_xlabel().startswith("noise")]
    assert panel.get_xscale() == "symlog" and panel.xaxis.get_transform().linthresh == 0.1
