"""Helpers shared by the tests: the real `klab` console script, and linear algebra done independently."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def klab_path() -> str:
    """The installed console script: the one beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "klab"
    if beside.exists():
        return str(beside)
    found = shutil.which("klab")
    assert found, "the klab console script is not installed (make install)"
    return found


def klab_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without KLAB_* settings, with its own KLAB_HOME and SQLite database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAB_")}
    env.update({"KLAB_HOME": str(home), "KLAB_DATABASE_URL": f"sqlite:///{home / 'klab.db'}", "NO_COLOR": "1"})
    env.update(extra or {})
    return env


class Runs:
    """Real `klab` subprocesses started together (the console script's start-up dominates), read by name."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: dict[str, tuple[subprocess.Popen, Path, Path]] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None, program: str | None = None) -> None:
        """Start `klab ARGS` (or `program ARGS`) with its own KLAB_HOME and database, plus `env`."""
        out, err = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        home = self.workdir / f"{name}.home"
        home.mkdir()
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen([program or klab_path(), *args], stdout=o, stderr=e, env=klab_env(home, env),
                                    cwd=REPO, text=True)
        self.procs[name] = (proc, out, err)

    def result(self, name: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc, out, err = self.procs[name]
        code = proc.wait(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, code, out.read_text(), err.read_text())

    def close(self) -> None:
        for proc, _, _ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def klab_main(*args: str) -> tuple[int, str, str]:
    """The console script's entry point run in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from service.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 1 if code else 0), out.getvalue(), err.getvalue()


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"JSON output holds the non-standard constant {name}")


def strict_json(text: str) -> dict[str, Any]:
    """Parse JSON that must not contain NaN or Infinity."""
    return json.loads(text, parse_constant=_reject_constant)


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
