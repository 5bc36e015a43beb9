"""Bad input through the customer API is a 400 in the one error shape, never a 500."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.models import ApiToken

V1 = "/api/v1"


def api(user) -> APIClient:
    client = APIClient()
    client.raise_request_exception = False
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def reserve_body(**extra):
    return {"server_type": "h100-8x", "count": 1, "image": "ubuntu-24.04", "ssh_keys": ["laptop"], **extra}


@pytest.mark.parametrize("ref", ["\u00b2", "99999999999999999999"])
def test_an_ssh_key_reference_that_is_no_key_id_is_a_clear_400(inventory, ref):
    response = api(inventory.owner).post(f"{V1}/reservations", reserve_body(ssh_keys=[ref]), format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"]["ssh_keys"] == [f"no SSH key {ref!r} in Acme AI"]


def test_an_ssh_key_is_still_found_by_its_id(inventory):
    response = api(inventory.owner).post(
        f"{V1}/reservations", reserve_body(ssh_keys=[str(inventory.key.pk)]), format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["ssh_keys"] == [inventory.key.pk]


@pytest.mark.parametrize("after", ["%C2%B2", "99999999999999999999", "-1", "x"])
def test_an_operation_log_cursor_that_is_no_log_line_id_is_a_clear_400(inventory, after):
    client = api(inventory.owner)
    op = client.post(f"{V1}/reservations", reserve_body(), format="json").json()["operations"][0]["id"]
    response = client.get(f"{V1}/operations/{op}?after={after}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"] == {
        "after": ["must be a log line id (a non-negative integer)"]
    }
    assert client.get(f"{V1}/operations/{op}?after=0").status_code == 200


def test_availability_for_a_window_ending_before_now_is_a_clear_400(inventory):
    response = api(inventory.owner).get(f"{V1}/server-types?ends_at=2001-01-01T00:00:00Z")
    assert response.status_code == 400, response.content
    assert "ends_at" in response.json()["error"]["details"]


def test_availability_for_a_window_starting_in_the_past_is_refused_as_booking_is(inventory):
    client = api(inventory.owner)
    now = timezone.now()
    past = {
        "starts_at": (now - dt.timedelta(hours=1)).isoformat(),
        "ends_at": (now + dt.timedelta(hours=1)).isoformat(),
    }
    response = client.get(f"{V1}/server-types", past)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["details"] == {"starts_at": ["the window cannot start in the past"]}
    booked = client.post(f"{V1}/reservations", reserve_body(**past), format="json")
    assert (
        booked.status_code == 400
        and booked.json()["error"]["message"] == "the window cannot start in the past"
    )
    # A start a few seconds ago (a clock or a request in flight) is now, as for a booking.
    just_now = {**past, "starts_at": (now - dt.timedelta(seconds=10)).isoformat()}
    response = client.get(f"{V1}/server-types", just_now)
    assert response.status_code == 200, response.content
    assert {row["slug"]: row["available"] for row in response.json()["results"]} == {
        "h100-8x": 4,
        "a100-8x": 2,
    }
