"""What run, submit and sweep take, as the `klab` command's values: numpy arrays and torch tensors become
.npy files (then validated, and uploaded, exactly as a file named by npy:PATH is), lists and ranges become
a sweep flag's text.

An array is saved once per content under $KLAB_HOME/arrays, named by its sha256, so the spec a job stores
names a file that gives the same job again (`klab run --input npy:...`).
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import numbers
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from typing import Any

from service.defaults import BATCH_JOBS_MOST
from service.errors import BadInput, one_line, shown, surrogate, visible
from service.jobs.sweep import ONE_VALUE, as_flag, kernel_literal
from service.settings import settings

ARRAY_FIELDS = ("input", "kernel", "labels")
"""The fields that take an array: the CLI's npy:PATH."""

ARRAY_NAME = "the array"
"""How messages name an array a user passed, where they would name a file."""


NOT_IDS = (bytes, bytearray, memoryview, Mapping)
"""What iterates into something other than job ids (bytes as numbers, a mapping's keys): refused where ids go, as
text is (klab.jobs, klab.Handle)."""


def is_time(value: Any) -> bool:
    """numpy's or pandas' times (datetime64, timedelta64), whose .item() in nanoseconds is a plain number (and
    timedelta64 an Integral to numbers)."""
    return getattr(getattr(value, "dtype", None), "kind", "") in ("m", "M")


def whole(value: Any) -> bool:
    """A whole number as a caller may give one: Python's or numpy's int (a DataFrame's cell), never a bool, nor numpy's
    timedelta64 (np.timedelta64(1) was job 1)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and not is_time(value)


def item(value: Any) -> Any:
    """A 0-d array's, a tensor's or a numpy scalar's one value as Python's; a time (timedelta64, datetime64) as it
    is, whose .item() is a number (np.timedelta64(1) was job 1)."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") and not is_time(value) \
        else value


def _nested(value: Any) -> Any:
    """A kernel of nested lists or tuples as the lists of Python numbers a job file writes (numpy's numbers in it, 0-d
    arrays and tensors too, were no JSON: a TypeError, or `must be a string`)."""
    if isinstance(value, (list, tuple)):
        return [_nested(v) for v in value]
    return item(value)


def checked_flag(name: str, value: Any) -> bool:
    """A keyword that is True or False (store=, local=, progress=): store="no" was true, and stored the job."""
    if type(value).__name__ not in ("bool", "bool_"):  # Python's, or numpy's
        raise BadInput(name, f"True or False, got {shown(value)}")
    return bool(value)


def checked_batch_jobs(value: Any) -> int:
    """batch_jobs= as `--batch-jobs` takes it: a whole number from 1 to BATCH_JOBS_MOST."""
    if not whole(value) or not 1 <= value <= BATCH_JOBS_MOST:
        raise BadInput("batch_jobs", f"a whole number from 1 to {BATCH_JOBS_MOST}, got {shown(value)}")
    return int(value)


def job_values(jobs: Any) -> list[dict[str, Any]]:
    """jobs= of klab.submit: a list (or any iterable but a text or a mapping) of mappings, one a job."""
    if isinstance(jobs, (str, bytes, bytearray, Mapping)) or not isinstance(jobs, Iterable) or \
            getattr(jobs, "ndim", None) == 0:  # a 0-d array: iterating it raised TypeError
        raise BadInput("jobs", f"a list of mappings, one a job, got {type(jobs).__name__}"
                               + ("; one job's values go as keywords" if isinstance(jobs, Mapping) else ""))
    limit = settings().max_sweep_jobs
    docs = list(itertools.islice(jobs, limit + 1))  # no more made past the limit (a generator may never end)
    if len(docs) > limit:
        count = f"{len(jobs):,} jobs, more than" if isinstance(jobs, Sized) else "more jobs than"
        raise BadInput("jobs", f"{count} the limit {limit} (KLAB_MAX_SWEEP_JOBS)")
    for n, doc in enumerate(docs, 1):
        if not isinstance(doc, Mapping):
            raise BadInput("jobs", f"job {n} is of type {type(doc).__name__}, not a mapping of its values")
    if not docs:
        raise BadInput("jobs", "give at least one job")
    return [dict(doc) for doc in docs]


def plain(value: Any) -> Any:
    """numpy's scalar (a DataFrame's cell: np.int64, np.float32, np.str_) as Python's, which both databases bind as
    the number or text it is (sqlite3 would bind np.int64 as bytes, equal to no number): a float of fewer than 64 bits
    as the shortest decimal that reads back to it (np.float32(0.03) is the 0.03 it was written, not 0.029999999329,
    in a job's lr and in a filter alike); anything else by .item(); any other value as it is."""
    if type(value).__module__ != "numpy":
        return value
    if is_time(value):  # a time as Python's datetime or timedelta; in nanoseconds its .item() is a number: as it is
        found = value.item() if getattr(value, "ndim", 0) == 0 else value
        return value if isinstance(found, int) else found
    import numpy as np

    if isinstance(value, np.ndarray) and value.ndim == 0:  # np.array(0.03, dtype=np.float32): its one value
        value = value[()]
    elif isinstance(value, np.ndarray):  # several values, or one in a list of its own: not one value, which the
        return value  # caller refuses (.item() raised ValueError of several, and took [[0.03]] for 0.03)
    if isinstance(value, np.floating) and value.dtype.itemsize < 8 and not float(value).is_integer():
        return float(str(value))  # a whole one exactly (np.float32(123456792) as a seed, not 123456790)
    return value.item() if hasattr(value, "item") else value


def _unmasked(field: str, value: Any) -> None:
    """A masked array is refused: its mask was dropped, and the values under it used."""
    import numpy as np

    if isinstance(value, np.ma.MaskedArray) and np.ma.getmaskarray(value).any():
        raise BadInput(field, f"{ARRAY_NAME} is masked; give its values (.filled(...)): a job takes every value")


def _numpy(field: str, value: Any) -> Any:
    """An array's, a tensor's (on the CPU) or a scalar's values as numpy's; a dtype numpy lacks (bfloat16) as
    float32; a tensor of no values to read (meta, sparse, nested) or times, bad input."""
    import numpy as np

    try:
        if not hasattr(value, "detach"):
            array = np.asarray(value)
        else:
            tensor = value.detach().cpu()
            try:
                array = tensor.numpy()
            except TypeError:  # Got unsupported ScalarType BFloat16
                array = tensor.float().numpy()
    except (RuntimeError, TypeError, NotImplementedError) as exc:  # meta, sparse, nested tensors: torch's error
        raise BadInput(field, f"{ARRAY_NAME} cannot be read as numbers: {one_line(exc)}") from None
    if is_time(array):  # its nanoseconds as numbers: seed=np.datetime64(3, "ns") trained seed 3
        raise BadInput(field, f"a number, got times ({array.dtype})")
    return array


def spelled(values: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping's keys spelled with - read as with _ (batch-size, as a job file may spell it, is batch_size;
    named both ways in one mapping, it is refused)."""
    out: dict[str, Any] = {}
    spelling: dict[str, Any] = {}
    for key, value in values.items():
        same = key.replace("-", "_") if isinstance(key, str) else key
        if same in spelling:
            raise BadInput(same, f"given twice ({spelling[same]} and {key}); give it once")
        spelling[same], out[same] = key, value
    return out


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values a caller gave (None: the CLI's default), keys as spelled() reads them."""
    return {k: v for k, v in spelled(values).items() if v is not None}


def unlabelled(values: Mapping[str, Any]) -> bool:
    """Labels given without a kernel: the API's one default unlike the command's (whose kernel is d2l unless
    `--kernel none`), since a call that hands its own labels has no true kernel to compare with."""
    return "labels" in values and "kernel" not in values


def is_array(value: Any) -> bool:
    """A numpy array, or a torch tensor (recognised by its methods, so that torch is never imported here)."""
    import numpy as np

    return isinstance(value, np.ndarray) or all(hasattr(value, m) for m in ("detach", "cpu", "numpy"))


class Files:
    """Arrays a call was given, saved as .npy files; turns their paths back into words in error messages."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sweeping = False  # values made into a sweep's flags (`flags`), not one job's

    def npy(self, field: str, value: Any) -> str:
        """An array or tensor as npy:PATH."""
        import numpy as np

        _unmasked(field, value)
        array = _numpy(field, value)
        from service.jobs.inputs import numbers_only

        numbers_only(field, ARRAY_NAME, array)  # an array of NaN or of objects, the bad input itself, was saved
        # before it was refused
        limit = settings().max_file_bytes
        if array.nbytes > limit:  # refused before it is made a file, with the limit the file would meet
            raise BadInput(field, f"{ARRAY_NAME} is {array.nbytes} bytes, more than the limit {limit} "
                                  "(KLAB_MAX_FILE_BYTES)")
        buf = io.BytesIO()
        np.save(buf, array)
        blob = buf.getvalue()
        if len(blob) > limit:  # its .npy header too: refused before it is written, as the array (not "file is ...")
            raise BadInput(field, f"{ARRAY_NAME} is {len(blob)} bytes as .npy, more than the limit {limit} "
                                  "(KLAB_MAX_FILE_BYTES)")
        if self.sweeping and field not in ONE_VALUE and "," in str(settings().home):  # swept values are text, split
            # at commas (labels, one value, are not): the array was saved, then refused as "input: no such file:
            # /home/a (the sweep's value 'npy:/home/a')"
            raise BadInput("KLAB_HOME", f"{visible(str(settings().home))} holds a comma, and {ARRAY_NAME} of a sweep "
                                        "is kept under it, named by a path that the sweep's commas would split")
        if surrogate(str(settings().home)):  # the array's path, which its job keeps as UTF-8 text, would hold them:
            # the array was saved, then refused as "input: holds \udcff, half of a UTF-16 surrogate pair"
            raise BadInput("KLAB_HOME", f"{visible(str(settings().home))} holds bytes that are not UTF-8, and "
                                        f"{ARRAY_NAME} is kept under it, named by a path its job stores as UTF-8 text")
        folder = settings().folder("arrays")
        path = folder / f"{hashlib.sha256(blob).hexdigest()}.npy"
        if not path.is_file():
            # another process, or another thread of this one, may save the same array meanwhile: a part of its own
            # (threads shared one, and read it half written: "not a valid .npy file", or found it moved away)
            part = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            part.write_bytes(blob)
            os.replace(part, path)
        self.paths.append(str(path))
        return f"npy:{path}"

    def value(self, field: str, value: Any) -> Any:
        """One job's value of a field: an array as npy:PATH, a kernel of nested tuples as the lists a job file
        writes (it was told `must be a string`), anything else as given."""
        if field in ARRAY_FIELDS and is_array(value):
            return self.npy(field, value)
        if field not in ARRAY_FIELDS and getattr(value, "ndim", 0) != 0 and \
                (is_array(value) or type(value).__module__.split(".")[0] in ("numpy", "pandas")):
            # several values: a pandas array compared equal to the first name it held (method=pd.array(["adam"]))
            # and trained the default
            raise BadInput(field, f"one value, got {shown(value)}" + ("" if self.sweeping else
                                                                      "; several values make a sweep: klab.sweep"))
        if field not in ARRAY_FIELDS and (type(value).__module__ == "numpy" or is_array(value)) and \
                getattr(value, "ndim", 0) == 0:  # one value, a 0-d array or tensor too: np.float32(0.03) is 0.03
            return plain(_numpy(field, value))
        if is_time(value):  # pandas' Timedelta and Timestamp: their nanoseconds read as numbers
            raise BadInput(field, f"a number, got {shown(value)}")
        if field == "kernel" and kernel_literal(value, item):  # its first number a 0-d tensor or array too: it was
            return _nested(value)  # taken for a sweep's kernels
        return value

    def job(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """One job's values, arrays as npy:PATH; labels without a kernel mean no true kernel (unlabelled)."""
        job = {k: self.value(k, v) for k, v in given(values).items()}
        return {**job, "kernel": None} if unlabelled(job) else job

    def flags(self, values: Mapping[str, Any]) -> dict[str, str]:
        """A sweep's values as `klab sweep` flags: lists, tuples, generators, numpy arrays and tensors (but an
        array for input, kernel or labels, which is one value) as comma lists, ranges as A..B; labels without a
        kernel mean no true kernel (unlabelled)."""
        self.sweeping = True
        flags = {k: self._flag(k, v) for k, v in given(values).items()}
        return {**flags, "kernel": "none"} if unlabelled(flags) else flags

    def _flag(self, field: str, value: Any) -> str:
        pandas = type(value).__module__.split(".")[0] == "pandas"
        most = settings().max_sweep_jobs + 1  # values read at most: one past the limit is refused as all would be
        if field not in ARRAY_FIELDS and (is_array(value) or pandas and hasattr(value, "tolist")):
            # np.logspace(...), torch.arange(...), a DataFrame's column: their values, float32's as written
            _unmasked(field, value)
            values = _numpy(field, value)
            value = [plain(v) for v in values[:most]] if values.ndim == 1 \
                else plain(values) if not values.ndim else values.tolist()
        elif pandas and hasattr(value, "tolist") and getattr(value, "ndim", 1) == 1 or \
                is_array(value) and getattr(value, "ndim", 0) == 1 and getattr(value.dtype, "kind", None) == "U":
            value = value.tolist()  # a column of inputs or kernels, or an array of their names: its items (a Series
            # of kernels was refused as a Series, an array of names taken for one kernel's values)
        elif isinstance(value, range) and value.step != 1:  # no more than a sweep may hold: range(0, 10**9, 2) was
            value = value[:most]  # listed whole, for minutes (one of step 1 is A..B, refused as a range whole)
        elif isinstance(value, Iterator):  # a generator: its items, as a list's, no more than a sweep may hold
            value = list(itertools.islice(value, most))
        elif isinstance(value, (set, frozenset, Mapping)) or pandas:  # no order to sweep in, or not one list
            raise BadInput(field, f"a sweep's values are a list, tuple, range, generator or array, not a "
                                  f"{type(value).__name__}")
        if field == "kernel" and isinstance(value, (list, tuple)):  # a kernel's rows of 0-d arrays or tensors: numbers
            value = _nested(value)  # (taken for a sweep of kernels of one row each, then no JSON: a TypeError)
        if isinstance(value, (list, tuple)) and not (field == "kernel" and kernel_literal(value)):  # not a kernel's
            # rows: values, one past the limit refused as the whole would be, and sooner (3,000,000 seeds: 8.7 s)
            value = value[:most]
        return as_flag(field, value, lambda v: self._text(field, v))

    def _text(self, field: str, value: Any) -> str:
        value = self.value(field, value)
        if not isinstance(value, (list, tuple)):
            return str(value)
        try:
            return json.dumps(value)
        except (TypeError, ValueError):  # a kernel of Decimals, complex numbers, times: json's TypeError
            raise BadInput(field, f"a kernel's values are numbers, got {shown(value)}") from None

    def unsaid(self, exc: BadInput) -> BadInput:
        """The error with the arrays' paths named as the arrays they are."""
        message = exc.message
        for path in self.paths:
            message = message.replace(f"npy:{path}", ARRAY_NAME).replace(path, ARRAY_NAME)
        return BadInput(exc.field, message)


@contextmanager
def arrays() -> Iterator[Files]:
    """Arrays saved as files for the length of a call; its bad input names them as arrays, not paths."""
    files = Files()
    try:
        yield files
    except BadInput as exc:
        raise files.unsaid(exc) from None
