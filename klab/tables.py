"""Stored results for Python: one job as a Result, jobs, epochs and sweeps as pandas DataFrames (the reads
of service.db.reads, which `klab show`, `compare` and `export` print)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from klab.errors import public
from klab.result import Result
from service.jobs import result as schema
from service.jobs.selection import Selection
from service.jobs.status import JobStatus

if TYPE_CHECKING:
    import pandas as pd

TIMES = tuple(n for n in schema.SUMMARY_NAMES if schema.BY_NAME[n].kind == "time")
"""Summary columns that hold timestamps: datetimes in UTC in a DataFrame, whatever the database."""


def _selection(ids: int | Iterable[int] | None, sweep: int | None) -> Selection:
    given = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return Selection.of(given, sweep, "ids", optional=True)


def _times(frame: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    import pandas as pd

    for name in names:
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
    return frame


@public
def show(id: int) -> Result:
    """One stored job's result, as `klab show ID --json` gives it."""
    from service.db.reads import reading, result_of

    with reading() as reader:
        return Result(result_of(reader, id))


@public
def jobs(ids: int | Iterable[int] | None = None, sweep: int | None = None, **filters: Any) -> pd.DataFrame:
    """One row per job (every job, these ids, or a sweep's), by id, with the job_summary columns; each filter
    names a column and the value it must equal (status="succeeded", method="adam", identifiable=False)."""
    import pandas as pd

    from service.db.reads import reading, summaries

    selection = _selection(ids, sweep)
    with reading() as reader:
        rows = summaries(reader, selection, filters)
    return _times(pd.DataFrame(rows, columns=list(schema.SUMMARY_NAMES)), TIMES)


@public
def epochs(ids: int | Iterable[int] | None = None, sweep: int | None = None) -> pd.DataFrame:
    """Every epoch of the jobs (every job, these ids, or a sweep's): job_id, epoch, loss, mse, kernel_error."""
    import pandas as pd

    from service.db.reads import export_epochs, reading

    selection = _selection(ids, sweep)
    with reading() as reader:
        names, rows = export_epochs(reader, selection)
        return pd.DataFrame.from_records(rows, columns=names)


@public
def sweeps() -> pd.DataFrame:
    """One row per sweep: id, name, tags, size, created_at, params (what it swept and fixed), then its jobs
    counted by status, a column each."""
    import pandas as pd

    from service.db.reads import reading
    from service.db.sweeps import list_sweeps

    with reading() as reader:
        rows, _ = list_sweeps(reader)
    names = ["id", "name", "tags", "size", "created_at", "params", *(s.value for s in JobStatus)]
    frame = pd.DataFrame([{**{k: r[k] for k in names[:6]}, **{s.value: r["by_status"].get(s.value, 0)
                                                              for s in JobStatus}} for r in rows], columns=names)
    return _times(frame, ["created_at"])
