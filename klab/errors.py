"""The API's edge: a user's mistake is raised from the call that was made, as klab.BadInput, one line naming the
field as the `klab` command prints it."""
from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from service import errors

F = TypeVar("F", bound=Callable[..., Any])


class BadInput(errors.BadInput):
    """A user's mistake, one line naming the field (`.field`, `.message`); a service.errors.BadInput too."""

    __module__ = "klab"  # tracebacks end `klab.BadInput: lr: ...`, the name users catch


class NoWorker(UserWarning):
    """Jobs were sent to a queue that no live worker of their database consumes: they wait there until one starts
    (what `klab submit` prints as `klab: warning: ...`)."""

    __module__ = "klab"


def public(func: F) -> F:
    """An API function: its mistakes are raised from here, not from deep inside service/ or the engine; a keyword
    it has not is one too (klab.run(foo=1) was Python's TypeError where klab.submit(foo=1) named the field), and one
    spelled with dashes is read as with underscores, as job files read it (klab.run(**{"batch-size": 2}))."""
    signature = inspect.signature(func)
    takes = [n for n, p in signature.parameters.items() if n != "self" and p.kind is not p.VAR_KEYWORD]
    loose = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        if loose:  # klab.submit, sweep, jobs: the job fields or filters they read themselves, and keywords of their
            # own, which a slip (locl=True, batch-jobs=2) made "an unknown field" with a job field's suggestion
            own = {k: k.replace("-", "_") for k in kwargs if k not in takes and k.replace("-", "_") in takes}
            if twice := [k for k in own if own[k] in kwargs]:
                raise BadInput(own[twice[0]], f"given twice ({own[twice[0]]} and {twice[0]}); give it once")
            kwargs = {own.get(k, k): v for k, v in kwargs.items()}
            for k in kwargs:
                close = difflib.get_close_matches(k, takes, 1, 0.7)  # tgas: tags (0.75; 0.8 named no keyword)
                if k not in takes and close and k.replace("-", "_") not in _named_elsewhere():
                    raise BadInput(k, f"{func.__name__}() takes no such keyword; did you mean {close[0]}?")
        if not loose:  # (one that takes any keyword reads its job fields so itself: klab.submit, klab.sweep)
            from klab.values import spelled

            if unknown := [k for k in kwargs if k.replace("-", "_") not in takes]:  # named as typed
                close = difflib.get_close_matches(unknown[0], takes, 1)
                hint = f"did you mean {close[0]}?" if close else f"it takes {', '.join(takes) or 'none'}"
                raise BadInput(unknown[0], f"{func.__name__}() takes no such keyword; {hint}")
            try:
                kwargs = spelled(kwargs)  # batch-size and batch_size both given: refused, as submit refuses them
            except errors.BadInput as exc:
                raise BadInput(exc.field, exc.message) from None
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:  # too many positional values, a keyword given twice, one missing
            raise BadInput(func.__name__, f"{exc} (it takes {', '.join(takes) or 'none'})") from None
        try:
            return func(*args, **kwargs)
        except errors.BadInput as exc:
            raise BadInput(_keyword(exc.field, takes), _in_python(exc.message)) from None

    return call  # type: ignore[return-value]


@functools.cache
def _named_elsewhere() -> frozenset[str]:
    """What a function that takes any keyword may be given besides its own: a job's fields, a job's columns."""
    from service.jobs import result
    from service.jobs.spec import JobSpec

    return frozenset(JobSpec.model_fields) | frozenset(result.SUMMARY_NAMES)


KEYWORDS = {"tag": "tags"}
"""Fields the command names by its flag (--tag, given once a tag) and the call by its keyword (tags=[...])."""


def _keyword(field: str, takes: list[str]) -> str:
    """A field as the call's keyword names it: batch_size, not the command's batch-size; tags, not tag, where the
    call takes tags (klab.jobs(tag="x"), a filter no column has, is told of tag, as typed)."""
    from service.jobs.spec import JobSpec

    if field.replace("-", "_") in JobSpec.model_fields:
        return field.replace("-", "_")
    return KEYWORDS[field] if KEYWORDS.get(field) in takes else field


FLAGS = (
    ("or labels with --labels", "or labels (labels=...)"),
    ("or --sweep", "or a sweep (sweep=...)"),
    ("a --device cuda job", 'a device="cuda" job'),
    ("--queue gpu", 'queue="gpu"'),
    ("leave --queue out", "leave queue out"),
)
"""Words of the command's messages that name its flags, as a Python call names the same (klab.run's keywords)."""


def _in_python(message: str) -> str:
    """A message as the API's user reads it: the call to make where the command's line names a command, keywords
    where it names flags (`--tag a --tag b`: tags=['a', 'b'])."""
    from service.jobs.sweep import SWEEP_HINT

    message = message.replace(SWEEP_HINT, "several values make a sweep: klab.sweep(...)")
    for flag, keyword in FLAGS:
        message = message.replace(flag, keyword)
    return re.sub(r"give each tag its own --tag(?: \(((?:--tag [^ )]+ ?)+)\))?",
                  lambda m: "give them as a list" + (f" (tags={re.findall(r'--tag ([^ )]+)', m[1] or '')})"
                                                     if m[1] else ""), message)
