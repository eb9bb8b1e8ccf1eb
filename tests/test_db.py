"""Settings, engines and the head check: in process, and through the real `klab` for what users see."""
from __future__ import annotations

from pathlib import Path

import pytest
from harness import clean_env, klab
from sqlalchemy import text

from service.db.connect import HEAD
from service.db.engine import current_revision, dispose_engines, downgrade, engine_for, ready_engine, upgrade, writing
from service.errors import DatabaseUnavailable, mask
from service.settings import Settings, describe, normalize_url

UNREACHABLE = "postgresql+psycopg://u:secret@127.0.0.1:1/x"


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env(tmp_path / "home", **extra)


def test_settings_default_to_sqlite_under_klab_home(tmp_path: Path) -> None:
    s = Settings.from_env({"KLAB_HOME": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path / 'klab.db'}"
    assert s.is_default(s.database_url)
    s = Settings.from_env({"KLAB_HOME": str(tmp_path), "KLAB_DATABASE_URL": "postgres://u:pw@h/d"})
    assert s.database_url == "postgresql+psycopg://u:pw@h/d" and not s.is_default(s.database_url)


def test_passwords_are_masked() -> None:
    assert normalize_url("postgresql://a@b/c") == "postgresql+psycopg://a@b/c"
    assert mask("cannot use postgresql+psycopg://user:s3cr3t@db:5432/klab") == \
        "cannot use postgresql+psycopg://user:***@db:5432/klab"
    assert "secret" not in describe(UNREACHABLE) and "127.0.0.1:1" in describe(UNREACHABLE)
    assert describe("postgresql+psycopg://u@h:0/x") == "postgresql database x on h:0"  # was h:5432


@pytest.mark.parametrize("url", ["postgresql+psycopg://u:secret@h:notaport/x", "nosuchdb://u:secret@h/x",
                                 "postgresql+psycopg://u:secret@127.0.0.1:99999/x",  # these were exit code 3,
                                 "postgresql+psycopg://u:secret@127.0.0.1:0/x",  # "cannot reach ... :5432"
                                 "postgresql+psycopg://u:secret@127.0.0.1:65536/x"])
def test_a_url_that_is_not_one_is_refused_without_the_password(url: str) -> None:
    from service.db.reads import revision

    for read in (ready_engine, revision):  # SQLAlchemy's engine, and the reads' own connection (klab list, db current)
        with pytest.raises(DatabaseUnavailable) as info:
            read(url)
        assert info.value.exit_code == 2 and any(s in str(info.value) for s in ("not a database URL", "cannot use"))
        assert "secret" not in str(info.value) and "secret" not in describe(url)


def test_sqlite_upgrades_itself(sqlite_url: str) -> None:
    assert current_revision(sqlite_url) is None
    ready_engine(sqlite_url)
    assert current_revision(sqlite_url) == HEAD
    downgrade(sqlite_url, "0014")  # an older kernel-lab's file: brought to head too, not only a new one
    dispose_engines()
    ready_engine(sqlite_url)
    assert current_revision(sqlite_url) == HEAD


def test_postgresql_not_at_head_is_refused(pg_url: str) -> None:
    with pytest.raises(DatabaseUnavailable) as empty:
        ready_engine(pg_url)
    assert empty.value.exit_code == 2 and "klab db upgrade" in str(empty.value)
    assert "no kernel-lab schema" in str(empty.value)
    upgrade(pg_url)
    assert ready_engine(pg_url) is engine_for(pg_url)
    with engine_for(pg_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0008'"))  # an older kernel-lab's
    dispose_engines()  # this process remembers databases it found at head
    with pytest.raises(DatabaseUnavailable, match="at revision 0008, not .*run: klab db upgrade"):
        ready_engine(pg_url)
    with engine_for(pg_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))  # no kernel-lab's
    dispose_engines()
    with pytest.raises(DatabaseUnavailable, match="at revision 0000, which this kernel-lab does not have"):
        ready_engine(pg_url)


def test_unreachable_database_names_the_host_not_the_password() -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        ready_engine(UNREACHABLE)
    assert info.value.exit_code == 3
    assert "127.0.0.1:1" in str(info.value) and "secret" not in str(info.value)
    assert "\n" not in str(info.value)
    dispose_engines()


def test_a_write_rolls_back_on_error(db_url: str, add_job) -> None:
    upgrade(db_url)
    with pytest.raises(RuntimeError), writing(db_url) as conn:
        add_job(conn)
        raise RuntimeError("boom")
    with writing(db_url) as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
        add_job(conn)
    with writing(db_url) as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM epochs")).scalar() == 10


# --- what a user sees, through the real command ------------------------------------------------

def test_cli_unreachable_database_is_one_line_exit_3(tmp_path: Path) -> None:
    for args in (["show", "1"], ["db", "upgrade"]):
        out = klab(bare_env(tmp_path, KLAB_DATABASE_URL=UNREACHABLE), *args)
        assert out.returncode == 3, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "127.0.0.1:1" in out.stderr, out.stderr
        assert "secret" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_cli_refuses_postgresql_not_at_head(pg_url: str, tmp_path: Path) -> None:
    env = bare_env(tmp_path, KLAB_DATABASE_URL=pg_url)
    empty = klab(env, "list")
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1
    assert "run: klab db upgrade" in empty.stderr and "Traceback" not in empty.stderr

    upgrade(pg_url)
    downgrade(pg_url, "base")
    dispose_engines()
    refused = klab(env, "compare", "1")
    assert refused.returncode == 2 and "run: klab db upgrade" in refused.stderr


def test_db_current_says_whether_at_head(klab_db: str, klab_cli) -> None:
    code, out, _ = klab_cli("db", "current")
    assert code == 0 and f"revision {HEAD} (head)" in out
    downgrade(klab_db, "base")
    code, out, _ = klab_cli("db", "current")
    assert code == 0 and "revision none (not at head" in out and "klab db upgrade" in out
    code, out, _ = klab_cli("db", "upgrade")
    assert code == 0 and current_revision(klab_db) == HEAD


def test_db_current_refuses_a_klab_home_that_cannot_be_made_as_every_command_does(tmp_path: Path) -> None:
    """It said `revision none (not at head 0015; run: klab db upgrade)`, exit 0, where that upgrade is refused."""
    (tmp_path / "file").write_text("not a folder")
    env = clean_env(tmp_path / "file", "")
    for args in (["db", "current"], ["db", "upgrade"], ["list"]):
        out = klab(env, *args)
        assert (out.returncode, out.stdout, out.stderr) == (2, "", f"klab: error: KLAB_HOME: cannot make the folder "
                                                            f"{tmp_path / 'file'}: {tmp_path / 'file'} is a file, "
                                                            "not a folder\n"), args


def test_cli_default_sqlite_upgrades_itself_on_first_use(tmp_path: Path) -> None:
    env = bare_env(tmp_path)
    out = klab(env, "list", "--json")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    path = tmp_path / "home" / "klab.db"
    assert path.is_file()
    url = f"sqlite:///{path}"
    assert current_revision(url) == HEAD
    dispose_engines()


def test_a_sqlite_file_in_a_folder_that_does_not_exist_is_refused(tmp_path: Path, redis_url: str) -> None:
    """A typo in a path must not become a new, empty database answering `no jobs`; the default KLAB_HOME is
    still made on first use."""
    missing_folder = tmp_path / "no" / "such" / "folder"
    env = clean_env(tmp_path / "home", f"sqlite:///{missing_folder / 'klab.db'}")
    for args in (["list"], ["db", "upgrade"], ["run", "--epochs", "1"], ["db", "current"]):  # current: `revision
        # none; run: klab db upgrade`, exit 0, where that upgrade is refused
        out = klab(env, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.strip() == f"klab: error: the folder of the sqlite database {missing_folder / 'klab.db'} " \
                                     f"does not exist: {missing_folder}", (args, out.stderr)
    assert not (tmp_path / "no").exists()
    tilde = klab(clean_env(tmp_path / "home", "sqlite:///~/klab.db"), "list")  # SQLite reads no home folder in a ~:
    assert (tilde.returncode, tilde.stderr) == (2, "klab: error: the folder of the sqlite database ~/klab.db does not "
                                                   "exist: ~\n")  # it was `unable to open database file`, exit 3
    odd = tmp_path / ":memory:x.db"  # a file, as SQLite reads the name: only :memory: itself is in memory
    assert klab(clean_env(tmp_path / "home", f"sqlite:///{odd}"), "db", "upgrade").returncode == 0 and odd.is_file()
    assert klab(clean_env(tmp_path / "home", f"sqlite:///{odd}"), "list").returncode == 0
    # a `file:` URI (?uri=true), which SQLAlchemy and SQLite read: its folder is its path's (it was "file:FOLDER",
    # which never exists: every such URL was refused)
    uri = clean_env(tmp_path / "home", f"sqlite:///file:{tmp_path / 'uri.db'}?uri=true")
    assert klab(uri, "run", "--epochs", "1").returncode == 0 and (tmp_path / "uri.db").is_file()
    assert klab(uri, "list", "--json").stdout.count('"id"') == 1
    typo = clean_env(tmp_path / "home", f"sqlite:///file:{tmp_path / 'typo.db'}?uri=1")  # uri as SQLAlchemy reads it
    for args in (["list"], ["cancel", "1"], ["delete", "1"]):  # refused as a plain path's missing file is: they made
        # it, empty, and answered "no jobs"
        out = klab(typo, *args)
        assert (out.returncode, out.stderr) == (2, f"klab: error: no sqlite database file:{tmp_path / 'typo.db'}: "
                                                   "only klab db upgrade and the commands that store jobs make one\n")
    assert klab(typo, "db", "current").returncode == 0 and not (tmp_path / "typo.db").exists()
    out = klab(clean_env(tmp_path / "home", f"sqlite:///file:{missing_folder / 'klab.db'}?uri=true"), "list")
    assert (out.returncode, out.stderr) == (2, f"klab: error: the folder of the sqlite database file:{missing_folder}/"
                                               f"klab.db does not exist: {missing_folder}\n")
    typo = tmp_path / "klab-typo.db"  # a folder that exists, a file that does not: a command that only reads made it,
    # a new empty database answering "no jobs" (or "no sweep 1", where the workers wrote to a file moved away)
    for args, query in ((["list"], ""), (["status", "--sweep", "1"], "?timeout=5"), (["sweeps"], ""),
                        (["export", "1"], "?timeout=5"),  # a query too: it was made
                        (["cancel", "1"], ""), (["delete", "1"], ""), (["requeue"], "")):  # changes no job: made it
        out = klab(clean_env(tmp_path / "home", f"sqlite:///{typo}{query}", KLAB_BROKER_URL=redis_url), *args)
        assert (out.returncode, out.stderr) == (2, f"klab: error: no sqlite database {typo}: only klab db upgrade and "
                                                   "the commands that store jobs make one\n"), args
    assert not typo.exists()
    fresh = clean_env(tmp_path / "new-home")
    assert klab(fresh, "list").returncode == 0 and (tmp_path / "new-home" / "klab.db").is_file()


def test_a_sqlite_urls_parameters_are_the_drivers_or_sqlites_own_in_a_file_uri(tmp_path: Path) -> None:
    """?mode=ro without uri=true was dropped by SQLAlchemy with a warning and klab wrote to the database meant
    read-only; with uri=true on a plain path SQLite made and wrote a new file named `a.db?mode=ro`, every message
    naming a.db; ?timeout=abc ended in ValueError's traceback. Each is one line, exit 2, nothing written."""
    db = tmp_path / "a.db"
    assert klab(clean_env(tmp_path / "home", f"sqlite:///{db}"), "run", "--epochs", "1").returncode == 0
    before = db.read_bytes()
    for query, said in (("?mode=ro", "SQLite's driver takes no parameter 'mode', which would be ignored"),
                        ("?mode=ro&uri=false", "SQLite's driver takes no parameter 'mode', which would be ignored"),
                        ("?uri=true&mode=ro", "with uri=true, SQLite reads 'mode' only in a path that begins with "
                                              "file:"),
                        ("?timeout=abc", "a parameter of the URL is not what SQLite's driver takes: could not convert "
                                         "string to float: 'abc'"),
                        ("?check_same_thread=maybe", "String is not true/false: 'maybe'"),
                        ("?timeout=5&timeout=6", "the parameter 'timeout' is given twice")):  # a TypeError's traceback
        for args in (["run", "--epochs", "1"], ["list"], ["db", "upgrade"]):
            out = klab(clean_env(tmp_path / "home", f"sqlite:///{db}{query}"), *args)
            assert (out.returncode, out.stdout) == (2, "") and len(out.stderr.splitlines()) == 1, (query, out.stderr)
            assert out.stderr.startswith("klab: error: KLAB_DATABASE_URL: ") and said in out.stderr, out.stderr
    assert [p.name for p in tmp_path.iterdir() if "?" in p.name] == [] and db.read_bytes() == before
    read_only = clean_env(tmp_path / "home", f"sqlite:///file:{db}?mode=ro&uri=true")  # as SQLite reads it
    assert klab(read_only, "list", "--json").stdout.count('"id"') == 1
    for query, said in (("mode=bogus", "no such access mode: bogus"), ("vfs=bogus", "no such vfs: bogus"),
                        ("cache=bogus", "no such cache mode: bogus")):
        # SQLite's own: was exit 3, "cannot reach"; and where `db upgrade` makes the file, "refused the upgrade"
        for path, args in ((db, ["list"]), (tmp_path / "new.db", ["db", "upgrade"])):
            out = klab(clean_env(tmp_path / "home", f"sqlite:///file:{path}?{query}&uri=true"), *args)
            assert (out.returncode, out.stdout) == (2, ""), (args, out.stderr)
            assert out.stderr.startswith("klab: error: KLAB_DATABASE_URL: ") and out.stderr.endswith(
                f"driver refuses the URL: {said}\n"), (args, out.stderr)
    out = klab(clean_env(tmp_path / "home", "://"), "list")
    assert out.stderr.startswith("klab: error: KLAB_DATABASE_URL: a URL of no scheme is not supported: "), out.stderr


def test_a_database_other_than_sqlite_or_postgresql_is_refused_by_name(tmp_path: Path) -> None:
    for url in ("mysql://user:hunter2@db-host/klab", "mssql+pyodbc://user:hunter2@db-host/klab"):
        out = klab(clean_env(tmp_path / "home", url), "list")
        assert out.returncode == 2, out.stderr
        (line,) = out.stderr.splitlines()
        assert line.startswith("klab: error: KLAB_DATABASE_URL: ") and "is not supported" in line
        assert "SQLite" in line and "PostgreSQL" in line and "hunter2" not in line


def test_a_sqlite_writer_waits_for_the_write_lock_past_one_busy_timeout(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding SQLite's write lock past the busy timeout (a worker storing a large task: 37 s for
    15,000,000 epochs): a writer tries again, SQLITE_TRY_MS at a time, where it failed "database is locked" after
    one busy timeout (exit 3: a job `klab run` had trained lost, a `sweep --local` stopped part way). Past
    SQLITE_WRITE_WAIT_S it fails."""
    import sqlite3
    import threading
    import time

    from sqlalchemy.exc import OperationalError

    from service import defaults

    url = f"sqlite:///{tmp_path / 'lock.db'}"
    upgrade(url)
    dispose_engines()
    monkeypatch.setattr(defaults, "SQLITE_TRY_MS", 100)  # the lock below is held for ten tries,
    monkeypatch.setattr(defaults, "SQLITE_BUSY_MS", 200)  # and past one busy timeout
    holder = sqlite3.connect(tmp_path / "lock.db", isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(1.0, holder.execute, ["COMMIT"])
        started = time.monotonic()
        release.start()
        with writing(url) as conn:
            conn.execute(text("CREATE TABLE waited (x integer)"))
        assert time.monotonic() - started >= 0.9  # it held on until the other's commit, then wrote
        release.join()
        monkeypatch.setattr(defaults, "SQLITE_WRITE_WAIT_S", 0.3)
        holder.execute("BEGIN IMMEDIATE")
        assert current_revision(url) == HEAD  # a read: it takes no write lock, nor waits for one
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"), writing(url) as conn:
            conn.execute(text("CREATE TABLE never (x integer)"))
        assert time.monotonic() - started < 10  # SQLITE_WRITE_WAIT_S (0.3 s), not a busy timeout's or 600 s
        holder.execute("COMMIT")
    finally:
        holder.close()
        dispose_engines()


def test_a_write_waiting_for_the_sqlite_lock_lets_a_fork_go_between_its_tries(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's reaper waiting minutes for the lock another process holds (9e369ce) held a fork of the worker
    (Celery replacing a dead pool child) for FORK_WAIT_S, then the fork went on with the write open: between two tries
    the process holds no lock, and the fork goes there. The write then goes on to hold the lock, and writes."""
    import os
    import sqlite3
    import threading
    import time

    from service.db.connect import FORKS, ForkGuard

    url = f"sqlite:///{tmp_path / 'lock.db'}"
    upgrade(url)
    dispose_engines()
    monkeypatch.setattr(ForkGuard, "FORK_WAIT_S", 10.0)  # a try (SQLITE_TRY_MS) is 1 s, a busy timeout 30 s
    holder = sqlite3.connect(tmp_path / "lock.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    wrote = threading.Event()

    def reaper_like() -> None:
        with writing(url) as conn:
            conn.execute(text("CREATE TABLE waited (x integer)"))
        wrote.set()

    thread = threading.Thread(target=reaper_like)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not FORKS._open and time.monotonic() < deadline:  # the write is under way: waiting for the lock
            time.sleep(0.01)
        assert FORKS._open
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        forked = time.monotonic() - started
        os.waitpid(pid, 0)
        assert forked < 5, forked  # within one try (1 s), not a busy timeout (FORK_WAIT_S here)
        assert not wrote.is_set()
    finally:
        holder.execute("COMMIT")
        holder.close()
        thread.join(30)
        dispose_engines()
    assert wrote.is_set()
    assert FORKS._open == 0  # the write, gone on after the fork, counted open again until it ended


def test_a_process_forked_while_a_thread_writes_to_sqlite_can_write(tmp_path: Path) -> None:
    """Celery forks a new pool child from the worker's main process when one dies; if its reaper thread was in a
    SQLite write then, the child inherited SQLite's note that its process held the lock (not the lock), and every
    write of the child's was "database is locked" after the busy timeout, for ever. The fork waits for it now."""
    import os
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'fork.db'}"
    upgrade(url)
    inside, release = threading.Event(), threading.Event()

    def reaper_like() -> None:
        with writing(url) as conn:  # BEGIN IMMEDIATE: the write lock, held until the commit
            conn.execute(text("CREATE TABLE parents (x integer)"))
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=reaper_like)
    thread.start()
    assert inside.wait(10)
    started = time.monotonic()  # before the timer: the parent held off the core between them must not count
    threading.Timer(0.5, release.set).start()
    pid = os.fork()
    if pid == 0:  # the child: as worker.app._child_init, then a write
        code = 1
        try:
            dispose_engines()
            with writing(url) as conn:
                conn.execute(text("CREATE TABLE children (x integer)"))
            code = 0
        finally:
            os._exit(code)
    forked_after = time.monotonic() - started
    thread.join(10)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the child could not write"
    assert forked_after >= 0.4  # the fork waited for the parent's transaction to end
    with writing(url) as conn:
        assert conn.execute(text("SELECT count(*) FROM children")).scalar() == 0


def test_a_fork_inside_the_forking_threads_own_transaction_does_not_wait_for_it(monkeypatch) -> None:
    """The guard waited for every open transaction, the forking thread's own too: the full wait, every time, and
    the child counted -1 open ever after (its next fork waited the full wait again)."""
    import os
    import time

    from service.db.connect import FORKS

    monkeypatch.setattr(FORKS, "FORK_WAIT_S", 3.0)
    with FORKS.transaction():
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                pass
            finally:
                os._exit(code if FORKS._open != 1 else 0)  # its own transaction, still open in the child
        waited = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    assert waited < 1.0 and os.waitstatus_to_exitcode(status) == 0 and FORKS._open == 0


def test_the_default_database_named_in_klab_database_url_is_still_the_default(tmp_path: Path) -> None:
    """KLAB_DATABASE_URL naming KLAB_HOME's klab.db is the database a user gets with it unset: made on first use."""
    home = tmp_path / "home"
    for url in (f"sqlite:///{home / 'klab.db'}", f"sqlite+pysqlite:///{home / 'klab.db'}",
                f"sqlite:///{home}/./klab.db", f"sqlite:///{home}/klab%2Edb"):  # was: no sqlite database ...
        out = klab(clean_env(home, url), "list")
        assert (out.returncode, out.stderr.strip()) == (0, "no jobs"), (url, out.stderr)
        assert (home / "klab.db").is_file(), url
        for made in home.glob("klab.db*"):
            made.unlink()


def test_odd_sqlite_urls_are_one_line_and_make_no_file(tmp_path: Path, monkeypatch) -> None:
    """A NUL in the path was ValueError's traceback; `db current` of a URL with a query made the file it looked at;
    a relative path with `..` after a link was compared as the link's target's parent (SQLAlchemy reads it by its
    text), and a file named so in the working folder was taken for the default database."""
    home = tmp_path / "home"
    nul = klab(clean_env(home, "sqlite:////tmp/a%00b.db"), "list")
    assert (nul.returncode, nul.stderr) == (2, "klab: error: KLAB_DATABASE_URL: the sqlite database's path holds a NUL "
                                               "byte: /tmp/a\\x00b.db\n")
    (tmp_path / "x").mkdir()
    current = klab(clean_env(home, f"sqlite:///{tmp_path / 'x' / 'cur.db'}?timeout=5"), "db", "current")
    assert current.returncode == 0 and "revision none" in current.stdout and not (tmp_path / "x" / "cur.db").exists()
    from service.settings import Settings

    (home / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lnk").symlink_to(home / "sub")
    settings = Settings.from_env({"KLAB_HOME": str(home)})
    assert not settings.is_default("sqlite:///lnk/../klab.db")  # the working folder's klab.db, as SQLite opens it
    assert settings.is_default(f"sqlite:///{home}/sub/../klab.db")
