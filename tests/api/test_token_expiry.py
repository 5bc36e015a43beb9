"""API tokens can be issued with a lifetime (1-365 days; none: until revoked). An expired token is refused
at once, lists say so, and the audit trail records the expiry, never the token."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.errors import InvalidRequest
from provisioner.lifecycle import Actor
from provisioner.models import ApiToken, AuditEvent
from provisioner.services.tenancy import issue_token
from tests.api.test_api_flows import V1, api


def _bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_a_token_issued_for_30_days_works_until_then_and_is_refused_after(inventory):
    created = api(inventory.owner).post(f"{V1}/tokens", {"name": "ci", "expires_in_days": 30}, format="json")
    assert created.status_code == 201
    body = created.json()
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(days=29, hours=23) < expires - timezone.now() <= dt.timedelta(days=30)
    assert _bearer(body["token"]).get(f"{V1}/reservations").status_code == 200

    ApiToken.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    refused = _bearer(body["token"]).get(f"{V1}/reservations")
    assert refused.status_code == 401 and "expired" in refused.content.decode()
    listed = {t["id"]: t for t in api(inventory.owner).get(f"{V1}/tokens").json()["results"]}
    assert listed[body["id"]]["expires_at"] is not None
    event = AuditEvent.objects.get(action="token_issue", reason__contains="ci (")
    assert "expires" in event.reason and body["token"] not in event.reason


@pytest.mark.parametrize("days", [0, -1, 366, "soon", True])
def test_a_lifetime_outside_1_to_365_days_is_a_clear_400(inventory, days):
    response = api(inventory.owner).post(
        f"{V1}/tokens", {"name": "ci", "expires_in_days": days}, format="json"
    )
    assert response.status_code == 400 and "expires_in_days" in response.content.decode()
    assert not ApiToken.objects.filter(name="ci").exists()


@pytest.mark.django_db
def test_the_service_refuses_a_bad_lifetime_and_defaults_to_until_revoked(inventory):
    with pytest.raises(InvalidRequest, match="1 to 365 days"):
        issue_token(inventory.owner, "ci", actor=Actor(user=inventory.owner), expires_in_days=400)
    row, _ = issue_token(inventory.owner, "laptop", actor=Actor(user=inventory.owner))
    assert row.expires_at is None and row.status == "active"


def test_the_portal_issues_an_expiring_token_and_shows_expired_ones(client, inventory):
    client.force_login(inventory.owner)
    url = reverse("portal:api_tokens")
    page = client.post(url, {"name": "nightly", "expires_in_days": "7"}, follow=True).content.decode()
    row = ApiToken.objects.get(name="nightly")
    assert dt.timedelta(days=6, hours=23) < row.expires_at - timezone.now() <= dt.timedelta(days=7)
    assert row.expires_at.strftime("%Y-%m-%d") in page
    ApiToken.objects.filter(pk=row.pk).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    page = client.get(url).content.decode()
    assert 'badge-grey">expired' in page
    never = client.post(url, {"name": "forever", "expires_in_days": ""}, follow=True)
    assert never.status_code == 200 and ApiToken.objects.get(name="forever").expires_at is None


def test_an_expiring_token_cannot_mint_a_longer_lived_or_permanent_one_but_can_rotate(inventory):
    short = _bearer(
        api(inventory.owner)
        .post(f"{V1}/tokens", {"name": "ci", "expires_in_days": 7}, format="json")
        .json()["token"]
    )
    for body in ({"name": "forever"}, {"name": "longer", "expires_in_days": 8}):
        refused = short.post(f"{V1}/tokens", body, format="json")
        assert refused.status_code == 400, refused.content
        assert "must expire too, within 7 day(s)" in refused.content.decode()
    rotated = short.post(f"{V1}/tokens", {"name": "ci-next", "expires_in_days": 7}, format="json")
    assert rotated.status_code == 201
    assert not ApiToken.objects.filter(name__in=["forever", "longer"]).exists()
    # a token that never expires, or a signed-in session, may still issue a permanent one
    assert api(inventory.owner).post(f"{V1}/tokens", {"name": "forever"}, format="json").status_code == 201
