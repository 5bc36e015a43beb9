"""A reservation window given without a time zone is refused in words, not taken as UTC."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.models import ApiToken, Reservation
from tests.conftest import reserve

V1 = "/api/v1"
NAIVE = (timezone.now() + dt.timedelta(days=2)).replace(microsecond=0, tzinfo=None)
WORDS = "give the time zone: add an offset such as +02:00, or Z for UTC"


def api(user) -> APIClient:
    client = APIClient()
    client.raise_request_exception = False
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def body(**window):
    return {"server_type": "h100-8x", "count": 1, "image": "ubuntu-24.04", "ssh_keys": ["laptop"], **window}


def aware(value: dt.datetime) -> str:
    return value.replace(tzinfo=dt.UTC).isoformat()


@pytest.mark.parametrize(
    "window",
    [
        {"starts_at": NAIVE.isoformat(), "ends_at": aware(NAIVE + dt.timedelta(hours=2))},
        {"starts_at": aware(NAIVE), "ends_at": (NAIVE + dt.timedelta(hours=2)).isoformat()},
        {"starts_at": NAIVE.date().isoformat()},
    ],
    ids=["start", "end", "a date alone"],
)
def test_a_reservation_window_without_a_time_zone_is_a_clear_400(inventory, window):
    response = api(inventory.owner).post(f"{V1}/reservations", body(**window), format="json")
    assert response.status_code == 400, response.content
    details = response.json()["error"]["details"]
    (field,) = details
    assert WORDS in details[field][0]
    assert not Reservation.objects.exists()


def test_the_refusal_shows_the_time_as_it_should_be_written(inventory):
    response = api(inventory.owner).post(
        f"{V1}/reservations", body(starts_at="2026-12-08T04:35:41"), format="json"
    )
    assert "for example 2026-12-08T04:35:41Z" in response.json()["error"]["details"]["starts_at"][0]


@pytest.mark.parametrize("suffix", ["Z", "+00:00", "+02:00"])
def test_a_window_with_its_time_zone_is_booked_at_that_instant(inventory, suffix):
    start = NAIVE.isoformat() + suffix
    response = api(inventory.owner).post(f"{V1}/reservations", body(starts_at=start), format="json")
    assert response.status_code == 201, response.content
    booked = Reservation.objects.get(pk=response.json()["id"])
    assert booked.starts_at == dt.datetime.fromisoformat(start.replace("Z", "+00:00"))


def test_availability_for_a_window_without_a_time_zone_is_a_clear_400(inventory):
    response = api(inventory.owner).get(f"{V1}/server-types", {"starts_at": NAIVE.isoformat()})
    assert response.status_code == 400, response.content
    assert WORDS in response.json()["error"]["details"]["starts_at"][0]


def test_an_extension_without_a_time_zone_is_a_clear_400(inventory):
    reservation = reserve(inventory, ends_at=timezone.now() + dt.timedelta(hours=2))
    later = (timezone.now() + dt.timedelta(hours=5)).replace(tzinfo=None, microsecond=0)
    response = api(inventory.owner).post(
        f"{V1}/reservations/{reservation.pk}/extend", {"ends_at": later.isoformat()}, format="json"
    )
    assert response.status_code == 400, response.content
    assert WORDS in response.json()["error"]["details"]["ends_at"][0]
    reservation.refresh_from_db()
    assert reservation.ends_at < timezone.now() + dt.timedelta(hours=3)
