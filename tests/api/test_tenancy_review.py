"""Accounts, organizations, roles, quotas and API tokens as a customer of a cloud expects them to behave:
owner / member / outsider / operator personas through the HTTP API with real Bearer tokens."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading

import pytest
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.lifecycle import Actor
from provisioner.models import ApiToken, AuditEvent, Membership, Reservation
from provisioner.services import tenancy
from tests.conftest import reserve

V1 = "/api/v1"


def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def reserve_body(**extra):
    return {"server_type": "h100-8x", "count": 1, "image": "ubuntu-24.04", "ssh_keys": ["laptop"], **extra}


def test_a_member_cannot_add_members_or_change_roles(inventory):
    member = api(inventory.member)
    acme = inventory.acme.pk
    added = member.post(f"{V1}/organizations/{acme}/members", {"username": "oscar"}, format="json")
    assert added.status_code == 403
    promoted = member.post(
        f"{V1}/organizations/{acme}/members", {"username": "mike", "role": "owner"}, format="json"
    )
    assert promoted.status_code == 403
    assert Membership.objects.get(organization=inventory.acme, user=inventory.member).role == "member"
    assert not Membership.objects.filter(organization=inventory.acme, user=inventory.outsider).exists()


def test_the_last_owner_cannot_demote_themselves_but_can_once_another_owner_exists(inventory):
    owner = api(inventory.owner)
    acme = inventory.acme.pk
    demoted = owner.post(
        f"{V1}/organizations/{acme}/members", {"username": "olivia", "role": "member"}, format="json"
    )
    assert demoted.status_code == 400 and "last owner" in demoted.json()["error"]["message"]
    assert (
        owner.post(
            f"{V1}/organizations/{acme}/members", {"username": "mike", "role": "owner"}, format="json"
        ).status_code
        == 201
    )
    assert (
        owner.post(
            f"{V1}/organizations/{acme}/members", {"username": "olivia", "role": "member"}, format="json"
        ).status_code
        == 201
    )
    roles = dict(Membership.objects.filter(organization=inventory.acme).values_list("user__username", "role"))
    assert roles == {"olivia": "member", "mike": "owner"}
    actions = list(
        AuditEvent.objects.filter(organization=inventory.acme, action="member_role")
        .order_by("id")
        .values_list("actor_label", "reason")
    )
    assert actions == [("olivia", "mike is now owner"), ("olivia", "olivia is now member")]


def test_a_removed_member_loses_the_organizations_objects_at_once_and_their_reservation_stays(inventory):
    _, token = ApiToken.issue(inventory.member, "laptop")
    member = bearer(token)
    booked = member.post(f"{V1}/reservations", reserve_body(), format="json")
    assert booked.status_code == 201, booked.content
    rid = booked.json()["id"]
    assert member.get(f"{V1}/reservations/{rid}").status_code == 200

    owner = api(inventory.owner)
    assert (
        owner.delete(f"{V1}/organizations/{inventory.acme.pk}/members/{inventory.member.pk}").status_code
        == 204
    )
    assert member.get(f"{V1}/reservations/{rid}").status_code == 404
    assert member.get(f"{V1}/reservations").json()["results"] == []
    assert member.post(f"{V1}/reservations/{rid}/release").status_code == 404
    assert member.get(f"{V1}/ssh-keys").json()["results"] == []
    assert (
        member.post(f"{V1}/reservations", reserve_body(organization="acme"), format="json").status_code == 404
    )
    # The reservation is the organization's: it stays, and the owner still sees and manages it.
    assert Reservation.objects.get(pk=rid).organization_id == inventory.acme.pk
    assert owner.get(f"{V1}/reservations/{rid}").status_code == 200
    event = AuditEvent.objects.get(organization=inventory.acme, action="member_remove")
    assert event.actor == inventory.owner and event.reason == "mike"


def test_a_user_in_two_organizations_cannot_act_in_one_they_left_nor_in_a_stranger_by_its_ids(inventory):
    reservation = reserve(inventory, ends_at=timezone.now() + dt.timedelta(hours=2))
    outsider = api(inventory.outsider)
    assert outsider.get(f"{V1}/reservations/{reservation.pk}").status_code == 404
    assert outsider.post(f"{V1}/reservations/{reservation.pk}/extend", {}, format="json").status_code == 404
    assert outsider.delete(f"{V1}/ssh-keys/{inventory.key.pk}").status_code == 404
    assert (
        outsider.post(
            f"{V1}/organizations/{inventory.acme.pk}/members",
            {"username": "oscar", "role": "owner"},
            format="json",
        ).status_code
        == 404
    )
    # Booking for acme by naming it, or with acme's key, is refused.
    assert (
        outsider.post(f"{V1}/reservations", reserve_body(organization="acme"), format="json").status_code
        == 404
    )
    with_acme_key = outsider.post(
        f"{V1}/reservations",
        reserve_body(organization="other", ssh_keys=[str(inventory.key.pk)]),
        format="json",
    )
    assert with_acme_key.status_code == 400


def test_owners_cannot_change_their_quota_through_the_api(inventory):
    owner = api(inventory.owner)
    url = f"{V1}/organizations/{inventory.acme.pk}"
    assert owner.patch(url, {"server_quota": 1000}, format="json").status_code == 405
    assert owner.put(url, {"name": "Acme AI", "server_quota": 1000}, format="json").status_code == 405
    inventory.acme.refresh_from_db()
    assert inventory.acme.server_quota == 16


def test_a_quota_lowered_below_usage_keeps_reservations_and_refuses_new_ones_clearly(inventory):
    owner = api(inventory.owner)
    first = owner.post(f"{V1}/reservations", reserve_body(count=2), format="json")
    assert first.status_code == 201
    inventory.acme.server_quota = 1
    inventory.acme.save()
    assert owner.get(f"{V1}/reservations/{first.json()['id']}").json()["state"] == "provisioning"
    refused = owner.post(f"{V1}/reservations", reserve_body(), format="json")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "may hold 1 servers at once; it holds 2" in error["message"], error["message"]
    org = owner.get(f"{V1}/organizations/{inventory.acme.pk}").json()
    assert org["server_quota"] == 1 and org["servers_held"] == 2


def test_tokens_never_reach_the_audit_trail_only_their_hint(inventory):
    client = api(inventory.member)
    created = client.post(f"{V1}/tokens", {"name": "ci"}, format="json").json()
    token = created["token"]
    assert bearer(token).delete(f"{V1}/tokens/{created['id']}").status_code == 204
    events = AuditEvent.objects.filter(action__in=["token_issue", "token_revoke"])
    assert sorted(e.action for e in events) == ["token_issue", "token_revoke"]
    for event in events.values():
        assert all(token not in str(value) for value in event.values())
        assert all(token[10:20] not in str(value) for value in event.values())
    assert all(created["hint"] in e.reason and e.actor == inventory.member for e in events)
    assert bearer(token).get(f"{V1}/tokens").status_code == 401


def test_another_users_tokens_are_invisible_and_cannot_be_revoked(inventory):
    theirs, _ = ApiToken.issue(inventory.member, "theirs")
    owner = api(inventory.owner)
    listed = owner.get(f"{V1}/tokens").json()["results"]
    assert theirs.pk not in {t["id"] for t in listed}
    assert owner.get(f"{V1}/tokens/{theirs.pk}").status_code == 404
    assert owner.delete(f"{V1}/tokens/{theirs.pk}").status_code == 404
    # Operators too: tokens are personal.
    assert api(inventory.operator).delete(f"{V1}/tokens/{theirs.pk}").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_a_deactivated_users_token_is_refused(inventory):
    _, token = ApiToken.issue(inventory.member, "laptop")
    inventory.member.is_active = False
    inventory.member.save()
    assert bearer(token).get(f"{V1}/reservations").status_code == 401


@pytest.mark.django_db(transaction=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner(inventory, monkeypatch):
    """Each demotion checks "is this the last owner?" under a lock of the organization's memberships, so
    two owners demoting (or removing) each other concurrently cannot orphan the organization."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks exist on PostgreSQL only (SQLite transactions are IMMEDIATE)")
    acme = inventory.acme
    Membership.objects.filter(organization=acme, user=inventory.member).update(role="owner")
    # Hold each request after it counted the owners, until the other has counted too (or 2 s passed: a
    # request that waits on the other's lock never counts while the first one holds it).
    barrier = threading.Barrier(2, timeout=2)
    counted = tenancy._owner_count

    def count_then_wait(org):
        n = counted(org)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return n

    monkeypatch.setattr(tenancy, "_owner_count", count_then_wait)
    outcomes: list[str] = []

    def demote(actor, username: str) -> None:
        try:
            tenancy.add_member(acme, username, role="member", actor=Actor(user=actor, label=actor.username))
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=demote, args=(inventory.owner, "mike")),
        threading.Thread(target=demote, args=(inventory.member, "olivia")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    owners = Membership.objects.filter(organization=acme, role="owner").count()
    assert owners == 1, (owners, outcomes)
    assert sorted(outcomes) in (["InvalidRequest", "ok"], ["NotPermitted", "ok"]), outcomes


@pytest.mark.parametrize("racing_name", ["Acme", "ACME", "acme!"])
def test_two_sign_ups_racing_for_one_organization_name_get_a_clear_refusal_not_a_500(
    db, monkeypatch, racing_name
):
    """The race: both requests pass the "name taken?" check before either inserts. The one that inserts
    second must hear "already exists" (or get the next short name), never an IntegrityError."""
    from django.contrib.auth.models import User

    from provisioner.models import Organization

    second = User.objects.create_user("second-acme")
    real_taken = tenancy._name_taken
    calls = []

    def taken_after_the_other_inserts(name: str) -> bool:
        calls.append(name)
        if len(calls) == 1:  # this request checks just before the other one commits "Acme"
            Organization.objects.create(name="Acme", slug="acme")
            return False
        return real_taken(name)

    real_free_slug = tenancy._free_slug
    slugs = iter(["acme"])  # it also chose its short name before the other request inserted

    def stale_slug(base: str) -> str:
        return next(slugs, None) or real_free_slug(base)

    monkeypatch.setattr(tenancy, "_name_taken", taken_after_the_other_inserts)
    monkeypatch.setattr(tenancy, "_free_slug", stale_slug)
    if racing_name.lower() == "acme":
        with pytest.raises(tenancy.InvalidRequest, match="already exists"):
            tenancy.create_organization(second, racing_name, actor=Actor(user=second, label="second"))
        assert not Membership.objects.filter(user=second).exists()
    else:  # another name with the same short name: it gets the next free one
        org = tenancy.create_organization(second, racing_name, actor=Actor(user=second, label="second"))
        assert (org.name, org.slug) == ("acme!", "acme-2")
        assert Membership.objects.get(user=second).organization == org
