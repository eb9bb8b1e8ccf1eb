"""docker-compose.yml, the Dockerfile and .env.example, checked without a Docker engine.

docker-compose (Debian's 1.29) validates the file offline; each service's command, read from the
file, runs here as written, with the environment the file gives it pointed at this machine's Redis
and PostgreSQL.
"""
from __future__ import annotations

import base64
import csv
import fnmatch
import http.client
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from harness import Process, free_port, missing, wait_until, without_klab
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "docker-compose.override.example.yml"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent  # the venv's bin: `klab` and `celery` resolve here, as in the image
PROFILES = ("gpu", "monitor", "cli")
GPU_REFUSED = "klab worker: the gpu queue needs a GPU"
LONG_RUNNING = ("redis", "postgres", "worker", "worker-gpu", "flower")

pytestmark = pytest.mark.timeout(240)


# --- reading the files -------------------------------------------------------------------------

def readme_section(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- section: {name} -->\n(.*?)<!-- /section: {name} -->", text, re.S)
    assert match, f"README.md has no section {name}"
    return match.group(1)


def code_lines(markdown: str) -> list[str]:
    """The lines inside ``` blocks."""
    lines, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as compose reads an env file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


_VAR = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?$", re.S)


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}."""
    def one(m: re.Match) -> str:
        if m["dollar"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        b = _BRACED.match(m["braced"])
        assert b, f"interpolation this test does not know: {m.group(0)}"
        name, op, arg = b["name"], b["op"], b["arg"]
        set_, nonempty = name in env, bool(env.get(name))
        if op == ":-":
            return env[name] if nonempty else arg
        if op == "-":
            return env[name] if set_ else arg
        if op in (":?", "?") and not (nonempty if op == ":?" else set_):
            raise KeyError(f"{name}: {arg}")
        return env.get(name, "")

    return _VAR.sub(one, value)


def resolve(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(x, env) for x in node]
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    return node


def services(env: dict[str, str]) -> dict[str, dict]:
    """docker-compose.yml's services, anchors merged (yaml.safe_load) and variables interpolated from env."""
    return resolve(yaml.safe_load(COMPOSE.read_text())["services"], env)


def argv(service: dict, args: list[str] | None = None) -> list[str]:
    """What the container runs: entrypoint + command (or the args `docker compose run` gives)."""
    def as_list(v) -> list[str]:
        return shlex.split(v) if isinstance(v, str) else list(v or [])

    return as_list(service.get("entrypoint")) + (args if args is not None else as_list(service.get("command")))


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def write_env(path: Path, **values: str) -> Path:
    """.env.example with these values set, written to path: what a user's .env holds."""
    text = ENV_EXAMPLE.read_text()
    for key, value in values.items():
        assert key in dotenv(ENV_EXAMPLE), f".env.example has no {key}"
        text = re.sub(rf"(?m)^{key}=.*$", lambda _, k=key, v=value: f"{k}={v}", text)
    path.write_text(text)
    return path


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """.env.example with a password set."""
    return write_env(tmp_path / ".env", POSTGRES_PASSWORD="compose-test-pw")


# --- docker-compose config ---------------------------------------------------------------------

def compose_command(*args: str, env_file: Path, files: tuple[Path, ...] = (COMPOSE,),
                    extra_env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """docker-compose's argv and environment: none of this process's settings, the env file's instead."""
    exe = shutil.which("docker-compose")
    if exe is None:
        missing("docker-compose", "install it with `apt-get install docker-compose` (make test does as root)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KLAB_", "POSTGRES_", "REDIS_", "FLOWER_", "COMPOSE_", "DOCKER_"))}
    env.update(extra_env or {})
    return [exe, "--env-file", str(env_file), *(a for f in files for a in ("-f", str(f))), *args], env


def docker_compose(*args: str, env_file: Path, files: tuple[Path, ...] = (COMPOSE,),
                   extra_env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd, env = compose_command(*args, env_file=env_file, files=files, extra_env=extra_env)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=env_file.parent)


@pytest.mark.parametrize("profiles", [(), *((p,) for p in PROFILES), PROFILES], ids=lambda p: "+".join(p) or "none")
def test_docker_compose_accepts_the_file(env_file: Path, profiles: tuple[str, ...]):
    out = docker_compose(*(a for p in profiles for a in ("--profile", p)), "config", "-q", env_file=env_file)
    assert out.returncode == 0, out.stderr


def test_docker_compose_accepts_profiles_from_the_environment(env_file: Path):
    """COMPOSE_PROFILES, as a user may set it in .env, instead of --profile."""
    out = docker_compose("config", "-q", env_file=env_file, extra_env={"COMPOSE_PROFILES": ",".join(PROFILES)})
    assert out.returncode == 0, out.stderr


def test_docker_compose_accepts_the_opt_in_ports(env_file: Path):
    out = docker_compose("config", env_file=env_file, files=(COMPOSE, OVERRIDE))
    assert out.returncode == 0, out.stderr
    merged = yaml.safe_load(out.stdout)["services"]
    for name, port in (("postgres", 5432), ("redis", 6379)):
        assert merged[name]["ports"] == [f"127.0.0.1:{port}:{port}/tcp"], "published on loopback only"


@pytest.mark.parametrize("password", [None, ""], ids=["unset", "empty"])
def test_docker_compose_fails_fast_without_a_postgres_password(tmp_path: Path, password: str | None):
    """The committed .env.example, copied as is, must not start a database without a password."""
    text = ENV_EXAMPLE.read_text()
    if password is None:
        text = re.sub(r"(?m)^POSTGRES_PASSWORD=.*\n", "", text)
    path = tmp_path / ".env"
    path.write_text(text)
    out = docker_compose("config", "-q", env_file=path)
    assert out.returncode != 0
    assert "POSTGRES_PASSWORD" in out.stderr


def test_interpolation_here_agrees_with_docker_compose(env_file: Path):
    """The test below resolves the file itself; docker-compose must resolve it the same way."""
    out = docker_compose(*(a for p in PROFILES for a in ("--profile", p)), "config", env_file=env_file)
    assert out.returncode == 0, out.stderr
    theirs = yaml.safe_load(out.stdout.replace("$$", "$"))["services"]  # config re-escapes $
    ours = services(dotenv(env_file))
    assert set(ours) == set(theirs)
    for name, svc in ours.items():
        assert environment(svc) == environment(theirs[name]), name
        assert argv(svc) == argv(theirs[name]), name


# --- the shape the issue asks for ----------------------------------------------------------------

def test_services_have_healthchecks_order_volumes_and_no_published_ports(env_file: Path):
    svc = services(dotenv(env_file))
    assert {"redis", "postgres", "migrate", "worker", "worker-gpu", "flower", "klab"} <= set(svc)
    redis = argv(svc["redis"])
    assert redis[redis.index("--appendonly") + 1] == "yes"  # the queue survives a restart, on its volume:
    assert any(v.endswith(":/data") for v in svc["redis"]["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in svc["postgres"]["volumes"])
    for name in ("redis", "postgres", "worker", "worker-gpu"):
        assert svc[name].get("healthcheck", {}).get("test"), name
    ready = svc["postgres"]["healthcheck"]
    assert "pg_isready -h 127.0.0.1 " in ready["test"][1] and ready["start_period"], ready  # TCP: during its
    # initialisation a new volume's server answers on its socket only, and restarts
    for name in ("worker", "worker-gpu"):  # each pings its own node, under the tree of processes of an init
        command = argv(svc[name])
        node = command[command.index("--hostname") + 1].partition("@")[0]
        assert f"--destination {node}@$HOSTNAME " in svc[name]["healthcheck"]["test"][1], name
        assert (svc[name].get("init"), svc[name].get("stop_grace_period")) == (True, "1m"), name
    assert svc["worker-gpu"]["image"] != svc["worker"]["image"]  # two builds, two tags
    assert svc["migrate"]["restart"] == "no"
    flower = svc["flower"]
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert [p.partition(":")[0] for p in flower["ports"]] == ["127.0.0.1"]  # never every interface
    assert f"--broker={environment(svc['worker'])['KLAB_BROKER_URL']} " in argv(flower)[-1]  # the workers' broker
    for name in ("redis", "postgres"):
        assert "ports" not in svc[name], f"{name} is published without the opt-in override"
    for name in LONG_RUNNING:
        assert svc[name].get("restart") in ("unless-stopped", "always"), name
    assert svc["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "worker-gpu", "klab"):
        deps = svc[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    for name in ("worker", "worker-gpu"):  # --scale worker=N: nothing that names one container
        assert not {"container_name", "hostname", "ports"} & set(svc[name]), name
    assert svc["worker-gpu"]["profiles"] == ["gpu"] and svc["flower"]["profiles"] == ["monitor"]
    devices = svc["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "profiles" not in svc["worker"] and "cli" in svc["klab"]["profiles"]
    # every service built from the app shares one environment
    app = [n for n, s in svc.items() if str(s.get("image", "")).startswith("kernel-lab:")]
    assert {"migrate", "worker", "worker-gpu", "klab"} <= set(app)
    assert len({tuple(sorted(environment(svc[n]).items())) for n in app}) == 1


def test_worker_commands_are_the_readme_lines_and_klab_workers_argv(env_file: Path):
    from service.cli.workers import worker_argv

    svc = services(dotenv(env_file))
    cpu, gpu = argv(svc["worker"]), argv(svc["worker-gpu"])
    readme = readme_section("compose").splitlines()
    plain = [ln for ln in code_lines(readme_section("compose")) if ln.startswith("celery -A worker.app worker -Q cpu")]
    assert plain == [shlex.join(cpu)], "the README's plain celery line differs from the compose worker command"
    concurrency = int(cpu[cpu.index("--concurrency") + 1])
    loglevel = cpu[cpu.index("--loglevel") + 1]
    assert cpu == worker_argv("cpu", concurrency, loglevel)[0]
    assert gpu == worker_argv("gpu", None, gpu[gpu.index("--loglevel") + 1])[0]
    assert any(f"`{shlex.join(gpu)}`" in ln for ln in readme)
    assert svc["worker"]["environment"]["KLAB_TORCH_THREADS"], "the plain line leaves torch threads to compose"
    unset = services({"POSTGRES_PASSWORD": "x"})["worker"]["environment"]  # a .env without the line
    assert unset["KLAB_TORCH_THREADS"] == "1"


# --- every variable documented ----------------------------------------------------------------

def variables_read() -> set[str]:
    """${VAR} in the compose files, and every KLAB_* name in service/ and worker/."""
    names = set()
    for path in (COMPOSE, OVERRIDE):
        names |= set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    for package in ("service", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"\bKLAB_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return names


def test_every_variable_is_in_env_example_and_the_readme():
    names = variables_read()
    assert {"POSTGRES_PASSWORD", "KLAB_DATABASE_URL", "KLAB_BROKER_URL", "KLAB_MAX_EPOCHS",
            "KLAB_TORCH_THREADS"} <= names
    example = ENV_EXAMPLE.read_text()
    table = readme_section("configuration")
    assert [n for n in sorted(names) if not re.search(rf"(?m)^#?\s*{n}=", example)] == [], ".env.example lacks these"
    assert [n for n in sorted(names) if f"`{n}`" not in table] == [], "README's configuration section lacks these"


def test_compose_passes_every_klab_variable_to_the_services(env_file: Path):
    """A KLAB_* setting in .env reaches klab and the workers (KLAB_HOME only matters without a database URL)."""
    env = environment(services(dotenv(env_file))["worker"])
    read = {n for n in variables_read() if n.startswith("KLAB_")}
    assert sorted(read - set(env) - {"KLAB_HOME"}) == []


# --- the Dockerfile ------------------------------------------------------------------------------

def stages() -> list[dict]:
    """The Dockerfile's stages: base image, name and instructions (continuation lines joined)."""
    lines = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
    result: list[dict] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            parts = [p for p in rest.split() if not p.startswith("--")]
            result.append({"image": parts[0], "name": parts[2] if len(parts) > 2 else None, "lines": []})
        else:
            assert result, "an instruction before FROM"
            result[-1]["lines"].append((word.upper(), rest))
    return result


def test_dockerfile_pins_bases_runs_as_a_user_and_installs_once_per_image():
    all_stages = stages()
    names = {s["name"] for s in all_stages}
    for s in all_stages:
        image = s["image"]
        if image in names:
            continue
        tag = image.split("/")[-1].partition("@")[0].partition(":")[2]
        assert tag and tag != "latest" and "$" not in image, f"base image not pinned by tag: {image}"
    targets = {s["name"]: s for s in all_stages}
    compose_targets = {svc["build"]["target"] for svc in yaml.safe_load(COMPOSE.read_text())["services"].values()
                       if isinstance(svc.get("build"), dict)}
    assert compose_targets == {"cpu", "gpu"} and compose_targets <= set(targets)
    assert "cpu" in (all_stages[-1]["name"], all_stages[-1]["image"]), "a plain `docker build .` gives the CPU image"
    for name in ("cpu", "gpu"):
        users = [rest for word, rest in targets[name]["lines"] if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name} runs as root"
        env = " ".join(rest for word, rest in targets[name]["lines"] if word == "ENV")
        assert "MPLCONFIGDIR=/tmp/" in env, f"{name}: matplotlib needs a writable cache under any --user"
        assert "PYTHONPATH=/app" in env.split(), f"{name}: the klab script imports the code copied to /app"

    def pip_installs(stage: dict) -> list[str]:
        return [rest for word, rest in stage["lines"] if word == "RUN" and "pip install" in rest]

    def chain(stage: dict) -> list[dict]:  # the stage and the stages it is built on or copies from
        froms = {m for word, rest in stage["lines"] if word == "COPY" for m in re.findall(r"--from=(\S+)", rest)}
        froms |= {stage["image"]} & set(targets)
        return [stage, *(s for f in froms for s in chain(targets[f]))]

    # The legacy builder builds every stage up to its target: the cpu image must not wait on a gpu stage.
    order = [s["name"] for s in all_stages]
    cpu_chain = {s["name"] for s in chain(targets["cpu"])}
    gpu_only = {s["name"] for s in chain(targets["gpu"])} - cpu_chain
    assert max(map(order.index, cpu_chain)) < min(map(order.index, gpu_only)), order
    for name in ("cpu", "gpu"):
        installs = [i for s in chain(targets[name]) for i in pip_installs(s)]
        assert len(installs) == 1, f"{name}: {installs}"
        assert "-c constraints.txt" in installs[0], installs[0]
        assert not pip_installs(targets[name]), f"{name} installs in its own stage: build leftovers stay in it"
    cpu_install = [i for s in chain(targets["cpu"]) for i in pip_installs(s)][0]
    assert "download.pytorch.org/whl/cpu" in cpu_install
    gpu_install = [i for s in chain(targets["gpu"]) for i in pip_installs(s)][0]
    assert "download.pytorch.org" not in gpu_install, gpu_install  # the base image's CUDA torch, kept by:
    assert any(word == "RUN" and "venv --system-site-packages" in rest
               for word, rest in targets["gpu-builder"]["lines"])
    final = " ".join(rest for _, rest in targets["cpu"]["lines"])
    assert not re.search(r"apt-get|build-essential|gcc", final), "build tools in the final stage"
    for name in ("cpu", "gpu"):  # the CLI, the workers and the Python API (import klab) in both images
        for path in ("klab/", "service/", "worker/", "migrations/", "alembic.ini"):
            assert any(word == "COPY" and path in rest for word, rest in targets[name]["lines"]), (name, path)


def test_dockerignore_keeps_the_venv_and_git_out_but_not_the_code():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert {".venv", ".git", ".env", ".env.*"} <= {p.strip("/") for p in patterns}  # .env: the secrets
    copied = ["pyproject.toml", "constraints.txt", "alembic.ini", "klab", "service", "worker", "migrations"]
    assert [c for c in copied if any(fnmatch.fnmatch(c, p.strip("/")) for p in patterns)] == []


# --- the services' commands, run here ----------------------------------------------------------

def local(service_env: dict[str, str], pg_url: str, redis_url: str) -> dict[str, str]:
    """The service's environment with postgres and redis pointed at this machine's test database and index."""
    here = {"postgres": pg_url, "redis": redis_url}
    env = without_klab()
    mapped = set()
    for key, value in service_env.items():
        url = urlsplit(value) if "://" in value else None
        if url and url.hostname in here:
            target = here[url.hostname]
            assert url.scheme == urlsplit(target).scheme, (key, value)  # same driver: postgresql+psycopg, redis
            value = target
            mapped.add(url.hostname)
        env[key] = value
    assert mapped == {"postgres", "redis"}, f"the services do not reach both postgres and redis: {service_env}"
    env.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1",
                "HOSTNAME": socket.gethostname()})  # Docker sets HOSTNAME to what Celery's %h reads
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    assert Path(shutil.which(cmd[0], path=env["PATH"]) or "").parent == BIN, cmd[0]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def healthcheck(service: dict, env: dict[str, str], wait: bool = True):
    """The service's healthcheck test run here: its result, or (wait=False) the running process."""
    kind, *test = service["healthcheck"]["test"]
    cmd = ["sh", "-c", test[0]] if kind == "CMD-SHELL" else test
    if not wait:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def service(cmd: list[str], env: dict[str, str], log: Path) -> Process:
    """A long-running service's command, as its container would run it (from the venv's bin)."""
    assert Path(shutil.which(cmd[0], path=env["PATH"]) or "").parent == BIN, cmd[0]
    return Process(cmd, env, log)


@pytest.fixture
def started(tmp_path: Path) -> Iterator:
    """started({name: (cmd, env)}, ready=True): the services, started together (and waited for); stopped
    afterwards."""
    procs: list[Process] = []

    def start(commands: dict[str, tuple[list[str], dict[str, str]]], ready: bool = True) -> list[Process]:
        new = [service(cmd, env, tmp_path / f"{name}.log") for name, (cmd, env) in commands.items()]
        procs.extend(new)
        for p in new if ready else ():
            p.wait_ready()
        return new

    yield start
    for p in procs:  # warm shutdowns, side by side
        p.terminate()
    for p in procs:
        p.stop()


def serves_the_gpu_queue(exited: Callable[[], bool], log: Callable[[], str]) -> bool:
    """Whether a gpu worker came up: True once it is ready; False if it stopped at once with the one line of
    worker/app.py, which refuses the gpu queue where torch sees no GPU (it would take gpu jobs only to fail
    them). Anything else fails the test."""
    wait_until(lambda: exited() or "ready." in log(), 120, lambda: f"the gpu worker hangs:\n{log()[-3000:]}", every=0.5)
    if not exited():
        return True
    lines = log().strip().splitlines()
    assert lines and lines[-1].startswith(GPU_REFUSED) and "Traceback" not in log(), log()[-3000:]
    return False


def readme_klab_runs() -> list[list[str]]:
    """The arguments of each line of the README's example of the klab service: the compose section's
    first code block made only of `docker compose run --rm klab ...` lines."""
    prefix = "docker compose run --rm klab "
    blocks = re.findall(r"```sh\n(.*?)```", readme_section("compose"), re.S)
    example = next((b.splitlines() for b in blocks if all(ln.startswith(prefix) for ln in b.splitlines())), [])
    return [shlex.split(ln[len(prefix):], comments=True) for ln in example]


def test_a_job_flows_through_the_services_as_written(env_file, pg_url, redis_url, started):
    svc = services(dotenv(env_file))
    env = {name: local(environment(svc[name]), pg_url, redis_url)
           for name in ("migrate", "worker", "worker-gpu", "klab")}

    up = run(argv(svc["migrate"]), env["migrate"])
    assert up.returncode == 0, up.stderr
    again = run(argv(svc["migrate"]), env["migrate"])  # every `up` runs it again
    assert again.returncode == 0 and again.stdout == up.stdout, again.stderr

    worker, gpu_worker = started({name: (argv(svc[name]), env[name]) for name in ("worker", "worker-gpu")},
                                 ready=False)
    worker.wait_ready()
    serves_gpu = serves_the_gpu_queue(lambda: gpu_worker.proc.poll() is not None, gpu_worker.text)
    for name in ("worker", "worker-gpu")[:1 + serves_gpu]:
        health = healthcheck(svc[name], env[name])
        assert health.returncode == 0, health.stdout + health.stderr
    # ...and it asks the container's own node, not whichever worker answers (Docker sets HOSTNAME)
    elsewhere = healthcheck(svc["worker"], {**env["worker"], "HOSTNAME": f"no-such-{uuid.uuid4().hex}"}, wait=False)

    runs = readme_klab_runs()
    assert runs and runs[0][0] == "submit" and "--wait" in runs[0], runs
    outputs = {}
    for args in runs:
        out = run(argv(svc["klab"], args), env["klab"], timeout=180)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        outputs[args[0]] = out.stdout
    assert "list" not in outputs or runs[0][runs[0].index("--kernel") + 1] in outputs["list"]
    if serves_gpu:
        gpu = run(argv(svc["klab"], ["submit", "--queue", "gpu", "--device", "auto", "--wait", "--json"]), env["klab"])
        assert gpu.returncode == 0, gpu.stderr
        assert json.loads(gpu.stdout)["status"] == "succeeded"

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            jobs = conn.execute(text("SELECT id, status, queue, worker_host FROM jobs ORDER BY id")).all()
            epochs = dict(conn.execute(text("SELECT job_id, count(*) FROM epochs GROUP BY job_id")).all())
    finally:
        engine.dispose()
    assert jobs and {j.status for j in jobs} == {"succeeded"}, jobs
    assert {j.id for j in jobs} == set(epochs) and min(epochs.values()) > 0
    last = ("gpu", "gpu") if serves_gpu else ("cpu", "cpu")
    assert [(j.queue, j.worker_host.split("@")[0]) for j in (jobs[0], jobs[-1])] == [("cpu", "cpu"), last]
    assert elsewhere.wait(60) != 0, elsewhere.stdout.read()


def test_flower_does_not_start_without_credentials(env_file: Path):
    """Without FLOWER_BASIC_AUTH its API would answer 401 to everyone and its pages anyone: it refuses to start."""
    flower = services(dotenv(env_file))["flower"]
    assert environment(flower) == {"FLOWER_BASIC_AUTH": ""}
    out = subprocess.run(argv(flower), env={**without_klab(), **environment(flower)}, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "FLOWER_BASIC_AUTH" in out.stderr, out


# --- on a Docker engine (make test-compose) ----------------------------------------------------------
# tests/compose/run.sh starts an engine and makes the base images (stand-ins where no registry answers), then
# runs these with KLAB_TEST_DOCKER=1: both images built, the stack up with a .env and a project of its own, the
# README's compose lines run through it, a worker killed, Flower asked, and all of it down with its volumes.

ENGINE = os.environ.get("KLAB_TEST_DOCKER") == "1"
OUT = ROOT / "out" / "test-compose"
LEASE_SECONDS = 10  # a killed worker's job is taken back this long after its last heartbeat (through .env)
OTHER_USER = "4321:4321"  # a user the image does not know, as `--user "$(id -u):$(id -g)"` gives


class Stack:
    """docker-compose on the test's own .env and project (COMPOSE_PROJECT_NAME), with Debian's docker client."""

    def __init__(self, env_file: Path):
        self.env_file = env_file
        self.values = dotenv(env_file)
        self.project = self.values["COMPOSE_PROJECT_NAME"]
        self.services = services(self.values)
        self.docker = os.environ.get("DOCKER") or shutil.which("docker") or "docker"
        # docker-compose 1.29 builds with the `docker` on PATH: put the client that has BuildKit first
        self.path = f"{Path(self.docker).parent}{os.pathsep}{os.environ.get('PATH', '')}"

    def __call__(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        return docker_compose(*args, env_file=self.env_file, extra_env={"PATH": self.path, **env}, timeout=timeout)

    def start(self, log: Path, *args: str, **env: str) -> Process:
        """docker-compose ARGS running beside the test, its output in log."""
        cmd, full_env = compose_command(*args, env_file=self.env_file, extra_env={"PATH": self.path, **env})
        return Process(cmd, full_env, log, name=" ".join(args))

    def klab(self, *args: str) -> subprocess.CompletedProcess:
        """`docker compose run --rm -T klab ARGS` (-T: no terminal here)."""
        return self("run", "--rm", "-T", "klab", *args)

    def docker_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self.docker, *args], capture_output=True, text=True, timeout=timeout)

    def psql(self, sql: str) -> list[list[str]]:
        """Rows from psql in the postgres container, as the README's `docker compose exec postgres psql` runs it."""
        out = self("exec", "-T", "postgres", "psql", "-U", self.values["POSTGRES_USER"], "-d",
                   self.values["POSTGRES_DB"], "-v", "ON_ERROR_STOP=1", "-AtF", "\t", "-c", sql, timeout=60)
        assert out.returncode == 0, out.stderr
        return [line.split("\t") for line in out.stdout.splitlines()]

    def containers(self, service: str) -> list[str]:
        out = self("ps", "-a", "-q", service, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    def inspect(self, container: str, template: str) -> str:
        out = self.docker_cli("inspect", "-f", template, container)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def healthy(self, service: str, count: int = 1) -> bool:
        ids = self.containers(service)
        return len(ids) == count and all(self.inspect(c, "{{.State.Health.Status}}") == "healthy" for c in ids)


def built(build: Process) -> str:
    """The build's output, once it succeeded."""
    code = build.proc.wait(540)
    log = build.text()
    assert code == 0, f"{build.name} failed:\n{log[-4000:]}"
    return log


def readme_line(start: str, **shell: str) -> list[str]:
    """The words after `docker compose` of the compose section's line that starts with `start`, up to a
    redirection, with the shell's expansions replaced (`{"$PWD": "/tmp/x"}`)."""
    line = next(ln for ln in code_lines(readme_section("compose")) if ln.startswith(start))
    for expansion, value in shell.items():
        line = line.replace(expansion, value)
    words = shlex.split(line, comments=True)
    return words[2:words.index(">")] if ">" in words else words[2:]


@pytest.fixture(scope="module")
def stack_env() -> Iterator[Stack]:
    """A .env as a user writes it, with a project, a password, Flower's credentials and short leases of its own."""
    if not ENGINE:  # conftest deselects the docker tests unless KLAB_TEST_DOCKER=1: never a silent skip
        pytest.fail("the docker tests need a Docker engine and KLAB_TEST_DOCKER=1: make test-compose")
    with tempfile.TemporaryDirectory() as folder:
        stack = Stack(write_env(
            Path(folder) / ".env",
            COMPOSE_PROJECT_NAME=os.environ.get("KLAB_TEST_COMPOSE_PROJECT") or f"klab-test-{uuid.uuid4().hex[:8]}",
            POSTGRES_PASSWORD=uuid.uuid4().hex, FLOWER_BASIC_AUTH=f"monitor:{uuid.uuid4().hex}",
            FLOWER_PORT=str(free_port()), KLAB_LEASE_SECONDS=str(LEASE_SECONDS)))
        if stack.docker_cli("info").returncode != 0:
            missing("a Docker engine", f"`{stack.docker} info` fails (make test-compose starts one)")
        yield stack


@pytest.fixture(scope="module")
def builds(stack_env: Stack) -> Iterator[dict[str, Process]]:
    """Both images, built side by side: cpu as docker-compose 1.29 builds it unless told otherwise (with the
    legacy builder), gpu with BuildKit. Their logs are kept in out/."""
    OUT.mkdir(parents=True, exist_ok=True)
    started = {"cpu": stack_env.start(OUT / "build-cpu.log", "build", "migrate", DOCKER_BUILDKIT="0"),
               "gpu": stack_env.start(OUT / "build-gpu.log", "--profile", "gpu", "build", "worker-gpu",
                                      DOCKER_BUILDKIT="1")}
    yield started
    for build in started.values():
        build.kill()


@pytest.fixture(scope="module")
def stack(stack_env: Stack, builds: dict[str, Process]) -> Iterator[Stack]:
    """The stack up with two workers, both healthy; down with its volumes afterwards, its logs kept in out/."""
    built(builds["cpu"])
    try:
        up = stack_env("up", "-d", "--scale", "worker=2")
        assert up.returncode == 0, up.stderr
        wait_until(lambda: stack_env.healthy("worker", 2), 180,
                   lambda: f"workers not healthy:\n{stack_env('ps').stdout}", every=2)
        yield stack_env
    finally:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "compose.log").write_text(stack_env("--profile", "monitor", "logs", "--no-color", "--timestamps").stdout)
        down = stack_env("--profile", "monitor", "down", "-v")
        assert down.returncode == 0, down.stderr
        label = f"label=com.docker.compose.project={stack_env.project}"
        assert stack_env.docker_cli("volume", "ls", "-q", "--filter", label).stdout.split() == [], "volumes left"


@pytest.fixture(scope="module")
def readme_runs(stack: Stack) -> dict[str, subprocess.CompletedProcess]:
    """Each line of the README's example of the klab service, in order, on the stack's fresh database."""
    runs = readme_klab_runs()
    assert runs and runs[0][0] == "submit" and "--wait" in runs[0], runs
    outputs = {}
    for args in runs:
        out = stack.klab(*args)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        outputs[args[0]] = out
    return outputs


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_the_cpu_image_builds_without_the_gpu_stages(stack_env: Stack, builds):
    log = built(builds["cpu"])
    froms = re.findall(r"(?m)^Step \d+/\d+ : FROM (\S+)", log)
    assert froms, f"not the legacy builder:\n{log[-2000:]}"
    gpu_base = {s["name"]: s for s in stages()}["gpu"]["image"]
    assert gpu_base not in froms, f"building the cpu image went through the gpu stages: {froms}"
    image = stack_env.services["migrate"]["image"]
    assert stack_env.docker_cli("run", "--rm", image, "id", "-u").stdout.strip() == "10001"
    demo = re.search(r"\$\(BIN\)/klab (run .*)", (ROOT / "Makefile").read_text())[1].split()
    out = stack_env.docker_cli("run", "--rm", image, "klab", *demo)
    assert out.returncode == 0 and "job 1: succeeded" in out.stdout, out.stdout + out.stderr
    api = ("import klab; r = klab.run(input='edge:6x8', kernel='d2l', method='d2l-manual', lr=0.03, epochs=10, "
           "store=False); print(r.status, len(r.epochs))")
    out = stack_env.docker_cli("run", "--rm", image, "python", "-c", api)
    assert out.returncode == 0 and out.stdout.split() == ["succeeded", "10"], out.stdout + out.stderr


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_the_stack_comes_up_under_its_project_name(stack: Stack):
    (migrate,) = stack.containers("migrate")
    assert stack.inspect(migrate, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
    assert stack.healthy("redis") and stack.healthy("postgres")
    running = stack.docker_cli("ps", "-q", "--filter", f"label=com.docker.compose.project={stack.project}")
    assert len(running.stdout.split()) == 4, "redis, postgres and two workers, named by COMPOSE_PROJECT_NAME"


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_the_readme_lines_store_their_jobs_in_postgres(stack: Stack, readme_runs):
    assert "succeeded" in readme_runs["submit"].stdout
    assert readme_runs["workers"].stdout.count("cpu@") == 2, readme_runs["workers"].stdout
    export = stack(*readme_line("docker compose run --rm -T klab export"))
    assert export.returncode == 0, export.stderr
    rows = list(csv.DictReader(io.StringIO(export.stdout)))
    sweep = stack.psql("SELECT id, status FROM jobs WHERE sweep_id = 1 ORDER BY id")
    assert sweep and [[r["id"], r["status"]] for r in rows] == sweep
    assert stack.psql("SELECT DISTINCT status FROM jobs") == [["succeeded"]]
    assert stack.psql("SELECT count(*) FROM jobs") == [[str(1 + len(sweep))]]
    (stored, done), = stack.psql("SELECT (SELECT count(*) FROM epochs), (SELECT sum(epochs_done) FROM jobs)")
    assert int(stored) > 0 and stored == done


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_the_python_api_reads_the_stack_as_the_readme_says(stack: Stack, readme_runs):
    out = stack(*readme_line("docker compose run --rm -T --entrypoint python klab"))
    assert out.returncode == 0, out.stderr
    header, *lines = out.stdout.splitlines()
    assert header.split() == ["id", "status", "relative_error"], out.stdout
    rows = [line.split()[1:3] for line in lines]  # after the DataFrame's index
    assert rows and rows == stack.psql("SELECT id, status FROM jobs WHERE sweep_id = 1 ORDER BY id"), out.stdout


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_plot_writes_as_any_user_without_warnings(stack: Stack, readme_runs, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o777)
    words = readme_line("docker compose run --rm --user", **{"$(id -u):$(id -g)": OTHER_USER, "$PWD": str(data)})
    out = stack(words[0], "-T", *words[1:])
    assert out.returncode == 0, out.stderr
    assert "matplotlib" not in out.stderr.lower(), "matplotlib wants a writable MPLCONFIGDIR"
    png = data / words[-1]
    assert png.read_bytes()[:4] == b"\x89PNG" and f"{png.stat().st_uid}:{png.stat().st_gid}" == OTHER_USER


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_flower_answers_with_its_credentials_only(stack: Stack):
    up = stack("--profile", "monitor", "up", "-d", "flower")
    assert up.returncode == 0, up.stderr
    port = int(stack.values["FLOWER_PORT"])

    def get(credentials: str | None) -> tuple[int | None, bytes]:
        headers = {"Authorization": f"Basic {base64.b64encode(credentials.encode()).decode()}"} if credentials else {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.request("GET", "/api/workers?refresh=1", headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:  # not listening yet
            return None, b""
        finally:
            conn.close()

    def both_workers() -> dict | None:
        status, body = get(stack.values["FLOWER_BASIC_AUTH"])
        workers = json.loads(body) if status == 200 else {}
        return workers if sum(name.startswith("cpu@") for name in workers) == 2 else None

    wait_until(both_workers, 90, lambda: f"no two workers in Flower:\n{stack('logs', '--no-color', 'flower').stdout}",
               every=1)
    user = stack.values["FLOWER_BASIC_AUTH"].partition(":")[0]
    assert get(None)[0] == 401 and get(f"{user}:wrong")[0] == 401
    (flower,) = stack.containers("flower")
    assert stack.docker_cli("port", flower, "5555").stdout.split() == [f"127.0.0.1:{port}"]


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_the_gpu_image_keeps_nothing_of_its_build(stack_env: Stack, builds):
    built(builds["gpu"])
    image = stack_env.services["worker-gpu"]["image"]
    version = stack_env.docker_cli("run", "--rm", image, "klab", "--version")
    assert version.returncode == 0 and "klab, version" in version.stdout, version.stderr
    left = stack_env.docker_cli("run", "--rm", image, "find", "/", "-xdev", "(", "-path", "/build", "-o", "-name",
                                "kernel_lab*.egg-info", ")", "-print", "-prune")
    assert left.stdout.split() == [], "build leftovers in the gpu image"


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_the_gpu_image_runs_the_gpu_worker(stack: Stack, builds):
    """The worker-gpu service as written, its command in the gpu image. With a GPU (`--gpus all` works) it trains
    a cuda job; without one, it refuses the gpu queue (worker/app.py) or, where the code does not check, serves
    it on the CPU."""
    built(builds["gpu"])
    gpu = stack.services["worker-gpu"]
    probe = stack.docker_cli("run", "--rm", "--gpus", "all", gpu["image"], "python", "-c",
                             "import torch; print(torch.cuda.is_available())")
    gpus = ["--gpus", "all"] if probe.returncode == 0 and probe.stdout.strip() == "True" else []
    name = f"{stack.project}-worker-gpu-test"
    env = [a for k, v in environment(gpu).items() for a in ("-e", f"{k}={v}")]
    run = stack.docker_cli("run", "-d", "--init", *gpus, "--name", name, "--network", f"{stack.project}_default",
                           *env, gpu["image"], *argv(gpu))
    assert run.returncode == 0, run.stderr

    def log() -> str:
        out = stack.docker_cli("logs", name)
        return out.stdout + out.stderr

    try:
        if not serves_the_gpu_queue(lambda: stack.inspect(name, "{{.State.Running}}") == "false", log):
            assert not gpus, "a gpu worker that sees a GPU refused to start"
            return
        _, health = gpu["healthcheck"]["test"]
        assert stack.docker_cli("exec", name, "sh", "-c", health).returncode == 0, "its healthcheck fails"
        device = "cuda" if gpus else "auto"
        out = stack.klab("submit", "--queue", "gpu", "--device", device, "--wait", "--json")
        assert out.returncode == 0, out.stderr
        job = json.loads(out.stdout)
        assert (job["status"], job["queue"], job["worker_host"].partition("@")[0]) == ("succeeded", "gpu", "gpu")
        assert job["device"].startswith(device if gpus else "cpu"), job["device"]
    finally:
        stack.docker_cli("rm", "-f", name)


@pytest.mark.timeout(600)
@pytest.mark.docker
def test_engine_a_killed_workers_job_is_finished_by_the_other(stack: Stack):
    out = stack.klab("submit", "--input", "random:64x64", "--kernel", "random:5x5", "--method", "adam",
                     "--lr", "0.01", "--epochs", "15000")
    assert out.returncode == 0, out.stderr
    job = int(out.stdout.split()[-1])
    query = f"SELECT status, worker_host, epochs_done, attempts FROM jobs WHERE id = {job}"

    def training() -> list[str] | None:
        (row,) = stack.psql(query)
        return row if row[0] == "running" and int(row[2] or 0) > 0 else None

    _, host, _, _ = wait_until(training, 60, "the job did not start training", every=0.5)
    victim = host.partition("@")[2]  # Celery's %h: the container's hostname, the start of its id
    assert any(c.startswith(victim) for c in stack.containers("worker")), (victim, stack.containers("worker"))
    killed = stack.docker_cli("kill", victim)
    assert killed.returncode == 0, killed.stderr
    wait_until(lambda: stack.psql(query)[0][0] == "succeeded", LEASE_SECONDS * 3 + 120,
               lambda: f"not finished: {stack.psql(query)}", every=1)
    _, other, epochs, attempts = stack.psql(query)[0]
    assert other.startswith("cpu@") and other != host and attempts == "2"
    assert stack.psql(f"SELECT count(*) FROM epochs WHERE job_id = {job}") == [[epochs]] == [["15000"]]
    assert stack.inspect(victim, "{{.State.Running}}") == "false", "a killed worker is not restarted"
