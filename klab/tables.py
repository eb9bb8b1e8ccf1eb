"""Stored results for Python: one job as a Result, jobs, epochs and sweeps as pandas DataFrames (the reads
of service.db.reads, which `klab show`, `compare` and `export` print)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from klab.errors import public
from klab.result import Result, typed_epochs
from klab.values import NOT_IDS, item, plain, spelled, whole
from service.db.connect import INTEGER_MOST
from service.errors import BadInput, shown
from service.jobs import result as schema
from service.jobs.selection import Selection
from service.jobs.status import JobStatus

if TYPE_CHECKING:
    import pandas as pd

TIMES = tuple(n for n in schema.SUMMARY_NAMES if schema.BY_NAME[n].kind == "time")
"""Summary columns that hold timestamps: datetimes in UTC in a DataFrame, whatever the database."""
NULLABLE = {n: {"int": "Int64", "bigint": "Int64", "bool": "boolean"}[schema.BY_NAME[n].kind]
            for n in schema.SUMMARY_NAMES
            if schema.BY_NAME[n].nullable and schema.BY_NAME[n].kind in ("int", "bigint", "bool")}
"""Summary columns of whole numbers or flags that may be null, and pandas' dtype that holds both (converged_epoch was
float64 where some job converged, object where none had, int64 where all had)."""
DTYPES = {"int": "int64", "bigint": "int64", "float": "float64", "text": "str"}
"""The dtype of the other columns, by kind, as rows that hold values make them (NULLABLE's aside)."""


def _id(value: Any, field: str) -> int:
    """A job's or a sweep's id as a caller gave it: a whole number, numpy's too (a DataFrame's id column), a 0-d array
    as jobs() and Handle take it (klab.show(np.array(1)) was refused)."""
    value = item(value)
    if not whole(value):
        raise BadInput(field, f"an id is a whole number, got {shown(value)}")
    return int(value)


def _selection(ids: int | Iterable[int] | None, sweep: int | None) -> Selection | None:
    """The jobs asked for: every job (neither ids nor a sweep), these ids, or a sweep's; None for an empty
    list of ids, which asks for no job (`klab.jobs(frame.id[frame.lr > 1])` when no job has that lr)."""
    if getattr(ids, "ndim", None) == 0:  # a 0-d array (np.array(12)): one id, which iterating raised TypeError on
        ids = [item(ids)]  # (one holding None was every job)
    if isinstance(ids, NOT_IDS):  # b"\x01\x02" was jobs 1 and 2, {2: "x"} job 2
        raise BadInput("ids", f"ids are a job's id or a list of them, got {shown(ids)}")
    given = None if ids is None else list(ids) if isinstance(ids, Iterable) and not isinstance(ids, str) else [ids]
    if given == [] and sweep is None:
        return None
    return Selection.of([_id(i, "ids") for i in given or ()], None if sweep is None else _id(sweep, "sweep"),
                        "ids", optional=True)


def _times(frame: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    import pandas as pd

    for name in names:
        frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601").astype("datetime64[us, UTC]")  # a
        # column of no time in any row (a queued job's started_at) was datetime64[s], the others [us]
    return frame


@public
def show(id: int) -> Result:
    """One stored job's result, as `klab show ID --json` gives it."""
    from service.db.reads import reading, result_of

    with reading(make=False) as reader:
        return Result(result_of(reader, _id(id, "id")))


@public
def jobs(ids: int | Iterable[int] | None = None, sweep: int | None = None, **filters: Any) -> pd.DataFrame:
    """One row per job (every job, these ids, or a sweep's), by id, with the job_summary columns; each filter
    names a column and the value it must equal (status="succeeded", method="adam", identifiable=False)."""
    import pandas as pd

    from service.db.reads import reading, summaries

    selection = _selection(ids, sweep)
    equal = {k: _one_value(k, v) for k, v in spelled(filters).items()}  # batch-size read as batch_size, as elsewhere
    with reading(make=False) as reader:
        rows = summaries(reader, selection, equal)
    frame = pd.DataFrame(rows, columns=list(schema.SUMMARY_NAMES))
    # each column of its kind's dtype whatever its rows hold: pandas told it from the values, and made a column
    # of no value at all (every row None, or no row) object, where rows with values made it float64 or str
    kinds = {n: schema.BY_NAME[n].kind for n in frame.columns if n not in NULLABLE}
    text = int(pd.__version__.split(".")[0]) >= 3  # pandas 2 keeps text as object, and its str wrote None as 'None'
    frame = frame.astype({n: DTYPES[k] for n, k in kinds.items() if k in DTYPES and (text or k != "text")})
    frame = _times(frame.astype(NULLABLE), TIMES)
    return frame.astype({n: "datetime64[us, UTC]" for n in TIMES}) if frame.empty else frame


KINDS = {"int": ((int,), "a whole number"), "bigint": ((int,), "a whole number"), "float": ((int, float), "a number"),
         "bool": ((bool,), "True or False"), "text": ((str,), "text")}
"""What a filter on a column of each kind takes besides None, and its words (a time or a JSON column: none; filter the
frame)."""


def _one_value(name: str, value: Any) -> Any:
    """A filter's value: one value of the column's kind (KINDS), or None (is null), as both databases bind it alike:
    lr="abc" was psycopg's error on PostgreSQL and no job on SQLite, identifiable="yes" true on PostgreSQL only."""
    value = plain(value)
    field = schema.BY_NAME.get(name)
    if value is None or field is None:  # an unknown column is named as such by the read
        return value
    kinds, what = KINDS.get(field.kind, ((), None))
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise BadInput(name, (f"a filter of {name} is {what} or None" if what else f"{name} is no filter of one "
                              "value") + f", got {shown(value)}; filter the frame for more")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INTEGER_MOST:
        raise BadInput(name, f"{value} is past what a column holds (64 bits)")
    return value


@public
def epochs(ids: int | Iterable[int] | None = None, sweep: int | None = None) -> pd.DataFrame:
    """Every epoch of the jobs (every job, these ids, or a sweep's): job_id, epoch, loss, mse, kernel_error."""
    import pandas as pd

    from service.db.reads import export_epochs, reading

    selection = _selection(ids, sweep)
    with reading(make=False) as reader:
        names, rows = export_epochs(reader, selection)
        return typed_epochs(pd.DataFrame.from_records(rows, columns=names))


@public
def sweeps() -> pd.DataFrame:
    """One row per sweep: id, name, tags, size, created_at, params (what it swept and fixed), then its jobs
    counted by status, a column each."""
    import pandas as pd

    from service.db.reads import reading
    from service.db.sweeps import list_sweeps

    with reading(make=False) as reader:
        rows, _ = list_sweeps(reader)
    names = ["id", "name", "tags", "size", "created_at", "params", *(s.value for s in JobStatus)]
    frame = pd.DataFrame([{**{k: r[k] for k in names[:6]}, **{s.value: r["by_status"].get(s.value, 0)
                                                              for s in JobStatus}} for r in rows], columns=names)
    counts = {n: "int64" for n in ("id", "size", *(s.value for s in JobStatus))}  # with no sweep too: were object
    return _times(frame.astype(counts), ["created_at"])
