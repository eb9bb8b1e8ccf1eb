"""Nothing gets in: workers take JSON only, uploads are never unpickled, no user string is evaluated,
formatted into SQL or handed to a shell, and passwords in URLs are never printed or logged.

ruff's bandit rules (S, run by `make test` before pytest) keep pickle, eval and exec, shells, unsafe
YAML and SQL built from formatted strings out of the code; a test here shows they catch those forms.
A small scanner checks what they do not cover: numpy and torch loads, and URLs with passwords.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from harness import ROOT, Client, free_port, klab, queue_key, service_env
from sqlalchemy.engine import make_url

SECRET = "s3cretpw"


class Canary:
    """Unpickling this creates a file: proof that someone unpickled it."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


# --- JSON only --------------------------------------------------------------------------------------

def test_worker_refuses_a_pickled_task_and_nothing_runs(tmp_path, pg_db, redis_server, worker_procs):
    from celery import Celery

    from service.db import writes
    from service.db.engine import dispose_engines, writing
    from service.jobs.spec import JobSpec

    url, db = pg_db
    broker = redis_server()
    env = service_env(tmp_path, url, broker.url())
    with writing(url) as conn:
        (victim,) = writes.insert_jobs(conn, [writes.new_job(JobSpec.parse({"seed": 3}), queue="cpu")])
        writes.mark_queued(conn, [victim])
    dispose_engines()
    guard = worker_procs(env, "guard")

    canary = tmp_path / "unpickled"
    evil = Celery("evil", broker=broker.url())
    evil.conf.update(task_serializer="pickle", accept_content=["pickle"], result_backend=None,
                     broker_connection_retry_on_startup=True)
    evil.send_task("klab.train", args=[[victim]], kwargs={"canary": Canary(canary)}, queue=queue_key(url),
                   serializer="pickle")
    evil.close()
    guard.wait_ready()
    # a JSON task behind it on the same queue runs: the pickled one was taken first, and refused
    after = klab(env, "submit", "--wait", "--json")
    assert after.returncode == 0 and json.loads(after.stdout)["status"] == "succeeded", after.stderr
    (job,) = db.rows("SELECT status, attempts, started_at, epochs_done FROM jobs WHERE id = :j", j=victim)
    assert (job.status, job.attempts, job.started_at, job.epochs_done) == ("queued", 0, None, 0)
    assert not canary.exists()
    client = broker.client()
    assert client.llen(queue_key(url)) == 0 and client.hlen("unacked") == 0
    log = guard.text()
    assert "ContentDisallowed" in log or "disallowed" in log.lower(), log[-3000:]


def test_uploaded_arrays_are_never_unpickled(tmp_path, pg_db, redis_server):
    url, db = pg_db
    env = service_env(tmp_path, url, redis_server().url())
    canary = tmp_path / "unpickled"
    np.save(tmp_path / "evil.npy", np.array([Canary(canary), 1], dtype=object), allow_pickle=True)
    for args in (("submit", "--input", f"npy:{tmp_path / 'evil.npy'}"),
                 ("submit", "--kernel", f"npy:{tmp_path / 'evil.npy'}"),
                 ("run", "--labels", f"npy:{tmp_path / 'evil.npy'}")):
        out = klab(env, *args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and "Python objects" in lines[0], lines
    assert not canary.exists()
    assert db.scalar("SELECT count(*) FROM jobs") == 0 and db.scalar("SELECT count(*) FROM datasets") == 0


# --- passwords --------------------------------------------------------------------------------------

def test_passwords_in_broker_and_database_urls_are_never_printed_or_logged(tmp_path, pg_url, redis_server,
                                                                           worker_procs):
    broker = redis_server(password=SECRET)
    database = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)  # trust ignores it
    assert SECRET in database and SECRET in broker.url()
    env = service_env(tmp_path, database, broker.url())
    w = worker_procs(env, "masked", loglevel="DEBUG")  # the most a worker ever logs
    outputs = []

    def run(extra: dict[str, str], *args: str) -> str:
        out = klab({**env, **extra}, *args)
        outputs.append((args, out.stdout + out.stderr))
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out.stdout

    run({}, "db", "current")
    w.wait_ready()
    job = json.loads(run({}, "submit", "--wait", "--json"))
    assert job["status"] == "succeeded"
    as_parameter = {"KLAB_BROKER_URL": f"redis://127.0.0.1:{broker.port}/0?password={SECRET}"}  # the README's form
    assert json.loads(run(as_parameter, "submit", "--wait", "--json"))["status"] == "succeeded"  # was kombu's
    # TypeError (a traceback, exit 1) once the job was stored
    run({"KLAB_BROKER_URL": f"redis://:{SECRET}[@127.0.0.1:1/0"}, "list")  # a command that never reads the broker
    run({}, "status", str(job["id"]))
    run({}, "show", str(job["id"]))
    run({}, "workers")

    # every error line that names a broker or a database, started together
    dead_broker = {"KLAB_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"}
    wrong_password = {"KLAB_BROKER_URL": broker.url().replace(SECRET, SECRET + "-wrong")}
    dead_db = {"KLAB_DATABASE_URL": f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/klab"}
    failing = [(dead_broker, ("submit",), 3), (dead_broker, ("sweep", "--seed", "1,2"), 3),
               (dead_broker, ("workers",), 3), (wrong_password, ("submit",), 3),
               (wrong_password, ("requeue", "--sweep", "1"), 3),
               (dead_db, ("status", "1"), 3), (dead_db, ("db", "current"), 3), (dead_db, ("run", "--epochs", "1"), 3),
               (dead_db, ("submit",), 3),
               ({"KLAB_DATABASE_URL": f"nosuchdb://klab:{SECRET}@127.0.0.1/klab"}, ("list",), 2),
               ({"KLAB_DATABASE_URL": f"postgresql://klab:{SECRET}@127.0.0.1:notaport/klab"}, ("list",), 2),
               # a password as a parameter (libpq's, redis-py's), and one holding an @ that was not written %40
               ({"KLAB_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/klab?password={SECRET}"},
                ("list",), 3),
               ({"KLAB_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0?password={SECRET}"}, ("submit",), 3),
               ({"KLAB_DATABASE_URL": f"postgresql://postgres:p@{SECRET}@127.0.0.1/klab"}, ("list",), 2),
               ({"KLAB_BROKER_URL": f"redis://:p@{SECRET}@127.0.0.1:{free_port()}/0"}, ("submit",), 2),
               # a / or a space, which a URL's user part cannot hold, not written %2F or %20: were printed whole
               ({"KLAB_DATABASE_URL": f"postgresql://postgres:{SECRET}/x@127.0.0.1:{free_port()}/klab"}, ("list",), 2),
               ({"KLAB_BROKER_URL": f"redis://:{SECRET}/x@127.0.0.1:{free_port()}/0"}, ("submit",), 2),
               ({"KLAB_BROKER_URL": f"redis://:{SECRET} x@127.0.0.1:{free_port()}/0"}, ("workers",), 2),
               ({"KLAB_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0?password={SECRET}"}, ("submit",), 2),
               ({"KLAB_BROKER_URL": f"redis://u:{SECRET} x@127.0.0.1:{free_port()}/0?password=y"}, ("submit",), 2),
               ({"KLAB_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0?password=p#{SECRET}"}, ("submit",), 2),
               ({"KLAB_BROKER_URL": f"redis://:{SECRET}[@127.0.0.1:{free_port()}/0"}, ("submit",), 2),
               # a scheme mistyped: refused as no URL, and printed whole; a port redis-py cannot read, by `watch`
               ({"KLAB_BROKER_URL": f"redis:/:{SECRET}@127.0.0.1:{free_port()}/0"}, ("workers",), 2),
               ({"KLAB_DATABASE_URL": f"postgresql:/klab:{SECRET}@127.0.0.1/klab"}, ("list",), 2),
               ({"KLAB_DATABASE_URL": f"postgresql//klab:{SECRET}@127.0.0.1/klab"}, ("submit",), 2),
               ({"KLAB_BROKER_URL": f"redis://:{SECRET}/x@127.0.0.1:{free_port()}/0"}, ("watch", "1"), 2),
               # what kombu cannot use, refused before anything is stored: it raised after the jobs were
               ({"KLAB_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0?socket_timeout=5"}, ("submit",), 2),
               ({"KLAB_BROKER_URL": f"unix://:{SECRET}@/tmp/redis.sock?db=0"}, ("submit",), 2),
               ({"KLAB_BROKER_URL": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0/"}, ("submit",), 2),
               # libpq's keyword string, and other secrets as parameters: printed whole
               ({"KLAB_DATABASE_URL": f"host=127.0.0.1 port=1 password={SECRET}"}, ("list",), 2),
               ({"KLAB_DATABASE_URL": f"postgresql://u:x@127.0.0.1:{free_port()}/klab?sslpassword={SECRET}"},
                ("list",), 3),
               ({"KLAB_BROKER_URL": f"rediss://:x@127.0.0.1:{free_port()}/0?ssl_password={SECRET}"},
                ("workers",), 3),
               ({"KLAB_BROKER_URL": f"redis://:x@127.0.0.1:{free_port()}/0?ssl_keyfile_password={SECRET}"},
                ("workers",), 2)]  # no parameter redis-py's connection takes: refused, by its name alone
    procs = [(Client({**env, **extra}, *args), args, code) for extra, args, code in failing]
    wrong = []
    for proc, args, code in procs:
        done = proc.result(120)
        outputs.append((args, done.stdout + done.stderr))
        if done.returncode != code or len(done.stderr.splitlines()) != 1 or not done.stderr.startswith("klab: error: "):
            wrong.append((args, done.returncode, done.stderr[-600:]))
    assert wrong == []

    leaks = [args for args, text in outputs if SECRET in text]
    assert leaks == []
    assert f":**@127.0.0.1:{broker.port}" in w.text()  # Celery's banner names the broker, masked
    assert SECRET not in w.text()


def test_mask_hides_a_password_in_the_user_part_and_in_the_parameters():
    from service.errors import mask

    assert mask("postgresql://u:pw@h/db and redis://:p@ss@h:1/0") == "postgresql://u:***@h/db and redis://:***@h:1/0"
    assert mask("postgresql://u@h/db?sslmode=require&password=pw&x=1") == \
        "postgresql://u@h/db?sslmode=require&password=***&x=1"
    assert mask("redis://h:1/0?PASSWORD=pw") == "redis://h:1/0?PASSWORD=***"
    assert mask("REDIS://:pw@h:1/0 PostgreSQL://u:pw@h/db") == "REDIS://:***@h:1/0 PostgreSQL://u:***@h/db"  # as klab
    # reads a scheme, in any case
    assert mask("redis://h/0?token=t&client_secret=s&pwd=p&x=1") == "redis://h/0?token=***&client_secret=***&pwd=***&x=1"
    assert mask("an @ in words: user@example.com") == "an @ in words: user@example.com"
    assert mask("reaching postgresql://u:pa/ss@h:1/db: refused") == "reaching postgresql://u:***@h:1/db: refused"
    assert mask("host=h password=pw user=u") == "host=h password=*** user=u"
    assert mask("host=h password = 'p w' dbname=d") == "host=h password = *** dbname=d"
    assert mask("postgresql://h/db?sslpassword=pw&sslmode=require") == "postgresql://h/db?sslpassword=***&sslmode=require"
    assert mask("rediss://h/0?ssl_keyfile_password=pw") == "rediss://h/0?ssl_keyfile_password=***"
    assert mask("sqlite:///tmp/passwords.db") == "sqlite:///tmp/passwords.db"
    assert mask("redis:/:pw@h:1/0 postgresql//u:pw@h/db") == "redis:/:***@h:1/0 postgresql//u:***@h/db"  # mistyped
    assert mask("sqlite:////tmp/a:b@c/klab.db /tmp/a:b@c") == "sqlite:////tmp/a:b@c/klab.db /tmp/a:b@c"  # paths
    for text in ("/tmp/run-T10:30:00@gpu1/k.db", "sqlite:/tmp/run-T10:30:00@gpu1/k.db", "image:a:b@c.png",
                 "at 12:30 ab:cd:ef@host"):  # a time, a file: no URL's user part
        assert mask(text) == text
    assert mask("postgresql:u:pw@h/db") == "postgresql:u:***@h/db"  # a scheme of klab's, its slashes left out
    assert mask("postgresql://u@h/db?password=ab;cd&x=1") == "postgresql://u@h/db?password=***&x=1"  # a ; is the
    # password's: it was cut there and the rest printed
    assert mask("bypass=3 compass=north passfile=/x") == "bypass=3 compass=north passfile=/x"  # no secrets
    assert mask("postgresql://u@h/db?passwd=pw&db_passwd=q&x=1") == "postgresql://u@h/db?passwd=***&db_passwd=***&x=1"
    from service.errors import BadInput
    from service.settings import Settings

    at = "postgresql://h:5432/db?options=-c%20x%40y"  # an @ in a parameter's value, written %40, no user part
    assert Settings.from_env({"KLAB_DATABASE_URL": at}).database_url == at.replace("postgresql:", "postgresql+psycopg:")
    with pytest.raises(BadInput, match="^KLAB_DATABASE_URL: holds an @ after the host .*: write it as %40$"):
        Settings.from_env({"KLAB_DATABASE_URL": at.replace("%40", "@")})  # SQLAlchemy read it as user h of host y


# --- the code itself ------------------------------------------------------------------------------------

def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def findings(path: Path) -> list[str]:
    """What ruff's rules do not see: numpy loads that may unpickle, torch loads of more than weights, and
    credentials written in the code."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            flag = keywords.get("allow_pickle")  # np.load's default lets it through; read_array's does not
            if (name.split(".")[0] in ("np", "numpy") and name.endswith(".load") or "allow_pickle" in keywords) \
                    and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"{where}:{node.lineno}: calls {name} without allow_pickle=False")
            if name == "torch.load":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    found.append(f"{where}:{node.lineno}: calls {name} without weights_only=True")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and (  # a user or none (redis://:pw@)
                re.search(r"[a-z][a-z0-9+.-]*://[^\s/:@'\"]*:[^\s/@'\"*]+@", node.value, re.I)
                or re.search(r"[a-z][a-z0-9+.-]*://\S*[?&]password=[^\s&'\"*]", node.value, re.I)):
            found.append(f"{where}:{node.lineno}: holds a URL with a password")
    return found


def test_no_unsafe_load_or_written_credentials_in_service_or_worker():
    files = sorted([*ROOT.joinpath("service").rglob("*.py"), *ROOT.joinpath("worker").rglob("*.py")])
    assert len(files) > 10
    assert [f for path in files for f in findings(path)] == []


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import numpy as np, torch\n"
        "np.load(path)\n"
        "np.load(path, allow_pickle=True)\n"
        "torch.load(path)\n"
        "URL = 'postgresql://klab:hunter2@db/klab'\n"
        "BROKER = 'redis://:hunter2@localhost:6379/0'\n"
        "QUERY = 'redis://localhost:6379/0?password=hunter2'\n"
        "np.lib.format.read_array(f, allow_pickle=True)\n"
        # allowed:
        "np.load(path, allow_pickle=False)\n"
        "np.lib.format.read_array(f, allow_pickle=False)\n"
        "torch.load(path, weights_only=True)\n"
        "PATTERN = r'(?P<pre>[a-z]+://[^:/@]*:)(?P<pw>[^@]*)(?P<at>@)'\n"
        "MASKED = 'redis://:***@localhost:6379/0', 'postgresql+psycopg://postgres@127.0.0.1:5432/test'\n"
    )
    assert [int(f.split(":")[1]) for f in findings(sample)] == [2, 3, 4, 5, 6, 7, 8]


def test_ruff_catches_pickle_eval_shells_unsafe_yaml_and_formatted_sql():
    """The project's own ruff configuration, on code that does each forbidden thing once, as if it were a module of
    each package the project ships: its select, its ignores and its per-file ignores as `make test`'s ruff applies
    them (a `--select S` of the test's own, on a file outside the project, passed with S ignored everywhere)."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is not installed (make install)"
    sample = (
        "import os\n"
        "import pickle\n"
        "import subprocess\n"
        "import yaml\n"
        "from sqlalchemy import text\n"
        "\n"
        "\n"
        "def bad(x, cmd, name, session, blob):\n"
        "    eval(x)\n"
        "    exec(x)\n"
        "    os.system(cmd)\n"
        "    subprocess.run(cmd, shell=True)\n"
        "    yaml.load(x)\n"
        "    pickle.loads(blob)\n"
        "    session.execute(text(f\"SELECT * FROM jobs WHERE name = '{name}'\"))\n"
    )
    packages = sorted({str(p.parent.relative_to(ROOT)) for top in ("service", "worker", "klab")
                       for p in (ROOT / top).rglob("__init__.py")})
    assert {"service/jobs", "service/render", "worker/engine"} <= set(packages), packages  # where files are read
    for package in [*packages, "migrations/versions"]:
        out = subprocess.run([ruff, "check", "--no-cache", "--output-format", "json", "--stdin-filename",
                              str(ROOT / package / "forbidden_sample.py"), "-"],
                             input=sample, capture_output=True, text=True, cwd=ROOT)
        codes = {(f["location"]["row"], f["code"]) for f in json.loads(out.stdout)}
        for row, code in [(9, "S307"), (10, "S102"), (11, "S605"), (12, "S602"), (13, "S506"),
                          (14, "S301"), (15, "S608")]:
            assert (row, code) in codes, (package, row, code, sorted(codes))


# --- user values reach the database as bound parameters only ------------------------------------------

HOSTILE = ["x' OR '1'='1", "'; DROP TABLE jobs; --", "1) OR (1=1", "\\' OR 1=1 /*", "%' OR 'a' LIKE '%"]


def test_hostile_values_are_data_never_sql(klab_db, add_job, klab_cli):
    """What a user types goes to the database bound, on both backends: a filter value that would be SQL if it
    were formatted in finds nothing, a stored name comes back verbatim, and every table is still there."""
    import klab
    from service.db import writes
    from service.db.engine import writing

    with writing() as conn:
        ids = [add_job(conn, relative=r) for r in (0.1, 0.2, 0.3)]
        sweeps = {name: writes.create_sweep(conn, {"seed": [1, 2]}, 2, name=name) for name in HOSTILE}
    for value in HOSTILE:
        code, out, err = klab_cli("list", "--kernel", f"npy:{value}", "--json")
        assert (code, json.loads(out)) == (0, []), (value, err)
        assert klab.jobs(kernel=f"npy:{value}").empty and klab.jobs(method="adam", input=value).empty
    with pytest.raises(klab.BadInput):
        klab.jobs(**{"1=1 OR id": 1})  # a filter names a column of the summary, never SQL
    listed = klab.sweeps().set_index("id")["name"].to_dict()
    assert {listed[i]: i for i in sweeps.values()} == sweeps  # stored and read back verbatim
    code, out, _ = klab_cli("list", "--limit", "0", "--json")
    assert sorted(r["id"] for r in json.loads(out)) == ids  # the jobs table is intact


@pytest.mark.parametrize(("url", "said"), [
    ("redis://:pa?ss@127.0.0.1:6379/0", "the password holds '?', which a URL's user part cannot hold: write it as %3F"),
    ("redis://u?v:pass@127.0.0.1:6379/0", "the user name holds '?', which a URL's user part cannot hold: write it as "
                                          "%3F"),
    ("redis://:pa#ss@127.0.0.1:6379/0", "the password holds '#', which a URL's user part cannot hold: write it as %23"),
    ("redis://:pa/ss@127.0.0.1:6379/0", "the password holds '/', which a URL's user part cannot hold: write it as %2F"),
    ("redis://:p@ss@127.0.0.1:6379/0", "the password holds an @, which ends the user part of a URL: write it as %40")])
def test_a_broker_password_holding_what_a_url_cannot_is_told_its_escape(url, said):
    """A ? in the password was told "the host or port does not parse": kombu and redis-py read the rest as
    parameters."""
    from service.broker import checked_url
    from service.errors import BadInput

    with pytest.raises(BadInput) as caught:
        checked_url(url)
    assert (caught.value.field, caught.value.message) == ("KLAB_BROKER_URL", said)
    assert checked_url(url.replace("?", "%3F").replace("#", "%23").replace("/ss", "%2Fss").replace("p@", "p%40"))
    for fine in ("rediss://h:6380?ssl_ca_certs=ca@corp.pem", "rediss://h:6380/0?ssl_certfile=me@host.crt"):
        assert checked_url(fine) == fine  # an @ in a parameter's value, after the ?: no user part (once refused)


def test_the_settings_object_masks_its_passwords_when_written():
    from service.settings import Settings
    s = Settings.from_env({"KLAB_HOME": "/tmp/h", "KLAB_DATABASE_URL": "postgresql://u:s3cret@h:1/db?sslpassword=k3y",
                           "KLAB_BROKER_URL": "redis://:b4d@h:1/0"})
    written = repr(s)
    assert "s3cret" not in written and "k3y" not in written and "b4d" not in written
    assert "database_url='postgresql+psycopg://u:***@h:1/db?sslpassword=***', " in written
    assert "broker_url='redis://:***@h:1/0'" in written and "max_epochs=" in written


def test_an_error_and_a_value_are_said_on_one_line_each():
    from service.errors import one_line, shown

    assert one_line(MemoryError()) == "MemoryError" and one_line(RuntimeError("  ")) == "RuntimeError"  # no message
    assert one_line(ValueError("first\nsecond")) == "first"
    assert shown("x" * 78) == repr("x" * 78)  # 80 characters: whole
    assert shown("x" * 79) == repr("x" * 79)[:77] + "..." and len(shown("x" * 79)) == 80
