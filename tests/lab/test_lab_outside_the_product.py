"""The lab is a development tool beside the product, not part of it: a checkout has ``manage.py lab`` and
``manage.py demo``, production settings do not load the lab, and no product module imports it (what differs
per lab server reaches the drivers as node data recorded at enrollment, Node.driver_info)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet
from django.core.management import get_commands

REPO = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = ("provisioner", "webapp")


def test_a_checkout_has_the_lab_and_demo_commands_from_the_lab_app() -> None:
    commands = get_commands()
    assert (commands["lab"], commands["demo"]) == ("lab", "lab")


def test_production_settings_do_not_load_the_lab(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="webapp.settings",
        NEOCLOUD_PRODUCTION="1",
        NEOCLOUD_VAR_DIR=str(tmp_path),
        NEOCLOUD_SECRET_KEY="test-secret-key-not-for-use",
        NEOCLOUD_CREDENTIAL_KEYS=Fernet.generate_key().decode(),
        NEOCLOUD_ALLOWED_HOSTS="neocloud.example",
    )
    probe = (
        "import django, sys; django.setup()\n"
        "from django.conf import settings\n"
        "from django.core.management import get_commands\n"
        "commands = get_commands()\n"
        "print('lab' in settings.INSTALLED_APPS, 'lab' in commands, 'demo' in commands, 'nodes' in commands)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.split() == ["False", "False", "False", "True"]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_product_module_imports_the_lab() -> None:
    offenders = sorted(
        f"{path.relative_to(REPO)} imports {name}"
        for package in PRODUCT_PACKAGES
        for path in (REPO / package).rglob("*.py")
        for name in _imported_modules(path)
        if name == "lab" or name.startswith("lab.")
    )
    assert offenders == []
    # no module of the old place is left (a checkout from before the move may keep an empty __pycache__)
    assert not list((REPO / "provisioner" / "lab").rglob("*.py"))
