"""The tests' machinery, in one place: the real `klab` command (in a subprocess or in this process), real
worker processes, redis-servers of the tests' own, and the tests' own reads of a results database.
Fixtures that hand these out live in conftest.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from base64 import b64decode
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def missing(service: str, why: str) -> None:
    """Skip locally; under CI a missing service is a failure, never a silent skip."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{service} is required under CI and is not available: {why}")
    pytest.skip(f"{service} not available: {why}")


# --- the klab command -------------------------------------------------------------------------------

def klab_path() -> str:
    """The installed console script: the one beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "klab"
    if beside.exists():
        return str(beside)
    found = shutil.which("klab")
    assert found, "the klab console script is not installed (make install)"
    return found


@contextlib.contextmanager
def sigint_as_at_a_terminal() -> Iterator[None]:
    """Processes started inside take Ctrl-C as a user at a terminal gives it: SIGINT at its default. A test run
    started in the background by a non-interactive shell (`nohup ... &`, some CI runners) inherits SIGINT
    ignored, and a process started with it ignored keeps ignoring it, as Python does and klab means to; an
    xdist worker that ran the notebook test has it at the default again (nbclient's asyncio handler, removed).
    A handler set in this process is reset to the default at exec, so one set for the spawn is enough."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def without_klab() -> dict[str, str]:
    """This process's environment without any KLAB_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KLAB_")}


def clean_env(home: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without any KLAB_* setting, with its own KLAB_HOME (and database)."""
    env = without_klab()
    env.update({"KLAB_HOME": str(home), "NO_COLOR": "1", "PYTHONPATH": str(ROOT)})
    if database_url:
        env["KLAB_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def service_env(tmp_path: Path, db_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    """The environment of a client or worker of a test, its database upgraded to head."""
    from service.db.engine import dispose_engines, upgrade

    upgrade(db_url)
    dispose_engines()
    return clean_env(tmp_path / "home", db_url, KLAB_BROKER_URL=broker_url, MALLOC_ARENA_MAX="2", **extra)


def klab(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run `klab ARGS` to the end."""
    return subprocess.run([klab_path(), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def with_terminal_stderr(args: list[str], env: dict[str, str], timeout: float = 120
                         ) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    """A program run with stdout piped and stderr a terminal (a pty), the terminal read as one is: what it drew.
    A pty nobody reads fills after some 19 KB, and a progress bar redrawn for 10 s (a loaded machine's slow first
    count) then blocks the program for good."""
    import pty
    import threading

    terminal, stderr = pty.openpty()
    drawn: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the program's end closed the pty's last writer
                return
            if not chunk:
                return
            drawn.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        done = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=stderr, timeout=timeout)
    finally:
        os.close(stderr)
        reader.join(10)
        os.close(terminal)
    return done, b"".join(drawn)


def klab_main(*args: str) -> tuple[int, str, str]:
    """The console script's entry point run in this process: (exit code, stdout, stderr)."""
    from service.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 1 if code else 0), out.getvalue(), err.getvalue()


class Client:
    """A `klab` process running beside the test. Its output goes to files: a pipe that nobody reads yet
    would stop it mid-write, holding whatever it holds."""

    def __init__(self, env: dict[str, str], *args: str, program: str | None = None):
        self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.proc = subprocess.Popen([program or klab_path(), *args], env=env, stdout=self.out, stderr=self.err,
                                     cwd=ROOT)

    def poll(self) -> int | None:
        return self.proc.poll()

    def result(self, timeout: float = 200) -> subprocess.CompletedProcess[str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        texts = []
        for f in (self.out, self.err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        return subprocess.CompletedProcess(self.proc.args, code, *texts)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Runs:
    """Many `klab` processes started together (the console script's start-up dominates), each with its own
    KLAB_HOME and SQLite database, read back by name."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.clients: dict[str, Client] = {}

    def start(self, name: str, *args: str, env: dict[str, str] | None = None, program: str | None = None) -> None:
        home = self.workdir / f"{name}.home"
        home.mkdir()
        self.clients[name] = Client(clean_env(home, f"sqlite:///{home / 'klab.db'}", **(env or {})), *args,
                                    program=program)

    def result(self, name: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.clients[name].result(timeout)

    def close(self) -> None:
        for client in self.clients.values():
            client.kill()


def strict_json(text: str) -> Any:
    """Parse JSON that must not contain NaN or Infinity."""
    def reject(name: str) -> Any:
        raise AssertionError(f"JSON output holds the non-standard constant {name}")

    return json.loads(text, parse_constant=reject)


# --- redis-servers and workers of the tests' own ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server on a free port; kill() and start() again keep its port and its directory (its data)."""

    def __init__(self, workdir: Path, persistent: bool = True, password: str | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server", "the binary is not on PATH")
        self.binary = binary
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persistent else "no", "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log")]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def answers() -> bool:  # this process: another's server that took the port meanwhile is not ours
            try:
                return self.client().info("server")["process_id"] == self.proc.pid
            except Exception:  # noqa: BLE001 - not listening yet
                return False
            finally:
                if self.proc.poll() is not None:
                    log = self.dir / "redis.log"
                    raise AssertionError(f"redis-server did not start: {log.read_text()[-2000:]}")

        wait_until(answers, 15, "redis-server did not answer", every=0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Process:
    """A long-running command in its own process group, its output in a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, name: str | None = None, cwd: Path = ROOT):
        self.name = name or Path(argv[0]).name
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 90, marker: str = "ready.") -> Process:
        """Until the log says `marker` (Celery's "ready."); a process that exits first fails the test."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.text()[-3000:]}")
            return marker in self.text()

        wait_until(ready, timeout, lambda: f"{self.name} did not start:\n{self.text()[-3000:]}")
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> list[int]:
        """Its child processes (a worker's prefork pool)."""
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == self.proc.pid:
                    out.append(int(entry.name))
        return sorted(out)

    def kill(self) -> None:
        """SIGKILL to the whole process group: the main process and its children, with no chance to clean up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM to the process group: Celery's warm shutdown."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, grace: float = 30) -> None:
        """SIGTERM, then SIGKILL if it lingers past `grace` seconds."""
        self.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()


class WorkerProcess(Process):
    """A real `celery -A worker.app worker`, started as `klab worker` starts it, with one torch thread a child
    unless the test's environment sets KLAB_TORCH_THREADS (as `klab worker` reads it).

    `klab worker` splits the cores among its children, which on a machine of its own is right; but the suite runs
    three test processes, their workers and their clients on two cores, where a child with a thread per core
    spins at every one of OpenMP's barriers while the other thread waits for a core: a 3x96x96 adam job trained
    8x slower beside three busy processes than alone at two threads, 3.4x slower than at one thread, and a
    test_leases job, 2,000 epochs in 10 s alone, had trained 1,679 of them after 600 s in CI."""

    def __init__(self, env: dict[str, str], name: str, log: Path, queue: str = "cpu", concurrency: int = 1,
                 loglevel: str = "INFO"):
        from service.cli.workers import worker_argv, worker_command

        argv, extra = worker_argv(queue, concurrency, loglevel, name, int(env.get("KLAB_TORCH_THREADS") or 1))
        super().__init__(worker_command(argv), {**env, **extra}, log, name)
        self.broker_url = env["KLAB_BROKER_URL"]

    def wait_taking(self, timeout: float = 90) -> WorkerProcess:
        """Until it answers a ping, which its event loop reads where it asks the broker for tasks: Celery logs "ready."
        before that loop's first turn, and a worker stalled there (a loaded machine) could find a sweep the others
        had already done (a review: 3 s of stall injected after "ready.", the other worker took every task)."""
        from service.broker import client

        self.wait_ready(timeout)
        node = f"{self.name}@{socket.gethostname()}"
        app = client(self.broker_url)
        wait_until(lambda: any(node in reply for reply in app.control.ping(destination=[node], timeout=1.0) or []),
                   timeout, lambda: f"{self.name} answered no ping:\n{self.text()[-3000:]}")
        return self


def queue_key(db_url: str, queue: str = "cpu") -> str:
    """The broker's name of a test database's queue (service.broker.routed): where its messages wait."""
    from service.broker import routed
    from service.db.reads import identity

    return routed(queue, identity(db_url))


def messages(client, key: str) -> list[dict]:
    """Every message waiting in a queue, oldest first, as kombu wrote it."""
    return [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]


def body(message: dict) -> list:
    """A message's body: [args, kwargs, embed]."""
    raw = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        raw = b64decode(raw)
    return json.loads(raw)


def carried(client, key: str) -> list[int]:
    """The job ids of the messages waiting in a queue, oldest first."""
    return [i for m in messages(client, key) for i in body(m)[0][0]]


def tails(*workers: WorkerProcess) -> Callable[[], str]:
    return lambda: "\n".join(f"--- {w.name}:\n{w.text()[-2500:]}" for w in workers)


# --- waiting, and the tests' own reads -------------------------------------------------------------------

def wait_until(check: Callable[[], Any], timeout: float, what: Callable[[], Any] | str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something true; fail with `what` (or what it returns) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {what() if callable(what) else what}")
        time.sleep(every)


class Db:
    """The test's own reads of a results database (never through a proxy of a test)."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        args = {"timeout": 30} if url.startswith("sqlite") else {}
        self.url = url
        self.engine = create_engine(url, poolclass=NullPool, connect_args=args)

    def rows(self, sql: str, **params: Any) -> list:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.rows(sql, **params)[0][0]

    def execute(self, sql: str, **params: Any) -> None:
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text(sql), params)

    def statuses(self, sweep_id: int | None = None) -> dict[str, int]:
        where, params = ("WHERE sweep_id = :s", {"s": sweep_id}) if sweep_id is not None else ("", {})
        return dict(self.rows(f"SELECT status, count(*) FROM jobs {where} GROUP BY status", **params))

    def all_succeeded(self, sweep_id: int, size: int) -> Callable[[], bool]:
        return lambda: self.statuses(sweep_id) == {"succeeded": size}

    def assert_epochs_stored_once(self) -> None:
        dup = self.rows("SELECT job_id, epoch, count(*) FROM epochs GROUP BY job_id, epoch HAVING count(*) > 1")
        assert dup == [], dup[:5]
        assert self.scalar("SELECT count(*) FROM epochs") == self.scalar("SELECT sum(epochs_done) FROM jobs")

    def close(self) -> None:
        self.engine.dispose()


def sweep_id_of(out: subprocess.CompletedProcess[str]) -> int:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["sweep"]


def run_json(spec: Any, problem: Any = None, on_epoch: Any = None) -> dict[str, Any]:
    """One job trained here, as `klab run --no-store --json` prints it."""
    from service.jobs.result import to_json
    from worker.engine import run_spec

    row, epochs = run_spec(spec, problem, on_epoch)
    return to_json(row, epochs, stored=False, spec=spec.to_json())
