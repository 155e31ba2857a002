#!/usr/bin/env bash
# A local PostgreSQL for the label-store tests (and for trying DATABASE_URL by hand).
#
#   eval "$(.ci/postgres.sh)"      # exports DATABASE_URL and SQUEEZESAM_TEST_POSTGRES_URL
#   .ci/postgres.sh stop           # stops the server (the data folder stays)
#
# Installs Debian's postgresql package if no server binaries are found, then runs its own
# cluster in PG_DATA (not the system cluster), listening on 127.0.0.1 only, with a
# database and user for the tests. The port: PG_PORT when set, else the port the running
# server of PG_DATA already has, else a free one (never a fixed port another program may
# hold). Idempotent: a second run reuses the running server.
# The server cannot run as root, so as root it runs as the `postgres` system user.
# Only the export lines go to stdout; progress goes to stderr. When the server does not
# start or does not answer, it says so with the end of the server log and exits 1, with
# nothing on stdout.
set -euo pipefail

PG_DATA=${PG_DATA:-/var/tmp/squeezesam-postgres}
PG_PORT=${PG_PORT:-}
PG_DB=${PG_DB:-squeezesam_test}
PG_USER=${PG_USER:-squeezesam}
PG_PASSWORD=${PG_PASSWORD:-squeezesam}

say() { echo "postgres.sh: $*" >&2; }
fail() {
    say "FAIL: $*"
    if [ -s "$PG_DATA/server.log" ]; then
        say "last lines of $PG_DATA/server.log:"
        tail -n 15 "$PG_DATA/server.log" >&2 || true
    fi
    exit 1
}

find_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

BIN=$(find_bin || true)
if [ -z "$BIN" ]; then
    say "installing postgresql (apt-get)"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
    BIN=$(find_bin) || fail "no PostgreSQL server binaries after installing postgresql"
fi

# run a server command as the cluster owner
if [ "$(id -u)" -eq 0 ]; then
    OWNER=postgres
    as_owner() { runuser -u "$OWNER" -- "$@"; }
else
    OWNER=$(id -un)
    as_owner() { "$@"; }
fi

if [ "${1:-}" = "stop" ]; then
    as_owner "$BIN/pg_ctl" -D "$PG_DATA" -m fast stop >&2 || true
    exit 0
fi

if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    say "initdb $PG_DATA"
    mkdir -p "$PG_DATA"
    [ "$(id -u)" -eq 0 ] && chown "$OWNER" "$PG_DATA"
    chmod 700 "$PG_DATA"
    as_owner "$BIN/initdb" -D "$PG_DATA" -A trust -U "$OWNER" --no-sync >/dev/null \
        || fail "initdb $PG_DATA failed"
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_on() {  # start_on PORT: 0 when the server runs on PORT
    say "starting on 127.0.0.1:$1"
    # socket in the data folder: no need for /var/run/postgresql
    as_owner "$BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $1 -k $PG_DATA" start >&2
}

if as_owner "$BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
    running=$(sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null || true)
    if [ -n "$PG_PORT" ] && [ "$PG_PORT" != "$running" ]; then
        fail "the server of $PG_DATA runs on port $running, not PG_PORT=$PG_PORT (.ci/postgres.sh stop first)"
    fi
    PG_PORT=$running
    say "already running on 127.0.0.1:$PG_PORT"
elif [ -n "$PG_PORT" ]; then
    start_on "$PG_PORT" || fail "PostgreSQL did not start on 127.0.0.1:$PG_PORT (PG_PORT)"
else
    # a free port; another program may take it between the check and the start: try again
    started=""
    for _ in 1 2 3; do
        PG_PORT=$(free_port)
        if start_on "$PG_PORT"; then started=1; break; fi
    done
    [ -n "$started" ] || fail "PostgreSQL did not start (3 free ports tried)"
fi

psql_owner() { as_owner "$BIN/psql" -h "$PG_DATA" -p "$PG_PORT" -U "$OWNER" -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

[ "$(psql_owner -c "SELECT 1" 2>&1)" = "1" ] \
    || fail "PostgreSQL on 127.0.0.1:$PG_PORT does not answer queries"
if [ "$(psql_owner -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != "1" ]; then
    psql_owner -c "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD'"
fi
if [ "$(psql_owner -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
    psql_owner -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
fi
# the URL works over TCP, as the tests use it
PGPASSWORD=$PG_PASSWORD "$BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
    -qtA -c "SELECT 1" >/dev/null 2>&1 \
    || fail "PostgreSQL on 127.0.0.1:$PG_PORT refuses $PG_USER on $PG_DB over TCP"

URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
say "ready: $URL"
echo "export DATABASE_URL=$URL"
echo "export SQUEEZESAM_TEST_POSTGRES_URL=$URL"
