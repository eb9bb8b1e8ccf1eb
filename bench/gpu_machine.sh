#!/bin/bash
# Issue 11's sweep through gpu workers, on a GPU machine that reaches no package registry (as the
# workplace's device machine: Ubuntu, its own python3 with torch, no PostgreSQL, no Redis):
#
#   bash bench/gpu_machine.sh bundle          # here: Debian with PostgreSQL 15 and Redis installed
#   bash bench/gpu_machine.sh run [STEP...]   # there, from the repository root, .dev/ carried along
#
# `bundle` puts into .dev/ (ignored by git): pg.tar.xz, PostgreSQL's and Redis's binaries with the
# libraries they load (glibc's and libstdc++'s excepted: the machine's own are newer), and whl/, the
# project's Python packages that the machine lacks, as wheels for its Python (PY_VERSION, 3.12), at the
# versions in .venv. `run` starts both servers from them (PostgreSQL as nobody, on the machine's disk),
# installs the wheels under /tmp, and runs each STEP (default: gpu sweep sweep4 profile):
#   gpu      bench/gpu_bench.py: the checks on CUDA, and the engine on JOBS jobs
#   sweep    bench/sweep_bench.py --queue gpu: JOBS jobs through one `klab worker --queue gpu`
#   sweepN   the same through N gpu workers sharing the GPU (sweep4, sweep8, ...)
#   profile  the CLI's and a gpu task's phases (sweep_bench.py --profile-only)
#   slowlog  from here on, PostgreSQL logs statements over 300 ms with their plans (pg-server.log)
# Logs go to $OUT (the device tool's folder that comes back), else /tmp/gpu-machine. Environment: PY (python3),
# JOBS (1000000), PGPORT (5432), RPORT (6379), SWEEP_ARGS (more options of the sweep steps' sweep_bench.py,
# default: --store-jobs 100000).
set -u
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
DEV=.dev

bundle() {
  local stage R pkg ver wanted
  stage=$(mktemp -d) && R="$stage/R" || exit 1
  mkdir -p "$R/usr/lib/postgresql/15/bin" "$R/usr/lib/postgresql/15/lib" "$R/usr/share/postgresql" "$R/lib" \
    "$R/zoneinfo/Etc" "$DEV/whl" || exit 1
  cp /usr/lib/postgresql/15/bin/{postgres,initdb,pg_ctl,psql} "$R/usr/lib/postgresql/15/bin/" || exit 1
  cp /usr/lib/postgresql/15/lib/*.so "$R/usr/lib/postgresql/15/lib/" && rm -f "$R/usr/lib/postgresql/15/lib/llvmjit.so"
  cp -r /usr/share/postgresql/15 "$R/usr/share/postgresql/" && cp "$(readlink -f /usr/bin/redis-server)" "$R/redis-server"
  for b in "$R"/usr/lib/postgresql/15/bin/* "$R/redis-server"; do ldd "$b" | awk '/=>/ {print $3}'; done | sort -u \
    | grep -vE '/(libc|libm|libresolv|libpthread|libdl|librt|libstdc\+\+|libgcc_s)\.so' | xargs -I{} cp -L {} "$R/lib/"
  cp /usr/share/zoneinfo/UTC "$R/zoneinfo/UTC" && cp /usr/share/zoneinfo/Etc/UTC "$R/zoneinfo/Etc/UTC"
  tar -C "$stage" -cJf "$DEV/pg.tar.xz" R && rm -rf "$stage"
  # what the GPU machine's image lacks, or holds at a version celery or pydantic do not take
  wanted=""
  for pkg in alembic amqp annotated-types billiard celery click click-didyoumean click-plugins click-repl kombu \
      Mako MarkupSafe prompt_toolkit psycopg psycopg-binary pydantic pydantic_core python-dateutil redis six \
      SQLAlchemy typing-extensions typing-inspection tzdata tzlocal vine wcwidth; do
    ver=$(.venv/bin/pip show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}')
    wanted="$wanted $pkg${ver:+==$ver}"
  done
  # shellcheck disable=SC2086 - one word a package
  .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEV/whl" $wanted || exit 1
  du -sh "$DEV"
}

run() {
  # globals: the EXIT trap and asuser use them after run returns
  PY=${PY:-python3} OUT=${OUT:-/tmp/gpu-machine} W=/tmp/klab-gpu-machine JOBS=${JOBS:-1000000}
  PGPORT=${PGPORT:-5432} RPORT=${RPORT:-6379}
  local step
  mkdir -p "$OUT" "$W"
  log "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY --version; nproc; grep PRETTY /etc/os-release

  log "wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" \
    "$DEV"/whl/*.whl || exit 1
  export PYTHONPATH="$W/site"
  mkdir -p "$W/bin"
  printf '#!%s\nimport sys\nsys.path.insert(0, "%s")\nfrom service.cli import main\nsys.exit(main())\n' \
    "$(command -v "$PY")" "$(pwd)" > "$W/bin/klab" && chmod +x "$W/bin/klab"
  export PATH="$W/bin:$PATH"  # sweep_bench.py runs the klab it finds there
  $PY -c "import torch, celery, sqlalchemy, psycopg; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

  log "postgres"
  rm -rf "$W/pg" && mkdir -p "$W/pg" && tar -C "$W/pg" -xJf "$DEV/pg.tar.xz" || exit 1
  R="$W/pg/R"; PGBIN="$R/usr/lib/postgresql/15/bin"; D="$W/pgdata"
  if [ ! -e /usr/share/zoneinfo/UTC ]; then  # PostgreSQL reads time zones from there
    mkdir -p /usr/share/zoneinfo/Etc && cp "$R/zoneinfo/UTC" /usr/share/zoneinfo/ && cp "$R/zoneinfo/Etc/UTC" /usr/share/zoneinfo/Etc/
  fi
  # PostgreSQL refuses to run as root: its programs run as nobody, with the bundle's libraries
  asuser() {
    $PY -c 'import os, sys
env = dict(os.environ, LD_LIBRARY_PATH=sys.argv[1], TZ="UTC")
env.pop("PYTHONPATH", None)
if os.getuid() == 0:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
os.execve(sys.argv[2], sys.argv[2:], env)' "$R/lib" "$@"
  }
  rm -rf "$D" && mkdir -p "$D" && chmod 700 "$D" && chmod 755 "$W"
  [ "$(id -u)" = 0 ] && chown -R 65534:65534 "$D"
  asuser "$PGBIN/initdb" -D "$D" -U postgres -A trust -E UTF8 --no-locale > "$OUT/initdb.log" 2>&1 || exit 1
  printf "listen_addresses = '127.0.0.1'\nport = $PGPORT\nunix_socket_directories = '%s'\nmax_connections = 200\nshared_buffers = 8GB\nmax_wal_size = 16GB\ncheckpoint_timeout = 30min\njit = off\ndynamic_shared_memory_type = mmap\n" \
    "$D" >> "$D/postgresql.conf"
  asuser "$PGBIN/pg_ctl" -D "$D" -l "$D/server.log" -w -t 60 start > /dev/null || { tail -30 "$D/server.log"; exit 1; }
  asuser "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -Atc "CREATE DATABASE test" -c "SELECT version()" || exit 1
  export KLAB_TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/test"

  log "redis"
  LD_LIBRARY_PATH="$R/lib" "$R/redis-server" --daemonize yes --bind 127.0.0.1 --port "$RPORT" --save "" \
    --appendonly no --dir "$W" --logfile "$W/redis.log" || exit 1
  for _ in $(seq 50); do $PY -c "import redis; redis.Redis(port=$RPORT).ping()" 2> /dev/null && break; sleep 0.1; done
  export KLAB_BENCH_REDIS_URL="redis://127.0.0.1:$RPORT/11" PYTHONUNBUFFERED=1
  # shellcheck disable=SC2064 - the paths are known now
  trap "asuser '$PGBIN/pg_ctl' -D '$D' -m fast stop > /dev/null; cp '$D/server.log' '$OUT/pg-server.log'
        $PY -c 'import redis; redis.Redis(port=$RPORT).shutdown(nosave=True)' 2> /dev/null" EXIT

  for step in ${*:-gpu sweep sweep4 profile}; do
    log "$step"
    case $step in
      gpu) timeout 300 $PY bench/gpu_bench.py --jobs "$JOBS" > "$OUT/gpu.log" 2>&1
           echo "exit $?"; grep -v '^PASS' "$OUT/gpu.log" | tail -12 ;;
      sweep|sweep[0-9]*)
           n=${step#sweep}
           # shellcheck disable=SC2086 - SWEEP_ARGS: one word an option
           timeout 400 $PY bench/sweep_bench.py --queue gpu --jobs "$JOBS" --repeat 1 --sample 300 \
             --workers "${n:-1}" ${SWEEP_ARGS:---store-jobs 100000} > "$OUT/$step.log" 2>&1
           echo "exit $?"; grep -E '^  (run|engine|[0-9]+ processes)|^\| [0-9]|^store vs|^stored|errors|NOT ALL' "$OUT/$step.log" ;;
      profile) timeout 200 $PY bench/sweep_bench.py --queue gpu --profile-only --jobs 100000 --profile-jobs 4096 \
             > "$OUT/profile.log" 2>&1
           echo "exit $?"; grep -A2 'in phases' "$OUT/profile.log" ;;
      slowlog) printf "log_min_duration_statement = 300\nsession_preload_libraries = 'auto_explain'\nauto_explain.log_min_duration = 300\nauto_explain.log_analyze = on\n" >> "$D/postgresql.conf"
           asuser "$PGBIN/pg_ctl" -D "$D" reload > /dev/null ;;
      *) echo "unknown step $step"; exit 2 ;;
    esac
  done
  log "done"
}

case ${1:-} in
  bundle) bundle ;;
  run) shift; run "$@" ;;
  *) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2 ;;
esac
