"""Nothing gets in: workers take JSON only, uploads are never unpickled, no user string is evaluated,
formatted into SQL or handed to a shell, and passwords in URLs are never printed or logged."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
from sqlalchemy import update
from sqlalchemy.engine import make_url

from test_faults import (ROOT, Client, free_port, klab, pg_db, redis_server, service_env,  # noqa: F401
                         worker_procs)

SECRET = "s3cretpw"


class Canary:
    """Unpickling this creates a file: proof that someone unpickled it."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.path), "w"))


# --- JSON only --------------------------------------------------------------------------------------

def test_worker_refuses_a_pickled_task_and_nothing_runs(tmp_path, pg_db, redis_server, worker_procs):
    from celery import Celery

    from service.db import dispose_engines, session_scope
    from service.models import Job
    from service.queue import create_jobs, prepare
    from service.spec import JobSpec

    url, db = pg_db
    broker = redis_server()
    env = service_env(tmp_path, url, broker.url())
    with session_scope(url) as session:
        (victim,) = create_jobs(session, prepare([JobSpec.parse({"seed": 3})], None), None)
        session.execute(update(Job).where(Job.id == victim).values(status="queued"))
    dispose_engines()
    guard = worker_procs(env, "guard")

    canary = tmp_path / "unpickled"
    evil = Celery("evil", broker=broker.url())
    evil.conf.update(task_serializer="pickle", accept_content=["pickle"], result_backend=None,
                     broker_connection_retry_on_startup=True)
    evil.send_task("klab.train", args=[[victim]], kwargs={"canary": Canary(canary)}, queue="cpu",
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
    assert client.llen("cpu") == 0 and client.hlen("unacked") == 0
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
               ({"KLAB_DATABASE_URL": f"postgresql://klab:{SECRET}@127.0.0.1:notaport/klab"}, ("list",), 2)]
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


# --- the code itself ------------------------------------------------------------------------------------

SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript", "executemany", "literal_column", "copy",
             "rows", "one", "stream", "_fetch"}  # the last four: service.reader.Reader and service.query
_QUERY = "column names from query's constants, WHERE clauses from query.selection (placeholders); values bound"
REVIEWED_SQL = {
    ("service/store.py", "update_jobs"): "column names come from store.result_columns(), never from a user",
    ("service/store.py", "insert_jobs"): "column names come from store.job_columns(), never from a user",
    ("service/query.py", "selection"): "only :i0, :i1, ... placeholders, made by query._in",
    ("service/query.py", "list_jobs"): "ORDER BY from query.parse_sort, which admits LIST_COLUMNS only; " + _QUERY,
    ("service/query.py", "compare"): _QUERY,
    ("service/query.py", "export_jobs"): _QUERY,
    ("service/query.py", "export_epochs"): _QUERY,
    ("service/query.py", "result_of"): _QUERY,
    ("service/query.py", "progress"): _QUERY,
    ("service/query.py", "delete_jobs"): _QUERY,
}
"""Functions that format SQL from the code's own identifiers: each one read and listed here by name."""


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _formatted(node: ast.AST) -> bool:
    """A string built at run time from something other than UPPER_CASE constants."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) and not (isinstance(v.value, ast.Name) and v.value.id.isupper())
                   for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return isinstance(node.left, (ast.Constant, ast.JoinedStr)) or isinstance(node.right, ast.JoinedStr)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return True
    return False


def findings(path: Path) -> list[str]:
    """What no module of the service or the workers may do with a string."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name

    def add(node: ast.AST, what: str) -> None:
        found.append(f"{where}:{node.lineno}: {what}")

    owner: dict[ast.AST, str] = {}  # each node's innermost function (ast.walk goes outer to inner)
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(fn):
                owner[inner] = fn.name
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                if n and n.split(".")[0] in ("pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"):
                    add(node, f"imports {n}")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        short = name.rsplit(".", 1)[-1]
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
            add(node, f"calls {name}")
        if name in ("os.system", "os.popen", "os.spawnl", "os.spawnlp", "commands.getoutput", "pty.spawn"):
            add(node, f"calls {name}")
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            add(node, f"calls {name} with shell=")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
            add(node, f"calls {name}: only yaml.safe_load")
        if short == "load" and name.split(".")[0] in ("np", "numpy"):
            flag = keywords.get("allow_pickle")
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                add(node, f"calls {name} without allow_pickle=False")
        if short == "load" and name.split(".")[0] == "torch":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                add(node, f"calls {name} without weights_only=True")
        if short in SQL_CALLS and any(_formatted(a) for a in node.args[:2]) and \
                (str(where), owner.get(node)) not in REVIEWED_SQL:
            add(node, f"builds SQL for {name} from a formatted string")
    # credentials are read from the environment, never written in the code
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                re.search(r"[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:[^\s/@'\"*]+@", node.value, re.I):
            add(node, "holds a URL with a password")
    return sorted(found, key=lambda f: int(f.split(":")[1]))


def test_no_eval_pickle_shell_or_formatted_sql_in_service_or_worker():
    files = sorted([*ROOT.joinpath("service").rglob("*.py"), *ROOT.joinpath("worker").rglob("*.py")])
    assert len(files) > 10
    found = [f for path in files for f in findings(path)]
    assert found == []


def test_the_static_check_finds_what_it_looks_for(tmp_path):
    """The scanner itself: each forbidden form is caught, the allowed ones are not."""
    bad = tmp_path / "sample.py"
    bad.write_text(
        "import pickle\n"
        "import os, subprocess, yaml, numpy as np\n"
        "eval(x)\n"
        "os.system(cmd)\n"
        "subprocess.run(cmd, shell=True)\n"
        "yaml.load(text)\n"
        "np.load(path)\n"
        "np.load(path, allow_pickle=True)\n"
        "session.execute(text(f\"SELECT * FROM jobs WHERE name = '{name}'\"))\n"
        "conn.exec_driver_sql('DELETE FROM jobs WHERE id = %s' % job_id)\n"
        "URL = 'postgresql://klab:hunter2@db/klab'\n"
        # allowed:
        "cur.execute(f'PRAGMA busy_timeout={SQLITE_BUSY_MS}')\n"
        "np.load(path, allow_pickle=False)\n"
        "yaml.safe_load(text)\n"
        "subprocess.run(['ls'], shell=False)\n"
        "PATTERN = r'(?P<pre>[a-z]+://[^:/@]*:)(?P<pw>[^@]*)(?P<at>@)'\n"
    )
    found = findings(bad)
    assert [int(f.split(":")[1]) for f in found] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11], found
