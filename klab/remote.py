"""`klab.submit`: jobs handed to the workers, as `klab submit` hands them (service.submit), and the `Handle` that
waits for them (or a sweep's: klab.local.sweep) and reads their results."""
from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from klab.errors import NoWorker, public
from klab.result import Result
from klab.values import NOT_IDS, arrays, checked_batch_jobs, checked_flag, is_time, item, job_values, spelled, whole
from service import defaults
from service.errors import BadInput, shown
from service.jobs.selection import Selection, distinct

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Handle:
    """Submitted jobs (`ids`), or a sweep's (`sweep`): wait for them, then read them."""

    ids: tuple[int, ...]
    sweep: int | None = None

    def __repr__(self) -> str:
        if self.sweep is not None:  # its ids, where it knows them (Handle(sweep=3) made by hand knows none)
            return f"Handle(sweep={self.sweep}, jobs={len(self.ids)})" if self.ids else f"Handle(sweep={self.sweep})"
        return f"Handle(ids={list(self.ids) if len(self.ids) <= 10 else f'[{len(self.ids)} jobs]'})"

    def __post_init__(self) -> None:  # its mistakes raised as klab.BadInput by __init__, made public below
        ids = self.ids
        ids = item(ids)  # a 0-d array: one id, as klab.jobs reads it (iterating it: TypeError)
        if whole(ids):  # one id, as klab.jobs(12) reads it (Handle(12) was a TypeError)
            ids = (ids,)
        if isinstance(ids, (str, *NOT_IDS)) or not isinstance(ids, Iterable):  # "12" was jobs 1 and 2
            raise BadInput("ids", f"a Handle holds a tuple of job ids, got {shown(ids)}")
        ids = tuple(ids)
        if not all(whole(i) for i in ids):  # 1.5 and True were job 1
            raise BadInput("ids", f"an id is a whole number, got {shown(next(i for i in ids if not whole(i)))}")
        if self.sweep is not None and not whole(self.sweep):
            raise BadInput("sweep", f"a sweep's id is a whole number, got {shown(self.sweep)}")
        object.__setattr__(self, "ids", distinct(int(i) for i in ids))  # hashable, numpy's ints as Python's, once
        object.__setattr__(self, "sweep", None if self.sweep is None else int(self.sweep))
        if not self.ids and self.sweep is None:  # a Selection of neither is every job in the database
            raise BadInput("ids", "a Handle holds the ids of jobs, or a sweep")

    @property
    def selection(self) -> Selection:
        return Selection(sweep=self.sweep) if self.sweep is not None else Selection(self.ids)

    @public
    def status(self) -> dict[str, Any]:
        """Counts by status and epochs done, as `klab status --json` gives them."""
        from service.cli.progress import counts

        return counts(self.selection)

    @public
    def wait(self, timeout: float | None = None, progress: bool = True) -> Handle:
        """Until every job is finished, with a progress bar (TimeoutError after `timeout` seconds)."""
        from klab.progress import follow

        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                    or is_time(timeout)  # numpy's timedelta64, an Integral, takes no float()
                                    or not timeout >= 0):  # NaN compares false with everything: it never ended
            raise BadInput("timeout", f"seconds, a number from 0 or None, got {shown(timeout)}")  # numpy's too
        follow(self.selection, _seconds(timeout), checked_flag("progress", progress))
        return self

    @public
    def results(self, timeout: float | None = None) -> list[Result]:
        """Every job's result, by id, once all are finished."""
        from service.db.reads import reading, results

        self.wait(timeout, progress=False)
        with reading() as reader:
            return [Result(r) for r in results(reader, self.selection)]

    @public
    def result(self, timeout: float | None = None) -> Result:
        """The result of a handle's one job, once it is finished."""
        jobs = len(self.ids) if self.sweep is None else self.status()["jobs"]  # a sweep's counted, as it is read:
        # Handle([11], sweep=1) read sweep 1, and gave its first job's result for job 11's
        if jobs != 1:  # before waiting for them all
            raise BadInput("result", f"{jobs} jobs here; read them with .results() or .jobs()")
        return self.results(timeout)[0]

    @public
    def jobs(self) -> pd.DataFrame:
        """One row per job, as klab.jobs gives them (finished or not)."""
        from klab.tables import jobs

        return jobs(sweep=self.sweep) if self.sweep is not None else jobs(ids=self.ids)

    @public
    def epochs(self) -> pd.DataFrame:
        """Every epoch the jobs have stored, as klab.epochs gives them."""
        from klab.tables import epochs

        return epochs(sweep=self.sweep) if self.sweep is not None else epochs(ids=self.ids)

    @public
    def cancel(self) -> tuple[int, int]:
        """Cancel the jobs, as `klab cancel`: (jobs ended before they started, running jobs asked to stop)."""
        from service.db.connect import Reader
        from service.db.engine import retried
        from service.db.reads import where
        from service.db.writes import cancel

        def ask(conn: Any) -> tuple[int, int]:
            where(Reader.of(conn), self.selection)  # no such job or sweep: klab.BadInput, as wait() and status() say
            return cancel(conn, self.selection)

        return retried(ask, make=False)


Handle.__init__.__name__ = "Handle"  # a wrong or missing keyword is klab.BadInput, named as the call is written (it was
Handle.__init__ = public(Handle.__init__)  # TypeError: Handle.__init__() got an unexpected keyword argument 'swep')


@public
def submit(jobs: Sequence[Mapping[str, Any]] | None = None, *, queue: str | None = None,
           batch_jobs: int = defaults.BATCH_JOBS, **values: Any) -> Handle:
    """Submit one job (its values as keywords, as `klab run` takes them) or many (`jobs`: one mapping each,
    over the keywords) to the workers, as `klab submit` does; returns at once with their Handle."""
    from service.jobs.spec import JobSpec
    from service.submit import plan_specs
    from service.submit import submit as store_and_send

    docs = [{}] if jobs is None else job_values(jobs)
    batch_jobs = checked_batch_jobs(batch_jobs)
    values = spelled(values)  # batch-size=2 in the call and batch_size=3 in a job: the job's, as with batch_size=2
    with arrays() as files:
        specs = []
        for n, doc in enumerate(docs, 1):
            try:
                specs.append(JobSpec.parse(files.job({**values, **spelled(doc)})))  # the job's over the call's
            except BadInput as exc:
                raise BadInput(exc.field, f"{exc.message} (job {n})" if len(docs) > 1 else exc.message) from None
        plan = plan_specs(specs, queue)
        _, ids = store_and_send(plan, batch_jobs)
    warn_unserved(plan.queues)
    return Handle(tuple(ids))


def _seconds(timeout: float | None) -> float | None:
    """A timeout as follow() takes it: a whole number past a float's range (10**400) is no limit, as it was."""
    try:
        return None if timeout is None else float(timeout)
    except OverflowError:
        return None


def warn_unserved(queues: set[str]) -> None:
    """klab.NoWorker for each queue the jobs went to that no live worker of this database consumes: the call that
    sent them (submit or sweep, through `public`) is where the warning points."""
    from service.submit import unserved

    for line in unserved(queues):
        warnings.warn(line, NoWorker, stacklevel=4)
