"""``manage.py check --deploy`` is clean under the production settings (NEOCLOUD_PRODUCTION and the secrets
it requires), and those settings keep the boot service on plain HTTP while the portal moves to HTTPS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from tests.conftest import ROOT


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a production start: nothing of the test run's NEOCLOUD_* or DATABASE_URL, the
    secrets from files as a site keeps them."""
    secret_key, credential_keys = tmp_path / "secret_key", tmp_path / "credential_keys"
    secret_key.write_text(os.urandom(48).hex())
    credential_keys.write_text(Fernet.generate_key().decode())
    # (DJANGO_ALLOW_ASYNC_UNSAFE: set by the browser tests' Playwright in this process, never in production)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEOCLOUD_") and k not in ("DATABASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        NEOCLOUD_PRODUCTION="1",
        NEOCLOUD_VAR_DIR=str(tmp_path / "var"),
        NEOCLOUD_SECRET_KEY_FILE=str(secret_key),
        NEOCLOUD_CREDENTIAL_KEYS_FILE=str(credential_keys),
        NEOCLOUD_ALLOWED_HOSTS="neocloud.example",
    )
    env.update(extra)
    return env


def test_check_deploy_is_clean_under_the_production_settings(tmp_path):
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "System check identified no issues (0 silenced).", done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr


def test_production_without_allowed_hosts_stops_at_start_naming_the_variable(tmp_path):
    env = production_env(tmp_path)
    del env["NEOCLOUD_ALLOWED_HOSTS"]
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "NEOCLOUD_ALLOWED_HOSTS must be set when NEOCLOUD_PRODUCTION is true" in done.stderr


PROBE = """
import django, json
django.setup()
from django.test import Client
plain, tls = Client(), Client(HTTP_X_FORWARDED_PROTO="https")
answers = {
    "portal": plain.get("/login/"),
    "boot": plain.get("/boot/deploy/vmlinuz"),
    "portal behind the TLS proxy": tls.get("/login/"),
}
print(json.dumps({k: [r.status_code, r.get("Location", "")] for k, r in answers.items()}))
"""


def test_production_redirects_the_portal_to_https_but_not_the_boot_service(tmp_path):
    """PXE firmware and iPXE fetch the boot service over plain HTTP and follow no redirect to HTTPS."""
    env = production_env(tmp_path, NEOCLOUD_ALLOWED_HOSTS="testserver", NEOCLOUD_TLS_PROXY="1")
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert answers["portal"] == [301, "https://testserver/login/"]
    assert answers["boot"][0] == 200
    assert answers["portal behind the TLS proxy"][0] == 200
