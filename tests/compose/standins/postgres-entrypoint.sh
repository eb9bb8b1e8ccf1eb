#!/bin/sh
# The official image's contract, in short: on an empty PGDATA, a cluster whose superuser is POSTGRES_USER
# (default postgres) with POSTGRES_PASSWORD (required), a database POSTGRES_DB (default: the user's name),
# password authentication from other hosts and trust on the local socket; then the command.
set -eu
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?is required: the database would have no password}"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 > /dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start > /dev/null
    psql -v ON_ERROR_STOP=1 -q --username="$user" --dbname=postgres --set=db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
    pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
  fi
  echo "postgres-entrypoint: created the cluster (user $user, database $db)"
fi
exec "$@"
