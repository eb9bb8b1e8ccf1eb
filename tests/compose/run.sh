#!/usr/bin/env bash
# make test-compose: the images built and the stack run on a real Docker engine.
#
# Installs docker.io and debootstrap when missing (as root), starts dockerd unless one answers (engine.sh),
# serves torch's CPU wheel from this machine's disk to the builds, makes the base images (bases.sh: official
# where a registry answers, else stand-ins), then runs the engine tests of tests/test_compose.py: they build
# both targets and bring the stack up and down. Afterwards it stops what it started, and only that.
# Logs: out/test-compose/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=$root/out/test-compose
mkdir -p "$out"
DOCKER=${DOCKER:-$(command -v /usr/bin/docker docker | head -n 1 || true)}
WHEELS_PORT=${WHEELS_PORT:-8473}
export DOCKER
# One project of the test's own: its containers, network and volumes go with it, whatever happens.
export KLAB_TEST_COMPOSE_PROJECT=${KLAB_TEST_COMPOSE_PROJECT:-klab-test-$(date +%s)-$$}

need=()
if ! { [ -n "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; } && ! command -v dockerd >/dev/null; then
  need+=(docker.io)
fi
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-compose: installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    DOCKER=$(command -v /usr/bin/docker docker | head -n 1)
  else
    echo "test-compose: missing ${need[*]} (apt-get install ${need[*]}, as root)" >&2
    exit 1
  fi
fi

server=
cleanup() {
  local status=$?
  set +e  # every step, whatever the one before did
  [ -n "$server" ] && kill "$server" 2>/dev/null
  if "$DOCKER" info >/dev/null 2>&1; then
    local label="label=com.docker.compose.project=$KLAB_TEST_COMPOSE_PROJECT"
    "$DOCKER" ps -aq --filter "$label" | xargs -r "$DOCKER" rm -f >/dev/null
    "$DOCKER" volume ls -q --filter "$label" | xargs -r "$DOCKER" volume rm >/dev/null
    "$DOCKER" network ls -q --filter "$label" | xargs -r "$DOCKER" network rm >/dev/null
  fi
  tests/compose/engine.sh stop "$out"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
tests/compose/engine.sh start "$out"

# torch's CPU wheel, where pip's configuration finds it here, served on the bridge's gateway: builds reach
# the host there, and download.pytorch.org may not resolve.
torch=$(sed -n 's/^torch==//p' constraints.txt)
wheels_url=
for links in $(.venv/bin/pip config get global.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do
  links=${links#file://}
  if compgen -G "$links/torch-$torch+cpu-*.whl" >/dev/null; then
    bridge=$("$DOCKER" network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')
    gateway=$(ip -4 -o addr show "${bridge:-docker0}" | awk '{print $4}' | cut -d/ -f1 | head -n 1)
    [ -n "$gateway" ] || { echo "test-compose: the bridge ${bridge:-docker0} has no IPv4 address" >&2; exit 1; }
    python3 -m http.server --bind "$gateway" --directory "$links" "$WHEELS_PORT" > "$out/wheels.log" 2>&1 &
    server=$!
    until (exec 3<> "/dev/tcp/$gateway/$WHEELS_PORT") 2>/dev/null; do
      kill -0 "$server" 2>/dev/null || { echo "test-compose: serving the wheel failed:" >&2; cat "$out/wheels.log" >&2; exit 1; }
      sleep 0.2
    done
    wheels_url=http://$gateway:$WHEELS_PORT/
    echo "test-compose: serving $links at $wheels_url"
    break
  fi
done

tests/compose/bases.sh "$out" "$wheels_url"
# One pytest process: the tests share one stack (TEST_COMPOSE_ARGS: more pytest options, e.g. -x).
read -ra more <<< "${TEST_COMPOSE_ARGS:-}"
KLAB_TEST_DOCKER=1 .venv/bin/python -m pytest -q -p no:xdist tests/test_compose.py -k engine "${more[@]}"
