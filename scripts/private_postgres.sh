#!/usr/bin/env bash
# Start a private PostgreSQL for the test run when the machine has none (issue 17: the README's two commands
# are all the set-up): Debian's server package (installed if missing), a cluster of its own under
# var/test-postgres owned by the postgres user, trust auth, listening on 127.0.0.1:PORT only, database
# `test`. Prints nothing on success but the URL on its last line; `scripts/private_postgres.sh stop` stops it.
#   scripts/private_postgres.sh start PORT      scripts/private_postgres.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$PWD/var/test-postgres"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
case "${1:-}" in
stop)
    [ -n "$bin" ] && [ -f "$DIR/data/postmaster.pid" ] && runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null
    exit 0
    ;;
start) port="${2:-5432}" ;;
*) echo "usage: $0 start PORT | stop" >&2; exit 2 ;;
esac
if [ -z "$bin" ]; then
    echo "private PostgreSQL: installing Debian's postgresql package" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
mkdir -p "$DIR/run"
chown -R postgres: "$DIR"
if [ ! -f "$DIR/data/PG_VERSION" ]; then
    runuser -u postgres -- "$bin/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 >"$DIR/initdb.log" 2>&1
fi
runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $DIR/run -c max_connections=300" start >/dev/null
runuser -u postgres -- "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 ||
    runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
echo "postgres://postgres@127.0.0.1:$port/test"
