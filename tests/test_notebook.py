"""Every notebook in the repository runs, cell by cell, in a real Jupyter kernel of this environment, and is kept
in git without outputs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from harness import ROOT
from nbclient import NotebookClient

NOTEBOOKS = sorted(p for p in ROOT.rglob("*.ipynb")
                   if not any(part.startswith(".") or part in ("build", "out") for part in p.relative_to(ROOT).parts))
"""The repository's notebooks (not those under .venv, checkpoints or build outputs)."""

KERNEL = "klab-test-venv"


def test_the_repository_has_its_notebook():
    assert ROOT / "examples" / "learning-a-kernel.ipynb" in NOTEBOOKS


@pytest.fixture
def kernel_of_this_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec that starts this interpreter (the venv's), found before any other kernel of that name."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kernel-lab tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # whatever the notebook saves goes to the test's own home, and a database, if it opened one, to a file there
    monkeypatch.setenv("KLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KLAB_DATABASE_URL", f"sqlite:///{tmp_path / 'home' / 'klab.db'}")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    return KERNEL


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_the_notebook_runs_without_error(path: Path, kernel_of_this_python: str):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=kernel_of_this_python, timeout=300,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # a cell that raises fails the test with its traceback (CellExecutionError)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if path.name == "learning-a-kernel.ipynb":  # results show as HTML, figures as pictures
        shown = [set(o.get("data", {})) for o in outputs]
        assert sum("text/html" in kinds for kinds in shown) >= 4
        assert sum("image/png" in kinds for kinds in shown) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_the_notebook_is_kept_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code
    assert [(n, cell.outputs, cell.execution_count) for n, cell in enumerate(code) if cell.outputs
            or cell.execution_count is not None] == []
    assert [n for n, cell in enumerate(nb.cells) if "execution" in cell.metadata] == []  # a run's timestamps
    assert "widgets" not in nb.metadata  # a run's widget state
