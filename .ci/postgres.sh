#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 for the tests, installing it from Debian's packages
# on a fresh machine. Source it: it exports DINTERO_TEST_POSTGRES_URL and stops the server on exit.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1; then
  echo "installing PostgreSQL from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null
fi
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
PGPORT="${DINTERO_TEST_PGPORT:-54329}"
PGDATA="$(mktemp -d /tmp/dintero-pg.XXXXXX)"
# initdb refuses to run as root: the cluster belongs to the postgres user the package created.
id postgres > /dev/null 2>&1 || useradd --system --no-create-home postgres
chown postgres "$PGDATA"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres > /dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
  -o "-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start > /dev/null
_dintero_pg_stop() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop > /dev/null 2>&1 || true
  rm -rf "$PGDATA"
}
trap _dintero_pg_stop EXIT
"$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE dintero_test" > /dev/null
export DINTERO_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/dintero_test"
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT"
