#!/usr/bin/env bash
# A throwaway PostgreSQL server for the store's tests: installs Debian's postgresql if missing, starts a
# server listening only on a Unix socket in a fresh temporary folder, creates a database, and writes
# .ci/postgres.env with ESSENCE_TEST_DATABASE_URL (read by .ci/run). Run as root (the server then runs as
# the postgres user) or as any user (the server runs as that user). Stop it with the command printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_FILE=.ci/postgres.env

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

# Reuse a server this script started earlier, if it still answers.
if [ -f "$ENV_FILE" ]; then
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  BIN=$(find_bin)
  if [ -n "${ESSENCE_TEST_PG_SOCKET:-}" ] && [ -n "$BIN" ] && "$BIN/pg_isready" -q -h "$ESSENCE_TEST_PG_SOCKET" -p 5432; then
    echo "PostgreSQL already running for the tests (socket in $ESSENCE_TEST_PG_SOCKET)"
    exit 0
  fi
  rm -f "$ENV_FILE"
fi

BIN=$(find_bin)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "postgresql is not installed and installing it needs root" >&2
    exit 1
  fi
  echo "installing Debian's postgresql..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  BIN=$(find_bin)
fi

DIR=$(mktemp -d /tmp/essence-pg.XXXXXX)
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$DIR"
  as_server() { runuser -u postgres -- "$@"; }
  SUPERUSER=postgres
  STOP_AS="runuser -u postgres -- "
else
  as_server() { "$@"; }
  SUPERUSER=$(id -un)
  STOP_AS=""
fi

as_server "$BIN/initdb" -D "$DIR/data" -A trust -U "$SUPERUSER" --no-sync -E UTF8 >"$DIR/initdb.log"
# Unix socket only (no TCP port to collide with), in the server's own folder; fsync off: a test server.
as_server "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
  -o "-c listen_addresses='' -k $DIR -p 5432 -c fsync=off -c full_page_writes=off" start >/dev/null
as_server "$BIN/createdb" -h "$DIR" -p 5432 -U "$SUPERUSER" essence_test

cat >"$ENV_FILE" <<ENV
ESSENCE_TEST_DATABASE_URL='postgresql+psycopg://$SUPERUSER@/essence_test?host=$DIR&port=5432'
ESSENCE_TEST_PG_SOCKET='$DIR'
ENV
echo "PostgreSQL running for the tests (socket in $DIR); stop it with:"
echo "  ${STOP_AS}$BIN/pg_ctl -D $DIR/data stop"
