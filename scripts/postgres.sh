#!/usr/bin/env bash
# A private PostgreSQL server (Debian's package) for the tests of MLflow on PostgreSQL, the
# backend production runs (k8s/base/mlflow.yaml). The test suite calls it itself
# (tests/mlflow_fixtures.py, `postgres_uri`); `make test` runs `install` first.
#
#   scripts/postgres.sh install               install the package if it is missing (root: apt-get)
#   scripts/postgres.sh start DIR PORT [DB]   a cluster in DIR (created once), running on
#                                             127.0.0.1:PORT (unless it runs already), with the
#                                             database DB (default mlflow); prints its URI
#   scripts/postgres.sh stop DIR              stop that cluster (nothing if it is not running)
#
# Idempotent: a second `start` finds the package, the cluster, the server and the database and
# reuses them (a running cluster keeps its own port; the URI printed is the port it listens on).
# It never touches the system's own clusters (pg_lsclusters): a running one is no conflict.
# Exit 3: PostgreSQL is missing and cannot be installed here; the tests skip, giving the reason.
# Test settings, loopback only: `trust` authentication, fsync off.
set -euo pipefail

# The server's bin folder (newest major version); the client package alone (psql) has no initdb.
pg_bin() {
  find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
    sort -V | tail -n1 | xargs -r dirname
}

install() {
  [ -n "$(pg_bin)" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "PostgreSQL is not installed and this user cannot install it (not root):" \
      "sudo apt-get install postgresql" >&2
    exit 3
  fi
  if ! { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
      >/dev/null; }; then
    echo "apt-get could not install postgresql (see above)" >&2
    exit 3
  fi
  [ -n "$(pg_bin)" ] || { echo "postgresql installed, but no /usr/lib/postgresql/*/bin/initdb" >&2; exit 3; }
}

# The server refuses to run as root: as root, the cluster belongs to the `postgres` user that the
# package creates.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local dir=$1 port=$2 db=${3:-mlflow} bin
  [[ $db =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "database name $db: use [a-z0-9_]" >&2; exit 2; }
  install
  bin=$(pg_bin)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  chmod 700 "$dir"
  if [ ! -s "$dir/data/PG_VERSION" ]; then
    rm -rf "$dir/data" # a half-made cluster (initdb killed) is remade, never half-used
    as_owner "$bin/initdb" -D "$dir/data" -U lmforge -A trust -E UTF8 --no-sync \
      >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null ||
      { tail -n 20 "$dir/server.log" >&2; exit 1; }
  fi
  port=$(sed -n 4p "$dir/data/postmaster.pid") # the port it really listens on
  local psql=("$bin/psql" -h 127.0.0.1 -p "$port" -U lmforge -v ON_ERROR_STOP=1 -qtA)
  if [ "$("${psql[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    "${psql[@]}" -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
  fi
  echo "postgresql://lmforge@127.0.0.1:$port/$db"
}

stop() {
  local dir=$1 bin
  bin=$(pg_bin)
  [ -n "$bin" ] && [ -s "$dir/data/PG_VERSION" ] || return 0
  if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
}

case "${1:-}" in
  install) install ;;
  start) [ $# -ge 3 ] || { echo "usage: $0 start DIR PORT [DB]" >&2; exit 2; }; start "$2" "$3" "${4:-mlflow}" ;;
  stop) [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  *) echo "usage: $0 install | start DIR PORT [DB] | stop DIR" >&2; exit 2 ;;
esac
