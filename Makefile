# kernel-lab: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test test-fast test-compose bench clean compose-tool

install: $(STAMP)

# Re-installs only when the project's requirements change; torch is pinned through constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/klab run --input edge:6x8 --kernel d2l --method d2l-manual --lr 0.03 --epochs 10

# ruff (with its bandit rules) and the import contracts of pyproject.toml (the layers, no cycles).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# Three pytest workers: most tests wait on real worker processes, Redis and PostgreSQL, not the CPU.
PYTEST_ARGS ?= -n 3
test: lint compose-tool
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The tests that need no service (no PostgreSQL, Redis or worker process): a minute or less.
test-fast: lint
	$(BIN)/python -m pytest -q -n 2 -m "not services"

# tests/test_compose.py validates docker-compose.yml with Debian's docker-compose 1.29 (no engine
# needed); installed here when missing and we are root, as in CI. Otherwise those checks skip locally.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; \
	  else echo "docker-compose missing: tests/test_compose.py will skip (and fail under CI=true)"; fi; }

# The images built and the stack run on a real Docker engine (tests/compose/run.sh): as root it installs
# docker.io and debootstrap when missing, starts dockerd unless one answers and stops it afterwards. Where no
# registry answers, the base images are stand-ins built from debootstrap (tests/compose/standins/).
test-compose: install compose-tool
	tests/compose/run.sh

bench: install
	$(BIN)/python bench/engine_batched.py
	$(BIN)/python bench/engine_large.py

clean:
	rm -rf $(VENV) build *.egg-info
