"""The README's everyday commands on a fresh clone: `manage.py lab up` sets up its development database
itself (it used to end in "no such table: provisioner_site")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_lab_up_on_a_fresh_database_sets_it_up_and_enrolls(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_") and k != "DATABASE_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        NEOCLOUD_VAR_DIR=str(tmp_path / "var"),
        NEOCLOUD_LOG_LEVEL="WARNING",
    )

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    try:
        up = manage("lab", "up", "--nodes", "1")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "setting up the database" in up.stdout and "lab up: 1 nodes" in up.stdout
        listed = manage("nodes", "list")
        assert listed.returncode == 0 and "lab-node-01" in listed.stdout, listed.stdout + listed.stderr
    finally:
        manage("lab", "down")
