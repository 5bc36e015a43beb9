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
pg_up=0
"$PY" - "$PG_URL" <<'PYEOF' && pg_up=1
import sys, psycopg
try:
    psycopg.connect(sys.argv[1], connect_timeout=3).close()
except Exception as exc:
    print(f"PostgreSQL not reachable at {sys.argv[1]}: {exc}")
    sys.exit(1)
PYEOF

echo "== pytest (SQLite)"
env -u DATABASE_URL "$PY" -m pytest "$@" || status=1

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
