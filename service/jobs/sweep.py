"""Sweeps: flags holding lists, ranges or log-spaced values, expanded into their cartesian product."""
from __future__ import annotations

import contextlib
import decimal
import itertools
import json
import math
import numbers
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import INVISIBLE, BadInput, shown
from service.jobs.choices import NO_KERNEL, input_text, kernel_key, kernel_text
from service.settings import settings

SWEEPABLE = ("input", "kernel", "method", "lr", "epochs", "batch_size", "seed", "noise")
ONE_VALUE = ("labels", "bias", "tol", "device")
"""The job's other fields (service.jobs.spec.JobSpec): one value for every job of a sweep."""
INTEGER = ("epochs", "batch_size", "seed")
NUMERIC = ("lr", "noise", *INTEGER)
KEPT = {"input": input_text, "kernel": kernel_text}
"""How a job keeps a text value, and so the sweep's params (choices)."""
KEYS = {"input": input_text, "kernel": kernel_key}
"""What tells two text values apart, for a sweep's duplicate check."""


SWEEP_HINT = "several values make a sweep: klab sweep"
"""What a job's value that holds a sweep's values is told (the Python API names klab.sweep instead)."""


def several(text: str) -> bool:
    """Whether a job's text lists several values as a sweep does (`d2l,sobel-x`; not one kernel's JSON literal)."""
    try:
        return len(split_list("", text)) > 1
    except BadInput:
        return False


def split_list(field: str, text: str) -> list[str]:
    """A field's comma list, split on commas outside brackets, so a JSON kernel literal stays whole."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    if items == [""]:
        raise BadInput(field, "no value given: give one, or several separated by commas")
    if any(not item for item in items):
        raise BadInput(field, f"an empty item in the list {text!r}")
    return items


WHOLE_DIGITS = 30
"""Most digits of a whole number read (past the decimal point's place): far above any field's limit (2**63), far
below what would take time to convert."""

_DASHED = re.compile(r"\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*-\s*([\d.]+(?:[eE][-+]?\d+)?)\s*")
"""`0-9`: a range written with a dash, which the sweep syntax spells `0..9` (or `A:B:N`, log-spaced)."""


def number(field: str, text: str, integer: bool) -> float | int:
    """A number as the flags, job files and sweeps write it: ASCII digits, an integer field's exactly, a range written
    with a dash named as such (`0-9`: did you mean 0..9?)."""
    if not text.isascii():  # int() and float() read any script's digits (٠.١ as 0.1), which the flags do not
        raise BadInput(field, f"not a number: {_shown(text)}")
    if integer:  # exactly, as decimal digits: through a float, 9007199254740993.0 was seed ...992 (a seed goes to
        # 2**63 - 1), and 7.00000000000000001 seed 7
        try:
            exact = decimal.Decimal(text.strip())
        except decimal.InvalidOperation:
            raise BadInput(field, f"not a number: {_shown(text)}{_range_hint(field, text)}") from None
        if not exact.is_finite():
            raise BadInput(field, f"must be finite, got {_shown(text)}")
        if exact.adjusted() > WHOLE_DIGITS:  # before int(): 1e999999 would be a million digits
            raise BadInput(field, f"too large, got {_shown(text)}")
        if exact != exact.to_integral_value():
            raise BadInput(field, f"must be an integer, got {_shown(text)}")
        return int(exact)
    try:
        value = float(text)
    except ValueError:
        raise BadInput(field, f"not a number: {_shown(text)}{_range_hint(field, text)}") from None
    if not math.isfinite(value):
        raise BadInput(field, f"must be finite, got {_shown(text)}")
    return value + 0.0  # -0 as 0, the number it trains as (a job of bias -0 was shown apart from one of bias 0)


def _finite(text: str) -> bool:
    with contextlib.suppress(ValueError):
        return math.isfinite(float(text))
    return False


def _range_hint(field: str, text: str) -> str:
    """What a number that is a range written with a dash was meant to be."""
    if (dashed := _DASHED.fullmatch(text)) is None:
        return ""
    a, b = dashed.groups()
    return f"; did you mean {a}..{b}?" if field in INTEGER else f"; {_listed(a, b)}"


def _listed(a: str, b: str) -> str:
    """What a range of numbers that are not integers was meant to be."""
    return f"did you mean {a},{b} or {a}:{b}:N (N log-spaced values)?"


def _values(field: str, item: str, limit: int) -> list[Any]:
    integer = field in INTEGER
    if field in NUMERIC and ".." in item:
        lo_s, _, hi_s = item.partition("..")
        if not integer and not all(float(v) == int(float(v)) for v in (lo_s, hi_s) if _finite(v)):
            raise BadInput(field, f"range {item}: A..B counts integers; {_listed(lo_s, hi_s)}")
        lo, hi = number(field, lo_s, True), number(field, hi_s, True)
        if lo > hi:
            raise BadInput(field, f"range {item} is written backwards; write {hi}..{lo}")
        if hi - lo + 1 > limit:
            raise BadInput(field, f"range {item} has {hi - lo + 1} values, more than the limit {limit} "
                                  "(KLAB_MAX_SWEEP_JOBS)")
        return list(range(int(lo), int(hi) + 1))
    if field in NUMERIC and item.count(":") == 2:
        a_s, b_s, n_s = item.split(":")
        a, b = number(field, a_s, integer), number(field, b_s, integer)
        n = number(field, n_s, True)
        if n < 1 or n > limit:
            raise BadInput(field, f"{item}: the count must be between 1 and {limit} (KLAB_MAX_SWEEP_JOBS)")
        if a <= 0 or b <= 0:
            raise BadInput(field, f"{item}: log-spaced ends must be positive")
        if a > b and n > 1:  # one value is A, whichever end is the greater, as numpy's geomspace gives it
            raise BadInput(field, f"range {item} is written backwards; write {b_s}:{a_s}:{n_s}")
        lo, hi = math.log(a), math.log(b)  # in logs, so no ratio of extreme ends overflows
        vals = [a] if n == 1 else [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(int(n))]
        if not all(math.isfinite(v) for v in vals):
            raise BadInput(field, f"{item}: values out of range")
        if integer:  # the ends as given, exactly (through exp and log, 1:9007199254740993:2 ended at ...986), and
            # the values between them within them (past 2**53 exp can round one beyond the end)
            inner = (min(max(int(round(v)), int(a)), int(b)) for v in vals[1:-1])
            whole = sorted({int(a), int(b), *inner}) if n > 1 else [int(a)]
            if len(whole) < n:  # log-spaced values closer than 1 round to the same whole number
                raise BadInput(field, f"{item}: {n} log-spaced values from {a} to {b} round to {len(whole)} whole "
                                      f"number{'s' * (len(whole) != 1)}; ask for fewer, or for all of them: {a}..{b}")
            return whole
        kept = [a, *(float(f"{v:.12g}") for v in vals[1:-1]), b] if n > 1 else [a]  # the ends as given, exactly
        # (0.0123456789012345:0.1:3 trained 0.0123456789012); one value is A, as numpy's geomspace gives it
        if (k := len(set(kept))) < n:  # 1:1.0000000000001:3 was "1.0 appears more than once", each given once
            raise BadInput(field, f"{item}: {n} log-spaced values from {a_s.strip()} to {b_s.strip()} are {k} "
                                  f"distinct number{'s' * (k != 1)} (values between the ends keep 12 significant "
                                  "digits); ask for fewer, or ends further apart")
        return kept
    if field in NUMERIC:
        return [number(field, item, integer)]
    return [item]


@dataclass(frozen=True)
class Grid:
    """A sweep: the parameters it varies (name -> values, in the order given) and those it fixes."""

    swept: dict[str, list[Any]]
    fixed: dict[str, Any]

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.swept.values())

    def params(self) -> dict[str, Any]:
        """The sweep's params as stored: its inputs and kernels as its jobs keep them (input_text, kernel_text), its
        other values as given (a message about one of them quotes it as typed)."""
        def kept(field: str, value: Any) -> Any:
            return KEPT[field](value) if field in KEPT and isinstance(value, str) else value

        return {"swept": {f: [kept(f, v) for v in vs] for f, vs in self.swept.items()},
                "fixed": {f: kept(f, v) for f, v in self.fixed.items()}}

    def jobs(self) -> Iterator[dict[str, Any]]:
        """One dict of flags per job, in product order (the last parameter varies fastest)."""
        names = list(self.swept)
        for combo in itertools.product(*(self.swept[n] for n in names)):
            yield {**self.fixed, **dict(zip(names, combo))}


SHAPED = ("input", "kernel", "labels")
"""Fields whose shapes must fit each other: a mistake in one, or labels that overflow (a bias's, noise's: what the
input and kernel make), names the swept others it was built with (a method swept beside them is no part of it, nor
are they of a bias past float32 whatever they are)."""


@contextlib.contextmanager
def naming(grid: Grid, values: dict[str, Any], built_from: dict[str, Any] | None = None) -> Iterator[None]:
    """A mistake in one of a field's several values names the value (`--noise=-1,0`: which one is not >= 0),
    unless the message quotes it already; one of a job built from swept values names those too (`--input
    random:3x6x8,random:2x6x8 --kernel random:1x3x2x2`: the kernel's channels do not fit which input)."""
    try:
        yield
    except BadInput as exc:
        f = exc.field.replace("-", "_")
        value = values.get(f)
        notes = []
        if len(grid.swept.get(f, ())) >= 2 and not (isinstance(value, str) and repr(value) in exc.message):
            notes.append(f"the sweep's value {value!r}")
        others = [f"{g.replace('_', '-')} {v!r}" for g, v in (built_from or {}).items()
                  if (f in SHAPED or "labels" in exc.message) and g in SHAPED and g != f
                  and len(grid.swept.get(g, ())) >= 2]
        if others:
            notes.append(("with " if notes else "with the sweep's ") + ", ".join(others))
        if not notes:
            raise
        raise BadInput(exc.field, f"{exc.message} ({', '.join(notes)})") from None


def grid(flags: dict[str, str]) -> Grid:
    """The sweep that flags describe: lists, ranges and log-spaced values expanded, its size checked."""
    limit = settings().max_sweep_jobs
    swept: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    for field, text in flags.items():
        if field not in SWEEPABLE:
            fixed[field] = _one_number(field, text) if field in ("bias", "tol") else text
            continue
        values: list[Any] = []
        try:
            for item in split_list(field, str(text)):
                values.extend(_values(field, item, limit))
                if len(values) > limit:  # each item within the limit, a list of them past it: sixty ranges of
                    break  # 200,000 seeds took 1.4 GB before the grid's size was checked
            keys = [KEYS[field](v) if field in KEYS and isinstance(v, str) else v for v in values]
            if len(set(keys)) < len(keys):  # the same job twice: a typo, never a wish (repeat with --seed)
                seen: set[Any] = set()
                twice = next(v for v, k in zip(values, keys) if k in seen or seen.add(k))
                raise BadInput(field, f"{twice} appears more than once in {text!r}; give each value once")
            if len(values) > limit:
                raise BadInput("sweep", f"{field.replace('_', '-')} alone lists more than {limit} values, so more "
                                        f"jobs than the limit {limit} (KLAB_MAX_SWEEP_JOBS)")
        except BadInput as exc:  # named as its flag, as the spec names it (batch_size was batch-size's name here)
            raise BadInput(exc.field if exc.field == "sweep" else field.replace("_", "-"), exc.message) from None
        if len(values) == 1:
            fixed[field] = values[0]
        else:
            swept[field] = values
    g = Grid(swept, fixed)
    if g.size > limit:
        raise BadInput("sweep", f"{g.size} jobs, more than the limit {limit} (KLAB_MAX_SWEEP_JOBS)")
    return g


def _one_number(field: str, text: Any) -> Any:
    """A sweep's bias or tol as the number it is, stored so in its params as every swept number is (they were text,
    '0.5'); anything else as given, for the job's spec to name (`none`, a list)."""
    try:
        return number(field, str(text).strip(), False)
    except BadInput:
        return text


def kernel_literal(value: Any, number: Callable[[Any], Any] = lambda v: v) -> bool:
    """One kernel as nested lists of numbers (2-D or 4-D), not kernels to sweep; its first read by `number`."""
    depth = 0
    while isinstance(value, (list, tuple)) and value:
        value, depth = value[0], depth + 1
    return depth in (2, 4) and isinstance(value := number(value), numbers.Real) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


NOT_AN_ARRAY = {
    "input": "is a name (edge:6x8, npy:PATH, image:PATH) or, from Python, a numpy array or torch tensor; not a nested "
             "list of numbers",
    "labels": "is npy:PATH or, from Python, a numpy array or torch tensor; not a nested list of numbers"}
"""What an input or labels written as nested lists of numbers are told (an array's values as lists: a sweep of its
rows was suggested, which refused each row)."""


def as_flag(field: str, value: Any, text: Callable[[Any], str] = _text) -> str:
    """A value from a sweep file or a Python call as the text of its flag: a list, tuple or range sweeps its
    items (a range of integers as A..B), but a kernel written as nested lists is one kernel; `text` writes
    one item."""
    if isinstance(value, range) and value.step == 1 and value.stop - value.start > 1:  # len() of range(10**30) raised
        return f"{value.start}..{value.stop - 1}"  # OverflowError
    if field in NOT_AN_ARRAY and isinstance(value, (list, tuple)) and kernel_literal(value):
        raise BadInput(field, NOT_AN_ARRAY[field])
    if isinstance(value, (list, tuple, range)) and not (field == "kernel" and kernel_literal(value)):
        if field in ONE_VALUE:  # an unknown field goes on, to be named as unknown by the job's spec
            raise BadInput(field.replace("_", "-"), f"takes one value, not a list; only {', '.join(SWEEPABLE)} "
                                                    "can be swept")
        items = [text(v) for v in value]
        for v, item in zip(value, items):
            _one_value(field, v, item)
        _read_back(field, list(value), items)
        return ",".join(items)
    return text(value)


def _read_back(field: str, value: list[Any], items: list[str]) -> None:
    """A list's items, joined as its flag, read back as themselves: `["[[1", "-1]]"]` was read as the one kernel
    [[1, -1]], which the file never gave (a bracket one item opens and the next closes, or a stray closing one)."""
    try:
        parts = split_list(field, ",".join(items))  # once: a list of 200,000 seeds is read in one pass
    except BadInput:  # an empty item: the grid names it as before
        return
    kept = [item.strip() for item in items]
    if parts != kept:  # the first part that differs took in the item after it
        n = next(i for i, (part, item) in enumerate(zip(parts, kept)) if part != item)
        raise BadInput(field.replace("_", "-"), f"the items {value[n]!r} and {value[n + 1]!r} would be read as one "
                                                "value (a comma inside brackets joins what is beside it): give "
                                                "each value whole")


def _one_value(field: str, value: Any, item: str) -> None:
    """An item of a list that is one value: one holding a comma outside brackets would be split again, into
    values the user never gave (`seed: ["1,2"]` swept seeds 1 and 2)."""
    if "," not in item:
        return
    try:
        one = len(split_list(field, item)) == 1
    except BadInput:  # "1,": an empty value beside a comma
        one = False
    if not one:
        raise BadInput(field.replace("_", "-"), f"the item {value!r} holds a comma, which separates a sweep's "
                                                "values: give each value as an item of its own")  # as its flag


def file_flags(doc: dict[str, Any], flags: dict[str, str]) -> dict[str, str]:
    """A sweep file's fields as flags, under the flags given: lists sweep, `kernel: null` means no true kernel,
    other nulls the default. A field a flag gives is not read from the file (`tol: [0.1, 0.2]` with --tol 0.1 was
    refused as a list of tol, which --tol replaces, as `klab run` replaces it)."""
    read = {k: NO_KERNEL if v is None else as_flag(k, v) for k, v in doc.items()
            if k not in flags and (v is not None or k == "kernel")}
    return {**read, **flags}


NAME_LENGTH = 200
"""Most characters of a sweep's name (the length of sweeps.name)."""

TAG_LENGTH = 100
"""Most characters of a sweep's tag."""


def name(given: Any) -> str | None:
    """A sweep's name as given (--name), stripped; None for no name."""
    return None if given is None else _label("name", "a sweep's name", given, NAME_LENGTH)


def _label(field: str, what: str, given: Any, most: int) -> str:
    """A sweep's name or one of its tags, stripped: text of 1 to `most` characters, on one line of printable text
    (a newline would split its row in `klab sweeps`, an escape sequence would be played by the terminal, a
    zero-width space would look like nothing)."""
    if not isinstance(given, str):
        raise BadInput(field, f"{what} is text, got {shown(given)}")
    text = given.strip()
    if not text or len(text) > most:
        raise BadInput(field, f"{what} has 1 to {most} characters, got {_shown(given)}")
    if any(unicodedata.category(c) in INVISIBLE for c in text):
        raise BadInput(field, f"{what} has no control or invisible characters, got {_shown(text)}")
    return text


def tags(given: Iterable[str] | str | None) -> list[str]:
    """A sweep's tags as given (--tag, repeatable; one text is one tag; None is none), stripped, each once, in
    order. A tag has no comma: tags are shown joined by commas, and everywhere else in klab a comma separates
    values, so `--tag a,b` would read as two tags while it made one."""
    if given is not None and not isinstance(given, str) and (not isinstance(given, Iterable) or isinstance(
            given, Mapping) or getattr(given, "ndim", 1) != 1):  # 5, a 0-d array: TypeError; a dict, a frame: keys
        raise BadInput("tag", f"tags are texts, or one text, got {shown(given)}")
    out: list[str] = []
    for tag in [given] if isinstance(given, str) else () if given is None else given:  # an array has no truth
        tag = _label("tag", "a tag", tag, TAG_LENGTH)
        if "," in tag:
            meant = " ".join(f"--tag {t.strip()}" for t in tag.split(",") if t.strip())
            raise BadInput("tag", f"a tag has no commas, got {tag!r}; give each tag its own --tag"
                                  + (f" ({meant})" if meant else ""))
        if tag not in out:
            out.append(tag)
    return out


def tag_filter(given: str | None) -> str | None:
    """A tag to select by (klab list --tag, klab sweeps --tag): one a sweep could have (an empty one, or `a,b`, was
    answered "no jobs" where --tag of klab sweep refuses it), stripped; None for none."""
    if given is not None and "," in given:  # not tags' hint, "give each tag its own --tag": a filter takes one
        raise BadInput("tag", f"a tag has no commas, got {given!r}; select by one tag")
    return None if given is None else tags([given])[0]


def _shown(value: Any, most: int = 60) -> str:
    """A value in a message: its repr, the middle of a long one left out."""
    text = repr(value)
    if len(text) <= most:
        return text
    counted = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:most // 2]}...{text[-most // 2:]}{counted}"
