"""An Idempotency-Key replays the request that first used it, and only that request: the same key with a
different body is a 409, whatever part of the body differs."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from provisioner.models import Reservation
from tests.api.test_api_bad_input import api, reserve_body

V1 = "/api/v1"


def at(hours: float) -> str:
    return (timezone.now() + dt.timedelta(hours=hours)).isoformat()


@pytest.fixture
def first(inventory):
    body = reserve_body(starts_at=at(1), ends_at=at(2), name="train")
    response = api(inventory.owner).post(
        f"{V1}/reservations", body, format="json", HTTP_IDEMPOTENCY_KEY="run-7"
    )
    assert response.status_code == 201, response.content
    return body, response.json()


@pytest.mark.parametrize(
    "change",
    [
        {"starts_at": at(5)},
        {"ends_at": at(9)},
        {"ends_at": None},
        {"name": "eval"},
        {"server_type": "a100-8x"},
        {"count": 2},
    ],
    ids=["starts_at", "ends_at", "open_ended", "name", "server_type", "count"],
)
def test_the_same_key_with_another_body_is_a_conflict(inventory, first, change):
    body, _ = first
    again = api(inventory.owner).post(
        f"{V1}/reservations", {**body, **change}, format="json", HTTP_IDEMPOTENCY_KEY="run-7"
    )
    assert again.status_code == 409, again.content
    assert again.json()["error"]["code"] == "idempotency_key_reused"
    assert Reservation.objects.count() == 1


def test_the_same_key_with_other_ssh_keys_is_a_conflict(inventory, first, tmp_path):
    from provisioner.lifecycle import Actor
    from provisioner.services import tenancy
    from tests.conftest import ssh_keygen

    _, pub = ssh_keygen(tmp_path, name="desk")
    tenancy.create_ssh_key(inventory.acme, "desk", pub, actor=Actor.system("test"))
    body, _ = first
    again = api(inventory.owner).post(
        f"{V1}/reservations", {**body, "ssh_keys": ["desk"]}, format="json", HTTP_IDEMPOTENCY_KEY="run-7"
    )
    assert again.status_code == 409, again.content


def test_the_same_body_replays_after_the_reservation_was_extended(inventory, first):
    body, made = first
    client = api(inventory.member)  # anyone in the organization may retry it
    extended = client.post(f"{V1}/reservations/{made['id']}/extend", {"ends_at": at(3)}, format="json")
    assert extended.status_code == 200, extended.content
    again = client.post(f"{V1}/reservations", body, format="json", HTTP_IDEMPOTENCY_KEY="run-7")
    assert again.status_code == 200, again.content
    assert again.json()["id"] == made["id"]


def test_a_window_that_started_now_replays_with_the_same_body(inventory):
    body = reserve_body(starts_at=(timezone.now() - dt.timedelta(seconds=30)).isoformat())
    client = api(inventory.owner)
    made = client.post(f"{V1}/reservations", body, format="json", HTTP_IDEMPOTENCY_KEY="now-1")
    assert made.status_code == 201, made.content
    assert made.json()["starts_at"] != body["starts_at"]  # a start just past is moved to now
    again = client.post(f"{V1}/reservations", body, format="json", HTTP_IDEMPOTENCY_KEY="now-1")
    assert (again.status_code, again.json()["id"]) == (200, made.json()["id"])
    omitted = client.post(f"{V1}/reservations", reserve_body(), format="json", HTTP_IDEMPOTENCY_KEY="now-1")
    assert omitted.status_code == 200, omitted.content
