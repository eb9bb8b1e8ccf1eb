"""The settings: one object built from the environment, once per process (`settings()`).

Every `KLAB_*` variable is read here and nowhere else, without the spaces around it; an empty value (or spaces)
means the default in `service.defaults` (KLAB_HOME of two spaces made a folder named so). A number that is not a
positive integer, or past what its use holds, is bad input naming the variable.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from service import defaults
from service.errors import BadInput, mask, visible


@dataclass(frozen=True)
class Settings:
    home: Path
    """KLAB_HOME: where the default SQLite database lives (default ~/.klab)."""
    database_url: str
    """KLAB_DATABASE_URL: a SQLAlchemy URL (default sqlite:///$KLAB_HOME/klab.db)."""
    broker_url: str = defaults.BROKER_URL
    """KLAB_BROKER_URL: the Celery broker."""
    max_input_elements: int = defaults.MAX_INPUT_ELEMENTS
    max_kernel_elements: int = defaults.MAX_KERNEL_ELEMENTS
    max_epochs: int = defaults.MAX_EPOCHS
    max_file_bytes: int = defaults.MAX_FILE_BYTES
    max_sweep_jobs: int = defaults.MAX_SWEEP_JOBS
    max_job_seconds: int = defaults.MAX_JOB_SECONDS
    max_job_memory: int = defaults.MAX_JOB_MEMORY
    visibility_timeout: int = defaults.VISIBILITY_TIMEOUT
    lease_seconds: int = defaults.LEASE_SECONDS
    max_attempts: int = defaults.MAX_ATTEMPTS
    stranded_seconds: int = defaults.STRANDED_SECONDS
    submit_connections: int = defaults.SUBMIT_CONNECTIONS
    torch_threads: int | None = None
    """KLAB_TORCH_THREADS: torch threads of each worker child (default: torch's own)."""

    def __repr__(self) -> str:
        """The settings as the dataclass writes them, the URLs' passwords masked: a debugger or a log shows none."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return "Settings(" + ", ".join(f"{k}={mask(v) if k.endswith('_url') else v!r}" for k, v in values) + ")"

    def is_default(self, url: str) -> bool:
        """Whether `url` is the default database (KLAB_HOME's klab.db, KLAB_DATABASE_URL unset or naming it however
        it is written: a driver, an escape, a relative path, a link), whose folder and file are made on first use;
        any other SQLite file's folder must exist."""
        path = sqlite_path(url)
        return path is not None and _real(path) == _real(self.home / "klab.db")

    def is_database(self, path: str | Path) -> bool:
        """Whether a file is the SQLite database these settings name, or its journal, WAL or shared memory, by its
        path or as the same file (a link): `klab export 1 -o ~/.klab/klab.db` replaced every job with a CSV line."""
        db = sqlite_path(self.database_url)
        if db is None:
            return False
        names = [db, *(db.with_name(db.name + suffix) for suffix in ("-journal", "-wal", "-shm"))]
        if _real(Path(path)) in {_real(n) for n in names}:
            return True
        try:
            return Path(path).exists() and any(n.exists() and os.path.samefile(path, n) for n in names)
        except OSError:  # a path that cannot be read: not the database, which klab reads
            return False

    def folder(self, *names: str) -> Path:
        """A folder in KLAB_HOME (KLAB_HOME itself with no names), made on first use."""
        folder = self.home.joinpath(*names)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a folder that cannot hold one
            file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
            why = f"{file} is a file, not a folder" if file is not None else exc.strerror
            raise BadInput("KLAB_HOME", f"cannot make the folder {folder}: {why}") from None
        return folder

    @property
    def heartbeat_seconds(self) -> float:
        """How often a worker renews the lease of the jobs it trains: a fifth of the lease."""
        return max(0.2, self.lease_seconds / 5)

    @property
    def reaper_seconds(self) -> float:
        """How often every worker looks for jobs of dead workers and for stranded queued jobs."""
        return max(0.5, min(self.lease_seconds, self.stranded_seconds) / 2)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = {k: v.strip() for k, v in (os.environ if env is None else env).items() if k.startswith("KLAB_")}
        # absolute: the arrays kept under it are named in their jobs' specs, which a relative home made true only in
        # the folder they were made in
        home = Path(os.path.abspath(Path(env.get("KLAB_HOME") or Path.home() / ".klab").expanduser()))
        fits("KLAB_HOME", str(home / "klab.db"))  # its default database's path, within the system's limits too
        url = _utf8("KLAB_DATABASE_URL", env.get("KLAB_DATABASE_URL") or "")
        numbers = {f.name: _positive(env, f"KLAB_{f.name.upper()}", f.default, MOST.get(f.name, defaults.INT32_MOST))
                   for f in fields(cls) if f.type in ("int", "int | None")}
        return cls(home=home, database_url=normalize_url(url or sqlite_url(home / "klab.db")),
                   broker_url=broker_password(_utf8("KLAB_BROKER_URL", env.get("KLAB_BROKER_URL") or "")
                                              or defaults.BROKER_URL),
                   **numbers)


SECONDS = ("max_job_seconds", "visibility_timeout", "lease_seconds", "stranded_seconds")
SECONDS_MOST = 10**9
"""The most seconds (31 years) a setting that is a time may hold: now less a lease of 10**11 seconds is before year
1, which no database or datetime holds (the reaper raised OverflowError)."""


MOST = {**dict.fromkeys(SECONDS, SECONDS_MOST), **dict.fromkeys(("max_file_bytes", "max_job_memory",
                                                                 "max_input_elements"), 2**62), "torch_threads": 1024}
"""The settings whose most is not defaults.INT32_MOST, any other's (KLAB_MAX_ATTEMPTS of 10**20 made SQLite's
reaper raise OverflowError at every look): times (SECONDS_MOST), sizes (2**62, past any machine's), and torch's
threads a worker child (1024: at 2**31 - 1 every child died in libgomp, allocating 432 GiB for them)."""


_WHOLE = re.compile(r"[-+]?[0-9]+(?:_[0-9]+)*")
"""A whole number as a setting is written: ASCII digits (and Python's single _ between two), a sign."""


def _positive(env: Mapping[str, str], name: str, default: int | None, most: int) -> int | None:
    raw = env.get(name)
    if not raw:
        return default
    shown = f"{raw[:40]!r}{'...' if len(raw) > 40 else ''}"
    if not _WHOLE.fullmatch(raw):  # int() reads any script's digits (١٠ as 10), which the flags do not
        raise BadInput(name, f"must be an integer, got {shown}")
    digits = raw.lstrip("+-").replace("_", "").lstrip("0")
    if raw.startswith("-") and digits:
        raise BadInput(name, f"must be positive, got {shown}")
    if len(digits) > 30:  # past any setting's most (a 5,000-digit one was printed whole)
        raise BadInput(name, f"at most {most}{' seconds' if most == SECONDS_MOST else ''}, got a number of "
                             f"{len(digits)} digits")
    value = int(raw)
    if value <= 0:
        raise BadInput(name, f"must be positive, got {value}")
    if value > most:
        raise BadInput(name, f"at most {most}{' seconds' if most == SECONDS_MOST else ''}, got {value}")
    return value


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read from the environment once (tests: settings.cache_clear())."""
    return Settings.from_env()


def one_at(name: str, url: str) -> str:
    """A URL whose user part ends at its one @ and holds no character a URL's user part cannot: a password holding
    an @, a / or a space of its own must write it %40, %2F or %20, or the drivers read the rest of the password as
    the host (and print it in their errors), and no pattern can tell where it ends to mask it."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()  # SQLITE:// is sqlite:// (RFC 3986): a path's @ is no user part's in either
    if (authority := rest.partition("/")[0]).count("@") > 1:
        if "?" in authority.split("@")[1]:  # no / after the host, and an @ in a parameter's value (h:5432?dbname=x@y)
            raise BadInput(name, "holds an @ in a parameter, which ends the user part of a URL: write it as %40")
        raise BadInput(name, "the password holds an @, which ends the user part of a URL: write it as %40")
    head = rest.partition("?")[0]  # an @ in a parameter's value (libpq's options=...) is not the user part's
    user = head.partition("@")[0] if "@" in head and not scheme.startswith("sqlite") else ""  # a path's @ neither
    if ":" in user and (odd := next((c for c in user if c in "/#" or c.isspace()), None)):
        which = "password" if user.index(odd) > user.index(":") else "user name"
        raise BadInput(name, f"the {which} holds {odd!r}, which a URL's user part cannot hold: write it as "
                             f"{quote(odd, safe='')}")
    return url


def _utf8(name: str, url: str) -> str:
    """A URL whose text is UTF-8, %-escapes included: a byte that is not (`\xff` in the environment, `%FF` typed)
    ended in psycopg's or kombu's UnicodeError traceback, exit 1 (the URL is not echoed: it may hold a password)."""
    try:
        unquote(url, errors="strict").encode("utf-8")  # a byte of the environment's is a surrogate here
    except UnicodeError:
        raise BadInput(name, "holds bytes that are not UTF-8, as written or %-escaped; write the URL in UTF-8"
                       ) from None
    return url


def broker_password(url: str) -> str:
    """A Redis URL's ?password=, which kombu refuses beside the password it passes itself (a TypeError after a
    submission's jobs were stored), moved into the URL's user part, which kombu and redis-py both read. A URL
    this cannot read so (a #, two passwords, a host that does not parse) is left as it is: the commands that
    reach the broker refuse it in one line (service.broker.checked_url), the others never read it."""
    if "#" in url:
        return url
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:  # a [ of an IPv6 host left open
        return url
    given = [v for k, v in query if k == "password"]
    if len(given) != 1 or parts.password is not None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    userinfo = f"{user}:{quote(given[0], safe='')}@"
    rest = urlencode([(k, v) for k, v in query if k != "password"])
    return urlunsplit((parts.scheme, userinfo + host, parts.path, rest, parts.fragment))


def normalize_url(url: str) -> str:
    """postgresql:// and postgres:// URLs go through psycopg 3; a URL of another database is refused."""
    one_at("KLAB_DATABASE_URL", url)
    scheme, sep, rest = url.partition("://")
    if sep and scheme != scheme.lower():  # a scheme is read in any case (RFC 3986): POSTGRESQL:// was no dialect
        url = scheme.lower() + sep + rest
    if scheme.split("+")[0].lower() in ("postgresql", "postgres"):
        _names_a_database(url)
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    scheme, sep, _ = url.partition("://")
    backend = scheme.split("+")[0].lower()
    if sep and backend not in ("sqlite", "postgresql"):
        raise BadInput("KLAB_DATABASE_URL", f"{backend or 'a URL of no scheme'} is not supported: kernel-lab stores "
                       "its results in SQLite (sqlite:///PATH) or PostgreSQL (postgresql://USER@HOST/DB)")
    if sep and backend == "sqlite":
        _sqlite_parameters(url)
    return url


SQLITE_DRIVER = ("uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements")
"""The parameters of a SQLite URL that SQLAlchemy hands Python's sqlite3; with ?uri=true, the others go in the URI."""


def _sqlite_parameters(url: str) -> None:
    """A SQLite URL's other parameters (`mode=ro`) are SQLite's own, read only in a `file:` URI with ?uri=true:
    without uri=true SQLAlchemy dropped them with a warning, and klab wrote to the database meant read-only; with it
    and a plain path, SQLite opened a new file named `PATH?mode=ro`, which no message named."""
    path, _, query = url.partition("://")[2].partition("/")[2].partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    names = [k for k, _ in params]
    if twice := sorted({k for k in names if names.count(k) > 1}):  # SQLAlchemy made a tuple of the values: a
        # TypeError from sqlite3 (`?timeout=5&timeout=6`)
        raise BadInput("KLAB_DATABASE_URL", f"the parameter {twice[0]!r} is given twice")
    own = sorted({k for k, _ in params if k not in SQLITE_DRIVER})
    if not own:
        return
    example = "sqlite:///file:/path/klab.db?mode=ro&uri=true"
    if not any(k == "uri" and v.strip().lower() in URI_ON for k, v in params):
        raise BadInput("KLAB_DATABASE_URL", f"SQLite's driver takes no parameter {own[0]!r}, which would be ignored: "
                                            f"SQLite's own are read in a file: URI with uri=true, as {example}")
    if not unquote(path).startswith("file:"):
        raise BadInput("KLAB_DATABASE_URL", f"with uri=true, SQLite reads {own[0]!r} only in a path that begins with "
                                            f"file: (it would open a new file named after the whole URL): {example}")


def _names_a_database(url: str) -> None:
    """A PostgreSQL URL names its database once: after the host, as ?dbname= or by a ?service= of libpq's service
    file. Without one libpq took PGDATABASE's or the user's own (`postgres`), which every message named as "" and
    `klab db upgrade` would have filled; with two (a ?dbname= beside the name after the host, or twice) libpq took
    one and every message named the other. An @ after the host that SQLAlchemy reads as a user part's end is refused
    too (`h:5432/db?options=x@y` was user h of host y: klab's writes went there, its reads to h), a # after the
    host (`h/#x`, `h?dbname=a#b`: the database `#x` or `a#b`, which messages named otherwise), and a host or port
    given twice (`h:5432/db?port=1`: libpq reached port 1, messages named 5432; ?hostaddr= twice likewise). A NUL
    byte (%00) in what SQLAlchemy decodes (the user part, the name, a parameter) ended libpq's connection string
    there: `HOST/%00x` reached the database named as the OS user, as that user, where `klab db upgrade` wrote its
    schema while saying it upgraded `\x00x`."""
    rest = url.partition("://")[2]
    user, slash = _USER_PART.match(rest), rest.find("/")  # one_at refused a / in the user part: past the host
    if user and -1 < slash < user.end():
        raise BadInput("KLAB_DATABASE_URL", "holds an @ after the host (in the database's name or a parameter), "
                                            "which SQLAlchemy reads as the end of a user name and password, and its "
                                            "host as what follows: write it as %40")
    rest = rest[user.end():] if user else rest  # as SQLAlchemy reads it: a password may hold ?
    if "#" in rest:
        raise BadInput("KLAB_DATABASE_URL", "holds a # after the host, which ends a URL: write it as %23")
    path, _, query = rest.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    netloc, keys = path.partition("/")[0], [k for k, _ in pairs]
    read = [unquote(user.group()) if user else "", unquote(path.partition("/")[2]), *keys,  # as SQLAlchemy reads them
            *(v for _, v in pairs)]  # (a host's %00 is no NUL, it is not read)
    if any("\0" in part for part in read):
        raise BadInput("KLAB_DATABASE_URL", "holds a NUL byte (%00), where libpq's connection string ends: what "
                                            "follows it would be dropped, and another database reached")
    port = None if netloc.endswith("]") else re.search(r":[0-9]+$", netloc)  # an IPv6 host's : are no port's
    for key, given in (("host", bool(netloc[: port.start()] if port else netloc)), ("port", port is not None),
                       ("hostaddr", False)):
        if given + keys.count(key) > 1:  # libpq took the parameter's (the last), every message named the other
            where = f"as ?{key}= twice" if key == "hostaddr" else \
                f"before the /NAME and as ?{key}=, or as ?{key}= twice"  # a hostaddr has no place before /NAME
            several = "?hostaddr=a1,a2" if key == "hostaddr" else "?host=h1,h2&port=p1,p2"
            raise BadInput("KLAB_DATABASE_URL", f"names its {key} twice ({where}): give it once (several hosts go "
                                                f"in one, comma-separated: {several})")
    name = unquote(path.partition("/")[2])
    if name and not name.strip():
        raise BadInput("KLAB_DATABASE_URL", f"the database's name after the host is blank: {name!r}")
    given = [v for k, v in pairs if k == "dbname"]
    if bool(name) + len(given) > 1:
        raise BadInput("KLAB_DATABASE_URL", "names its database twice (after the host, or as ?dbname=): give it once"
                       if all(v.strip() for v in given) else "holds an empty ?dbname=: leave it out")
    if not name and not any(v.strip() for k, v in parse_qsl(query) if k in ("dbname", "service")):
        raise BadInput("KLAB_DATABASE_URL", "names no database: give its name after the host, as in "
                                            "postgresql://USER@HOST:5432/NAME")


_USER_PART = re.compile(r"^[^:/]*(?::[^@]*)?@")
"""A URL's user name and password, as SQLAlchemy's URL pattern reads them."""


URI_ON = ("true", "yes", "on", "y", "t", "1")
"""The values of `?uri=` that make SQLAlchemy open a SQLite URL's `file:` name as a URI (its asbool's)."""


def sqlite_url(path: Path) -> str:
    """The SQLite URL of a file, its path escaped where a URL reads it otherwise: a KLAB_HOME holding `?` was read as
    the URL's parameters (`SQLite's driver takes no parameter 'q/klab.db'`), one holding `%41` as `A` (another
    folder), neither set by the user. sqlite_path reads it back."""
    return "sqlite:///" + str(path).replace("%", "%25").replace("?", "%3F")


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names (its escapes read, its query left out), a `file:` URI's too (`?uri=true`: the
    path after `file:`; without it, SQLite opens a file named `file:...`); None for another database, and for
    SQLite in memory."""
    scheme, sep, rest = url.partition("://")
    path, _, query = rest.partition("/")[2].partition("?")
    path = unquote(path)
    options = dict(parse_qsl(query))
    if path.startswith("file:") and options.get("uri", "").strip().lower() in URI_ON:  # as SQLite reads a URI
        if options.get("mode") == "memory":
            return None
        path = unquote(urlsplit(path).path)  # file:/a/b.db, file:///a/b.db, file:b.db
    if not sep or not scheme.lower().startswith("sqlite") or path in ("", ":memory:"):
        return None
    if "\0" in path:  # os and sqlite3 alike raised ValueError: a traceback
        raise BadInput("KLAB_DATABASE_URL", f"the sqlite database's path holds a NUL byte: {visible(path)}")
    fits("KLAB_DATABASE_URL", path)
    return Path(path)


NAME_MOST, PATH_MOST = 255, 4095
"""The most bytes of a file's name, and of a whole path, that Linux's file systems take (NAME_MAX, PATH_MAX)."""


def fits(name: str, path: str) -> None:
    """A path the system can name, or one line naming its setting: past NAME_MOST or PATH_MOST, Path.exists() and
    is_dir() raise OSError's "File name too long", a traceback from every command."""
    size = _bytes(path)
    long = next((p for p in Path(path).parts if _bytes(p) > NAME_MOST), None)
    if long is not None:
        raise BadInput(name, f"a name in the path is longer than {NAME_MOST} bytes, more than a file system holds: "
                             f"{visible(long[:40])}...")
    if size > PATH_MOST:
        raise BadInput(name, f"the path {'of its klab.db ' if name == 'KLAB_HOME' else ''}is {size} bytes long, more "
                             f"than the system's most, {PATH_MOST}")


def _bytes(text: str) -> int:
    """A path's length as the system counts it: a byte that is not UTF-8 (read as one surrogate) is one byte."""
    try:
        return len(os.fsencode(text))
    except UnicodeEncodeError:  # a surrogate no byte was read as: written as UTF-8 would write it
        return len(text.encode("utf-8", "surrogatepass"))


def _real(path: Path) -> str:
    """A path as the file it reaches: made absolute by its text first, as SQLAlchemy opens a relative one (so `..`
    after a link is the link's folder's parent), then its links followed."""
    return os.path.realpath(os.path.abspath(path))


def describe(url: str) -> str:
    """Where a database URL points, for messages: host and database, never the password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return visible(mask(url))
    backend = scheme.split("+")[0].lower()
    if backend == "sqlite":
        path = rest.partition("/")[2].partition("?")[0]
        return f"sqlite database {visible(unquote(path)) or ':memory:'}"
    try:
        parts = urlsplit(f"{scheme}://{_USER_PART.sub('', rest, count=1)}")  # a password's ? is no query's
        query = parse_qs(parts.query)  # libpq also takes ?host=...&port=...
        host = unquote(parts.hostname or "") or query.get("host", [None])[0]  # a socket's folder, %2F-escaped too
        port = parts.port if parts.port is not None else query.get("port", [5432])[0]  # port 0 is 0, not 5432
    except ValueError:  # a port that is not a number
        return visible(mask(url))
    name = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0]
    at = f" (hostaddr {query['hostaddr'][0]})" if query.get("hostaddr") else ""  # where libpq connects, host or none
    return visible(f"{backend} database {name} on {host or 'localhost'}:{port}{at}")
