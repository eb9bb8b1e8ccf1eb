"""Rows as CSV or JSON, written as they come: an export of millions of epochs never sits in memory."""
from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import IO, Any


def _csv_value(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else v


def write_csv(out: IO[str], columns: list[str], rows: Iterable[dict[str, Any]]) -> int:
    """A header and one line a row (kernels and specs as JSON in their cells); how many rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])
        count += 1
    return count


def write_json(out: IO[str], columns: list[str], rows: Iterable[dict[str, Any]]) -> int:
    """A JSON list written one row at a time; how many rows."""
    count = 0
    out.write("[")
    for row in rows:
        out.write(("\n" if count == 0 else ",\n") + json.dumps({c: row.get(c) for c in columns}))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


WRITERS = {"csv": write_csv, "json": write_json}
