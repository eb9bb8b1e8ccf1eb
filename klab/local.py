"""`klab.run`: one job trained in this process, as `klab run` trains it (service/cli/run.py), stored or not; and
`klab.sweep`, handed to the workers or trained here as `klab sweep [--local]` does (service/cli/sweep.py).

The one module of klab that reaches the engine, and only when it trains: torch is imported by the call.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from klab.errors import public
from klab.remote import Handle, warn_unserved
from klab.result import Result
from klab.values import arrays, checked_batch_jobs, checked_flag
from service import defaults
from service.errors import BadInput


@public
def run(*, input: Any = None, kernel: Any = None, method: str | None = None, lr: float | None = None,
        epochs: int | None = None, batch_size: int | None = None, seed: int | None = None,
        noise: float | None = None, bias: float | None = None, labels: Any = None, tol: float | None = None,
        device: str | None = None, store: bool = True) -> Result:
    """Train one job here and now, store it (unless store=False) and return its result.

    Every value as `klab run` takes it; input, kernel and labels also as numpy arrays or torch tensors. A value
    left None is the command's default, but labels given without a kernel mean no true kernel.
    """
    store = checked_flag("store", store)
    values = {"input": input, "kernel": kernel, "method": method, "lr": lr, "epochs": epochs,
              "batch_size": batch_size, "seed": seed, "noise": noise, "bias": bias, "labels": labels, "tol": tol,
              "device": device}
    from service.jobs import result
    from service.jobs.problem import build_problem
    from service.jobs.spec import JobSpec
    from worker import device_first

    with arrays() as files:
        spec = JobSpec.parse(files.job(values))
        problem = build_problem(spec)  # every mistake surfaces here, before torch is imported
        device_first(spec.device)
        if store:
            from service.db.engine import ready_engine

            ready_engine()  # an unreachable or outdated database is reported before torch is imported
        from worker.engine import run_spec

        row, epoch_list = run_spec(spec, problem)
        if not store:
            return Result({**result.to_json(row, epoch_list, stored=False, spec=spec.to_json()),
                           "spec": spec.to_json()})
        from service.db.connect import Reader
        from service.db.engine import writing
        from service.db.reads import result_of
        from service.db.writes import store_run

        with writing() as conn:
            job_id = store_run(conn, spec, row, epoch_list)
            return Result(result_of(Reader.of(conn), job_id))


@public
def sweep(*, name: str | None = None, tags: Sequence[str] | str = (), local: bool = False, queue: str | None = None,
          batch_jobs: int = defaults.BATCH_JOBS, **values: Any) -> Handle:
    """The cartesian product of the values, as `klab sweep` makes it: any of input, kernel, method, lr, epochs,
    batch_size, seed, noise takes a list or a range (or the command's text: "0..9", "0.001:0.1:5"). Handed to
    the workers, returning at once; with local=True trained here, batched, and stored before it returns (no
    broker, no worker: `klab sweep --local`)."""
    from service.jobs import sweep as sweeps
    from service.submit import device_of, plan_sweep, submit
    from worker import device_first

    if checked_flag("local", local) and queue is not None:
        raise BadInput("queue", "a local sweep trains here and goes to no queue")
    batch_jobs = checked_batch_jobs(batch_jobs)
    with arrays() as files:
        plan = plan_sweep(sweeps.grid(files.flags(values)), queue, name, tags)
        if not local:
            sweep_id, ids = submit(plan, batch_jobs)
            warn_unserved(plan.queues)
            return Handle(tuple(ids), sweep_id)
        device_first(device_of(plan))
        from service.db.engine import ready_engine

        ready_engine()  # an unreachable or outdated database is reported before torch is imported
        from worker.local import train_plan

        ids = train_plan(plan, batch_jobs)
        return Handle(tuple(ids), plan.sweep_id)
