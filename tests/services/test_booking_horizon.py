"""Reservations reach at most NEOCLOUD_MAX_BOOKING_DAYS ahead (start, end, or an extension); an
open-ended reservation (no end) is not limited: it lasts until released."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from provisioner.errors import InvalidRequest
from provisioner.lifecycle import Actor
from provisioner.models import Reservation
from provisioner.services.reservations import extend_reservation
from tests.api.test_api_flows import V1, api, reserve_body
from tests.conftest import reserve

DAY = dt.timedelta(days=1)


def _book(inv, **window) -> Reservation:
    return reserve(inv, **window)


@pytest.mark.django_db
def test_a_window_beyond_the_horizon_is_refused_in_words(inventory, settings):
    settings.NEOCLOUD_MAX_BOOKING_DAYS = 30
    now = timezone.now()
    with pytest.raises(InvalidRequest, match="at most 30 days ahead"):
        _book(inventory, starts_at=now + 31 * DAY, ends_at=now + 32 * DAY)
    with pytest.raises(InvalidRequest, match="leave the end out"):
        _book(inventory, starts_at=now + DAY, ends_at=now + 31 * DAY)
    assert not Reservation.objects.exists()

    inside = _book(inventory, starts_at=now + 29 * DAY, ends_at=now + 30 * DAY - dt.timedelta(minutes=1))
    open_ended = _book(inventory)  # now, until released
    assert inside.pk and open_ended.ends_at is None


@pytest.mark.django_db
def test_an_extension_beyond_the_horizon_is_refused_and_changes_nothing(inventory, settings):
    settings.NEOCLOUD_MAX_BOOKING_DAYS = 30
    now = timezone.now()
    r = _book(inventory, starts_at=now + DAY, ends_at=now + 2 * DAY)
    with pytest.raises(InvalidRequest, match="at most 30 days ahead"):
        extend_reservation(r, now + 40 * DAY, actor=Actor(user=inventory.owner))
    r.refresh_from_db()
    assert r.ends_at == now + 2 * DAY
    assert extend_reservation(r, now + 20 * DAY, actor=Actor(user=inventory.owner)).ends_at == now + 20 * DAY


@pytest.mark.django_db
def test_the_api_answers_400_with_the_horizon(inventory):
    far = timezone.now() + 5000 * DAY
    response = api(inventory.owner).post(
        f"{V1}/reservations",
        reserve_body(starts_at=far.isoformat(), ends_at=(far + DAY).isoformat()),
        format="json",
    )
    assert response.status_code == 400
    assert "at most 365 days ahead" in response.content.decode()


def test_a_horizon_past_the_calendar_fails_at_start_naming_the_variable():
    # now + millions of days is past the year 9999: every booking would have failed with a 500
    import os
    import subprocess
    import sys

    env = {**os.environ, "NEOCLOUD_MAX_BOOKING_DAYS": "99999999", "DJANGO_SETTINGS_MODULE": "webapp.settings"}
    env.pop("DATABASE_URL", None)
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, text=True
    )
    assert run.returncode != 0
    assert "NEOCLOUD_MAX_BOOKING_DAYS must be at most 36500" in run.stderr
