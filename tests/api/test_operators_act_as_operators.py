"""A staff token is no master key to every organization through the customer API: there an operator acts
within their own organizations, as anyone does. On a customer's reservation they act through the operator
API, audited as the operator, and the customer reads that an operator did it (not "released by customer")."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from provisioner.models import AuditEvent, Membership, Node, Reservation, SSHKey
from provisioner.states import OPEN_RESERVATION_STATES, NodeState
from tests.api.test_api_bad_input import api
from tests.conftest import reserve

pytestmark = pytest.mark.django_db
V1 = "/api/v1"


def _memberships(org) -> set[tuple[str, str]]:
    return set(Membership.objects.filter(organization=org).values_list("user__username", "role"))


def test_an_operator_token_changes_nothing_of_another_organization_through_the_customer_api(inventory):
    inv = inventory
    reservation = reserve(inv, ends_at=timezone.now() + dt.timedelta(hours=2))
    members_before = _memberships(inv.acme)
    operator, outsider = api(inv.operator), api(inv.outsider)
    later = (timezone.now() + dt.timedelta(hours=5)).isoformat()
    attempts = [
        ("delete", f"{V1}/ssh-keys/{inv.key.pk}", None),
        ("post", f"{V1}/reservations/{reservation.pk}/release", None),
        ("post", f"{V1}/reservations/{reservation.pk}/extend", {"ends_at": later}),
        ("post", f"{V1}/organizations/{inv.acme.pk}/members", {"username": "oscar", "role": "owner"}),
        ("delete", f"{V1}/organizations/{inv.acme.pk}/members/{inv.member.pk}", None),
    ]
    for method, path, body in attempts:
        theirs = getattr(operator, method)(path, body, format="json")
        outsiders = getattr(outsider, method)(path, body, format="json")
        assert theirs.status_code == 404, (path, theirs.content)
        assert (theirs.status_code, theirs.json()) == (outsiders.status_code, outsiders.json()), path
    assert SSHKey.objects.filter(pk=inv.key.pk).exists()
    reservation.refresh_from_db()
    assert reservation.state in OPEN_RESERVATION_STATES and reservation.released_at is None
    assert reservation.ends_at < timezone.now() + dt.timedelta(hours=3)
    assert _memberships(inv.acme) == members_before
    # Reading stays open to operators (oversight): the customer endpoints still show them the rows.
    assert operator.get(f"{V1}/reservations/{reservation.pk}").status_code == 200
    assert operator.get(f"{V1}/ssh-keys/{inv.key.pk}").status_code == 200


def test_an_operator_release_through_the_admin_api_is_recorded_and_shown_as_the_operators(inventory):
    inv = inventory
    reservation = reserve(inv)
    node = Node.objects.get(reservation=reservation)
    released = api(inv.operator).post(
        f"{V1}/admin/reservations/{reservation.pk}/release", {"reason": "hardware recall"}, format="json"
    )
    assert released.status_code == 202, released.content
    said = "released by operator opal: hardware recall"
    assert released.json()["status_message"] == said

    customer = api(inv.owner)
    seen = customer.get(f"{V1}/reservations/{reservation.pk}").json()
    assert seen["state"] not in OPEN_RESERVATION_STATES and seen["status_message"] == said
    events = customer.get(f"{V1}/audit-events", {"reservation": reservation.pk, "action": "release"}).json()
    assert [(e["actor"], e["reason"]) for e in events["results"]] == [("operator opal", said)]
    event = AuditEvent.objects.get(reservation=reservation, action="release")
    assert event.actor == inv.operator and event.organization == inv.acme
    # The server's own move out of the lease says so too, in the customer's trail.
    moved = AuditEvent.objects.get(node=node, action="transition", to_state=NodeState.RELEASING)
    assert (moved.actor_label, moved.reason, moved.organization) == ("operator opal", said, inv.acme)
    assert "released by customer" not in str(customer.get(f"{V1}/audit-events").json())


def test_an_operator_release_needs_a_reason_and_is_for_operators_only(inventory):
    reservation = reserve(inventory)
    path = f"{V1}/admin/reservations/{reservation.pk}/release"
    no_reason = api(inventory.operator).post(path, {}, format="json")
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["error"]["details"]
    assert api(inventory.owner).post(path, {"reason": "mine"}, format="json").status_code == 403
    assert Reservation.objects.get(pk=reservation.pk).state in OPEN_RESERVATION_STATES


def test_a_customers_own_release_still_says_released_by_customer(inventory):
    reservation = reserve(inventory)
    released = api(inventory.owner).post(f"{V1}/reservations/{reservation.pk}/release")
    assert released.status_code == 202
    assert released.json()["status_message"] == "released by customer"
    assert AuditEvent.objects.get(reservation=reservation, action="release").actor_label == "olivia"


def test_an_operator_who_is_a_member_acts_there_as_a_member_not_as_an_owner(inventory):
    inv = inventory
    Membership.objects.create(organization=inv.acme, user=inv.operator, role=Membership.Role.MEMBER)
    reservation = reserve(inv)
    operator = api(inv.operator)
    refused = operator.post(f"{V1}/organizations/{inv.acme.pk}/members", {"username": "oscar"}, format="json")
    assert refused.status_code == 403, refused.content
    assert not Membership.objects.filter(organization=inv.acme, user=inv.outsider).exists()
    released = operator.post(f"{V1}/reservations/{reservation.pk}/release")
    assert released.status_code == 202, released.content
    assert AuditEvent.objects.get(reservation=reservation, action="release").actor_label == "opal"


def test_the_portal_lets_an_operator_change_no_other_organizations_reservation_or_key(inventory):
    inv = inventory
    reservation = reserve(inv)
    client = Client()
    client.force_login(inv.operator)
    assert client.get(reverse("portal:reservation", args=[reservation.pk])).status_code == 200
    assert client.post(reverse("portal:reservation_release", args=[reservation.pk])).status_code == 404
    later = (timezone.now() + dt.timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M")
    extend = client.post(reverse("portal:reservation_extend", args=[reservation.pk]), {"ends_at": later})
    assert extend.status_code == 404
    assert client.post(reverse("portal:ssh_key_delete", args=[inv.key.pk])).status_code == 404
    assert Reservation.objects.get(pk=reservation.pk).state in OPEN_RESERVATION_STATES
    assert SSHKey.objects.filter(pk=inv.key.pk).exists()
