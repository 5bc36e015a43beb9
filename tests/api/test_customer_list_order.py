"""Reservations and operations that share a created_at still page in one fixed order (newest id first):
limit/offset pages neither skip nor repeat a row."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.models import ApiToken, Operation, Reservation
from tests.conftest import reserve

V1 = "/api/v1"


def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def pages(client: APIClient, path: str, limit: int) -> list[int]:
    ids: list[int] = []
    offset = 0
    while True:
        body = client.get(f"{V1}/{path}?limit={limit}&offset={offset}").json()
        ids += [row["id"] for row in body["results"]]
        if body["next"] is None:
            return ids
        offset += limit


def test_reservations_booked_at_the_same_instant_page_newest_id_first_each_once(inventory):
    later = timezone.now() + dt.timedelta(days=1)
    for _ in range(4):
        reserve(inventory, starts_at=later, ends_at=later + dt.timedelta(hours=1))
    Reservation.objects.update(created_at=timezone.now())
    expected = sorted(Reservation.objects.values_list("pk", flat=True), reverse=True)
    assert pages(api(inventory.owner), "reservations", 3) == expected


def test_operations_started_at_the_same_instant_page_newest_id_first_each_once(inventory):
    reserve(inventory, 3, ends_at=timezone.now() + dt.timedelta(hours=1))
    Operation.objects.update(created_at=timezone.now())
    expected = sorted(Operation.objects.values_list("pk", flat=True), reverse=True)
    assert len(expected) >= 3
    assert pages(api(inventory.owner), "operations", 2) == expected


def test_a_reservations_operations_sharing_a_created_at_are_listed_newest_id_first(inventory):
    reservation = reserve(inventory, 3, ends_at=timezone.now() + dt.timedelta(hours=1))
    Operation.objects.update(created_at=timezone.now())
    expected = sorted(Operation.objects.filter(reservation=reservation).values_list("pk", flat=True))[::-1]
    body = api(inventory.owner).get(f"{V1}/reservations/{reservation.pk}").json()
    assert [op["id"] for op in body["operations"]] == expected
