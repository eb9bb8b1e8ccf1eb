"""docker-compose.yml, the Dockerfile and .env.example, checked without a Docker engine.

docker-compose (Debian's 1.29) validates the file offline; each service's command, read from the
file, runs here as written, with the environment the file gives it pointed at this machine's Redis
and PostgreSQL.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from harness import Process, missing, without_klab
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
OVERRIDE = ROOT / "docker-compose.override.example.yml"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent  # the venv's bin: `klab` and `celery` resolve here, as in the image
PROFILES = ("gpu", "monitor", "cli")
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


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """.env.example with a password set: what a user's .env holds."""
    values = dotenv(ENV_EXAMPLE)
    assert "POSTGRES_PASSWORD" in values
    text = re.sub(r"(?m)^POSTGRES_PASSWORD=.*$", "POSTGRES_PASSWORD=compose-test-pw", ENV_EXAMPLE.read_text())
    path = tmp_path / ".env"
    path.write_text(text)
    return path


# --- docker-compose config ---------------------------------------------------------------------

def docker_compose(*args: str, env_file: Path, files: tuple[Path, ...] = (COMPOSE,),
                   extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        missing("docker-compose", "install it with `apt-get install docker-compose` (make test does as root)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KLAB_", "POSTGRES_", "REDIS_", "FLOWER_", "COMPOSE_"))}
    env.update(extra_env or {})
    cmd = [exe, "--env-file", str(env_file), *(a for f in files for a in ("-f", str(f))), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=env_file.parent)


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
    assert "--appendonly" in argv(svc["redis"]) and any(v.endswith(":/data") for v in svc["redis"]["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in svc["postgres"]["volumes"])
    for name in ("redis", "postgres", "worker", "worker-gpu"):
        assert svc[name].get("healthcheck", {}).get("test"), name
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
    assert all_stages[-1]["name"] == "cpu", "a plain `docker build .` gives the CPU image"
    for name in ("cpu", "gpu"):
        users = [rest for word, rest in targets[name]["lines"] if word == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name} runs as root"

    def pip_installs(stage: dict) -> list[str]:
        return [rest for word, rest in stage["lines"] if word == "RUN" and "pip install" in rest]

    def chain(stage: dict) -> list[dict]:  # the stage and the stages it is built on or copies from
        froms = {m for word, rest in stage["lines"] if word == "COPY" for m in re.findall(r"--from=(\S+)", rest)}
        froms |= {stage["image"]} & set(targets)
        return [stage, *(s for f in froms for s in chain(targets[f]))]

    for name in ("cpu", "gpu"):
        installs = [i for s in chain(targets[name]) for i in pip_installs(s)]
        assert len(installs) == 1, f"{name}: {installs}"
        assert "-c constraints.txt" in installs[0], installs[0]
    cpu_install = [i for s in chain(targets["cpu"]) for i in pip_installs(s)][0]
    assert "download.pytorch.org/whl/cpu" in cpu_install
    final = " ".join(rest for _, rest in targets["cpu"]["lines"])
    assert not re.search(r"apt-get|build-essential|gcc", final), "build tools in the final stage"
    for path in ("service/", "worker/", "migrations/", "alembic.ini"):
        assert any(word == "COPY" and path in rest for word, rest in targets["cpu"]["lines"]), path


def test_dockerignore_keeps_the_venv_and_git_out_but_not_the_code():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert {".venv", ".git"} <= {p.strip("/") for p in patterns}
    copied = ["pyproject.toml", "constraints.txt", "alembic.ini", "service", "worker", "migrations"]
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
    """started({name: (cmd, env)}): the services, started together and ready; stopped afterwards."""
    procs: list[Process] = []

    def start(commands: dict[str, tuple[list[str], dict[str, str]]]) -> None:
        new = [service(cmd, env, tmp_path / f"{name}.log") for name, (cmd, env) in commands.items()]
        procs.extend(new)
        for p in new:
            p.wait_ready()

    yield start
    for p in procs:  # warm shutdowns, side by side
        p.terminate()
    for p in procs:
        p.stop()


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

    started({name: (argv(svc[name]), env[name]) for name in ("worker", "worker-gpu")})
    for name in ("worker", "worker-gpu"):
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
    assert [(j.queue, j.worker_host.split("@")[0]) for j in (jobs[0], jobs[-1])] == [("cpu", "cpu"), ("gpu", "gpu")]
    assert elsewhere.wait(60) != 0, elsewhere.stdout.read()
