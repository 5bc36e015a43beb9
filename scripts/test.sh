#!/usr/bin/env bash
# Set up this machine (system packages, .venv) and run every check: ruff, mypy, the import contracts, then the whole test suite
# on SQLite and again on PostgreSQL (127.0.0.1:5432, trust auth). The PostgreSQL run is never silently
# skipped: without a server the script fails, unless NEOCLOUD_SKIP_POSTGRES=1 says to skip it.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
PY=.venv/bin/python
status=0

echo "== ruff"
.venv/bin/ruff check provisioner webapp lab tests bench playbooks || status=1
.venv/bin/ruff format --check provisioner webapp lab tests bench playbooks || status=1
echo "== mypy"
.venv/bin/mypy provisioner webapp lab || status=1
echo "== import-linter (the layers in docs/architecture.md)"
.venv/bin/lint-imports || status=1

PG_URL="${NEOCLOUD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
pg_reachable() {
    "$PY" - "$1" <<'PYEOF'
import sys, psycopg
try:
    psycopg.connect(sys.argv[1], connect_timeout=3).close()
except Exception as exc:
    print(f"PostgreSQL not reachable at {sys.argv[1]}: {exc}")
    sys.exit(1)
PYEOF
}
pg_up=0
pg_reachable "$PG_URL" && pg_up=1
if [ "$pg_up" = 0 ] && [ "${NEOCLOUD_SKIP_POSTGRES:-0}" != 1 ] && [ -z "${NEOCLOUD_TEST_POSTGRES_URL:-}" ]; then
    # a machine without a PostgreSQL server: start a private one (Debian's), stopped when the run ends
    echo "== starting a private PostgreSQL (scripts/private_postgres.sh) on 127.0.0.1:5432"
    if PG_URL=$(bash scripts/private_postgres.sh start 5432 | tail -n 1) && pg_reachable "$PG_URL"; then
        pg_up=1
        trap 'bash scripts/private_postgres.sh stop' EXIT
    fi
fi

# The NetBox tests run against a real NetBox (lab/netbox_server.py): its virtual environment (Python 3.12) and
# its migrated template database are made once and cached; a failure here is reported, and the NetBox tests
# then fail with the same reason.
echo "== NetBox for the tests (lab/netbox_server.py prepare)"
NEOCLOUD_NETBOX_POSTGRES_URL="$PG_URL" "$PY" -m lab.netbox_server prepare || status=1
export NEOCLOUD_NETBOX_POSTGRES_URL="$PG_URL"

# The deploy bench compares our agent with ironic-python-agent 13.0.0 (PyPI, its own cached venv); its test
# streams through it.
echo "== ironic-python-agent for the deploy bench's test (bench/ipa_env.py)"
"$PY" -m bench.ipa_env || status=1

# Tests marked `peer` (a real NetBox, which takes about 0.1 s a write here) run once: in the PostgreSQL pass,
# production's database, when there is one; otherwise in this pass.
# The same holds for the lab's tests (`lab`: real BMCs, namespaces, switches and QEMU, about 10 minutes a pass):
# they test the lab's machines and packets, and their database side runs on production's.
only_once=()
[ "$pg_up" = 1 ] && only_once=(-m "not peer and not lab")
echo "== pytest (SQLite)"
env -u DATABASE_URL "$PY" -m pytest "${only_once[@]}" "$@" || status=1

if [ "$pg_up" = 1 ]; then
    echo "== pytest (PostgreSQL)"
    DATABASE_URL="$PG_URL" "$PY" -m pytest "$@" || status=1
elif [ "${NEOCLOUD_SKIP_POSTGRES:-0}" = 1 ]; then
    echo "== PostgreSQL run SKIPPED on request (NEOCLOUD_SKIP_POSTGRES=1)"
else
    echo "== PostgreSQL run FAILED: no server at $PG_URL (set NEOCLOUD_SKIP_POSTGRES=1 to skip it knowingly)"
    status=1
fi
exit $status
