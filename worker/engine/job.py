"""One job as the engine sees it: its arrays, and the knobs that may differ between jobs of one batch."""
from __future__ import annotations

from dataclasses import dataclass

from service import defaults
from service.jobs.problem import Problem


@dataclass(frozen=True)
class Job:
    problem: Problem
    seed: int = defaults.SEED
    lr: float = defaults.LR
    tol: float = defaults.TOL
