"""A job's spec as it is stored, read by the workers that claim it: which of its values jobs trained together may
differ in, and the texts of stored specs less those values, without parsing each."""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence

from service import defaults

PER_JOB = ("seed", "lr", "tol")
"""The spec's values that jobs trained together may differ in: a worker parses one spec for the jobs of a
claim whose stored specs differ in these alone (`alike`)."""

_PER_JOB_TEXT = re.compile(r', "(?:seed|lr|tol)": [^,}]*')
_TOL_TEXT = re.compile(r', "tol": ([^,}]*)')
"""A PER_JOB key and its value (a number) in a spec's text as json.dumps writes it: never the first key, and
only ever a key, since a quote inside a JSON string is written \\", so `, "` cannot be in one."""


def alike(texts: Sequence[str]) -> tuple[list[str], list[float]]:
    """Stored specs' texts less their PER_JOB values (the same text for jobs whose specs differ in those
    alone), and their tol. Cut from the texts, all at once, not parsed one by one: a third of a claim's time
    was PostgreSQL parsing them (jsonb), and Python parsing them took as long. A text that is not as
    json.dumps writes it (each key once, no line break, those separators) makes every one parsed instead."""
    joined = "\n".join(texts)
    cut, found = _PER_JOB_TEXT.subn("", joined)
    keys, tols = cut.split("\n"), _TOL_TEXT.findall(joined)
    if found == len(PER_JOB) * len(texts) and len(keys) == len(tols) == len(texts):
        with contextlib.suppress(ValueError):
            return keys, [float(t) for t in tols]
    parsed = [json.loads(t) for t in texts]
    return ([json.dumps({k: v for k, v in p.items() if k not in PER_JOB}) for p in parsed],
            [p.get("tol", defaults.TOL) for p in parsed])
