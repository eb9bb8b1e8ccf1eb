"""Jobs summarised by group (`klab compare --group-by lr,method`): one row per group with the count, mean, standard
deviation, least and greatest of each metric over the rest of what varies (typically seeds).

One statement, in SQL, over the jobs table: a 200,000-job sweep comes back as a few rows without reading its jobs
into Python. The standard deviation is computed in two passes, the group's mean first (a window over the group) and
then the squared deviations from it, and not as the mean of squares less the squared mean, which cancels to noise
when the spread is small beside the values; less what the mean's own rounding adds (equal values' mean need not
round back to them: [0.1] * 3 has mean 0.10000000000000002, and numpy's std of them is 1.7e-17, not 0). For the same
reason the mean is held between the least and the greatest value. The deviations are taken in units of the group's
greatest value: their squares below 1e-308 raised PostgreSQL's underflow error (a traceback) and were 0 in SQLite.
(PostgreSQL's avg squares its values too: past about 1e154 it refuses them; no stored metric comes near.) The
square root is taken here, since SQLite has no sqrt unless built with its math functions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from service.db.connect import Reader
from service.db.reads import BYTEWISE, SWEPT, where
from service.errors import BadInput
from service.jobs import result
from service.jobs.selection import Selection
from service.jobs.status import JobStatus

METRICS = ("relative_error", "final_loss")
"""What each group summarises."""

SUCCEEDED = JobStatus.SUCCEEDED.value
"""The column counting a group's jobs that succeeded."""

STATISTICS = ("mean", "std", "min", "max")
"""Of each metric, over the jobs of a group that have it (a job that failed or has not run has none)."""


def columns(by: Sequence[str]) -> list[str]:
    """A grouped row's names: the group's values, its jobs (and how many succeeded), then each statistic of
    each metric (relative_error_mean, ..., final_loss_max)."""
    return [*by, "jobs", SUCCEEDED, *(f"{m}_{s}" for m in METRICS for s in STATISTICS)]


def parse_group_by(text: str) -> list[str]:
    """--group-by lr,method as column names, each a parameter a sweep may vary."""
    names = [n.strip().replace("-", "_") for n in text.split(",")]
    for n in names:
        if n not in SWEPT:
            raise BadInput("group-by", f"cannot group by {n!r}; choose from {', '.join(SWEPT)}")
    if len(set(names)) < len(names):
        raise BadInput("group-by", f"{text!r} names a parameter twice")
    return names


def grouped(reader: Reader, selection: Selection, by: Sequence[str]) -> list[dict[str, Any]]:
    """One row per group of the selected jobs with equal values of `by` (columns(by)), ordered by those values."""
    clause, params = where(reader, selection)
    keys = ", ".join(by)  # names of SWEPT only (parse_group_by), never a user's text
    cols = [result.BY_NAME[m].col for m in METRICS]
    inner = ", ".join(f"{c} AS x{i}, avg({c}) OVER (PARTITION BY {keys}) AS m{i}, "
                      f"nullif(max(abs({c})) OVER (PARTITION BY {keys}), 0) AS s{i}" for i, c in enumerate(cols))
    stats = ", ".join(f"count(x{i}) AS n{i}, avg(x{i}) AS mean{i}, min(x{i}) AS min{i}, max(x{i}) AS max{i}, "
                      f"sum(((x{i} - m{i}) / s{i}) * ((x{i} - m{i}) / s{i})) AS ss{i}, sum((x{i} - m{i}) / s{i}) AS "
                      f"d{i}, max(s{i}) AS s{i}" for i in range(len(cols)))
    order = ", ".join(f"{k} IS NULL, {reader.bytewise(k) if k in BYTEWISE else k}" for k in by)
    sql = (f"SELECT {keys}, count(*) AS jobs, sum(CASE WHEN status = :ok THEN 1 ELSE 0 END) AS n_ok, "  # noqa: S608
           f"{stats} FROM (SELECT {keys}, status, {inner} FROM jobs WHERE {clause}) AS t "
           f"GROUP BY {keys} ORDER BY {order}")
    rows = reader.rows(sql, {**params, "ok": SUCCEEDED})
    out = []
    for r in rows:
        row = {k: r[k] for k in by}
        row["jobs"], row[SUCCEEDED] = int(r["jobs"]), int(r["n_ok"] or 0)
        for i, m in enumerate(METRICS):
            n = int(r[f"n{i}"])
            low, high = (None, None) if n == 0 else (float(r[f"min{i}"]), float(r[f"max{i}"]))
            row[f"{m}_mean"] = None if n == 0 else min(max(float(r[f"mean{i}"]), low), high)  # a rounded sum's
            row[f"{m}_std"] = None if n < 2 else 0.0 if low == high else \
                float(r[f"s{i}"]) * _std(n, r[f"ss{i}"], r[f"d{i}"])
            row[f"{m}_min"], row[f"{m}_max"] = low, high
        out.append(row)
    return out


def _std(n: int, squares: float, deviations: float) -> float:
    """The sample standard deviation of n values that are not all equal (equal values have none, whatever their
    mean rounded to), from their deviations from the computed mean: the sum of their squares less the part that
    the mean's own rounding adds (the corrected two-pass formula: Chan, Golub and LeVeque, 1983)."""
    return math.sqrt(max(0.0, float(squares) - float(deviations) ** 2 / n) / (n - 1))
