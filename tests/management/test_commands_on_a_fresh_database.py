"""A newcomer runs the README's commands on a fresh clone: a command that needs the database says in one
sentence what to run instead of ending in a traceback ('no such table'), and works once that is done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _manage(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the settings a newcomer gets
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'fresh.sqlite3'}", NEOCLOUD_VAR_DIR=str(tmp_path))
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_commands_on_an_unmigrated_database_say_to_run_migrate_and_work_after_it(tmp_path):
    for command in (["nodes", "list"], ["nodes", "show", "lab-node-01"], ["scheduler", "--once"]):
        done = _manage(tmp_path, *command)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "no such table" not in done.stderr
        assert "is not set up yet" in done.stderr and "run `python manage.py migrate` first." in done.stderr
        assert str(tmp_path / "fresh.sqlite3") in done.stderr  # which database
    assert _manage(tmp_path, "migrate", "-v0").returncode == 0
    listed = _manage(tmp_path, "nodes", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("NAME"), listed.stderr
