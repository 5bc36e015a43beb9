#!/usr/bin/env bash
# Set up this machine (system packages, .venv) and run the demo: the lab, the portal, and a full
# reserve -> PXE reimage -> burn-in -> SSH handover -> release cycle on SQLite. Needs root (network
# namespaces for the lab servers' sshd, BMC endpoints on port 623).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export DJANGO_SETTINGS_MODULE=webapp.settings
.venv/bin/python manage.py migrate --no-input -v 0
exec .venv/bin/python manage.py demo "$@"
