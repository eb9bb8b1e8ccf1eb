"""The one sentence under a result: which part of the gap dominates, and what would close it."""
from __future__ import annotations

import math
from dataclasses import dataclass

from service.jobs.status import JobStatus
from worker.engine.pace import JobPace


@dataclass(frozen=True)
class Facts:
    """What the sentence is made from, for one job."""

    status: JobStatus
    optimization: float | None
    noise: float | None
    identifiability: float | None
    relative: float | None
    rank: int
    params: int
    sums_only: bool
    grew: bool  # the loss ended above where it began
    pace: JobPace | None = None


def explain(f: Facts) -> str:
    too_fast = f.pace.too_fast() if f.pace else None
    if f.status is JobStatus.DIVERGED:
        return "training diverged: " + (too_fast or "the learning rate is too large for this input; lower --lr.")
    if f.status is not JobStatus.SUCCEEDED or f.optimization is None:
        return "no result to explain."
    if f.noise is None or f.identifiability is None:
        return ("no true kernel to compare with; the learned kernel is "
                f"{f.optimization:.3g} from the least-squares kernel the labels determine.")
    parts = {"optimization": f.optimization, "noise": f.noise, "identifiability": f.identifiability}
    total = math.sqrt(sum(v * v for v in parts.values()))
    if total < 1e-3 or (f.relative is not None and f.relative < 1e-3):
        return "the learned kernel matches the true kernel."
    main = max(parts, key=lambda name: parts[name])
    if main == "optimization":
        stuck = too_fast or (f.pace.stalled() if f.pace else None)
        if stuck:
            return "not converging: " + stuck
        if f.grew:
            return ("not converging: the loss grew during training, so the learning rate is too large for "
                    "this input; lower --lr.")
        closing = f.pace.closing() if f.pace else None
        return (f"not converged yet: training stopped {f.optimization:.3g} from the best kernel the data allow; "
                + (closing + "." if closing else "train longer or raise the learning rate."))
    if main == "identifiability":
        what = "only their sums are determined" if f.sums_only else \
            f"only {f.rank} combinations of the {f.params} weights are determined"
        return f"the data cannot tell these weights apart: {what} (rank {f.rank} of {f.params}); a richer input would."
    return (f"label noise: even the exact least-squares kernel is {f.noise:.3g} from the true one; "
            "more data or less noise would close it.")
