#!/bin/sh
# The official image compiles Redis with protected mode off (ports are published only on request).
set -e
if [ "$1" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
