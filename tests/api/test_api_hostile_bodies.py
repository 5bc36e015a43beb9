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
