"""The documented defaults are the code's, and each limit holds at its edge: read the README's numbers
independently of service/defaults.py, then try one past each limit and the limit itself."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from harness import ROOT

from service.errors import BadInput
from service.settings import Settings

README = (ROOT / "README.md").read_text()


def documented(variable: str) -> str:
    """The default column of the README's Configuration row for `variable`."""
    row = re.search(rf"^\| `{variable}` \| ([^|]+) \|", README, re.M)
    assert row, variable
    return row.group(1).strip().strip("`")


DEFAULTS = {  # the README's words, and what they mean
    "KLAB_MAX_FILE_BYTES": ("268435456", 256 * 2**20),
    "KLAB_MAX_SWEEP_JOBS": ("200000", 200_000),
    "KLAB_MAX_JOB_SECONDS": ("21600", 6 * 3600),
    "KLAB_VISIBILITY_TIMEOUT": ("3600", 3600),
    "KLAB_LEASE_SECONDS": ("60", 60),
    "KLAB_STRANDED_SECONDS": ("60", 60),
    "KLAB_MAX_ATTEMPTS": ("5", 5),
    "KLAB_MAX_EPOCHS": ("100000", 100_000),
    "KLAB_MAX_INPUT_ELEMENTS": ("16777216", 4096 * 4096),
    "KLAB_MAX_KERNEL_ELEMENTS": ("4096", 64 * 64),
    "KLAB_MAX_JOB_MEMORY": ("2147483648", 2 * 2**30),
    "KLAB_BROKER_URL": ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    "KLAB_SUBMIT_CONNECTIONS": ("4", 4),
}


@pytest.mark.parametrize("variable", sorted(DEFAULTS))
def test_the_readme_default_is_the_code_default(variable):
    words, value = DEFAULTS[variable]
    assert documented(variable) == words
    assert getattr(Settings.from_env({}), variable.removeprefix("KLAB_").lower()) == value


@pytest.mark.parametrize("variable", ["KLAB_LEASE_SECONDS", "KLAB_STRANDED_SECONDS", "KLAB_VISIBILITY_TIMEOUT",
                                      "KLAB_MAX_JOB_SECONDS"])
def test_a_time_past_any_date_is_refused_naming_its_variable(variable):
    """now less 10**11 seconds is before year 1: the reaper raised OverflowError on such a lease."""
    assert getattr(Settings.from_env({variable: "1000000000"}), variable.removeprefix("KLAB_").lower()) == 10**9
    with pytest.raises(BadInput, match=f"^{variable}: at most 1000000000 seconds, got 100000000000$"):
        Settings.from_env({variable: "100000000000"})


@pytest.mark.parametrize("variable,most", [("KLAB_MAX_ATTEMPTS", 2**31 - 1), ("KLAB_TORCH_THREADS", 1024),
                                           ("KLAB_MAX_EPOCHS", 2**31 - 1), ("KLAB_MAX_JOB_MEMORY", 2**62)])
def test_a_number_past_what_its_use_holds_is_refused_naming_its_variable(variable, most):
    """KLAB_MAX_ATTEMPTS of 10**20 made SQLite's reaper raise OverflowError at every look (dead workers' jobs were
    never taken back), KLAB_TORCH_THREADS torch's set_num_threads in every worker child."""
    assert getattr(Settings.from_env({variable: str(most)}), variable.removeprefix("KLAB_").lower()) == most
    with pytest.raises(BadInput, match=f"^{variable}: at most {most}, got {most + 1}$"):
        Settings.from_env({variable: str(most + 1)})


@pytest.mark.parametrize("variable,url", [
    ("KLAB_DATABASE_URL", "postgresql://postgres:pw\udcffx@127.0.0.1:5432/db"),  # a byte of the environment's
    ("KLAB_DATABASE_URL", "postgresql://postgres:pw%FFx@127.0.0.1:5432/db"),  # typed, %-escaped
    ("KLAB_DATABASE_URL", "sqlite:////tmp/k%FF.db"),
    ("KLAB_BROKER_URL", "redis://127.0.0.1:6379/0?password=\udcffx"),
])
def test_a_url_of_bytes_that_are_not_utf8_is_one_line_naming_its_variable(variable, url):
    """They ended in psycopg's or kombu's UnicodeError traceback, exit 1; the line does not echo the URL (its
    password)."""
    with pytest.raises(BadInput) as caught:
        Settings.from_env({variable: url})
    assert str(caught.value) == (f"{variable}: holds bytes that are not UTF-8, as written or %-escaped; write the URL "
                                 "in UTF-8")
    assert Settings.from_env({variable: url.replace("\udcff", "%C3%A9").replace("%FF", "%C3%A9")})  # é: UTF-8


def test_epochs_past_any_limit_name_the_limit(setenv):
    from service.jobs.spec import JobSpec

    setenv(KLAB_MAX_EPOCHS=str(2**31 - 1))
    with pytest.raises(BadInput, match=r"^epochs: .*2147483648 is more than the limit 2147483647 \(KLAB_MAX_EPOCHS\)"):
        JobSpec.parse({"epochs": 2**31})  # said 'less than or equal to 2147483647', naming no variable


def test_a_value_of_spaces_is_the_default_and_spaces_around_a_value_are_not_part_of_it(tmp_path):
    spaced = Settings.from_env({"KLAB_HOME": "  ", "KLAB_LEASE_SECONDS": " ", "KLAB_MAX_ATTEMPTS": " 7 ",
                                "KLAB_BROKER_URL": " redis://h:1/2 "})
    default = Settings.from_env({})
    assert (spaced.home, spaced.lease_seconds) == (default.home, default.lease_seconds)  # were ./'  ', and refused
    assert (spaced.max_attempts, spaced.broker_url) == (7, "redis://h:1/2")


def test_a_user_name_holding_what_a_url_cannot_is_named_as_the_user_name():
    with pytest.raises(BadInput, match="^KLAB_DATABASE_URL: the user name holds ' ', which a URL's user part cannot "
                                       "hold: write it as %20$"):
        Settings.from_env({"KLAB_DATABASE_URL": "postgresql://us er:pw@h/db"})  # was 'the password holds'


def test_a_sqlite_path_may_hold_a_colon_and_an_at():
    url = "sqlite:////tmp/a:b/x@y/klab.db"  # was refused as a password holding a /
    assert Settings.from_env({"KLAB_DATABASE_URL": url}).database_url == url


def test_the_broker_keeps_an_unacknowledged_message_for_the_visibility_timeout(setenv):
    from service.broker import celery_config

    assert celery_config("redis://x")["broker_transport_options"] == {"visibility_timeout": 3600,
                                                                       "socket_timeout": 10}  # a reply's longest wait
    setenv(KLAB_VISIBILITY_TIMEOUT="7200")
    assert celery_config("redis://x")["broker_transport_options"]["visibility_timeout"] == 7200


def test_a_file_of_the_limit_is_read_and_one_byte_more_is_refused(tmp_path, setenv):
    from service.jobs.inputs import checked_file

    setenv(KLAB_MAX_FILE_BYTES=None)
    edge = tmp_path / "edge.npy"
    with edge.open("wb") as f:  # sparse: 256 MiB on paper, nothing on disk
        f.truncate(256 * 2**20)
    assert checked_file("input", f"npy:{edge}".removeprefix("npy:")) == edge
    with edge.open("ab") as f:
        f.truncate(256 * 2**20 + 1)
    with pytest.raises(BadInput, match=r"268435457 bytes, more than the limit 268435456 \(KLAB_MAX_FILE_BYTES\)"):
        checked_file("input", str(edge))


def test_a_sweep_of_the_limit_is_planned_and_one_job_more_is_refused(setenv):
    from service.jobs.sweep import grid

    setenv(KLAB_MAX_SWEEP_JOBS=None)
    assert grid({"seed": "0..199999"}).size == 200_000
    assert grid({"seed": "0..99999", "lr": "0.1,0.2"}).size == 200_000
    with pytest.raises(BadInput, match=r"more than the limit 200000 \(KLAB_MAX_SWEEP_JOBS\)"):
        grid({"seed": "0..200000"})
    with pytest.raises(BadInput, match=r"200001 jobs, more than the limit 200000"):
        grid({"seed": "0..66666", "lr": "0.1,0.2,0.3"})


def test_epochs_and_arrays_at_their_limits(setenv):
    from service.jobs.problem import build_problem
    from service.jobs.spec import JobSpec

    setenv(KLAB_MAX_EPOCHS=None, KLAB_MAX_INPUT_ELEMENTS=None, KLAB_MAX_KERNEL_ELEMENTS=None)
    assert JobSpec.parse({"epochs": 100_000}).epochs == 100_000
    with pytest.raises(BadInput, match=r"^epochs: .*100001 is more than the limit 100000 \(KLAB_MAX_EPOCHS\)"):
        JobSpec.parse({"epochs": 100_001})
    kernel = np.ones((64, 64))
    assert build_problem(JobSpec.parse({"input": "ones:70x70", "kernel": kernel.tolist()})).x.shape == (1, 1, 70, 70)
    with pytest.raises(BadInput, match=r"^kernel: has 4097 elements, more than the limit 4096 \(KLAB_MAX_KERNEL_"):
        build_problem(JobSpec.parse({"input": "ones:70x70", "kernel": np.ones((1, 4097)).tolist()}))
    from service.jobs.inputs import parse_input

    assert parse_input("ones:4096x4096", 0)[0].size == 16_777_216  # (training it also needs the memory for it)
    with pytest.raises(BadInput, match=r"^input: has 16781312 elements, more than the limit 16777216 \(KLAB_MAX_I"):
        parse_input("ones:4097x4096", 0)


def test_a_database_named_with_a_newline_or_an_escape_is_described_on_one_line():
    """`klab db current` and `klab workers` print where a URL points: a name written %0A or %1B was printed raw."""
    from service.settings import describe

    assert describe("postgresql+psycopg://u:pw@h:5/na%0Ame%1B[2J") == \
        "postgresql database na\\nme\\x1b[2J on h:5"
    assert describe("sqlite:////tmp/a%0Ab.db") == "sqlite database /tmp/a\\nb.db"


@pytest.mark.parametrize("url,path", [
    ("sqlite:////tmp/a.db", "/tmp/a.db"), ("sqlite+pysqlite:////tmp/a.db?timeout=5", "/tmp/a.db"),
    ("sqlite:////tmp/a%20b.db", "/tmp/a b.db"), ("sqlite:///rel.db", "rel.db"),
    ("sqlite:///file:x.db", "file:x.db"),  # a file of that name, as SQLite opens it without uri=true
    ("sqlite:///file:x.db?uri=true", "x.db"), ("sqlite:///file:/tmp/x.db?mode=ro&uri=1", "/tmp/x.db"),  # a URI:
    ("sqlite:///file:///tmp/x%20y.db?uri=yes", "/tmp/x y.db"),  # its path, `uri` read as SQLAlchemy reads it
    ("sqlite:///file:/tmp/x.db?uri=%20TRUE", "/tmp/x.db"),  # spaces and case too
    ("sqlite:///file:x.db?uri=false", "file:x.db"), ("sqlite:///file::memory:?uri=true", None),
    ("sqlite:///file:x.db?mode=memory&uri=true", None), ("sqlite://", None), ("sqlite:///:memory:", None),
    ("postgresql://h/db", None),
])
def test_a_sqlite_url_names_the_file_sqlite_opens(url, path):
    from service.settings import sqlite_path

    assert sqlite_path(url) == (None if path is None else Path(path))


def test_a_postgresql_url_that_names_no_database_is_refused(tmp_path, pg_url):
    """postgresql://HOST:5432/ took libpq's default database (PGDATABASE's, or the user's own: `postgres`), which
    every message named as "" (`run: klab db upgrade` would have filled it)."""
    from harness import clean_env, klab

    from service.settings import describe, normalize_url

    base = pg_url.rpartition("/")[0]
    name = pg_url.rpartition("/")[2]
    for url in (f"{base}/", base, f"{base}/?sslmode=disable", f"{base}/?dbname=", "postgres://h", "POSTGRESQL://h/",
                "postgresql+psycopg:///?host=/tmp"):
        with pytest.raises(BadInput, match="^KLAB_DATABASE_URL: names no database: give its name after the host, as "
                                           r"in postgresql://USER@HOST:5432/NAME$"):
            normalize_url(url)
    out = klab(clean_env(tmp_path / "home", f"{base}/", PGDATABASE=name), "db", "current")
    assert (out.returncode, out.stdout) == (2, "") and len(out.stderr.splitlines()) == 1, out.stderr
    given = klab(clean_env(tmp_path / "home", f"{base}/?dbname={name}"), "db", "current")
    assert given.returncode == 0 and given.stdout.startswith(f"postgresql database {name} on "), given
    assert describe("postgresql://u@h/?dbname=x") == "postgresql database x on h:5432"
    assert describe("postgresql://u@h/x?hostaddr=10.0.0.9") == "postgresql database x on h:5432 (hostaddr 10.0.0.9)"
    with pytest.raises(BadInput, match=r"^KLAB_DATABASE_URL: names its hostaddr twice "):  # libpq took the last,
        normalize_url("postgresql://u@h/x?hostaddr=10.0.0.1&hostaddr=10.0.0.2")  # messages named the first
    assert normalize_url("postgresql://u@h/?service=klab").endswith("?service=klab")  # its file may name one
    for url, says in ((f"{pg_url}?port=1", "names its port twice (before the /NAME and as ?port=, or as ?port= "
                                           "twice): give it once (several hosts go in one, comma-separated: "
                                           "?host=h1,h2&port=p1,p2)"),
                      # libpq reached port 1, messages named 5432
                      (f"{pg_url}?host=127.0.0.2", "names its host twice (before the /NAME and as ?host=, or as "
                                                   "?host= twice): give it once (several hosts go in one, "
                                                   "comma-separated: ?host=h1,h2&port=p1,p2)"),
                      (f"{base.rpartition(':')[0]}/{name}?port=1&port=2", "names its port twice (before the /NAME "
                                                                          "and as ?port=, or as ?port= twice): give "
                                                                          "it once (several hosts go in one, comma-"
                                                                          "separated: ?host=h1,h2&port=p1,p2)"),
                      (f"{pg_url}?dbname=other", "names its database twice (after the host, or as ?dbname=): give "
                                                 "it once"),  # libpq took the other, every message named this one
                      (f"{base}/?dbname=a&dbname=b", "names its database twice (after the host, or as ?dbname=): "
                                                     "give it once"),  # libpq took b, messages named a
                      (f"{pg_url}?dbname=", "holds an empty ?dbname=: leave it out"),  # libpq's reads: `postgres`
                      (f"{base}/%20?dbname={name}", "the database's name after the host is blank: ' '"),
                      (f"{base}/#x", "holds a # after the host, which ends a URL: write it as %23"),  # the
                      # database `#x`, named as none
                      (f"{base}?dbname={name}#b", "holds a # after the host, which ends a URL: write it as %23"),
                      (f"{pg_url}?application_name=x@y", "holds an @ after the host (in the database's name or a "
                                                         "parameter), which SQLAlchemy reads as the end of a user "
                                                         "name and password, and its host as what follows: write it "
                                                         "as %40")):  # with a port: SQLAlchemy's user of host y
        with pytest.raises(BadInput, match=f"^KLAB_DATABASE_URL: {re.escape(says)}$"):
            normalize_url(url)
    with pytest.raises(BadInput, match="^KLAB_DATABASE_URL: holds an @ in a parameter, which ends the user part of "
                                       "a URL: write it as %40$"):  # no / after the host: was "the password holds"
        normalize_url(f"{base}?dbname={name}@x")
    assert normalize_url("postgresql://u@h/db?sslrootcert=/a@b").endswith("/db?sslrootcert=/a@b")  # read right: no :
    # before it, SQLAlchemy's user part ends at the first @
    asked = "postgresql://u:pa?ss@h:6543/db"  # a password's ?, which SQLAlchemy reads as the password's: no query
    assert normalize_url(asked).endswith("@h:6543/db") and describe(asked) == "postgresql database db on h:6543"


def test_a_database_url_its_driver_refuses_is_the_users_mistake_named_by_its_variable(tmp_path, pg_url):
    """?sslmode=bogus and ?bogusparam=1 were 'cannot reach the database', exit 3; postgresql+psycopg2:// and
    POSTGRESQL:// named no variable (the latter: "Can't load plugin"); a socket's %2F-escaped folder was shown so."""
    from harness import clean_env, klab

    for query, says in (("sslmode=bogus", 'invalid sslmode value: "bogus"'),
                        ("bogusparam=1", 'invalid connection option "bogusparam"'),
                        ("client_encoding=bogus", 'invalid value for parameter "client_encoding": "bogus"')):  # the
        # server's word, not libpq's
        out = klab(clean_env(tmp_path / "home", f"{pg_url}?{query}"), "list")
        assert out.returncode == 2 and out.stderr.startswith("klab: error: KLAB_DATABASE_URL: ") and \
            out.stderr.rstrip().endswith(says), out.stderr
    psycopg2 = klab(clean_env(tmp_path / "home", pg_url.replace("postgresql+psycopg://", "postgresql+psycopg2://")),
                    "list")
    assert psycopg2.returncode == 2 and psycopg2.stderr.startswith("klab: error: KLAB_DATABASE_URL: cannot use ")
    upper = pg_url.replace("postgresql+psycopg://", "POSTGRESQL://")
    assert klab(clean_env(tmp_path / "home", upper), "db", "current").returncode == 0
    odd = tmp_path / "a:b c@d"  # a path's @, read as a user part's under SQLITE:// alone
    odd.mkdir()
    assert klab(clean_env(tmp_path / "home", f"SQLITE:///{odd / 'k.db'}"), "db", "upgrade").returncode == 0
    for driver in ("sqlite+bogus", "sqlite+aiosqlite"):  # a traceback
        out = klab(clean_env(tmp_path / "home", f"{driver}:///{tmp_path / 'k.db'}"), "run", "--epochs", "1")
        assert out.returncode == 2 and out.stderr.startswith("klab: error: KLAB_DATABASE_URL: cannot use ") and \
            len(out.stderr.splitlines()) == 1, out.stderr
    from service.settings import describe

    assert describe("postgresql://u@%2Fvar%2Frun%2Fpostgresql/db") == \
        "postgresql database db on /var/run/postgresql:5432"


@pytest.mark.parametrize("name", ["h?q", "new%41", "h%20space", "plain"])
def test_the_default_database_is_klab_db_in_klab_home_whatever_its_name_holds(tmp_path, name):
    """KLAB_HOME went into the default SQLite URL unescaped: `h?q` was read as a parameter (`SQLite's driver takes no
    parameter 'q/klab.db'`, of a KLAB_DATABASE_URL nobody set), `new%41` as the folder newA, `h%20space` as another
    folder, `h space`, whose database took the jobs."""
    from service.settings import sqlite_path

    settings = Settings.from_env({"KLAB_HOME": str(tmp_path / name)})
    assert sqlite_path(settings.database_url) == tmp_path / name / "klab.db"


def test_a_relative_klab_home_is_made_absolute(tmp_path, monkeypatch):
    """The arrays kept under it are named in their jobs' specs: `npy:relhome/arrays/...` held only in the folder the
    job was made in."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"KLAB_HOME": "relhome"})
    assert settings.home == tmp_path / "relhome" and settings.home.is_absolute()


def test_a_broker_url_redis_py_cannot_read_is_one_line_and_a_local_sweep_asks_no_broker(klab_db, klab_cli, setenv,
                                                                                           redis_url):
    """`klab watch` and `klab sweep --local` (after storing and training its jobs) ended in redis-py's ValueError, a
    port's part of the password in its last line; a scheme in capitals (kombu's and redis-py's alike) was taken for
    another broker's, and `klab submit` never said no worker serves the queue."""
    setenv(KLAB_BROKER_URL="redis://:s3cr/et@127.0.0.1:6379/15")
    code, out, err = klab_cli("sweep", "--local", "--seed", "0..1", "--epochs", "2")
    assert code == 0 and "2 job(s): 2 succeeded" in out and "s3cr" not in err, (out, err)
    assert klab_cli("watch", "1") == (2, "", "klab: error: KLAB_BROKER_URL: the password holds '/', which a URL's "
                                             "user part cannot hold: write it as %2F\n")
    setenv(KLAB_BROKER_URL=redis_url.replace("redis://", "REDIS://", 1))
    code, out, err = klab_cli("submit", "--epochs", "2")
    assert code == 0 and "klab: warning: no live worker of this database" in err, err


@pytest.mark.parametrize("variable,value", [
    ("KLAB_HOME", "/tmp/" + "a" * 256), ("KLAB_DATABASE_URL", "sqlite:////tmp/" + "a" * 256 + "/k.db"),
    ("KLAB_HOME", "/tmp" + "/" + "/".join(["b" * 250] * 17)),
    ("KLAB_HOME", ("/tmp" + "/c" * 2100)[:4090])])  # its klab.db past the most: named as KLAB_HOME's
def test_a_path_longer_than_the_system_names_is_one_line_naming_its_variable(variable, value, klab_cli, setenv,
                                                                             tmp_path):
    """Path.exists() raises "File name too long" past a name's 255 bytes or a path's 4,095: list, run, sweep and
    submit ended in its traceback."""
    setenv(**{"KLAB_HOME": str(tmp_path / "home"), "KLAB_DATABASE_URL": None, variable: value})
    for args in (["list"], ["run", "--epochs", "1"]):
        code, out, err = klab_cli(*args)
        assert (code, out) == (2, "") and err.count("\n") == 1 and err.startswith(f"klab: error: {variable}: "), err
        assert "longer than 255 bytes" in err or "more than the system's most, 4095" in err, err
    assert not (tmp_path / "home").exists()


def test_a_path_at_the_systems_most_is_taken_and_a_byte_more_is_not():
    """A name of 255 bytes and a klab.db path of 4,095 are what the system holds (the cases above are past it)."""
    from service.settings import NAME_MOST, PATH_MOST, sqlite_path

    assert (NAME_MOST, PATH_MOST) == (255, 4095)
    name = "/tmp/" + "a" * 255
    assert Settings.from_env({"KLAB_HOME": name}).home.name == "a" * 255
    with pytest.raises(BadInput, match="^KLAB_HOME: a name in the path is longer than 255 bytes"):
        Settings.from_env({"KLAB_HOME": name + "a"})
    home = "/tmp" + "/c" * 2040 + "/dd"
    assert len(home + "/klab.db") == 4095
    assert Settings.from_env({"KLAB_HOME": home}).database_url.endswith("/c/dd/klab.db")
    with pytest.raises(BadInput, match="^KLAB_HOME: the path of its klab.db is 4096 bytes long"):
        Settings.from_env({"KLAB_HOME": home + "d"})
    assert str(sqlite_path(f"sqlite:///{home}/klab.db")) == f"{home}/klab.db"
    with pytest.raises(BadInput, match="^KLAB_DATABASE_URL: the path is 4096 bytes long"):
        sqlite_path(f"sqlite:///{home}/klabx.db")


def test_a_klab_home_of_bytes_that_are_not_utf8_counts_each_as_one_byte():
    """100 bytes that are not UTF-8 (each read as one surrogate) were counted as 300, and the home refused."""
    from service.settings import Settings

    assert Settings.from_env({"KLAB_HOME": "/tmp/" + "\udcff" * 100}).home.name == "\udcff" * 100


def test_a_worker_beats_five_times_a_lease_and_reaps_twice_a_lease_or_a_stranded_wait():
    """The heartbeat every fifth of the lease (the README's words); the reaper every half of the lease or of
    KLAB_STRANDED_SECONDS, whichever is shorter (worker.lease.reaper's); neither faster than its floor."""
    assert Settings.from_env({"KLAB_LEASE_SECONDS": "10"}).heartbeat_seconds == 2.0
    assert Settings.from_env({"KLAB_LEASE_SECONDS": "10", "KLAB_STRANDED_SECONDS": "30"}).reaper_seconds == 5.0
    assert Settings.from_env({"KLAB_LEASE_SECONDS": "30", "KLAB_STRANDED_SECONDS": "8"}).reaper_seconds == 4.0
    assert Settings.from_env({"KLAB_LEASE_SECONDS": "1", "KLAB_STRANDED_SECONDS": "1"}).heartbeat_seconds == 0.2
    assert Settings.from_env({"KLAB_LEASE_SECONDS": "1", "KLAB_STRANDED_SECONDS": "1"}).reaper_seconds == 0.5


def test_the_readme_batch_jobs_is_the_default_both_commands_show(tmp_path):
    said = re.search(r"tasks of up to `--batch-jobs` \(([0-9,]+)\) jobs", README)
    assert said, "the README's --batch-jobs default"
    from harness import clean_env, klab

    for command in ("submit", "sweep"):
        out = klab(clean_env(tmp_path / "home"), command, "--help")
        assert f"[default: {said.group(1).replace(',', '')};" in " ".join(out.stdout.split()), out.stdout


@pytest.mark.parametrize("url,says", [
    ("sqlite:////tmp/x.db?timeout=5&timeout=6", "the parameter 'timeout' is given twice"),  # SQLAlchemy made a
    # tuple of the two, sqlite3 a TypeError: a traceback
    ("postgresql://u:pw#x@h:5432/db", "the password holds '#', which a URL's user part cannot hold: write it as %23"),
    ("postgresql://u@h:5432/%00", "holds a NUL byte (%00), where libpq's connection string ends: what follows it "
                                  "would be dropped, and another database reached"),  # connected to the database
    # named as the OS user, as that user (root), and `klab db upgrade` wrote its schema there, naming `\x00`
    ("postgresql://u:p%00w@h:5432/db", "holds a NUL byte (%00), where libpq's connection string ends: what follows "
                                       "it would be dropped, and another database reached"),
    ("postgresql://u@h:5432/db?a%00b=1", "holds a NUL byte (%00), where libpq's connection string ends: what "
                                         "follows it would be dropped, and another database reached"),
    ("postgresql://u@h:5432/db?application_name=a%00b", "holds a NUL byte (%00), where libpq's connection string "
                                                        "ends: what follows it would be dropped, and another database "
                                                        "reached"),
    ("mysql://u@h/db", "mysql is not supported: kernel-lab stores its results in SQLite (sqlite:///PATH) or "
                       "PostgreSQL (postgresql://USER@HOST/DB)"),  # not "cannot use mysql database db on h:5432"
])
def test_a_database_urls_mistake_is_said_in_its_own_words(url, says):
    from service.settings import normalize_url

    with pytest.raises(BadInput, match=f"^KLAB_DATABASE_URL: {re.escape(says)}$"):
        normalize_url(url)


def test_an_escaped_percent_before_00_or_one_in_the_host_is_no_nul():
    """SQLAlchemy reads no escape of a host: `h%00x` is a host of that name, which libpq cannot resolve, not one
    whose connection string a NUL cuts short."""
    from service.settings import normalize_url

    assert normalize_url("postgresql://u@h:5432/a%2500b").endswith("@h:5432/a%2500b")  # the database a%00b
    assert normalize_url("postgresql://u@h%00x:5432/db").endswith("@h%00x:5432/db")


def test_a_brokers_password_given_as_a_parameter_is_escaped_into_the_user_part():
    """kombu refuses ?password= beside the one it passes; moved into the user part, its / is written %2F, where one
    left as it is would be refused as a / the user wrote in the user part."""
    from service.settings import Settings, broker_password

    assert broker_password("redis://h:6379/3?password=a/b#c") == "redis://h:6379/3?password=a/b#c"  # left as it is
    assert broker_password("redis://h:6379/3?password=a/b%23c&x=1") == "redis://:a%2Fb%23c@h:6379/3?x=1"
    assert Settings.from_env({"KLAB_BROKER_URL": "redis://127.0.0.1:6379/3?password=a/b"}).broker_url == \
        "redis://:a%2Fb@127.0.0.1:6379/3"
