"""A chunk of new jobs as the columns of their rows (service.submit stores them by service.db.writes.insert_columns):
the spec texts from one template, the knobs, the queue, the datasets, made column by column (map and zip), not a
job at a time: a sweep's jobs share the objects of what it does not sweep."""
from __future__ import annotations

import itertools
import json
import operator
import uuid
from collections.abc import Sequence
from typing import Any

from service.db import writes


def columns(chunk: Sequence[tuple[dict[str, Any], tuple, dict[str, Any]]], uploaded: dict[int, int],
            sent: bool) -> dict[str, Any]:
    """The columns of a chunk of new jobs (service.submit.Job: spec values, message key, arrays): spec, knobs,
    queue, datasets (a list where jobs differ, one value
    where a knob is the same object in every job's spec, or all jobs have the same arrays), made column by column
    (map and zip), not a job at a time."""
    specs = [values for values, _, _ in chunk]
    differ = varying(specs)
    out: dict[str, Any] = {"spec": spec_texts(specs, differ)}
    for f in writes.KNOBS:
        if f.name not in differ:
            out[f.col] = writes.knob(f, specs[0][f.name])
        else:
            column = list(map(operator.itemgetter(f.name), specs))
            out[f.col] = [writes.knob(f, v) for v in column] if f.length else column
    out["queue"] = [key[0] for _, key, _ in chunk] if sent else None
    arrays = [files for _, _, files in chunk]
    distinct = {id(files): files for files in arrays}
    for name in ("input", "labels", "kernel"):
        dataset = {i: uploaded[id(files[name])] if name in files else None for i, files in distinct.items()}
        out[f"{name}_dataset_id"] = ([dataset[id(files)] for files in arrays] if len(set(dataset.values())) > 1
                                     else next(iter(dataset.values())))
    return out


def varying(specs: Sequence[dict[str, Any]]) -> set[str]:
    """The keys whose value is not the very same object in every spec (a sweep's jobs share the objects of
    what it does not sweep); every key when the specs do not all have the same keys in the same order."""
    keys = tuple(specs[0])
    if not all(map(keys.__eq__, map(tuple, specs))):
        return set(keys)
    columns = zip(*(values.values() for values in specs))
    return {k for k, column in zip(keys, columns) if not all(map(operator.is_, column, itertools.repeat(column[0])))}


def spec_texts(specs: Sequence[dict[str, Any]], varying: set[str]) -> list[str]:
    """Each spec's JSON text exactly as json.dumps writes it, from one template of the first spec with a slot
    for each varying value (a sweep's specs differ in a few values: the rest is encoded once)."""
    first = specs[0]
    if len(varying) == len(first):
        return [json.dumps(values) for values in specs]
    if not varying:
        return [json.dumps(first)] * len(specs)
    token = uuid.uuid4().hex
    slots = [k for k in first if k in varying]
    marked = json.dumps({**first, **{k: f"\x00{token}{i}\x00" for i, k in enumerate(slots)}})
    template = marked.replace("{", "{{").replace("}", "}}")
    for i in range(len(slots)):
        template = template.replace(json.dumps(f"\x00{token}{i}\x00"), "{}")
    columns = [[_json_value(values[k]) for values in specs] for k in slots]
    return list(map(template.format, *columns))


def _json_value(value: Any) -> str:
    return str(value) if type(value) is int else json.dumps(value)
