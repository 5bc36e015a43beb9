"""Operator actions on nodes (services/nodes.py) never leave a node in an inconsistent state: no hold or
quarantine decision on a node an operation is working on, and no node returned to the pool while a
customer's reservation still holds it."""

from __future__ import annotations

import pytest

from provisioner.errors import IllegalTransition
from provisioner.lifecycle import Actor, process_event
from provisioner.models import Allocation, Node, Operation
from provisioner.services import nodes as node_service
from provisioner.states import NodeEvent, NodeState, OperationKind, OperationState
from tests.conftest import reserve

pytestmark = pytest.mark.django_db

OPS = Actor.system("test-operator")


def _active_leased_node(inv) -> Node:
    """A customer's server that went through provisioning (the engine's transitions, done directly)."""
    reservation = reserve(inv, label="o")
    node = Node.objects.get(reservation=reservation)
    for event in (NodeEvent.DEPLOY, NodeEvent.DEPLOYED, NodeEvent.BURNIN_PASSED):
        node = process_event(node, event, actor=OPS)
    Operation.objects.filter(reservation=reservation).update(state=OperationState.SUCCEEDED)
    return node


def test_a_quarantined_server_still_held_by_a_reservation_is_not_returned_to_the_pool(inventory):
    node = node_service.quarantine(
        _active_leased_node(inventory), actor=OPS, reason="ECC errors reported", force=True
    )
    assert node.reservation_id is not None
    with pytest.raises(IllegalTransition, match="reservation"):
        node_service.return_from_quarantine(node, actor=OPS, reason="DIMM replaced")
    node.refresh_from_db()
    assert node.state == NodeState.QUARANTINED
    assert not Operation.objects.filter(node=node, kind=OperationKind.CLEAN).exists()


def test_a_held_server_on_hold_is_not_wiped_into_the_pool_when_the_hold_is_lifted(inventory):
    node = node_service.quarantine(
        _active_leased_node(inventory), actor=OPS, reason="ECC errors reported", force=True
    )
    node = node_service.set_maintenance(node, True, actor=OPS, reason="swap DIMM")
    with pytest.raises(IllegalTransition, match="reservation"):
        node_service.set_maintenance(node, False, actor=OPS, reason="DIMM swapped")
    node.refresh_from_db()
    assert node.state == NodeState.MAINTENANCE
    assert Allocation.objects.filter(node=node, active=True).exists()


def test_a_server_in_error_still_held_by_a_reservation_is_not_recovered_into_the_pool(inventory):
    node = _active_leased_node(inventory)
    node = process_event(node, NodeEvent.REIMAGE, actor=OPS)
    node = process_event(node, NodeEvent.FAIL, actor=OPS)
    with pytest.raises(IllegalTransition, match="reservation"):
        node_service.recover(node, actor=OPS, reason="retry")
    node.refresh_from_db()
    assert node.state == NodeState.ERROR


def test_releasing_the_reservation_then_returning_the_server_to_the_pool_works(inventory):
    from provisioner.services.reservations import release_reservation

    node = node_service.quarantine(
        _active_leased_node(inventory), actor=OPS, reason="ECC errors reported", force=True
    )
    release_reservation(node.reservation, actor=Actor(user=inventory.owner, label="o"))
    node = node_service.return_from_quarantine(
        Node.objects.get(pk=node.pk), actor=OPS, reason="DIMM replaced"
    )
    assert node.state == NodeState.CLEANING and node.reservation_id is None
    assert Operation.objects.filter(
        node=node, kind=OperationKind.CLEAN, state=OperationState.PENDING
    ).exists()


def _quarantined_with_burnin_rerun(inv) -> Node:
    node = node_service.quarantine(Node.objects.get(name="node-a100-8x-01"), actor=OPS, reason="xid 79")
    node_service.rerun_burnin(node, actor=OPS)
    return node


def test_no_hold_on_a_server_while_its_burnin_rerun_is_in_flight(inventory):
    node = _quarantined_with_burnin_rerun(inventory)
    with pytest.raises(IllegalTransition, match="busy"):
        node_service.set_maintenance(node, True, actor=OPS, reason="swap GPU")
    assert Node.objects.get(pk=node.pk).state == NodeState.QUARANTINED


def test_no_return_to_pool_while_a_burnin_rerun_is_in_flight(inventory):
    node = _quarantined_with_burnin_rerun(inventory)
    with pytest.raises(IllegalTransition, match="busy"):
        node_service.return_from_quarantine(node, actor=OPS, reason="GPU reseated")
    assert Node.objects.get(pk=node.pk).state == NodeState.QUARANTINED
    assert not Operation.objects.filter(node=node, kind=OperationKind.CLEAN).exists()


def test_no_hold_or_quarantine_on_an_idle_server_while_a_power_action_is_in_flight(inventory):
    node = Node.objects.get(name="node-a100-8x-02")
    node_service.power(node, "reset", actor=OPS)
    with pytest.raises(IllegalTransition, match="busy"):
        node_service.set_maintenance(node, True, actor=OPS)
    with pytest.raises(IllegalTransition, match="busy"):
        node_service.quarantine(node, actor=OPS, reason="fans")
    assert Node.objects.get(pk=node.pk).state == NodeState.AVAILABLE


def test_no_recover_while_an_operation_on_the_server_is_in_flight(inventory):
    node = Node.objects.get(name="node-a100-8x-02")
    node = node_service.set_maintenance(node, True, actor=OPS)
    node = node_service.quarantine(node, actor=OPS, reason="x")
    node_service.power(node, "off", actor=OPS)
    # a node in error with a power action queued on it
    Node.objects.filter(pk=node.pk).update(state=NodeState.ERROR)
    with pytest.raises(IllegalTransition, match="busy"):
        node_service.recover(node, actor=OPS)
    assert Node.objects.get(pk=node.pk).state == NodeState.ERROR


def test_the_api_answers_409_to_returning_a_server_a_reservation_still_holds(inventory):
    from rest_framework.test import APIClient

    from provisioner.models import ApiToken

    node = node_service.quarantine(
        _active_leased_node(inventory), actor=OPS, reason="ECC errors reported", force=True
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(inventory.operator, 'ops')[1]}")
    response = client.post(
        f"/api/v1/admin/nodes/{node.pk}/return-to-pool", {"reason": "DIMM replaced"}, format="json"
    )
    assert response.status_code == 409, response.content
    assert "still held by reservation" in response.content.decode()
    assert Node.objects.get(pk=node.pk).state == NodeState.QUARANTINED


def test_keep_out_of_a_server_that_is_no_longer_quarantined_is_refused_not_recorded(inventory):
    """The portal's "Keep out" (quarantine review) on a stale page: another operator returned the server to
    the pool meanwhile. It said "stays quarantined" and wrote a review note while the server was being wiped
    back into the pool."""
    from django.contrib import messages
    from django.test import Client

    from provisioner.models import AuditEvent

    portal = Client()
    portal.force_login(inventory.operator)
    node = node_service.quarantine(Node.objects.get(name="node-h100-8x-01"), actor=OPS, reason="ECC errors")
    kept = portal.post(f"/ops/nodes/{node.pk}/action/", {"action": "keep_out", "reason": "DIMM on order"})
    assert [m.message for m in messages.get_messages(kept.wsgi_request)] == [
        f"{node.name} stays quarantined; your note is in its timeline."
    ]
    assert AuditEvent.objects.filter(node=node, action="quarantine_review", reason="DIMM on order").exists()

    node = node_service.return_from_quarantine(node, actor=OPS, reason="DIMM replaced")
    assert node.state == NodeState.CLEANING
    stale = portal.post(f"/ops/nodes/{node.pk}/action/", {"action": "keep_out", "reason": "still bad"})
    [refused] = [m for m in messages.get_messages(stale.wsgi_request) if m.level_tag == "error"]
    assert "not quarantined" in refused.message, refused.message
    assert not AuditEvent.objects.filter(node=node, action="quarantine_review", reason="still bad").exists()
    with pytest.raises(IllegalTransition, match="not quarantined"):
        node_service.keep_in_quarantine(Node.objects.get(name="node-h100-8x-02"), actor=OPS, reason="x")


def test_burnin_rerun_reads_the_servers_state_now_not_the_callers_copy(inventory):
    """Two operators on the same quarantined server: one puts it on hold, the other (page loaded before)
    re-runs burn-in. The re-run judged the caller's copy of the node (still "quarantined") and started a
    burn-in on a server on maintenance hold."""
    stale = node_service.quarantine(Node.objects.get(name="node-h100-8x-03"), actor=OPS, reason="Xid 79")
    node_service.set_maintenance(stale, True, actor=OPS, reason="swap GPU")
    assert stale.state == NodeState.QUARANTINED  # the second operator's copy
    with pytest.raises(IllegalTransition, match="quarantined"):
        node_service.rerun_burnin(stale, actor=OPS)
    assert not Operation.objects.filter(node=stale, kind=OperationKind.BURNIN).exists()
    assert Node.objects.get(pk=stale.pk).state == NodeState.MAINTENANCE


def test_quarantining_a_server_leased_to_a_customer_is_refused_without_force(inventory):
    """Quarantine took a live customer server out of service (and let burn-in run on it) with no force."""
    node = _active_leased_node(inventory)
    with pytest.raises(IllegalTransition, match=r"leased to a customer.*force"):
        node_service.quarantine(node, actor=OPS, reason="fans loud")
    assert Node.objects.get(pk=node.pk).state == NodeState.ACTIVE
    node = node_service.quarantine(node, actor=OPS, reason="fans loud", force=True)
    assert node.state == NodeState.QUARANTINED


@pytest.mark.parametrize("action", ["off", "reset", "pxe"])
def test_power_off_reset_or_pxe_of_a_server_leased_to_a_customer_is_refused_without_force(inventory, action):
    node = _active_leased_node(inventory)
    with pytest.raises(IllegalTransition, match=r"leased to a customer.*force"):
        node_service.power(node, action, actor=OPS)
    assert not Operation.objects.filter(node=node, kind=OperationKind.POWER).exists()
    op = node_service.power(node, action, actor=OPS, force=True)
    assert op.kind == OperationKind.POWER and op.params["action"] == action


def test_power_on_of_a_leased_server_needs_no_force(inventory):
    node = _active_leased_node(inventory)
    assert node_service.power(node, "on", actor=OPS).params["action"] == "on"


def test_power_off_of_an_idle_server_needs_no_force(inventory):
    node = Node.objects.get(name="node-a100-8x-02")
    assert node_service.power(node, "off", actor=OPS).params["action"] == "off"


def test_burnin_rerun_on_a_quarantined_server_a_reservation_still_holds_is_refused(inventory):
    """A customer's server quarantined (with force) while leased: a burn-in re-run would run on it live."""
    node = node_service.quarantine(_active_leased_node(inventory), actor=OPS, reason="ECC", force=True)
    with pytest.raises(IllegalTransition, match="still held by reservation"):
        node_service.rerun_burnin(node, actor=OPS)
    assert not Operation.objects.filter(node=node, kind=OperationKind.BURNIN).exists()
