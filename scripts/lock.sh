#!/usr/bin/env bash
# Re-resolve requirements/lock.txt: every dependency of the project (pyproject.toml, with the dev extra)
# and the build tools it installs with (requirements/build.in), pinned, each with the sha256 of every file
# PyPI has for that version. scripts/bootstrap.sh installs from it with --require-hashes.
# Run after changing a dependency in pyproject.toml, or to take newer releases (-U / --upgrade, or
# --upgrade-package NAME); other arguments go to `uv pip compile`. Review and commit the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=.venv/bin/uv  # installed by scripts/bootstrap.sh (the dev extra)
[ -x "$UV" ] || UV=uv
command -v "$UV" >/dev/null || { echo "lock: no uv: run scripts/bootstrap.sh first (it installs uv into .venv)" >&2; exit 1; }
"$UV" pip compile pyproject.toml requirements/build.in \
    --extra dev \
    --universal --python-version 3.11 \
    --generate-hashes \
    --custom-compile-command "scripts/lock.sh" \
    --output-file requirements/lock.txt \
    "$@"
