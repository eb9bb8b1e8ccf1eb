#!/usr/bin/env bash
# A Docker engine for `make test-compose`, and the host's network put back afterwards.
#
#   engine.sh start DIR   start dockerd unless an engine answers; note in DIR its pid and how the network looked
#   engine.sh stop DIR    stop the dockerd that start started (by its pid), then remove what it left behind:
#                         bridges, iptables chains and rules, the FORWARD policy, ip_forward
#
# dockerd adds the docker0 bridge (and a br-* bridge per compose network), DOCKER* chains and rules in the
# filter and nat tables, sets FORWARD's policy to DROP and turns ip_forward on; stopping it undoes none of
# that. stop removes only what was not there at start: the difference between two iptables-save listings.
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
action=${1:?usage: engine.sh start|stop DIR}
dir=${2:?usage: engine.sh start|stop DIR}
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

bridges() { ip -o link show type bridge | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; }

start() {
  if "$DOCKER" info >/dev/null 2>&1; then
    echo "engine: a Docker engine answers; using it"
    return
  fi
  [ "$(id -u)" = 0 ] || { echo "engine: no Docker engine answers, and starting one takes root" >&2; exit 1; }
  command -v dockerd >/dev/null || { echo "engine: dockerd missing (apt-get install docker.io)" >&2; exit 1; }
  mkdir -p "$dir"
  for name in "${SYSCTLS[@]}"; do
    value=$(sysctl -n "$name" 2>/dev/null) && echo "$name=$value"
  done > "$dir/sysctl.before"
  iptables-save > "$dir/iptables.before"
  bridges > "$dir/bridges.before"
  # Its own session: a Ctrl-C of make reaches this script's trap, which stops dockerd in order.
  setsid dockerd > "$dir/dockerd.log" 2>&1 < /dev/null &
  echo $! > "$dir/dockerd.pid"
  for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && { echo "engine: started dockerd (pid $(cat "$dir/dockerd.pid"))"; return; }
    kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null || break
    sleep 0.5
  done
  echo "engine: dockerd did not answer; its log:" >&2
  tail -n 30 "$dir/dockerd.log" >&2
  stop
  exit 1
}

# The lines of one table in an iptables-save listing: ':CHAIN POLICY [..]' and '-A CHAIN ...'.
table_lines() { awk -v t="*$1" '$0 == t {on = 1; next} /^COMMIT/ {on = 0} on' "$2"; }

restore_table() {
  local table=$1 before=$2 now=$3 line chain policy
  local -a words
  # Rules dockerd added, then the chains it added (flushed first: they jump to each other).
  while read -r line; do
    read -ra words <<< "${line#-A }"
    iptables -t "$table" -D "${words[@]}" 2>/dev/null || true
  done < <(comm -13 <(table_lines "$table" "$before" | grep '^-A ' | sort) \
                    <(table_lines "$table" "$now" | grep '^-A ' | sort))
  local added
  added=$(comm -13 <(table_lines "$table" "$before" | awk '/^:/ {print substr($1, 2)}' | sort) \
                   <(table_lines "$table" "$now" | awk '/^:/ && $2 == "-" {print substr($1, 2)}' | sort))
  for chain in $added; do iptables -t "$table" -F "$chain" 2>/dev/null || true; done
  for chain in $added; do iptables -t "$table" -X "$chain" 2>/dev/null || true; done
  # Built-in chains' policies as they were (ACCEPT where the table did not exist).
  while read -r chain policy; do
    [ "$policy" = - ] && continue
    was=$(table_lines "$table" "$before" | awk -v c=":$chain" '$1 == c {print $2}')
    iptables -t "$table" -P "$chain" "${was:-ACCEPT}" 2>/dev/null || true
  done < <(table_lines "$table" "$now" | awk '/^:/ {print substr($1, 2), $2}')
  # A table that did not exist and is empty again goes too (iptables-nft made it).
  if ! grep -qx "\*$table" "$before" && ! iptables-save -t "$table" | grep -q '^-A ' && command -v nft >/dev/null; then
    nft delete table ip "$table" 2>/dev/null || true
  fi
}

stop() {
  [ -f "$dir/dockerd.pid" ] || return 0  # an engine this script did not start: leave it alone
  local pid
  pid=$(cat "$dir/dockerd.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$dir/dockerd.pid"
  local now="$dir/iptables.after"
  iptables-save > "$now"
  for table in filter nat; do
    grep -qx "\*$table" "$now" && restore_table "$table" "$dir/iptables.before" "$now"
  done
  for bridge in $(comm -13 "$dir/bridges.before" <(bridges)); do
    case $bridge in docker0 | br-*) ip link delete "$bridge" 2>/dev/null || true ;; esac
  done
  while IFS='=' read -r name value; do sysctl -qw "$name=$value" || true; done < "$dir/sysctl.before"
  echo "engine: stopped dockerd (pid $pid); network as it was"
}

case $action in
  start) start ;;
  stop) stop ;;
  *) echo "usage: engine.sh start|stop DIR" >&2; exit 2 ;;
esac
