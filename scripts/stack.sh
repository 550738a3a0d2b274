#!/usr/bin/env bash
# The production-shaped stack, natively on one machine (what docker/docker-compose.yml runs in
# containers): PostgreSQL, an MLflow tracking server on it (artifacts proxied with
# --serve-artifacts), and Dagster on PostgreSQL storage with the QueuedRunCoordinator and the
# default (process) run launcher: a user-code gRPC server, the webserver and the daemon.
#
#   scripts/stack.sh start   # install PostgreSQL if missing, start everything, wait until healthy
#   scripts/stack.sh env     # the exports that point the CLI / tests at the running stack
#   scripts/stack.sh stop    # stop every process started by `start`
#   scripts/stack.sh postgres  # PostgreSQL alone (its databases created): tests of the PostgreSQL stores
#
# Settings (environment): STACK_DIR (default /tmp/ensemble-platform-stack), STACK_PG_PORT (55432),
# STACK_MLFLOW_PORT (55500), STACK_GRPC_PORT (54000), STACK_WEB_PORT (53000),
# STACK_MAX_RUNS (4 concurrent runs), STACK_BIN (the venv's bin, default ./.venv/bin).
# Everything listens on 127.0.0.1; logs are under $STACK_DIR/logs.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-/tmp/ensemble-platform-stack}"
PG_PORT="${STACK_PG_PORT:-55432}"
MLFLOW_PORT="${STACK_MLFLOW_PORT:-55500}"
GRPC_PORT="${STACK_GRPC_PORT:-54000}"
WEB_PORT="${STACK_WEB_PORT:-53000}"
MAX_RUNS="${STACK_MAX_RUNS:-4}"
BIN="${STACK_BIN:-$REPO/.venv/bin}"
PG_USER=platform            # the database role (trust auth, loopback only)
OS_USER=postgres            # initdb refuses root: the cluster runs as this user when we are root
LOGS="$STACK_DIR/logs"
PIDS="$STACK_DIR/pids"
PGDATA="$STACK_DIR/pgdata"
HOME_DIR="$STACK_DIR/home"
# Outside the home: Dagster's settings can make it run code, and the home is writable by more hands.
DAGSTER_DIR="$STACK_DIR/dagster"
ARTIFACTS="$STACK_DIR/mlflow-artifacts"
LOCATION=ensemble_platform

log() { echo "[stack] $*" >&2; }

pg_bin() {
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return
    fi
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$found" ] && [ -x "$found/pg_ctl" ]; then echo "$found"; return; fi
    return 1
}

ensure_postgres() {
    if pg_bin >/dev/null; then return; fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        log "PostgreSQL (initdb/pg_ctl) is missing and cannot be installed here (needs root and apt-get)"
        exit 3
    fi
    log "installing Debian's postgresql"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >"$LOGS/apt.log" 2>&1 \
        || { apt-get update -q >>"$LOGS/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >>"$LOGS/apt.log" 2>&1; } \
        || { log "apt-get install postgresql failed, see $LOGS/apt.log"; exit 3; }
}

as_pg() {  # run a PostgreSQL binary as the non-root cluster owner
    if [ "$(id -u)" -eq 0 ]; then
        id -u "$OS_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$OS_USER"
        runuser -u "$OS_USER" -- "$@"
    else
        "$@"
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds="$1" what="$2"; shift 2
    local deadline=$((SECONDS + seconds))
    local pidfile="$PIDS/${WAIT_PID_NAME:-none}.pid"
    until "$@" >/dev/null 2>&1; do
        if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            log "$what exited; its log: $LOGS/${WAIT_PID_NAME}.log"; tail -n 20 "$LOGS/${WAIT_PID_NAME}.log" >&2; return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then log "$what not healthy after ${seconds}s (logs: $LOGS)"; return 1; fi
        sleep 0.5
    done
    log "$what up"
}

spawn() {  # spawn NAME COMMAND...: own session (so stop kills the whole group), log, pid file
    local name="$1"; shift
    setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! >"$PIDS/$name.pid"
}

stack_env() {
    cat <<EOF
export ENSEMBLE_PLATFORM_HOME=$HOME_DIR
export DAGSTER_HOME=$DAGSTER_DIR
export ENSEMBLE_PLATFORM_DAGSTER_INSTANCE=$DAGSTER_DIR
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export ENSEMBLE_PLATFORM_MLFLOW_URI=http://127.0.0.1:$MLFLOW_PORT
export ENSEMBLE_PLATFORM_STACK_PG=postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT
export ENSEMBLE_PLATFORM_DECISION_STORE=postgresql://$PG_USER@127.0.0.1:$PG_PORT/decisions
export ENSEMBLE_PLATFORM_STACK_WEB=http://127.0.0.1:$WEB_PORT
export ENSEMBLE_PLATFORM_STACK_GRPC_PORT=$GRPC_PORT
EOF
}

write_dagster_config() {
    mkdir -p "$DAGSTER_DIR"
    # The same instance settings as docker/dagster.yaml, with the process launcher standing in for
    # DockerRunLauncher (each run is its own process, started by the daemon through the code server).
    cat >"$DAGSTER_DIR/dagster.yaml" <<EOF
telemetry:
  enabled: false
storage:
  postgres:
    # A URL naming the driver: SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3, and the
    # platform installs psycopg2 (as dagster-postgres documents).
    postgres_url: postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/dagster
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
run_launcher:
  module: dagster.core.launcher
  class: DefaultRunLauncher
concurrency:
  runs:
    max_concurrent_runs: $MAX_RUNS
  pools:
    # PostgreSQL takes concurrent registry writes (duplicates are settled by the registry): no
    # single-writer pool as on sqlite.
    default_limit: $MAX_RUNS
EOF
    cat >"$STACK_DIR/workspace.yaml" <<EOF
load_from:
  - grpc_server:
      host: 127.0.0.1
      port: $GRPC_PORT
      location_name: $LOCATION
EOF
}

create_database() {
    local bin="$1" name="$2"
    if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1; then
        "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "CREATE DATABASE $name" >/dev/null
    fi
}

start_postgres() {
    local bin; bin="$(pg_bin)"
    mkdir -p "$PGDATA"
    if [ "$(id -u)" -eq 0 ]; then
        id -u "$OS_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$OS_USER"
        chown "$OS_USER" "$PGDATA" "$LOGS"
        chmod 700 "$PGDATA"
        # The cluster owner must reach its data directory.
        chmod o+x "$STACK_DIR"
    fi
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        as_pg "$bin/initdb" -D "$PGDATA" -A trust -U "$PG_USER" >"$LOGS/initdb.log" 2>&1
    fi
    as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$LOGS/postgres.log" -w -t 60 \
        -o "-p $PG_PORT -k $PGDATA -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
    log "postgres up on 127.0.0.1:$PG_PORT"
    create_database "$bin" dagster
    create_database "$bin" mlflow
    create_database "$bin" decisions
}

start_mlflow() {
    mkdir -p "$ARTIFACTS"
    # No background job runners (huey consumers for GenAI jobs): the platform does not use them.
    spawn mlflow env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$BIN/mlflow" server \
        --backend-store-uri "postgresql+psycopg2://$PG_USER@127.0.0.1:$PG_PORT/mlflow" \
        --artifacts-destination "$ARTIFACTS" --serve-artifacts \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 \
        --allowed-hosts "127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT"
    WAIT_PID_NAME=mlflow wait_for 120 "mlflow server (127.0.0.1:$MLFLOW_PORT)" curl -fsS "http://127.0.0.1:$MLFLOW_PORT/health"
}

start_dagster() {
    write_dagster_config
    eval "$(stack_env)"
    export PATH="$BIN:$PATH"
    # The code server (and the run processes it starts) must import this checkout.
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    spawn code-server "$BIN/dagster" code-server start -h 127.0.0.1 -p "$GRPC_PORT" \
        -m ensemble_platform.definitions -a defs --location-name "$LOCATION" --working-directory "$REPO"
    WAIT_PID_NAME=code-server wait_for 180 "dagster code server (127.0.0.1:$GRPC_PORT)" \
        "$BIN/dagster" api grpc-health-check -p "$GRPC_PORT" -h 127.0.0.1
    spawn webserver "$BIN/dagster-webserver" -h 127.0.0.1 -p "$WEB_PORT" -w "$STACK_DIR/workspace.yaml"
    spawn daemon "$BIN/dagster-daemon" run -w "$STACK_DIR/workspace.yaml"
    WAIT_PID_NAME=webserver wait_for 180 "dagster webserver (127.0.0.1:$WEB_PORT)" curl -fsS "http://127.0.0.1:$WEB_PORT/server_info"
    WAIT_PID_NAME=daemon wait_for 180 "dagster daemon" "$BIN/dagster-daemon" liveness-check
}

cmd_start() {
    mkdir -p "$LOGS" "$PIDS" "$HOME_DIR"
    ensure_postgres
    start_postgres
    export ENSEMBLE_PLATFORM_HOME="$HOME_DIR"
    start_mlflow
    start_dagster
    log "stack running; \`scripts/stack.sh env\` prints its settings"
}

cmd_postgres() {
    mkdir -p "$LOGS" "$PIDS"
    ensure_postgres
    start_postgres
}

cmd_stop() {
    local name pid
    for name in daemon webserver code-server mlflow; do
        [ -f "$PIDS/$name.pid" ] || continue
        pid="$(cat "$PIDS/$name.pid")"
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$PIDS/$name.pid"
    done
    if [ -f "$PGDATA/postmaster.pid" ]; then
        as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    log "stack stopped"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) stack_env ;;
    postgres) cmd_postgres ;;
    *) echo "usage: $0 start|stop|env|postgres" >&2; exit 2 ;;
esac
