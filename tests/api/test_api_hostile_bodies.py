"""Bodies a hostile client sends on purpose (nested without end, larger than any request) are refused in
the API's one error shape, never answered with a 500 or an HTML page."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from provisioner.json_input import MAX_JSON_DEPTH
from provisioner.models import ApiToken

V1 = "/api/v1"
DEEP_BODIES = {
    "arrays past the parser's recursion": "[" * 2000 + "]" * 2000,
    "objects past the parser's recursion": '{"a":' * 2000 + "1" + "}" * 2000,
    "arrays the parser reads, past the limit": "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
}


def api(user) -> APIClient:
    client = APIClient()
    client.raise_request_exception = False
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


@pytest.mark.parametrize("body", DEEP_BODIES.values(), ids=DEEP_BODIES.keys())
@pytest.mark.parametrize(
    ("persona", "path"),
    [
        ("owner", f"{V1}/reservations"),
        ("owner", f"{V1}/ssh-keys"),
        ("owner", f"{V1}/tokens"),
        ("operator", f"{V1}/admin/reimage-rollouts"),
    ],
)
def test_deeply_nested_json_is_a_400_in_the_error_shape(inventory, persona, path, body):
    response = api(getattr(inventory, persona)).post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "parse_error"
    assert f"at most {MAX_JSON_DEPTH} levels" in error["message"]


def test_json_nested_up_to_the_limit_is_read(inventory):
    """The limit refuses only what is deeper: a body at the limit reaches validation (and fails there)."""
    nested: object = "laptop"
    for _ in range(MAX_JSON_DEPTH - 1):
        nested = [nested]
    body = {"server_type": "h100-8x", "count": 1, "image": "ubuntu-24.04", "ssh_keys": nested}
    response = api(inventory.owner).post(
        f"{V1}/reservations", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] == "invalid_request"
    assert "ssh_keys" in response.json()["error"]["details"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", json.dumps({"server_type": "h100-8x", "name": "x" * 3_000_000})),
        ("application/x-www-form-urlencoded", "name=" + "x" * 3_000_000),
    ],
    ids=["json", "form"],
)
def test_a_body_over_the_limit_is_a_413_in_the_error_shape(inventory, settings, content_type, body):
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    response = api(inventory.owner).post(f"{V1}/reservations", data=body, content_type=content_type)
    assert response.status_code == 413, response.content[:300]
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == {
        "code": "too_large",
        "message": f"a request body may be at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes",
    }


def test_a_form_with_more_fields_than_django_reads_is_a_400_in_the_error_shape(inventory, settings):
    body = "&".join(f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    response = api(inventory.owner).post(
        f"{V1}/reservations", data=body, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "DATA_UPLOAD_MAX_NUMBER_FIELDS" in error["message"]
