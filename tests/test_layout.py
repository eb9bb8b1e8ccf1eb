"""The house rules that a reader would otherwise check by hand: the README's module map is the tree, no module
grows past 400 lines, job statuses are spelled in one place, the stable learning rate has one home, and nothing
stray is committed at the top level."""
from __future__ import annotations

import ast
import re
import subprocess
import tomllib

from harness import ROOT

from service.jobs.status import JobStatus

CODE = ("klab", "service", "worker")


def modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for d in CODE for p in (ROOT / d).rglob("*.py"))


def test_the_readme_module_map_is_the_tree():
    block = re.search(r"<!-- section: code -->.*?```\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    listed, stack = set(), []
    for line in block.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.endswith(("/", ".py")):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        stack[depth:] = [name]
        if name.endswith(".py"):
            listed.add("".join(stack))
    actual = {m for m in modules() if not m.endswith("__init__.py")}
    cli = {m for m in actual if m.startswith("service/cli/")}  # the map names the commands, not each file
    assert listed == actual - cli
    from service.cli import COMMANDS  # ... whose modules are those of the commands, and what those import

    imported = {m for path in cli
                for m in re.findall(r"(?m)^from (service\.cli\.\w+) import", (ROOT / path).read_text())}
    assert {path[:-3].replace("/", ".") for path in cli} <= {module for module, _ in COMMANDS.values()} | imported


def test_no_module_is_longer_than_400_lines():
    assert [m for m in modules() if len((ROOT / m).read_text().splitlines()) > 400] == []


def test_statuses_are_spelled_only_in_the_status_module():
    """Not as a string of their own, nor as a literal inside SQL (`status <> 'created'`)."""
    spelled = {s.value for s in JobStatus}
    in_sql = re.compile(f"'({'|'.join(spelled)})'")
    found = []
    for m in modules():
        if m == "service/jobs/status.py":
            continue
        for node in ast.walk(ast.parse((ROOT / m).read_text())):
            if isinstance(node, ast.Constant) and (node.value in spelled or
                                                   isinstance(node.value, str) and in_sql.search(node.value)):
                found.append((m, node.lineno, node.value))
    assert found == []


def test_the_stable_learning_rate_lives_in_the_schema_and_the_code_that_computes_it():
    out = subprocess.run(["git", "grep", "-l", "--untracked", "stable_lr", "--", *CODE], cwd=ROOT,
                         capture_output=True, text=True)
    assert sorted(out.stdout.split()) == ["service/jobs/result.py", "worker/engine/pace.py"], out.stdout


def test_every_option_of_every_command_says_what_it_does():
    import click

    from service.cli import cli

    def commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
        found = []
        with click.Context(group) as ctx:  # the commands' modules are imported as klab imports them: lazily
            listed = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
        for name, command in listed:
            found.append((prefix + name, command))
            if isinstance(command, click.Group):
                found += commands(command, f"{prefix}{name} ")
        return found

    silent = [f"klab {name} {param.opts[0]}" for name, command in commands(cli) for param in command.params
              if isinstance(param, click.Option) and not param.help and not param.hidden]
    assert len(commands(cli)) > 17 and silent == []  # every command, and db's subcommands
    files = {name: p.help for name, command in commands(cli) for p in command.params if p.name == "spec_file"}
    assert files == {"run": "a job in JSON or YAML (flags given override it)",  # sweep's said "a job" too
                     "submit": "jobs: one in JSON or YAML, or one a line in JSONL (flags given override it)",
                     "sweep": "a sweep in JSON or YAML: any swept field may hold a list or a range (flags given "
                              "override it)"}


PROJECT = {".ci", ".dockerignore", ".env.example", ".gitignore", "Dockerfile", "Makefile", "README.md", "alembic.ini",
           "bench", "constraints.txt", "docker-compose.override.example.yml", "docker-compose.yml", "examples", "klab",
           "migrations", "pyproject.toml", "service", "tests", "worker"}
"""What the repository's top level holds: the design card's directories, what builds, runs and tests them."""


def test_the_top_level_holds_the_project_and_nothing_else():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert {path.split("/")[0] for path in out.stdout.split()} == PROJECT  # 5117bd4 committed a shell's scratch output


def test_ci_runs_the_readme_commands_and_the_tests_lint_first():
    """.ci/run is the README's `make test` (and the images' `make test-compose`); `make test` lints first, ruff
    and the import contracts alike."""
    run = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert run[-2:] == ["make test", "make test-compose"], run
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"(?m)^test: lint\b", make)
    lint = re.search(r"(?m)^lint:.*\n((?:\t.*\n)+)", make).group(1)
    assert "ruff check ." in lint and "lint-imports" in lint, lint


def test_the_import_contracts_cover_every_module_they_speak_for():
    """A contract names its modules one by one: a module added beside them (a service/newthing.py importing
    torch) would be under no contract at all."""
    contracts = {c["name"]: c for c in
                 tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}

    def children(package: str) -> set[str]:
        folder = ROOT / package.replace(".", "/")
        return {f"{package}.{p.stem}" for p in folder.iterdir()
                if p.suffix == ".py" and p.stem != "__init__" or (p / "__init__.py").exists()}

    def sources(start: str) -> set[str]:
        (contract,) = [c for name, c in contracts.items() if name.startswith(start)]
        assert {"torch", "worker"} <= set(contract["forbidden_modules"]), contract
        return set(contract["source_modules"])

    assert sources("Nothing under service/ but service/cli") == children("service") - {"service.cli"}
    assert sources("Of the commands, only klab run") == children("service.cli") - {
        "service.cli.run", "service.cli.sweep", "service.cli.workers"}  # the commands that train
    assert sources("Of klab, only klab.local") == children("klab") - {"klab.local"}
