"""kernel-lab from Python: train here, submit to the workers, and read results as DataFrames.

    import klab
    r = klab.run(input="edge:6x8", kernel="d2l", method="d2l-manual", lr=0.03, epochs=10)
    r.learned_kernel, r.gap, r.explanation, r.epochs, r.plot()
    klab.jobs(sweep=3)               # a DataFrame, one row per job (the job_summary columns)

A thin layer over service/ (and, to train, worker.engine): the same settings (KLAB_* variables), the same
validation and the same one-line errors as the `klab` command, raised as klab.BadInput. Importing klab loads
neither torch, pandas nor matplotlib: each is imported by the call that needs it.
"""
from __future__ import annotations

from klab.errors import BadInput, NoWorker
from klab.local import run, sweep
from klab.remote import Handle, submit
from klab.result import Result
from klab.tables import epochs, jobs, show, sweeps

__all__ = ["BadInput", "Handle", "NoWorker", "Result", "epochs", "jobs", "run", "show", "submit", "sweep", "sweeps"]
