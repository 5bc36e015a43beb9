"""A server error shows no settings and no environment, whatever DEBUG: the API answers in its JSON error
shape with a request id, the portal with a plain page; the traceback goes to the log under that id. DEBUG
is on only when asked for by name."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from rest_framework.test import APIClient

from provisioner.models import ApiToken
from tests.conftest import ROOT

# What Django's debug page shows and no client may see: settings, the process environment, the exception.
LEAKS = ("SECRET_KEY", "DATABASES", "DATABASE_URL", "NEOCLOUD_", "Traceback", "boom-internal-detail")


def _no_leaks(body: str, settings) -> None:
    for marker in (*LEAKS, settings.SECRET_KEY):
        assert marker not in body, f"{marker!r} shown to the client"


@pytest.fixture
def failing_views(monkeypatch):
    """The API's server-type list and the portal's catalog raise, as a bug would."""

    def boom(*args, **kwargs):
        raise RuntimeError("boom-internal-detail")

    monkeypatch.setattr("webapp.api.customer.ServerTypeViewSet.list", boom)
    monkeypatch.setattr("webapp.portal.views.catalog._catalog_rows", boom)


@pytest.mark.parametrize("debug", [False, True], ids=["debug off", "debug on"])
def test_an_api_server_error_is_json_with_a_request_id(inventory, settings, failing_views, caplog, debug):
    settings.DEBUG = debug
    client = APIClient()
    client.raise_request_exception = False
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(inventory.owner, 'test')[1]}")
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = client.get("/api/v1/server-types", HTTP_X_REQUEST_ID="req-12345678")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response["X-Request-ID"] == "req-12345678"
    error = response.json()["error"]
    assert error["code"] == "server_error"
    assert error["details"] == {"request_id": "req-12345678"}
    assert "req-12345678" in error["message"]
    _no_leaks(response.content.decode(), settings)
    logged = [r for r in caplog.records if r.name == "django.request" and r.levelno == logging.ERROR]
    assert len(logged) == 1
    assert logged[0].getMessage() == "Internal Server Error: /api/v1/server-types [request req-12345678]"
    assert logged[0].exc_info and "boom-internal-detail" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("debug", [False, True], ids=["debug off", "debug on"])
def test_a_portal_server_error_is_a_plain_page_with_a_request_id(
    client, inventory, settings, failing_views, debug
):
    settings.DEBUG = debug
    client.raise_request_exception = False
    client.force_login(inventory.owner)
    response = client.get("/")
    assert response.status_code == 500
    assert response["Content-Type"] == "text/html; charset=utf-8"
    body = response.content.decode()
    assert response["X-Request-ID"] in body
    _no_leaks(body, settings)


def test_the_test_client_still_raises_what_a_view_raised(client, inventory, failing_views):
    """Tests see a view's exception, not only its 500, as they did before errors were answered here."""
    client.force_login(inventory.owner)
    with pytest.raises(RuntimeError, match="boom-internal-detail"):
        client.get("/")


@pytest.mark.parametrize("debug", [False, True], ids=["debug off", "debug on"])
def test_a_refused_portal_request_shows_no_settings_even_under_debug(client, inventory, settings, debug):
    """Django answers a form larger than DATA_UPLOAD_MAX_MEMORY_SIZE itself: under DEBUG with its debug page
    (emptied of settings and environment here), else with the portal's plain 413 page."""
    settings.DEBUG = debug
    client.raise_request_exception = False
    body = "username=x&password=" + "y" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = client.post("/login/", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == (400 if debug else 413)
    _no_leaks(response.content.decode().replace("Traceback", ""), settings)
    if not debug:
        assert "at most" in response.content.decode()


def test_an_unknown_api_address_is_a_404_in_the_error_shape(inventory, settings, client):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "nothing at /api/v1/no-such-thing"}}
    page = client.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"] == "text/html; charset=utf-8"


def _settings_debug(tmp_path, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in {"NEOCLOUD_DEBUG", "NEOCLOUD_PRODUCTION"}}
    environ.update(DJANGO_SETTINGS_MODULE="webapp.settings", NEOCLOUD_VAR_DIR=str(tmp_path), **env)
    code = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_debug_is_off_unless_asked_for_by_name(tmp_path):
    assert _settings_debug(tmp_path) == "False"
    assert _settings_debug(tmp_path, NEOCLOUD_DEBUG="1") == "True"
    assert _settings_debug(tmp_path, NEOCLOUD_DEBUG="false") == "False"


def test_a_portal_refusal_is_a_plain_page_with_its_sentence(client, inventory):
    client.force_login(inventory.owner)
    response = client.get("/ops/")
    assert response.status_code == 403
    assert "This page is for operators." in response.content.decode()
