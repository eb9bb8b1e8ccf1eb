"""Results of many jobs at once, column by column: what the engine hands over and what the writes store,
with no Python object per job on the way.

`values[name]` holds, for each field of a result row (service.jobs.result.ROW), one value per job:
a numpy array (numbers, NaN for none; booleans; kernels as jobs x shape), a list (text), or one plain
value that every job shares. Epochs are epochs x jobs arrays, NaN once a job had stopped.
numpy is imported only where arrays are handled.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.jobs import result

KERNELS = tuple(f.name for f in result.TRAINED if f.kind == "json")
"""The kernel fields: arrays of jobs x the kernel's shape as the user gave it."""


@dataclass
class Columns:
    values: dict[str, Any]
    loss: Any  # epochs x jobs
    mse: Any
    kernel_error: Any | None
    epochs_done: Any  # jobs

    def __len__(self) -> int:
        return len(self.epochs_done)

    def row(self, i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Job i's result row, in plain Python values (None for what is missing or not finite), and its epochs."""
        row = {name: _plain(result.BY_NAME[name], self.values.get(name), i) for name in result.ROW}
        ke = self.kernel_error
        epochs = [{"epoch": e + 1, "loss": finite(self.loss[e, i]), "mse": finite(self.mse[e, i]),
                   "kernel_error": None if ke is None else finite(ke[e, i])} for e in range(int(self.epochs_done[i]))]
        return row, epochs

    def column(self, name: str) -> list[Any]:
        """One field for every job, as the database takes it: None for what is missing, JSON text for kernels."""
        return _stored_values(result.BY_NAME[name], self.values.get(name), len(self))

    def stored(self, name: str) -> Any:
        """One field as a write sends it: its one value when every job has the same (sent once, and a
        kernel encoded once), else column(name)."""
        import numpy as np

        f, v = result.BY_NAME[name], self.values.get(name)
        if not isinstance(v, (np.ndarray, list, tuple)):
            return v
        if isinstance(v, np.ndarray):
            if len(v) and _all_same(v):
                return _stored_values(f, v[:1], 1)[0]
            return _stored_values(f, v, len(self))
        out = _stored_values(f, v, len(self))
        return out[0] if out and all(_same(x, out[0]) for x in out) else out

    @classmethod
    def of_rows(cls, rows: Sequence[tuple[dict[str, Any], Sequence[dict[str, Any]]]]) -> Columns:
        """Columns from result rows and their epochs (a result trained alone, a test's)."""
        import numpy as np

        n, longest = len(rows), max((len(eps) for _, eps in rows), default=0)

        def epochs_of(key: str) -> Any:
            a = np.full((longest, n), np.nan)
            for j, (_, eps) in enumerate(rows):
                for e in eps:
                    a[e["epoch"] - 1, j] = np.nan if e[key] is None else e[key]
            return a

        values = {name: [row.get(name) for row, _ in rows] for name in result.ROW}
        for name in KERNELS:  # kept as given (nested lists): encoded one by one
            values[name] = Nested(values[name])
        has_kernel_error = any(e["kernel_error"] is not None for _, eps in rows for e in eps)
        return cls(values=values, loss=epochs_of("loss"), mse=epochs_of("mse"),
                   kernel_error=epochs_of("kernel_error") if has_kernel_error else None,
                   epochs_done=np.array([len(eps) for _, eps in rows]))


class Nested(list):
    """Kernels one a job as nested lists (None for non-finite values), where they are not one array:
    column() encodes each with json."""

    @classmethod
    def of_arrays(cls, kernels: Sequence[Any]) -> Nested:
        return cls(_floats(k) for k in kernels)


def json_texts(a: Any) -> list[str | None]:
    """A jobs x shape array as JSON text per job ([[...]], nested as the shape), null for non-finite values:
    Python's shortest round-trip repr of each double (exactly the doubles it holds), set in one template
    of the shape."""
    import numpy as np

    if isinstance(a, (Nested, list)):
        return [None if k is None else json.dumps(k) for k in a]
    if a is None:
        return None  # type: ignore[return-value]
    n, size = len(a), math.prod(a.shape[1:])
    flat = a.reshape(n * size)
    texts = list(map(repr, flat.tolist()))
    for i in np.flatnonzero(~np.isfinite(flat)).tolist():
        texts[i] = "null"
    template = "{}"
    for length in reversed(a.shape[1:]):
        template = "[" + ", ".join([template] * length) + "]"
    fill = template.format
    return [fill(*texts[k * size : (k + 1) * size]) for k in range(n)]


def _all_same(v: Any) -> bool:
    """Whether every job's value is the first's, bit for bit (-0.0 is not 0.0; NaNs are all missing)."""
    import numpy as np

    first = v[:1]
    if v.dtype.kind != "f":
        return bool((v == first).all())
    return bool((((v == first) & (np.signbit(v) == np.signbit(first))) | (np.isnan(v) & np.isnan(first))).all())


def _same(x: Any, y: Any) -> bool:
    """Whether two plain values are stored alike: equal and of one type, and floats bit for bit (-0.0 is not
    0.0, 1 is not 1.0 nor True)."""
    if type(x) is not type(y):
        return False
    return repr(x) == repr(y) if isinstance(x, float) else x == y


def _stored_values(f: result.Field, v: Any, n: int) -> list[Any]:
    """A field's values for n jobs as the database takes them (Columns.column)."""
    import numpy as np

    if not isinstance(v, (np.ndarray, list, tuple)):
        return [v] * n
    if f.kind == "json":
        return json_texts(v)
    if isinstance(v, (list, tuple)):
        return list(v)
    if f.kind == "bool":
        return v.astype(bool).tolist()
    kept = np.isfinite(v)
    out = (np.where(kept, v, 0).astype(np.int64) if f.kind in ("int", "bigint") else v).tolist()
    if kept.all():
        return out
    return [x if ok else None for x, ok in zip(out, kept.tolist())]


def finite(v: Any) -> float | None:
    """A number as the database keeps it: None for none, or for one not finite."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _plain(f: result.Field, v: Any, i: int) -> Any:
    import numpy as np

    if isinstance(v, Nested) or isinstance(v, (list, tuple)):
        return v[i]
    if not isinstance(v, np.ndarray):
        return v
    x = v[i]
    if f.kind == "json":
        return _floats(x)
    if f.kind == "bool":
        return bool(x)
    if not np.isfinite(x):
        return None
    return int(x) if f.kind in ("int", "bigint") else float(x)


def _floats(a: Any) -> Any:
    """Nested lists for JSON, with None for non-finite values."""
    import numpy as np

    if a.ndim == 0:
        return finite(a)
    if np.all(np.isfinite(a)):
        return a.tolist()
    return [_floats(x) for x in a]
