"""The files a user names (an input, labels, a kernel, a job or sweep file): checked before they are read, a
text file read in the encodings editors write, and a job file's numbers and fields as read. Plain Python (no
numpy)."""
from __future__ import annotations

import codecs
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.errors import BadInput
from service.jobs.sweep import WHOLE_DIGITS
from service.settings import settings


def checked_file(field: str, raw: str) -> Path:
    """A file a user named: it exists, can be read, and is within KLAB_MAX_FILE_BYTES."""
    if not raw:
        raise BadInput(field, "missing file path")
    if "\0" in raw:  # the file system's calls raise ValueError for it
        raise BadInput(field, f"the path holds a NUL byte, which no file's name can: {raw!r}")
    try:
        path = Path(raw).expanduser()
        regular, exists = path.is_file(), path.exists()
    except (OSError, RuntimeError) as exc:  # a name too long for the file system, ~user of no user
        raise BadInput(field, f"cannot read {raw}: {getattr(exc, 'strerror', None) or exc}") from None
    if not regular:  # a directory, a device (/dev/null), nothing at all, a link to nothing or a loop of links
        if exists:
            raise BadInput(field, f"not a file: {raw}")
        try:
            path.stat()
        except FileNotFoundError:
            why = "a link to no file" if path.is_symlink() else "no such file"
            raise BadInput(field, f"{why}: {raw}") from None
        except OSError as exc:  # ELOOP: exists() says False as if there were nothing
            raise BadInput(field, f"cannot read {raw}: {exc.strerror}") from None
        raise BadInput(field, f"no such file: {raw}")  # gone between the two looks
    if not os.access(path, os.R_OK):
        raise BadInput(field, f"file is not readable: {raw}")
    size = path.stat().st_size
    limit = settings().max_file_bytes
    if size > limit:
        raise BadInput(field, f"file is {size} bytes, more than the limit {limit} (KLAB_MAX_FILE_BYTES)")
    return path


BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
        (b"\xfe\xff", "utf-16"))
"""The byte-order marks a text file may begin with, and their encodings (UTF-32-LE's begins as UTF-16-LE's)."""


def read_text(field: str, path: Path, raw: str) -> str:
    """A user's text file: UTF-8, with or without a byte-order mark (which some editors write: no JSON), or UTF-16
    or UTF-32 with one (PowerShell's `>` writes UTF-16, which was `not a readable text file`)."""
    try:
        data = path.read_bytes()
    except OSError:
        raise BadInput(field, f"{raw} is not a readable text file") from None
    encoding = next((e for b, e in BOMS if data.startswith(b)), "utf-8-sig")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:  # Latin-1 from an old editor: say where, counted in the file (utf-8-sig
        # counts from after its mark)
        at = exc.start + (len(codecs.BOM_UTF8) if encoding == "utf-8-sig" and data.startswith(codecs.BOM_UTF8) else 0)
        raise BadInput(field, f"{raw} is not {encoding.removesuffix('-sig').upper()} text (byte {data[at]:#04x} at "
                              f"offset {at}); save it as UTF-8") from None


JSON_SPACE = " \t\r\n"
"""JSON's whitespace: a JSONL line of nothing else is no job's."""


class Written(float):
    """A file's number with a fraction or an exponent, as a float that keeps the text it was written as: a whole
    number is read from that text, as its flag is (`seed: 9007199254740993.0` trained seed ...992 through the
    float, and `epochs: 7.00000000000000001` trained 7 where --epochs refuses it), and a sweep writes its items so."""

    text: str

    def __new__(cls, value: float, text: str) -> Written:
        number = super().__new__(cls, value)
        number.text = text
        return number

    @classmethod
    def read(cls, text: str) -> Written:
        """json's parse_float."""
        return cls(float(text), text)

    @classmethod
    def whole(cls, text: str) -> int | Written:
        """json's parse_int: a whole number of more digits than any field reads (WHOLE_DIGITS) kept as written, for
        its field to refuse it as its flag does (`too large`); past int()'s 4,300 digits the file was said not to
        be valid JSON."""
        return int(text) if len(text.lstrip("+-")) <= WHOLE_DIGITS else cls(float(text), text)

    def __str__(self) -> str:
        return self.text


class Twice(ValueError):
    """A file's mapping that names a field twice (or as `batch-size` and `batch_size`): JSON and YAML would keep
    the last value without a word."""


def named_once(pairs: Sequence[tuple[Any, Any]]) -> dict[Any, Any]:
    """A mapping from its (key, value) pairs, each field named once (Twice otherwise)."""
    seen: dict[Any, Any] = {}
    for key, _ in pairs:
        same = key.replace("-", "_") if isinstance(key, str) else key
        if same in seen:
            raise Twice(f"{seen[same]!r} and {key!r}" if seen[same] != key else repr(key))
        seen[same] = key
    return dict(pairs)
