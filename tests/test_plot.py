"""`klab plot`: PNGs of a job and of a sweep, opened and checked with Pillow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import fake_result
from PIL import Image

from service.db import reads, writes
from service.db.connect import Reader
from service.db.engine import writing
from service.jobs.result import to_json
from service.jobs.selection import Selection
from service.jobs.spec import JobSpec
from service.render import plot

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
"""Drawing does not depend on the backend; the sweep's plot still reads both."""


def opened(path: Path) -> tuple[tuple[int, int], int]:
    """A PNG's size and how many distinct colors it holds (a blank or single-color image has few)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        rgb = np.asarray(im.convert("RGB")).astype(np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return (rgb.shape[1], rgb.shape[0]), len(np.unique(packed))


@SQLITE_ONLY
def test_plot_job(klab_db: str, add_job, klab_cli, tmp_path: Path) -> None:
    with writing() as conn:
        job = add_job(conn, relative=0.3)
    out = tmp_path / "job.png"
    assert klab_cli("plot", str(job), "-o", str(out)) == (0, f"wrote {out}\n", "")
    size, colors = opened(out)
    assert size == (plot.JOB_SIZE[0] * plot.DPI, plot.JOB_SIZE[1] * plot.DPI)
    assert colors > 100


def test_plot_sweep_against_what_it_varied(klab_db: str, add_job, klab_cli, tmp_path: Path) -> None:
    with writing() as conn:
        sweep = writes.create_sweep(conn, {"lr": [0.01, 0.1, 1.0], "method": ["d2l-manual", "adam"]}, 6)
        for lr, rel in ((0.01, 0.5), (0.1, 0.1), (1.0, 0.02)):
            add_job(conn, relative=rel, sweep_id=sweep, lr=lr)
            add_job(conn, relative=rel * 2, sweep_id=sweep, lr=lr, method="adam")
        add_job(conn, relative=None, status="failed", sweep_id=sweep, lr=3.0, method="adam")
        rows = reads.compare(Reader.of(conn), Selection(sweep=sweep))
    assert reads.varying(rows) == ["lr", "method"]
    out = tmp_path / "sweep.png"
    code, _, err = klab_cli("plot", "--sweep", str(sweep), "-o", str(out))
    assert code == 0, err
    size, colors = opened(out)
    assert size == (2 * plot.SWEEP_PANEL[0] * plot.DPI, plot.SWEEP_PANEL[1] * plot.DPI)
    assert colors > 50


@pytest.mark.parametrize("shape", [(9, 9), (2, 1, 3, 3)])
def test_plot_job_of_any_kernel_shape(shape: tuple[int, ...], tmp_path: Path) -> None:
    """Small kernels get their values in the cells, large ones do not; 4-D kernels are laid out flat."""
    spec = JobSpec.parse({"input": "random:12x12", "kernel": "random:3x3", "epochs": 200})
    row, epoch_list = fake_result(spec)
    rng = np.random.default_rng(1)
    row["true_kernel"] = rng.standard_normal(shape).tolist()
    row["learned_kernel"] = (np.array(row["true_kernel"]) + 0.1).tolist()
    result = {**to_json(row, epoch_list, stored=False, spec=spec.to_json()), "id": 1, "spec": spec.to_json()}
    size, colors = opened(plot.plot_job(result, tmp_path / "k.png"))
    assert size == (1600, 400) and colors > 100


def test_plot_sweep_that_varies_nothing_plots_against_id(tmp_path: Path) -> None:
    rows = [{"id": i, "lr": 0.1, "relative_error": e} for i, e in ((1, 0.2), (2, 0.3))]
    size, colors = opened(plot.plot_sweep(rows, reads.varying(rows), tmp_path / "s.png"))
    assert size == (550, 400) and colors > 20


@SQLITE_ONLY
def test_plot_errors(klab_db: str, add_job, klab_cli, tmp_path: Path) -> None:
    with writing() as conn:
        job = add_job(conn)
        empty = writes.create_sweep(conn, {}, 0)
    png = str(tmp_path / "x.png")
    assert klab_cli("plot", "5", "-o", png)[2] == "klab: error: id: no job 5\n"
    assert klab_cli("plot", "-o", png)[2] == "klab: error: id: give job ids or --sweep\n"
    assert klab_cli("plot", str(job), "--sweep", str(empty), "-o", png)[0] == 2
    assert klab_cli("plot", "--sweep", str(empty), "-o", png)[2] == f"klab: error: sweep: sweep {empty} has no jobs\n"
    assert klab_cli("plot", str(job), "-o", str(tmp_path / "x.jpg"))[2].startswith("klab: error: output: must be")
    assert klab_cli("plot", str(job))[0] == 2  # -o is required
    assert not Path(png).exists()
