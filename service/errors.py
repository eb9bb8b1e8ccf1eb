"""What can go wrong that a user must read: their mistakes, and services out of reach. Each is one line,
with any password in it masked."""
from __future__ import annotations

import re
import unicodedata
from typing import Any

_PASSWORD = re.compile(r"(?P<pre>(?:[a-z][a-z0-9+.\-]*(?::/{1,2}|//)|(?:rediss?|postgres(?:ql)?(?:\+\w+)?):)"
                       r"[^:/@\s]*:)(?P<pw>\S*)(?P<at>@)", re.IGNORECASE)
"""user:password@ in a URL, up to the last @ before a space (a password may hold an @ or a / not escaped); after a
scheme mistyped too (`redis:/:pw@`, `postgresql//u:pw@`, `postgresql:u:pw@`: refused as no URL, and printed whole),
but not any `word:a:b@c` (a time in a path, `image:a:b@c.png`)."""
_QUERY_PASSWORD = re.compile(r"(?P<pre>(?:^|[?&\s])[\w.-]*(?:passw(?:or)?d|pwd|secret|token)[\w.-]*\s*=\s*)"
                             r"(?:'(?:[^'\\]|\\.)*'?|[^&\s]*)", re.IGNORECASE)
"""A secret given as a URL's parameter or in a libpq keyword string (host=h password=pw): libpq's ?password= and
?sslpassword=, redis-py's ?password= and ?ssl_keyfile_password=, any parameter named for a password, a secret or a
token; its value up to the next & or space (a ; is part of a password), or quoted."""


class BadInput(ValueError):
    """A user's mistake: reported as one line naming the field, exit code 2."""

    exit_code = 2

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached (exit code 3) or is not at head (exit code 2): one line."""

    def __init__(self, message: str, exit_code: int = 3):
        super().__init__(message)
        self.exit_code = exit_code


class UpgradeRefused(DatabaseUnavailable):
    """The database refused an upgrade (a table of another application's in the way, a read-only server): one line,
    exit code 3, but no wait mends it (service.db.connect.out_of_reach: a worker stops, it does not retry)."""


class BrokerUnavailable(RuntimeError):
    """The broker cannot be reached: one line naming it, exit code 3."""

    exit_code = 3


class Gone(RuntimeError):
    """What a command was storing was deleted meanwhile, from another shell (klab delete): one line, exit code 1."""

    exit_code = 1


class Interrupted(RuntimeError):
    """The user pressed Ctrl-C while waiting: one line saying what goes on, exit code 130."""

    exit_code = 130


def mask(text: str) -> str:
    """Any URL's password replaced by ***, in its user part or its parameters."""
    text = _PASSWORD.sub(lambda m: f"{m['pre']}***{m['at']}", str(text))
    return _QUERY_PASSWORD.sub(lambda m: f"{m['pre']}***", text)


INVISIBLE = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
"""Unicode categories a terminal plays, hides or cannot write rather than shows: control characters (a newline, the
ESC of an escape sequence), format characters (bidi overrides, zero-width spaces), surrogates (bytes of a file name
that are not UTF-8) and line and paragraph separators."""


def surrogate(text: str) -> str | None:
    """The first lone surrogate in a text, or None: a byte of an argument that is not UTF-8 (Python's
    surrogateescape), or a file's JSON "\ud800"; no file name or database takes it."""
    if text.isascii():
        return None
    return next((c for c in text if unicodedata.category(c) == "Cs"), None)


def visible(text: str) -> str:
    """Text as a terminal should show it: each INVISIBLE character as Python writes it in a literal (\\n, \\x1b,
    \\u202e), so that a path, a value or a message stays on its line and shows what it holds."""
    if text.isprintable():
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in INVISIBLE else c for c in text)


def shown(value: Any) -> str:
    """A value as a one-line message names it: an array, a Series or a frame (whose repr spans lines) by its type and
    shape, anything else by its repr, on one line and cut at 80 characters."""
    shape, name = getattr(value, "shape", None), type(value).__name__
    if isinstance(shape, tuple) and shape != ():  # torch's Size too, written as a tuple
        return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name} of shape {tuple(shape)}"
    text = visible(repr(value))
    return text if len(text) <= 80 else f"{text[:77]}..."


def out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: numpy's MemoryError, or torch's allocator's RuntimeError (`DefaultCPUAllocator:
    can't allocate memory`, CUDA's `out of memory`)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def one_line(exc: BaseException) -> str:
    """An exception as the first line of its message (its type's name if it has none), passwords masked."""
    text = str(exc).strip()
    return mask(text.splitlines()[0] if text else type(exc).__name__)
