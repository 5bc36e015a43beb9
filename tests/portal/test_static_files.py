"""The portal's CSS and scripts (and the admin's) are served with DEBUG off, by the web process itself,
under runserver as under gunicorn: no collectstatic step, no DEBUG needed for a styled portal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

PORTAL_STATIC = ROOT / "webapp" / "portal" / "static"
FILES = {
    "/static/portal/portal.css": PORTAL_STATIC / "portal" / "portal.css",
    "/static/portal/vendor/htmx/htmx.min.js": PORTAL_STATIC / "portal" / "vendor" / "htmx" / "htmx.min.js",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url", FILES)
def test_static_files_are_served_with_debug_off(client, settings, url):
    assert settings.DEBUG is False
    response = client.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == FILES[url].read_bytes()


def test_the_admin_styles_are_served_too(client):
    response = client.get("/static/admin/css/base.css")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/css")


def test_runserver_serves_the_portal_styles_with_debug_off(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"NEOCLOUD_DEBUG", "NEOCLOUD_PRODUCTION"}}
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings", NEOCLOUD_VAR_DIR=str(tmp_path), NEOCLOUD_DEBUG="0")
    log = tmp_path / "runserver.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/static/portal/portal.css", timeout=5
                ) as r:
                    assert r.status == 200
                    assert r.read() == FILES["/static/portal/portal.css"].read_bytes()
                    break
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"runserver answered {exc.code} for the styles") from None
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError(f"runserver did not serve the styles:\n{log.read_text()}") from None
                time.sleep(0.2)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
