"""The portal through Django's test client: every page renders for the right persona and is refused for
the others; forms turn domain errors into plain messages; customers never see other organizations' rows."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from provisioner.lifecycle import Actor
from provisioner.models import (
    ApiToken,
    AuditEvent,
    Membership,
    Node,
    Operation,
    Organization,
    Reservation,
    Rollout,
    SSHKey,
)
from provisioner.states import NodeState, OperationState
from tests.conftest import reserve, ssh_keygen

CUSTOMER_PAGES = [
    "catalog",
    "reserve",
    "reservations",
    "organization",
    "ssh_keys",
    "api_tokens",
    "webhooks",
    "audit",
]
OPERATOR_PAGES = ["ops_fleet", "ops_rollouts"]


def _login(client, user) -> None:
    client.force_login(user)


def _reserve(inv, count=1, org=None, key=None, user=None) -> Reservation:
    return reserve(inv, count, org=org, key=key, user=user, label="test")


@pytest.mark.parametrize("page", CUSTOMER_PAGES + OPERATOR_PAGES)
def test_anonymous_visitors_are_sent_to_sign_in(client, inventory, page):
    response = client.get(reverse(f"portal:{page}"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("portal:login"))


@pytest.mark.parametrize("page", CUSTOMER_PAGES)
@pytest.mark.parametrize("persona", ["owner", "member", "outsider", "operator"])
def test_customer_pages_render_for_every_signed_in_persona(client, inventory, page, persona):
    _login(client, getattr(inventory, persona))
    response = client.get(reverse(f"portal:{page}"))
    assert response.status_code == 200
    assert b"Neocloud" in response.content


@pytest.mark.parametrize("page", OPERATOR_PAGES)
@pytest.mark.parametrize("persona", ["owner", "member", "outsider"])
def test_operator_pages_are_forbidden_to_customers(client, inventory, page, persona):
    _login(client, getattr(inventory, persona))
    assert client.get(reverse(f"portal:{page}")).status_code == 403


def test_operator_node_pages_and_actions_are_forbidden_to_customers(client, inventory):
    node = Node.objects.first()
    _login(client, inventory.owner)
    assert client.get(reverse("portal:ops_node", args=[node.pk])).status_code == 403
    assert client.get(reverse("portal:ops_node_live", args=[node.pk])).status_code == 403
    response = client.post(reverse("portal:ops_node_action", args=[node.pk]), {"action": "maintenance_on"})
    assert response.status_code == 403
    assert Node.objects.get(pk=node.pk).state == NodeState.AVAILABLE


def test_operator_sees_the_fleet_grid_and_node_detail(client, inventory):
    _login(client, inventory.operator)
    response = client.get(reverse("portal:ops_fleet"))
    body = response.content.decode()
    assert response.status_code == 200
    assert "node-h100-8x-01" in body and "node-a100-8x-02" in body
    filtered = client.get(reverse("portal:ops_fleet"), {"server_type": "a100-8x"}).content.decode()
    assert "node-a100-8x-01" in filtered and "node-h100-8x-01" not in filtered
    node = Node.objects.get(name="node-h100-8x-01")
    detail = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    assert "Lifecycle timeline" in detail and "Put on maintenance" in detail
    assert "secret-bmc-pw" not in detail
    assert 'Cabled to</dt><dd><span class="muted">not recorded' in detail
    Node.objects.filter(pk=node.pk).update(switch_name="leaf-ams1-01", switch_port="swp7")
    detail = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    assert "<code>leaf-ams1-01</code> port <code>swp7</code>" in detail


def test_operator_puts_a_node_on_maintenance_and_back(client, inventory):
    _login(client, inventory.operator)
    node = Node.objects.get(name="node-a100-8x-01")
    url = reverse("portal:ops_node_action", args=[node.pk])
    client.post(url, {"action": "maintenance_on", "reason": "swap PSU"})
    node.refresh_from_db()
    assert node.state == NodeState.MAINTENANCE
    assert AuditEvent.objects.filter(node=node, to_state="maintenance", actor=inventory.operator).exists()
    page = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    assert "End maintenance" in page and "swap PSU" in page
    client.post(url, {"action": "maintenance_off", "reason": "PSU swapped"})
    assert Node.objects.get(pk=node.pk).state == NodeState.CLEANING


def test_operator_asks_for_maintenance_when_a_leased_server_is_free_and_withdraws_it(client, inventory):
    r = _reserve(inventory)
    node = Node.objects.get(reservation=r)
    _login(client, inventory.operator)
    url = reverse("portal:ops_node_action", args=[node.pk])
    page = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    assert 'id="hold-when-free"' in page and "Put on maintenance" not in page

    done = client.post(url, {"action": "maintenance_when_free", "reason": "swap PSU"}, follow=True)

    text = done.content.decode()
    assert "goes on maintenance hold once it is free and wiped" in text
    assert 'id="hold-requested"' in text and "swap PSU" in text and 'id="withdraw-hold"' in text
    node.refresh_from_db()
    assert node.state == NodeState.RESERVED and node.hold_requested == "swap PSU"
    withdrawn = client.post(url, {"action": "maintenance_off"}, follow=True).content.decode()
    assert "Hold request on" in withdrawn and 'id="hold-requested"' not in withdrawn
    assert Node.objects.get(pk=node.pk).hold_requested == ""


def test_a_hold_request_on_a_server_that_then_failed_can_be_withdrawn_from_its_page(client, inventory):
    node = Node.objects.order_by("name").first()
    Node.objects.filter(pk=node.pk).update(state=NodeState.ERROR, hold_requested="swap PSU")
    _login(client, inventory.operator)
    page = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    assert 'id="withdraw-hold"' in page and 'id="hold-when-free"' not in page
    url = reverse("portal:ops_node_action", args=[node.pk])
    withdrawn = client.post(url, {"action": "maintenance_off"}, follow=True).content.decode()
    assert 'id="hold-requested"' not in withdrawn
    node.refresh_from_db()
    assert (node.state, node.hold_requested) == (NodeState.ERROR, "")


def test_reimaging_a_busy_node_is_refused_in_plain_words(client, inventory):
    r = _reserve(inventory)  # no worker runs: its provisioning stays pending
    node = Node.objects.get(reservation=r)
    _login(client, inventory.operator)
    response = client.post(
        reverse("portal:ops_node_action", args=[node.pk]), {"action": "reimage"}, follow=True
    )
    assert f"Not done: {node.name} is busy with another operation" in response.content.decode()


def test_rollout_including_a_leased_node_without_force_is_refused(client, inventory):
    r = _reserve(inventory)
    leased = Node.objects.get(reservation=r)
    idle = Node.objects.filter(state=NodeState.AVAILABLE).first()
    _login(client, inventory.operator)
    response = client.post(
        reverse("portal:ops_rollout_start"),
        {"nodes": [leased.pk, idle.pk], "max_parallel": 1, "failure_budget": 0},
        follow=True,
    )
    body = response.content.decode()
    assert "Rollout not started: 1 node(s) are leased to customers" in body and leased.name in body
    assert not Rollout.objects.exists()


def test_rollout_of_idle_nodes_starts_and_shows_progress(client, inventory):
    idle = list(Node.objects.filter(server_type=inventory.a100))
    _login(client, inventory.operator)
    response = client.post(
        reverse("portal:ops_rollout_start"),
        {"nodes": [n.pk for n in idle], "max_parallel": 1, "failure_budget": 0},
    )
    rollout = Rollout.objects.get()
    assert response["Location"] == reverse("portal:ops_rollout", args=[rollout.pk])
    body = client.get(response["Location"]).content.decode()
    assert "waiting for a slot" in body  # cap of 1: the second node waits
    assert all(n.name in body for n in idle)
    live = client.get(reverse("portal:ops_rollout_live", args=[rollout.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 200


def test_a_halted_rollouts_unstarted_nodes_are_not_shown_waiting_for_a_slot(client, inventory):
    """Once halted, a rollout starts nothing more: its unstarted nodes said "waiting for a slot"."""
    from provisioner.services.rollouts import advance_rollout, start_rollout

    idle = list(Node.objects.filter(server_type=inventory.a100).order_by("name"))
    rollout = start_rollout(idle, actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    Operation.objects.filter(rollout=rollout).update(state=OperationState.FAILED, error="BMC refused login")
    advance_rollout(rollout.pk)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.HALTED
    _login(client, inventory.operator)
    body = client.get(reverse("portal:ops_rollout", args=[rollout.pk])).content.decode()
    assert "waiting for a slot" not in body
    assert "not started (rollout halted)" in body


def test_customer_never_sees_another_organizations_reservation(client, inventory):
    theirs = _reserve(inventory, org=inventory.other, key=inventory.other_key, user=inventory.outsider)
    _login(client, inventory.owner)
    for name in ["reservation", "reservation_live"]:
        assert client.get(reverse(f"portal:{name}", args=[theirs.pk])).status_code == 404
    assert client.post(reverse("portal:reservation_release", args=[theirs.pk])).status_code == 404
    assert Reservation.objects.get(pk=theirs.pk).state != "releasing"
    listing = client.get(reverse("portal:reservations")).content.decode()
    assert f'href="/reservations/{theirs.pk}/"' not in listing


def test_member_sees_the_organizations_reservation_with_its_servers(client, inventory):
    r = _reserve(inventory, count=2)
    _login(client, inventory.member)
    body = client.get(reverse("portal:reservation", args=[r.pk])).content.decode()
    for node in Node.objects.filter(reservation=r):
        assert node.name in body
    assert 'hx-trigger="every 2s"' in body  # provisioning: the page polls
    live = client.get(reverse("portal:reservation_live", args=[r.pk]), HTTP_HX_REQUEST="true")
    assert live.status_code == 200


def test_reserve_form_shows_why_a_pasted_key_is_bad(client, inventory):
    _login(client, inventory.owner)
    response = client.post(
        reverse("portal:reserve"),
        {
            "server_type": inventory.h100.pk,
            "count": 1,
            "when": "now",
            "image": inventory.image.pk,
            "new_key": "ssh-dss AAAAB3NzaC1kc3MAAACBAP== old@box",
        },
    )
    assert response.status_code == 200
    assert "DSA (ssh-dss) keys are insecure" in response.content.decode()
    assert not Reservation.objects.exists()


def test_reserve_form_refuses_a_private_key_and_says_so(client, inventory, tmp_path):
    private, _ = ssh_keygen(tmp_path, name="oops")
    _login(client, inventory.owner)
    response = client.post(
        reverse("portal:reserve"),
        {
            "server_type": inventory.h100.pk,
            "count": 1,
            "when": "now",
            "image": inventory.image.pk,
            "new_key": private,
        },
    )
    assert "private key" in response.content.decode().lower()
    assert not Reservation.objects.exists()


def test_reserve_form_shows_a_capacity_error_and_books_nothing(client, inventory, tmp_path):
    _, pub = ssh_keygen(tmp_path, name="fresh")
    _login(client, inventory.owner)
    response = client.post(
        reverse("portal:reserve"),
        {
            "server_type": inventory.a100.pk,
            "count": 3,
            "when": "now",
            "image": inventory.image.pk,
            "new_key_name": "fresh",
            "new_key": pub,
        },
    )
    body = response.content.decode()
    assert "Not enough capacity: 2 8x A100 SXM server(s) free" in body
    assert "Try fewer servers" in body
    assert not Reservation.objects.exists()
    assert not SSHKey.objects.filter(name="fresh").exists()  # the pasted key is saved only with a reservation


def test_reserve_form_shows_a_quota_error(client, inventory):
    Organization.objects.filter(pk=inventory.acme.pk).update(server_quota=1)
    _login(client, inventory.owner)
    response = client.post(
        reverse("portal:reserve"),
        {
            "server_type": inventory.h100.pk,
            "count": 2,
            "when": "now",
            "image": inventory.image.pk,
            "ssh_keys": [inventory.key.pk],
        },
    )
    assert "Quota reached: Acme AI may hold 1 servers at once" in response.content.decode()


def test_reserve_now_with_a_pasted_key_redirects_to_the_reservation(client, inventory, tmp_path):
    _, pub = ssh_keygen(tmp_path, name="new")
    _login(client, inventory.member)
    response = client.post(
        reverse("portal:reserve"),
        {
            "server_type": inventory.h100.pk,
            "count": 2,
            "when": "now",
            "image": inventory.image.pk,
            "new_key_name": "workstation",
            "new_key": pub,
            "name": "training run",
        },
    )
    r = Reservation.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("portal:reservation", args=[r.pk])
    assert r.organization == inventory.acme and r.count == 2 and r.name == "training run"
    assert SSHKey.objects.get(name="workstation").public_key in r.authorized_keys


def test_reserve_later_needs_a_future_start(client, inventory):
    _login(client, inventory.owner)
    past = (timezone.now() - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    response = client.post(
        reverse("portal:reserve"),
        {
            "server_type": inventory.h100.pk,
            "count": 1,
            "when": "later",
            "starts_at": past,
            "image": inventory.image.pk,
            "ssh_keys": [inventory.key.pk],
        },
    )
    assert "must start in the future" in response.content.decode()


def test_reserve_a_future_window_is_scheduled(client, inventory):
    _login(client, inventory.owner)
    start = timezone.now() + dt.timedelta(days=2)
    end = start + dt.timedelta(days=1)
    client.post(
        reverse("portal:reserve"),
        {
            "server_type": inventory.a100.pk,
            "count": 2,
            "when": "later",
            "starts_at": start.strftime("%Y-%m-%dT%H:%M"),
            "ends_at": end.strftime("%Y-%m-%dT%H:%M"),
            "image": inventory.image.pk,
            "ssh_keys": [inventory.key.pk],
        },
    )
    r = Reservation.objects.get()
    assert r.state == "scheduled"
    body = client.get(reverse("portal:reservation", args=[r.pk])).content.decode()
    assert "Provisioning starts automatically" in body


def test_catalog_shows_availability_now_and_for_a_window(client, inventory):
    _reserve(inventory, count=3)
    _login(client, inventory.owner)
    body = client.get(reverse("portal:catalog")).content.decode()
    assert 'data-testid="avail-now-h100-8x">1<' in body
    assert 'data-testid="avail-now-a100-8x">2<' in body
    start = (timezone.now() + dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    partial = client.get(
        reverse("portal:catalog"), {"starts_at": start}, HTTP_HX_REQUEST="true"
    ).content.decode()
    assert "<html" not in partial  # HTMX gets only the fragment
    # The 3 leased h100s are open-ended: they are not free in a later window either.
    assert 'data-testid="avail-window-h100-8x">1<' in partial


def test_extend_and_release_from_the_detail_page(client, inventory):
    end = timezone.now() + dt.timedelta(hours=4)
    r = reserve(inventory, label="t", ends_at=end)
    _login(client, inventory.owner)
    new_end = (end + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    page = client.post(reverse("portal:reservation_extend", args=[r.pk]), {"ends_at": new_end}, follow=True)
    assert "now ends" in page.content.decode()
    assert Reservation.objects.get(pk=r.pk).ends_at > end
    page = client.post(reverse("portal:reservation_release", args=[r.pk]), follow=True)
    assert "Released:" in page.content.decode()
    assert Reservation.objects.get(pk=r.pk).state in ("releasing", "released")


def test_ssh_keys_page_validates_and_saves(client, inventory, tmp_path):
    _login(client, inventory.member)
    bad = client.post(reverse("portal:ssh_keys"), {"name": "x", "public_key": "hello world"})
    assert "This is not an SSH public key" in bad.content.decode()
    _, pub = ssh_keygen(tmp_path, name="mine")
    client.post(reverse("portal:ssh_keys"), {"name": "mine", "public_key": pub})
    key = SSHKey.objects.get(name="mine")
    assert key.organization == inventory.acme
    dup = client.post(reverse("portal:ssh_keys"), {"name": "again", "public_key": pub})
    assert "already saved" in dup.content.decode()


def test_api_token_is_shown_once_then_only_its_hint(client, inventory):
    _login(client, inventory.owner)
    first = client.post(reverse("portal:api_tokens"), {"name": "ci"}, follow=True).content.decode()
    token = ApiToken.objects.get(name="ci")
    plaintext = first.split('id="new-token">')[1].split("<")[0]
    assert plaintext.startswith("nck_") and ApiToken.hash(plaintext) == token.token_hash
    again = client.get(reverse("portal:api_tokens")).content.decode()
    assert plaintext not in again and token.hint in again
    client.post(reverse("portal:api_token_revoke", args=[token.pk]))
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None


def test_a_user_cannot_revoke_another_users_token(client, inventory):
    token, _ = ApiToken.issue(inventory.outsider, "theirs")
    _login(client, inventory.owner)
    assert client.post(reverse("portal:api_token_revoke", args=[token.pk])).status_code == 404


def test_owner_invites_and_removes_members_member_cannot(client, inventory):
    _login(client, inventory.owner)
    client.post(reverse("portal:organization"), {"username": "oscar", "role": "member"})
    assert Membership.objects.filter(organization=inventory.acme, user=inventory.outsider).exists()
    unknown = client.post(reverse("portal:organization"), {"username": "nobody", "role": "member"})
    assert "There is no user called" in unknown.content.decode()
    client.post(reverse("portal:member_remove", args=[inventory.outsider.pk]))
    assert not Membership.objects.filter(organization=inventory.acme, user=inventory.outsider).exists()
    client.force_login(inventory.member)
    page = client.post(
        reverse("portal:member_remove", args=[inventory.owner.pk]), follow=True
    ).content.decode()
    assert "only an owner" in page.lower()
    assert Membership.objects.filter(organization=inventory.acme, user=inventory.owner).exists()


def test_signup_creates_the_user_and_their_organization(client, db):
    response = client.post(
        reverse("portal:signup"),
        {
            "username": "nina",
            "organization": "Nina Labs",
            "password1": "a-long-pass-123",
            "password2": "a-long-pass-123",
        },
    )
    assert response.status_code == 302
    m = Membership.objects.get(user__username="nina")
    assert m.organization.name == "Nina Labs" and m.role == "owner"
    assert client.get(reverse("portal:organization")).status_code == 200


def test_org_switcher_changes_the_organization_pages_act_for(client, inventory):
    Membership.objects.create(organization=inventory.other, user=inventory.owner, role="member")
    _login(client, inventory.owner)
    assert "Acme AI" in client.get(reverse("portal:ssh_keys")).content.decode()
    client.post(reverse("portal:switch_org"), {"organization": inventory.other.pk, "next": "/ssh-keys/"})
    body = client.get(reverse("portal:ssh_keys")).content.decode()
    assert "for Other Labs" in body and inventory.other_key.fingerprint in body
    # Switching to an organization one is not a member of is refused.
    stranger = Organization.objects.create(name="Stranger", slug="stranger")
    client.post(reverse("portal:switch_org"), {"organization": stranger.pk})
    assert "for Other Labs" in client.get(reverse("portal:ssh_keys")).content.decode()


def test_audit_trail_shows_only_the_organizations_events(client, inventory):
    _reserve(inventory)
    _reserve(inventory, org=inventory.other, key=inventory.other_key, user=inventory.outsider)
    _login(client, inventory.owner)
    body = client.get(reverse("portal:audit")).content.decode()
    assert body.count("reserve") >= 1
    assert "oscar" not in body


def _a100_rollout(inventory):
    """A rollout of the idle a100 servers, one at a time, no failure allowed; nothing runs it."""
    from provisioner.services.rollouts import start_rollout

    idle = list(Node.objects.filter(server_type=inventory.a100).order_by("name"))
    return start_rollout(idle, actor=Actor.system("test"), max_parallel=1, failure_budget=0)


def test_a_running_rollout_page_offers_cancel_with_confirmation_and_cancelling_it_stops_it(client, inventory):
    rollout = _a100_rollout(inventory)
    _login(client, inventory.operator)
    page = client.get(reverse("portal:ops_rollout", args=[rollout.pk])).content.decode()
    cancel_url = reverse("portal:ops_rollout_cancel", args=[rollout.pk])
    assert f'action="{cancel_url}"' in page
    form = page.split(f'action="{cancel_url}"')[1].split("</form>")[0]
    assert "data-confirm=" in page.split(f'action="{cancel_url}"')[1].split(">")[0]
    assert 'name="csrfmiddlewaretoken"' in form and 'name="reason"' in form and 'id="cancel-rollout"' in form

    response = client.post(cancel_url, {"reason": "wrong image"}, follow=True)
    body = response.content.decode()
    assert response.redirect_chain[-1][0] == reverse("portal:ops_rollout", args=[rollout.pk])
    assert f"Rollout {rollout.pk} cancelled" in body
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.CANCELLING
    assert 'id="cancel-rollout"' not in body  # nothing more to cancel
    assert "not started (rollout cancelling)" in body
    event = AuditEvent.objects.get(action="rollout_cancel")
    assert event.actor == inventory.operator and "wrong image" in event.reason


def test_cancelling_a_rollout_from_the_portal_needs_a_reason(client, inventory):
    rollout = _a100_rollout(inventory)
    _login(client, inventory.operator)
    response = client.post(
        reverse("portal:ops_rollout_cancel", args=[rollout.pk]), {"reason": ""}, follow=True
    )
    assert "Not cancelled:" in response.content.decode()
    assert Rollout.objects.get(pk=rollout.pk).state == Rollout.State.RUNNING


def test_a_finished_rollout_page_has_no_cancel_button_and_a_cancel_post_says_why(client, inventory):
    rollout = _a100_rollout(inventory)
    Rollout.objects.filter(pk=rollout.pk).update(state=Rollout.State.SUCCEEDED)
    _login(client, inventory.operator)
    page = client.get(reverse("portal:ops_rollout", args=[rollout.pk])).content.decode()
    assert 'id="cancel-rollout"' not in page
    response = client.post(
        reverse("portal:ops_rollout_cancel", args=[rollout.pk]), {"reason": "x"}, follow=True
    )
    assert (
        "Not cancelled: Rollout" in response.content.decode()
        and "already succeeded" in response.content.decode()
    )


def test_customers_cannot_cancel_a_rollout(client, inventory):
    rollout = _a100_rollout(inventory)
    _login(client, inventory.owner)
    response = client.post(reverse("portal:ops_rollout_cancel", args=[rollout.pk]), {"reason": "x"})
    assert response.status_code == 403
    assert Rollout.objects.get(pk=rollout.pk).state == Rollout.State.RUNNING


def test_the_live_rollout_update_removes_the_cancel_button_once_the_rollout_stops_starting_servers(
    client, inventory
):
    from provisioner.services.rollouts import cancel_rollout

    rollout = _a100_rollout(inventory)
    _login(client, inventory.operator)
    live = reverse("portal:ops_rollout_live", args=[rollout.pk])
    assert "hx-swap-oob" not in client.get(live, HTTP_HX_REQUEST="true").content.decode()
    cancel_rollout(rollout, actor=Actor(user=inventory.operator, label="opal"), reason="stop")
    body = client.get(live, HTTP_HX_REQUEST="true").content.decode()
    assert '<div id="rollout-cancel" hx-swap-oob="outerHTML"></div>' in body
    assert 'hx-trigger="every 2s"' in body  # still live while the started reimage finishes


def test_the_reservation_page_shows_the_time_spent_in_each_step(client, inventory):
    """Where the time goes (issue 21): each step with the time its last attempt took, a running one so far."""
    import datetime as dt

    from django.utils import timezone

    from provisioner.models import Operation

    r = _reserve(inventory)
    op = Operation.objects.filter(reservation=r).first()
    steps = list(op.steps.order_by("index"))
    now = timezone.now()
    first, second = steps[0], steps[1]
    first.__class__.objects.filter(pk=first.pk).update(
        state="succeeded",
        started_at=now - dt.timedelta(seconds=200),
        finished_at=now - dt.timedelta(seconds=128),
    )
    second.__class__.objects.filter(pk=second.pk).update(
        state="waiting", started_at=now - dt.timedelta(seconds=12)
    )
    _login(client, inventory.member)
    live = client.get(
        reverse("portal:reservation_live", args=[r.pk]), HTTP_HX_REQUEST="true"
    ).content.decode()
    assert '<span class="muted step-time">1 min 12 s</span>' in live
    assert '<span class="muted step-time">12 s so far</span>' in live or "13 s so far" in live
